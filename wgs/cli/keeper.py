"""The stack keeper: the small parent `wgs up` keeps, which starts the services and restarts a crashed one.

One keeper per state dir (an flock on run/keeper.lock). It runs in the foreground `wgs up` process,
or — with `--detach` — as a detached `wgs up` in its own session with stdin/stdout/stderr off the
terminal (stdout/stderr go to <state>/logs/stack.log). It

- starts graph and dispatch, waits until they serve (their WGS_ADDRESS_FILE appears, written once
  SERVING, then grpc.health.v1 Check), then the supervisor pointed at them;
- watches every service with a pidfd; when one dies it logs why (exit code or signal and its last
  stderr lines) to stack.log and restarts it after a backoff (WGS_STACK_RESTART_BACKOFF_SECONDS,
  doubling, at most 30 s; reset after 60 s serving) on the *same address* (port 0 is resolved
  once; a restart binds the recorded port). A restarted supervisor adopts the agents itself;
- gives up on a service that failed WGS_STACK_MAX_START_FAILURES times in a row before serving or
  within 10 s of its start: it stops the stack, records why in stack.json and exits 1;
- on SIGTERM/SIGINT/SIGHUP stops every service in order (supervisor, its agents unless
  --keep-agents, dispatch, graph) and removes the record; on SIGUSR1 (sent by `wgs down`) it stops
  restarting, writes the record and exits, leaving the services to the caller to stop.

Services run in their own sessions, so a keeper that crashes (or is SIGKILLed) leaves them serving;
the next `wgs up` takes the stack over: it adopts the live services and starts the dead ones.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wgs.cli.procs import describe_exit, is_alive, start_ticks, tail_lines, wait_gone, wait_readable
from wgs.cli.stackfile import (
    FAILED,
    RELEASED,
    RESTARTING,
    SERVING,
    STARTING,
    STOPPED,
    STOPPING,
    ExitRecord,
    KeeperLock,
    KeeperRecord,
    ServiceRecord,
    StackRecord,
    client_target,
    open_private_append,
    read_stack,
    remove_stack,
    stack_log_path,
    write_stack,
)
from wgs.common.clients import sync_channel
from wgs.common.settings import SERVICES, env_float, env_int, service_env

HEALTH_TIMEOUT = 2.0
DEPENDS_ON = {"graph": (), "dispatch": (), "supervisor": ("graph", "dispatch")}

StopServices = Callable[[StackRecord, bool, TextIO], None]


def health_status(address: str, timeout: float = HEALTH_TIMEOUT) -> str:
    """SERVING, NOT_SERVING, or `unreachable (<reason>)` for one service (grpc.health.v1 Check)."""
    with sync_channel(address) as ch:  # TLS per WGS_TLS_* (health itself needs no token)
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAVAILABLE or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "unreachable"
            return f"unreachable ({code.name.lower() if code else 'error'})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


@dataclass(frozen=True)
class Policy:
    """When the keeper restarts a service, and when it gives up."""

    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    reset_after: float = 60.0  # serving this long: the next failure starts the backoff afresh
    quick_window: float = 10.0  # dying sooner than this after the start (or before serving) is a failed start
    max_start_failures: int = 5  # failed starts in a row → give up
    start_timeout: float = 60.0  # a fresh SQLite/PostgreSQL migration can take a few seconds

    @classmethod
    def from_env(cls) -> Policy:
        return cls(
            initial_backoff=env_float("WGS_STACK_RESTART_BACKOFF_SECONDS", 1.0, minimum=0.01),
            max_start_failures=env_int("WGS_STACK_MAX_START_FAILURES", 5, minimum=1),
        )

    def backoff(self, failures: int) -> float:
        """Delay before the restart after the `failures`-th failure in a row (1-based)."""
        return float(min(self.initial_backoff * 2 ** max(0, failures - 1), self.max_backoff))


class Reporter(io.TextIOBase):
    """Keeper messages: to <state>/logs/stack.log with a timestamp, and in the foreground to the terminal.

    Also a text stream (each complete line becomes an info message), for the stop sequence's output.
    """

    def __init__(self, log_path: Path, out: TextIO | None = None, err: TextIO | None = None) -> None:
        super().__init__()
        self._log_fd = open_private_append(log_path)
        self._out = out
        self._err = err
        self._partial = ""

    def _log(self, level: str, message: str) -> None:
        stamp = utc_now()
        lines = message.splitlines() or [""]
        text = "".join(f"{stamp} {level} {line}\n" if i == 0 else f"{stamp} {level}   {line}\n"
                       for i, line in enumerate(lines))
        with contextlib.suppress(OSError):
            os.write(self._log_fd, text.encode())

    def note(self, message: str) -> None:
        """To stack.log only."""
        self._log("INFO", message)

    def info(self, message: str) -> None:
        self._log("INFO", message)
        if self._out is not None:
            print(message, file=self._out, flush=True)

    def error(self, message: str) -> None:
        self._log("ERROR", message)
        if self._err is not None:
            print(f"wgs: {message}", file=self._err, flush=True)

    def write(self, s: str) -> int:
        self._partial += s
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self.info(line)
        return len(s)

    def close(self) -> None:
        if self._partial:
            self.info(self._partial)
            self._partial = ""
        with contextlib.suppress(OSError):
            os.close(self._log_fd)
        super().close()


@dataclass
class Proc:
    """One live process of a service, watched through its pidfd."""

    name: str
    pid: int
    ticks: int | None
    pidfd: int
    popen: subprocess.Popen[bytes] | None  # None: adopted from an earlier keeper (no exit status)
    started: float  # monotonic
    deadline: float  # must serve by then
    addr_file: Path
    log: Path
    log_offset: int
    served_at: float | None = None

    def returncode(self) -> int | None:
        """Reap our child (None for an adopted process: its status went to its real parent)."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(5)
        except subprocess.TimeoutExpired:  # the pidfd said it exited; cannot happen
            return None


