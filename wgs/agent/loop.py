"""The agent's main loop, shared by the native agent and the claude/codex runners.

Start: read the whole chat (ListMessages), start the backend (for native: check the endpoint),
log "ready", then follow the chat with WatchMessages from the last stored seq. A worker answers
USER messages without an answer one at a time, oldest first, and appends the ASSISTANT (or
SYSTEM_ERROR) message carrying the user's request id; the graph's uniqueness on
(chat, role, request_id) means a reply is never stored twice, even across restarts.

Signals:
- SIGTERM: stop at once, exit 0. A reply being generated is abandoned without a message, so the
  question stays unanswered and the next run answers it (no lost reply).
- SIGINT (what ChatService.InterruptChat sends): cancel the reply being generated and post a
  SYSTEM_ERROR "interrupted" for it; the agent keeps running. While idle it is ignored (logged).
Idle exit: with WGS_AGENT_IDLE_EXIT_SECONDS > 0, an agent with nothing to answer for that long
exits 0 (the supervisor respawns it lazily on the next message).
Fatal errors (AgentFatal): one line "wgs-agent: <reason>" on stderr, a SYSTEM_ERROR for the request
being answered (or for every unanswered one, or one without request id if none), exit non-zero.
Status: every answer's outcome (failed with its class, or succeeded with its token usage), the
endpoint's outage (waiting / back), partial replies and the context window go to a StatusSink
(wgs.agent.status), so they can be shown as chat state.
Traces: an answer is a span `agent.answer`; it joins the trace of the SendMessage that stored the
question when the message carries a W3C traceparent, else it is the root of a trace of its own;
either way it is linked to the agent's spawn span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Link, StatusCode
from opentelemetry.trace import Status as SpanStatus

from wgs.agent.conversation import ASSISTANT, SYSTEM_ERROR, Conversation, Msg, Turn
from wgs.agent.errors import EXIT_OK, FAIL_EMPTY, FAIL_INTERRUPTED, FAIL_STOPPED, AgentFatal, AnswerFailed
from wgs.agent.graph_link import GraphLink
from wgs.agent.status import AnswerContext, LoggingSink, Status, StatusSink
from wgs.common import attributes as attrs
from wgs.common.logs import fields
from wgs.common.validation import MAX_MESSAGE

log = logging.getLogger("wgs.agent")
tracer = trace.get_tracer("wgs.agent")


class Backend(Protocol):
    """What answers the messages: the OpenAI-compatible client, or a claude/codex CLI."""

    description: str

    async def start(self, status: Status) -> None:
        """Check that answering can work (reporting a wait for the endpoint); raise AgentFatal if not."""

    async def answer(self, turns: list[Turn], prompt: str, ctx: AnswerContext) -> str:
        """Answer `prompt` given the earlier completed turns; AnswerFailed / AgentFatal on failure.

        Streams partial text and reports token usage through `ctx`."""
        ...

    async def interrupt(self) -> None:
        """Called after an answer was cancelled by SIGINT (e.g. to kill a CLI child)."""

    async def close(self) -> None:
        """Release resources; called once on every exit path."""


def one_line(text: str) -> str:
    return " ".join(text.split())


def fit_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """Cut a reply to what the graph stores (256 KiB), saying so, rather than lose it."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note = "\n[reply truncated: longer than 256 KiB]"
    return data[: limit - len(note.encode()) - 4].decode("utf-8", "ignore") + note


