"""Per-run monitor: the parent of one agent process; it records how the agent ended and ends the
whole run (every descendant) before it does.

Two modes, both started by the supervisor in a new session (we are the process-group leader):

- one-shot: ``python -I -S runmon.py --exit-file F --log-file L --max-log-bytes N --report-fd FD
  --state-dir S --supervisor-id I --stop-grace G [--lease-file P] [--cgroup C] -- argv...``
  with stdout/stderr already redirected to the run log (and the agent's env/cwd as our own);
- warm: ``python -I -S runmon.py --wait-command --report-fd FD --state-dir S --supervisor-id I``,
  started ahead of need with stdout/stderr on /dev/null and stdin the read end of a command pipe.
  We wait for ONE JSON line {"argv", "env", "cwd", "log_file", "exit_file", "max_log_bytes",
  "stop_grace"?, "lease_file"?, "cgroup"?}, reopen stdin from /dev/null, open log_file (created
  0600 by the supervisor) O_WRONLY|O_APPEND onto fds 1 and 2, and go on as in one-shot mode (the
  child chdirs to cwd and execs argv with env). EOF before a full line (the supervisor closed the
  pipe or died), SIGTERM, SIGINT or SIGHUP while idle = exit 0 without doing anything: an idle
  monitor never becomes a run. An unusable command is answered with "error: ..." on the report
  fd and exit 2 (the supervisor then falls back to one-shot).
- the agent's pid is written to the report fd once the child has exec'd it (or failed to: the exit
  record then says why), so a pid the supervisor records is the agent, never the child before exec.

--state-dir and --supervisor-id are the monitor's identity: the supervisor signals a process only
after checking its /proc cmdline names runmon.py with its own state dir and id (procs.verify_monitor).

Only os/sys/_signal/select/time (+ _ctypes for prctl; json only once a command or the exit record
needs it) are imported, so the monitor starts in a few milliseconds and survives a crash or ``kill -9`` of the supervisor. It
cannot import wgs (it runs with -I -S), so its few /proc helpers are its own.

Containment ("a run dies whole"):
- the monitor is a child subreaper (prctl PR_SET_CHILD_SUBREAPER, as tini and s6 do): every
  descendant orphaned by its parent's death is re-parented to us, whatever its process group or
  session (setsid + double fork included), so the run's processes are exactly our descendants;
- with --cgroup C (a cgroup v2 directory the supervisor created for this run), the agent moves
  itself into C between fork and exec, so it and every descendant are in C; the monitor stays
  outside it, so ``cgroup.kill`` never kills the recorder and ``populated 0`` means "run over";
- when the agent has exited (or a stop was asked for, or the lease fence fired) every remaining
  descendant gets SIGTERM (+SIGCONT, as systemd does), then SIGKILL after the stop grace
  (cgroup.kill when there is a cgroup), and is reaped; only then is the exit file written, and
  the cgroup removed (after ``cgroup.events`` says populated 0).

Signals to the monitor: SIGTERM/SIGINT/SIGHUP = stop the run (SIGTERM to the agent and all its
descendants at once, like systemd's KillMode=control-group; SIGKILL after --stop-grace);
SIGUSR1 = stop now (SIGKILL at once; the supervisor's own shorter grace ran out). The agent starts
with the default dispositions (SIGPIPE/SIGXFSZ too, which the Python runtime ignores) and the
signal mask the monitor was started with.

Fencing (multi-replica failover): with --lease-file P the monitor reads P (a decimal epoch-seconds
deadline, rewritten atomically by the supervisor after each lease renewal, see
procs.write_lease_deadline) at least once a second; once the deadline has passed the supervisor
is frozen, partitioned or dead, so the run is ended as for a stop and recorded with
"fenced": true. A missing (or removed) file means no fencing.

Exit file (atomically: tmp + rename):
  {"pid", "exit_code" (int|null), "signal" (int|null), "exited_at" (ISO 8601 UTC),
   "leftovers" (int: processes other than the agent that the monitor ended),
   "error"?, "exec_errno"? (errno of a failed chdir/exec: the agent never ran),
   "stop_signal"? (the signal that asked the monitor to stop the run), "fenced"? (true),
   "cgroup"? (the run's cgroup, removed)}
An exec failure is written to the log and recorded as exit 127 with "exec failed: ..." and its
errno. After writing it the monitor exits 0.

Log cap: when the log exceeds --max-log-bytes, its last half is kept (copied to the start, then
truncated). The agent inherits the log fd, opened with O_APPEND by the supervisor, so its writes
always land at the current end of the file. Race (small, accepted): bytes the agent writes between
our read of the tail and the truncate are lost. The cap is a safety valve, not a log rotator.
"""

