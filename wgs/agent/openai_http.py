"""OpenAI-compatible HTTP client of the native agent, plus the pure helpers it is built from.

- base URL: `/v1` appended when missing (`normalize_base_url`);
- model: a known provider prefix is stripped (`strip_provider_prefix`, list as upstream);
- key: `Authorization: Bearer <WGS_API_KEY>`, never logged or put into an error message;
- timeouts: connect and read (read = longest silence between bytes of a streamed reply);
- retries: bounded, exponential backoff on 429/5xx and on a connection lost mid-reply, honouring
  Retry-After (seconds or HTTP date), capped; never on 400/401/403/404;
- history: truncated to the context window (tokens ~ chars/4) instead of looping on 400s;
- TLS verification always on; WGS_CA_BUNDLE adds a custom CA bundle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from wgs.agent.errors import (
    EXIT_AUTH,
    EXIT_TLS,
    EXIT_UNKNOWN_MODEL,
    EXIT_UNREACHABLE,
    AgentFatal,
    AnswerFailed,
)
from wgs.common.validation import split_model

log = logging.getLogger("wgs.agent.http")


NO_RETRY_STATUSES = {400, 401, 403, 404, 405, 413, 422}


def strip_provider_prefix(model: str) -> str:
    """`nex:qwen3-coder` -> `qwen3-coder`; an unknown prefix (`deepseek-coder-v2:16b`) is kept."""
    return split_model(model)[1]


def normalize_base_url(url: str) -> str:
    """`https://h:30000` -> `https://h:30000/v1`; `.../v1/` -> `.../v1`."""
    base = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/]", base):
        raise ValueError(f"endpoint {url!r} is not an http(s) URL")
    if not base.endswith("/v1"):
        base += "/v1"
    return base


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Delay before retry number `attempt` (0-based): Retry-After if given, else base*2^attempt; capped."""
    if retry_after is not None:
        return min(cap, retry_after)
    return min(cap, base * (2**attempt))


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters per token) plus per-message overhead."""
    return len(text) // 4 + 4


def truncate_history(system: dict[str, str] | None, messages: list[dict[str, str]],
                     context_window: int, reserve: int) -> list[dict[str, str]]:
    """Keep the system prompt and the most recent messages that fit in `context_window - reserve`.

    The last message (the question being asked) is always kept; if it alone is too long its
    beginning is cut, so the request is never one the server must reject for length.
    """
    budget = max(64, context_window - reserve)
    out: list[dict[str, str]] = []
    used = estimate_tokens(system["content"]) if system else 0
    for i, msg in enumerate(reversed(messages)):
        cost = estimate_tokens(msg["content"])
        if i == 0 and used + cost > budget:
            keep_chars = max(0, (budget - used - 4) * 4)
            msg = {**msg, "content": msg["content"][-keep_chars:] if keep_chars else ""}
            cost = estimate_tokens(msg["content"])
        elif used + cost > budget:
            break
        out.append(msg)
        used += cost
    out.reverse()
    # A history should start with a user turn.
    while len(out) > 1 and out[0]["role"] != "user":
        out.pop(0)
    return ([system] if system else []) + out


def parse_sse_line(line: str) -> dict[str, Any] | str | None:
    """One line of a text/event-stream: a JSON payload (dict), "[DONE]", or None for other lines."""
    if not line.startswith("data:"):
        return None  # comments (":"), event:, id:, blank separators
    payload = line[5:].strip()
    if not payload:
        return None
    if payload == "[DONE]":
        return "[DONE]"
    try:
        doc = json.loads(payload)
    except json.JSONDecodeError:
        raise AnswerFailed(f"endpoint sent a malformed stream line: {payload[:200]!r}") from None
    return doc if isinstance(doc, dict) else None


def chunk_text(chunk: dict[str, Any]) -> tuple[str, str | None]:
    """(content delta, finish_reason) of one streamed chat.completion.chunk."""
    if "error" in chunk:
        raise AnswerFailed(f"endpoint reported an error mid-reply: {error_text(chunk)}")
    choices = chunk.get("choices") or []
    if not choices:
        return "", None
    choice = choices[0] or {}
    delta = choice.get("delta") or choice.get("message") or {}
    content = delta.get("content") or ""
    return (content if isinstance(content, str) else ""), choice.get("finish_reason")


def collect_sse(lines: Iterable[str]) -> tuple[str, bool]:
    """Assemble a streamed reply; returns (text, complete) where complete means [DONE] or a
    finish_reason was seen (otherwise the stream was cut)."""
    parts: list[str] = []
    complete = False
    for line in lines:
        item = parse_sse_line(line)
        if item is None:
            continue
        if item == "[DONE]":
            return "".join(parts), True
        assert isinstance(item, dict)
        text, finish = chunk_text(item)
        parts.append(text)
        if finish:
            complete = True
    return "".join(parts), complete


def error_text(body: Any) -> str:
    """A short message from an OpenAI-style error body (or raw text)."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        if body.get("message"):
            return str(body["message"])[:300]
        return json.dumps(body)[:300]
    return str(body).strip()[:300]


