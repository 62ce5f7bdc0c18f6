"""The stack record (<state>/run/stack.json), its files, and how the CLI finds one stack's services.

`wgs up` runs a small parent process, the *keeper*, that starts graph, dispatch and supervisor,
restarts a crashed one and keeps this record current: each service's pid with its /proc start
ticks (a reused pid is never mistaken for a service), the address it bound, its state, restarts
and last exit; the keeper's own pid; and why the stack stopped if the keeper gave up. The keeper
is the only writer while it lives (atomic replace); every other command only reads it.

No gRPC here: this module is what every CLI command imports to resolve an address.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wgs.cli.output import CliError
from wgs.cli.procs import cmdline, exit_phrase, is_alive
from wgs.common.settings import DEFAULT_PORTS, SERVICES, env_str

SCHEMA_VERSION = 2
STACK_FILE = "stack.json"
LOCK_FILE = "keeper.lock"
STACK_LOG = "stack.log"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700

# Service states (ServiceRecord.state)
STARTING = "starting"  # first start, not serving yet
SERVING = "serving"
RESTARTING = "restarting"  # died; waiting for its backoff, or restarted and not serving yet
STOPPED = "stopped"
FAILED = "failed"  # the keeper gave up on it
# Stack states (StackRecord.state): STARTING, SERVING, plus
STOPPING = "stopping"  # the keeper is stopping every service (signal, or it gave up)
RELEASED = "released"  # the keeper handed the services to `wgs down`, which stops them
# FAILED: the keeper gave up (StackRecord.failure says why) and stopped the stack


def resolve_state_dir(arg: str | None) -> Path:
    """--state-dir, else WGS_STATE_DIR, else ./.wgs (absolute, so children and records agree)."""
    raw = arg or env_str("WGS_STATE_DIR", "./.wgs")
    return Path(raw).expanduser().resolve()


def client_target(bound: str) -> str:
    """A bound listen address as a client target (0.0.0.0 / [::] are not connectable everywhere)."""
    host, _, port = bound.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


@dataclass
class ExitRecord:
    """How one process of a service ended."""

    at: str  # ISO 8601 UTC
    pid: int
    returncode: int | None  # Popen style (-9 = SIGKILL); None: unknown (not a child of this keeper)
    how: str  # "killed by SIGKILL", "exit code 2", "status unknown"
    uptime_seconds: float | None = None
    detail: str = ""  # e.g. "did not serve within 60s"

    def phrase(self) -> str:
        """"was killed by SIGKILL" / "exited with code 2" (for "supervisor is restarting after it ...")."""
        return self.detail or exit_phrase(self.returncode)


@dataclass
class ServiceRecord:
    name: str
    pid: int
    start_ticks: int | None
    address: str  # client target
    log: str
    log_offset: int = 0  # where this process's part of the log starts
    listen: str = ""  # the address it bound (host:port, port resolved); a restart binds the same
    state: str = SERVING
    restarts: int = 0
    started_at: str = ""
    last_exit: ExitRecord | None = None
    next_start_at: str = ""  # while RESTARTING and waiting for the backoff

    def alive(self) -> bool:
        """The recorded process is alive and is a `wgs serve <name>` (pid, start ticks and argv)."""
        return self.pid > 0 and is_alive(self.pid, self.start_ticks) and is_service_process(self.pid, self.name)


@dataclass
class KeeperRecord:
    pid: int
    start_ticks: int | None
    detached: bool
    log: str = ""

    def alive(self) -> bool:
        return is_alive(self.pid, self.start_ticks) and is_keeper_process(self.pid)


@dataclass
class StackRecord:
    state_dir: str
    started_at: str
    keeper: KeeperRecord | None
    state: str = SERVING
    failure: str = ""  # why the keeper gave up (state FAILED)
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    @property
    def detached(self) -> bool:
        return bool(self.keeper and self.keeper.detached)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StackRecord:
        doc = json.loads(text)
        services: dict[str, ServiceRecord] = {}
        for key, raw in doc.get("services", {}).items():
            raw = dict(raw)
            last = raw.pop("last_exit", None)
            svc = ServiceRecord(**raw)
            svc.last_exit = ExitRecord(**last) if last else None
            services[key] = svc
        if "keeper" in doc:
            keeper = KeeperRecord(**doc["keeper"]) if doc["keeper"] else None
        else:  # version 1: a foreground `wgs up` was the owner; a detached stack had none
            pid = doc.get("owner_pid")
            keeper = KeeperRecord(pid, doc.get("owner_start_ticks"), False) if pid else None
        return cls(
            state_dir=doc["state_dir"], started_at=doc["started_at"], keeper=keeper,
            state=doc.get("state", SERVING), failure=doc.get("failure", ""), services=services,
            version=int(doc.get("version", 1)),
        )

    def keeper_alive(self) -> bool:
        return self.keeper is not None and self.keeper.alive()

    def live_processes(self) -> list[str]:
        """Descriptions of the recorded processes that are still alive."""
        out = []
        if self.keeper is not None and self.keeper.alive():
            out.append(f"keeper (pid {self.keeper.pid})")
        for s in self.services.values():
            if s.alive():
                out.append(f"{s.name} (pid {s.pid}, {s.address})")
        return out


def is_service_process(pid: int, name: str) -> bool:
    """argv is `... wgs.cli.main serve <name>` (or the `wgs serve <name>` script)."""
    argv = cmdline(pid)
    return len(argv) >= 2 and argv[-2:] == [b"serve", name.encode()]


def is_keeper_process(pid: int) -> bool:
    """argv is a `wgs up` (the foreground command or the detached keeper it started)."""
    argv = cmdline(pid)
    return b"up" in argv and any(a.endswith((b"wgs", b"wgs.cli.main")) for a in argv)


# ---------------------------------------------------------------------------------------------
# files


def stack_path(state: Path) -> Path:
    return state / "run" / STACK_FILE


def stack_log_path(state: Path) -> Path:
    return state / "logs" / STACK_LOG


def read_stack(state: Path) -> StackRecord | None:
    path = stack_path(state)
    try:
        return StackRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"cannot read {path}: {exc}; remove it if no stack is running") from None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, mode 0600 from the start (never readable by others)."""
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_stack(state: Path, record: StackRecord) -> None:
    write_private(stack_path(state), record.to_json())


