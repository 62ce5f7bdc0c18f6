"""Process layer: spawn an agent under its per-run monitor, watch it, adopt it, stop it, and prove
that no process of an earlier run lives before the next one starts.

Every run gets `<state>/chats/<chat>/run-<n>.log` (0600, dir 0700), opened BEFORE the spawn, as the
monitor's (and so the agent's) stdout and stderr. The monitor (runmon.py) is started in its own
session, so its pid is the process group of the run; it writes `run-<n>.exit` when the agent ends.

Containment (a run dies whole): the monitor is a child subreaper and, where the host delegates a
cgroup v2 (`cgroup_root()`: WGS_CGROUP_ROOT, default auto), the run gets its own cgroup
`<root>/wgs-<state hash>.chat-N.run-M` that the agent joins before exec. When the agent ends, the
monitor ends every remaining descendant (SIGTERM, the stop grace, SIGKILL / cgroup.kill) before it
writes the exit file (which says how many: "leftovers"). Every agent also carries
`WGS_RUN_ID=<state>/chats/<chat>/run-<n>` (`run_marker`), inherited by its descendants, so they
can be found from /proc even if the monitor was killed (`live_processes_of_runs`).

Identity (signal only what you started): a run monitor is recognised by pid + start ticks + owner
+ its /proc cmdline (runmon.py with `--state-dir <ours> --supervisor-id <ours>`) + its stdout
being the run's log (`check_monitor` / `verify_monitor`). Every signal goes through a pidfd opened
before that check (`procfs.signal_process`), to a verified monitor, a child of one, or a process in
the run's cgroup or carrying the run's marker; anything else is refused with a reason.

Watching uses `os.pidfd_open(monitor pid)` + `loop.add_reader`: the loop wakes when the monitor
exits (no polling, no thread per child); we reap it only if it is our child and read the exit file.
After a supervisor restart the same works for adopted monitors (identity checked by pid + start
ticks from /proc, so a reused pid is never mistaken for ours). No select(): every wait is poll,
a pidfd in the event loop, or asyncio.

Warm monitor: starting the monitor's interpreter is most of a spawn's cost, so the supervisor keeps
ONE idle monitor started ahead of need (`WarmMonitor`, runmon.py --wait-command) and hands it the
run as one JSON line on its stdin; a replacement is started in a background thread. Whenever no
warm monitor is ready or it turns out unusable, spawn falls back to a one-shot monitor (argv on
its command line), so behaviour is the same either way, only faster.

Fencing: with `lease_file`, the monitor ends the run by itself once the deadline the supervisor
writes there (`write_lease_deadline`, after each lease renewal) has passed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
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
from collections import deque
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wgs.common import paths, procfs, validation
from wgs.common.procfs import is_alive, start_ticks, stat_fields
from wgs.common.settings import env_str

log = logging.getLogger("wgs.supervisor.procs")

RUNMON = Path(__file__).resolve().with_name("runmon.py")
KEEP_RUNS = 5
DEFAULT_MAX_LOG_BYTES = 8 * 1024 * 1024
DEFAULT_STOP_GRACE = 5.0
REPORT_TIMEOUT = 5.0
STOP_MARGIN = 5.0  # after its grace, how long a monitor may take to kill, reap and record before it is "stuck"
RUN_ID_VAR = "WGS_RUN_ID"
CGROUP_ENV = "WGS_CGROUP_ROOT"
_RUN_FILE_RE = re.compile(r"^run-(\d+)\.(log|exit)$")

# errno values of a failed exec/chdir that retrying the same command cannot fix.
PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR,
                              errno.ELOOP, errno.ENAMETOOLONG, errno.E2BIG, errno.ELIBBAD})


class SpawnError(Exception):
    """The agent could not be started; the message names the cause.

    `permanent`: retrying the same plan cannot help (the executable or working directory is
    missing or unusable) — the fix is the user's. `kind` names the class ("not_found",
    "not_executable", "bad_cwd", "monitor", ...) and `errno` the errno behind it, if any."""

    def __init__(self, message: str, *, permanent: bool = False, kind: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.kind = kind
        self.errno = errno


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


@dataclass
class ExitInfo:
    """How a run ended, as read from its exit file (or why that is unknown)."""

    exit_code: int | None
    signal: int | None
    exited_at: datetime
    error: str = ""
    leftovers: int = 0  # processes other than the agent that the monitor ended before recording
    stop_signal: int | None = None  # the run was ended because its monitor was asked to stop it
    fenced: bool = False  # ended by the monitor because the supervisor's lease deadline passed
    exec_errno: int | None = None  # the agent never ran: its chdir/exec failed with this errno
    contained: bool = False  # the record comes from a monitor that ended the whole run before writing it
    monitor_signal: int | None = None  # no record: the run monitor itself was killed by this signal

    @property
    def signal_name(self) -> str:
        return "" if self.signal is None else _signal_name(self.signal)

    @property
    def stopped(self) -> bool:
        """A stop asked of the monitor (supervisor stop, `wgs down`) ended the run, not the agent itself."""
        return self.stop_signal is not None

    @property
    def permanent(self) -> bool:
        """The agent could not be executed for a reason retrying cannot fix (ENOENT, EACCES, ENOEXEC...)."""
        return self.exec_errno is not None and self.exec_errno in PERMANENT_ERRNOS

    def describe(self) -> str:
        if self.exit_code is None and self.signal is None:
            text = self.error or "exit status unknown"
        else:
            if self.signal is not None:
                text = f"killed by signal {self.signal} ({self.signal_name})"
            else:
                text = f"exited with code {self.exit_code}"
            if self.error:
                text = f"{text}: {self.error}"
        if self.leftovers:
            text += f"; {self.leftovers} leftover process{'es' if self.leftovers != 1 else ''} ended"
        return text


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
    supervisor_id: str = ""  # the id on the monitor's command line (identity check)
    state_dir: Path | None = None  # default: derived from log_path (<state>/chats/<chat>/run-N.log)
    cgroup: Path | None = None  # the run's cgroup, if it has one
    stop_grace: float = DEFAULT_STOP_GRACE  # the monitor's own grace (stops it makes by itself)

    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.log_path.parent.parent.parent

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(number=self.number, pid=self.pid, start_ticks=self.start_ticks,
                           monitor_pid=self.monitor_pid, monitor_start_ticks=self.monitor_start_ticks,
                           supervisor_id=self.supervisor_id)


@dataclass(frozen=True)
class RunIdentity:
    """What the graph recorded of one run (runtime_pb2.Run): enough to find what is left of it."""

    number: int
    pid: int = 0
    start_ticks: int = 0
    monitor_pid: int = 0
    monitor_start_ticks: int = 0
    supervisor_id: str = ""

    @classmethod
    def from_record(cls, run: Any) -> RunIdentity:
        """From a runtime_pb2.Run (or anything with its field names)."""
        return cls(number=int(run.number), pid=int(run.pid), start_ticks=int(run.process_start_ticks),
                   monitor_pid=int(run.monitor_pid), monitor_start_ticks=int(run.monitor_start_ticks),
                   supervisor_id=str(run.supervisor_id))


@dataclass(frozen=True)
class ProcessIdentity:
    """A live process proven to belong to a run, and how it was proven."""

    pid: int
    start_ticks: int
    run_number: int
    role: str  # "monitor", "agent" or "descendant"
    proof: str  # e.g. "verified run monitor", "child of the run monitor", "in the run's cgroup", "carries WGS_RUN_ID"
    name: str = ""  # /proc comm, for messages

    def describe(self) -> str:
        return f"{self.role} pid {self.pid}" + (f" ({self.name})" if self.name else "")


@dataclass
class LiveProcesses:
    """Result of `live_processes_of_runs`: what lives, what was refused (never signalled), cgroups left."""

    processes: list[ProcessIdentity] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    cgroups: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.processes)


@dataclass
class EndReport:
    """What `end_processes` did: ended (gone now), of those the ones that needed SIGKILL, survivors."""

    ended: list[ProcessIdentity] = field(default_factory=list)
    killed: list[ProcessIdentity] = field(default_factory=list)
    survivors: list[ProcessIdentity] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """E.g. "agent pid 4242 (sh) and 2 other processes ended" ("" when nothing was ended)."""
        if not self.ended and not self.survivors:
            return ""
        parts: list[str] = []
        if self.ended:
            main = sorted((p for p in self.ended if p.role in ("agent", "monitor")), key=lambda p: p.role != "agent")
            items = [p.describe() for p in main]
            others = len(self.ended) - len(main)
            if others:
                items.append(f"{others} {'other ' if main else ''}process{'es' if others != 1 else ''}")
            text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
            parts.append(f"{text} ended" + (f" ({len(self.killed)} by SIGKILL)" if self.killed else ""))
        if self.survivors:
            parts.append("still alive after SIGKILL: " + ", ".join(p.describe() for p in self.survivors))
        return "; ".join(parts)


@dataclass(frozen=True)
class Delivery:
    """Whether a signal was delivered, and if not why (a refusal the supervisor can log)."""

    delivered: bool
    detail: str = ""


@dataclass
class StopReport:
    """What `stop_run` did. `refused` is non-empty when nothing was signalled (identity not proven)."""

    refused: str = ""
    monitor_finished: bool = False  # the monitor ended the run and recorded its exit
    monitor_stuck: bool = False  # the monitor was alive but did not finish in time: ended by us
    ended: EndReport | None = None  # what procs ended itself (monitor dead or stuck)

    @property
    def survivors(self) -> list[int]:
        return [p.pid for p in self.ended.survivors] if self.ended is not None else []


# ---------------------------------------------------------------------------------------- /proc


def group_members(pgid: int, *, include_zombies: bool = False) -> list[int]:
    """Pids whose process group is `pgid` (zombies excluded unless asked: they hold no resources)."""
    out: list[int] = []
    for pid in procfs.pids():
        st = stat_fields(pid)
        if st is None or len(st) < 3:
            continue
        if int(st[2]) != pgid:
            continue
        if not include_zombies and st[0] in (b"Z", b"X"):
            continue
        out.append(pid)
    return out


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live descendant of `root`, whatever its process group/session."""
    return procfs.descendants(root)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------- files


