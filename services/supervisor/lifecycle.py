"""The chat lifecycle: create, send, stop, restart — one supervised agent per chat.

The graph holds the durable record (task + ChatRuntime); this module holds the live part (the run
handle, restart timers, failure history) and moves each chat through the state machine of
wgs.common.chat_states. Every state change goes through `change_state`, which checks the
transition table and then writes the change in one graph call (the graph checks it again).

Every change of a chat happens under that chat's asyncio lock, so there are never two runs for one
chat in this supervisor; before a restart the backend proves that no process of an earlier run
lives on this host (and ends it if one does), so there are never two agents for one chat at all.

Collaborators: `runs.Runs` (spawn, exit records and spans), `ownership.Ownership` (leases, claims,
fencing, failover), `backend.RunBackend` (processes), `clock.Clock` (time), `views` (what clients
see). All are injected, so the lifecycle is tested in-process with a fake backend and a manual clock
(tests/supervisor/test_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from services.supervisor import agentenv, failures, policy, views
from services.supervisor.admission import Admission, own_cgroup_memory
from services.supervisor.backend import ExitInfo, RunBackend, RunHandle, SpawnFailed
from services.supervisor.clients import DispatchClient, GraphClient
from services.supervisor.clock import Clock, LoopClock, Timer
from services.supervisor.ownership import Capacity, Ownership
from services.supervisor.redact import Redactor
from services.supervisor.runs import Runs, shown_plan
from services.supervisor.settings import SupervisorSettings
from wgs.common import chat_states, errors, telemetry, validation
from wgs.common.logs import fields
from wgs.common.timeutil import from_ts
from wgs.v1 import (
    chat_pb2,
    dispatch_pb2,
    plan_pb2,
    runtime_pb2,
    runtime_service_pb2,
    supervisor_pb2,
    task_pb2,
)

log = logging.getLogger("wgs.supervisor")
RS = runtime_service_pb2
R = runtime_pb2

LIVE_TASK = task_pb2.TASK_STATUS_IN_PROGRESS
RETRY_RECORD_SECONDS = 30.0  # an exit that could not be recorded is tried again this often
LOG_CHUNK = 64 * 1024


# ---------------------------------------------------------------------------------------- changes


@dataclass(frozen=True)
class Transition:
    """A state change without a run event (spawn starting, stop without a run, restart, FAILED)."""

    restart_count: int | None = None
    next_restart_at: datetime | None = None
    last_error: str | None = None
    plan: plan_pb2.SpawnPlan | None = None
    resume_on_start: bool | None = None
    task_status: int | None = None
    add_tags: tuple[str, ...] = ()
    log_message: str = ""


@dataclass(frozen=True)
class RunStarted:
    handle: RunHandle
    plan: plan_pb2.SpawnPlan | None


@dataclass(frozen=True)
class RunEnded:
    item: RS.RunExit


Change = Transition | RunStarted | RunEnded


@dataclass(eq=False)
class ChatLive:
    """What this supervisor holds of one chat it owns."""

    chat_id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: int = chat_states.UNSPECIFIED  # the runtime state as last written or read
    run: RunHandle | None = None
    history: policy.History = field(default_factory=policy.History)
    timer: Timer | None = None
    redactor: Redactor = field(default_factory=Redactor)
    create_span: SpanContext | None = None  # the creating call, for links from later spans
    lost: bool = False  # taken over by another supervisor: never act on it again


def creating_span(runtime: runtime_pb2.ChatRuntime) -> SpanContext | None:
    """The creating call's span, rebuilt from the ids stored with the runtime (survives restarts)."""
    try:
        trace_id, span_id = int(runtime.trace_id, 16), int(runtime.span_id, 16)
    except ValueError:
        return None
    ctx = SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return ctx if ctx.is_valid else None


def check_usable(task: task_pb2.Task) -> None:
    if views.is_deleted(task):
        raise errors.FailedPrecondition(f"chat {task.id} was deleted; create a new chat")
    if views.is_archived(task):
        raise errors.FailedPrecondition(f"chat {task.id} is archived; create a new chat")


def _next_number(runtime: runtime_pb2.ChatRuntime) -> int:
    numbers = [runtime.current_run.number] + [r.number for r in runtime.previous_runs]
    return max(numbers, default=0) + 1


def _describe_leftovers(leftovers: list[Any]) -> str:
    parts = [f"{lo.what} pid {lo.pid} {lo.outcome}" for lo in leftovers]
    return "; ".join(parts)


