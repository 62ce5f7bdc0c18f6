"""What the agent reports about its own state, as events for a `StatusSink`.

The loop and the backends never talk to a store directly: they call a `Status`, which stamps each
event with the time, keeps the endpoint's outage state (one *waiting* event per outage, one *back*
event when it ends) and hands the event to the sink. A sink that fails never fails an answer: its
errors are logged and dropped.

Sinks: `LoggingSink` (a log line per event, the default), `FanOutSink` (several at once); the
service side adds one that stores the events in the chat's runtime (last answer error, waiting
condition, token totals) and streams partial replies to ChatService clients.

Events (each has `at`, a timezone-aware UTC datetime):
- `AnswerFailedEvent(request_id, kind, message)`: an answer failed (kind: `errors.FAIL_*`); the
  message is what the SYSTEM_ERROR message says (secrets redacted). Sticky until a later success.
- `AnswerSucceededEvent(request_id, input_tokens, output_tokens)`: an ASSISTANT reply was stored.
- `EndpointWaitingEvent(reason, since, next_attempt_at, repeat)`: the endpoint is down/loading;
  the agent retries with capped backoff and answers the queued messages once it is back. Sent when
  the outage begins or its reason changes (`repeat` False), and again before each further attempt
  with its new time (`repeat` True: same outage, same reason).
- `EndpointBackEvent(waited_seconds)`: the endpoint answers again.
- `TokenUsageEvent(request_id, input_tokens, output_tokens, source)`: tokens of one answer
  (`source`: "server" when the endpoint reported usage, "estimate" otherwise).
- `PartialReplyEvent(request_id, delta, text)`: reply text as it streams. `text` is the whole
  reply so far and is authoritative: after a retry it starts again (replace, don't append).
- `ContextWindowEvent(tokens, source, detail, max_tokens)`: the context window in use and where it
  comes from (`source`: "server", "flag" or "default"; `detail` e.g. "llama.cpp GET /props n_ctx").

Methods of a sink are coroutines and should return quickly (buffer, don't block on I/O per token):
`partial_reply` is called for every streamed chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

log = logging.getLogger("wgs.agent.status")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AnswerFailedEvent:
    request_id: str
    kind: str
    message: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class AnswerSucceededEvent:
    request_id: str
    input_tokens: int = 0
    output_tokens: int = 0
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class EndpointWaitingEvent:
    reason: str
    since: datetime
    at: datetime = field(default_factory=utcnow)
    next_attempt_at: datetime | None = None  # when the agent tries the endpoint next, if known
    repeat: bool = False  # same outage and reason as the last event: only next_attempt_at is new


@dataclass(frozen=True)
class EndpointBackEvent:
    waited_seconds: float
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class TokenUsageEvent:
    request_id: str
    input_tokens: int
    output_tokens: int
    source: str = "server"
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class PartialReplyEvent:
    request_id: str
    delta: str
    text: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class ContextWindowEvent:
    tokens: int
    source: str  # "server", "flag" or "default"
    detail: str = ""
    max_tokens: int = 0
    at: datetime = field(default_factory=utcnow)


class StatusSink(Protocol):
    """Receives the agent's status events (see the module docstring)."""

    async def answer_failed(self, event: AnswerFailedEvent) -> None: ...

    async def answer_succeeded(self, event: AnswerSucceededEvent) -> None: ...

    async def endpoint_waiting(self, event: EndpointWaitingEvent) -> None: ...

    async def endpoint_back(self, event: EndpointBackEvent) -> None: ...

    async def token_usage(self, event: TokenUsageEvent) -> None: ...

    async def partial_reply(self, event: PartialReplyEvent) -> None: ...

    async def context_window(self, event: ContextWindowEvent) -> None: ...