def chat_dir(state_dir: Path, chat_id: str) -> Path:
    """`<state>/chats/<chat>`; the id is validated so no path escapes the state dir."""
    validation.chat_id(chat_id)
    return state_dir / "chats" / chat_id


def run_paths(state_dir: Path, chat_id: str, number: int) -> tuple[Path, Path]:
    d = chat_dir(state_dir, chat_id)
    return d / f"run-{number}.log", d / f"run-{number}.exit"


def run_marker(state_dir: Path, chat_id: str, number: int) -> str:
    """The value of WGS_RUN_ID for a run: `<state dir>/chats/<chat>/run-<n>` (absolute)."""
    return _marker_prefix(state_dir, chat_id) + str(number)


def _marker_prefix(state_dir: Path, chat_id: str) -> str:
    return os.path.join(os.path.abspath(chat_dir(state_dir, chat_id)), "run-")


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
    if not isinstance(doc, dict):
        return None
    try:
        exited_at = datetime.fromisoformat(str(doc.get("exited_at", "")).replace("Z", "+00:00"))
    except ValueError:
        exited_at = datetime.now(UTC)

    def opt_int(key: str) -> int | None:
        value = doc.get(key)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return ExitInfo(
        exit_code=opt_int("exit_code"),
        signal=opt_int("signal"),
        exited_at=exited_at,
        error=str(doc.get("error") or ""),
        leftovers=opt_int("leftovers") or 0,
        stop_signal=opt_int("stop_signal"),
        fenced=doc.get("fenced") is True,
        exec_errno=opt_int("exec_errno"),
        contained="leftovers" in doc,
    )


def tail_text(path: Path | str, max_bytes: int = 4096, max_lines: int = 80) -> str:
    """Last `max_bytes` / `max_lines` of a file, decoded leniently; "" if missing."""
    try:
        with open(path, "rb") as f:
            return _tail_of(f.fileno(), max_bytes, max_lines)
    except OSError:
        return ""


def _tail_of(fd: int, max_bytes: int, max_lines: int) -> str:
    size = os.lseek(fd, 0, os.SEEK_END)
    start = max(0, size - max_bytes)
    data = os.pread(fd, max_bytes, start)
    if size > max_bytes:
        nl = data.find(b"\n")
        if 0 <= nl < len(data) - 1:
            data = data[nl + 1 :]  # drop the partial first line
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-max_lines:])


