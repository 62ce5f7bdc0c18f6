"""Process layer: spawn an agent under its per-run monitor, watch it, adopt it, stop it.

Every run gets `<state>/chats/<chat>/run-<n>.log` (0600, dir 0700), opened BEFORE the spawn, as the
monitor's (and so the agent's) stdout and stderr. The monitor (runmon.py) is started in its own
session, so its pid is the process group of the run; it writes `run-<n>.exit` when the agent ends.

Watching uses `os.pidfd_open(monitor pid)` + `loop.add_reader`: the loop wakes when the monitor
exits (no polling, no thread per child); we reap it only if it is our child and read the exit file.
After a supervisor restart the same works for adopted monitors (identity checked by pid + start
ticks from /proc, so a reused pid is never mistaken for ours).

Warm monitor: starting the monitor's interpreter is most of a spawn's cost, so the supervisor keeps
ONE idle monitor started ahead of need (`WarmMonitor`, runmon.py --wait-command) and hands it the
run as one JSON line on its stdin; a replacement is started in a background thread. Whenever no
warm monitor is ready or it turns out unusable, spawn falls back to a one-shot monitor (argv on
its command line), so behaviour is the same either way, only faster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from wgs.common import validation
from wgs.common.procfs import is_alive, start_ticks, stat_fields

log = logging.getLogger("wgs.supervisor.procs")

RUNMON = Path(__file__).resolve().with_name("runmon.py")
KEEP_RUNS = 5
DEFAULT_MAX_LOG_BYTES = 8 * 1024 * 1024
REPORT_TIMEOUT = 5.0
UNKNOWN_EXIT = "exit status unknown: the supervisor was down when the agent ended (no exit record)"
_RUN_FILE_RE = re.compile(r"^run-(\d+)\.(log|exit)$")


class SpawnError(Exception):
    """The agent could not be started; the message names the cause."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class ExitInfo:
    """How a run ended, as read from its exit file (or why that is unknown)."""

    exit_code: int | None
    signal: int | None
    exited_at: datetime
    error: str = ""

    @property
    def signal_name(self) -> str:
        if self.signal is None:
            return ""
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"

    def describe(self) -> str:
        if self.error and self.exit_code is None and self.signal is None:
            return self.error
        if self.signal is not None:
            return f"killed by signal {self.signal} ({self.signal_name})"
        text = f"exited with code {self.exit_code}"
        return f"{text}: {self.error}" if self.error else text


@dataclass
class Run:
    """One live (or adopted) run: the agent and its monitor."""

    chat_id: str
    number: int
    pid: int
    start_ticks: int
    monitor_pid: int
    monitor_start_ticks: int
    log_path: Path
    exit_path: Path
    argv: list[str]
    started_at: datetime
    popen: subprocess.Popen[bytes] | None = None  # set when the monitor is our child
    stop_requested: bool = False
    pidfd: int = -1
    extra: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- /proc


def group_members(pgid: int, *, include_zombies: bool = False) -> list[int]:
    """Pids whose process group is `pgid` (zombies excluded unless asked: they hold no resources)."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = stat_fields(int(entry))
        if st is None or len(st) < 3:
            continue
        if int(st[2]) != pgid:
            continue
        if not include_zombies and st[0] in (b"Z", b"X"):
            continue
        out.append(int(entry))
    return out


# ---------------------------------------------------------------------------------------- files


def chat_dir(state_dir: Path, chat_id: str) -> Path:
    """`<state>/chats/<chat>`; the id is validated so no path escapes the state dir."""
    validation.chat_id(chat_id)
    return state_dir / "chats" / chat_id


def run_paths(state_dir: Path, chat_id: str, number: int) -> tuple[Path, Path]:
    d = chat_dir(state_dir, chat_id)
    return d / f"run-{number}.log", d / f"run-{number}.exit"


def prune_runs(directory: Path, keep: int = KEEP_RUNS) -> None:
    """Delete run files except those of the `keep` highest run numbers."""
    numbers: dict[int, list[Path]] = {}
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for p in entries:
        m = _RUN_FILE_RE.match(p.name)
        if m:
            numbers.setdefault(int(m.group(1)), []).append(p)
    for n in sorted(numbers)[:-keep] if keep > 0 else sorted(numbers):
        for p in numbers[n]:
            p.unlink(missing_ok=True)


def read_exit_file(path: Path) -> ExitInfo | None:
    """Parse a monitor's exit file; None if it does not exist (or is unreadable)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        exited_at = datetime.fromisoformat(str(doc.get("exited_at", "")).replace("Z", "+00:00"))
    except ValueError:
        exited_at = datetime.now(UTC)
    code = doc.get("exit_code")
    sig = doc.get("signal")
    return ExitInfo(
        exit_code=int(code) if code is not None else None,
        signal=int(sig) if sig is not None else None,
        exited_at=exited_at,
        error=str(doc.get("error") or ""),
    )