class StartFailed(Exception):
    """A service died or did not serve before the stack served for the first time."""


class GiveUp(Exception):
    """A service keeps failing at start; the message says which and how."""


@dataclass
class _Counters:
    failures: int = 0  # in a row, for the backoff
    start_failures: int = 0  # failed starts in a row, for giving up


@dataclass
class Keeper:
    """The keeper of one state dir. `run()` returns the process exit code."""

    state: Path
    detached: bool
    keep_agents: bool
    stop_services: StopServices
    report: Reporter
    on_ready: Callable[[StackRecord], None]
    on_start_failed: Callable[[str], None]
    policy: Policy = field(default_factory=Policy.from_env)
    record: StackRecord = field(init=False)
    procs: dict[str, Proc] = field(default_factory=dict, init=False)
    due: dict[str, float] = field(default_factory=dict, init=False)
    counters: dict[str, _Counters] = field(default_factory=dict, init=False)
    adopted: set[str] = field(default_factory=set, init=False)
    starting: bool = field(default=True, init=False)
    takeover: StackRecord | None = field(default=None, init=False)
    _signals: list[int] = field(default_factory=list, init=False)

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        lock = KeeperLock(self.state)
        if not lock.acquire():
            self.on_start_failed(f"a stack is already running for {self.state} (its keeper holds {lock.path}); "
                                 "see `wgs status`, stop it with `wgs down` (or use another --state-dir)")
            return 1
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        handlers = {s: signal.signal(s, self._on_signal)
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
        old_wakeup = signal.set_wakeup_fd(wfd)
        try:
            return self._run(rfd)
        except Exception as exc:  # a bug in the keeper: leave the services serving, as a crash would
            self.report.error(f"internal error in the stack keeper: {type(exc).__name__}: {exc}; the services "
                              "keep running without it: `wgs up` takes the stack over, `wgs down` stops it\n"
                              + traceback.format_exc())
            if self.starting:
                self.on_start_failed(f"internal error in the stack keeper: {type(exc).__name__}: {exc}; "
                                     f"see {stack_log_path(self.state)}")
            return 70
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in handlers.items():
                signal.signal(s, h)
            for proc in self.procs.values():
                with contextlib.suppress(OSError):
                    os.close(proc.pidfd)
            os.close(rfd)
            os.close(wfd)
            lock.release()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def _run(self, wakeup: int) -> int:
        if not self._prepare():
            return 1
        while True:
            if self._signals:
                return self._on_signals()
            try:
                self._reap()
                self._check_ready()
                self._check_deadlines()
                self._start_due()
            except StartFailed as exc:
                return self._start_failed(str(exc))
            except GiveUp as exc:
                return self._give_up(str(exc))
            if self.starting and all(p.served_at is not None for p in self.procs.values()) \
                    and len(self.procs) == len(SERVICES):
                self.starting = False
                self.record.state = SERVING
                self._write()
                self.report.note("stack serving: " + ", ".join(
                    f"{n} pid {s.pid} on {s.address}" for n, s in self.record.services.items()))
                self.on_ready(self.record)
            wait_readable([wakeup, *(p.pidfd for p in self.procs.values())], self._timeout())
            with contextlib.suppress(BlockingIOError):
                os.read(wakeup, 512)

    def _prepare(self) -> bool:
        """Decide between a fresh stack and taking over a recorded one; False if refused."""
        me = os.getpid()
        keeper = KeeperRecord(me, start_ticks(me), self.detached, str(stack_log_path(self.state)))
        old = read_stack(self.state)
        if old is not None and old.keeper is not None and old.keeper.pid != me and old.keeper.alive():
            self.on_start_failed(f"a stack is already running for {self.state}: {', '.join(old.live_processes())}; "
                                 "stop it with `wgs down` (or use another --state-dir)")
            return False
        now = time.monotonic()
        live: dict[str, ServiceRecord] = {}
        pidfds: dict[str, int] = {}
        for name, svc in (old.services.items() if old else []):
            if svc.alive():
                with contextlib.suppress(ProcessLookupError):
                    pidfds[name] = os.pidfd_open(svc.pid)  # first the pidfd, then the proof it is the same process
                    if svc.alive():
                        live[name] = svc
                    else:
                        os.close(pidfds.pop(name))
        if old is not None and live:
            self.takeover = copy.deepcopy(old)
            self.record = replace(old, keeper=keeper, state=STARTING, failure="")
            gone = old.keeper.pid if old.keeper else None
            parts = [f"adopting {n} (pid {s.pid})" for n, s in live.items()]
            parts += [f"starting {n}" + (f" (it {s.last_exit.phrase()})" if s.last_exit and s.last_exit.pid == s.pid
                                         else "") for n, s in old.services.items() if n not in live]
            self.report.info(f"wgs: taking over the stack in {self.state} (its keeper{f' pid {gone}' if gone else ''} "
                             f"is gone): {'; '.join(parts)}; chat agents keep running")
            for name, svc in self.record.services.items():
                if name not in live:  # died while no keeper watched: how is unknown
                    if svc.last_exit is None or svc.last_exit.pid != svc.pid:
                        svc.last_exit = ExitRecord(at=utc_now(), pid=svc.pid, returncode=None, how="status unknown",
                                                   detail="died while no keeper was watching")
                    svc.restarts += 1
                    svc.state = RESTARTING
            for name, svc in live.items():
                self.procs[name] = Proc(name, svc.pid, svc.start_ticks, pidfds[name], None, now,
                                        now + self.policy.start_timeout, self._addr_file(name), Path(svc.log),
                                        svc.log_offset)
                self.adopted.add(name)
        else:
            if old is not None:
                remove_stack(self.state)  # stale record of a stack that is gone
            self.record = StackRecord(state_dir=str(self.state), started_at=utc_now(), keeper=keeper, state=STARTING)
        for name in SERVICES:
            self.counters[name] = _Counters()
            if name not in self.procs:
                self.due[name] = now
        self._write()
        return True

    def _addr_file(self, name: str) -> Path:
        return self.state / "run" / f"{name}.addr"

    def _write(self) -> None:
        write_stack(self.state, self.record)

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        prev = self.record.services.get(name)
        addr_file = self._addr_file(name)
        addr_file.unlink(missing_ok=True)
        log = self.state / "logs" / f"{name}.log"
        env = service_env(name, os.environ)  # least privilege: API keys reach the supervisor only
        env.update({"WGS_STATE_DIR": str(self.state), "WGS_ADDRESS_FILE": str(addr_file), "PYTHONUNBUFFERED": "1"})
        listen = (prev.listen or prev.address) if prev is not None and prev.address else ""
        if listen:
            env[f"WGS_{name.upper()}_LISTEN"] = listen  # the same address as before (port 0 resolved once)
        if name == "supervisor":
            env["WGS_GRAPH_ADDR"] = self.record.services["graph"].address
            env["WGS_DISPATCH_ADDR"] = self.record.services["dispatch"].address
        fd = open_private_append(log)
        try:
            offset = os.lseek(fd, 0, os.SEEK_END)
            popen = subprocess.Popen(
                [sys.executable, "-m", "wgs.cli.main", "serve", name],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, env=env,
                start_new_session=True,  # Ctrl-C and a dying keeper reach only the keeper
            )
        finally:
            os.close(fd)
        now = time.monotonic()
        proc = Proc(name, popen.pid, start_ticks(popen.pid), os.pidfd_open(popen.pid), popen, now,
                    now + self.policy.start_timeout, addr_file, log, offset)
        self.procs[name] = proc
        self.due.pop(name, None)
        self.record.services[name] = ServiceRecord(
            name=name, pid=proc.pid, start_ticks=proc.ticks, address=prev.address if prev else "", log=str(log),
            log_offset=offset, listen=listen, state=STARTING if prev is None or self.starting else RESTARTING,
            restarts=prev.restarts if prev else 0, started_at=utc_now(),
            last_exit=prev.last_exit if prev else None,
        )
        self._write()  # before anything else: a keeper killed now still leaves the pid on record

    def _start_due(self) -> None:
        now = time.monotonic()
        for name in SERVICES:
            when = self.due.get(name)
            if when is None or when > now or not self._deps_serving(name):
                continue
            self._spawn(name)

    def _deps_serving(self, name: str) -> bool:
        return all(d in self.procs and self.procs[d].served_at is not None for d in DEPENDS_ON[name])

    def _reap(self) -> None:
        exited = wait_readable([p.pidfd for p in self.procs.values()], 0)
        for proc in [p for p in self.procs.values() if p.pidfd in exited]:
            self._on_exit(proc, proc.returncode())

    def _check_ready(self) -> None:
        for name, proc in self.procs.items():
            if proc.served_at is not None:
                continue
            svc = self.record.services[name]
            if proc.popen is not None:
                try:
                    bound = proc.addr_file.read_text().strip()  # written by the service once SERVING
                except FileNotFoundError:
                    continue
                if not bound:
                    continue
                address = client_target(bound)
            else:
                bound, address = svc.listen, svc.address
            if health_status(address) != "SERVING":
                continue
            proc.served_at = time.monotonic()
            if svc.address and address != svc.address:
                self.report.error(f"{name} now serves on {address}, not on {svc.address} as before")
            svc.address, svc.listen = address, bound or svc.listen or address
            was = svc.state
            svc.state, svc.next_start_at = SERVING, ""
            self._write()
            if name in self.adopted:
                self.report.info(f"wgs: {name} (pid {proc.pid}) serves on {address}: adopted")
            elif was == RESTARTING:
                self.report.info(f"wgs: {name} serving again on {address} (pid {proc.pid}, restart {svc.restarts})")

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for proc in [p for p in self.procs.values() if p.served_at is None and now > p.deadline]:
            with contextlib.suppress(ProcessLookupError):
                if is_alive(proc.pid, proc.ticks):
                    os.kill(proc.pid, signal.SIGKILL)
            wait_gone(proc.pid, proc.ticks, 5.0)
            self._on_exit(proc, proc.returncode(), detail=f"did not serve within {self.policy.start_timeout:g}s")

    def _timeout(self) -> float | None:
        now = time.monotonic()
        waits = [when - now for name, when in self.due.items() if when > now or self._deps_serving(name)]
        for proc in self.procs.values():
            if proc.served_at is None:
                waits.append(0.05)  # the address file has no event to wait on: look again soon
                waits.append(proc.deadline - now)
        return max(0.0, min(waits)) if waits else None

    # -- deaths ---------------------------------------------------------------------------------

    def _death_message(self, proc: Proc, rc: int | None, uptime: float, detail: str, lines: int) -> str:
        after = "" if self.starting else f" after {_duration(uptime)}"
        how = describe_exit(rc) if proc.popen is not None else "status unknown (it was started by an earlier keeper)"
        head = f"{proc.name} service (pid {proc.pid}) exited{after}: {how}"
        if detail:
            head = f"{proc.name} service (pid {proc.pid}) {detail}; killed it ({how})"
        elif rc == 2:
            head += " (configuration error)"
        tail = tail_lines(proc.log, lines, proc.log_offset)
        if not tail:
            return head + f"; nothing on its stderr ({proc.log})"
        return head + f"; last lines of {proc.log}:\n" + "\n".join("    " + line for line in tail)

    def _on_exit(self, proc: Proc, rc: int | None, detail: str = "") -> None:
        now = time.monotonic()
        uptime = now - proc.started
        os.close(proc.pidfd)
        del self.procs[proc.name]
        self.adopted.discard(proc.name)
        svc = self.record.services[proc.name]
        svc.last_exit = ExitRecord(at=utc_now(), pid=proc.pid, returncode=rc, how=describe_exit(rc),
                                   uptime_seconds=round(uptime, 3), detail=detail)
        if self.starting:
            self._write()
            raise StartFailed(self._death_message(proc, rc, uptime, detail, 20))
        c = self.counters[proc.name]
        if proc.served_at is not None and now - proc.served_at >= self.policy.reset_after:
            c.failures = 0
        c.failures += 1
        quick = proc.served_at is None or uptime < self.policy.quick_window
        c.start_failures = c.start_failures + 1 if quick else 0
        message = self._death_message(proc, rc, uptime, detail, 10)
        if c.start_failures >= self.policy.max_start_failures:
            last = tail_lines(proc.log, 1, proc.log_offset)
            svc.state = FAILED
            raise GiveUp(
                f"{proc.name} failed {c.start_failures} times in a row within {self.policy.quick_window:g}s of its "
                f"start (last: {detail or describe_exit(rc)}{' — ' + last[0][:300] if last else ''}); "
                f"the keeper gave up and stopped the stack\n{message}"
            )
        delay = self.policy.backoff(c.failures)
        svc.restarts += 1
        svc.state = RESTARTING
        svc.next_start_at = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat(timespec="seconds").replace(
            "+00:00", "Z")
        self.due[proc.name] = now + delay
        self._write()
        self.report.error(f"{message}\nrestarting {proc.name} in {delay:g}s (restart {svc.restarts})")

    # -- stopping -------------------------------------------------------------------------------

    def _stop_all(self, keep_agents: bool, only: set[str] | None = None) -> None:
        """The stack's stop sequence over the services (all, or `only` those), then reap our children."""
        self.due.clear()
        record = self.record
        if only is not None:
            record = replace(self.record, services={n: s for n, s in self.record.services.items() if n in only})
        self.stop_services(record, keep_agents, cast(TextIO, self.report))
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(5)
            os.close(proc.pidfd)
        for name in record.services:
            if self.record.services[name].state != FAILED:
                self.record.services[name].state = STOPPED

    def _on_signals(self) -> int:
        signum = self._signals[0]
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:  # `wgs down`: it stops the services itself, in order
            self.record.state = RELEASED
            self._write()
            self.report.info(f"wgs: {name} received: `wgs down` is stopping the stack; the keeper exits")
            if self.starting:
                self.on_start_failed("`wgs down` stopped the stack during start-up")
            return 0
        # Finish the orderly stop even if the user presses Ctrl-C again.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        self.record.state = STOPPING
        self._write()
        if self.starting:
            self.report.error("interrupted during start-up; stopping the services")
        else:
            self.report.info(f"wgs: {name} received; stopping the services")
        self._stop_all(self.keep_agents)
        left = self.record.live_processes()
        left = [p for p in left if not p.startswith("keeper")]
        if left:
            self._write()
            self.report.error(f"could not stop: {', '.join(left)}")
            return 1
        remove_stack(self.state)
        if self.starting:
            self.on_start_failed("interrupted during start-up; nothing is left running")
            return 130
        self.report.info("wgs: all services stopped")
        return 0

    def _start_failed(self, message: str) -> int:
        """The stack did not serve: stop what this keeper started; leave what it adopted as it was."""
        self.report.error(message)
        started = {n for n in self.record.services if n not in self.adopted}
        if self.takeover is None:
            self._stop_all(self.keep_agents)
            remove_stack(self.state)
            tail = "the stack did not start; nothing is left running"
        else:
            self._stop_all(keep_agents=True, only=started)
            kept = [f"{n} (pid {s.pid})" for n, s in self.record.services.items() if n not in started and s.alive()]
            self.record = replace(self.record, keeper=self.takeover.keeper, state=self.takeover.state)
            for name in started:
                self.record.services[name].state = RESTARTING  # not running; the next `wgs up` starts it
            self._write()
            tail = (f"the stack was not taken over; {', '.join(kept) or 'nothing'} left running as before; "
                    "fix the cause and run `wgs up` again, or stop everything with `wgs down`")
        self.report.error(tail)
        self.on_start_failed(f"{message}\nwgs: {tail}")
        return 1

    def _give_up(self, message: str) -> int:
        first = message.partition("\n")[0]
        self.record.state = FAILED
        self.record.failure = first
        self._write()
        self.report.error(message)
        self._stop_all(self.keep_agents)
        self._write()  # kept: `wgs status` shows why, `wgs up` starts afresh, `wgs down` removes it
        self.report.error(f"the stack is stopped: {first}")
        return 1


def release_keeper(keeper: KeeperRecord, timeout: float) -> str:
    """Ask a live keeper to stop restarting and exit, leaving the services to the caller (SIGUSR1).

    `wgs down` calls this first, then reads the record again (the keeper writes it last, so a
    service it restarted a moment ago is on it) and stops the services. Returns what happened.
    """
    if not keeper.alive():
        return "not running"
    try:
        os.kill(keeper.pid, signal.SIGUSR1)
    except ProcessLookupError:
        return "not running"
    if wait_gone(keeper.pid, keeper.start_ticks, timeout):
        return "released"
    with contextlib.suppress(ProcessLookupError):
        os.kill(keeper.pid, signal.SIGKILL)
    wait_gone(keeper.pid, keeper.start_ticks, 5.0)
    return f"killed (did not exit within {timeout:g}s of SIGUSR1)"