class RunFiles:
    """Reads the run files of one state dir's chats (`<state>/chats/<chat>/run-<n>.log`) safely and
    cheaply: the chats directory is resolved once, and a file is opened below it only through real
    directories and as a regular file — no symlink is followed (O_NOFOLLOW on the chat directory and
    the file), so a run file replaced by a link to, say, another user's file is not read. A path
    that is not a chat's file of this state dir is not read at all.

    (The per-read `Path.resolve()` this replaces walked every component of the path in Python: ~15 %
    of the supervisor's CPU while 900 exits were recorded at once, docs/performance.md.)"""

    def __init__(self, state_dir: Path) -> None:
        chats = Path(os.path.abspath(state_dir / "chats"))
        self.root = Path(os.path.realpath(chats))
        self._roots = (chats, self.root) if chats != self.root else (self.root,)

    def where(self, path: Path | str) -> tuple[str, str] | None:
        """(chat, file name) of a run file of this state dir, None for any other path (decided from
        the path's text; links are refused when the file is opened)."""
        path = Path(path)
        for root in self._roots:
            if path.parent.parent == root:
                chat, name = path.parent.name, path.name
                if _RUN_FILE_RE.match(name) and validation.is_chat_id(chat):
                    return chat, name
        return None

    def tails(self, files: Sequence[Path | str], max_bytes: int = 4096, max_lines: int = 80) -> list[str]:
        """The tail of each file (tail_text's rules); "" for a file that is missing, not a regular
        file, reached through a symlink, or not a run file of this state dir. One opening of the
        chats directory for all of them."""
        out = [""] * len(files)
        wanted = [(i, w) for i, w in enumerate(map(self.where, files)) if w is not None]
        if not wanted:
            return out
        try:
            root = os.open(self.root, paths.DIR_FLAGS)
        except OSError:
            return out
        try:
            for i, (chat, name) in wanted:
                out[i] = self._tail_below(root, chat, name, max_bytes, max_lines)
        finally:
            os.close(root)
        return out

    @staticmethod
    def _tail_below(root: int, chat: str, name: str, max_bytes: int, max_lines: int) -> str:
        try:
            d = os.open(chat, paths.DIR_FLAGS, dir_fd=root)
        except OSError:
            return ""
        try:
            fd = paths.open_regular_fd(name, d)
        except OSError:  # ELOOP: a symlink; ENOENT: not there; a FIFO or device
            return ""
        finally:
            os.close(d)
        try:
            return _tail_of(fd, max_bytes, max_lines)
        except OSError:
            return ""
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------- leases


def write_lease_deadline(path: Path | str, deadline: float) -> None:
    """Tell this supervisor's run monitors until when its lease holds (epoch seconds), atomically.

    Call it after each successful lease renewal with a deadline *before* the lease lapses by at
    least the stop grace + 1 s (the monitors check once a second), e.g.
    `renewed_at + lease_seconds - stop_grace - 2`: a monitor that sees the deadline pass ends its
    run, so it is gone before another replica may take the chat over. Remove the file to disable
    fencing, e.g. on a clean shutdown that leaves the agents running for the next supervisor to adopt
    (a stale deadline would otherwise end them once it passes)."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{deadline:.3f}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_lease_deadline(path: Path | str) -> float | None:
    """The deadline `write_lease_deadline` wrote, None if there is no (readable) file."""
    try:
        return float(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------- cgroups


def _mount_dir_of_own_cgroup() -> Path | None:
    """Directory of this process's own cgroup v2 (the cgroup2 mount + the path from /proc/self/cgroup)."""
    own = procfs.cgroup_of(os.getpid())
    if own is None:
        return None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep or not right.startswith("cgroup2 "):
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        mount_root, mount_point = fields[3], fields[4].replace("\\040", " ")
        if own == mount_root or own.startswith(mount_root.rstrip("/") + "/"):
            rel = own[len(mount_root.rstrip("/")):].lstrip("/")
            return Path(mount_point) / rel if rel else Path(mount_point)
    return None


def _usable_cgroup_dir(path: Path) -> bool:
    return (path / "cgroup.procs").is_file() and os.access(path, os.W_OK) and os.access(path / "cgroup.procs", os.W_OK)


@functools.lru_cache(maxsize=8)
def _resolve_cgroup_root(setting: str) -> Path | None:
    if setting.lower() == "off":
        return None
    if setting.lower() in ("", "auto"):
        found = _mount_dir_of_own_cgroup()
        if found is None or not _usable_cgroup_dir(found):
            log.info("no writable cgroup v2 delegated to the supervisor (%s); runs are contained by their "
                     "monitor as subreaper only", found or "no cgroup2 mount")
            return None
        return found
    path = Path(setting)
    if not _usable_cgroup_dir(path):
        log.warning("%s=%s is not a writable cgroup v2 directory; runs get no cgroup", CGROUP_ENV, setting)
        return None
    return path


def cgroup_root(setting: str | None = None) -> Path | None:
    """Where run cgroups are created, None when runs get none.

    `setting` (default: WGS_CGROUP_ROOT): "auto" or "" = the supervisor's own cgroup v2 directory
    (e.g. /sys/fs/cgroup/<its path> or /sys/fs/cgroup/unified on hybrid hosts) if writable;
    "off" = none; anything else = that directory (if it is a writable cgroup v2 directory)."""
    return _resolve_cgroup_root(env_str(CGROUP_ENV, "auto") if setting is None else setting)


def _state_hash(state_dir: Path) -> str:
    return hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:10]


def run_cgroup_name(state_dir: Path, chat_id: str, number: int) -> str:
    """`wgs-<10 hex of the state dir>.chat-N.run-M` (chat ids start with '.')."""
    validation.chat_id(chat_id)
    return f"wgs-{_state_hash(state_dir)}{chat_id}.run-{number}"


def run_cgroup(state_dir: Path, chat_id: str, number: int, root: Path | None = None) -> Path | None:
    """The run's cgroup directory if it exists (under `root`, default `cgroup_root()`)."""
    root = root if root is not None else cgroup_root()
    if root is None:
        return None
    path = root / run_cgroup_name(state_dir, chat_id, number)
    return path if path.is_dir() else None


def run_cgroups(state_dir: Path, root: Path | None = None) -> list[Path]:
    """Every existing run cgroup of this state dir (e.g. for cleanup after `wgs down`)."""
    root = root if root is not None else cgroup_root()
    if root is None:
        return []
    return sorted(p for p in root.glob(f"wgs-{_state_hash(state_dir)}.chat-*") if p.is_dir())


def remove_stale_cgroups(state_dir: Path, *, chat_id: str | None = None, wait: float = 0.0,
                         root: Path | None = None) -> list[Path]:
    """Remove the empty run cgroups of this state dir (or of one chat); returns those removed.

    A monitor removes its run's cgroup itself; one that was SIGKILLed cannot. Call this after
    ending runs wholesale (`wgs down`, a test harness killing monitors); with `wait`, a cgroup
    whose last processes are still dying is waited for (poll on cgroup.events) up to that long.
    Populated cgroups are left alone: their processes are for `live_processes_of_runs`."""
    removed: list[Path] = []
    deadline = time.monotonic() + wait
    for cg in run_cgroups(state_dir, root):
        if chat_id is not None and not cg.name.startswith(f"wgs-{_state_hash(state_dir)}{chat_id}.run-"):
            continue
        if _cgroup_populated(cg) and wait > 0:
            _wait_unpopulated(cg, max(0.0, deadline - time.monotonic()))
        if not _cgroup_populated(cg):
            try:
                cg.rmdir()
                removed.append(cg)
            except OSError:
                pass
    return removed


