"""OpenAI-compatible HTTP client of the native agent, plus the pure helpers it is built from.

- base URL: `/v1` appended when missing (`normalize_base_url`); llama.cpp's and vLLM's own routes
  (`/props`, `/tokenize`) and Ollama's (`/api/show`) live at the server root, beside `/v1`;
- model: a known provider prefix is stripped (`strip_provider_prefix`, list as upstream); Ollama's
  tags match as Ollama resolves them (`qwen3-coder` is `qwen3-coder:latest`, `model_matches`);
- key: `Authorization: Bearer <WGS_API_KEY>`, never logged or put into an error message;
- TLS: verification always on, against the OS trust store (truststore); `--ca-file` and
  WGS_CA_BUNDLE add CA certificates, they never replace the store;
- failures are classified (`complete`): an outage (connection refused, DNS, 502/503/504, "Loading
  model") raises EndpointUnavailable at once, for the caller to wait for the endpoint; a request
  that does not fit raises ContextOverflow (400/500 with the server's context words, or an error
  event in the stream); a 200 stream without any data (llama.cpp's answer to a streamed request
  that is too long) is asked once more without streaming, which gets the server's own words (or
  the reply); 429/408 (Retry-After honoured), other 5xx and a connection lost mid-reply are
  retried, bounded; other 4xx never; a read timeout (hung server) is not retried;
- traces: each `complete` is one GenAI client span `chat {model}` (OpenTelemetry GenAI semantic
  conventions: gen_ai.request.*, gen_ai.response.*, gen_ai.usage.*, time to first chunk) covering
  the whole stream and its retries; each HTTP attempt is a child span with the current HTTP
  semantic-convention names (http.request.method, url.full, server.address, server.port,
  http.response.status_code, error.type), also ending when the body is read, not at the headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from wgs.agent.context import ServerWindow, context_numbers, is_context_error, stated_numbers
from wgs.agent.errors import (
    EXIT_AUTH,
    EXIT_TLS,
    EXIT_UNKNOWN_MODEL,
    EXIT_UNREACHABLE,
    FAIL_AUTH,
    FAIL_CONNECTION,
    FAIL_CONTEXT,
    FAIL_NOT_FOUND,
    FAIL_PROTOCOL,
    FAIL_RATE_LIMITED,
    FAIL_REJECTED,
    FAIL_SERVER,
    FAIL_TIMEOUT,
    AgentFatal,
    AnswerFailed,
)
from wgs.common.validation import split_model

log = logging.getLogger("wgs.agent.http")
tracer = trace.get_tracer("wgs.agent.http")

UNAVAILABLE_STATUSES = {502, 503, 504}  # gateway down, server loading/overloaded: wait for the endpoint
RETRY_STATUSES = {408, 429}  # retried (bounded), Retry-After honoured
FINISH_GRACE_SECONDS = 1.0  # after finish_reason: how long to wait for the usage chunk / [DONE]
DISCOVERY_TIMEOUT_SECONDS = 10.0
TLS_HINT = " (for a private CA give the endpoint's ca_file (--ca-file) or WGS_CA_BUNDLE)"

Sleeper = Callable[[float], Awaitable[None]]
DeltaCallback = Callable[[str, str], Awaitable[None]]  # (delta, text so far)


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


def root_url(base_url: str) -> str:
    """The server root of a normalized base URL (`http://h:8080/v1` -> `http://h:8080`)."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def _ollama_name(model: str) -> str:
    """Ollama's resolution of a model name: no tag means `:latest`."""
    last = model.rsplit("/", 1)[-1]
    return model if ":" in last else f"{model}:latest"


def model_matches(model: str, served: Iterable[str]) -> str | None:
    """The listed id that `model` names: exact, or equal as Ollama resolves tags (`name` = `name:latest`)."""
    ids = list(served)
    if model in ids:
        return model
    want = _ollama_name(model)
    return next((i for i in ids if _ollama_name(i) == want), None)


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
    return min(cap, base * float(2**attempt))


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
        raise AnswerFailed(f"endpoint sent a malformed stream line: {payload[:200]!r}", FAIL_PROTOCOL) from None
    return doc if isinstance(doc, dict) else None


