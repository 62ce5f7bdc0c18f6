"""Chat manager: the state machine that keeps one supervised agent per chat.

The graph holds the durable record (task + ChatRuntime); this module holds the live part (runs,
restart timers, failure history) and moves each chat through

    STARTING → RUNNING → (exit 0) EXITED → (SendMessage) STARTING ...
                       → (failure) BACKOFF → (timer) STARTING ...
                                   → (too many failures) FAILED → (RestartChat) STARTING
    any → (Stop/Delete/Archive) STOPPED → (SendMessage / RestartChat, if not deleted/archived) STARTING

Every change of a chat happens under that chat's asyncio lock, so there are never two agents for
one chat. Exits arrive from the pidfd watcher (procs.watch) within milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from services.supervisor import policy, procs
from services.supervisor.redact import Redactor
from wgs.common import attributes as attrs
from wgs.common import auth, errors, telemetry, validation
from wgs.common.clients import deadline
from wgs.common.logs import fields
from wgs.common.settings import env_float, env_int, env_str, target
from wgs.common.timeutil import from_ts, to_ts
from wgs.v1 import chat_pb2, dispatch_pb2, graph_pb2, plan_pb2, runtime_pb2, task_pb2

log = logging.getLogger("wgs.supervisor")
tracer = telemetry.tracer("wgs.supervisor")

RS = runtime_pb2
STATE_NAMES = {v: k.removeprefix("RUNTIME_STATE_") for k, v in RS.RuntimeState.items()}
# Variables of the supervisor's own environment an agent must not inherit.
_NOT_INHERITED = {"WGS_ADDRESS_FILE", "WGS_GRAPH_LISTEN", "WGS_DISPATCH_LISTEN", "WGS_SUPERVISOR_LISTEN",
                  "OTEL_SERVICE_NAME", "TRACEPARENT", "TRACESTATE"}

T = TypeVar("T")


def _ts(value: datetime) -> Any:
    return to_ts(value)


def _any(value: int) -> Any:
    """Protobuf enum fields accept the plain int values our pure modules use."""
    return value


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, str(state))


@dataclass(frozen=True)
class SupervisorSettings:
    state_dir: Path
    supervisor_id: str
    lease_seconds: int
    max_live_chats: int
    stop_grace: float
    max_log_bytes: int
    graph_target: str
    default_cwd: str
    policy: policy.PolicyConfig

    @classmethod
    def from_env(cls, state_dir: Path) -> SupervisorSettings:
        host = socket.gethostname()
        default_id = f"{host}-{hashlib.sha256(f'{host}:{state_dir}'.encode()).hexdigest()[:10]}"
        return cls(
            state_dir=state_dir,
            supervisor_id=env_str("WGS_SUPERVISOR_ID", default_id),
            lease_seconds=env_int("WGS_LEASE_SECONDS", 30, minimum=3, maximum=3600),
            max_live_chats=env_int("WGS_MAX_LIVE_CHATS", 100, minimum=0),
            stop_grace=env_float("WGS_STOP_GRACE_SECONDS", 5.0),
            max_log_bytes=env_int("WGS_MAX_RUN_LOG_BYTES", procs.DEFAULT_MAX_LOG_BYTES, minimum=0),
            graph_target=target("graph"),
            default_cwd=os.getcwd(),
            policy=policy.PolicyConfig.from_env(),
        )


def _wgs_error(exc: grpc.aio.AioRpcError, what: str) -> errors.WgsError:
    """Turn a failed call to another service into the matching domain error (message kept)."""
    mapping: dict[grpc.StatusCode, type[errors.WgsError]] = {
        grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
        grpc.StatusCode.NOT_FOUND: errors.NotFound,
        grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
        grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
        grpc.StatusCode.ABORTED: errors.Aborted,
        grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    }
    cls = mapping.get(exc.code())
    if cls is not None:
        return cls(exc.details() or what)
    return errors.Unavailable(f"{what} failed: {exc.code().name}: {exc.details()}")


async def call(what: str, coro: Awaitable[T]) -> T:
    try:
        return await coro
    except grpc.aio.AioRpcError as exc:
        raise _wgs_error(exc, what) from None


class EventBus:
    """In-process fan-out of chat changes to WatchChat streams."""

    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[chat_pb2.Chat]]] = {}

    def subscribe(self, chat_id: str) -> asyncio.Queue[chat_pb2.Chat]:
        q: asyncio.Queue[chat_pb2.Chat] = asyncio.Queue(maxsize=1000)
        self._subs.setdefault(chat_id, set()).add(q)
        return q

    def unsubscribe(self, chat_id: str, q: asyncio.Queue[chat_pb2.Chat]) -> None:
        self._subs.get(chat_id, set()).discard(q)

    def wanted(self, chat_id: str) -> bool:
        return bool(self._subs.get(chat_id) or self._subs.get(""))

    def publish(self, chat: chat_pb2.Chat) -> None:
        for key in (chat.id, ""):
            for q in list(self._subs.get(key, ())):
                if q.full():  # a stuck watcher loses the oldest change, never blocks the supervisor
                    q.get_nowait()
                q.put_nowait(chat)


@dataclass
class ChatLive:
    """In-memory state of one chat."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    run: procs.Run | None = None
    history: policy.History = field(default_factory=policy.History)
    timer: asyncio.TimerHandle | None = None
    redactor: Redactor = field(default_factory=Redactor)
    create_span: trace.SpanContext | None = None  # the creating call, for links from later spans


def chat_name(task: task_pb2.Task) -> str:
    return task.title.removeprefix("Chat: ") if task.title.startswith("Chat: ") else ""


def is_deleted(task: task_pb2.Task) -> bool:
    return task.status == task_pb2.TASK_STATUS_ABANDONED


def is_archived(task: task_pb2.Task) -> bool:
    return validation.ARCHIVED_TAG in task.tags