def _wait_unpopulated(path: Path, wait: float) -> bool:
    """Wait (poll POLLPRI on cgroup.events: it changes when "populated" does) until the cgroup is empty."""
    try:
        fd = os.open(path / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return not _cgroup_populated(path)
    try:
        deadline = time.monotonic() + wait
        while _cgroup_populated(path):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _poll_one(fd, select.POLLPRI, remaining)
            os.lseek(fd, 0, os.SEEK_SET)
            os.read(fd, 256)  # re-arms the notification
        return True
    finally:
        os.close(fd)


def _drop_empty_cgroups_of_earlier_runs(root: Path, state_dir: Path, chat_id: str, number: int) -> None:
    """Cheap clean-up at spawn (a few stat calls): empty cgroups of the chat's last runs, left by killed monitors."""
    for n in range(max(1, number - KEEP_RUNS), number):
        path = root / run_cgroup_name(state_dir, chat_id, n)
        if path.is_dir() and not _cgroup_populated(path):
            try:
                path.rmdir()
            except OSError:
                pass


_cgroup_warned: set[str] = set()


def _create_run_cgroup(root: Path, state_dir: Path, chat_id: str, number: int) -> Path | None:
    path = root / run_cgroup_name(state_dir, chat_id, number)
    try:
        path.mkdir(exist_ok=True)  # an existing one (a crashed attempt of this run) is reused: its processes are ours
    except OSError as exc:
        if str(root) not in _cgroup_warned:
            _cgroup_warned.add(str(root))
            log.warning("cannot create run cgroups under %s (%s); runs are contained by their monitor only",
                        root, exc.strerror or exc)
        return None
    return path


def cgroup_members(path: Path) -> list[tuple[int, int]]:
    """(pid, start ticks) of the live processes in a cgroup (not its children cgroups)."""
    try:
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
    out: list[tuple[int, int]] = []
    for pid in pids:
        ticks = start_ticks(pid)
        if ticks is not None:
            out.append((pid, ticks))
    return out


def _cgroup_populated(path: Path) -> bool:
    try:
        for line in (path / "cgroup.events").read_text().splitlines():
            if line.startswith("populated "):
                return line.split()[1] != "0"
    except OSError:
        return False
    return False


def _cgroup_kill(path: Path) -> bool:
    """SIGKILL everything in the cgroup (cgroup.kill, Linux >= 5.14; else each member)."""
    try:
        (path / "cgroup.kill").write_text("1")
        return True
    except OSError:
        for pid, ticks in cgroup_members(path):
            procfs.signal_process(pid, ticks, signal.SIGKILL)
        return False


# ---------------------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class MonitorIdentity:
    """What a run monitor's /proc cmdline says it is."""

    pid: int
    start_ticks: int
    state_dir: str
    supervisor_id: str
    warm: bool
    exit_file: str  # one-shot monitors only ("" for warm ones: the run came through the pipe)


def monitor_identity(pid: int, ticks: int | None) -> MonitorIdentity | None:
    """The identity of a live run monitor owned by our uid at (pid, ticks); None if it is not one."""
    if not is_alive(pid, ticks) or procfs.owner_uid(pid) != os.getuid():
        return None
    argv = procfs.cmdline(pid)
    if not argv:
        return None
    idx = next((i for i, a in enumerate(argv[:4]) if os.path.basename(a) == "runmon.py"), -1)
    if idx < 0:
        return None
    opts: dict[str, str] = {}
    warm = False
    i = idx + 1
    while i < len(argv) and argv[i] != "--":
        if argv[i] == "--wait-command":
            warm = True
            i += 1
            continue
        if i + 1 < len(argv):
            opts.setdefault(argv[i], argv[i + 1])
        i += 2
    if "--state-dir" not in opts or "--supervisor-id" not in opts:
        return None  # a monitor of an older wgs, or not a monitor at all: not provably ours
    return MonitorIdentity(pid=pid, start_ticks=start_ticks(pid) or 0, state_dir=opts["--state-dir"],
                           supervisor_id=opts["--supervisor-id"], warm=warm, exit_file=opts.get("--exit-file", ""))


def check_monitor(pid: int, ticks: int | None, state_dir: Path, supervisor_id: str, *,
                  log_path: Path | None = None) -> str:
    """"" if (pid, ticks) is a run monitor of this state dir and supervisor id (and, with `log_path`,
    of that run: its stdout is the run's log); otherwise why not, in words."""
    if pid <= 0:
        return "no monitor pid recorded"
    if not is_alive(pid, ticks):
        return f"pid {pid} is not running (or is another process now: start time differs)"
    ident = monitor_identity(pid, ticks)
    if ident is None:
        name = _comm(pid) or "?"
        if procfs.owner_uid(pid) != os.getuid():
            return f"pid {pid} ({name}) belongs to another user"
        return f"pid {pid} ({name}) is not a run monitor (its command line names no runmon.py with --state-dir " \
               "and --supervisor-id)"
    if os.path.realpath(ident.state_dir) != os.path.realpath(state_dir):
        return f"pid {pid} is a run monitor of another state dir ({ident.state_dir})"
    if ident.supervisor_id != supervisor_id:
        return f"pid {pid} is a run monitor of supervisor {ident.supervisor_id!r}, not {supervisor_id!r}"
    if log_path is not None:
        target = procfs.fd_target(pid, 1) or ""
        if target.removesuffix(" (deleted)") != os.path.realpath(log_path):
            return f"pid {pid} is a run monitor of another run (its output goes to {target or 'an unknown file'})"
    return ""


def verify_monitor(pid: int, start_ticks: int | None, state_dir: Path, supervisor_id: str, *,
                   log_path: Path | None = None) -> bool:
    """True if (pid, start ticks) is a live run monitor of this state dir and supervisor id."""
    return not check_monitor(pid, start_ticks, state_dir, supervisor_id, log_path=log_path)


def _check_run_monitor(run: Run) -> str:
    return check_monitor(run.monitor_pid, run.monitor_start_ticks, run.state, run.supervisor_id,
                         log_path=run.log_path)


def _agent_proof(run: Run, monitor_ok: bool) -> str:
    """How the run's agent (pid + ticks) is proven ours; "" if it is not (or is gone)."""
    if not is_alive(run.pid, run.start_ticks):
        return ""
    if monitor_ok and procfs.parent_pid(run.pid) == run.monitor_pid:
        return "child of the run monitor"
    if procfs.environ_has(run.pid, f"{RUN_ID_VAR}={run_marker(run.state, run.chat_id, run.number)}"):
        return f"carries {RUN_ID_VAR}"
    cg = run.cgroup or run_cgroup(run.state, run.chat_id, run.number)
    if cg is not None and any(p == run.pid for p, _t in cgroup_members(cg)):
        return "in the run's cgroup"
    return ""


# ---------------------------------------------------------------------------------------- spawn


def resolve_executable(program: str, cwd: str, path_env: str | None) -> str:
    """Absolute path of argv[0]; a bare name is searched in dirname(sys.executable) first, then PATH."""
    if not program:
        raise SpawnError("the command is empty (argv[0] missing)", permanent=True, kind="not_found")
    if "/" in program:
        candidate = program if os.path.isabs(program) else os.path.join(cwd, program)
        if not os.path.exists(candidate):
            raise SpawnError(f"executable not found: {candidate}", permanent=True, kind="not_found",
                             errno=errno.ENOENT)
        if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
            raise SpawnError(f"not executable: {candidate} (check its mode, e.g. chmod +x)", permanent=True,
                             kind="not_executable", errno=errno.EACCES)
        return os.path.abspath(candidate)
    dirs = [os.path.dirname(sys.executable)]
    dirs += [d for d in (path_env or "").split(os.pathsep) if d]
    for d in dirs:
        candidate = os.path.join(d, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SpawnError(
        f"executable not found: {program!r} is not in {os.path.dirname(sys.executable)} nor on PATH",
        permanent=True, kind="not_found", errno=errno.ENOENT,
    )


def _open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _poll_one(fd: int, events: int, timeout: float) -> bool:
    """Wait until `fd` is ready for `events` (poll: works for any descriptor number)."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def _read_report(fd: int, timeout: float) -> tuple[int | None, str]:
    """The monitor's report line: (agent pid, "") or (None, why not)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _poll_one(fd, select.POLLIN | select.POLLHUP, remaining):
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
            if remaining <= 0 or not _poll_one(fd, select.POLLOUT, remaining):
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


def _identity_args(state_dir: Path, supervisor_id: str) -> list[str]:
    return ["--state-dir", os.path.abspath(state_dir), "--supervisor-id", supervisor_id]


def _start_idle(state_dir: Path, supervisor_id: str = "") -> _Idle:
    """Start an idle monitor: stdin = command pipe, stdout/stderr = /dev/null, own session."""
    cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    env = {k: os.environ[k] for k in _LOCALE_VARS if k in os.environ}
    try:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", str(RUNMON), "--wait-command", "--report-fd", str(report_w),
             *_identity_args(state_dir, supervisor_id)],
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
    """Up to `size` idle, pre-started run monitors, refilled in background threads.

    `take()` hands the oldest idle monitor (the one most likely done starting its interpreter) to
    exactly one caller (a lock around it, so two concurrent spawns never share one) and starts a
    replacement; a replacement's start (a fork+exec, ~1-3 ms; its interpreter start-up, ~20 ms,
    then overlaps with whatever the supervisor does next) runs in a thread, never on the caller's
    path. With one monitor, creates in quick succession each wait for the interpreter start-up of
    the monitor the previous one started; with two, each gets one started a create earlier. A
    caller that finds none ready but one being started waits for it (never longer than starting a
    monitor itself). Nothing is started before the first `prime()` or `take()`. `close()` ends the
    idle monitors (EOF on their command pipes). An idle monitor also exits on SIGTERM (e.g. from
    `wgs down`).
    """

    FILL_WAIT = 0.5

    def __init__(self, state_dir: Path, *, supervisor_id: str = "", size: int = 1) -> None:
        self._state_dir = state_dir
        self.supervisor_id = supervisor_id
        self.size = max(1, size)
        self._cond = threading.Condition()
        self._ready: deque[_Idle] = deque()
        self._filling = 0  # monitors being started
        self._closed = False

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    def prime(self) -> None:
        """Start the idle monitors in the background if there are none (returns at once)."""
        with self._cond:
            self._fill_locked()

    def _fill_locked(self) -> None:
        while not self._closed and len(self._ready) + self._filling < self.size:
            self._filling += 1
            threading.Thread(target=self._fill, name="wgs-warm-monitor", daemon=True).start()

    def _fill(self) -> None:
        idle: _Idle | None = None
        try:
            idle = _start_idle(self._state_dir, self.supervisor_id)
        except Exception as exc:  # spawn falls back to one-shot; say why once here
            log.warning("could not start a warm run monitor: %s", exc)
        with self._cond:
            if idle is not None and not self._closed:
                self._ready.append(idle)
                idle = None
            if idle is None:
                self._filling -= 1
                self._cond.notify_all()
                return
        idle.discard()  # closed meanwhile: end it before close() returns
        with self._cond:
            self._filling -= 1
            self._cond.notify_all()

    def take(self) -> _Idle | None:
        """An idle monitor for one spawn (None: none ready, use one-shot); starts a replacement."""
        with self._cond:
            if self._closed:
                return None
            if not self._ready and not self._filling:
                self._fill_locked()
            if not self._ready:
                self._cond.wait_for(lambda: bool(self._ready) or not self._filling or self._closed, self.FILL_WAIT)
            idle = self._ready.popleft() if self._ready and not self._closed else None
            self._fill_locked()
            return idle

    def idle_pid(self, timeout: float = 5.0) -> int | None:
        """Pid of the idle monitor `take()` would hand out next, waiting up to `timeout` for one
        being started (introspection)."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._ready) or not self._filling, timeout)
            return self._ready[0].popen.pid if self._ready else None

    def idle_pids(self, timeout: float = 5.0) -> list[int]:
        """Pids of the idle monitors, oldest first, once all `size` are started (or filling stopped)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._ready) >= self.size or not self._filling, timeout)
            return [idle.popen.pid for idle in self._ready]

    def close(self) -> None:
        """End the idle monitors and stop refilling (blocking a few ms: call via asyncio.to_thread)."""
        with self._cond:
            self._closed = True
            idle, self._ready = list(self._ready), deque()
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._filling, 5.0)  # those being started end themselves
        for one in idle:
            one.discard()


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
    supervisor_id: str = "",
    stop_grace: float = DEFAULT_STOP_GRACE,
    lease_file: Path | None = None,
    cgroup_setting: str | None = None,
) -> Run:
    """Start one run (blocking, a few ms; call it via asyncio.to_thread). Raises SpawnError.

    With `warm`, its idle monitor runs the agent when one is usable (same supervisor id); otherwise
    (or without `warm`) a one-shot monitor is started. Either way the log exists (0600) before any
    process does. `supervisor_id` goes on the monitor's command line (its identity); `stop_grace`
    is the grace the monitor gives leftovers and stops it makes itself; `lease_file` enables
    fencing; `cgroup_setting` overrides WGS_CGROUP_ROOT ("off", "auto" or a directory). The agent's
    environment gets WGS_RUN_ID (`run_marker`)."""
    log_path, exit_path = run_paths(state_dir, chat_id, number)
    log_fd = _open_log(log_path)  # exists before the process does
    exit_path.unlink(missing_ok=True)
    cgroup: Path | None = None
    try:
        if not cwd or not os.path.isdir(cwd):
            raise SpawnError(f"working directory does not exist or is not a directory: {cwd!r}", permanent=True,
                             kind="bad_cwd", errno=errno.ENOENT)
        if not os.access(cwd, os.X_OK):
            raise SpawnError(f"working directory is not accessible: {cwd!r}", permanent=True, kind="bad_cwd",
                             errno=errno.EACCES)
        exe = resolve_executable(argv[0] if argv else "", cwd, env.get("PATH"))
        full = [exe, *argv[1:]]
        env = {**env, RUN_ID_VAR: run_marker(state_dir, chat_id, number)}
        root = cgroup_root(cgroup_setting)
        if root is not None:
            _drop_empty_cgroups_of_earlier_runs(root, state_dir, chat_id, number)
            cgroup = _create_run_cgroup(root, state_dir, chat_id, number)
        monitor = _MonitorArgs(state_dir=state_dir, supervisor_id=supervisor_id, log_path=log_path,
                               exit_path=exit_path, max_log_bytes=max_log_bytes, stop_grace=stop_grace,
                               lease_file=lease_file, cgroup=cgroup)
        started = None
        if warm is not None and warm.supervisor_id == supervisor_id and \
                os.path.abspath(warm.state_dir) == os.path.abspath(state_dir):
            started = _spawn_warm(warm, full, env, cwd, monitor, chat_id, number)
        if started is None:
            started = _spawn_oneshot(full, env, cwd, log_fd, monitor)
    except BaseException:
        if cgroup is not None:
            _remove_cgroup_sync(cgroup, 2.0)
        raise
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
        popen=popen, supervisor_id=supervisor_id, state_dir=state_dir, cgroup=cgroup, stop_grace=stop_grace,
    )