def remove_stack(state: Path) -> None:
    stack_path(state).unlink(missing_ok=True)


def open_private_append(path: Path) -> int:
    """An O_APPEND descriptor on `path`, created 0600 (logs)."""
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, PRIVATE_FILE)


_STATE_MARKERS = ("run", "logs", "graph.db", "chats", "config.toml", "traces")


def _tighten(path: Path, want: int, notes: list[str], label: str) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~want & 0o077:
        os.chmod(path, mode & want)
        notes.append(f"{label} {mode:04o}→{mode & want:04o}")


def secure_state_dir(state: Path) -> list[str]:
    """Create the state dir 0700 (with logs/ and run/), and tighten what an older stack left wider.

    Tightened: the state dir, logs/ and run/ to 0700; logs/*.log, run/stack.json, run/*.addr,
    run/keeper.lock to 0600. Returns one note per change (empty if nothing was wider). A state dir
    that existed before and does not look like one (no run/, logs/, graph.db, …: e.g. /tmp) keeps
    its mode, as does one with the sticky bit.
    """
    notes: list[str] = []
    existed = state.exists()
    state.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    st = state.stat()
    looks_ours = not existed or not any(state.iterdir()) or any((state / m).exists() for m in _STATE_MARKERS)
    if looks_ours and not st.st_mode & stat.S_ISVTX:
        _tighten(state, PRIVATE_DIR, notes, str(state))
    for sub in ("logs", "run"):
        (state / sub).mkdir(mode=PRIVATE_DIR, exist_ok=True)
        _tighten(state / sub, PRIVATE_DIR, notes, f"{sub}/")
    for pattern in ("logs/*.log", f"run/{STACK_FILE}", "run/*.addr", f"run/{LOCK_FILE}"):
        for path in sorted(state.glob(pattern)):
            _tighten(path, PRIVATE_FILE, notes, str(path.relative_to(state)))
    return notes