def tail_text(path: Path | str, max_bytes: int = 4096, max_lines: int = 80) -> str:
    """Last `max_bytes` / `max_lines` of a file, decoded leniently; "" if missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError:
        return ""
    if size > max_bytes:
        nl = data.find(b"\n")
        if 0 <= nl < len(data) - 1:
            data = data[nl + 1 :]  # drop the partial first line
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])


# ---------------------------------------------------------------------------------------- spawn


def resolve_executable(program: str, cwd: str, path_env: str | None) -> str:
    """Absolute path of argv[0]; a bare name is searched in dirname(sys.executable) first, then PATH."""
    if not program:
        raise SpawnError("the command is empty (argv[0] missing)")
    if "/" in program:
        candidate = program if os.path.isabs(program) else os.path.join(cwd, program)
        if not os.path.exists(candidate):
            raise SpawnError(f"executable not found: {candidate}")
        if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
            raise SpawnError(f"not executable: {candidate} (check its mode, e.g. chmod +x)")
        return os.path.abspath(candidate)
    dirs = [os.path.dirname(sys.executable)]
    dirs += [d for d in (path_env or "").split(os.pathsep) if d]
    for d in dirs:
        candidate = os.path.join(d, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SpawnError(
        f"executable not found: {program!r} is not in {os.path.dirname(sys.executable)} nor on PATH"
    )


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _read_report(fd: int, timeout: float) -> tuple[int | None, str]:
    """The monitor's report line: (agent pid, "") or (None, why not)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, f"no report within {timeout:.0f}s"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return None, f"no report within {timeout:.0f}s"
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0].decode("utf-8", "replace")
    try:
        return int(line), ""
    except ValueError:
        return None, line or "the monitor exited without reporting"


def _write_all(fd: int, data: bytes, timeout: float) -> None:
    """Write everything to a pipe, giving up (TimeoutError) if the reader stalls."""
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            n = 0
        view = view[n:]
        if view:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                raise TimeoutError("the monitor did not read its command")


# Environment of an idle warm monitor: nothing of the supervisor's (its secrets stay out of
# /proc/<monitor>/environ); the agent's environment travels in the command.
_LOCALE_VARS = ("LANG", "LC_ALL", "LC_CTYPE")


@dataclass
class _Idle:
    popen: subprocess.Popen[bytes]
    cmd_w: int
    report_r: int

    def discard(self, *, kill: bool = False) -> None:
        """Close our ends (an idle monitor exits on EOF) and reap it."""
        for fd in (self.cmd_w, self.report_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.cmd_w = self.report_r = -1
        if kill:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait()


def _start_idle(state_dir: Path) -> _Idle:
    """Start an idle monitor: stdin = command pipe, stdout/stderr = /dev/null, own session."""
    cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    env = {k: os.environ[k] for k in _LOCALE_VARS if k in os.environ}
    try:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", str(RUNMON), "--wait-command", "--report-fd", str(report_w),
             "--state-dir", str(state_dir)],
            stdin=cmd_r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", env=env,
            start_new_session=True, close_fds=True, pass_fds=(report_w,),
        )
    except BaseException:
        os.close(cmd_w)
        os.close(report_r)
        raise
    finally:
        os.close(cmd_r)
        os.close(report_w)
    return _Idle(popen, cmd_w, report_r)