class Lifecycle:
    """All chat operations of one supervisor; the gRPC servicers are thin layers over this."""

    def __init__(self, settings: SupervisorSettings, graph: GraphClient, dispatch: DispatchClient,
                 backend: RunBackend, *, clock: Clock | None = None,
                 agent_credentials: Callable[[str, int], dict[str, str]] | None = None,
                 admission: Admission | None = None) -> None:
        self.s = settings
        self.graph = graph
        self.dispatch = dispatch
        self.backend = backend
        self.clock = clock or LoopClock()
        self.runs = Runs(settings, graph, backend, self.clock, agent_credentials)
        self.admission = admission or Admission(
            max_concurrent=settings.max_concurrent_creates, queue_seconds=settings.create_queue_seconds,
            chat_bytes=settings.chat_memory_bytes, memory=own_cgroup_memory)
        self.owner = Ownership(settings, graph, backend, self.clock, held=self._held, capacity=self.capacity,
                               on_lost=self._drop_lost, on_orphan=self._adopt_orphan)
        self._live: dict[str, ChatLive] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # ---------------------------------------------------------------------------- helpers

    @property
    def me(self) -> str:
        return self.s.supervisor_id

    def live(self, chat_id: str) -> ChatLive:
        entry = self._live.get(chat_id)
        if entry is None:
            entry = self._live[chat_id] = ChatLive(chat_id)
        return entry

    def _background(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait until the work started in the background (exit records, restarts) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def holds(self, chat_id: str) -> bool:
        """This supervisor owns the chat as far as it knows (it created, adopted or took it over)."""
        live = self._live.get(chat_id)
        return live is not None and not live.lost and live.state != chat_states.UNSPECIFIED

    def advertise(self, address: str) -> None:
        """The address peers reach this replica at (known once the server is bound)."""
        self.s = dataclasses.replace(self.s, advertise_address=address)
        self.owner.s = self.s

    def _held(self) -> list[str]:
        """The chats this supervisor owns (RenewLeases asks which of them it lost). An entry whose
        state was never set is a chat it was only asked about (a command for a chat that does not
        exist, or one another supervisor owns): reporting it would read as a takeover."""
        return sorted(c for c, live in self._live.items() if not live.lost and live.state != chat_states.UNSPECIFIED)

    def live_chats(self) -> int:
        return sum(1 for live in self._live.values()
                   if not live.lost and (live.run is not None or live.state in (chat_states.STARTING,
                                                                               chat_states.BACKOFF)))

    def capacity(self) -> Capacity:
        live = self.live_chats()
        mem = self.admission.memory()
        free = (self.s.max_live_chats - live) if self.s.max_live_chats else 1_000_000
        if mem.limit and self.admission.chat_bytes:
            free = min(free, (int(mem.limit * 0.95) - mem.used) // self.admission.chat_bytes)
        return Capacity(live_chats=live, max_live_chats=self.s.max_live_chats, free=max(0, free),
                        memory_used_bytes=mem.used, memory_limit_bytes=mem.limit)

    async def _read(self, live: ChatLive) -> RS.GetChatRecordResponse:
        rec = await self.graph.record(live.chat_id)
        if rec.runtime.supervisor_id == self.me:
            live.state = rec.runtime.state
        return rec

    def _redactor(self, chat_id: str, runtime: runtime_pb2.ChatRuntime) -> Redactor:
        live = self._live.get(chat_id)
        if live is not None and live.redactor:
            return live.redactor
        return agentenv.redactor_for(runtime.plan)

    def view(self, task: task_pb2.Task, runtime: runtime_pb2.ChatRuntime, live_tail: str | None = None
             ) -> chat_pb2.Chat:
        return views.to_chat(task, runtime, redactor=self._redactor(task.id, runtime), live_tail=live_tail,
                             now=self.clock.now())

    # ---------------------------------------------------------------------------- the one state change

    async def change_state(self, live: ChatLive, to_state: int, change: Change
                           ) -> tuple[task_pb2.Task | None, runtime_pb2.ChatRuntime]:
        """Move the chat to `to_state` by the table, writing `change` in one graph call (lock held)."""
        if live.lost:
            raise errors.FailedPrecondition(f"chat {live.chat_id} was taken over by another supervisor")
        chat_states.check(live.state, to_state, live.chat_id)
        task: task_pb2.Task | None = None
        if isinstance(change, RunStarted):
            record = change.handle.record()
            record.supervisor_id = self.me
            runtime = await self.graph.run_started(live.chat_id, record, change.plan, expected_state=live.state)
        elif isinstance(change, RunEnded):
            runtime = await self.runs.record(change.item)
        else:
            req = RS.TransitionChatRequest(chat_id=live.chat_id, from_state=live.state,  # type: ignore[arg-type]
                                           to_state=to_state, add_tags=list(change.add_tags),  # type: ignore[arg-type]
                                           log_message=change.log_message)
            if change.restart_count is not None:
                req.restart_count = change.restart_count
            if change.next_restart_at is not None:
                req.next_restart_at.FromDatetime(change.next_restart_at)
            if change.last_error is not None:
                req.last_error = change.last_error
            if change.plan is not None:
                req.plan.CopyFrom(change.plan)
            if change.resume_on_start is not None:
                req.resume_on_start = change.resume_on_start
            if change.task_status is not None:
                req.task_status = change.task_status  # type: ignore[assignment]
            resp = await self.graph.transition(req)
            task, runtime = resp.task, resp.runtime
        live.state = runtime.state
        return task, runtime

    # ---------------------------------------------------------------------------- CreateChat

    async def create_chat(self, req: chat_pb2.CreateChatRequest,
                          time_remaining: float | None = None) -> chat_pb2.CreateChatResponse:
        """Plan once, then persist the chat and spawn run 1 with that plan; returns once the agent runs
        or its spawn failed. Once under way it runs to completion even if the caller goes away, so a
        create either leaves a recorded chat or nothing — never an agent nobody knows."""
        validation.request_id(req.request_id)
        validation.chat_name(req.name)
        self.admission.refuse_if_busy(time_remaining)  # first: under a storm most calls end here, cheaply
        if (req.working_dir and os.path.isabs(req.working_dir)
                and not await asyncio.to_thread(os.path.isdir, req.working_dir)):
            raise errors.InvalidArgument(f"working_dir {req.working_dir!r} is not an existing directory on the "
                                         "supervisor's host", "working_dir")
        self.admission.check_memory()
        if self.s.max_live_chats and self.live_chats() >= self.s.max_live_chats:
            raise errors.ResourceExhausted(
                f"{self.live_chats()} chats are live on this supervisor and its cap is {self.s.max_live_chats} "
                "(WGS_MAX_LIVE_CHATS); stop, archive or delete a chat first, or raise the cap")
        ticket = await self.admission.acquire(time_remaining)
        try:
            plan = await self.dispatch.plan(
                executor=req.executor, model=req.model, endpoint=req.endpoint, command=list(req.command),
                working_dir=req.working_dir, generation=req.generation if req.HasField("generation") else None,
                origin=dispatch_pb2.SETTINGS_ORIGIN_REQUEST)
        except BaseException:
            ticket.release()  # nothing written yet: a caller gone during planning leaves nothing
            raise
        work = asyncio.ensure_future(self._create(req, plan, trace.get_current_span().get_span_context()))
        self._tasks.add(work)
        work.add_done_callback(self._tasks.discard)
        # The slot belongs to the work, not to the call: a create whose caller gave up runs on (shielded)
        # and keeps counting against WGS_MAX_CONCURRENT_CREATES until it is done.
        work.add_done_callback(ticket.release)
        return await asyncio.shield(work)

    async def _create(self, req: chat_pb2.CreateChatRequest, plan: plan_pb2.SpawnPlan,
                      create_ctx: SpanContext) -> chat_pb2.CreateChatResponse:
        redactor = agentenv.redactor_for(plan)
        shown = shown_plan(plan, redactor)
        executor = plan.executor if plan.executor_source == plan_pb2.CHOICE_SOURCE_REQUEST else ""
        span_id = format(create_ctx.span_id, "016x") if create_ctx.is_valid else ""
        # Always an idempotency key: a CreateChatTask retried after UNAVAILABLE must not create two chats.
        request_id = req.request_id or f"create-{uuid.uuid4().hex}"
        created = await self.graph.create_chat(RS.CreateChatTaskRequest(
            name=req.name, model=req.model, executor=executor, endpoint=req.endpoint, command_argv=list(req.command),
            working_dir=req.working_dir, request_id=request_id, supervisor_id=self.me,
            lease_seconds=self.s.lease_seconds, max_live_chats=self.s.max_live_chats,
            trace_id=telemetry.current_trace_id(), span_id=span_id, plan=shown,
            generation=req.generation if req.HasField("generation") else None))
        chat_id = created.task.id
        live = self.live(chat_id)
        async with live.lock:
            if not created.created:
                rec = await self._read(live)
                return chat_pb2.CreateChatResponse(chat=self.view(rec.task, rec.runtime), created=False)
            live.state = created.runtime.state
            live.create_span = create_ctx if create_ctx.is_valid else None
            live.redactor = redactor
            log.info("chat created: %s", chat_id, extra=fields(
                chat_id=chat_id, executor=plan.executor, model=plan.model, endpoint=req.endpoint,
                trace_id=created.runtime.trace_id))
            task, runtime = await self._spawn_run(live, created.task, plan, 1, created.runtime)
        return chat_pb2.CreateChatResponse(chat=self.view(task, runtime), created=True)

    # ---------------------------------------------------------------------------- spawning (lock held)

    async def _spawn_run(self, live: ChatLive, task: task_pb2.Task, plan: plan_pb2.SpawnPlan, number: int,
                         runtime: runtime_pb2.ChatRuntime) -> tuple[task_pb2.Task, runtime_pb2.ChatRuntime]:
        """Spawn run `number` (the chat is STARTING) and record it RUNNING, or record the failure."""
        started = self.clock.now()
        shown = shown_plan(plan, live.redactor)
        links = [c for c in (live.create_span,) if c is not None]
        try:
            handle = await self.runs.spawn(live.chat_id, number, plan, live.redactor, links)
        except SpawnFailed as exc:
            return task, await self._spawn_failed(live, number, shown, exc.message, exc.permanent, started)
        live.run = handle
        if not self.backend.watch(handle, self._exit_cb):
            self._exit_cb(handle, self.backend.collect_exit(handle))
        try:
            _, runtime = await self.change_state(live, chat_states.RUNNING, RunStarted(handle, shown))
        except errors.WgsError as exc:
            # The run must not live unrecorded: end it, and try the start again later.
            log.error("could not record run %d of %s (%s); ending it", number, live.chat_id, exc.message,
                      extra=fields(chat_id=live.chat_id, run=number))
            handle.stop_reason = "its start could not be recorded"
            handle.recorded = True
            live.run = None
            await self.backend.stop(handle, self.s.stop_grace)
            if live.state == chat_states.STARTING and not isinstance(exc, errors.FailedPrecondition):
                self._schedule_start(live, self.s.policy.initial_backoff)
            raise
        return task, runtime

    async def _spawn_failed(self, live: ChatLive, number: int, shown: plan_pb2.SpawnPlan, message: str,
                            permanent: bool, started: datetime) -> runtime_pb2.ChatRuntime:
        c = failures.classify_spawn_failure(message, permanent)
        now = self.clock.now()
        decision = policy.on_end(history=live.history, cfg=self.s.policy, now=now, started_at=None, exit_code=None,
                                 describe=c.describe, permanent=c.permanent, fix=c.fix)
        live.history = decision.history
        run = self.runs.failed_spawn_run(live.chat_id, number, message, started, live.redactor, list(shown.argv))
        item = RS.RunExit(chat_id=live.chat_id, run=run, state=decision.state,  # type: ignore[arg-type]
                          restart_count=decision.history.restart_count, last_error=decision.reason, plan=shown)
        restart_at = decision.restart_at(now)
        if restart_at is not None:
            item.next_restart_at.FromDatetime(restart_at)
        _, runtime = await self.change_state(live, decision.state, RunEnded(item))
        self._schedule(live, decision)
        return runtime

    async def _start(self, live: ChatLive, task: task_pb2.Task, runtime: runtime_pb2.ChatRuntime, *,
                     reason: str, restart_count: int | None = None, last_error: str | None = None
                     ) -> tuple[task_pb2.Task, runtime_pb2.ChatRuntime]:
        """Respawn: STARTING, plan, prove no earlier run lives, spawn (lock held)."""
        self._cancel_timer(live)
        if live.state != chat_states.STARTING or task.status != LIVE_TASK or restart_count is not None:
            new_task, runtime = await self.change_state(live, chat_states.STARTING, Transition(
                restart_count=restart_count, last_error=last_error, resume_on_start=False,
                task_status=LIVE_TASK if task.status != LIVE_TASK else None, log_message=reason))
            task = new_task or task
        try:
            plan = await self.dispatch.plan_for(task, dispatch_pb2.SETTINGS_ORIGIN_CHAT)
        except (errors.FailedPrecondition, errors.InvalidArgument) as exc:
            # Retrying cannot help until the config or the chat changes: FAILED, with dispatch's words.
            log.warning("cannot plan %s: %s", live.chat_id, exc.message, extra=fields(chat_id=live.chat_id))
            new_task, runtime = await self.change_state(live, chat_states.FAILED, Transition(
                last_error=f"cannot plan the agent: {exc.message}; fix the chat or config.toml, then "
                           f"`wgs chat restart {live.chat_id}`"))
            return new_task or task, runtime
        except errors.WgsError as exc:
            now = self.clock.now()
            decision = policy.on_end(history=live.history, cfg=self.s.policy, now=now, started_at=None,
                                     exit_code=None, describe=f"cannot plan the agent: {exc.message}")
            live.history = decision.history
            new_task, runtime = await self.change_state(live, decision.state, Transition(
                last_error=decision.reason, restart_count=decision.history.restart_count,
                next_restart_at=decision.restart_at(now)))
            self._schedule(live, decision)
            return new_task or task, runtime
        runs = [r for r in (runtime.current_run, *runtime.previous_runs) if r.number]
        leftovers = await self.backend.end_leftovers(live.chat_id, runs, self.s.stop_grace)
        if leftovers:
            log.warning("%s: processes of earlier runs were still alive and were ended before the restart: %s",
                        live.chat_id, _describe_leftovers(leftovers), extra=fields(chat_id=live.chat_id))
        live.redactor = agentenv.redactor_for(plan)
        return await self._spawn_run(live, task, plan, _next_number(runtime), runtime)

    # ---------------------------------------------------------------------------- exits

    def _exit_cb(self, handle: RunHandle, info: ExitInfo) -> None:
        if handle.exit is None:
            handle.exit = info
        handle.ended.set()
        self._background(self._on_exit(handle))

    async def _on_exit(self, handle: RunHandle) -> None:
        live = self._live.get(handle.chat_id)
        if live is None:  # dropped (taken over by another supervisor): its end is not ours to record
            return
        async with live.lock:
            if handle.recorded or live.lost or self._closing:
                return
            if live.run is handle:
                live.run = None
            assert handle.exit is not None
            try:
                await self._record_end(live, handle, handle.exit)
            except errors.Unavailable as exc:
                log.error("the end of %s run %d could not be recorded (%s); trying again in %gs", handle.chat_id,
                          handle.number, exc.message, RETRY_RECORD_SECONDS, extra=fields(chat_id=handle.chat_id))
                self.clock.call_later(RETRY_RECORD_SECONDS, lambda: self._background(self._on_exit(handle)))
            except errors.WgsError as exc:
                log.error("the end of %s run %d was not recorded: %s", handle.chat_id, handle.number, exc.message,
                          extra=fields(chat_id=handle.chat_id))

    async def _record_end(self, live: ChatLive, handle: RunHandle, info: ExitInfo, *,
                          task_status: int | None = None, add_tags: tuple[str, ...] = (), resume: bool = False,
                          lost_detail: str = "", stay_stopped: bool = False) -> runtime_pb2.ChatRuntime:
        """Decide what follows a run's end, then trace, log and record it (lock held).

        `stay_stopped`: the chat was stopped while this supervisor was away (Reconcile): the run's
        end is recorded as it happened, and the chat stays STOPPED."""
        now = self.clock.now()
        tail = await asyncio.to_thread(self.backend.tail, handle)
        if not handle.stop_reason and info.stopped and not info.fenced:
            handle.stop_reason = "stopped through its run monitor (wgs down while the supervisor was away)"
            resume = resume or task_status is None
        if stay_stopped and not handle.stop_reason:
            decision = policy.on_end(history=live.history, cfg=self.s.policy, now=now, started_at=handle.started_at,
                                     exit_code=info.exit_code, stop_requested=True)
            end = (R.RUN_END_FENCED if info.fenced else R.RUN_END_UNKNOWN if info.unknown
                   else R.RUN_END_EXITED)
        elif handle.stop_reason:
            decision = policy.on_end(history=live.history, cfg=self.s.policy, now=now, started_at=handle.started_at,
                                     exit_code=info.exit_code, stop_requested=True)
            end = R.RUN_END_STOPPED
        elif info.fenced or info.unknown:
            what = lost_detail or info.error or info.describe()
            decision = policy.on_end(history=live.history, cfg=self.s.policy, now=now, started_at=handle.started_at,
                                     exit_code=info.exit_code, describe=what, not_the_agents_fault=True)
            end = R.RUN_END_FENCED if info.fenced else R.RUN_END_UNKNOWN
        else:
            c = failures.classify_exit(info, handle.argv, tail)
            decision = policy.on_end(history=live.history, cfg=self.s.policy, now=now, started_at=handle.started_at,
                                     exit_code=info.exit_code, describe=c.describe, permanent=c.permanent, fix=c.fix)
            end = R.RUN_END_EXITED
        live.history = decision.history
        state = decision.state
        run = self.runs.ended_run(handle, info, live.redactor, end=end, detail=handle.stop_reason)
        if lost_detail:  # what is known of an end nobody saw (it includes the exit record's own error)
            run.error = lost_detail
        log.info("agent for %s run %d (pid %d) %s -> %s", live.chat_id, handle.number, handle.pid,
                 (handle.stop_reason and f"stopped ({handle.stop_reason}), {info.describe()}") or info.describe(),
                 chat_states.name(state),
                 extra=fields(chat_id=live.chat_id, run=handle.number, pid=handle.pid, exit_code=info.exit_code,
                              signal=info.signal_name or None, error=info.error or None, state=chat_states.name(state),
                              leftovers=info.leftovers or None, stderr_path=str(handle.log_path)))
        self.runs.exit_span(handle, info, state, decision.history.restart_count, live.create_span)
        item = RS.RunExit(
            chat_id=live.chat_id, run=run, state=state, restart_count=decision.history.restart_count,  # type: ignore[arg-type]
            last_error=decision.reason if state in (chat_states.BACKOFF, chat_states.FAILED) else "",
            resume_on_start=resume, add_tags=list(add_tags))
        if task_status is not None:
            item.task_status = task_status  # type: ignore[assignment]
        restart_at = decision.restart_at(now)
        if restart_at is not None:
            item.next_restart_at.FromDatetime(restart_at)
        _, runtime = await self.change_state(live, state, RunEnded(item))
        handle.recorded = True
        handle.recorded_event.set()
        self._schedule(live, decision)
        return runtime

    # ---------------------------------------------------------------------------- timers

    def _cancel_timer(self, live: ChatLive) -> None:
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None

    def _schedule(self, live: ChatLive, decision: policy.Decision) -> None:
        if decision.state != chat_states.BACKOFF or decision.delay is None or self._closing:
            return
        self._cancel_timer(live)
        live.timer = self.clock.call_later(decision.delay, lambda: self._background(self._restart_due(live.chat_id)))

    def _schedule_start(self, live: ChatLive, delay: float) -> None:
        """Try a start again later (the chat is STARTING and nothing runs)."""
        if self._closing:
            return
        self._cancel_timer(live)
        live.timer = self.clock.call_later(delay, lambda: self._background(self._restart_due(live.chat_id)))

    async def _restart_due(self, chat_id: str) -> None:
        live = self.live(chat_id)
        async with live.lock:
            live.timer = None
            if live.run is not None or self._closing or live.lost:
                return
            try:
                rec = await self._read(live)
                if rec.runtime.supervisor_id != self.me:
                    return
                if rec.runtime.state not in (chat_states.BACKOFF, chat_states.STARTING):
                    return
                if views.is_deleted(rec.task) or views.is_archived(rec.task):
                    return
                log.info("restarting %s after backoff", chat_id, extra=fields(chat_id=chat_id))
                await self._start(live, rec.task, rec.runtime, reason="restart after backoff")
            except errors.WgsError as exc:
                log.error("restart of %s failed: %s", chat_id, exc.message, extra=fields(chat_id=chat_id))
                # Try again later rather than leaving the chat waiting forever.
                self._schedule_start(live, self.s.policy.max_backoff)

    # ---------------------------------------------------------------------------- queries

    async def get_chat(self, chat_id: str) -> chat_pb2.Chat:
        validation.chat_id(chat_id)
        rec = await self.graph.record(chat_id)
        live = self._live.get(chat_id)
        tail = None
        if live is not None and live.run is not None and views.run_is_live(rec.runtime):
            tail = await asyncio.to_thread(self.backend.tail, live.run)
        return self.view(rec.task, rec.runtime, live_tail=tail)

    async def list_chats(self, req: chat_pb2.ListChatsRequest) -> chat_pb2.ListChatsResponse:
        size = validation.page_size(req.page_size)
        resp = await self.graph.list_records(include_ended=req.include_ended, page_size=size,
                                             page_token=req.page_token)
        return chat_pb2.ListChatsResponse(chats=[self.view(c.task, c.runtime) for c in resp.chats],
                                          next_page_token=resp.next_page_token)

    async def watch_chat(self, chat_id: str) -> AsyncIterator[chat_pb2.Chat]:
        """The chat now, then each change of it as the graph records it (whoever made it: this
        supervisor, the agent's own reports, a Reconcile, another replica). "" watches every chat."""
        if chat_id:
            validation.chat_id(chat_id)
        changes = self.graph.watch_records(chat_id)
        first = asyncio.ensure_future(anext(changes))  # subscribed before the snapshot: nothing is missed
        try:
            if chat_id:
                yield await self.get_chat(chat_id)
            else:
                async for rec in self.graph.all_records():
                    yield self.view(rec.task, rec.runtime)
            rec = await first
            while True:
                yield self.view(rec.task, rec.runtime)
                rec = await anext(changes)
        finally:
            # `first` runs `changes` in a task of its own: let it end before closing the generator
            # (closing it while it runs raises "aclose(): asynchronous generator is already running").
            first.cancel()
            await asyncio.wait({first})
            if not first.cancelled():
                first.exception()  # retrieved: a graph error after the watcher left concerns nobody
            await changes.aclose()

    async def list_messages(self, req: chat_pb2.ListChatMessagesRequest) -> chat_pb2.ListChatMessagesResponse:
        validation.chat_id(req.chat_id)
        if req.after_seq < 0:
            raise errors.InvalidArgument(f"after_seq must not be negative, got {req.after_seq}", "after_seq")
        size = validation.page_size(req.page_size)
        resp = await self.graph.list_messages(req.chat_id, req.after_seq, size, req.page_token)
        return chat_pb2.ListChatMessagesResponse(messages=list(resp.messages), next_page_token=resp.next_page_token)

    async def watch_messages(self, req: chat_pb2.WatchChatMessagesRequest
                             ) -> AsyncIterator[chat_pb2.WatchChatMessagesResponse]:
        validation.chat_id(req.chat_id)
        if req.after_seq < 0:
            raise errors.InvalidArgument(f"after_seq must not be negative, got {req.after_seq}", "after_seq")
        async for item in self.graph.watch_messages(req.chat_id, req.after_seq, req.include_partial):
            if item.HasField("partial"):
                yield chat_pb2.WatchChatMessagesResponse(partial=item.partial)
            else:
                yield chat_pb2.WatchChatMessagesResponse(message=item.message)

    async def stream_log(self, req: chat_pb2.StreamChatLogRequest) -> AsyncIterator[chat_pb2.StreamChatLogResponse]:
        """The run file of a chat, redacted; with follow, until the run ends."""
        validation.chat_id(req.chat_id)
        rec = await self.graph.record(req.chat_id)
        rt = rec.runtime
        runs = [r for r in (rt.current_run, *rt.previous_runs) if r.number]
        if req.run == 0:
            run = runs[0] if runs else None
        elif req.run == -1:
            run = runs[1] if len(runs) > 1 else None
        else:
            run = next((r for r in runs if r.number == req.run), None)
        if run is None:
            what = {0: "no run yet", -1: "no previous run"}.get(req.run, f"no run {req.run} (kept: "
                                                                          f"{', '.join(str(r.number) for r in runs)})")
            raise errors.NotFound(f"chat {req.chat_id} has {what}")
        redactor = self._redactor(req.chat_id, rt)
        path = self.backend.log_path(req.chat_id, run.number)
        live = self._live.get(req.chat_id)
        handle = live.run if live is not None and live.run is not None and live.run.number == run.number else None
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except OSError:
            yield chat_pb2.StreamChatLogResponse(data=redactor.text(run.stderr_tail).encode(), run_number=run.number,
                                                 ended=True, from_record=True)
            return
        try:
            pending = b""
            while True:
                data = await asyncio.to_thread(fh.read, LOG_CHUNK)
                if data:
                    pending += data
                    cut = pending.rfind(b"\n") + 1  # redact whole lines only (a secret never spans a cut)
                    if cut:
                        text = redactor.text(pending[:cut].decode("utf-8", "replace"))
                        pending = pending[cut:]
                        yield chat_pb2.StreamChatLogResponse(data=text.encode(), run_number=run.number)
                    continue
                if not req.follow or handle is None or handle.ended.is_set():
                    if pending:
                        yield chat_pb2.StreamChatLogResponse(
                            data=redactor.text(pending.decode("utf-8", "replace")).encode(), run_number=run.number)
                    if handle is not None and req.follow:
                        # The follower asks how it ended next: answer once the end is recorded.
                        try:
                            await asyncio.wait_for(handle.recorded_event.wait(), 10.0)
                        except TimeoutError:
                            pass
                    yield chat_pb2.StreamChatLogResponse(run_number=run.number, ended=bool(req.follow))
                    return
                try:
                    await asyncio.wait_for(handle.ended.wait(), 0.25)
                except TimeoutError:
                    pass
        finally:
            fh.close()

    # ---------------------------------------------------------------------------- commands

    async def _ensure_owner(self, live: ChatLive, rec: RS.GetChatRecordResponse) -> RS.GetChatRecordResponse:
        """Take over a chat another supervisor owned once its lease expired, before acting on it;
        the graph refuses with FAILED_PRECONDITION while that owner's lease is valid."""
        if rec.runtime.supervisor_id == self.me and not live.lost:
            return rec
        claimed = await self.owner.claim(live.chat_id)
        live.lost = False
        log.info("took over %s from supervisor %r", live.chat_id, claimed.previous_supervisor_id,
                 extra=fields(chat_id=live.chat_id, previous_supervisor_id=claimed.previous_supervisor_id))
        await self._adopt_locked(live, claimed.task, claimed.runtime, previous=claimed)
        return await self._read(live)

    async def send_message(self, req: chat_pb2.SendMessageRequest) -> chat_pb2.SendMessageResponse:
        validation.chat_id(req.chat_id)
        validation.text(req.text, "text", required=True, max_len=validation.MAX_MESSAGE)
        validation.request_id(req.request_id)
        request_id = req.request_id or uuid.uuid4().hex
        live = self.live(req.chat_id)
        async with live.lock:
            rec = await self._read(live)
            check_usable(rec.task)
            rec = await self._ensure_owner(live, rec)
            task, runtime = rec.task, rec.runtime
            if runtime.state == chat_states.FAILED:
                raise errors.FailedPrecondition(
                    f"chat {task.id} has FAILED ({runtime.last_error or 'too many failures'}); fix the cause and "
                    f"call RestartChat (`wgs chat restart {task.id}`) to start its agent again")
            msg = await self.graph.append_message(task.id, task_pb2.MESSAGE_ROLE_USER, req.text, request_id)
            respawned = False
            if live.run is None and runtime.state in (chat_states.EXITED, chat_states.STOPPED, chat_states.STARTING):
                log.info("respawning %s for a message (state %s)", task.id, chat_states.name(runtime.state),
                         extra=fields(chat_id=task.id))
                task, runtime = await self._start(live, task, runtime, reason="agent started for a new message")
                respawned = True
        return chat_pb2.SendMessageResponse(message=msg.message, respawned=respawned, runtime=runtime)

    async def _stop_run(self, live: ChatLive, reason: str, *, task_status: int | None = None,
                        add_tags: tuple[str, ...] = (), resume: bool = False) -> runtime_pb2.ChatRuntime | None:
        """End the chat's live run whole and record it as a stop (lock held); None if nothing ran."""
        self._cancel_timer(live)
        handle = live.run
        if handle is None:
            return None
        handle.stop_reason = reason
        left = await self.backend.stop(handle, self.s.stop_grace)
        if left:
            log.error("processes of %s run %d survived SIGKILL: %s", live.chat_id, handle.number, left,
                      extra=fields(chat_id=live.chat_id, pids=left))
        try:
            await asyncio.wait_for(handle.ended.wait(), 5.0)
        except TimeoutError:
            self.backend.unwatch(handle)
            handle.exit = handle.exit or self.backend.collect_exit(handle)
        live.run = None
        info = handle.exit or self.backend.collect_exit(handle)
        return await self._record_end(live, handle, info, task_status=task_status, add_tags=add_tags, resume=resume)

    async def _end(self, chat_id: str, verb: str, status: int, add_tags: tuple[str, ...]) -> chat_pb2.Chat:
        validation.chat_id(chat_id)
        live = self.live(chat_id)
        async with live.lock:
            rec = await self._read(live)
            if verb == "StopChat":
                check_usable(rec.task)
            elif verb == "ArchiveChat" and views.is_deleted(rec.task):
                raise errors.FailedPrecondition(f"chat {chat_id} was deleted; a deleted chat cannot be archived")
            rec = await self._ensure_owner(live, rec)
            tags = tuple(t for t in add_tags if t not in rec.task.tags)
            new_status = status if rec.task.status != status else None
            stopped = await self._stop_run(live, verb, task_status=new_status, add_tags=tags)
            if stopped is None and (live.state != chat_states.STOPPED or new_status is not None or tags):
                await self.change_state(live, chat_states.STOPPED, Transition(
                    last_error="", task_status=new_status, add_tags=tags, resume_on_start=False,
                    log_message=f"{verb} requested"))
            rec = await self._read(live)
            return self.view(rec.task, rec.runtime)

    async def stop_chat(self, chat_id: str) -> chat_pb2.Chat:
        return await self._end(chat_id, "StopChat", task_pb2.TASK_STATUS_OPEN, ())

    async def delete_chat(self, chat_id: str) -> chat_pb2.Chat:
        return await self._end(chat_id, "DeleteChat", task_pb2.TASK_STATUS_ABANDONED, ())

    async def archive_chat(self, chat_id: str) -> chat_pb2.Chat:
        return await self._end(chat_id, "ArchiveChat", task_pb2.TASK_STATUS_DONE, (validation.ARCHIVED_TAG,))

    async def interrupt_chat(self, chat_id: str) -> chat_pb2.InterruptChatResponse:
        validation.chat_id(chat_id)
        live = self._live.get(chat_id)
        handle = live.run if live is not None else None
        if handle is None:
            rec = await self.graph.record(chat_id)
            return chat_pb2.InterruptChatResponse(
                delivered=False, detail=f"agent is not running (state {chat_states.name(rec.runtime.state)})")
        if self.backend.interrupt(handle):
            log.info("SIGINT sent to %s agent pid %d", chat_id, handle.pid, extra=fields(chat_id=chat_id,
                                                                                         pid=handle.pid))
            return chat_pb2.InterruptChatResponse(delivered=True, pid=handle.pid)
        return chat_pb2.InterruptChatResponse(delivered=False, detail=f"agent pid {handle.pid} has already exited")

    async def restart_chat(self, chat_id: str) -> chat_pb2.Chat:
        validation.chat_id(chat_id)
        live = self.live(chat_id)
        async with live.lock:
            rec = await self._read(live)
            check_usable(rec.task)
            rec = await self._ensure_owner(live, rec)
            if live.run is not None:
                await self._stop_run(live, "RestartChat")
                rec = await self._read(live)
            live.history = policy.History()
            task, runtime = await self._start(live, rec.task, rec.runtime, reason="RestartChat", restart_count=0,
                                              last_error="")
            return self.view(task, runtime)

    async def stop_agents(self, reason: str) -> list[supervisor_pb2.StoppedAgent]:
        """Shutdown (`wgs down`): stop every agent, recorded as stops that resume on the next start."""
        detail = reason or "shutdown"

        async def one(live: ChatLive) -> supervisor_pb2.StoppedAgent | None:
            async with live.lock:
                handle = live.run
                if handle is None:
                    self._cancel_timer(live)
                    return None
                await self._stop_run(live, detail, resume=True)
                assert handle.exit is not None
                return supervisor_pb2.StoppedAgent(chat_id=live.chat_id, run_number=handle.number, pid=handle.pid,
                                                   outcome=f"stopped ({handle.exit.describe()})")

        results = await asyncio.gather(*(one(live) for live in list(self._live.values())), return_exceptions=True)
        out: list[supervisor_pb2.StoppedAgent] = []
        for res in results:
            if isinstance(res, supervisor_pb2.StoppedAgent):
                out.append(res)
            elif isinstance(res, BaseException):
                log.error("stopping an agent for %s failed: %s", detail, res)
        return sorted(out, key=lambda a: validation.chat_number(a.chat_id))

    # ---------------------------------------------------------------------------- adoption, start-up

    async def start(self) -> None:
        """Renew the leases (writing the fencing deadline), adopt this supervisor's chats, then keep the
        leases renewed and take over the chats of lost supervisors."""
        self.backend.prime()
        if not await self.owner.renew():
            raise errors.Unavailable("cannot renew the leases at start: is the graph service reachable?")
        async for rec in self.graph.all_records(supervisor_id=self.me):
            live = self.live(rec.task.id)
            try:
                async with live.lock:
                    await self._adopt_locked(live, rec.task, rec.runtime)
            except errors.WgsError as exc:
                log.error("could not adopt %s: %s", rec.task.id, exc.message, extra=fields(chat_id=rec.task.id))
        self.owner.start()

    async def _adopt_orphan(self, claimed: RS.ClaimChatResponse) -> None:
        live = self.live(claimed.task.id)
        async with live.lock:
            live.lost = False
            await self._adopt_locked(live, claimed.task, claimed.runtime, previous=claimed)

    async def _drop_lost(self, chat_ids: list[str]) -> None:
        for chat_id in chat_ids:
            live = self._live.get(chat_id)
            if live is None:
                continue
            live.lost = True
            self._cancel_timer(live)
            handle = live.run
            if handle is not None:
                # Normally already fenced by its monitor; never leave a second agent running.
                handle.stop_reason = "the chat was taken over by another supervisor"
                handle.recorded = True
                live.run = None
                await self.backend.stop(handle, self.s.stop_grace)
            self._live.pop(chat_id, None)

    def _handle_from_record(self, chat_id: str, run: runtime_pb2.Run) -> RunHandle:
        return RunHandle(chat_id=chat_id, number=run.number, pid=run.pid, start_ticks=run.process_start_ticks,
                         monitor_pid=run.monitor_pid, monitor_start_ticks=run.monitor_start_ticks,
                         log_path=self.backend.log_path(chat_id, run.number), argv=list(run.argv),
                         started_at=from_ts(run.started_at) or self.clock.now(), hostname=run.hostname,
                         trace_id=run.trace_id)

    async def _adopt_locked(self, live: ChatLive, task: task_pb2.Task, rt: runtime_pb2.ChatRuntime, *,
                            previous: RS.ClaimChatResponse | None = None) -> None:
        """Resume supervising a chat this process did not start (lock held, chat owned)."""
        live.state = rt.state
        live.redactor = agentenv.redactor_for(rt.plan)
        live.history = policy.History(restart_count=rt.restart_count)
        if live.create_span is None:
            live.create_span = creating_span(rt)
        lost_owner = ""
        if previous is not None and previous.previous_supervisor_id != self.me:
            expired = from_ts(previous.previous_lease_expired_at)
            lost_owner = (f"supervisor {previous.previous_supervisor_id!r} was lost (its lease expired at "
                          f"{expired.isoformat(timespec='seconds') if expired else 'an unknown time'})")
        cur = rt.current_run
        live_in_task = task.status == LIVE_TASK
        if rt.HasField("current_run") and cur.pid > 0 and not cur.HasField("exited_at"):
            handle = self.backend.adopt(task.id, cur) if cur.hostname == self.backend.hostname else None
            if handle is not None and self.backend.watch(handle, self._exit_cb):
                live.run = handle
                log.info("adopted %s run %d: agent pid %d (monitor %d)", task.id, cur.number, cur.pid,
                         cur.monitor_pid, extra=fields(chat_id=task.id, pid=cur.pid, run=cur.number))
                if rt.state != chat_states.RUNNING:
                    # e.g. Reconcile marked it STOPPED while this supervisor was away: the agent lives.
                    await self.change_state(live, chat_states.STARTING, Transition(
                        task_status=LIVE_TASK if not live_in_task else None,
                        log_message="the agent is alive: adopted after a supervisor restart"))
                    await self.change_state(live, chat_states.RUNNING, RunStarted(handle, None))
                elif not live_in_task or lost_owner:
                    await self.change_state(live, chat_states.RUNNING, Transition(
                        task_status=LIVE_TASK if not live_in_task else None,
                        log_message=f"adopted by supervisor {self.me}" + (f" ({lost_owner})" if lost_owner else "")))
                return
            # The recorded run is not alive (or not checkable here): how did it end?
            ended = self._handle_from_record(task.id, cur)
            info = self.backend.collect_exit(ended) if cur.hostname == self.backend.hostname else None
            leftovers = await self.backend.end_leftovers(task.id, [cur], self.s.stop_grace)
            notes = []
            if lost_owner:
                notes.append(f"{lost_owner}; the end of run {cur.number} (on host {cur.hostname or '?'}) is unknown; "
                             f"the chat now runs on supervisor {self.me}")
            if leftovers:
                notes.append(f"{_describe_leftovers(leftovers)} before restart")
            if info is None or (info.unknown and notes):
                info = ExitInfo(None, None, self.clock.now(), error="exit status unknown", unknown=True)
            log.info("%s run %d ended while its supervisor was away: %s%s", task.id, cur.number, info.describe(),
                     f" ({'; '.join(notes)})" if notes else "", extra=fields(chat_id=task.id, run=cur.number))
            detail = "; ".join([info.error or info.describe(), *notes]) if (notes or info.unknown) else ""
            runtime = await self._record_end(live, ended, info, lost_detail=detail,
                                             stay_stopped=rt.state == chat_states.STOPPED,
                                             task_status=LIVE_TASK if not live_in_task and rt.state != chat_states.STOPPED
                                             else None)
            if runtime.state == chat_states.STOPPED and runtime.resume_on_start and live_in_task:
                await self._start(live, task, runtime, reason="resumed: it was stopped by a shutdown")
            return
        if rt.state == chat_states.STARTING and live_in_task:
            # Created (or restarted) but the supervisor went away before the spawn was recorded.
            await self._start(live, task, rt, reason="spawn resumed after a supervisor restart"
                              + (f" ({lost_owner})" if lost_owner else ""))
        elif rt.state == chat_states.BACKOFF and live_in_task:
            due = from_ts(rt.next_restart_at)
            delay = max(0.0, (due - self.clock.now()).total_seconds()) if due else 0.0
            self._schedule(live, policy.Decision(chat_states.BACKOFF, delay, live.history, ""))
        elif rt.state == chat_states.STOPPED and rt.resume_on_start and live_in_task:
            await self._start(live, task, rt, reason="resumed: it ran before the supervisor's shutdown")

    async def close(self) -> None:
        """Supervisor shutdown: agents keep running (monitors record their exits; they fence
        themselves if no supervisor renews the lease); the next supervisor adopts them."""
        self._closing = True
        await self.owner.close()
        for live in self._live.values():
            self._cancel_timer(live)
            if live.run is not None:
                self.backend.unwatch(live.run)
        for task in list(self._tasks):
            task.cancel()
        self.runs.close()
        await self.backend.close()

