"""Runs of a chat's agent: spawning one (with its span and pre-spawn log line), and recording how
runs end (exit spans, the graph record, retried while the graph is unavailable, batched).

The lifecycle decides *what* happens (states, restarts); this module does the work of starting a
run and of writing down its end, the same way for every caller.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from services.supervisor import agentenv
from services.supervisor.backend import ExitInfo, RunBackend, RunHandle, RunSpec, SpawnFailed
from services.supervisor.clients import GraphClient, status_error
from services.supervisor.clock import Clock
from services.supervisor.redact import Redactor
from services.supervisor.settings import SupervisorSettings
from wgs.common import attributes as attrs
from wgs.common import chat_states, errors, telemetry
from wgs.common.logs import fields
from wgs.v1 import plan_pb2, runtime_pb2, runtime_service_pb2

log = logging.getLogger("wgs.supervisor")
tracer = telemetry.tracer("wgs.supervisor")
RS = runtime_service_pb2

BATCH_WINDOW = 0.005  # exits arriving within this many seconds are recorded in one transaction
# At most this many exits per RecordRunExited call. 500 took the graph longer than the call's deadline on
# PostgreSQL on a busy machine (~20 ms per exit): the batch was retried from scratch and never landed,
# and the transaction's row locks made the lease renewals time out too, so every run fenced itself.
BATCH_MAX = 100
# Batches under way at once (of distinct chats). One after another, the last 450 of 900 exits took
# 0.6 s on PostgreSQL, where the graph mostly waits on round trips while a batch is written.
IN_FLIGHT = 2
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0, 30.0)  # ~2 min while the graph is unavailable


def shown_plan(plan: plan_pb2.SpawnPlan, redactor: Redactor) -> plan_pb2.SpawnPlan:
    """The plan as recorded and shown: argv with secrets redacted."""
    out = plan_pb2.SpawnPlan()
    out.CopyFrom(plan)
    del out.argv[:]
    out.argv.extend(redactor.argv(plan.argv))
    return out


@dataclass
class _Pending:
    item: RS.RunExit
    future: asyncio.Future[runtime_pb2.ChatRuntime] = field(default_factory=lambda: asyncio.get_running_loop()
                                                            .create_future())


class ExitRecorder:
    """Writes RunExit records: batches those arriving together into one RecordRunExited call and
    retries the batch while the graph is unavailable (the exit files stay on disk meanwhile, so an
    exit whose record never lands is recorded by the next adoption).

    Up to IN_FLIGHT batches are under way at once: while one waits on the graph (on PostgreSQL
    mostly round trips, ~0.1 s for 100 exits), the next is sent. A chat is in at most one of them
    and at most once in a batch: its later exits wait until the batch holding its earlier one is
    done (answered or given up), so each chat's exits are recorded one after another, in order."""

    def __init__(self, graph: GraphClient, in_flight: int = IN_FLIGHT) -> None:
        self._graph = graph
        self._in_flight = in_flight
        self._queue: list[_Pending] = []
        self._sending: dict[asyncio.Task[None], list[_Pending]] = {}  # the batches under way
        self._window: asyncio.TimerHandle | None = None
        self._closing = False

    async def record(self, item: RS.RunExit) -> runtime_pb2.ChatRuntime:
        pending = _Pending(item)
        self._queue.append(pending)
        if self._window is None and len(self._sending) < self._in_flight:
            # Others arriving within the window go in the same batch.
            self._window = asyncio.get_running_loop().call_later(BATCH_WINDOW, self._start)
        return await pending.future

    def busy_chats(self) -> frozenset[str]:
        """The chats with an exit in a batch under way."""
        return frozenset(p.item.chat_id for batch in self._sending.values() for p in batch)

    def _start(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None
        while len(self._sending) < self._in_flight:
            batch = self._take()
            if not batch:
                return
            task = asyncio.ensure_future(self._send(batch))
            self._sending[task] = batch
            task.add_done_callback(self._sent)

    def _take(self) -> list[_Pending]:
        """The next batch: up to BATCH_MAX queued exits in their order, one per chat, none of a chat
        in a batch under way (those stay queued, in order, for a later batch)."""
        busy = self.busy_chats()
        batch: list[_Pending] = []
        rest: list[_Pending] = []
        chats: set[str] = set()
        for p in self._queue:
            chat = p.item.chat_id
            if len(batch) < BATCH_MAX and chat not in busy and chat not in chats:
                batch.append(p)
                chats.add(chat)
            else:
                rest.append(p)
        self._queue = rest
        return batch

    def _sent(self, task: asyncio.Task[None]) -> None:
        batch = self._sending.pop(task, [])
        error = None if task.cancelled() else task.exception()
        if error is not None:  # not a graph error (those are answered in _send): a bug, told to each caller
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
        if self._queue and not self._closing:
            self._start()

    async def _send(self, batch: list[_Pending]) -> None:
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            try:
                results = await self._graph.runs_exited([p.item for p in batch])
            except errors.Unavailable as exc:
                if delay is None or self._closing:
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    return
                log.warning("could not record %d exit(s) (attempt %d): %s; retrying in %gs", len(batch),
                            attempt + 1, exc.message, delay)
                await asyncio.sleep(delay)
                continue
            except errors.WgsError as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            for p, res in zip(batch, results, strict=False):
                if p.future.done():
                    continue
                if res.error_code:
                    p.future.set_exception(status_error(res.error_code, res.error_message))
                else:
                    p.future.set_result(res.runtime)
            return

    def close(self) -> None:
        self._closing = True
        if self._window is not None:
            self._window.cancel()
            self._window = None
        for task in list(self._sending):
            task.cancel()


class TailReader:
    """Reads the output tails of runs that ended together in one worker-thread call: each exit used
    to hop to a thread of its own for its file (900 hops when 900 agents died at once, the top of
    the supervisor's profile with the path checks). A read asked for while one is under way joins
    the next, which starts as soon as it is done."""

    def __init__(self, backend: RunBackend) -> None:
        self._backend = backend
        self._queue: list[tuple[RunHandle, asyncio.Future[str]]] = []
        self._reading = False
        self._task: asyncio.Task[None] | None = None

    async def read(self, handle: RunHandle) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((handle, future))
        if not self._reading:
            self._reading = True
            # Exits seen in the same turn of the loop all ask before this runs: one read for all.
            asyncio.get_running_loop().call_soon(self._next)
        return await future

    def _next(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            self._reading = False
            return
        self._task = asyncio.ensure_future(self._read(batch))

    async def _read(self, batch: list[tuple[RunHandle, asyncio.Future[str]]]) -> None:
        try:
            texts = await asyncio.to_thread(self._backend.tails, [h for h, _ in batch])
        except asyncio.CancelledError:  # shutdown: nobody is left to read for
            for _, future in (*batch, *self._queue):
                future.cancel()
            self._queue = []
            self._reading = False
            raise
        except Exception as exc:  # each caller gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), text in zip(batch, texts, strict=True):
                if not future.done():
                    future.set_result(text)
        self._next()


class Runs:
    def __init__(self, settings: SupervisorSettings, graph: GraphClient, backend: RunBackend, clock: Clock,
                 agent_credentials: Any = None) -> None:
        self.s = settings
        self.graph = graph
        self.backend = backend
        self.clock = clock
        self.exits = ExitRecorder(graph)
        self.tails = TailReader(backend)
        # (chat_id, run_number) -> env vars with the run's own credentials (issue 12); None: none
        self._credentials = agent_credentials

    # -- spawn -------------------------------------------------------------------------------

    async def spawn(self, chat_id: str, number: int, plan: plan_pb2.SpawnPlan, redactor: Redactor,
                    links: list[SpanContext]) -> RunHandle:
        """Start run `number` of the chat with `plan`: pre-spawn log line, spawn span, the run's
        environment; returns the handle (not yet recorded). SpawnFailed says why not."""
        cwd = plan.working_dir or self.s.default_cwd
        log_path = self.backend.log_path(chat_id, number)
        shown = redactor.argv(plan.argv)
        program = os.path.basename(plan.argv[0]) if plan.argv else "agent"
        endpoint = plan.endpoint.url if plan.HasField("endpoint") else ""
        ep_source = plan.endpoint.source_detail if plan.HasField("endpoint") else ""
        span_links = [Link(c) for c in links if c.is_valid]
        with tracer.start_as_current_span(program, kind=SpanKind.CLIENT, links=span_links, attributes={
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
            try:
                creds = self._credentials(chat_id, number) if self._credentials is not None else None
                env = agentenv.build(plan, chat_id=chat_id, run_number=number, graph_target=self.s.graph_target,
                                     state_dir=str(self.s.state_dir), trace_carrier=carrier, credentials=creds)
                redactor.add(env.secrets)
                handle = await self.backend.spawn(RunSpec(chat_id=chat_id, number=number, argv=list(plan.argv),
                                                          display_argv=shown, env=env.env, cwd=cwd))
            except SpawnFailed as exc:
                span.set_status(trace.StatusCode.ERROR, exc.message)
                log.error("spawn of %s run %d failed: %s (stderr=%s)", chat_id, number, exc.message, log_path,
                          extra=fields(chat_id=chat_id, run=number, error=exc.message))
                raise
            span.set_attribute("process.pid", handle.pid)
            handle.span = span.get_span_context()
            handle.trace_id = span_trace
        log.info("agent for %s run %d running: pid %d (monitor %d)", chat_id, number, handle.pid, handle.monitor_pid,
                 extra=fields(chat_id=chat_id, run=number, pid=handle.pid, monitor_pid=handle.monitor_pid,
                              stderr_path=str(handle.log_path)))
        return handle

    def failed_spawn_run(self, chat_id: str, number: int, message: str, started: datetime,
                         redactor: Redactor, display_argv: list[str]) -> runtime_pb2.Run:
        """The record of a run that could not start (pid 0, its error and whatever it wrote)."""
        log_path = self.backend.log_path(chat_id, number)
        run = runtime_pb2.Run(number=number, pid=0, argv=display_argv, stderr_path=str(log_path), error=message,
                              hostname=self.backend.hostname, supervisor_id=self.s.supervisor_id,
                              trace_id=telemetry.current_trace_id(), end=runtime_pb2.RUN_END_SPAWN_FAILED)
        run.started_at.FromDatetime(started)
        run.exited_at.FromDatetime(self.clock.now())
        run.stderr_tail = redactor.text(self.backend.tail(log_path))
        return run

    # -- exits -------------------------------------------------------------------------------

    async def tail(self, handle: RunHandle) -> str:
        """The run's output tail (read with those of other runs that ended at the same time)."""
        return await self.tails.read(handle)

    def ended_run(self, handle: RunHandle, info: ExitInfo, redactor: Redactor, tail: str, *, end: int,
                  detail: str = "") -> runtime_pb2.Run:
        """The record of how a run ended (exit status, its output `tail` redacted, who ended it)."""
        rec = runtime_pb2.Run(number=handle.number, pid=handle.pid, error=info.error, signal_name=info.signal_name,
                              stderr_tail=redactor.text(tail), end=end,  # type: ignore[arg-type]
                              end_detail=detail, leftovers_ended=info.leftovers)
        rec.exited_at.FromDatetime(info.exited_at)
        if info.exit_code is not None:
            rec.exit_code = info.exit_code
        if info.signal is not None:
            rec.signal = info.signal
        return rec

    def exit_span(self, handle: RunHandle, info: ExitInfo, state: int, restart_count: int,
                  create_span: SpanContext | None) -> None:
        """An `agent exit` span in a trace of its own, linked to the spawn and the creating call."""
        links = [Link(c) for c in (handle.span, create_span) if c is not None and c.is_valid]
        exit_attrs: dict[str, Any] = {
            attrs.CHAT_ID: handle.chat_id, "process.pid": handle.pid, attrs.RUN_NUMBER: handle.number,
            "process.exit.code": info.exit_code if info.exit_code is not None else -1,
            attrs.EXIT_SIGNAL: info.signal_name, attrs.STDERR_PATH: str(handle.log_path),
            attrs.RUNTIME_STATE: chat_states.name(state), attrs.RESTART_COUNT: restart_count,
        }
        failed = not handle.stop_reason and (info.exit_code != 0 or info.signal is not None or bool(info.error))
        if failed:
            exit_attrs["error.type"] = (info.signal_name or (f"exit code {info.exit_code}"
                                        if info.exit_code is not None else "unknown exit"))
        with tracer.start_as_current_span("agent exit", context=trace.set_span_in_context(trace.INVALID_SPAN),
                                          links=links, attributes=exit_attrs) as span:
            if failed:
                span.set_status(Status(StatusCode.ERROR, info.describe()))

    async def record(self, item: RS.RunExit) -> runtime_pb2.ChatRuntime:
        return await self.exits.record(item)

    def close(self) -> None:
        self.exits.close()