class KeeperLock:
    """An exclusive flock on <state>/run/keeper.lock, held by the keeper for its whole life.

    The kernel drops it when the keeper dies however it dies, so it never goes stale; two
    `wgs up` racing for one state dir cannot both keep the stack.
    """

    def __init__(self, state: Path) -> None:
        self.path = state / "run" / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = open_private_append(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------------------------
# the CLI acts on one stack


def state_flag(arg: str | None) -> str:
    """The `--state-dir` part of a command to suggest (empty when the default or WGS_STATE_DIR is meant)."""
    return f" --state-dir {arg}" if arg else ""


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def stack_problem(record: StackRecord, state: Path, arg: str | None) -> str | None:
    """One line saying why the recorded stack cannot serve a command now, with what to run; None if it can."""
    flag = state_flag(arg)
    keeper = record.keeper_alive()
    if record.state == FAILED and not keeper:
        return (f"the stack in {state} stopped: {record.failure}; fix the cause (see {stack_log_path(state)}), "
                f"then start it with `wgs up{flag}`")
    if keeper and record.state in (STOPPING, RELEASED):
        return f"the stack in {state} is being stopped; start it again with `wgs up{flag}` once that is done"
    if keeper and record.state == FAILED:
        return f"the stack in {state} is stopping: {record.failure}"
    not_ready = [s for s in (record.services.get(n) for n in SERVICES) if s is not None
                 and (not s.alive() or s.state != SERVING)]
    if not not_ready:
        return None
    if keeper:
        svc = not_ready[0]
        if svc.state == STARTING:
            return f"the stack in {state} is still starting ({svc.name} is not serving yet); retry in a moment"
        if svc.state == RESTARTING and svc.last_exit is not None:
            return f"{svc.name} is restarting after it {svc.last_exit.phrase()} (restart {svc.restarts}); retry in a moment"
        return (f"{svc.name} (pid {svc.pid}) is not running; the stack keeper (pid {record.keeper.pid if record.keeper else '?'}) "
                "is restarting it; retry in a moment")
    dead = [s for s in not_ready if not s.alive()]
    if not dead:  # alive but recorded as not serving yet, and the keeper that was starting them is gone
        return (f"the stack in {state} did not finish starting ({_names([s.name for s in not_ready])} not "
                f"serving yet) and its keeper is gone; run `wgs up{flag}` to take it over")
    if len(dead) == len(record.services):
        return f"the stack in {state} is not running (its processes are gone); start it with `wgs up{flag}`"
    how = []
    for s in dead:
        ended = f", {s.last_exit.how}" if s.last_exit is not None and s.last_exit.pid == s.pid else ""
        how.append(f"{s.name} (pid {s.pid}{ended})")
    verb = "is" if len(dead) == 1 else "are"
    return (f"{_names(how)} of the stack in {state} {verb} not running and no keeper restarts "
            f"{'it' if len(dead) == 1 else 'them'}; recover with `wgs up{flag}` "
            "(it restarts what is dead; chat agents keep running and are adopted)")


def service_address(service: str, state_dir: str | None = None) -> str:
    """Where a client finds `service`: the stack record of the state dir when there is one.

    With a record in play, a dead, starting or restarting service of that stack is a CliError
    naming it and what to run — never a fall-back to another address. WGS_<S>_ADDR (else the
    default port) applies only when the state dir has no record; an explicit --state-dir without a
    record is refused unless that variable is set, so `--state-dir A` never acts on another stack.
    """
    state = resolve_state_dir(state_dir)
    record = read_stack(state)
    var = f"WGS_{service.upper()}_ADDR"
    if record is None:
        if state_dir and not env_str(var, ""):
            raise CliError(f"no stack is recorded in {state} ({stack_path(state)} does not exist); "
                           f"start it with `wgs up{state_flag(state_dir)}`, or set {var} to use a service elsewhere")
        return env_str(var, f"127.0.0.1:{DEFAULT_PORTS[service]}")
    problem = stack_problem(record, state, state_dir)
    if problem is not None:
        raise CliError(problem)
    svc = record.services.get(service)
    if svc is None:
        raise CliError(f"the stack record {stack_path(state)} has no {service} service; "
                       f"restart the stack with `wgs down{state_flag(state_dir)} && wgs up{state_flag(state_dir)}`")
    return svc.address


def record_summary(record: StackRecord) -> dict[str, Any]:
    """The parts of a record `wgs status --json` shows besides the per-service rows."""
    keeper = record.keeper
    return {
        "pid": keeper.pid if keeper else None,
        "alive": record.keeper_alive(),
        "detached": record.detached,
        "log": keeper.log if keeper else None,
    }
