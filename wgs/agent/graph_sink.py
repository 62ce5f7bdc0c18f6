"""The status sink that makes the agent's state the chat's state: events go to the graph.

- answer failures, waiting for the endpoint (and its end), the context window and token usage
  become the chat's AgentStatus (GraphService.ReportAgentStatus), so `wgs chat show`/`list` and
  GetChat say why a live agent does not answer;
- pieces of a reply being generated go to the chat's message watchers
  (GraphService.PublishPartialMessage), throttled: a piece goes out at once when the last call
  was FLUSH_SECONDS ago or more (so the first piece of a reply never waits), else when that
  interval is up; a fast stream does not become one RPC per token, and no piece waits longer than
  FLUSH_SECONDS for its call. Each call carries the text as it is when the call is made, so pieces
  that arrive while a call is in flight (or queued behind a report) ride on the next one.

Reports are sent in order by one background task and never hold up an answer. A report the graph
cannot take (down or restarting: UNAVAILABLE, DEADLINE_EXCEEDED) is sent again, with backoff, until
it is taken — it may be the last one for a long time (an agent waiting for its endpoint reports that
once), and token counts add up; one it refuses (the run is no longer the chat's live run) is logged
and dropped. A reply piece that cannot be published is dropped: the next publish sends everything
the watchers do not have yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc

from wgs.agent.status import (
    AnswerFailedEvent,
    AnswerSucceededEvent,
    ContextWindowEvent,
    EndpointBackEvent,
    EndpointWaitingEvent,
    PartialReplyEvent,
    TokenUsageEvent,
)
from wgs.common.clients import deadline
from wgs.v1 import graph_pb2, graph_pb2_grpc, plan_pb2, runtime_pb2

log = logging.getLogger("wgs.agent.graph_sink")

# A piece waits at most this long for its call; the rest of the way (graph, supervisor, client) takes
# a few ms more. 25 ms keeps p99 within the 100 ms goal on a busy 2-core machine where 50 ms did not,
# for ~40 calls a second per streaming reply instead of ~20 (benchmarks/stream_latency.py;
# docs/performance.md, "Streaming replies").
FLUSH_SECONDS = 0.025
MAX_PIECE = 60_000  # characters per PublishPartialMessage (the graph takes up to 64 KiB)
QUEUE_LIMIT = 1000
OUTAGE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
RETRY_FIRST_SECONDS = 0.2  # a report the graph could not take is sent again after this, doubling
RETRY_MAX_SECONDS = 5.0

WINDOW_SOURCES = {
    "server": plan_pb2.CHOICE_SOURCE_SERVER,
    "default": plan_pb2.CHOICE_SOURCE_BUILTIN,
}
# Where the --context-window flag came from, as the plan said (WGS_CONTEXT_WINDOW_SOURCE).
FLAG_SOURCES = {
    "request": plan_pb2.CHOICE_SOURCE_REQUEST,
    "chat": plan_pb2.CHOICE_SOURCE_CHAT,
    "config_endpoint": plan_pb2.CHOICE_SOURCE_CONFIG_ENDPOINT,
}


class GraphStatusSink:
    def __init__(self, stub: graph_pb2_grpc.GraphServiceAsyncStub, chat_id: str, run_number: int, *,
                 flag_source: str = "") -> None:
        self._stub = stub
        self.chat_id = chat_id
        self.run = run_number
        self._flag_source = FLAG_SOURCES.get(flag_source, plan_pb2.CHOICE_SOURCE_CONFIG_ENDPOINT)
        # (call, resend through an outage): reports are resent, reply pieces are not
        self._queue: asyncio.Queue[tuple[Callable[[], Awaitable[object]], bool]] = asyncio.Queue(QUEUE_LIMIT)
        self._worker: asyncio.Task[None] | None = None
        self._sent: dict[str, str] = {}  # request id -> reply text the watchers have
        self._latest: dict[str, str] = {}  # request id -> reply text so far
        self._flush: asyncio.TimerHandle | None = None  # the next publish, when the interval is up
        self._publish_queued = False  # a publish waits in the queue: it will take the latest text
        self._last_publish = float("-inf")  # loop time of the last publish

    # -- plumbing ----------------------------------------------------------------------------

    def _enqueue(self, call: Callable[[], Awaitable[object]], resend: bool = False) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._work())
        if self._queue.full():  # never block an answer: the oldest report loses
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self._queue.task_done()
        self._queue.put_nowait((call, resend))

    async def _work(self) -> None:
        while True:
            call, resend = await self._queue.get()
            try:
                delay = RETRY_FIRST_SECONDS
                while True:
                    try:
                        await call()
                        break
                    except grpc.aio.AioRpcError as exc:
                        if not (resend and exc.code() in OUTAGE_CODES):
                            level = logging.DEBUG if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else logging.WARNING
                            log.log(level, "status report not taken: %s: %s", exc.code().name, exc.details())
                            break
                        log.log(logging.WARNING if delay == RETRY_FIRST_SECONDS else logging.DEBUG,
                                "status report not taken: %s: %s; sending it again in %.1fs",
                                exc.code().name, exc.details(), delay)
                    await asyncio.sleep(delay)
                    delay = min(RETRY_MAX_SECONDS, delay * 2)
            finally:
                self._queue.task_done()

    def _report(self, **fields: object) -> None:
        req = graph_pb2.ReportAgentStatusRequest(chat_id=self.chat_id, run_number=self.run, **fields)  # type: ignore[arg-type]
        self._enqueue(lambda: self._stub.ReportAgentStatus(req, timeout=deadline()), resend=True)

    async def close(self, grace: float = 2.0) -> None:
        """Send what is queued (for at most `grace` seconds), then stop the worker."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if any(text != self._sent.get(rid, "") for rid, text in self._latest.items()):
            self._queue_publish()
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker

    # -- events ------------------------------------------------------------------------------

    async def answer_failed(self, event: AnswerFailedEvent) -> None:
        self._finish(event.request_id)
        err = runtime_pb2.AnswerError(error_class=event.kind[:64], message=event.message[:8000],
                                      request_id=event.request_id)
        err.at.FromDatetime(event.at)
        self._report(answer_error=err)

    async def answer_succeeded(self, event: AnswerSucceededEvent) -> None:
        self._finish(event.request_id)
        self._report(answer_succeeded=True)

    async def endpoint_waiting(self, event: EndpointWaitingEvent) -> None:
        wait = runtime_pb2.EndpointWait(reason=event.reason[:8000])
        wait.since.FromDatetime(event.since)
        if event.next_attempt_at is not None:
            wait.next_attempt_at.FromDatetime(event.next_attempt_at)
        self._report(waiting=wait)

    async def endpoint_back(self, event: EndpointBackEvent) -> None:
        self._report(endpoint_ok=True)

    async def token_usage(self, event: TokenUsageEvent) -> None:
        self._report(input_tokens=max(0, event.input_tokens), output_tokens=max(0, event.output_tokens))

    async def context_window(self, event: ContextWindowEvent) -> None:
        source = WINDOW_SOURCES.get(event.source, self._flag_source)
        self._report(context_window=max(0, event.tokens), context_window_source=source,
                     context_window_detail=_one_line(event.detail)[:200])

    async def partial_reply(self, event: PartialReplyEvent) -> None:
        self._latest[event.request_id] = event.text
        if self._publish_queued or self._flush is not None:
            return  # the publish on its way takes this text too
        loop = asyncio.get_running_loop()
        wait = self._last_publish + FLUSH_SECONDS - loop.time()
        if wait <= 0:
            self._queue_publish()  # e.g. the first piece of a reply: time to first token
        else:
            self._flush = loop.call_later(wait, self._queue_publish)

    # -- partial replies ---------------------------------------------------------------------

    def _queue_publish(self) -> None:
        self._flush = None
        if not self._publish_queued:
            self._publish_queued = True
            self._enqueue(self._publish_latest)

    async def _publish_latest(self) -> None:
        """Send each reply's text that the watchers do not have yet (run by the worker, in order)."""
        self._publish_queued = False
        self._last_publish = asyncio.get_running_loop().time()
        for request_id, text in list(self._latest.items()):
            sent = self._sent.get(request_id, "")
            if text == sent:
                continue
            offset = len(sent) if text.startswith(sent) else 0  # a retried reply starts again
            while offset < len(text):
                chunk = text[offset:offset + MAX_PIECE]
                await self._stub.PublishPartialMessage(graph_pb2.PublishPartialMessageRequest(
                    chat_id=self.chat_id, run_number=self.run, request_id=request_id, offset=offset, text=chunk),
                    timeout=deadline())
                offset += len(chunk)
                if request_id in self._latest:  # not finished meanwhile
                    self._sent[request_id] = text[:offset]

    def _finish(self, request_id: str) -> None:
        self._latest.pop(request_id, None)
        self._sent.pop(request_id, None)


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)