class WarmMonitor:
    """At most one idle, pre-started run monitor, refilled in a background thread.

    `take()` hands the idle monitor to exactly one caller (a lock around it, so two concurrent
    spawns never share one) and starts a replacement; the replacement's start (a fork+exec,
    ~1-3 ms; its interpreter start-up then overlaps with whatever the supervisor does next) runs in
    a thread, never on the caller's path. A caller that finds the replacement still being started
    waits for it (never longer than starting a monitor itself). Nothing is started before the first
    `prime()` or `take()`. `close()` ends the idle monitor (EOF on its command pipe).
    """

    FILL_WAIT = 0.5

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._cond = threading.Condition()
        self._ready: _Idle | None = None
        self._filling = False
        self._closed = False

    def prime(self) -> None:
        """Start the idle monitor in the background if there is none (returns at once)."""
        with self._cond:
            self._fill_locked()

    def _fill_locked(self) -> None:
        if self._closed or self._ready is not None or self._filling:
            return
        self._filling = True
        threading.Thread(target=self._fill, name="wgs-warm-monitor", daemon=True).start()

    def _fill(self) -> None:
        idle: _Idle | None = None
        try:
            idle = _start_idle(self._state_dir)
        except Exception as exc:  # spawn falls back to one-shot; say why once here
            log.warning("could not start a warm run monitor: %s", exc)
        with self._cond:
            if idle is not None and not self._closed:
                self._ready, idle = idle, None
            if idle is None:
                self._filling = False
                self._cond.notify_all()
                return
        idle.discard()  # closed meanwhile: end it before close() returns
        with self._cond:
            self._filling = False
            self._cond.notify_all()

    def take(self) -> _Idle | None:
        """The idle monitor for one spawn (None: none ready, use one-shot); starts a replacement."""
        with self._cond:
            if self._closed:
                return None
            if self._ready is None and not self._filling:
                self._fill_locked()
            if self._ready is None:
                self._cond.wait_for(lambda: self._ready is not None or not self._filling or self._closed,
                                    self.FILL_WAIT)
            idle, self._ready = self._ready, None
            if not self._closed:
                self._fill_locked()
            return idle

    def idle_pid(self, timeout: float = 5.0) -> int | None:
        """Pid of the idle monitor, waiting up to `timeout` for one being started (introspection)."""
        with self._cond:
            self._cond.wait_for(lambda: self._ready is not None or not self._filling, timeout)
            return self._ready.popen.pid if self._ready is not None else None

    def close(self) -> None:
        """End the idle monitor and stop refilling (blocking a few ms: call via asyncio.to_thread)."""
        with self._cond:
            self._closed = True
            idle, self._ready = self._ready, None
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._filling, 5.0)  # one being started ends it itself
        if idle is not None:
            idle.discard()


