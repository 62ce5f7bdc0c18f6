"""Per-run monitor: the parent of one agent process, which records how the agent ended.

Run as ``python -I -S runmon.py --exit-file F --log-file L --max-log-bytes N [--report-fd FD] -- argv...``
with stdout/stderr already redirected to the run log by the supervisor, which also started us in a
new session (we are the process-group leader). Only os/sys/signal/select/json/time are imported, so
the monitor starts in a few milliseconds and survives a crash or ``kill -9`` of the supervisor.

What it does:
- ignores SIGINT/SIGTERM/SIGHUP (a stop signal to the group must reach the agent, not kill the
  recorder); the child restores the default dispositions before exec;
- forks and execs the agent; an exec failure is written to the log and recorded as exit 127 with
  error "exec failed: ...";
- writes the agent pid (decimal + newline) to --report-fd, then closes it;
- waits for the agent with a pidfd and select (2 s timeout to cap the log size);
- writes the exit file atomically (tmp + rename):
  {"pid", "exit_code" (int|null), "signal" (int|null), "exited_at" (ISO 8601 UTC), "error"?};
- exits 0.

Log cap: when the log exceeds --max-log-bytes, its last half is kept (copied to the start, then
truncated). The agent inherits the log fd, opened with O_APPEND by the supervisor, so its writes
always land at the current end of the file. Race (small, accepted): bytes the agent writes between
our read of the tail and the truncate are lost. The cap is a safety valve, not a log rotator.
"""

import json
import os
import select
import signal
import sys
import time


def _iso_now() -> str:
    t = time.time()
    secs = int(t)
    ms = int((t - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def _write_exit_file(path: str, record: dict) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _cap_log(path: str, max_bytes: int) -> None:
    """Keep the last half of the log when it is larger than max_bytes (see the module docstring)."""
    if max_bytes <= 0:
        return
    try:
        size = os.stat(path).st_size
    except OSError:
        return
    if size <= max_bytes:
        return
    keep = max_bytes // 2
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        os.lseek(fd, size - keep, os.SEEK_SET)
        chunks = []
        remaining = keep
        while remaining > 0:
            data = os.read(fd, min(remaining, 1 << 20))
            if not data:
                break
            chunks.append(data)
            remaining -= len(data)
        tail = b"".join(chunks)
        marker = b"[wgs: log truncated to its last %d bytes]\n" % len(tail)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, marker + tail)
        os.ftruncate(fd, len(marker) + len(tail))
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse(argv: list) -> dict:
    opts = {"exit_file": "", "log_file": "", "max_log_bytes": 0, "report_fd": -1, "cmd": []}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            opts["cmd"] = argv[i + 1 :]
            break
        if i + 1 >= len(argv):
            raise SystemExit("runmon: missing value for " + a)
        v = argv[i + 1]
        if a == "--exit-file":
            opts["exit_file"] = v
        elif a == "--log-file":
            opts["log_file"] = v
        elif a == "--max-log-bytes":
            opts["max_log_bytes"] = int(v)
        elif a == "--report-fd":
            opts["report_fd"] = int(v)
        else:
            raise SystemExit("runmon: unknown option " + a)
        i += 2
    if not opts["exit_file"] or not opts["cmd"]:
        raise SystemExit("runmon: usage: runmon.py --exit-file F [--log-file L] [--max-log-bytes N] -- argv...")
    return opts


def _report(fd: int, pid: int) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, b"%d\n" % pid)
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


def main(argv: list) -> int:
    opts = _parse(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    cmd = opts["cmd"]
    report_fd = opts["report_fd"]
    # The exec-error pipe tells the parent whether exec worked (closed on exec by O_CLOEXEC).
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the agent
        try:
            os.close(err_r)
            if report_fd >= 0:
                os.close(report_fd)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.execv(cmd[0], cmd)
        except BaseException as exc:  # anything that stops the exec is reported
            msg = "exec failed: {}: {}".format(cmd[0], getattr(exc, "strerror", None) or exc)
            try:
                os.write(err_w, msg.encode("utf-8", "replace"))
                os.write(2, ("wgs: " + msg + "\n").encode("utf-8", "replace"))
            finally:
                os._exit(127)
    os.close(err_w)
    _report(report_fd, pid)
    exec_error = b""
    while True:
        try:
            chunk = os.read(err_r, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        exec_error += chunk
    os.close(err_r)

    pidfd = -1
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    status = None
    while status is None:
        if pidfd >= 0:
            try:
                select.select([pidfd], [], [], 2.0)
            except InterruptedError:
                pass
        else:
            time.sleep(0.2)
        if opts["log_file"]:
            _cap_log(opts["log_file"], opts["max_log_bytes"])
        try:
            got, st = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if got == pid:
            status = st
    if pidfd >= 0:
        os.close(pidfd)
    record = {"pid": pid, "exit_code": None, "signal": None, "exited_at": _iso_now()}
    if status is not None:
        if os.WIFSIGNALED(status):
            record["signal"] = os.WTERMSIG(status)
        else:
            record["exit_code"] = os.waitstatus_to_exitcode(status)
    else:
        record["error"] = "the monitor could not collect the agent's exit status"
    if exec_error:
        record["error"] = exec_error.decode("utf-8", "replace")
    _write_exit_file(opts["exit_file"], record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
