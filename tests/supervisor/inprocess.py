"""The chat lifecycle in one process: the real GraphStore (SQLite), the real planner, a manual clock
and a fake run backend — so restart policy, adoption, leases, failure classes and stops are tested
in milliseconds, deterministically (time moves only when a test advances it).

What is fake here is only what processes and time would be: `FakeBackend` starts nothing (a test
ends its "runs" with `exit()`), `ManualClock` runs timers when advanced. The graph and dispatch are
our real servicers, called directly through `DirectStub` instead of over a socket (the wire is
covered by the process tests).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.dispatch.config import ConfigStore
from services.dispatch.servicer import DispatchServicer
from services.graph import db, migrate
from services.graph.records import ChatRecords
from services.graph.servicer import GraphServicer, RuntimeServicer
from services.graph.store import GraphStore
from services.supervisor import policy
from services.supervisor.admission import Admission, Memory
from services.supervisor.backend import ExitCallback, ExitInfo, Leftover, RunHandle, RunSpec, SpawnFailed
from services.supervisor.clients import DispatchClient, GraphClient
from services.supervisor.lifecycle import Lifecycle
from services.supervisor.settings import SupervisorSettings
from wgs.v1 import runtime_pb2

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# Fake runs get pids from here up: PID_MAX_LIMIT of 64-bit Linux (pid_max can be at most 2**22), so no
# process on the host has one, and a check of a fake pid against /proc can only say "not running".
NO_SUCH_PID = 1 << 22


class _Timer:
    def __init__(self, due: datetime) -> None:
        self.due = due
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Time that moves only when advanced; timers run in due order as it passes them."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._timers: list[tuple[datetime, int, Callable[[], None], _Timer]] = []
        self._seq = itertools.count()
        self.settle: Callable[[], Any] | None = None  # awaited after each timer (the lifecycle's work)

    def now(self) -> datetime:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        handle = _Timer(self._now + timedelta(seconds=max(0.0, delay)))
        heapq.heappush(self._timers, (handle.due, next(self._seq), callback, handle))
        return handle

    def pending(self) -> list[float]:
        """Seconds from now of the timers still to run."""
        return sorted((due - self._now).total_seconds() for due, _, _, h in self._timers if not h.cancelled)

    async def advance(self, seconds: float) -> None:
        target = self._now + timedelta(seconds=seconds)
        while self._timers and self._timers[0][0] <= target:
            due, _, callback, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self._now = max(self._now, due)
            callback()
            await self._settle()
        self._now = target
        await self._settle()

    async def _settle(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        if self.settle is not None:
            await self.settle()


class _Call:
    """What a generated stub's streaming call looks like to its caller: iterate, cancel."""

    def __init__(self, gen: AsyncIterator[Any]) -> None:
        self._gen = gen
        self._closing: asyncio.Task[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen

    def cancel(self) -> None:
        aclose = getattr(self._gen, "aclose", None)
        if aclose is not None:
            self._closing = asyncio.ensure_future(aclose())


class DirectStub:
    """Calls a servicer's methods as a generated async stub would (errors stay domain errors)."""

    def __init__(self, servicer: Any) -> None:
        self._servicer = servicer
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._servicer, name)

        def call(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            self.calls.append(name)
            result = method(request, None)
            return _Call(result) if hasattr(result, "__aiter__") else result

        return call


@dataclass
class FakeRun:
    handle: RunHandle
    callback: ExitCallback | None = None
    alive: bool = True  # the agent (and so the run) lives
    monitor: bool = True  # its run monitor lives (False: killed, the agent unsupervised if alive)
    exit: ExitInfo | None = None
    stops: int = 0


@dataclass
class FakeBackend:
    """Runs nothing: records what it was asked and lets the test end runs as processes would end."""

    state_dir: Path
    hostname: str = "test-host"
    spawned: list[RunSpec] = field(default_factory=list)
    runs: dict[tuple[str, int], FakeRun] = field(default_factory=dict)
    fail_next: list[SpawnFailed] = field(default_factory=list)
    leftovers: dict[str, list[Leftover]] = field(default_factory=dict)  # what end_leftovers finds, per chat
    tail_text: dict[str, str] = field(default_factory=dict)  # output file text, per chat
    tail_reads: list[Path] = field(default_factory=list)  # every output file read, in order
    tail_batches: list[int] = field(default_factory=list)  # how many files each tails() call read
    deadlines: list[float] = field(default_factory=list)
    end_leftovers_calls: list[tuple[str, list[int]]] = field(default_factory=list)
    on_spawn: Callable[[RunSpec], None] | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)  # the world's clock: uptimes are in its time
    _pids: itertools.count[int] = field(default_factory=lambda: itertools.count(NO_SUCH_PID, 2))

    def prime(self) -> None:
        pass

    def log_path(self, chat_id: str, number: int) -> Path:
        return self.state_dir / "chats" / chat_id / f"run-{number}.log"

    async def spawn(self, spec: RunSpec) -> RunHandle:
        if self.on_spawn is not None:
            self.on_spawn(spec)
        self.spawned.append(spec)
        if self.fail_next:
            raise self.fail_next.pop(0)
        pid = next(self._pids)
        handle = RunHandle(chat_id=spec.chat_id, number=spec.number, pid=pid, start_ticks=pid * 10,
                           monitor_pid=pid + 1, monitor_start_ticks=pid * 10 - 1,
                           log_path=self.log_path(spec.chat_id, spec.number), argv=list(spec.display_argv),
                           started_at=self.now(), hostname=self.hostname)
        self.runs[(spec.chat_id, spec.number)] = FakeRun(handle)
        return handle

    def watch(self, handle: RunHandle, on_exit: ExitCallback) -> bool:
        run = self.runs.get((handle.chat_id, handle.number))
        if run is None or not run.alive:
            return False
        run.callback = on_exit
        run.handle = handle
        return True

    def unwatch(self, handle: RunHandle) -> None:
        run = self.runs.get((handle.chat_id, handle.number))
        if run is not None:
            run.callback = None

    def collect_exit(self, handle: RunHandle) -> ExitInfo:
        run = self.runs.get((handle.chat_id, handle.number))
        if run is not None and run.exit is not None:
            return run.exit
        return ExitInfo(None, None, self.now(), error="exit status unknown: the run monitor left no record",
                        unknown=True)

    def exit(self, chat_id: str, number: int, code: int | None = None, sig: int | None = None, **kw: Any) -> None:
        """The run's agent ends (as its monitor would report it)."""
        run = self.runs[(chat_id, number)]
        run.alive = False
        run.exit = ExitInfo(exit_code=code, signal=sig, exited_at=self.now(),
                            signal_name={9: "SIGKILL", 15: "SIGTERM", 11: "SIGSEGV"}.get(sig or 0, ""), **kw)
        if run.callback is not None:
            callback, run.callback = run.callback, None
            callback(run.handle, run.exit)

    def kill_monitor(self, chat_id: str, number: int) -> None:
        """`kill -9` of the run's monitor: the supervisor learns the monitor ended without an exit
        record (as LocalProcessBackend reports it); the agent lives on until someone ends it."""
        run = self.runs[(chat_id, number)]
        run.monitor = False
        run.exit = ExitInfo(None, None, self.now(), error="run monitor died (SIGKILL) without an exit record",
                            unknown=True)
        if run.callback is not None:
            callback, run.callback = run.callback, None
            callback(run.handle, run.exit)

    def live(self, chat_id: str) -> list[int]:
        return [n for (c, n), r in self.runs.items() if c == chat_id and r.alive]

    async def stop(self, handle: RunHandle, grace: float) -> list[int]:
        run = self.runs[(handle.chat_id, handle.number)]
        run.stops += 1
        if run.alive:
            self.exit(handle.chat_id, handle.number, sig=15)
        return []

    def interrupt(self, handle: RunHandle) -> bool:
        run = self.runs.get((handle.chat_id, handle.number))
        return run is not None and run.alive

    def adopt(self, chat_id: str, run: runtime_pb2.Run) -> RunHandle | None:
        fake = self.runs.get((chat_id, run.number))
        if fake is None or not fake.alive or not fake.monitor or fake.handle.pid != run.pid:
            return None
        return fake.handle

    async def end_leftovers(self, chat_id: str, runs: list[runtime_pb2.Run], grace: float) -> list[Leftover]:
        self.end_leftovers_calls.append((chat_id, [r.number for r in runs]))
        found = self.leftovers.pop(chat_id, [])
        for r in runs:  # an agent whose monitor was killed, named by its record (pid and start ticks)
            fake = self.runs.get((chat_id, r.number))
            if (fake is not None and fake.alive and not fake.monitor and fake.handle.pid == r.pid
                    and fake.handle.start_ticks == r.process_start_ticks):
                found.append(Leftover(pid=r.pid, what=f"agent of run {r.number}", outcome="ended"))
        for lo in found:  # ending an agent whose monitor died ends its run
            for (c, _n), fake in self.runs.items():
                if c == chat_id and fake.handle.pid == lo.pid:
                    fake.alive = False
        return found

    def tail(self, handle_or_path: RunHandle | Path | str) -> str:
        path = handle_or_path.log_path if isinstance(handle_or_path, RunHandle) else Path(handle_or_path)
        self.tail_reads.append(path)
        return self.tail_text.get(path.parent.name, "")

    def tails(self, handles_or_paths: Sequence[RunHandle | Path | str]) -> list[str]:
        self.tail_batches.append(len(handles_or_paths))
        return [self.tail(h) for h in handles_or_paths]

    def set_lease_deadline(self, deadline: float) -> None:
        self.deadlines.append(deadline)

    async def close(self) -> None:
        pass


