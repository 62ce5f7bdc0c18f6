"""The chat lifecycle: create, send, stop, restart — one supervised agent per chat.

The graph holds the durable record (task + ChatRuntime); this module holds the live part (the run
handle, restart timers, failure history) and moves each chat through the state machine of
wgs.common.chat_states. Every state change goes through `change_state`, which checks the
transition table and then writes the change in one graph call (the graph checks it again).

Every change of a chat happens under that chat's asyncio lock, so there are never two runs for one
chat in this supervisor; before a restart the backend proves that no process of an earlier run
lives on this host (and ends it if one does), so there are never two agents for one chat at all.

Collaborators: `runs.Runs` (spawn, exit records and spans), `ownership.Ownership` (leases, claims,
fencing, failover, adoption), `views.ChatViews` (the read paths: what clients see),
`backend.RunBackend` (processes), `clock.Clock` (time); `live` holds the per-chat state they share.
All are injected, so the lifecycle is tested in-process with a fake backend and a manual clock
(tests/supervisor/test_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from services.supervisor import agentenv, failures, policy, views
from services.supervisor.admission import Admission, own_cgroup_memory
from services.supervisor.backend import ExitInfo, RunBackend, RunHandle, SpawnFailed, describe_leftovers
from services.supervisor.clients import DispatchClient, GraphClient
from services.supervisor.clock import Clock, LoopClock
from services.supervisor.live import LIVE_TASK, Change, ChatLive, RunEnded, RunStarted, Transition
from services.supervisor.ownership import Capacity, Ownership
from services.supervisor.runs import Runs, shown_plan
from services.supervisor.settings import SupervisorSettings
from wgs.common import chat_states, errors, telemetry, validation
from wgs.common.logs import fields
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

RETRY_RECORD_SECONDS = 30.0  # an exit that could not be recorded is tried again this often


def check_usable(task: task_pb2.Task) -> None:
    if views.is_deleted(task):
        raise errors.FailedPrecondition(f"chat {task.id} was deleted; create a new chat")
    if views.is_archived(task):
        raise errors.FailedPrecondition(f"chat {task.id} is archived; create a new chat")


def _next_number(runtime: runtime_pb2.ChatRuntime) -> int:
    numbers = [runtime.current_run.number] + [r.number for r in runtime.previous_runs]
    return max(numbers, default=0) + 1


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
        self.owner = Ownership(settings, graph, backend, self.clock, self)
        self._live: dict[str, ChatLive] = {}
        self.views = views.ChatViews(graph, backend, self.clock, self.held)
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

    def held(self, chat_id: str) -> ChatLive | None:
        return self._live.get(chat_id)

    def forget(self, chat_id: str) -> None:
        self._live.pop(chat_id, None)

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

    def held_chats(self) -> list[str]:
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
                return chat_pb2.CreateChatResponse(chat=self.views.view(rec.task, rec.runtime), created=False)
            live.state = created.runtime.state
            live.create_span = create_ctx if create_ctx.is_valid else None
            live.redactor = redactor
            log.info("chat created: %s", chat_id, extra=fields(
                chat_id=chat_id, executor=plan.executor, model=plan.model, endpoint=req.endpoint,
                trace_id=created.runtime.trace_id))
            task, runtime = await self._spawn_run(live, created.task, plan, 1, created.runtime)
        return chat_pb2.CreateChatResponse(chat=self.views.view(task, runtime), created=True)

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
            return task, await self._spawn_failed(live, number, shown, exc.message, exc.permanent, started,
                                                  errno_=exc.errno)
        live.run = handle
        if not self.backend.watch(handle, self.on_run_exit):
            self.on_run_exit(handle, self.backend.collect_exit(handle))
        try:
            _, runtime = await self.change_state(live, chat_states.RUNNING, RunStarted(handle, shown))
        except errors.WgsError as exc:
            # The run must not live unrecorded: end it, and try the start again later.
            log.error("could not record run %d of %s (%s); ending it", number, live.chat_id, exc.message,
                      extra=fields(chat_id=live.chat_id, run=number))
            handle.stop_reason = (f"its start could not be confirmed with the graph ({exc.message}); it was ended "
                                  "so that no agent runs unrecorded, and the chat was started again")
            handle.recorded = True
            live.run = None
            await self.backend.stop(handle, self.s.stop_grace)
            # The graph may show this run RUNNING all the same (a write that lands after the deadline):
            # the next attempt reads the record and settles it (_settle_unconfirmed).
            live.unconfirmed = [*live.unconfirmed[-7:], handle]
            if live.state == chat_states.STARTING and not isinstance(exc, (errors.InvalidArgument, errors.NotFound)):
                self._schedule_start(live, self.s.policy.initial_backoff)
            raise
        live.unconfirmed = []  # a start is recorded: an earlier attempt's late write can no longer land
        return task, runtime

    async def _spawn_failed(self, live: ChatLive, number: int, shown: plan_pb2.SpawnPlan, message: str,
                            permanent: bool, started: datetime, errno_: int | None = None) -> runtime_pb2.ChatRuntime:
        c = failures.classify_spawn_failure(message, permanent, errno_)
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
        self.schedule(live, decision)
        return runtime

    async def respawn(self, live: ChatLive, task: task_pb2.Task, runtime: runtime_pb2.ChatRuntime, *,
                     reason: str, restart_count: int | None = None, last_error: str | None = None
                     ) -> tuple[task_pb2.Task, runtime_pb2.ChatRuntime]:
        """Respawn: STARTING, plan, prove no earlier run lives, spawn (lock held)."""
        live.cancel_timer()
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
            self.schedule(live, decision)
            return new_task or task, runtime
        runs = [r for r in (runtime.current_run, *runtime.previous_runs) if r.number]
        leftovers = await self.backend.end_leftovers(live.chat_id, runs, self.s.stop_grace)
        if leftovers:
            log.warning("%s: processes of earlier runs were still alive and were ended before the restart: %s",
                        live.chat_id, describe_leftovers(leftovers), extra=fields(chat_id=live.chat_id))
        live.redactor = agentenv.redactor_for(plan)
        return await self._spawn_run(live, task, plan, _next_number(runtime), runtime)

    # ---------------------------------------------------------------------------- exits

    def on_run_exit(self, handle: RunHandle, info: ExitInfo) -> None:
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
            if handle.exit.unknown and not handle.stop_reason and not handle.leftovers_checked:
                handle.exit = await self._end_orphaned(live, handle, handle.exit)
            try:
                await self.record_end(live, handle, handle.exit)
            except errors.Unavailable as exc:
                log.error("the end of %s run %d could not be recorded (%s); trying again in %gs", handle.chat_id,
                          handle.number, exc.message, RETRY_RECORD_SECONDS, extra=fields(chat_id=handle.chat_id))
                self.clock.call_later(RETRY_RECORD_SECONDS, lambda: self._background(self._on_exit(handle)))
            except errors.WgsError as exc:
                log.error("the end of %s run %d was not recorded: %s", handle.chat_id, handle.number, exc.message,
                          extra=fields(chat_id=handle.chat_id))

    async def _end_orphaned(self, live: ChatLive, handle: RunHandle, info: ExitInfo) -> ExitInfo:
        """The run's monitor ended without recording how the run ended (it was killed): the agent and
        its descendants may live on, unsupervised. Prove what lives of the run (the agent's pid and
        start ticks, its descendants, the run's cgroup or marker) and end it (SIGTERM, the stop grace,
        SIGKILL) before the end is recorded and before any restart; the words go on the run (lock held)."""
        record = handle.record()
        record.supervisor_id = self.me
        leftovers = await self.backend.end_leftovers(live.chat_id, [record], self.s.stop_grace)
        handle.leftovers_checked = True
        if leftovers:
            note = f"{describe_leftovers(leftovers)} before restart"
            log.warning("%s run %d: %s; %s", live.chat_id, handle.number, info.error or info.describe(), note,
                        extra=fields(chat_id=live.chat_id, run=handle.number, pids=[lo.pid for lo in leftovers]))
        else:
            note = f"no process of run {handle.number} was left"
        descendants = sum(1 for lo in leftovers if not lo.is_agent)
        return dataclasses.replace(info, error=f"{info.error or info.describe()}; {note}",
                                   leftovers=info.leftovers + descendants)

    async def record_end(self, live: ChatLive, handle: RunHandle, info: ExitInfo, *,
                         task_status: int | None = None, add_tags: tuple[str, ...] = (), resume: bool = False,
                         lost_detail: str = "", stay_stopped: bool = False) -> runtime_pb2.ChatRuntime:
        """Decide what follows a run's end, then trace, log and record it (lock held).

        `stay_stopped`: the chat was stopped while this supervisor was away (Reconcile): the run's
        end is recorded as it happened, and the chat stays STOPPED."""
        now = self.clock.now()
        tail = await self.runs.tail(handle)  # read once: the classification and the record use it
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
        run = self.runs.ended_run(handle, info, live.redactor, tail, end=end, detail=handle.stop_reason)
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
        self.schedule(live, decision)
        return runtime

    # ---------------------------------------------------------------------------- timers

    def schedule(self, live: ChatLive, decision: policy.Decision) -> None:
        if decision.state != chat_states.BACKOFF or decision.delay is None or self._closing:
            return
        live.cancel_timer()
        live.timer = self.clock.call_later(decision.delay, lambda: self._background(self._restart_due(live.chat_id)))

    def _schedule_start(self, live: ChatLive, delay: float) -> None:
        """Try a start again later (the chat is STARTING and nothing runs)."""
        if self._closing:
            return
        live.cancel_timer()
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
                if live.unconfirmed:
                    rec.runtime.CopyFrom(await self._settle_unconfirmed(live, rec.runtime))
                if rec.runtime.state not in (chat_states.BACKOFF, chat_states.STARTING):
                    return
                if views.is_deleted(rec.task) or views.is_archived(rec.task):
                    return
                log.info("restarting %s after backoff", chat_id, extra=fields(chat_id=chat_id))
                await self.respawn(live, rec.task, rec.runtime, reason="restart after backoff")
            except errors.WgsError as exc:
                log.error("restart of %s failed: %s", chat_id, exc.message, extra=fields(chat_id=chat_id))
                # Try again later rather than leaving the chat waiting forever.
                self._schedule_start(live, self.s.policy.max_backoff)

    async def _settle_unconfirmed(self, live: ChatLive, runtime: runtime_pb2.ChatRuntime) -> runtime_pb2.ChatRuntime:
        """Recording a run's start failed, so the run was ended: if the graph wrote the start all the
        same, it shows that run RUNNING with an agent that is gone. Record that run's end (stopped,
        with why) so the chat moves on to a new run instead of showing a dead agent as live for ever
        (lock held). Returns the runtime as it is now."""
        current = runtime.current_run
        handle = next((h for h in live.unconfirmed if h.number == current.number and h.pid == current.pid
                       and h.start_ticks == current.process_start_ticks), None)
        if runtime.state != chat_states.RUNNING or handle is None:
            return runtime  # not written (yet): nothing shows an ended run as live
        info = handle.exit
        if info is None:  # stop_run waits for the end; its report may not have reached the handle yet
            try:
                await asyncio.wait_for(handle.ended.wait(), self.s.stop_grace + 5)
            except TimeoutError:
                pass
            info = handle.exit or ExitInfo(exit_code=None, signal=None, exited_at=self.clock.now(),
                                           error="the end of the run was not observed", unknown=True)
        now = self.clock.now()
        item = RS.RunExit(chat_id=live.chat_id, state=chat_states.BACKOFF,
                          run=self.runs.ended_run(handle, info, live.redactor, await self.runs.tail(handle),
                                                  end=R.RUN_END_STOPPED,
                                                  detail=handle.stop_reason),
                          restart_count=live.history.restart_count)
        item.next_restart_at.FromDatetime(now)
        log.warning("%s run %d: the graph had recorded its start after all; recording its end (%s)",
                    live.chat_id, handle.number, handle.stop_reason, extra=fields(chat_id=live.chat_id, run=handle.number))
        _, runtime = await self.change_state(live, chat_states.BACKOFF, RunEnded(item))
        live.unconfirmed.remove(handle)
        return runtime

    # ---------------------------------------------------------------------------- commands

    async def _ensure_owner(self, live: ChatLive, rec: RS.GetChatRecordResponse) -> RS.GetChatRecordResponse:
        """Take over a chat another supervisor owned once its lease expired, before acting on it;
        the graph refuses with FAILED_PRECONDITION while that owner's lease is valid."""
        if rec.runtime.supervisor_id == self.me and not live.lost:
            return rec
        await self.owner.take_over(live)
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
                task, runtime = await self.respawn(live, task, runtime, reason="agent started for a new message")
                respawned = runtime.state == chat_states.RUNNING  # not when its plan was refused or its spawn failed
        return chat_pb2.SendMessageResponse(message=msg.message, respawned=respawned, runtime=runtime)

    async def _stop_run(self, live: ChatLive, reason: str, *, task_status: int | None = None,
                        add_tags: tuple[str, ...] = (), resume: bool = False) -> runtime_pb2.ChatRuntime | None:
        """End the chat's live run whole and record it as a stop (lock held); None if nothing ran."""
        live.cancel_timer()
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
        return await self.record_end(live, handle, info, task_status=task_status, add_tags=add_tags, resume=resume)

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
            return self.views.view(rec.task, rec.runtime)

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
            task, runtime = await self.respawn(live, rec.task, rec.runtime, reason="RestartChat", restart_count=0,
                                              last_error="")
            return self.views.view(task, runtime)

    async def stop_agents(self, reason: str) -> list[supervisor_pb2.StoppedAgent]:
        """Shutdown (`wgs down`): stop every agent, recorded as stops that resume on the next start."""
        detail = reason or "shutdown"

        async def one(live: ChatLive) -> supervisor_pb2.StoppedAgent | None:
            async with live.lock:
                handle = live.run
                if handle is None:
                    live.cancel_timer()
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

    # ---------------------------------------------------------------------------- start-up

    async def start(self) -> None:
        """Renew the leases (writing the fencing deadline), adopt this supervisor's chats, then keep the
        leases renewed and take over the chats of lost supervisors (ownership.Ownership)."""
        self.backend.prime()
        await self.owner.start()

    async def close(self) -> None:
        """Supervisor shutdown: agents keep running (monitors record their exits; they fence
        themselves if no supervisor renews the lease); the next supervisor adopts them."""
        self._closing = True
        await self.owner.close()
        for live in self._live.values():
            live.cancel_timer()
            if live.run is not None:
                self.backend.unwatch(live.run)
        for task in list(self._tasks):
            task.cancel()
        self.runs.close()
        await self.backend.close()

