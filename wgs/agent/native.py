"""Backend of `wgs-agent native`: answers with an OpenAI-compatible endpoint.

Policy on top of the HTTP client (openai_http):
- start: check the endpoint (waiting while it is down or loading), then learn its context window
  (server > --context-window > default) and report it;
- each answer: fit the history to `window - max_tokens` (tokens counted by the server where it
  offers /tokenize), stream the reply (partials to the status), report token usage;
- an outage (EndpointUnavailable) at start or mid-answer is waited out: a *waiting for endpoint*
  status, retries with capped backoff, then the same request again — the agent never exits for it;
- an overflow (ContextOverflow, with the server's own words: for llama.cpp's empty 200 stream the
  client obtains them with one non-streamed request) is not retried blindly; it is retried once:
  with a smaller max_tokens that fits when the messages themselves fit (the server's figures say
  so: vLLM's and OpenAI's prompt + max_tokens overflow), or when there are no earlier turns to cut
  (then by the server's figures, else by a recount of the prompt); otherwise with the history cut
  further (half the turns). Then it fails with the server's words.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from wgs.agent.context import (
    MESSAGE_OVERHEAD,
    REQUEST_OVERHEAD,
    SOURCE_SERVER,
    Fitted,
    Window,
    choose_window,
    estimate_tokens,
    fit_history,
    reply_budget,
)
from wgs.agent.conversation import Turn
from wgs.agent.errors import EXIT_UNREACHABLE, FAIL_CONTEXT, AgentFatal, AnswerFailed
from wgs.agent.openai_http import (
    Completion,
    ContextOverflow,
    EndpointUnavailable,
    GenerationSettings,
    OpenAIClient,
    Sleeper,
    backoff_delay,
)
from wgs.agent.status import AnswerContext, Status

log = logging.getLogger("wgs.agent.native")

T = TypeVar("T")

MIN_REPLY_TOKENS = 16  # a retry with a smaller max_tokens leaves the reply at least this much room


class NativeBackend:
    def __init__(self, client: OpenAIClient, system_prompt: str, gen: GenerationSettings, *,
                 context_window_flag: int = 0, sleep: Sleeper = asyncio.sleep,
                 give_up_after: float = 0.0) -> None:
        self.client = client
        self.give_up_after = give_up_after  # > 0: an outage longer than this is fatal (exit 3)
        self.system_prompt = system_prompt
        self.gen = gen
        self.flag = context_window_flag
        self._sleep = sleep
        self.description = f"native model={client.s.model} endpoint={client.s.base_url}"
        self.window = choose_window(None, context_window_flag)
        self.max_tokens = reply_budget(self.window.tokens, gen.max_tokens)
        self._counts: dict[str, int] = {}
        self._server_counts = False  # the server's /tokenize answers
        self._factor = 1.0  # grows after an overflow when tokens are only estimated
        self._rediscover = False

    # ---- endpoint availability -----------------------------------------------------------

    async def _available(self, op: Callable[[], Awaitable[T]], status: Status) -> T:
        """Run `op` until the endpoint is available for it: while it raises EndpointUnavailable,
        report *waiting*, back off (capped, Retry-After honoured) and try again."""
        attempt = 0
        since = time.monotonic()
        while True:
            try:
                result = await op()
            except EndpointUnavailable as exc:
                waited = time.monotonic() - since
                if self.give_up_after > 0 and waited >= self.give_up_after:
                    raise AgentFatal(EXIT_UNREACHABLE, f"{exc.reason} (gave up after waiting {waited:.0f}s; "
                                     "WGS_AGENT_ENDPOINT_WAIT_SECONDS)") from None
                delay = backoff_delay(attempt, self.client.s.backoff_base, self.client.s.backoff_cap, exc.retry_after)
                await status.endpoint_waiting(exc.reason, delay)
                log.info("endpoint unavailable (%s); next try in %.1fs", exc.reason, delay)
                await self._sleep(delay)
                attempt += 1
                self._rediscover = True
                continue
            await status.endpoint_back()
            return result

    async def start(self, status: Status) -> None:
        await self._available(self.client.check, status)
        self._rediscover = False
        await self._learn_window(status)

    async def _learn_window(self, status: Status) -> None:
        info = await self.client.discover()
        self.window = choose_window(info.window, self.flag)
        self.max_tokens = reply_budget(self.window.tokens, self.gen.max_tokens)
        self._server_counts = info.tokenize
        self._counts.clear()
        log.info("server %s; context window %s; max_tokens %d; tokens %s", info.kind, self.window.describe(),
                 self.max_tokens, "counted by the server" if info.tokenize else "estimated")
        await status.context_window(self.window.tokens, self.window.source, self.window.detail, self.max_tokens)

    # ---- tokens ---------------------------------------------------------------------------

    async def _count(self, text: str) -> int:
        cached = self._counts.get(text)
        if cached is not None:
            return cached
        n: int | None = None
        if self._server_counts:
            n = await self.client.count_tokens(text)
            if n is None:
                log.warning("the server's /tokenize failed; estimating tokens from now on")
                self._server_counts = False
        if n is None:
            n = int(estimate_tokens(text) * self._factor) + 1
        self._counts[text] = n
        return n

    async def _fit(self, turns: list[tuple[str, str]], prompt: str, max_turns: int | None = None) -> Fitted:
        return await fit_history(self.system_prompt, turns, prompt, window=self.window.tokens,
                                 max_tokens=self.max_tokens, count=self._count, max_turns=max_turns)

    # ---- answering ------------------------------------------------------------------------

    async def _send(self, fitted: Fitted, ctx: AnswerContext, *, stream: bool = True,
                    max_tokens: int | None = None) -> Completion:
        def op() -> Awaitable[Completion]:
            return self.client.complete(fitted.messages, self.gen, stream=stream,
                                        on_delta=ctx.partial if stream else None,
                                        max_tokens=max_tokens if max_tokens is not None else self.max_tokens)

        return await self._available(op, ctx.status)

    async def answer(self, turns: list[Turn], prompt: str, ctx: AnswerContext) -> str:
        if self._rediscover:  # the server was away: it may have come back with another window
            self._rediscover = False
            await self._learn_window(ctx.status)
        history = [(t.user, t.assistant) for t in turns]
        fitted = await self._fit(history, prompt)
        if fitted.turns_dropped:
            log.info("history cut to fit %s: %d earlier turns kept, %d left out", self.window.describe(),
                     fitted.turns_kept, fitted.turns_dropped)
        try:
            result = await self._send(fitted, ctx)
        except ContextOverflow as first:
            result, fitted = await self._after_overflow(first, history, prompt, fitted, ctx)
        await self._report_usage(result, fitted, ctx)
        return result.text

    async def _after_overflow(self, first: ContextOverflow, history: list[tuple[str, str]], prompt: str,
                              fitted: Fitted, ctx: AnswerContext) -> tuple[Completion, Fitted]:
        sent_max = self.max_tokens
        await self._learn_overflow(first, fitted, ctx.status)
        last = first
        room = await self._reply_room(first, fitted, sent_max)
        messages_fit = first.prompt_tokens is not None and first.window is not None \
            and first.prompt_tokens < first.window
        if room is not None and (messages_fit or fitted.turns_kept == 0):
            # Only the room kept for the reply overflowed (or there is no history left to cut): the
            # same messages with a max_tokens that fits.
            log.warning("the request did not fit (%s); retrying once with max_tokens %d instead of %d",
                        first.server_message, room, sent_max)
            try:
                return await self._send(fitted, ctx, max_tokens=room), fitted
            except ContextOverflow as second:
                await self._learn_overflow(second, fitted, ctx.status)
                raise AnswerFailed(f"the request does not fit the model's context window ({self.window.describe()}, "
                                   f"{fitted.turns_kept} earlier turns sent, max_tokens {room}); the server says: "
                                   f"{second.server_message or 'no reason given'}", FAIL_CONTEXT) from None
        if fitted.turns_kept > 0:
            cut = await self._fit(history, prompt, max_turns=fitted.turns_kept // 2)
            log.warning("the request did not fit (%s); retrying once with %d of %d earlier turns",
                        first.server_message, cut.turns_kept, fitted.turns_kept)
            try:
                return await self._send(cut, ctx), cut
            except ContextOverflow as second:
                await self._learn_overflow(second, cut, ctx.status)
                last, fitted = second, cut
        raise AnswerFailed(f"the request does not fit the model's context window ({self.window.describe()}, "
                           f"{fitted.turns_kept} earlier turns sent); the server says: "
                           f"{last.server_message or 'no reason given'}", FAIL_CONTEXT)

    async def _reply_room(self, exc: ContextOverflow, fitted: Fitted, sent_max: int) -> int | None:
        """A max_tokens smaller than the one sent that would let these messages fit, or None: from the
        server's own figures (window - its prompt count) when it gave them, else — with estimated
        tokens only — from a recount of the messages at the (now more conservative) estimate."""
        window, counted = exc.window, exc.prompt_tokens
        if window is not None and counted is not None:
            room = window - counted
        elif not self._server_counts:
            tokens = REQUEST_OVERHEAD
            for m in fitted.messages:
                tokens += MESSAGE_OVERHEAD + await self._count(m["content"])
            room = self.window.tokens - tokens
        else:
            return None  # the server counted and the window is its own: a smaller reply would not help
        return room if MIN_REPLY_TOKENS <= room < sent_max else None

    async def _learn_overflow(self, exc: ContextOverflow, fitted: Fitted, status: Status) -> None:
        """After an overflow: trust the server's n_ctx if it gave one, and count more conservatively."""
        if exc.n_ctx and exc.n_ctx < self.window.tokens:
            self.window = Window(exc.n_ctx, SOURCE_SERVER, "n_ctx in the server's context error")
            self.max_tokens = reply_budget(self.window.tokens, self.gen.max_tokens)
            await status.context_window(self.window.tokens, self.window.source, self.window.detail, self.max_tokens)
        if not self._server_counts:
            factor = self._factor * 1.25
            if exc.n_prompt_tokens and fitted.prompt_tokens:
                factor = max(factor, 1.1 * exc.n_prompt_tokens / fitted.prompt_tokens * self._factor)
            self._factor = min(4.0, factor)
            self._counts.clear()

    async def _report_usage(self, result: Completion, fitted: Fitted, ctx: AnswerContext) -> None:
        if result.input_tokens is not None and result.output_tokens is not None:
            await ctx.usage(result.input_tokens, result.output_tokens, "server")
        else:
            await ctx.usage(result.input_tokens if result.input_tokens is not None else fitted.prompt_tokens,
                            result.output_tokens if result.output_tokens is not None
                            else estimate_tokens(result.text), "estimate")

    async def interrupt(self) -> None:
        return None  # cancelling the task closed the HTTP stream

    async def close(self) -> None:
        await self.client.aclose()