import _signal as signal  # the C module behind `signal`: importing `signal` costs ~3 ms (enum)
import os
import select
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import TypedDict

    class _Opts(TypedDict):
        """What the run needs, from the command line (one-shot) or the command (warm)."""

        exit_file: str
        log_file: str
        max_log_bytes: int
        report_fd: int
        cmd: list[str]
        stop_grace: float
        lease_file: str
        cgroup: str

PR_SET_CHILD_SUBREAPER = 36
DEFAULT_STOP_GRACE = 5.0
LOG_CAP_INTERVAL = 2.0
LEASE_CHECK_INTERVAL = 1.0  # "at least once a second"
RESCAN_INTERVAL = 0.05  # while ending a run: how often new forks are looked for
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
HANDLED = (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGCHLD)
RESET_IN_AGENT = (*HANDLED, signal.SIGPIPE, signal.SIGXFSZ)
SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP",
                signal.SIGUSR1: "SIGUSR1"}


class _Flags:
    stop = 0  # the first stop signal received
    hurry = False  # SIGUSR1: SIGKILL now


def _on_stop(signum: int, _frame: object) -> None:
    if not _Flags.stop:
        _Flags.stop = signum


def _on_hurry(_signum: int, _frame: object) -> None:
    _Flags.hurry = True


def _on_child(_signum: int, _frame: object) -> None:
    pass  # only wakes the poll (set_wakeup_fd); reaping happens in the loop


