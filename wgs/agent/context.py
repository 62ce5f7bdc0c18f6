"""Making a request fit the model's context window (pure; the HTTP parts are in openai_http).

- The window: from the server where it says (llama.cpp server `GET /props`, vLLM `max_model_len`
  in `/v1/models`, Ollama `POST /api/show`), else the `--context-window` flag, else
  DEFAULT_CONTEXT_WINDOW (conservative: most self-hosted servers run 2k-8k). `choose_window` picks.
- Tokens: counted by the server where it offers it (`POST /tokenize`), else estimated with
  `estimate_tokens` (UTF-8 bytes / 2.5: over-counts English ~4 chars/token and CJK ~1 char/token,
  rather than under-count and overflow). Each message costs MESSAGE_OVERHEAD more (chat template).
- History: `fit_history` keeps the system prompt and the newest user message always, then the most
  recent whole turns that fit `window - max_tokens`; a newest message that alone does not fit is
  refused (AnswerFailed FAIL_TOO_LARGE), never silently cut.
- Overflow replies: `is_context_error` recognises the servers' own words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from wgs.agent.errors import FAIL_TOO_LARGE, AnswerFailed

DEFAULT_CONTEXT_WINDOW = 4096
DEFAULT_MAX_TOKENS = 1024
MIN_CONTEXT_WINDOW = 256
MESSAGE_OVERHEAD = 8  # role markers and separators of a chat template, per message
REQUEST_OVERHEAD = 16  # the generation prompt, BOS, and slack
CHARS_PER_TOKEN = 2.5

SOURCE_SERVER = "server"
SOURCE_FLAG = "flag"
SOURCE_DEFAULT = "default"


@dataclass(frozen=True)
class Window:
    """The context window in use: tokens, and where the number comes from."""

    tokens: int
    source: str  # SOURCE_SERVER / SOURCE_FLAG / SOURCE_DEFAULT
    detail: str = ""  # e.g. "llama.cpp GET /props n_ctx"

    def describe(self) -> str:
        return f"{self.tokens} tokens ({self.source}{': ' + self.detail if self.detail else ''})"


@dataclass(frozen=True)
class ServerWindow:
    """What the server said about its window: `exact` is what it enforces; `upper_bound` is only the
    model's maximum (Ollama's model_info context_length: the runtime num_ctx may be smaller)."""

    tokens: int
    detail: str
    exact: bool = True


def choose_window(server: ServerWindow | None, flag: int) -> Window:
    """Server (exact) > flag > default; a server upper bound caps the flag/default."""
    if server is not None and server.exact:
        return Window(server.tokens, SOURCE_SERVER, server.detail)
    chosen = Window(flag, SOURCE_FLAG, "--context-window") if flag else Window(DEFAULT_CONTEXT_WINDOW, SOURCE_DEFAULT)
    if server is not None and server.tokens < chosen.tokens:
        return Window(server.tokens, SOURCE_SERVER, server.detail)
    return chosen


def reply_budget(window: int, max_tokens: int) -> int:
    """max_tokens as sent: what was asked, but never more than 3/4 of the window (room for the prompt)."""
    return max(1, min(max_tokens, window * 3 // 4))


def estimate_tokens(text: str) -> int:
    """Conservative token count of a text without a tokenizer."""
    return math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN)


TokenCount = Callable[[str], Awaitable[int]]


@dataclass(frozen=True)
class Fitted:
    messages: list[dict[str, str]]
    prompt_tokens: int  # counted/estimated tokens of what is sent
    turns_kept: int
    turns_dropped: int


async def fit_history(system_prompt: str, turns: list[tuple[str, str]], prompt: str, *, window: int,
                      max_tokens: int, count: TokenCount, max_turns: int | None = None) -> Fitted:
    """The messages to send: system + most recent whole turns that fit + the newest user message.

    `max_turns` caps the turns kept (used to cut further after an overflow). Raises
    AnswerFailed(FAIL_TOO_LARGE) when system prompt + newest message alone exceed the budget.
    """
    budget = window - max_tokens - REQUEST_OVERHEAD
    fixed = MESSAGE_OVERHEAD + await count(prompt)
    if system_prompt:
        fixed += MESSAGE_OVERHEAD + await count(system_prompt)
    if fixed > budget:
        raise AnswerFailed(
            f"the message is too long for the model: about {fixed} tokens with the system prompt, but the "
            f"context window is {window} tokens of which {max_tokens} are kept for the reply; "
            "send a shorter message (or raise the window/lower max_tokens)", FAIL_TOO_LARGE)
    used = fixed
    kept: list[tuple[str, str]] = []
    limit = len(turns) if max_turns is None else max(0, max_turns)
    for user, assistant in reversed(turns):
        if len(kept) >= limit:
            break
        cost = 2 * MESSAGE_OVERHEAD + await count(user) + await count(assistant)
        if used + cost > budget:
            break
        kept.append((user, assistant))
        used += cost
    kept.reverse()
    messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for user, assistant in kept:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": prompt})
    return Fitted(messages, used + REQUEST_OVERHEAD, len(kept), len(turns) - len(kept))


# The servers' own words for "the request does not fit" (checked lower-cased):
# - OpenAI: code "context_length_exceeded", "This model's maximum context length is N tokens ...";
# - vLLM: "This model's maximum context length is N tokens. However, you requested M tokens ..." and
#   "'max_tokens' is too large: N. This model's maximum context length is ...";
# - llama.cpp server: type "exceed_context_size_error", "the request exceeds the available context
#   size, try increasing it", "request (N tokens) exceeds the available context size (M tokens)",
#   and (older builds, HTTP 500) "Context size has been exceeded.";
# - llama-cpp-python: "Requested tokens (N) exceed context window of M".
_CONTEXT_PATTERNS = re.compile(
    r"context_length_exceeded|exceed_context_size_error|maximum context length|exceeds? the available context"
    r"|context size has been exceeded|exceed context window|context window exceeded|prompt is too long"
    r"|input is too long|too many tokens")


def is_context_error(text: str) -> bool:
    return bool(_CONTEXT_PATTERNS.search(text.lower()))


# The figures OpenAI-style context errors state in words (OpenAI, vLLM, llama-cpp-python):
# "maximum context length is 2048 tokens. However, you requested 2100 tokens (1600 in the messages,
# 500 in the completion)", "... your messages resulted in 2300 tokens", "... and your request has
# 1500 input tokens", "Requested tokens (2100) exceed context window of 2048".
_STATED_WINDOW = re.compile(r"maximum context length is (\d+) tokens|exceed context window of (\d+)")
_STATED_PROMPT = re.compile(r"\((\d+) in the messages|messages resulted in (\d+) tokens"
                            r"|request has (\d+) input tokens|requested tokens \((\d+)\)")


def stated_numbers(text: str) -> tuple[int | None, int | None]:
    """(prompt tokens, window) as a context error's message states them in words, when it does."""
    def first(pattern: re.Pattern[str]) -> int | None:
        m = pattern.search(text.lower())
        return int(next(g for g in m.groups() if g is not None)) if m else None

    return first(_STATED_PROMPT), first(_STATED_WINDOW)


def context_numbers(body: object) -> tuple[int | None, int | None]:
    """(n_prompt_tokens, n_ctx) when an error body carries them (llama.cpp exceed_context_size_error)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, None
    prompt, ctx = err.get("n_prompt_tokens"), err.get("n_ctx")
    return (prompt if isinstance(prompt, int) else None), (ctx if isinstance(ctx, int) else None)