def chunk_text(chunk: dict[str, Any]) -> tuple[str, str | None]:
    """(content delta, finish_reason) of one streamed chat.completion.chunk."""
    if "error" in chunk:
        message = error_text(chunk)
        if is_context_error(json.dumps(chunk)):
            raise ContextOverflow.from_body(message, chunk)
        raise AnswerFailed(f"endpoint reported an error mid-reply: {message}", FAIL_SERVER)
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


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return resp.text


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


def make_ssl_context(ca_files: Sequence[str] = ()) -> ssl.SSLContext:
    """The OS trust store (truststore) plus the given PEM CA files; verification always on."""
    import truststore

    ctx = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for path in ca_files:
        ctx.load_verify_locations(cafile=path)
    return ctx


class EndpointUnavailable(Exception):
    """The endpoint is down, unreachable or loading: wait for it (not a failure of the request)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ContextOverflow(AnswerFailed):
    """The server says the request does not fit its context window (`server_message`: its words).

    `n_prompt_tokens`/`n_ctx`: llama.cpp's fields of its exceed_context_size_error; `stated_*`: the
    same figures where an OpenAI-style message states them in words (OpenAI, vLLM)."""

    def __init__(self, server_message: str, *, n_prompt_tokens: int | None = None,
                 n_ctx: int | None = None, stated_prompt_tokens: int | None = None,
                 stated_window: int | None = None) -> None:
        super().__init__(f"the request does not fit the model's context window: {server_message}", FAIL_CONTEXT)
        self.server_message = server_message
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx
        self.stated_prompt_tokens = stated_prompt_tokens
        self.stated_window = stated_window

    @classmethod
    def from_body(cls, message: str, body: Any) -> ContextOverflow:
        n_prompt, n_ctx = context_numbers(body)
        stated_prompt, stated_window = stated_numbers(body if isinstance(body, str) else json.dumps(body))
        return cls(message, n_prompt_tokens=n_prompt, n_ctx=n_ctx, stated_prompt_tokens=stated_prompt,
                   stated_window=stated_window)

    @property
    def prompt_tokens(self) -> int | None:
        """The prompt's size in tokens as the server counted it, if it said."""
        return self.n_prompt_tokens if self.n_prompt_tokens is not None else self.stated_prompt_tokens

    @property
    def window(self) -> int | None:
        """The window the server enforces, if it said."""
        return self.n_ctx or self.stated_window