class ChatManager:
    """All chat operations; the servicer is a thin gRPC layer over this."""

    def __init__(self, settings: SupervisorSettings, graph: Any, dispatch: Any) -> None:
        self.s = settings
        self.graph = graph
        self.dispatch = dispatch
        self.bus = EventBus()
        self._live: dict[str, ChatLive] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lease_task: asyncio.Task[None] | None = None
        self._closing = False
        self._warm = procs.WarmMonitor(settings.state_dir)  # idle run monitor: spawns skip its start-up

    # ------------------------------------------------------------------ helpers

    @property
    def me(self) -> str:
        return self.s.supervisor_id

    def live(self, chat_id: str) -> ChatLive:
        entry = self._live.get(chat_id)
        if entry is None:
            entry = self._live[chat_id] = ChatLive()
        return entry

    def _spawn_task(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, chat_id: str) -> graph_pb2.GetChatRecordResponse:
        return await call("graph GetChatRecord", self.graph.GetChatRecord(
            graph_pb2.GetChatRecordRequest(chat_id=chat_id), timeout=deadline()))

    def _in_state_dir(self, path: str) -> bool:
        try:
            return Path(path).resolve().is_relative_to((self.s.state_dir / "chats").resolve())
        except (OSError, ValueError):
            return False

    def _redactor_for(self, chat_id: str, runtime: runtime_pb2.ChatRuntime) -> Redactor:
        live = self._live.get(chat_id)
        if live is not None and live.redactor:
            return live.redactor
        return Redactor(_secret_values(runtime.plan))

    def to_chat(self, task: task_pb2.Task, runtime: runtime_pb2.ChatRuntime) -> chat_pb2.Chat:
        """A Chat from the graph record plus the live stderr tail of the current run (redacted)."""
        chat = chat_pb2.Chat(
            id=task.id, name=chat_name(task), title=task.title, status=task.status, tags=list(task.tags),
            model=task.model, executor=task.executor, endpoint=task.endpoint,
            command=list(task.command_argv), runtime=runtime, trace_id=runtime.trace_id,
        )
        if task.HasField("created_at"):
            chat.created_at.CopyFrom(task.created_at)
        run = runtime.current_run
        tail = ""
        if run.stderr_path and self._in_state_dir(run.stderr_path):
            tail = procs.tail_text(run.stderr_path)
        if not tail:
            tail = run.stderr_tail
        chat.stderr_tail = self._redactor_for(task.id, runtime).text(tail)
        return chat

    async def _publish(self, chat_id: str, task: task_pb2.Task | None = None,
                       runtime: runtime_pb2.ChatRuntime | None = None) -> None:
        if not self.bus.wanted(chat_id):
            return
        if task is None or runtime is None:
            try:
                rec = await self._record(chat_id)
            except errors.WgsError:
                return
            task, runtime = rec.task, rec.runtime
        self.bus.publish(self.to_chat(task, runtime))

    async def _update_runtime(self, chat_id: str, state: Any, *, last_error: str | None = None,
                              restart_count: int | None = None, next_restart_at: datetime | None = None,
                              plan: plan_pb2.SpawnPlan | None = None) -> runtime_pb2.ChatRuntime:
        req = graph_pb2.UpdateChatRuntimeRequest(chat_id=chat_id, state=state, supervisor_id=self.me)
        if last_error is not None:
            req.last_error = last_error
        if restart_count is not None:
            req.restart_count = restart_count
        if next_restart_at is not None:
            req.next_restart_at.CopyFrom(_ts(next_restart_at))
        if plan is not None:
            req.plan.CopyFrom(plan)
        resp = await call("graph UpdateChatRuntime", self.graph.UpdateChatRuntime(req, timeout=deadline()))
        return resp.runtime

    async def _ensure_owner(self, rec: graph_pb2.GetChatRecordResponse) -> None:
        """Take over a chat another supervisor owned (e.g. one with a different id before a restart)
        before acting on it; the graph refuses with FAILED_PRECONDITION while that owner's lease
        is valid, and that message reaches the caller."""
        if rec.runtime.supervisor_id == self.me:
            return
        resp = await call("graph ClaimChat", self.graph.ClaimChat(graph_pb2.ClaimChatRequest(
            chat_id=rec.task.id, supervisor_id=self.me, lease_seconds=self.s.lease_seconds), timeout=deadline()))
        log.info("took over %s from supervisor %r", rec.task.id, resp.previous_supervisor_id,
                 extra=fields(chat_id=rec.task.id, previous_supervisor_id=resp.previous_supervisor_id))
        await self._adopt_locked(rec.task, resp.runtime)
        rec.CopyFrom(await self._record(rec.task.id))

    async def _update_task(self, chat_id: str, update: graph_pb2.TaskUpdate, message: str) -> task_pb2.Task:
        resp = await call("graph UpdateTask", self.graph.UpdateTask(graph_pb2.UpdateTaskRequest(
            id=chat_id, update=update, log_message=message, actor="supervisor"), timeout=deadline()))
        return resp.task

    # ------------------------------------------------------------------ validation

    @staticmethod
    def validate_create(req: chat_pb2.CreateChatRequest) -> str:
        """Checks that need no other service; returns the normalized executor."""
        validation.text(req.name, "name", required=False, max_len=validation.MAX_NAME)
        validation.text(req.model, "model", required=False, max_len=validation.MAX_MODEL)
        validation.text(req.endpoint, "endpoint", required=False, max_len=validation.MAX_ENDPOINT)
        validation.request_id(req.request_id)
        command = validation.argv(list(req.command), "command")
        executor = ""
        if req.executor.strip():
            normalized = validation.normalize_executor(req.executor)
            if normalized is None:
                raise errors.InvalidArgument(
                    f"unknown executor {req.executor[:40]!r}; valid: {validation.executor_choices()}")
            executor = normalized
        if command and (req.model or req.endpoint):
            raise errors.InvalidArgument("command cannot be combined with model or endpoint: a command chat "
                                         "runs the given argv as is")
        if req.endpoint and "@" in req.endpoint.split("://", 1)[-1].split("/", 1)[0]:
            raise errors.InvalidArgument("endpoint URL must not contain credentials; configure the key via the "
                                         "endpoint's api_key_env in the config instead")
        if req.working_dir:
            validation.text(req.working_dir, "working_dir", required=True, max_len=validation.MAX_PATH)
            if not os.path.isabs(req.working_dir):
                raise errors.InvalidArgument(f"working_dir {req.working_dir!r} must be an absolute path")
            if not os.path.isdir(req.working_dir):
                raise errors.InvalidArgument(f"working_dir {req.working_dir!r} is not an existing directory")
        return executor

    async def _plan(self, chat_id: str, task_like: Any, origin: Any,
                    validate_only: bool = False) -> plan_pb2.SpawnPlan:
        resp = await call("dispatch PlanSpawn", self.dispatch.PlanSpawn(dispatch_pb2.PlanSpawnRequest(
            chat_id=chat_id, executor=task_like.executor, model=task_like.model, endpoint=task_like.endpoint,
            command=list(getattr(task_like, "command_argv", None) or getattr(task_like, "command", [])),
            working_dir=task_like.working_dir, origin=origin, validate_only=validate_only), timeout=deadline()))
        return resp.plan

    # ------------------------------------------------------------------ CreateChat

    async def create_chat(self, req: chat_pb2.CreateChatRequest) -> chat_pb2.CreateChatResponse:
        executor = self.validate_create(req)
        # Pre-flight plan (dispatch is pure): a request dispatch rejects as INVALID_ARGUMENT writes
        # nothing. FAILED_PRECONDITION (e.g. unknown endpoint name) still creates the chat, which
        # then shows the failure (the chat must not vanish).
        probe = chat_pb2.CreateChatRequest()
        probe.CopyFrom(req)
        probe.executor = executor
        try:
            await self._plan("", probe, dispatch_pb2.SETTINGS_ORIGIN_REQUEST, validate_only=True)
        except errors.FailedPrecondition:
            pass
        trace_id = telemetry.current_trace_id()
        create_ctx = trace.get_current_span().get_span_context()
        span_id = format(create_ctx.span_id, "016x") if create_ctx.is_valid else ""
        created = await call("graph CreateChatTask", self.graph.CreateChatTask(graph_pb2.CreateChatTaskRequest(
            name=req.name, model=req.model, executor=executor, endpoint=req.endpoint,
            command_argv=list(req.command), working_dir=req.working_dir, request_id=req.request_id,
            supervisor_id=self.me, lease_seconds=self.s.lease_seconds, max_live_chats=self.s.max_live_chats,
            trace_id=trace_id, span_id=span_id), timeout=deadline()))
        chat_id = created.task.id
        live = self.live(chat_id)
        async with live.lock:
            if not created.created:
                rec = await self._record(chat_id)
                return chat_pb2.CreateChatResponse(chat=self.to_chat(rec.task, rec.runtime), created=False)
            live.create_span = trace.get_current_span().get_span_context()
            log.info("chat created: %s", chat_id, extra=fields(
                chat_id=chat_id, executor=executor, model=req.model, endpoint=req.endpoint, trace_id=trace_id))
            # The runtime CreateChatTask returned is current (new chat: run 1); no second read.
            task, runtime = await self._start(chat_id, created.task, dispatch_pb2.SETTINGS_ORIGIN_REQUEST,
                                              created.runtime)
        return chat_pb2.CreateChatResponse(chat=self.to_chat(task, runtime), created=True)

    # ------------------------------------------------------------------ spawning (lock held)

    async def _start(self, chat_id: str, task: task_pb2.Task, origin: Any,
                     runtime: runtime_pb2.ChatRuntime | None = None
                     ) -> tuple[task_pb2.Task, runtime_pb2.ChatRuntime]:
        """Plan and spawn one run of the chat (caller holds the chat's lock). `runtime`: the chat's
        current runtime record if the caller has it (otherwise it is read from the graph)."""
        live = self.live(chat_id)
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        try:
            plan = await self._plan(chat_id, task, origin)
        except (errors.FailedPrecondition, errors.InvalidArgument) as exc:
            # Retrying cannot help until the config or the chat changes: FAILED, with dispatch's words.
            log.warning("cannot plan %s: %s", chat_id, exc.message, extra=fields(chat_id=chat_id))
            runtime = await self._update_runtime(chat_id, RS.RUNTIME_STATE_FAILED,
                                                 last_error=f"cannot plan the agent: {exc.message}")
            await self._publish(chat_id, task, runtime)
            return task, runtime
        except errors.WgsError as exc:
            if runtime is None:
                runtime = (await self._record(chat_id)).runtime
            runtime = await self._spawn_failed(chat_id, runtime, None, f"cannot plan the agent: {exc.message}")
            return task, runtime
        if runtime is None:
            runtime = (await self._record(chat_id)).runtime
        number = max(runtime.current_run.number, _max_prev(runtime)) + 1
        runtime = await self._spawn(chat_id, plan, number, runtime)
        await self._publish(chat_id, task, runtime)
        return task, runtime

    def _agent_env(self, chat_id: str, number: int, plan: plan_pb2.SpawnPlan,
                   carrier: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        unset = _NOT_INHERITED | set(plan.unset_env)
        env = {k: v for k, v in os.environ.items() if k not in unset}
        secrets: list[str] = []
        for var in plan.env:
            if var.value_from_env:
                value = os.environ.get(var.value_from_env)
                if value is None:
                    raise procs.SpawnError(
                        f"environment variable {var.value_from_env} (the API key for {var.name}) is not set in "
                        "the supervisor's environment; set it and restart the supervisor, or change the "
                        "endpoint's api_key_env")
                env[var.name] = value
                secrets.append(value)
            else:
                env[var.name] = var.value
                if var.secret:
                    secrets.append(var.value)
        env.update({
            "WGS_CHAT_ID": chat_id, "WGS_RUN_NUMBER": str(number), "WGS_GRAPH_ADDR": self.s.graph_target,
            "WGS_STATE_DIR": str(self.s.state_dir),
        })
        # The run's own credential: its chat only, while this run lives (wgs.common.auth).
        for name in auth.NOT_FOR_AGENTS:
            env.pop(name, None)
        stack_secret = auth.stack_secret(self.s.state_dir)
        if stack_secret is not None:
            env[auth.TOKEN_VAR] = auth.mint_agent_token(stack_secret, chat_id, number)
        env.update({k.upper(): v for k, v in carrier.items()})
        return env, secrets

    async def _spawn(self, chat_id: str, plan: plan_pb2.SpawnPlan, number: int,
                     runtime: runtime_pb2.ChatRuntime) -> runtime_pb2.ChatRuntime:
        live = self.live(chat_id)
        if live.create_span is None:
            live.create_span = creating_span(runtime)
        cwd = plan.working_dir or self.s.default_cwd
        log_path, _ = procs.run_paths(self.s.state_dir, chat_id, number)
        live.redactor = Redactor(_secret_values(plan))
        shown = live.redactor.argv(plan.argv)
        shown_plan = plan_pb2.SpawnPlan()
        shown_plan.CopyFrom(plan)
        del shown_plan.argv[:]
        shown_plan.argv.extend(shown)
        program = os.path.basename(plan.argv[0]) if plan.argv else "agent"
        links = [Link(live.create_span)] if live.create_span is not None and live.create_span.is_valid else []
        endpoint = plan.endpoint.url if plan.HasField("endpoint") else ""
        ep_source = plan.endpoint.source if plan.HasField("endpoint") else ""
        with tracer.start_as_current_span(program, kind=SpanKind.CLIENT, links=links, attributes={
            "process.executable.name": program, "process.command_args": shown, attrs.CHAT_ID: chat_id,
            attrs.STDERR_PATH: str(log_path), attrs.RUN_NUMBER: number, attrs.PLAN_EXECUTOR: plan.executor,
            attrs.PLAN_MODEL: plan.model, attrs.PLAN_ENDPOINT_URL: endpoint, attrs.PLAN_ENDPOINT_SOURCE: ep_source,
        }) as span:
            span_trace = telemetry.current_trace_id()
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            log.info("spawning agent for %s run %d: executor=%s model=%s endpoint=%s (%s) argv=%s cwd=%s stderr=%s",
                     chat_id, number, plan.executor, plan.model, endpoint or "none", ep_source or "-", shown, cwd,
                     log_path, extra=fields(chat_id=chat_id, run=number, executor=plan.executor, model=plan.model,
                                            endpoint=endpoint, endpoint_source=ep_source, argv=shown, cwd=cwd,
                                            stderr_path=str(log_path), trace_id=span_trace))
            started = datetime.now(UTC)
            try:
                env, _ = self._agent_env(chat_id, number, plan, carrier)
                run = await asyncio.to_thread(
                    procs.spawn, self.s.state_dir, chat_id, number, list(plan.argv), env, cwd,
                    display_argv=shown, max_log_bytes=self.s.max_log_bytes, warm=self._warm)
            except procs.SpawnError as exc:
                span.set_status(trace.StatusCode.ERROR, exc.message)
                log.error("spawn of %s run %d failed: %s (stderr=%s)", chat_id, number, exc.message, log_path,
                          extra=fields(chat_id=chat_id, run=number, error=exc.message))
                failed = runtime_pb2.Run(number=number, pid=0, argv=shown, stderr_path=str(log_path),
                                         error=exc.message, hostname=socket.gethostname(),
                                         supervisor_id=self.me, trace_id=span_trace)
                failed.started_at.CopyFrom(_ts(started))
                failed.exited_at.CopyFrom(_ts(datetime.now(UTC)))
                failed.stderr_tail = live.redactor.text(procs.tail_text(log_path))
                return await self._spawn_failed(chat_id, runtime, failed, exc.message, shown_plan)
            span.set_attribute("process.pid", run.pid)
            run.extra["span"] = span.get_span_context()
            run.extra["trace_id"] = span_trace
        live.run = run
        log.info("agent for %s run %d running: pid %d (monitor %d)", chat_id, number, run.pid, run.monitor_pid,
                 extra=fields(chat_id=chat_id, run=number, pid=run.pid, monitor_pid=run.monitor_pid,
                              stderr_path=str(log_path)))
        rec_run = runtime_pb2.Run(
            number=number, pid=run.pid, process_start_ticks=run.start_ticks, monitor_pid=run.monitor_pid,
            monitor_start_ticks=run.monitor_start_ticks, argv=shown, stderr_path=str(run.log_path),
            hostname=socket.gethostname(), supervisor_id=self.me, trace_id=span_trace)
        rec_run.started_at.CopyFrom(_ts(run.started_at))
        if not procs.watch(run, self._on_exit_cb):
            self._on_exit_cb(run, procs.collect_exit(run))
        resp = await call("graph RecordRunStarted", self.graph.RecordRunStarted(graph_pb2.RecordRunStartedRequest(
            chat_id=chat_id, run=rec_run, plan=shown_plan, state=RS.RUNTIME_STATE_RUNNING, supervisor_id=self.me),
            timeout=deadline()))
        return resp.runtime

    async def _spawn_failed(self, chat_id: str, runtime: runtime_pb2.ChatRuntime, run: runtime_pb2.Run | None,
                            message: str, plan: plan_pb2.SpawnPlan | None = None) -> runtime_pb2.ChatRuntime:
        live = self.live(chat_id)
        now = datetime.now(UTC)
        decision = policy.on_end(history=live.history, cfg=self.s.policy, now=now, started_at=None,
                                 exit_code=None, describe=message)
        live.history = decision.history
        restart_at = decision.restart_at(now)
        if run is None:
            out = await self._update_runtime(chat_id, decision.state, last_error=decision.reason,
                                             restart_count=decision.history.restart_count,
                                             next_restart_at=restart_at)
        else:
            req = graph_pb2.RecordRunExitedRequest(
                chat_id=chat_id, run=run, state=_any(decision.state), restart_count=decision.history.restart_count,
                last_error=decision.reason, supervisor_id=self.me)
            if restart_at is not None:
                req.next_restart_at.CopyFrom(_ts(restart_at))
            if plan is not None:
                req.plan.CopyFrom(plan)
            out = (await call("graph RecordRunExited", self.graph.RecordRunExited(req, timeout=deadline()))).runtime
        self._schedule(chat_id, decision)
        return out

    def _schedule(self, chat_id: str, decision: policy.Decision) -> None:
        if decision.state != RS.RUNTIME_STATE_BACKOFF or decision.delay is None or self._closing:
            return
        live = self.live(chat_id)
        if live.timer is not None:
            live.timer.cancel()
        loop = asyncio.get_running_loop()
        live.timer = loop.call_later(decision.delay, lambda: self._spawn_task(self._restart_due(chat_id)))

    async def _restart_due(self, chat_id: str) -> None:
        live = self.live(chat_id)
        async with live.lock:
            live.timer = None
            if live.run is not None or self._closing:
                return
            try:
                rec = await self._record(chat_id)
                if rec.runtime.state != RS.RUNTIME_STATE_BACKOFF or is_deleted(rec.task) or is_archived(rec.task):
                    return
                log.info("restarting %s after backoff", chat_id, extra=fields(chat_id=chat_id))
                await self._start(chat_id, rec.task, dispatch_pb2.SETTINGS_ORIGIN_CHAT)
            except errors.WgsError as exc:
                log.error("restart of %s failed: %s", chat_id, exc.message, extra=fields(chat_id=chat_id))
                # Try again later rather than leaving the chat in BACKOFF forever.
                self._schedule(chat_id, policy.Decision(RS.RUNTIME_STATE_BACKOFF, self.s.policy.max_backoff,
                                                        live.history, exc.message))

    # ------------------------------------------------------------------ exits

    def _on_exit_cb(self, run: procs.Run, info: procs.ExitInfo) -> None:
        fut = run.extra.get("exited")
        if isinstance(fut, asyncio.Future) and not fut.done():
            fut.set_result(info)
        run.extra["info"] = info
        self._spawn_task(self._on_exit(run, info))

    async def _on_exit(self, run: procs.Run, info: procs.ExitInfo) -> None:
        """Record an exit; while the graph is unavailable, retry (1 s doubling to 30 s, ~2 min).
        Should it stay down longer, the exit file remains and the next adoption records it."""
        live = self.live(run.chat_id)
        delay = 1.0
        for attempt in range(8):
            async with live.lock:
                if run.extra.get("handled"):
                    return
                try:
                    await self._record_exit(run, info, stopped=False)
                    return
                except errors.Unavailable as exc:
                    run.extra.pop("handled", None)
                    log.warning("could not record the exit of %s run %d (attempt %d): %s", run.chat_id, run.number,
                                attempt + 1, exc.message, extra=fields(chat_id=run.chat_id, run=run.number))
                except errors.WgsError as exc:
                    log.error("could not record the exit of %s run %d: %s", run.chat_id, run.number, exc.message,
                              extra=fields(chat_id=run.chat_id, run=run.number))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _record_exit(self, run: procs.Run, info: procs.ExitInfo, *, stopped: bool,
                           state_override: int | None = None) -> runtime_pb2.ChatRuntime:
        """Log, trace and record a run's end; decide and schedule what comes next (lock held)."""
        run.extra["handled"] = True
        live = self.live(run.chat_id)
        cached = run.extra.get("exit_record")  # set when an earlier attempt could not reach the graph
        req: graph_pb2.RecordRunExitedRequest
        decision: policy.Decision
        state: Any
        if isinstance(cached, tuple):
            req, decision, state = cached
        else:
            if live.run is run:
                live.run = None
            tail = live.redactor.text(procs.tail_text(run.log_path))
            now = datetime.now(UTC)
            decision = policy.on_end(history=live.history, cfg=self.s.policy, now=now, started_at=run.started_at,
                                     exit_code=info.exit_code, stop_requested=stopped or run.stop_requested,
                                     describe=f"agent {info.describe()}")
            live.history = decision.history
            state = state_override if state_override is not None else decision.state
            log.info("agent for %s run %d (pid %d) %s -> %s", run.chat_id, run.number, run.pid, info.describe(),
                     state_name(state), extra=fields(chat_id=run.chat_id, run=run.number, pid=run.pid,
                                                     exit_code=info.exit_code, signal=info.signal_name or None,
                                                     error=info.error or None, state=state_name(state),
                                                     stderr_path=str(run.log_path)))
            span_ctx = run.extra.get("span")
            links = [Link(span_ctx)] if isinstance(span_ctx, trace.SpanContext) else []
            if live.create_span is not None and live.create_span.is_valid:
                links.append(Link(live.create_span))
            exit_attrs: dict[str, Any] = {
                attrs.CHAT_ID: run.chat_id, "process.pid": run.pid, attrs.RUN_NUMBER: run.number,
                "process.exit.code": info.exit_code if info.exit_code is not None else -1,
                attrs.EXIT_SIGNAL: info.signal_name, attrs.STDERR_PATH: str(run.log_path),
                attrs.RUNTIME_STATE: state_name(state), attrs.RESTART_COUNT: decision.history.restart_count,
            }
            failed = info.exit_code != 0 or info.signal is not None or bool(info.error)
            if failed:
                exit_attrs["error.type"] = (info.signal_name or (f"exit code {info.exit_code}"
                                            if info.exit_code is not None else "unknown exit"))
            with tracer.start_as_current_span("agent exit", links=links, attributes=exit_attrs) as exit_span:
                if failed:
                    exit_span.set_status(Status(StatusCode.ERROR, info.describe()))
            rec = runtime_pb2.Run(number=run.number, pid=run.pid, stderr_tail=tail, error=info.error,
                                  signal_name=info.signal_name)
            rec.exited_at.CopyFrom(_ts(info.exited_at))
            if info.exit_code is not None:
                rec.exit_code = info.exit_code
            if info.signal is not None:
                rec.signal = info.signal
            req = graph_pb2.RecordRunExitedRequest(
                chat_id=run.chat_id, run=rec, state=state, restart_count=decision.history.restart_count,
                last_error=decision.reason if state in (RS.RUNTIME_STATE_BACKOFF, RS.RUNTIME_STATE_FAILED) else "",
                supervisor_id=self.me)
            restart_at = decision.restart_at(now) if state == decision.state else None
            if restart_at is not None:
                req.next_restart_at.CopyFrom(_ts(restart_at))
            run.extra["exit_record"] = (req, decision, state)
        resp = await call("graph RecordRunExited", self.graph.RecordRunExited(req, timeout=deadline()))
        if state == decision.state:
            self._schedule(run.chat_id, decision)
        await self._publish(run.chat_id)
        return resp.runtime

    async def _stop_run(self, chat_id: str, state: int = RS.RUNTIME_STATE_STOPPED) -> runtime_pb2.ChatRuntime | None:
        """Stop the chat's live run, if any, and record it (lock held). None if nothing ran."""
        live = self.live(chat_id)
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        run = live.run
        if run is None:
            return None
        run.stop_requested = True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[procs.ExitInfo] = loop.create_future()
        known = run.extra.get("info")
        if isinstance(known, procs.ExitInfo):
            fut.set_result(known)
        else:
            run.extra["exited"] = fut
        left = await procs.stop_group(run, self.s.stop_grace)
        if left:
            log.error("processes of %s run %d survived SIGKILL: %s", chat_id, run.number, left,
                      extra=fields(chat_id=chat_id, pids=left))
        try:
            info = await asyncio.wait_for(asyncio.shield(fut), 5.0)
        except TimeoutError:
            procs.unwatch(run)
            info = procs.collect_exit(run)
        return await self._record_exit(run, info, stopped=True, state_override=state)

    # ------------------------------------------------------------------ queries

    async def get_chat(self, chat_id: str) -> chat_pb2.Chat:
        validation.chat_id(chat_id)
        rec = await self._record(chat_id)
        return self.to_chat(rec.task, rec.runtime)

    async def list_chats(self, req: chat_pb2.ListChatsRequest) -> chat_pb2.ListChatsResponse:
        size = validation.page_size(req.page_size)
        resp = await call("graph ListChatRecords", self.graph.ListChatRecords(graph_pb2.ListChatRecordsRequest(
            include_ended=req.include_ended, page_size=size, page_token=req.page_token), timeout=deadline()))
        return chat_pb2.ListChatsResponse(chats=[self.to_chat(c.task, c.runtime) for c in resp.chats],
                                          next_page_token=resp.next_page_token)

    async def watch_chat(self, chat_id: str) -> AsyncIterator[chat_pb2.Chat]:
        if chat_id:
            validation.chat_id(chat_id)
        q = self.bus.subscribe(chat_id)
        try:
            if chat_id:
                yield await self.get_chat(chat_id)
            else:
                for c in await self._owned_records():
                    yield self.to_chat(c.task, c.runtime)
            while True:
                yield await q.get()
        finally:
            self.bus.unsubscribe(chat_id, q)

    # ------------------------------------------------------------------ commands

    async def send_message(self, req: chat_pb2.SendMessageRequest) -> chat_pb2.SendMessageResponse:
        validation.chat_id(req.chat_id)
        validation.text(req.text, "text", required=True, max_len=validation.MAX_MESSAGE)
        validation.request_id(req.request_id)
        request_id = req.request_id or uuid.uuid4().hex
        live = self.live(req.chat_id)
        async with live.lock:
            rec = await self._record(req.chat_id)
            _check_usable(rec.task)
            await self._ensure_owner(rec)
            task, runtime = rec.task, rec.runtime
            if runtime.state == RS.RUNTIME_STATE_FAILED:
                raise errors.FailedPrecondition(
                    f"chat {task.id} has FAILED ({runtime.last_error or 'too many failures'}); fix the cause and "
                    f"call RestartChat (`wgs chat restart {task.id}`) to start its agent again")
            msg = await call("graph AppendMessage", self.graph.AppendMessage(graph_pb2.AppendMessageRequest(
                chat_id=task.id, role=task_pb2.MESSAGE_ROLE_USER, content=req.text, request_id=request_id),
                timeout=deadline()))
            respawned = False
            if live.run is None and runtime.state in (RS.RUNTIME_STATE_EXITED, RS.RUNTIME_STATE_STOPPED,
                                                      RS.RUNTIME_STATE_STARTING):
                if task.status != task_pb2.TASK_STATUS_IN_PROGRESS:
                    task = await self._update_task(task.id, graph_pb2.TaskUpdate(
                        status=task_pb2.TASK_STATUS_IN_PROGRESS), "agent started for a new message")
                log.info("respawning %s for a message (state %s)", task.id, state_name(runtime.state),
                         extra=fields(chat_id=task.id))
                task, runtime = await self._start(task.id, task, dispatch_pb2.SETTINGS_ORIGIN_CHAT)
                respawned = True
        return chat_pb2.SendMessageResponse(message=msg.message, respawned=respawned, runtime=runtime)

    async def list_messages(self, req: chat_pb2.ListChatMessagesRequest) -> chat_pb2.ListChatMessagesResponse:
        validation.chat_id(req.chat_id)
        if req.after_seq < 0:
            raise errors.InvalidArgument(f"after_seq must not be negative, got {req.after_seq}")
        limit = validation.page_size(req.limit, default=1000, field="limit")
        resp = await call("graph ListMessages", self.graph.ListMessages(graph_pb2.ListMessagesRequest(
            chat_id=req.chat_id, after_seq=req.after_seq, limit=limit), timeout=deadline()))
        return chat_pb2.ListChatMessagesResponse(messages=list(resp.messages))

    async def watch_messages(self, req: chat_pb2.WatchChatMessagesRequest) -> AsyncIterator[task_pb2.ChatMessage]:
        validation.chat_id(req.chat_id)
        if req.after_seq < 0:
            raise errors.InvalidArgument(f"after_seq must not be negative, got {req.after_seq}")
        await self._record(req.chat_id)  # NOT_FOUND before the stream starts
        stream = self.graph.WatchMessages(graph_pb2.WatchMessagesRequest(chat_id=req.chat_id,
                                                                         after_seq=req.after_seq))
        try:
            async for item in stream:
                yield item.message
        except grpc.aio.AioRpcError as exc:
            raise _wgs_error(exc, "graph WatchMessages") from None
        finally:
            stream.cancel()

    async def _end(self, chat_id: str, status: Any, add_tags: list[str], verb: str) -> chat_pb2.Chat:
        validation.chat_id(chat_id)
        live = self.live(chat_id)
        async with live.lock:
            rec = await self._record(chat_id)
            if verb == "stop":
                _check_usable(rec.task)
            elif verb == "archive" and is_deleted(rec.task):
                raise errors.FailedPrecondition(f"chat {chat_id} was deleted; a deleted chat cannot be archived")
            await self._ensure_owner(rec)
            stopped = await self._stop_run(chat_id)
            if stopped is None and rec.runtime.state != RS.RUNTIME_STATE_STOPPED:
                await self._update_runtime(chat_id, RS.RUNTIME_STATE_STOPPED, last_error="")
            if rec.task.status != status or any(t not in rec.task.tags for t in add_tags):
                await self._update_task(chat_id, graph_pb2.TaskUpdate(status=status, add_tags=add_tags),
                                        f"chat {verb} requested")
            rec = await self._record(chat_id)
            chat = self.to_chat(rec.task, rec.runtime)
            self.bus.publish(chat)
            return chat

    async def stop_chat(self, chat_id: str) -> chat_pb2.Chat:
        return await self._end(chat_id, task_pb2.TASK_STATUS_OPEN, [], "stop")

    async def delete_chat(self, chat_id: str) -> chat_pb2.Chat:
        return await self._end(chat_id, task_pb2.TASK_STATUS_ABANDONED, [], "delete")

    async def archive_chat(self, chat_id: str) -> chat_pb2.Chat:
        return await self._end(chat_id, task_pb2.TASK_STATUS_DONE, [validation.ARCHIVED_TAG], "archive")

    async def interrupt_chat(self, chat_id: str) -> chat_pb2.InterruptChatResponse:
        validation.chat_id(chat_id)
        live = self._live.get(chat_id)
        run = live.run if live is not None else None
        if run is None:
            rec = await self._record(chat_id)
            return chat_pb2.InterruptChatResponse(
                delivered=False, detail=f"agent is not running (state {state_name(rec.runtime.state)})")
        if procs.interrupt(run):
            log.info("SIGINT sent to %s agent pid %d", chat_id, run.pid, extra=fields(chat_id=chat_id, pid=run.pid))
            return chat_pb2.InterruptChatResponse(delivered=True, pid=run.pid)
        return chat_pb2.InterruptChatResponse(delivered=False, detail=f"agent pid {run.pid} has already exited")

    async def restart_chat(self, chat_id: str) -> chat_pb2.Chat:
        validation.chat_id(chat_id)
        live = self.live(chat_id)
        async with live.lock:
            rec = await self._record(chat_id)
            _check_usable(rec.task)
            await self._ensure_owner(rec)
            await self._stop_run(chat_id)
            live.history = policy.History()
            await self._update_runtime(chat_id, RS.RUNTIME_STATE_STARTING, last_error="", restart_count=0)
            task = rec.task
            if task.status != task_pb2.TASK_STATUS_IN_PROGRESS:
                task = await self._update_task(chat_id, graph_pb2.TaskUpdate(status=task_pb2.TASK_STATUS_IN_PROGRESS),
                                               "chat restarted")
            task, runtime = await self._start(chat_id, task, dispatch_pb2.SETTINGS_ORIGIN_CHAT)
            return self.to_chat(task, runtime)

    # ------------------------------------------------------------------ start-up, leases, shutdown

    async def _owned_records(self) -> list[graph_pb2.ChatRecord]:
        out: list[graph_pb2.ChatRecord] = []
        token = ""
        while True:
            resp = await call("graph ListChatRecords", self.graph.ListChatRecords(graph_pb2.ListChatRecordsRequest(
                supervisor_id=self.me, page_size=1000, page_token=token), timeout=deadline()))
            out.extend(resp.chats)
            token = resp.next_page_token
            if not token:
                return out

    async def start(self) -> None:
        """Claim and adopt this supervisor's chats (before SERVING), then keep the leases renewed."""
        self._warm.prime()  # background thread: the first CreateChat finds a warm monitor
        for rec in await self._owned_records():
            try:
                await self._adopt(rec)
            except errors.WgsError as exc:
                log.error("could not adopt %s: %s", rec.task.id, exc.message, extra=fields(chat_id=rec.task.id))
        self._lease_task = asyncio.ensure_future(self._renew_leases())

    async def _adopt(self, rec: graph_pb2.ChatRecord) -> None:
        chat_id = rec.task.id
        await call("graph ClaimChat", self.graph.ClaimChat(graph_pb2.ClaimChatRequest(
            chat_id=chat_id, supervisor_id=self.me, lease_seconds=self.s.lease_seconds), timeout=deadline()))
        live = self.live(chat_id)
        async with live.lock:
            await self._adopt_locked(rec.task, rec.runtime)

    async def _adopt_locked(self, task: task_pb2.Task, rt: runtime_pb2.ChatRuntime) -> None:
        """Resume supervising a chat this process did not start (lock held, chat claimed)."""
        chat_id = task.id
        live = self.live(chat_id)
        live.redactor = Redactor(_secret_values(rt.plan))
        if live.create_span is None:
            live.create_span = creating_span(rt)
        rec = graph_pb2.ChatRecord(task=task, runtime=rt)
        cur = rt.current_run
        if cur.monitor_pid > 0 and not cur.HasField("exited_at"):
            # A run that was live when the last supervisor went away: the process is the truth.
            log_path, exit_path = procs.run_paths(self.s.state_dir, chat_id, cur.number)
            run = procs.Run(chat_id=chat_id, number=cur.number, pid=cur.pid, start_ticks=cur.process_start_ticks,
                            monitor_pid=cur.monitor_pid, monitor_start_ticks=cur.monitor_start_ticks,
                            log_path=log_path, exit_path=exit_path, argv=list(cur.argv),
                            started_at=from_ts(cur.started_at) or datetime.now(UTC))
            if procs.is_alive(cur.monitor_pid, cur.monitor_start_ticks) and procs.watch(run, self._on_exit_cb):
                live.run = run
                log.info("adopted %s run %d: agent pid %d (monitor %d)", chat_id, cur.number, cur.pid,
                         cur.monitor_pid, extra=fields(chat_id=chat_id, pid=cur.pid, run=cur.number))
                if rt.state != RS.RUNTIME_STATE_RUNNING:
                    # e.g. Reconcile marked it STOPPED because our lease expired while we were down.
                    await self._update_runtime(chat_id, RS.RUNTIME_STATE_RUNNING, last_error="")
                await self._mark_live(rec.task)
                return
            info = procs.read_exit_file(exit_path) or procs.ExitInfo(None, None, datetime.now(UTC),
                                                                      procs.UNKNOWN_EXIT)
            log.info("%s run %d ended while the supervisor was down: %s", chat_id, cur.number, info.describe(),
                     extra=fields(chat_id=chat_id, run=cur.number))
            stopped = rt.state == RS.RUNTIME_STATE_STOPPED
            if not stopped:
                await self._mark_live(rec.task)
            await self._record_exit(run, info, stopped=stopped)
        elif rt.state in (RS.RUNTIME_STATE_STARTING, RS.RUNTIME_STATE_RUNNING):
            # Created (or restarted) but the supervisor died before the spawn: start it now.
            task = await self._mark_live(rec.task)
            await self._start(chat_id, task, dispatch_pb2.SETTINGS_ORIGIN_CHAT)
        elif rt.state == RS.RUNTIME_STATE_BACKOFF:
            await self._mark_live(rec.task)
            due = from_ts(rt.next_restart_at)
            delay = max(0.0, (due - datetime.now(UTC)).total_seconds()) if due else 0.0
            live.history = policy.History(restart_count=rt.restart_count)
            self._schedule(chat_id, policy.Decision(RS.RUNTIME_STATE_BACKOFF, delay, live.history, ""))

    async def _mark_live(self, task: task_pb2.Task) -> task_pb2.Task:
        """A chat with a live (or to-be-restarted) agent is IN_PROGRESS; Reconcile may have reset it
        to OPEN while this supervisor was down and its lease expired."""
        if task.status != task_pb2.TASK_STATUS_OPEN:
            return task
        return await self._update_task(task.id, graph_pb2.TaskUpdate(status=task_pb2.TASK_STATUS_IN_PROGRESS),
                                       "supervisor restarted and adopted the chat")

    async def _renew_leases(self) -> None:
        interval = max(1.0, self.s.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.graph.RenewLeases(graph_pb2.RenewLeasesRequest(
                    supervisor_id=self.me, lease_seconds=self.s.lease_seconds), timeout=deadline())
            except grpc.aio.AioRpcError as exc:
                log.warning("lease renewal failed: %s: %s", exc.code().name, exc.details())

    async def close(self) -> None:
        """Supervisor shutdown: agents keep running (monitors record their exits); the next
        supervisor adopts them. Only our watchers and timers end."""
        self._closing = True
        if self._lease_task is not None:
            self._lease_task.cancel()
        for live in self._live.values():
            if live.timer is not None:
                live.timer.cancel()
            if live.run is not None:
                procs.unwatch(live.run)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.to_thread(self._warm.close)


def _check_usable(task: task_pb2.Task) -> None:
    if is_deleted(task):
        raise errors.FailedPrecondition(f"chat {task.id} was deleted; create a new chat")
    if is_archived(task):
        raise errors.FailedPrecondition(f"chat {task.id} is archived; create a new chat")


def creating_span(runtime: runtime_pb2.ChatRuntime) -> trace.SpanContext | None:
    """The creating call's span, rebuilt from the ids stored with the runtime (survives restarts)."""
    try:
        trace_id, span_id = int(runtime.trace_id, 16), int(runtime.span_id, 16)
    except ValueError:
        return None
    ctx = trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return ctx if ctx.is_valid else None


def _max_prev(runtime: runtime_pb2.ChatRuntime) -> int:
    return max((r.number for r in runtime.previous_runs), default=0)


def _secret_values(plan: plan_pb2.SpawnPlan) -> list[str]:
    out: list[str] = []
    for var in plan.env:
        if var.value_from_env:
            value = os.environ.get(var.value_from_env)
            if value:
                out.append(value)
        elif var.secret and var.value:
            out.append(var.value)
    return out

