"""Per-run monitor: the parent of one agent process, which records how the agent ended.

Two modes, both started by the supervisor in a new session (we are the process-group leader):

- one-shot: ``python -I -S runmon.py --exit-file F --log-file L --max-log-bytes N [--report-fd FD] -- argv...``
  with stdout/stderr already redirected to the run log (and the agent's env/cwd as our own);
- warm: ``python -I -S runmon.py --wait-command --report-fd FD [--state-dir S]``, started ahead of
  need with stdout/stderr on /dev/null and stdin the read end of a command pipe. We wait for ONE
  JSON line {"argv", "env", "cwd", "log_file", "exit_file", "max_log_bytes"}, reopen stdin from
  /dev/null, open log_file (created 0600 by the supervisor) O_WRONLY|O_APPEND onto fds 1 and 2, and
  go on as in one-shot mode (the child chdirs to cwd and execs argv with env). EOF before a full
  line (the supervisor closed the pipe or died) = exit 0 without doing anything: an idle monitor
  never becomes a run. An unusable command is answered with "error: ..." on the report fd and
  exit 2 (the supervisor then falls back to one-shot). --state-dir only labels the process (ps,
  cleanup tools match the state dir in the command line as they do for one-shot monitors).

Only os/sys/signal/select/json/time are imported, so the monitor starts in a few milliseconds
and survives a crash or ``kill -9`` of the supervisor.

What it does:
- ignores SIGINT/SIGTERM/SIGHUP (a stop signal to the group must reach the agent, not kill the
  recorder); the child restores the default dispositions (and those of SIGPIPE/SIGXFSZ, which the
  Python runtime ignores) before exec;
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


def _refuse(fd: int, message: str) -> int:
    """Warm mode: the command cannot be run; tell the supervisor (which falls back) and exit 2."""
    if fd >= 0:
        try:
            os.write(fd, ("error: " + message.replace("\n", " ") + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
    return 2


def _read_command() -> bytes:
    """One line from stdin; b"" on EOF before a full line (the supervisor went away)."""
    buf = b""
    while b"\n" not in buf:
        try:
            chunk = os.read(0, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            return b""
        buf += chunk
    return buf.split(b"\n", 1)[0]


def _wait_command(argv: list) -> tuple:
    """Warm mode: (opts, env, cwd, 0) of the command, or (None, None, None, exit status) if there is
    none to run (0: EOF, the supervisor went away; 2: an unusable command, reported)."""
    report_fd = -1
    i = 0
    while i < len(argv):
        if i + 1 >= len(argv):
            raise SystemExit("runmon: missing value for " + argv[i])
        if argv[i] == "--report-fd":
            report_fd = int(argv[i + 1])
        elif argv[i] != "--state-dir":
            raise SystemExit("runmon: unknown option " + argv[i])
        i += 2
    line = _read_command()
    if not line:
        return None, None, None, 0
    try:
        doc = json.loads(line.decode("utf-8", "surrogateescape"))
        cmd = [str(a) for a in doc["argv"]]
        env = {str(k): str(v) for k, v in doc["env"].items()}
        cwd = str(doc["cwd"])
        log_file = str(doc["log_file"])
        opts = {"exit_file": str(doc["exit_file"]), "log_file": log_file,
                "max_log_bytes": int(doc.get("max_log_bytes") or 0), "report_fd": report_fd, "cmd": cmd}
        if not cmd or not cmd[0] or not opts["exit_file"] or not opts["log_file"]:
            raise ValueError("argv, exit_file and log_file are required")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, None, None, _refuse(report_fd, f"bad command: {exc}")
    try:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
    except OSError as exc:
        reason = f"cannot open {log_file}: {exc.strerror or exc}"
        return None, None, None, _refuse(report_fd, reason)
    return opts, env, cwd, 0


def main(argv: list) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    env = None
    cwd = None
    if argv and argv[0] == "--wait-command":
        opts, env, cwd, status = _wait_command(argv[1:])
        if opts is None:
            return status
    else:
        opts = _parse(argv)
    cmd = opts["cmd"]
    report_fd = opts["report_fd"]
    # The exec-error pipe tells the parent whether exec worked (closed on exec by O_CLOEXEC).
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the agent
        stage = "exec failed: " + cmd[0]
        try:
            os.close(err_r)
            if report_fd >= 0:
                os.close(report_fd)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            if cwd is not None:
                stage = "exec failed: cannot enter the working directory " + cwd
                os.chdir(cwd)
                stage = "exec failed: " + cmd[0]
                os.execve(cmd[0], cmd, env or {})
            os.execv(cmd[0], cmd)
        except BaseException as exc:  # anything that stops the exec is reported
            msg = "{}: {}".format(stage, getattr(exc, "strerror", None) or exc)
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