def _remove_cgroup_sync(path: Path, wait: float) -> None:
    """rmdir a run cgroup, waiting (up to `wait`) for it to empty."""
    _wait_unpopulated(path, wait)
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the run cgroup %s: %s", path, exc.strerror or exc)


@dataclass(frozen=True)
class _MonitorArgs:
    state_dir: Path
    supervisor_id: str
    log_path: Path
    exit_path: Path
    max_log_bytes: int
    stop_grace: float
    lease_file: Path | None
    cgroup: Path | None

    def argv(self) -> list[str]:
        out = [
            "--exit-file", str(self.exit_path), "--log-file", str(self.log_path),
            "--max-log-bytes", str(self.max_log_bytes), *_identity_args(self.state_dir, self.supervisor_id),
            "--stop-grace", f"{self.stop_grace:g}",
        ]
        if self.lease_file is not None:
            out += ["--lease-file", str(self.lease_file)]
        if self.cgroup is not None:
            out += ["--cgroup", str(self.cgroup)]
        return out

    def command(self) -> dict[str, object]:
        return {"log_file": str(self.log_path), "exit_file": str(self.exit_path),
                "max_log_bytes": self.max_log_bytes, "stop_grace": self.stop_grace,
                "lease_file": str(self.lease_file) if self.lease_file is not None else "",
                "cgroup": str(self.cgroup) if self.cgroup is not None else ""}