class _EmptyStream(Exception):
    """A 200 event stream that ended without any data."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, kind: str = FAIL_SERVER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.kind = kind


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings sent with every completion (None: the server's default)."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()

    def body(self, max_tokens: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"max_tokens": max_tokens if max_tokens is not None else self.max_tokens}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.stop:
            out["stop"] = list(self.stop)
        return out


@dataclass(frozen=True)
class HttpSettings:
    endpoint: str  # as given, for messages
    base_url: str  # normalized, ends with /v1
    model: str  # without provider prefix
    api_key: str = ""
    ca_files: tuple[str, ...] = ()  # PEM files added to the OS trust store
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_retries: int = 4
    backoff_base: float = 1.0
    backoff_cap: float = 30.0


@dataclass(frozen=True)
class ServerInfo:
    """What discovery learnt: the kind of server, its context window, and whether it tokenizes."""

    kind: str  # "llama.cpp", "vllm", "ollama" or "openai" (unknown)
    window: ServerWindow | None = None
    tokenize: bool = False


@dataclass
class Completion:
    text: str
    finish_reason: str = ""
    response_model: str = ""
    response_id: str = ""
    input_tokens: int | None = None  # from the server's usage, when it sent one
    output_tokens: int | None = None
    time_to_first_chunk: float | None = None
    attempts: int = 1


@dataclass
class _Stream:
    parts: list[str] = field(default_factory=list)
    chunks: int = 0
    finish: str = ""
    model: str = ""
    id: str = ""
    usage: dict[str, Any] | None = None
    first_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class OpenAIClient:
    """Talks to one OpenAI-compatible endpoint for one model."""

    def __init__(self, settings: HttpSettings, *, sleep: Sleeper = asyncio.sleep,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.s = settings
        self._sleep = sleep
        self.root = root_url(settings.base_url)
        parts = urlsplit(settings.base_url)
        self._server_address = parts.hostname or ""
        self._server_port = parts.port or (443 if parts.scheme == "https" else 80)
        headers = {"Accept": "application/json"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            # truststore loads the OS store when a TLS connection is made, so an http endpoint pays nothing.
            verify=make_ssl_context(settings.ca_files),
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout,
                                  pool=settings.connect_timeout),
            transport=transport,
            follow_redirects=False,
        )
        self.served_model = settings.model  # the id as the server lists it (Ollama: with its tag)
        self._model_entry: dict[str, Any] = {}
        self.info = ServerInfo("openai")

    async def aclose(self) -> None:
        await self._client.aclose()

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self.s.base_url + path

    # ---- tracing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _http_span(self, method: str, url: str, headers: dict[str, str]) -> Iterator[Span]:
        with tracer.start_as_current_span(method, kind=SpanKind.CLIENT, record_exception=False,
                                          set_status_on_exception=False, attributes={
            "http.request.method": method, "url.full": url, "server.address": self._server_address,
            "server.port": self._server_port,
        }) as span:
            propagate.inject(headers)
            try:
                yield span
            except httpx.HTTPError as exc:  # no response (a status error is set by _span_status)
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, describe_transport_error(exc)))
                raise

    @staticmethod
    def _span_status(span: Span, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))

    async def _json_request(self, method: str, url: str, body: Any = None,
                            read_timeout: float | None = None) -> httpx.Response:
        headers: dict[str, str] = {}
        with self._http_span(method, url, headers) as span:
            kwargs: dict[str, Any] = {"headers": headers}
            if body is not None:
                kwargs["json"] = body
            if read_timeout is not None:
                kwargs["timeout"] = httpx.Timeout(read_timeout, connect=self.s.connect_timeout)
            resp = await self._client.request(method, url, **kwargs)
            self._span_status(span, resp.status_code)
            return resp

    # ---- start-up check -------------------------------------------------------------------

    async def check(self) -> list[str]:
        """Verify the endpoint answers, accepts the key and lists the model.

        Raises EndpointUnavailable (connection refused, DNS, connect timeout, 429/5xx: wait and try
        again), AgentFatal (TLS, 401/403, unknown model, not OpenAI-compatible). An endpoint without
        a model list (404 on /models) or with an empty one is accepted: the model is checked on use.
        """
        where = f"endpoint {self.s.endpoint}"
        try:
            resp = await self._json_request("GET", self._url("/models"),
                                            read_timeout=min(self.s.read_timeout, 30.0))
        except httpx.TransportError as exc:
            if is_tls_error(exc):
                raise AgentFatal(EXIT_TLS, f"{where}: TLS failure: {describe_transport_error(exc)}"
                                 + ("" if self.s.ca_files else TLS_HINT)) from None
            raise EndpointUnavailable(f"{where} unreachable: {describe_transport_error(exc)}") from None
        status = resp.status_code
        if status == 429 or status >= 500:
            raise EndpointUnavailable(self._unavailable_reason(resp, "GET /models"),
                                      parse_retry_after(resp.headers.get("retry-after")))
        if status in (401, 403):
            hint = "check the API key (WGS_API_KEY)" if self.s.api_key else "no API key was given (WGS_API_KEY)"
            raise AgentFatal(EXIT_AUTH, f"{where} refused authentication: HTTP {status}; {hint}")
        if status == 404:
            log.warning("endpoint has no model list (404 on /models); model checked on first use")
            return []
        if status != 200:
            raise AgentFatal(EXIT_UNREACHABLE,
                             f"{where} answered GET /models with HTTP {status}: {error_text(_body(resp))}")
        try:
            data = resp.json().get("data") or []
            entries = [m for m in data if isinstance(m, dict) and m.get("id")]
        except (ValueError, AttributeError):
            raise AgentFatal(EXIT_UNREACHABLE,
                             f"{where} is not OpenAI-compatible: GET /models did not return a model list") from None
        ids = [str(m["id"]) for m in entries]
        if ids:
            hit = model_matches(self.s.model, ids)
            if hit is None:
                shown = ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")
                raise AgentFatal(EXIT_UNKNOWN_MODEL,
                                 f"model {self.s.model!r} is not served by {where} (it serves: {shown})")
            self.served_model = hit
            self._model_entry = next(m for m in entries if str(m["id"]) == hit)
        return ids

    def _unavailable_reason(self, resp: httpx.Response, what: str) -> str:
        detail = error_text(_body(resp))
        if "loading model" in detail.lower():
            return f"the model is loading (HTTP {resp.status_code} on {what}: {detail})"
        return f"endpoint {self.s.endpoint} unavailable: HTTP {resp.status_code} on {what}: {detail}"

    # ---- discovery ------------------------------------------------------------------------

    async def _probe(self, method: str, url: str, body: Any = None) -> dict[str, Any] | None:
        try:
            resp = await self._json_request(method, url, body, read_timeout=DISCOVERY_TIMEOUT_SECONDS)
        except httpx.HTTPError as exc:
            log.debug("%s %s failed: %s", method, url, describe_transport_error(exc))
            return None
        if resp.status_code != 200:
            return None
        doc = _body(resp)
        return doc if isinstance(doc, dict) else None

    async def discover(self) -> ServerInfo:
        """Which server this is and what context window it enforces (best effort, never raises).

        vLLM: `max_model_len` in its /v1/models entry. llama.cpp server: `GET /props` ->
        `default_generation_settings.n_ctx` (per slot). Ollama: `POST /api/show` -> `num_ctx` in
        `parameters` (what it runs with), else `<arch>.context_length` in `model_info` (the model's
        maximum only: Ollama runs with a smaller default unless num_ctx is set).
        """
        n = self._model_entry.get("max_model_len")
        if isinstance(n, int) and n > 0:
            self.info = ServerInfo("vllm", ServerWindow(n, "vLLM GET /v1/models max_model_len"), tokenize=True)
            return self.info
        props = await self._probe("GET", self.root + "/props")
        if props is not None:
            settings = props.get("default_generation_settings")
            n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
            n_ctx = n_ctx if isinstance(n_ctx, int) else props.get("n_ctx")
            if isinstance(n_ctx, int) and n_ctx > 0:
                self.info = ServerInfo("llama.cpp", ServerWindow(n_ctx, "llama.cpp GET /props n_ctx"), tokenize=True)
                return self.info
        show = await self._probe("POST", self.root + "/api/show", {"model": self.served_model})
        if show is not None and ("model_info" in show or "parameters" in show):
            self.info = ServerInfo("ollama", ollama_window(show))
            return self.info
        return self.info

    async def count_tokens(self, text: str) -> int | None:
        """Tokens of `text` by the server's tokenizer (llama.cpp, vLLM `POST /tokenize`); None if not offered."""
        if not self.info.tokenize:
            return None
        if self.info.kind == "vllm":
            body: dict[str, Any] = {"model": self.served_model, "prompt": text, "add_special_tokens": False}
        else:
            body = {"content": text, "add_special": False}
        try:
            resp = await self._client.post(self.root + "/tokenize", json=body,
                                           timeout=httpx.Timeout(DISCOVERY_TIMEOUT_SECONDS,
                                                                 connect=self.s.connect_timeout))
        except httpx.HTTPError:
            return None
        doc = _body(resp)
        if resp.status_code != 200 or not isinstance(doc, dict):
            return None
        count = doc.get("count")
        if isinstance(count, int):
            return count
        tokens = doc.get("tokens")
        return len(tokens) if isinstance(tokens, list) else None

    # ---- chat completions -----------------------------------------------------------------

    async def complete(self, messages: list[dict[str, str]], gen: GenerationSettings, *, stream: bool = True,
                       on_delta: DeltaCallback | None = None, max_tokens: int | None = None) -> Completion:
        """One chat completion (streamed unless `stream` is False), with bounded retries of transient
        failures. Raises EndpointUnavailable, ContextOverflow, AnswerFailed or AgentFatal (TLS)."""
        body: dict[str, Any] = {"model": self.served_model, "messages": messages, **gen.body(max_tokens),
                                "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": self.served_model, "gen_ai.request.max_tokens": body["max_tokens"],
            "server.address": self._server_address, "server.port": self._server_port,
            "wgs.endpoint.server": self.info.kind,
        }
        if gen.temperature is not None:
            attrs["gen_ai.request.temperature"] = gen.temperature
        if gen.top_p is not None:
            attrs["gen_ai.request.top_p"] = gen.top_p
        if gen.stop:
            attrs["gen_ai.request.stop_sequences"] = list(gen.stop)
        with tracer.start_as_current_span(f"chat {self.served_model}", kind=SpanKind.CLIENT, attributes=attrs,
                                          record_exception=False, set_status_on_exception=False) as span:
            started = time.monotonic()
            try:
                result = await self._complete_retrying(body, stream, on_delta, span, started)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    kind = getattr(exc, "kind", "") or type(exc).__qualname__
                    span.set_attribute("error.type", kind)
                    span.set_status(Status(StatusCode.ERROR, getattr(exc, "reason", "") or type(exc).__qualname__))
                raise
            if result.response_model:
                span.set_attribute("gen_ai.response.model", result.response_model)
            if result.response_id:
                span.set_attribute("gen_ai.response.id", result.response_id)
            if result.finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
            if result.input_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", result.input_tokens)
            if result.output_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", result.output_tokens)
            if result.time_to_first_chunk is not None:
                span.set_attribute("gen_ai.response.time_to_first_chunk", result.time_to_first_chunk)
            return result

    async def _complete_retrying(self, body: dict[str, Any], stream: bool, on_delta: DeltaCallback | None,
                                 span: Span, started: float) -> Completion:
        last: _Retryable | None = None
        for attempt in range(self.s.max_retries + 1):
            try:
                try:
                    result = await self._attempt(body, stream, on_delta, span, started)
                except _EmptyStream:
                    # llama.cpp server quirk: a streamed request too long for its context gets 200 and an
                    # event stream without any data; only a non-streamed request gets the 400 and its words.
                    log.warning("the reply stream ended without any data; asking once more without streaming")
                    span.add_event("empty reply stream; asking without streaming")
                    plain = {k: v for k, v in body.items() if k != "stream_options"}
                    result = await self._attempt({**plain, "stream": False}, False, None, span, started)
                    if on_delta is not None and result.text:
                        await on_delta(result.text, result.text)
                result.attempts = attempt + 1
                return result
            except _Retryable as exc:
                last = exc
            except httpx.ReadTimeout:
                # A hung server: retrying would multiply the silence; answer now.
                raise AnswerFailed(f"the endpoint sent nothing for {self.s.read_timeout:g}s (read timeout); "
                                   "the request was abandoned", FAIL_TIMEOUT) from None
            except httpx.TransportError as exc:
                if is_tls_error(exc):
                    raise AgentFatal(EXIT_TLS, f"endpoint {self.s.endpoint}: TLS failure: "
                                     f"{describe_transport_error(exc)}") from None
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    raise EndpointUnavailable(f"endpoint {self.s.endpoint} unreachable: "
                                              f"{describe_transport_error(exc)}") from None
                last = _Retryable(describe_transport_error(exc), kind=FAIL_CONNECTION)
            if attempt < self.s.max_retries:
                delay = backoff_delay(attempt, self.s.backoff_base, self.s.backoff_cap, last.retry_after)
                log.warning("request failed (%s); retry %d/%d in %.1fs", last.reason, attempt + 1,
                            self.s.max_retries, delay)
                await self._sleep(delay)
        assert last is not None
        raise AnswerFailed(f"the endpoint failed {self.s.max_retries + 1} times; last error: {last.reason}",
                           last.kind)

    async def _attempt(self, body: dict[str, Any], stream: bool, on_delta: DeltaCallback | None,
                       genai: Span, started: float) -> Completion:
        url = self._url("/chat/completions")
        headers: dict[str, str] = {}
        with self._http_span("POST", url, headers) as span:
            try:
                async with self._client.stream("POST", url, json=body, headers=headers) as resp:
                    self._span_status(span, resp.status_code)
                    if resp.status_code != 200:
                        await resp.aread()
                        self._raise_for_status(resp)
                    if "text/event-stream" not in resp.headers.get("content-type", ""):
                        await resp.aread()
                        return self._parse_plain(resp)
                    acc = _Stream()
                    done = await self._read_stream(resp.aiter_lines(), acc, on_delta, started, genai)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                raise _Retryable("the connection broke in the middle of the reply "
                                 f"({describe_transport_error(exc)})", kind=FAIL_CONNECTION) from None
        if acc.chunks == 0:
            raise _EmptyStream()
        if not done:
            raise _Retryable("the connection closed in the middle of the reply", kind=FAIL_CONNECTION)
        usage = acc.usage or {}
        return Completion(acc.text, acc.finish, acc.model, acc.id, _int(usage.get("prompt_tokens")),
                          _int(usage.get("completion_tokens")),
                          None if acc.first_at is None else acc.first_at - started)

    async def _read_stream(self, lines: AsyncIterator[str], acc: _Stream, on_delta: DeltaCallback | None,
                           started: float, genai: Span) -> bool:
        """Read SSE events into `acc`; True when the reply is complete ([DONE] or a finish_reason)."""
        finished = False
        while True:
            try:
                if finished:  # done; only the usage chunk and [DONE] may follow: don't wait for a lazy close
                    line = await asyncio.wait_for(anext(lines), FINISH_GRACE_SECONDS)
                else:
                    line = await anext(lines)
            except StopAsyncIteration:
                return finished
            except TimeoutError:
                return True
            item = parse_sse_line(line)
            if item is None:
                continue
            if item == "[DONE]":
                return True
            assert isinstance(item, dict)
            acc.chunks += 1
            if acc.first_at is None:
                acc.first_at = time.monotonic()
                genai.add_event("gen_ai.response.first_chunk", {
                    "gen_ai.response.time_to_first_chunk": acc.first_at - started})
            acc.model = acc.model or str(item.get("model") or "")
            acc.id = acc.id or str(item.get("id") or "")
            if isinstance(item.get("usage"), dict):
                acc.usage = item["usage"]
            text, finish = chunk_text(item)
            if text:
                acc.parts.append(text)
                if on_delta is not None:
                    await on_delta(text, acc.text)
            if finish:
                acc.finish = str(finish)
                finished = True

    def _parse_plain(self, resp: httpx.Response) -> Completion:
        try:
            doc = resp.json()
            choice = doc["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AnswerFailed("the endpoint's reply is not an OpenAI chat completion", FAIL_PROTOCOL) from None
        usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
        return Completion(str(content or ""), str(choice.get("finish_reason") or ""), str(doc.get("model") or ""),
                          str(doc.get("id") or ""), _int(usage.get("prompt_tokens")),
                          _int(usage.get("completion_tokens")))

    def _raise_for_status(self, resp: httpx.Response) -> None:
        status = resp.status_code
        body = _body(resp)
        detail = error_text(body)
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        if status in (400, 413, 422, 500) and is_context_error(body if isinstance(body, str) else json.dumps(body)):
            raise ContextOverflow.from_body(detail, body)
        if status in UNAVAILABLE_STATUSES:
            raise EndpointUnavailable(self._unavailable_reason(resp, "POST /chat/completions"), retry_after)
        if status in RETRY_STATUSES:
            raise _Retryable(f"HTTP {status}: {detail}", retry_after, FAIL_RATE_LIMITED)
        if status >= 500:
            raise _Retryable(f"HTTP {status}: {detail}", retry_after, FAIL_SERVER)
        if status in (401, 403):
            raise AnswerFailed(f"the endpoint refused authentication (HTTP {status}): {detail}", FAIL_AUTH)
        if status == 404:
            raise AnswerFailed(f"not found (HTTP 404) — is model {self.served_model!r} served at "
                               f"{self.s.base_url}/chat/completions? {detail}", FAIL_NOT_FOUND)
        raise AnswerFailed(f"the endpoint rejected the request (HTTP {status}): {detail}", FAIL_REJECTED)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ollama_window(show: dict[str, Any]) -> ServerWindow | None:
    """The window an Ollama `/api/show` reply gives: `num_ctx` in parameters (exact), else the
    model's `<arch>.context_length` (an upper bound)."""
    params = show.get("parameters")
    if isinstance(params, str):
        m = re.search(r"^\s*num_ctx\s+(\d+)\s*$", params, re.MULTILINE)
        if m:
            return ServerWindow(int(m.group(1)), "Ollama POST /api/show parameters num_ctx")
    info = show.get("model_info")
    if isinstance(info, dict):
        arch = info.get("general.architecture")
        n = info.get(f"{arch}.context_length") if isinstance(arch, str) else None
        if isinstance(n, int) and n > 0:
            return ServerWindow(n, f"Ollama POST /api/show model_info {arch}.context_length (model maximum)",
                                exact=False)
    return None