def _body_error(resp: httpx.Response) -> str:
    try:
        return error_text(resp.json())
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return error_text(resp.text)


def is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen) or "CERTIFICATE" in str(seen).upper():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe_transport_error(exc: BaseException) -> str:
    """`[Errno 111] Connection refused` -> `connection refused`; timeouts named as such."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, httpx.ReadTimeout):
        return "no response (read timed out)"
    seen: BaseException | None = exc
    for _ in range(8):  # prefer the OS error at the root ("connection refused", "name not known")
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message or seen.reason}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS error: {seen.reason or seen}"
        if isinstance(seen, OSError) and seen.errno is not None:
            reason = os.strerror(seen.errno) if seen.errno > 0 else str(seen.strerror or seen)
            return reason[:1].lower() + reason[1:]
        seen = seen.__cause__ or seen.__context__
    text = str(exc) or type(exc).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.strip())
    text = text.splitlines()[0] if text else type(exc).__name__
    return text[:1].lower() + text[1:] if text else type(exc).__name__


@dataclass(frozen=True)
class HttpSettings:
    endpoint: str  # as given, for messages
    base_url: str  # normalized, ends with /v1
    model: str  # without provider prefix
    api_key: str = ""
    ca_bundle: str = ""
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_retries: int = 4
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    context_window: int = 32768
    max_reply_tokens: int = 4096


Sleeper = Callable[[float], Awaitable[None]]


class OpenAIClient:
    """Talks to one OpenAI-compatible endpoint for one model."""

    def __init__(self, settings: HttpSettings, *, sleep: Sleeper = asyncio.sleep,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.s = settings
        self._sleep = sleep
        verify: ssl.SSLContext | bool = True
        if settings.ca_bundle:
            verify = ssl.create_default_context(cafile=settings.ca_bundle)
        headers = {"Accept": "application/json"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._client = httpx.AsyncClient(
            base_url=settings.base_url,
            headers=headers,
            verify=verify,
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout,
                                  pool=settings.connect_timeout),
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- start-up check -------------------------------------------------------------------

    async def check(self) -> list[str]:
        """Verify the endpoint answers, accepts the key and lists the model.

        Raises AgentFatal with the exit code of the failure class. An endpoint without a model
        list (404 on /models) or with an empty one is accepted: the model is checked on use.
        """
        where = f"endpoint {self.s.endpoint}"
        resp: httpx.Response | None = None
        for attempt in range(self.s.max_retries + 1):
            try:
                resp = await self._client.get("/models", timeout=httpx.Timeout(
                    min(self.s.read_timeout, 30.0), connect=self.s.connect_timeout))
            except httpx.TransportError as exc:
                if is_tls_error(exc):
                    raise AgentFatal(EXIT_TLS, f"{where}: TLS failure: {describe_transport_error(exc)}"
                                     + (" (set WGS_CA_BUNDLE for a custom CA)" if not self.s.ca_bundle else "")
                                     ) from None
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    raise AgentFatal(EXIT_UNREACHABLE,
                                     f"{where} unreachable: {describe_transport_error(exc)}") from None
                if attempt < self.s.max_retries:
                    await self._sleep(backoff_delay(attempt, self.s.backoff_base, self.s.backoff_cap))
                    continue
                raise AgentFatal(EXIT_UNREACHABLE,
                                 f"{where} unreachable: {describe_transport_error(exc)}") from None
            if resp.status_code == 429 or resp.status_code >= 500:
                if attempt < self.s.max_retries:
                    ra = parse_retry_after(resp.headers.get("retry-after"))
                    await self._sleep(backoff_delay(attempt, self.s.backoff_base, self.s.backoff_cap, ra))
                    continue
                raise AgentFatal(EXIT_UNREACHABLE, f"{where} unavailable: HTTP {resp.status_code} "
                                 f"on GET /models after {attempt + 1} attempts: {_body_error(resp)}")
            break
        assert resp is not None
        if resp.status_code in (401, 403):
            hint = "check the API key (WGS_API_KEY)" if self.s.api_key else "no API key was given (WGS_API_KEY)"
            raise AgentFatal(EXIT_AUTH, f"{where} refused authentication: HTTP {resp.status_code}; {hint}")
        if resp.status_code == 404:
            log.warning("endpoint has no model list (404 on /models); model checked on first use")
            return []
        if resp.status_code != 200:
            raise AgentFatal(EXIT_UNREACHABLE,
                             f"{where} answered GET /models with HTTP {resp.status_code}: {_body_error(resp)}")
        try:
            data = resp.json().get("data") or []
            ids = [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]
        except (ValueError, AttributeError):
            raise AgentFatal(EXIT_UNREACHABLE,
                             f"{where} is not OpenAI-compatible: GET /models did not return a model list") from None
        if ids and self.s.model not in ids:
            shown = ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")
            raise AgentFatal(EXIT_UNKNOWN_MODEL,
                             f"model {self.s.model!r} is not served by {where} (it serves: {shown})")
        return ids

    # ---- chat completions -----------------------------------------------------------------

    def build_messages(self, system_prompt: str, turns: list[tuple[str, str]], prompt: str) -> list[dict[str, str]]:
        history: list[dict[str, str]] = []
        for user, assistant in turns:
            history.append({"role": "user", "content": user})
            history.append({"role": "assistant", "content": assistant})
        history.append({"role": "user", "content": prompt})
        system = {"role": "system", "content": system_prompt} if system_prompt else None
        reserve = min(self.s.max_reply_tokens, self.s.context_window // 4)
        return truncate_history(system, history, self.s.context_window, reserve)

    async def complete(self, messages: list[dict[str, str]]) -> str:
        """Stream one chat completion; retries transient failures; raises AnswerFailed/AgentFatal."""
        body = {"model": self.s.model, "messages": messages, "stream": True}
        last = ""
        for attempt in range(self.s.max_retries + 1):
            retry_after: float | None = None
            try:
                return await self._complete_once(body)
            except _Retryable as exc:
                last, retry_after = exc.reason, exc.retry_after
            except httpx.ReadTimeout:
                # A hung server: retrying would multiply the silence; answer now.
                raise AnswerFailed(f"the endpoint sent nothing for {self.s.read_timeout:g}s (read timeout); "
                                   "the request was abandoned") from None
            except httpx.TransportError as exc:
                if is_tls_error(exc):
                    raise AgentFatal(EXIT_TLS, f"endpoint {self.s.endpoint}: TLS failure: "
                                     f"{describe_transport_error(exc)}") from None
                last = f"{describe_transport_error(exc)}"
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    last = f"unreachable: {last}"
                    if attempt >= self.s.max_retries:
                        raise AgentFatal(EXIT_UNREACHABLE, f"endpoint {self.s.endpoint} {last} "
                                         f"(gave up after {attempt + 1} attempts)") from None
            if attempt < self.s.max_retries:
                delay = backoff_delay(attempt, self.s.backoff_base, self.s.backoff_cap, retry_after)
                log.warning("request failed (%s); retry %d/%d in %.1fs", last, attempt + 1,
                            self.s.max_retries, delay)
                await self._sleep(delay)
        raise AnswerFailed(f"the endpoint failed {self.s.max_retries + 1} times; last error: {last}")

    async def _complete_once(self, body: dict[str, Any]) -> str:
        try:
            async with self._client.stream("POST", "/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    self._raise_for_status(resp)
                ctype = resp.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    await resp.aread()
                    return self._parse_plain(resp)
                parts: list[str] = []
                complete = False
                async for line in resp.aiter_lines():
                    item = parse_sse_line(line)
                    if item is None:
                        continue
                    if item == "[DONE]":
                        complete = True
                        break
                    assert isinstance(item, dict)
                    text, finish = chunk_text(item)
                    parts.append(text)
                    if finish:
                        # Done, even if the server is slow to send [DONE] or to close.
                        complete = True
                        break
                if not complete:
                    raise _Retryable("the connection closed in the middle of the reply")
                return "".join(parts)
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise _Retryable(f"the connection broke in the middle of the reply ({describe_transport_error(exc)})"
                             ) from None

    def _parse_plain(self, resp: httpx.Response) -> str:
        try:
            doc = resp.json()
            content = doc["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AnswerFailed("the endpoint's reply is not an OpenAI chat completion") from None
        return str(content or "")

    def _raise_for_status(self, resp: httpx.Response) -> None:
        status = resp.status_code
        detail = _body_error(resp)
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {detail}", parse_retry_after(resp.headers.get("retry-after")))
        if status in (401, 403):
            raise AnswerFailed(f"the endpoint refused authentication (HTTP {status}): {detail}")
        if status == 404:
            raise AnswerFailed(f"not found (HTTP 404) — is model {self.s.model!r} served at "
                               f"{self.s.base_url}/chat/completions? {detail}")
        raise AnswerFailed(f"the endpoint rejected the request (HTTP {status}): {detail}")


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