def spawn(
    state_dir: Path,
    chat_id: str,
    number: int,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    *,
    display_argv: list[str] | None = None,
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
    keep_runs: int = KEEP_RUNS,
    warm: WarmMonitor | None = None,
) -> Run:
    """Start one run (blocking, a few ms; call it via asyncio.to_thread). Raises SpawnError.

    With `warm`, its idle monitor runs the agent when one is usable; otherwise (or without `warm`)
    a one-shot monitor is started. Either way the log exists (0600) before any process does."""
    log_path, exit_path = run_paths(state_dir, chat_id, number)
    log_fd = _open_log(log_path)  # exists before the process does
    exit_path.unlink(missing_ok=True)
    try:
        if not cwd or not os.path.isdir(cwd):
            raise SpawnError(f"working directory does not exist or is not a directory: {cwd!r}")
        if not os.access(cwd, os.X_OK):
            raise SpawnError(f"working directory is not accessible: {cwd!r}")
        exe = resolve_executable(argv[0] if argv else "", cwd, env.get("PATH"))
        full = [exe, *argv[1:]]
        started = None
        if warm is not None:
            started = _spawn_warm(warm, full, env, cwd, log_path, exit_path, max_log_bytes)
        if started is None:
            started = _spawn_oneshot(full, env, cwd, log_fd, log_path, exit_path, max_log_bytes)
    finally:
        os.close(log_fd)
    popen, pid = started
    agent_ticks = start_ticks(pid) or 0
    monitor_ticks = start_ticks(popen.pid) or 0
    prune_runs(log_path.parent, keep_runs)
    return Run(
        chat_id=chat_id, number=number, pid=pid, start_ticks=agent_ticks, monitor_pid=popen.pid,
        monitor_start_ticks=monitor_ticks, log_path=log_path, exit_path=exit_path,
        argv=list(display_argv if display_argv is not None else full), started_at=datetime.now(UTC),
        popen=popen,
    )


def _spawn_oneshot(full: list[str], env: dict[str, str], cwd: str, log_fd: int, log_path: Path,
                   exit_path: Path, max_log_bytes: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start a fresh monitor with the run on its command line; (monitor, agent pid)."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        cmd = [
            sys.executable, "-I", "-S", str(RUNMON),
            "--exit-file", str(exit_path), "--log-file", str(log_path),
            "--max-log-bytes", str(max_log_bytes), "--report-fd", str(report_w), "--", *full,
        ]
        try:
            popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, cwd=cwd, env=env,
                start_new_session=True, close_fds=True, pass_fds=(report_w,),
            )
        except OSError as exc:
            raise SpawnError(f"could not start the run monitor: {exc}") from None
        os.close(report_w)
        report_w = -1
        pid, _why = _read_report(report_r, REPORT_TIMEOUT)
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)
    if pid is None:
        # The monitor did not report: kill its group so nothing is left behind.
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.wait()
        raise SpawnError(f"the run monitor did not report the agent pid within {REPORT_TIMEOUT:.0f}s")
    return popen, pid