def _install_signals() -> tuple[int, int]:
    """Handlers + a wakeup pipe (every signal writes a byte: poll wakes, none is lost)."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop)
    signal.signal(signal.SIGUSR1, _on_hurry)
    signal.signal(signal.SIGCHLD, _on_child)
    return wake_r, wake_w


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _set_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER, 1) through _ctypes (the full ctypes package costs ~2 ms to import)."""
    try:
        import _ctypes

        if TYPE_CHECKING:
            _IntBase = _ctypes._SimpleCData[int]
        else:
            _IntBase = _ctypes._SimpleCData  # not subscriptable at run time

        class _Int(_IntBase):
            _type_ = "i"

        class _Func(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = _Int

        class _Libc:
            _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]  # None: the program itself

        prctl = _Func(("prctl", _Libc()))  # type: ignore[arg-type]  # any object with _handle
        return bool(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (ImportError, OSError, AttributeError, TypeError):
        return False


def _iso(t: float) -> str:
    secs = int(t)
    ms = int((t - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def _say(message: str) -> None:
    """One line into the run log (our stderr), so the reason shows in the chat's stderr tail."""
    try:
        os.write(2, ("wgs-runmon: " + message + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _write_exit_file(path: str, record: dict[str, int | str | bool | None]) -> None:
    import json

    # Written whole and renamed into place: whoever reads it (the supervisor, the next one) sees all of
    # it or nothing, whatever process dies when. No fsync: it would keep the record only across a crash
    # of the machine, after which no run lives to be explained by it (the next supervisor records the
    # run as ended with its status unknown), and 900 runs ending at once waited seconds on 900 fsyncs.
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
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


def _lease_deadline(path: str) -> float | None:
    """The deadline in the lease file (epoch seconds); None when there is no (usable) file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return float(os.read(fd, 128).split()[0])
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------- /proc


def _ticks(pid: int) -> int | None:
    """Start ticks of a live (non-zombie) process, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    if not rest or rest[0] in (b"Z", b"X"):
        return None
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                out.extend(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            pass
    return out


def _descendants(root: int) -> dict[int, int]:
    """{pid: start ticks} of the live descendants of `root` (walks /proc/<pid>/task/*/children)."""
    out: dict[int, int] = {}
    todo = _children(root)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        ticks = _ticks(pid)
        if ticks is not None:
            out[pid] = ticks
        todo.extend(_children(pid))  # a zombie has no children left: cheap
    return out


def _cgroup_members(cgroup: str) -> dict[int, int]:
    out: dict[int, int] = {}
    try:
        with open(cgroup + "/cgroup.procs", "rb") as fh:
            pids = [int(p) for p in fh.read().split()]
    except (OSError, ValueError):
        return out
    for pid in pids:
        ticks = _ticks(pid)
        if ticks is not None:
            out[pid] = ticks
    return out


def _populated(cgroup: str) -> bool:
    try:
        with open(cgroup + "/cgroup.events", "rb") as fh:
            for line in fh.read().splitlines():
                if line.startswith(b"populated "):
                    return line.split()[1] != b"0"
    except OSError:
        return False
    return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as fh:
            return fh.read().strip().decode("utf-8", "replace")
    except OSError:
        return "?"


def _signal(pid: int, ticks: int, sig: int) -> bool:
    """Signal `pid` only if it is still the process we saw (pidfd + start ticks: no reuse race)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if _ticks(pid) != ticks:
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _cgroup_kill(cgroup: str) -> bool:
    try:
        fd = os.open(cgroup + "/cgroup.kill", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False  # kernels before 5.14: the caller signals every member instead
    try:
        os.write(fd, b"1")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------- options


def _parse(argv: list[str]) -> "_Opts":
    opts: _Opts = {"exit_file": "", "log_file": "", "max_log_bytes": 0, "report_fd": -1, "cmd": [],
                   "stop_grace": DEFAULT_STOP_GRACE, "lease_file": "", "cgroup": ""}
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
        elif a == "--stop-grace":
            opts["stop_grace"] = float(v)
        elif a == "--lease-file":
            opts["lease_file"] = v
        elif a == "--cgroup":
            opts["cgroup"] = v
        elif a not in ("--state-dir", "--supervisor-id"):  # identity only (see the docstring)
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


def _read_command(wake_r: int) -> bytes:
    """One line from stdin; b"" on EOF before a full line (the supervisor went away) or a stop signal."""
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    buf = b""
    while b"\n" not in buf:
        if _Flags.stop:
            return b""
        poller.poll()
        _drain(wake_r)
        if _Flags.stop:
            return b""
        try:
            chunk = os.read(0, 1 << 16)
        except (BlockingIOError, InterruptedError):
            continue
        if not chunk:
            return b""
        buf += chunk
    return buf.split(b"\n", 1)[0]


def _wait_command(argv: list[str],
                  wake_r: int) -> "tuple[_Opts, dict[str, str], str, int] | tuple[None, None, None, int]":
    """Warm mode: (opts, env, cwd, 0) of the command, or (None, None, None, exit status) if there is
    none to run (0: EOF or a stop signal; 2: an unusable command, reported)."""
    import json  # while idle: off the spawn's path

    report_fd = -1
    i = 0
    while i < len(argv):
        if i + 1 >= len(argv):
            raise SystemExit("runmon: missing value for " + argv[i])
        if argv[i] == "--report-fd":
            report_fd = int(argv[i + 1])
        elif argv[i] not in ("--state-dir", "--supervisor-id"):
            raise SystemExit("runmon: unknown option " + argv[i])
        i += 2
    line = _read_command(wake_r)
    if not line:
        return None, None, None, 0
    try:
        doc = json.loads(line.decode("utf-8", "surrogateescape"))
        cmd = [str(a) for a in doc["argv"]]
        env = {str(k): str(v) for k, v in doc["env"].items()}
        cwd = str(doc["cwd"])
        log_file = str(doc["log_file"])
        grace = doc.get("stop_grace")
        opts: _Opts = {"exit_file": str(doc["exit_file"]), "log_file": log_file,
                       "max_log_bytes": int(doc.get("max_log_bytes") or 0), "report_fd": report_fd, "cmd": cmd,
                       "stop_grace": float(grace) if grace is not None else DEFAULT_STOP_GRACE,
                       "lease_file": str(doc.get("lease_file") or ""), "cgroup": str(doc.get("cgroup") or "")}
        if not cmd or not cmd[0] or not opts["exit_file"] or not opts["log_file"]:
            raise ValueError("argv, exit_file and log_file are required")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, None, None, _refuse(report_fd, f"bad command: {exc}")
    if _Flags.stop:
        return None, None, None, _refuse(report_fd, f"stopped (signal {_Flags.stop}) before the run started")
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


# ---------------------------------------------------------------------------------------- the run


def _agent(cmd: list[str], env: dict[str, str] | None, cwd: str | None, cgroup: str, err_w: int,
           close: tuple[int, ...], mask: set[int]) -> None:
    """In the forked child: become the agent (never returns)."""
    stage = "exec failed: " + cmd[0]
    try:
        for fd in close:
            if fd >= 0:
                os.close(fd)
        signal.set_wakeup_fd(-1)
        for sig in RESET_IN_AGENT:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # pending stop signals now act (default)
        if cgroup:
            try:
                fd = os.open(cgroup + "/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b"0")  # "0": the writing process
                finally:
                    os.close(fd)
            except OSError as exc:
                os.write(err_w, ("C" + (exc.strerror or str(exc)) + "\0").encode("utf-8", "replace"))
        if cwd is not None:
            stage = "exec failed: cannot enter the working directory " + cwd
            os.chdir(cwd)
            stage = "exec failed: " + cmd[0]
            os.execve(cmd[0], cmd, env or {})
        os.execv(cmd[0], cmd)
    except BaseException as exc:  # anything that stops the exec is reported
        err = getattr(exc, "errno", None) or 0
        msg = "{}: {}".format(stage, getattr(exc, "strerror", None) or exc)
        try:
            os.write(err_w, (f"E{err} {msg}\0").encode("utf-8", "replace"))
            os.write(2, ("wgs: " + msg + "\n").encode("utf-8", "replace"))
        finally:
            os._exit(127)


def _exec_result(err_r: int) -> tuple[int | None, str, str]:
    """(exec errno or None, exec error message, cgroup join error) from the child's CLOEXEC pipe."""
    data = b""
    while True:
        try:
            chunk = os.read(err_r, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        data += chunk
    os.close(err_r)
    errno_, message, cgroup_error = None, "", ""
    for rec in data.split(b"\0"):
        text = rec[1:].decode("utf-8", "replace")
        if rec[:1] == b"E":
            num, _, message = text.partition(" ")
            errno_ = int(num) if num.isdigit() else 0
        elif rec[:1] == b"C":
            cgroup_error = text
    return errno_, message, cgroup_error


class _Run:
    """The monitor's view of one run while it waits for the agent and ends what is left."""

    def __init__(self, pid: int, opts: "_Opts", wake_r: int, subreaper: bool) -> None:
        self.pid = pid
        self.opts = opts
        self.wake_r = wake_r
        self.subreaper = subreaper
        self.cgroup = opts["cgroup"]
        self.grace = max(0.0, opts["stop_grace"])
        self.status: int | None = None  # the agent's wait status
        self.exited_at = 0.0
        self.no_children = False
        self.ending = False
        self.kill_at = 0.0
        self.killed = False
        self.fenced_deadline: float | None = None
        self.stopped_by = 0  # the signal that asked for the stop, if a stop began the ending
        self.signalled: set[tuple[int, int]] = set()  # every (pid, ticks) we sent SIGTERM/SIGKILL to
        self.events_fd = -1

    # -- waiting

    def reap(self) -> None:
        """Reap every exited child (orphans re-parented to us included), noting the agent's status."""
        while True:
            try:
                got, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.no_children = True
                return
            except InterruptedError:
                continue
            if got == 0:
                self.no_children = False
                return
            if got == self.pid:
                self.status = st
                self.exited_at = time.time()

    def members(self) -> dict[int, int]:
        """Live processes of the run other than the monitor: our descendants and the cgroup's members."""
        found = _descendants(os.getpid())
        if self.cgroup:
            found.update(_cgroup_members(self.cgroup))
        found.pop(os.getpid(), None)
        return found

    def done(self) -> bool:
        if self.status is None or not self.no_children:
            return False
        # No child left: as a subreaper we have no descendant left either. The cgroup may still hold
        # a process that was moved in from elsewhere, or (without subreaper) an orphan of ours.
        return not (self.cgroup and _populated(self.cgroup))

    # -- ending

    def begin_end(self, why: str) -> None:
        self.ending = True
        self.kill_at = time.monotonic() + self.grace
        live = self.members()
        others = [p for p in live if p != self.pid]
        if self.status is None:
            _say(f"{why}: SIGTERM to the agent (pid {self.pid}) and {len(others)} other process(es); "
                 f"SIGKILL after {self.grace:g}s")
        elif others:
            shown = ", ".join(f"{p} {_comm(p)}" for p in sorted(others)[:10])
            _say(f"the agent (pid {self.pid}) has ended; ending {len(others)} leftover process(es) "
                 f"(SIGTERM, SIGKILL after {self.grace:g}s): {shown}")
        self.signal_new(live, signal.SIGTERM)

    def signal_new(self, live: dict[int, int], sig: int) -> None:
        for pid, ticks in live.items():
            key = (pid, ticks)
            if sig == signal.SIGTERM and key in self.signalled:
                continue
            if _signal(pid, ticks, sig):
                self.signalled.add(key)
                if sig == signal.SIGTERM:
                    _signal(pid, ticks, signal.SIGCONT)  # a stopped process must run to act on SIGTERM

    def step_end(self) -> None:
        live = self.members()
        if not self.killed and (_Flags.hurry or time.monotonic() >= self.kill_at):
            self.killed = True
            if live:
                when = " (stop now)" if _Flags.hurry else f" {self.grace:g}s after SIGTERM"
                _say(f"{len(live)} process(es) still running{when}: SIGKILL")
        if self.killed:
            if self.cgroup:
                _cgroup_kill(self.cgroup)
            self.signal_new(live, signal.SIGKILL)
        else:
            self.signal_new(live, signal.SIGTERM)  # forked during the grace

    def leftovers(self) -> int:
        return len({p for p, _t in self.signalled if p != self.pid})

    def timeout(self, now: float) -> float:
        if self.ending:
            if not self.killed:
                return max(0.0, min(self.kill_at - now, RESCAN_INTERVAL * 2))
            return RESCAN_INTERVAL
        return LEASE_CHECK_INTERVAL if self.opts["lease_file"] else LOG_CAP_INTERVAL

    def check_fence(self) -> float | None:
        """The lease deadline if it has passed (the run must be fenced), else None."""
        if not self.opts["lease_file"]:
            return None
        deadline = _lease_deadline(self.opts["lease_file"])
        if deadline is not None and time.time() >= deadline:
            self.fenced_deadline = deadline
            return deadline
        return None

    def open_events(self, poller: select.poll) -> None:
        if self.cgroup and self.events_fd < 0:
            try:
                self.events_fd = os.open(self.cgroup + "/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
                poller.register(self.events_fd, select.POLLPRI)  # a change of "populated" wakes us
            except OSError:
                self.events_fd = -1

    def loop(self) -> None:
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        last_cap = time.monotonic()
        while True:
            self.reap()
            if not self.ending:
                if self.status is None and (_Flags.stop or _Flags.hurry):
                    self.stopped_by = _Flags.stop or signal.SIGUSR1
                    self.begin_end(f"stop requested ({SIGNAL_NAMES.get(self.stopped_by, self.stopped_by)})")
                elif self.status is None and (passed := self.check_fence()) is not None:
                    self.begin_end(f"the supervisor's lease deadline {_iso(passed)} has passed "
                                   "(not renewed in time); fencing: ending the run")
                elif self.status is not None:
                    self.begin_end("the agent has ended")
                if self.ending:
                    self.open_events(poller)
                    self.reap()
            else:
                self.step_end()
                self.reap()
            if self.ending and self.done():
                return
            now = time.monotonic()
            if self.opts["log_file"] and now - last_cap >= LOG_CAP_INTERVAL:
                _cap_log(self.opts["log_file"], self.opts["max_log_bytes"])
                last_cap = now
            try:
                for fd, _ev in poller.poll(self.timeout(now) * 1000):
                    if fd == self.wake_r:
                        _drain(fd)
                    elif fd == self.events_fd:  # reading re-arms the notification
                        os.lseek(fd, 0, os.SEEK_SET)
                        os.read(fd, 256)
            except InterruptedError:
                pass

    def remove_cgroup(self) -> None:
        if self.events_fd >= 0:
            os.close(self.events_fd)
            self.events_fd = -1
        if not self.cgroup:
            return
        for _ in range(100):
            try:
                os.rmdir(self.cgroup)
                return
            except FileNotFoundError:
                return
            except OSError as exc:  # EBUSY: the last member is still on its way out
                last = exc
            time.sleep(0.01)
        _say(f"could not remove the run's cgroup {self.cgroup}: {last.strerror or last}")


def main(argv: list[str]) -> int:
    original_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    wake_r, wake_w = _install_signals()
    subreaper = _set_subreaper()
    env = None
    cwd = None
    if argv and argv[0] == "--wait-command":
        opts, env, cwd, exit_status = _wait_command(argv[1:], wake_r)
        if opts is None:
            return exit_status
    else:
        opts = _parse(argv)
    cmd = opts["cmd"]
    report_fd = opts["report_fd"]
    # The exec-error pipe tells the parent whether exec worked (closed on exec by O_CLOEXEC).
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)  # no handler of ours may run in the child
    pid = os.fork()
    if pid == 0:  # the agent
        _agent(cmd, env, cwd, opts["cgroup"], err_w, (err_r, report_fd, wake_r, wake_w), original_mask)
    signal.pthread_sigmask(signal.SIG_SETMASK, original_mask)
    os.close(err_w)
    exec_errno, exec_error, cgroup_error = _exec_result(err_r)
    # Reported once the child has exec'd (or failed to): the pid the supervisor records as RUNNING is
    # then the agent itself, not a copy of this monitor still setting it up (environment, cwd, cgroup).
    _report(report_fd, pid)
    if not subreaper:
        _say("could not become a child subreaper; descendants that outlive their parent may escape the run")
    if cgroup_error:
        _say(f"the agent could not join its cgroup {opts['cgroup']} ({cgroup_error}); "
             "the run is contained as subreaper only")

    run = _Run(pid, opts, wake_r, subreaper)
    run.loop()
    # The agent and all its descendants are gone: what is left (the exit record) must not take the CPU
    # from the services that record it — when hundreds of runs end at once, hundreds of monitors wake.
    try:
        os.nice(10)
    except OSError:
        pass
    run.remove_cgroup()
    status = run.status
    record: dict[str, int | str | bool | None] = {
        "pid": pid, "exit_code": None, "signal": None, "exited_at": _iso(run.exited_at or time.time()),
        "leftovers": run.leftovers()}
    if status is not None:
        if os.WIFSIGNALED(status):
            record["signal"] = os.WTERMSIG(status)
        else:
            record["exit_code"] = os.waitstatus_to_exitcode(status)
    else:
        record["error"] = "the monitor could not collect the agent's exit status"
    if exec_errno is not None:
        record["error"] = exec_error
        record["exec_errno"] = exec_errno
    if run.stopped_by:
        record["stop_signal"] = int(run.stopped_by)
    if run.fenced_deadline is not None:
        record["fenced"] = True
        record["error"] = (f"fenced: the supervisor's lease was not renewed in time (deadline "
                           f"{_iso(run.fenced_deadline)} passed); the run monitor ended the run so that no "
                           "second agent runs for this chat")
    if opts["cgroup"] and not cgroup_error:
        record["cgroup"] = opts["cgroup"]
    _write_exit_file(opts["exit_file"], record)
    return 0


if __name__ == "__main__":
    # No interpreter tear-down: everything is written with os.write; exiting fast is what the
    # supervisor's pidfd waits on.
    os._exit(main(sys.argv[1:]))