CONFIG = """
[defaults]
model = "qwen3-coder"

[[endpoints]]
name = "lab"
url = "https://lab.example:8000"
api_key_env = "LAB_TEST_KEY"
default = true
"""


@dataclass
class World:
    """One supervisor's lifecycle with everything it talks to, in this process."""

    tmp: Path
    clock: ManualClock
    store: GraphStore
    records: ChatRecords
    backend: FakeBackend
    graph_runtime: DirectStub
    dispatch: DirectStub
    lifecycles: list[Lifecycle] = field(default_factory=list)

    def settings(self, supervisor_id: str = "sup-a", **kw: Any) -> SupervisorSettings:
        base: dict[str, Any] = dict(
            state_dir=self.tmp, supervisor_id=supervisor_id, lease_seconds=30, max_live_chats=50, stop_grace=1.0,
            max_log_bytes=1 << 20, graph_target="127.0.0.1:1", default_cwd=str(self.tmp),
            policy=policy.PolicyConfig(), advertise_address="127.0.0.1:50153")
        base.update(kw)
        return SupervisorSettings(**base)

    def supervisor(self, supervisor_id: str = "sup-a", backend: FakeBackend | None = None,
                   **kw: Any) -> Lifecycle:
        settings = self.settings(supervisor_id, **kw)
        graph = GraphClient(DirectStub(GraphServicer(self.store)), self.graph_runtime, settings.supervisor_id)  # type: ignore[arg-type]
        dispatch = DispatchClient(self.dispatch)  # type: ignore[arg-type]
        admission = Admission(max_concurrent=8, queue_seconds=1.0, chat_bytes=0, memory=lambda: Memory(0, 0))
        life = Lifecycle(settings, graph, dispatch, backend or self.backend, clock=self.clock, admission=admission,
                         agent_credentials=lambda chat, run: {"WGS_TOKEN": f"wgs1.test-token-{chat}-{run}"})
        self.lifecycles.append(life)
        self.clock.settle = self.settle
        return life

    def restart_delay(self, chat_id: str) -> float | None:
        """Seconds until the owning supervisor's scheduled restart of the chat, None if none is scheduled."""
        for life in self.lifecycles:
            live = life._live.get(chat_id)
            timer = live.timer if live is not None else None
            if isinstance(timer, _Timer) and not timer.cancelled:
                return (timer.due - self.clock.now()).total_seconds()
        return None

    async def settle(self) -> None:
        for life in self.lifecycles:
            await life.settle()
            for which in ("_task", "_takeover"):  # a renewal round, then the takeover it began
                task = getattr(life.owner, which)
                if task is not None and not task.done():
                    await asyncio.gather(task, return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)
        for life in self.lifecycles:
            await life.settle()


async def make_world(tmp: Path) -> World:
    clock = ManualClock()
    engine = db.create_engine(f"sqlite:///{tmp / 'graph.db'}")
    await asyncio.to_thread(migrate.upgrade, engine)
    store = GraphStore(engine, clock=clock.now)
    records = ChatRecords(store)
    config = tmp / "config.toml"
    config.write_text(CONFIG)
    dispatch = DirectStub(DispatchServicer(ConfigStore(config)))
    return World(tmp=tmp, clock=clock, store=store, records=records, backend=FakeBackend(tmp, now=clock.now),
                 graph_runtime=DirectStub(RuntimeServicer(records)), dispatch=dispatch)