def _spawn_warm(warm: WarmMonitor, full: list[str], env: dict[str, str], cwd: str, log_path: Path,
                exit_path: Path, max_log_bytes: int) -> tuple[subprocess.Popen[bytes], int] | None:
    """Hand the run to the warm monitor; None (after cleaning up) when it cannot take it."""
    idle = warm.take()
    if idle is None:
        return None
    if idle.popen.poll() is not None:
        log.warning("the warm run monitor (pid %d) had exited (%s); starting a one-shot monitor",
                    idle.popen.pid, idle.popen.returncode)
        idle.discard()
        return None
    command = json.dumps({"argv": full, "env": env, "cwd": cwd, "log_file": str(log_path),
                          "exit_file": str(exit_path), "max_log_bytes": max_log_bytes}) + "\n"
    why = ""
    pid: int | None = None
    try:
        _write_all(idle.cmd_w, command.encode("utf-8", "surrogateescape"), REPORT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        why = f"command not delivered: {exc}"
    else:
        os.close(idle.cmd_w)  # the monitor reads no more; nothing else holds this end
        idle.cmd_w = -1
        pid, why = _read_report(idle.report_r, REPORT_TIMEOUT)
    if pid is None:
        # Kill its group (an agent it may have forked included) before starting one afresh.
        log.warning("the warm run monitor (pid %d) could not take the run (%s); starting a one-shot monitor",
                    idle.popen.pid, why)
        idle.discard(kill=True)
        exit_path.unlink(missing_ok=True)
        return None
    os.close(idle.report_r)
    idle.report_r = -1
    return idle.popen, pid


# ---------------------------------------------------------------------------------------- watch


ExitCallback = Callable[[Run, ExitInfo], None]


def collect_exit(run: Run) -> ExitInfo:
    """Reap the monitor if it is our child and read the run's exit file."""
    if run.popen is not None:
        try:
            run.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    info = read_exit_file(run.exit_path)
    if info is not None:
        return info
    if run.popen is not None and run.popen.returncode is not None:
        rc = run.popen.returncode
        how = f"signal {-rc}" if rc < 0 else f"code {rc}"
        return ExitInfo(None, None, datetime.now(UTC),
                        f"exit status unknown: the run monitor ended ({how}) without an exit record")
    return ExitInfo(None, None, datetime.now(UTC), UNKNOWN_EXIT)


def watch(run: Run, on_exit: ExitCallback, loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Call on_exit(run, info) once the run's monitor has exited. False if it is already gone
    (the caller then calls collect_exit itself)."""
    loop = loop or asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(run.monitor_pid)
    except (ProcessLookupError, OSError):
        return False
    # The pid may have been reused between the record and pidfd_open: check identity after opening.
    if run.popen is None and not is_alive(run.monitor_pid, run.monitor_start_ticks):
        os.close(fd)
        return False
    run.pidfd = fd

    def _ready() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        run.pidfd = -1
        on_exit(run, collect_exit(run))

    loop.add_reader(fd, _ready)
    return True


def unwatch(run: Run, loop: asyncio.AbstractEventLoop | None = None) -> None:
    if run.pidfd >= 0:
        (loop or asyncio.get_running_loop()).remove_reader(run.pidfd)
        os.close(run.pidfd)
        run.pidfd = -1


# ---------------------------------------------------------------------------------------- signals


def interrupt(run: Run) -> bool:
    """SIGINT to the agent; True only if a live agent (pid + start ticks) received it."""
    if not is_alive(run.pid, run.start_ticks):
        return False
    try:
        os.kill(run.pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    return True


async def _wait_until(pred: Callable[[], bool], limit: float, step: float = 0.02) -> bool:
    """Bounded wait on /proc state (there is no event for "a process group is empty")."""
    deadline = time.monotonic() + limit
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live descendant of `root`, whatever its process group/session."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = stat_fields(int(entry))
        if st is None or len(st) < 20 or st[0] in (b"Z", b"X"):
            continue
        children.setdefault(int(st[1]), []).append(int(entry))
        ticks[int(entry)] = int(st[19])
    out: list[tuple[int, int]] = []
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        out.append((pid, ticks[pid]))
        todo.extend(children.get(pid, ()))
    return out


def _signal_all(pgid: int, escaped: list[tuple[int, int]], sig: int, *, spare: int = 0) -> None:
    for pid in group_members(pgid):
        if pid != spare:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    for pid, ticks in escaped:
        if pid != spare and is_alive(pid, ticks):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


async def stop_group(run: Run, grace: float) -> list[int]:
    """SIGTERM the run's processes, SIGKILL what is left after `grace` seconds.

    The run's processes are its process group (the monitor's session) plus any descendant that
    moved to a group of its own (setsid/setpgid), found by walking /proc before signalling.
    The monitor ignores SIGTERM and outlives the agent so it can record the exit; at the SIGKILL
    stage everything but the monitor is killed first, then the monitor gets a moment to write its
    record before it is killed too. Returns pids still alive at the end (none expected); zombies
    count as gone. Limitation: a descendant that escaped the group *and* whose parent died before
    the stop (re-parented to init) is no longer found.
    """
    pgid = run.monitor_pid
    if not is_alive(pgid, run.monitor_start_ticks) and not group_members(pgid):
        return []
    escaped = [(p, t) for p, t in descendants(pgid) if p not in set(group_members(pgid))]

    def left() -> list[int]:
        return group_members(pgid) + [p for p, t in escaped if is_alive(p, t)]

    _signal_all(pgid, escaped, signal.SIGTERM)
    if await _wait_until(lambda: not left(), grace):
        return []
    _signal_all(pgid, escaped, signal.SIGKILL, spare=pgid)
    if await _wait_until(lambda: not left(), 2.0):
        return []
    _signal_all(pgid, escaped, signal.SIGKILL)
    await _wait_until(lambda: not left(), 2.0)
    return left()