def _kill_unreported(popen: subprocess.Popen[bytes], cgroup: Path | None) -> None:
    """A monitor that did not report: kill its group (and the run's cgroup) so nothing is left behind."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if cgroup is not None:
        _cgroup_kill(cgroup)
    popen.wait()


def _spawn_oneshot(full: list[str], env: dict[str, str], cwd: str, log_fd: int,
                   monitor: _MonitorArgs) -> tuple[subprocess.Popen[bytes], int]:
    """Start a fresh monitor with the run on its command line; (monitor, agent pid)."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        cmd = [sys.executable, "-I", "-S", str(RUNMON), *monitor.argv(), "--report-fd", str(report_w), "--", *full]
        try:
            popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, cwd=cwd, env=env,
                start_new_session=True, close_fds=True, pass_fds=(report_w,),
            )
        except OSError as exc:
            raise SpawnError(f"could not start the run monitor: {exc}", kind="monitor", errno=exc.errno) from None
        os.close(report_w)
        report_w = -1
        pid, _why = _read_report(report_r, REPORT_TIMEOUT)
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)
    if pid is None:
        _kill_unreported(popen, monitor.cgroup)
        raise SpawnError(f"the run monitor did not report the agent pid within {REPORT_TIMEOUT:.0f}s",
                         kind="monitor")
    return popen, pid


def kill_marked(state_dir: Path, chat_id: str, number: int) -> list[int]:
    """SIGKILL every process of this user whose environment carries run `number`'s WGS_RUN_ID, each
    through a pidfd after its start ticks were read; returns their pids. For a run no monitor
    accounts for: nothing of it may live on."""
    return [pid for pid, ticks, n in _carrying_marker(state_dir, chat_id)
            if n == number and procfs.signal_process(pid, ticks, signal.SIGKILL)]


def _spawn_warm(warm: WarmMonitor, full: list[str], env: dict[str, str], cwd: str, monitor: _MonitorArgs,
                chat_id: str, number: int) -> tuple[subprocess.Popen[bytes], int] | None:
    """Hand the run to the warm monitor; None (after cleaning up) when it cannot take it."""
    idle = warm.take()
    if idle is None:
        return None
    if idle.popen.poll() is not None:
        log.warning("the warm run monitor (pid %d) had exited (%s); starting a one-shot monitor",
                    idle.popen.pid, idle.popen.returncode)
        idle.discard()
        return None
    command = json.dumps({"argv": full, "env": env, "cwd": cwd, **monitor.command()}) + "\n"
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
        # Kill its group and the run's cgroup before starting one afresh; an agent it may have forked
        # is in a session of its own, and outside any cgroup on a host without one: find it by the
        # run's marker (only this attempt of this run carries it: the chat's lock is held).
        log.warning("the warm run monitor (pid %d) could not take the run (%s); starting a one-shot monitor",
                    idle.popen.pid, why)
        idle.discard(kill=True)
        if monitor.cgroup is not None:
            _cgroup_kill(monitor.cgroup)
        killed = kill_marked(monitor.state_dir, chat_id, number)
        if killed:
            log.warning("killed %s forked for the run by the warm run monitor that could not take it",
                        ", ".join(f"pid {p}" for p in killed))
        monitor.exit_path.unlink(missing_ok=True)
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
        how = f"died ({_signal_name(-rc)})" if rc < 0 else f"exited (code {rc})"
        return ExitInfo(None, None, datetime.now(UTC),
                        f"exit status unknown: the run monitor {how} without an exit record",
                        monitor_signal=-rc if rc < 0 else None)
    # A monitor writes its record whether or not a supervisor watches: none means the monitor itself
    # died (how is not ours to know: it was not our child), whether the supervisor was up or not.
    return ExitInfo(None, None, datetime.now(UTC),
                    f"exit status unknown: the run monitor (pid {run.monitor_pid}) died without an exit record")


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