class LoggingSink:
    """Logs each event (partial replies at DEBUG only)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.log = logger

    async def answer_failed(self, event: AnswerFailedEvent) -> None:
        self.log.warning("answer failed (%s): %s", event.kind, event.message,
                         extra={"request_id": event.request_id, "failure": event.kind})

    async def answer_succeeded(self, event: AnswerSucceededEvent) -> None:
        self.log.info("answered", extra={"request_id": event.request_id, "input_tokens": event.input_tokens,
                                         "output_tokens": event.output_tokens})

    async def endpoint_waiting(self, event: EndpointWaitingEvent) -> None:
        # One WARNING per outage (and per new reason); each further attempt only at DEBUG.
        self.log.log(logging.DEBUG if event.repeat else logging.WARNING, "waiting for the endpoint since %s: %s",
                     event.since.isoformat(timespec="seconds"), event.reason)

    async def endpoint_back(self, event: EndpointBackEvent) -> None:
        self.log.info("endpoint back after %.1fs", event.waited_seconds)

    async def token_usage(self, event: TokenUsageEvent) -> None:
        self.log.info("tokens: %d in, %d out (%s)", event.input_tokens, event.output_tokens, event.source,
                      extra={"request_id": event.request_id})

    async def partial_reply(self, event: PartialReplyEvent) -> None:
        self.log.debug("partial reply: %d chars", len(event.text), extra={"request_id": event.request_id})

    async def context_window(self, event: ContextWindowEvent) -> None:
        self.log.info("context window %d tokens (%s%s), max_tokens %d", event.tokens, event.source,
                      f": {event.detail}" if event.detail else "", event.max_tokens)


class FanOutSink:
    """Hands every event to each of several sinks, in order."""

    def __init__(self, sinks: Sequence[StatusSink]) -> None:
        self.sinks = list(sinks)

    async def _each(self, name: str, event: object) -> None:
        for sink in self.sinks:
            await getattr(sink, name)(event)

    async def answer_failed(self, event: AnswerFailedEvent) -> None:
        await self._each("answer_failed", event)

    async def answer_succeeded(self, event: AnswerSucceededEvent) -> None:
        await self._each("answer_succeeded", event)

    async def endpoint_waiting(self, event: EndpointWaitingEvent) -> None:
        await self._each("endpoint_waiting", event)

    async def endpoint_back(self, event: EndpointBackEvent) -> None:
        await self._each("endpoint_back", event)

    async def token_usage(self, event: TokenUsageEvent) -> None:
        await self._each("token_usage", event)

    async def partial_reply(self, event: PartialReplyEvent) -> None:
        await self._each("partial_reply", event)

    async def context_window(self, event: ContextWindowEvent) -> None:
        await self._each("context_window", event)


class Status:
    """The agent's reporter: stamps events, tracks the endpoint's outage, shields callers from sink errors."""

    def __init__(self, sink: StatusSink, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.sink = sink
        self._clock = clock
        self.waiting_since: datetime | None = None
        self.waiting_reason = ""

    async def _send(self, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception:  # a broken sink must not break answering
            log.exception("status sink failed")

    @property
    def waiting(self) -> bool:
        return self.waiting_since is not None

    async def endpoint_waiting(self, reason: str, retry_in: float | None = None) -> None:
        """The endpoint is unavailable. Reported when the outage begins and when its reason changes;
        with `retry_in` (seconds until the next attempt) also before every further attempt, so the
        chat can say when the agent tries next."""
        repeat = self.waiting_since is not None and reason == self.waiting_reason
        if repeat and retry_in is None:
            return
        now = self._clock()
        if self.waiting_since is None:
            self.waiting_since = now
        self.waiting_reason = reason
        next_at = now + timedelta(seconds=retry_in) if retry_in is not None else None
        await self._send(self.sink.endpoint_waiting(EndpointWaitingEvent(reason, self.waiting_since, now, next_at,
                                                                         repeat)))

    async def endpoint_back(self) -> None:
        """The endpoint answered; reported only if it was being waited for."""
        if self.waiting_since is None:
            return
        now = self._clock()
        waited = (now - self.waiting_since).total_seconds()
        self.waiting_since, self.waiting_reason = None, ""
        await self._send(self.sink.endpoint_back(EndpointBackEvent(waited, now)))

    async def answer_failed(self, request_id: str, kind: str, message: str) -> None:
        await self._send(self.sink.answer_failed(AnswerFailedEvent(request_id, kind, message, self._clock())))

    async def answer_succeeded(self, request_id: str, input_tokens: int = 0, output_tokens: int = 0) -> None:
        await self._send(self.sink.answer_succeeded(
            AnswerSucceededEvent(request_id, input_tokens, output_tokens, self._clock())))

    async def token_usage(self, request_id: str, input_tokens: int, output_tokens: int, source: str) -> None:
        await self._send(self.sink.token_usage(
            TokenUsageEvent(request_id, input_tokens, output_tokens, source, self._clock())))

    async def partial_reply(self, request_id: str, delta: str, text: str) -> None:
        await self._send(self.sink.partial_reply(PartialReplyEvent(request_id, delta, text, self._clock())))

    async def context_window(self, tokens: int, source: str, detail: str = "", max_tokens: int = 0) -> None:
        await self._send(self.sink.context_window(ContextWindowEvent(tokens, source, detail, max_tokens,
                                                                     self._clock())))


@dataclass
class AnswerContext:
    """What a backend gets for one answer: the request it answers and where to report progress."""

    request_id: str
    status: Status
    input_tokens: int = 0  # filled by the backend when known (usage), for the success event
    output_tokens: int = 0

    async def partial(self, delta: str, text: str) -> None:
        await self.status.partial_reply(self.request_id, delta, text)

    async def usage(self, input_tokens: int, output_tokens: int, source: str = "server") -> None:
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        await self.status.token_usage(self.request_id, input_tokens, output_tokens, source)