class AgentLoop:
    def __init__(self, graph: GraphLink, backend: Backend, *, secrets: list[str] | None = None,
                 idle_exit_seconds: float = 0.0, sink: StatusSink | None = None) -> None:
        self.graph = graph
        self.backend = backend
        self.status = Status(sink if sink is not None else LoggingSink())
        self.secrets = [s for s in (secrets or []) if s]
        self.idle_exit = idle_exit_seconds
        self.conv = Conversation()
        self._wake = asyncio.Event()
        self._stopping = False
        self._current: asyncio.Task[str] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[list[Msg]] | None = None  # the first read of the chat (waits out a graph outage)
        self._interrupted = False
        self._origin_links: list[Link] = []
        self._watch_error: BaseException | None = None

    # ---- helpers ------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def stop(self) -> None:
        log.info("SIGTERM: stopping")
        self._stopping = True
        for task in (self._current, self._starting, self._reading):
            if task is not None:
                task.cancel()
        self._wake.set()

    def interrupt(self) -> None:
        if self._current is not None and not self._current.done():
            log.info("SIGINT: interrupting the reply being generated")
            self._interrupted = True
            self._current.cancel()
        else:
            log.info("SIGINT: nothing is being generated; ignored")

    async def _append(self, role: int, content: str, request_id: str) -> None:
        stored = await self.graph.append(role, fit_message(self.redact(content)), request_id)
        self.conv.add(stored)

    async def _report_fatal(self, exc: AgentFatal, request: Msg | None) -> int:
        reason = self.redact(one_line(exc.reason))
        print(f"wgs-agent: {reason}", file=sys.stderr, flush=True)
        targets = [request] if request is not None else self.conv.pending()
        text = f"The agent stopped: {reason}"
        for m in targets:
            await self.status.answer_failed(m.key, FAIL_STOPPED, text)
        with contextlib.suppress(AgentFatal):
            if targets:
                for m in targets:
                    await self._append(SYSTEM_ERROR, text, m.key)
            elif not (self.conv.last is not None and self.conv.last.role == SYSTEM_ERROR
                      and self.conv.last.content == text):
                # Not again if the previous run already said the same (a failing restart loop).
                await self._append(SYSTEM_ERROR, text, "")
        return exc.exit_code

    # ---- main ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.interrupt)
        watcher: asyncio.Task[None] | None = None
        try:
            self._reading = asyncio.create_task(self.graph.list_all())
            try:
                for m in await self._reading:
                    self.conv.add(m)
            except AgentFatal as exc:
                print(f"wgs-agent: {self.redact(one_line(exc.reason))}", file=sys.stderr, flush=True)
                return exc.exit_code
            except asyncio.CancelledError:
                if self._stopping:  # SIGTERM while the graph was being waited for
                    return EXIT_OK
                raise
            finally:
                self._reading = None
            # The spawn span (TRACEPARENT) is current here: start-up belongs to the creating trace;
            # each later answer is a trace of its own, linked to it.
            origin = trace.get_current_span().get_span_context()
            self._origin_links = [Link(origin)] if origin.is_valid else []
            with tracer.start_as_current_span("agent.start", attributes={
                attrs.CHAT_ID: self.graph.chat_id, "wgs.agent.backend": self.backend.description,
            }) as start_span:
                self._starting = asyncio.create_task(self.backend.start(self.status))
                try:
                    await self._starting
                except AgentFatal as exc:
                    start_span.set_status(SpanStatus(StatusCode.ERROR, self.redact(one_line(exc.reason))))
                    start_span.set_attribute("error.type", type(exc).__name__)
                    start_span.set_attribute("process.exit.code", exc.exit_code)
                    return await self._report_fatal(exc, None)
                except asyncio.CancelledError:
                    if self._stopping:
                        return EXIT_OK
                    raise
                finally:
                    self._starting = None
            log.info("ready", extra=fields(chat_id=self.graph.chat_id, backend=self.backend.description,
                                           history=len(self.conv.users), pending=len(self.conv.pending())))
            watcher = asyncio.create_task(self._watch())
            return await self._work()
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
            with contextlib.suppress(Exception):
                await self.backend.close()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGTERM)
                loop.remove_signal_handler(signal.SIGINT)

    async def _watch(self) -> None:
        try:
            async for m in self.graph.watch(self.conv.last_seq):
                self.conv.add(m)
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the worker
            self._watch_error = exc
            self._wake.set()

    async def _work(self) -> int:
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while True:
            if self._stopping:
                return EXIT_OK
            if self._watch_error is not None:
                if isinstance(self._watch_error, AgentFatal):
                    return await self._report_fatal(self._watch_error, None)
                raise self._watch_error
            request = self.conv.next_pending()
            if request is None:
                self._wake.clear()
                timeout = None
                if self.idle_exit > 0:
                    timeout = max(0.0, idle_since + self.idle_exit - loop.time())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    log.info("idle for %gs; exiting", self.idle_exit)
                    return EXIT_OK
                continue
            try:
                await self._answer(request)
            except AgentFatal as exc:
                return await self._report_fatal(exc, request)
            idle_since = loop.time()

    def _answer_context(self, request: Msg) -> otel_context.Context:
        """The parent of an answer's span: the sender's trace when the message carries one, else none."""
        if request.traceparent:
            ctx = extract({"traceparent": request.traceparent})
            if trace.get_current_span(ctx).get_span_context().is_valid:
                return ctx
        return otel_context.Context()

    async def _fail(self, request: Msg, kind: str, text: str) -> None:
        await self._append(SYSTEM_ERROR, text, request.key)
        await self.status.answer_failed(request.key, kind, self.redact(text))

    async def _answer(self, request: Msg) -> None:
        turns = self.conv.history_before(request)
        log.info("answering", extra=fields(chat_id=self.graph.chat_id, request_id=request.key, seq=request.seq))
        with tracer.start_as_current_span("agent.answer", context=self._answer_context(request),
                                          links=self._origin_links, attributes={
            attrs.CHAT_ID: self.graph.chat_id, attrs.REQUEST_ID: request.key, attrs.MESSAGE_SEQ: request.seq,
        }) as span:
            self._interrupted = False
            ctx = AnswerContext(request.key, self.status)
            self._current = asyncio.create_task(self.backend.answer(turns, request.content, ctx))
            try:
                reply = await self._current
            except asyncio.CancelledError:
                if self._stopping:
                    return  # unanswered: the next run answers it
                if not self._interrupted:
                    raise
                span.set_attribute(attrs.OUTCOME, "interrupted")
                with contextlib.suppress(Exception):
                    await self.backend.interrupt()
                await self._fail(request, FAIL_INTERRUPTED, "interrupted: the reply was cancelled (SIGINT)")
                return
            except AnswerFailed as exc:
                span.set_attribute(attrs.OUTCOME, "error")
                span.set_attribute("error.type", exc.kind)
                reason = self.redact(one_line(exc.reason))
                span.set_status(SpanStatus(StatusCode.ERROR, reason))
                log.warning("could not answer: %s", reason, extra=fields(request_id=request.key, failure=exc.kind))
                await self._fail(request, exc.kind, f"Could not answer: {reason}")
                return
            finally:
                self._current = None
            if not reply.strip():
                await self._fail(request, FAIL_EMPTY, "Could not answer: the model returned an empty reply")
                return
            span.set_attribute(attrs.OUTCOME, "answered")
            await self._append(ASSISTANT, reply, request.key)
            await self.status.answer_succeeded(request.key, ctx.input_tokens, ctx.output_tokens)