def interrupt_run(run: Run) -> Delivery:
    """SIGINT to the run's agent, only if it is proven to be the run's (see `_agent_proof`)."""
    if not is_alive(run.pid, run.start_ticks):
        return Delivery(False, f"agent pid {run.pid} has already exited")
    reason = _check_run_monitor(run)
    monitor_alive = is_alive(run.monitor_pid, run.monitor_start_ticks)
    if reason and monitor_alive:
        return Delivery(False, f"refused to signal agent pid {run.pid}: its monitor cannot be verified ({reason})")
    if not _agent_proof(run, not reason):
        return Delivery(False, f"refused to signal pid {run.pid}: it is not proven to be this run's agent "
                               f"(not a child of its verified monitor, not in its cgroup, no {RUN_ID_VAR} marker)")
    if not procfs.signal_process(run.pid, run.start_ticks, signal.SIGINT):
        return Delivery(False, f"agent pid {run.pid} has already exited")
    return Delivery(True)


def interrupt(run: Run) -> bool:
    """SIGINT to the agent; True only if a live, verified agent (pid + start ticks) received it."""
    result = interrupt_run(run)
    if not result.delivered and result.detail.startswith("refused"):
        log.warning("%s run %d: %s", run.chat_id, run.number, result.detail)
    return result.delivered


async def _pidfd_exited(fd: int, limit: float) -> bool:
    """Wait (in the event loop) until the pidfd is readable = the process has exited."""
    if _poll_one(fd, select.POLLIN, 0):
        return True
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(fut, max(0.0, limit))
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


async def stop_run(run: Run, grace: float) -> StopReport:
    """End the run: its monitor stops it (SIGTERM to the agent and every descendant, SIGKILL after
    `grace`, leftovers reaped, exit recorded); if the monitor is dead or stuck, procs ends what is
    left of the run itself (its cgroup, the monitor's descendants, processes with the run's marker).

    Nothing is signalled unless the monitor is verified (`check_monitor`) or, with the monitor dead,
    the processes are proven the run's: a refusal is returned instead (`StopReport.refused`)."""
    reason = _check_run_monitor(run)
    if reason and is_alive(run.monitor_pid, run.monitor_start_ticks):
        return StopReport(refused=f"refused to stop {run.chat_id} run {run.number}: {reason}")
    report = StopReport(monitor_finished=bool(reason))  # a dead monitor has finished, one way or another
    if not reason:
        try:
            fd = os.pidfd_open(run.monitor_pid)
        except OSError:  # exited since the check
            fd = -1
            report.monitor_finished = True
        if fd >= 0:
            try:
                if is_alive(run.monitor_pid, run.monitor_start_ticks):  # checked after opening: no reuse race
                    signal.pidfd_send_signal(fd, signal.SIGTERM)
                    done = await _pidfd_exited(fd, grace)
                    if not done:  # the monitor's own grace may be longer than ours: stop now
                        signal.pidfd_send_signal(fd, signal.SIGUSR1)
                        done = await _pidfd_exited(fd, STOP_MARGIN)
                    report.monitor_finished = done
                    report.monitor_stuck = not done
                else:
                    report.monitor_finished = True
            except ProcessLookupError:
                report.monitor_finished = True
            finally:
                os.close(fd)
    if report.monitor_finished:
        info = read_exit_file(run.exit_path)
        if info is not None and info.contained:
            return report  # the monitor ended the whole run before recording it
    if report.monitor_stuck:
        log.warning("the run monitor of %s run %d (pid %d) did not finish the stop within %gs; ending the run "
                    "without it", run.chat_id, run.number, run.monitor_pid, grace + STOP_MARGIN)
    found = live_processes_of_runs(run.state, run.chat_id, [run.identity], scan_environ=True)
    report.ended = await end_processes(found, 0.0 if report.monitor_stuck else grace)
    if report.ended.ended:
        log.warning("%s run %d: %s", run.chat_id, run.number, report.ended.describe())
    return report


async def stop_group(run: Run, grace: float) -> list[int]:
    """`stop_run` for callers that want the pids still alive at the end (none expected). A refusal
    (identity not proven) is logged and nothing is signalled."""
    report = await stop_run(run, grace)
    if report.refused:
        log.warning("%s", report.refused)
    return report.survivors


# ---------------------------------------------------------------------------------------- proof before restart


def live_processes_of_runs(state_dir: Path, chat_id: str, runs: Sequence[RunIdentity], *,
                           scan_environ: bool | None = None) -> LiveProcesses:
    """The live processes of the given earlier runs of a chat on this host, each proven the run's.

    Per run: its monitor if verified (pid + ticks + cmdline with this state dir and the run's
    supervisor id + its output is the run's log) and the monitor's descendants (it is their
    subreaper); the members of the run's cgroup; the recorded agent if it is a child of that
    monitor, in that cgroup or carries the run's marker. With `scan_environ` (default: only when a
    run is not proven over, i.e. its monitor is not alive and its exit file is missing or from a
    monitor that did not end leftovers), every process whose environment carries WGS_RUN_ID of
    *any* run of this chat, and their descendants. Call it only when the chat has no run you mean
    to keep. Records naming processes that are not proven ours go to `refused`, never signalled."""
    result = LiveProcesses()
    found: dict[int, ProcessIdentity] = {}

    def add(pid: int, ticks: int, number: int, role: str, proof: str) -> None:
        if pid != os.getpid() and pid not in found:
            found[pid] = ProcessIdentity(pid, ticks, number, role, proof, _comm(pid))

    def add_tree(root: int, number: int, proof: str, agent_pid: int) -> None:
        for pid, ticks in procfs.descendants(root):
            add(pid, ticks, number, "agent" if pid == agent_pid else "descendant", proof)

    unproven = False
    root = cgroup_root()
    for run in runs:
        log_path, exit_path = run_paths(state_dir, chat_id, run.number)
        monitor_alive = is_alive(run.monitor_pid, run.monitor_start_ticks)
        if monitor_alive:
            reason = check_monitor(run.monitor_pid, run.monitor_start_ticks, state_dir, run.supervisor_id,
                                   log_path=log_path)
            if reason:
                result.refused.append(f"run {run.number}: not signalling its recorded monitor: {reason}")
                monitor_alive = False
            else:
                add(run.monitor_pid, run.monitor_start_ticks, run.number, "monitor", "verified run monitor")
                add_tree(run.monitor_pid, run.number, "descendant of the verified run monitor", run.pid)
        cg = run_cgroup(state_dir, chat_id, run.number, root) if root is not None else None
        if cg is not None:
            result.cgroups.append(cg)
            for pid, ticks in cgroup_members(cg):
                add(pid, ticks, run.number, "agent" if pid == run.pid else "descendant", "in the run's cgroup")
                add_tree(pid, run.number, "descendant of a process in the run's cgroup", run.pid)
        if not monitor_alive:
            info = read_exit_file(exit_path)
            if info is None or not info.contained:
                unproven = True
        if run.pid > 0 and run.pid not in found and is_alive(run.pid, run.start_ticks):
            marker = f"{RUN_ID_VAR}={run_marker(state_dir, chat_id, run.number)}"
            if procfs.environ_has(run.pid, marker):
                add(run.pid, run.start_ticks, run.number, "agent", f"carries {RUN_ID_VAR}")
                add_tree(run.pid, run.number, "descendant of the run's agent", run.pid)
            else:
                result.refused.append(
                    f"run {run.number}: not signalling pid {run.pid} ({_comm(run.pid) or '?'}) named as its agent: "
                    f"it is not a child of a verified run monitor, not in the run's cgroup and has no "
                    f"{RUN_ID_VAR} marker of this run")
    if scan_environ or (scan_environ is None and unproven):
        agents = {r.number: r.pid for r in runs}
        for pid, live_ticks, number in _carrying_marker(state_dir, chat_id, skip=found):
            add(pid, live_ticks, number, "agent" if agents.get(number) == pid else "descendant", f"carries {RUN_ID_VAR}")
            add_tree(pid, number, "descendant of a process carrying the run's marker", agents.get(number, 0))
    result.processes = list(found.values())
    return result


def _carrying_marker(state_dir: Path, chat_id: str, skip: Container[int] = ()) -> Iterator[tuple[int, int, int]]:
    """(pid, start ticks, run number) of each live process of this user (not this one, not in
    `skip`) whose environment carries WGS_RUN_ID of a run of the chat."""
    prefix = f"{RUN_ID_VAR}={_marker_prefix(state_dir, chat_id)}".encode()
    me = os.getuid()
    for pid in procfs.pids():
        if pid in skip or pid == os.getpid() or procfs.owner_uid(pid) != me:
            continue
        number = _marker_run(pid, prefix)
        ticks = start_ticks(pid) if number is not None else None
        if number is not None and ticks is not None:
            yield pid, ticks, number


def _marker_run(pid: int, prefix: bytes) -> int | None:
    """The run number of the WGS_RUN_ID=<prefix><n> entry in the environment of `pid`, if any."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    at = data.find(prefix)
    while at >= 0:
        if at == 0 or data[at - 1] == 0:
            end = data.find(b"\0", at)
            digits = data[at + len(prefix) : end if end >= 0 else len(data)]
            if digits.isdigit():
                return int(digits)
        at = data.find(prefix, at + 1)
    return None


async def end_processes(found: LiveProcesses | Sequence[ProcessIdentity], grace: float, *,
                        kill_wait: float = STOP_MARGIN) -> EndReport:
    """End proven processes: SIGTERM (+SIGCONT) to all at once, SIGKILL (cgroup.kill for the runs'
    cgroups) to what is left after `grace`, then remove the runs' cgroups once empty.

    Processes started meanwhile by those being ended (their descendants) are killed too. Each
    signal goes through a pidfd opened before the start ticks are re-checked."""
    procs = list(found.processes if isinstance(found, LiveProcesses) else found)
    cgroups = list(found.cgroups) if isinstance(found, LiveProcesses) else []
    report = EndReport(refused=list(found.refused) if isinstance(found, LiveProcesses) else [])
    handles: dict[int, tuple[ProcessIdentity, int]] = {}

    def take(p: ProcessIdentity) -> None:
        if p.pid in handles:
            return
        try:
            fd = os.pidfd_open(p.pid)
        except OSError:
            return
        if start_ticks(p.pid) != p.start_ticks:
            os.close(fd)
            return
        handles[p.pid] = (p, fd)

    def send(fd: int, sig: int) -> None:
        try:
            signal.pidfd_send_signal(fd, sig)
        except OSError:
            pass

    for p in procs:
        take(p)
    try:
        for _p, fd in handles.values():
            send(fd, signal.SIGTERM)
            send(fd, signal.SIGCONT)
        pending = await _wait_pidfds([fd for _p, fd in handles.values()], grace)
        if pending:
            for pid, (p, fd) in list(handles.items()):  # forks made during the grace
                if fd in pending:
                    for child, ticks in procfs.descendants(pid):
                        take(ProcessIdentity(child, ticks, p.run_number, "descendant",
                                             f"descendant of {p.describe()}", _comm(child)))
            for cg in cgroups:
                _cgroup_kill(cg)
            pending = {fd for _p, fd in handles.values() if not _poll_one(fd, select.POLLIN, 0)}
            for p, fd in handles.values():
                if fd in pending:
                    send(fd, signal.SIGKILL)
                    report.killed.append(p)
            pending = await _wait_pidfds(list(pending), kill_wait)
        for p, fd in handles.values():
            (report.survivors if fd in pending else report.ended).append(p)
    finally:
        for _p, fd in handles.values():
            os.close(fd)
    for cg in cgroups:
        await asyncio.to_thread(_remove_cgroup_sync, cg, kill_wait)
    return report


async def _wait_pidfds(fds: list[int], limit: float) -> set[int]:
    """Wait until every pidfd is readable (its process exited) or `limit` seconds; the fds still pending."""
    pending = {fd for fd in fds if not _poll_one(fd, select.POLLIN, 0)}
    if not pending or limit <= 0:
        return pending
    loop = asyncio.get_running_loop()
    all_done: asyncio.Future[None] = loop.create_future()

    def ready(fd: int) -> None:
        loop.remove_reader(fd)
        pending.discard(fd)
        if not pending and not all_done.done():
            all_done.set_result(None)

    for fd in pending:
        loop.add_reader(fd, ready, fd)
    try:
        await asyncio.wait_for(asyncio.shield(all_done), limit)
    except TimeoutError:
        pass
    finally:
        for fd in list(pending):
            loop.remove_reader(fd)
    return pending


async def ensure_runs_ended(state_dir: Path, chat_id: str, runs: Sequence[RunIdentity], grace: float, *,
                            attempts: int = 3) -> EndReport:
    """Before starting a new run of a chat: find what lives of its earlier runs and end it, until
    nothing is found (a few attempts, for processes forked while being ended). The report says
    what was ended ("agent pid N ... ended") and what was refused (never signalled)."""
    total = EndReport()
    for _ in range(max(1, attempts)):
        found = live_processes_of_runs(state_dir, chat_id, runs)
        for reason in found.refused:
            if reason not in total.refused:
                total.refused.append(reason)
        if not found and not found.cgroups:
            total.survivors = []
            break
        report = await end_processes(found, grace)
        total.ended += report.ended
        total.killed += report.killed
        total.survivors = report.survivors
        if not found:
            break
    return total
