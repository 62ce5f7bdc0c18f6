"""A small OpenAI-compatible HTTP server for tests (stdlib only), speaking the real protocol with
the quirks of the real servers it stands in for.

Use in a test as a context manager (server thread on a free loopback port):

    with FakeOpenAI(models=["qwen3-coder"], api_key="sk-test") as fake:
        fake.script(Reply(status=429, headers={"Retry-After": "1"}), Reply(text="hello"))
        ... fake.base_url ... fake.requests ...

or as a process: `python -m tests.fakes.fake_openai --port-file F [--models a,b] [--api-key K]
[--server llama.cpp --n-ctx 2048]` (scripted responses can then be queued with `POST /_fake/script`,
a JSON list of Reply fields, and the recorded requests read with `GET /_fake/requests`).

Default behaviour of POST /v1/chat/completions: answer "echo: <last user message>", streamed as
SSE chunks ending with `data: [DONE]` when the request asks for stream, else a JSON completion.
`max_tokens` is obeyed (the reply is cut, finish_reason "length"); with
`stream_options: {"include_usage": true}` a last chunk carries `usage` and empty `choices` (as
OpenAI and vLLM send it). Scripted replies (consumed in order, one per chat request) can instead:
return any status with headers and an OpenAI error body, delay, hang (until the server stops),
close the connection in the middle of a streamed reply, stop in the middle of it until the test
calls resume() (a slow model, deterministically), or reply with given text.
Every content chunk of a streamed reply is logged in `emitted` (`Emitted`: which stream, the
`time.monotonic()` once it was written and flushed, how much of the reply was sent by then), so a
benchmark can time each chunk from the server emitting it to a client showing it (CLOCK_MONOTONIC is
one clock for every process of the machine).

Tokens are counted by a fixed toy tokenizer (`fake_tokens`: runs of up to 4 word characters, each
other non-space character, one token each), plus the chat template's cost per message
(TEMPLATE_TOKENS_PER_MESSAGE) and for the generation prompt — so a prompt's size is known exactly.

Server modes (`server=`), each reproducing what that server does:
- "openai" (default): OpenAI's API. Over `n_ctx`: 400 with code `context_length_exceeded` and
  "This model's maximum context length is N tokens. However, your messages resulted in M tokens…".
- "llama.cpp": llama.cpp's `llama-server`. `GET /props` -> `default_generation_settings.n_ctx`
  (at the server root, not under /v1); `POST /tokenize {"content", "add_special"}` -> `{"tokens"}`;
  a prompt over n_ctx: non-streamed -> 400 `exceed_context_size_error` "the request exceeds the
  available context size, try increasing it" with n_prompt_tokens/n_ctx (llama.cpp since PR #15780,
  2025-09); streamed -> per `overflow_stream`:
    "empty"       - 200 and an event stream without any data (the server tried in issue 11; LM
                    Studio's llama.cpp engine does the same, lmstudio-bug-tracker#2339);
    "error_event" - 200 and one `data: {"error": …}` event (llama.cpp before PR #16486, e.g.
                    b5630, ggml-org/llama.cpp#14566);
    "400"         - the same 400 as non-streamed (llama.cpp since PR #16486, 2025-10).
  While `loading` is set: 503 `{"error":{"code":503,"message":"Loading model","type":
  "unavailable_error"}}` on every route (llama-server while it loads the model).
- "vllm": vLLM's OpenAI server. `/v1/models` entries carry `max_model_len`; `POST /tokenize
  {"model", "prompt", "add_special_tokens"}` -> `{"count", "max_model_len", "tokens"}` (root);
  prompt + max_tokens over max_model_len -> 400 BadRequestError "This model's maximum context
  length is N tokens. However, you requested M tokens (P in the messages, C in the completion)…".
Any mode, `template_preamble_tokens=K`: the model's chat template adds K tokens to every prompt that
the bare messages do not show, so `/tokenize` of the messages' text undercounts the prompt by K (the
quirk of e.g. Llama 3.1's template, which writes "Cutting Knowledge Date: December 2023 / Today
Date: …" into the system message, and of templates that inject a default system prompt); the
completion's prompt count (overflow check, usage) includes them.
- "ollama": Ollama's OpenAI-compatible API (v0.5+). `/v1/models` lists `name:tag`
  (`qwen3-coder:latest`) and a request for `name` is served as `name:latest`; `POST /api/show
  {"model"}` -> `parameters` (with `num_ctx N` when `ollama_num_ctx` is set) and `model_info`
  (`general.architecture`, `<arch>.context_length` = `n_ctx_train`); no /tokenize; a prompt over
  num_ctx gets no error (Ollama truncates it silently).
`/v1/responses` (non-streamed) answers like chat completions, for the fake codex CLI.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TEMPLATE_TOKENS_PER_MESSAGE = 4  # e.g. <|im_start|>role\n … <|im_end|>\n
GENERATION_PROMPT_TOKENS = 3


@dataclass
class Reply:
    """One scripted answer to a chat completion request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None  # reply text (default: echo)
    error: str | None = None  # message of the OpenAI error body for a non-200 status
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # never answer (until the server stops)
    close_mid: bool = False  # send part of a streamed reply, then close the connection
    empty_stream: bool = False  # 200, an event stream, and no data at all
    chunk_delay: float = 0.0  # seconds between streamed chunks
    pause_after: int = 0  # stop after this many content chunks until resume() (0: never), like a slow model


@dataclass(frozen=True)
class Emitted:
    """One content chunk of a streamed reply, as the server sent it."""

    stream: int  # 1-based number of the streamed reply among this server's
    at: float  # time.monotonic() once the chunk was written and flushed to the socket
    end: int  # characters of the reply's content sent so far, this chunk included


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = 0.0  # time.monotonic() when received

    @property
    def authorization(self) -> str:
        return self.headers.get("authorization", "")


def fake_tokens(text: str) -> list[str]:
    """The toy tokenizer: runs of up to 4 word characters, and every other non-space character."""
    return re.findall(r"\w{1,4}|[^\w\s]", text)


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(TEMPLATE_TOKENS_PER_MESSAGE + len(fake_tokens(str(m.get("content") or ""))) for m in messages) \
        + GENERATION_PROMPT_TOKENS


def echo_text(messages: list[dict[str, Any]]) -> str:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return f"echo: {last.get('content', '') if last else ''}"


def _cut_to_tokens(text: str, limit: int) -> str:
    count = 0
    for m in re.finditer(r"\w{1,4}|[^\w\s]", text):
        count += 1
        if count > limit:
            return text[: m.start()].rstrip()
    return text


class FakeOpenAI:
    def __init__(self, models: list[str] | None = None, api_key: str = "", host: str = "127.0.0.1",
                 port: int = 0, tls: tuple[str, str] | None = None, chunk_size: int = 4, *,
                 server: str = "openai", n_ctx: int | None = None, overflow_stream: str = "empty",
                 ollama_num_ctx: int | None = None, n_ctx_train: int = 262144,
                 props_n_ctx: int | None = None, template_preamble_tokens: int = 0) -> None:
        assert server in ("openai", "llama.cpp", "vllm", "ollama"), server
        assert overflow_stream in ("empty", "error_event", "400"), overflow_stream
        self.models = list(models if models is not None else ["fake-model"])
        if server == "ollama":
            self.models = [m if ":" in m.rsplit("/", 1)[-1] else f"{m}:latest" for m in self.models]
        self.api_key = api_key
        self.chunk_size = chunk_size
        self.server = server
        self.n_ctx = n_ctx  # context window enforced (None: unlimited)
        self.overflow_stream = overflow_stream
        self.ollama_num_ctx = ollama_num_ctx
        # What llama.cpp's /props reports (default: n_ctx): set it apart from n_ctx to test a window
        # figure the server does not hold to (e.g. a proxy in front of a smaller model).
        self.props_n_ctx = props_n_ctx
        self.n_ctx_train = n_ctx_train
        self.template_preamble_tokens = template_preamble_tokens  # prompt tokens /tokenize does not see
        self.loading = False  # llama.cpp: 503 "Loading model" on every route
        self.requests: list[Recorded] = []
        self.emitted: list[Emitted] = []  # content chunks of streamed replies, in the order sent
        self.streams = 0  # streamed replies begun
        self.paused = threading.Event()  # set while a reply waits at its pause_after chunk
        self._resume = threading.Event()
        self.models_status: int | None = None  # force a status on GET /v1/models
        self.models_hang = False  # GET /v1/models never answers (until the server stops)
        self._script: deque[Reply] = deque()
        self._conns: set[Any] = set()  # open client connections, closed by stop() as a dying server's are
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._tls = tls
        if tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    # ---- control ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """Root URL without /v1 (the agent appends it)."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return self._chat_requests_locked()

    def wait_requests(self, n: int, timeout: float = 10.0) -> list[Recorded]:
        """Block until at least n chat requests arrived (notified by the handler, bounded)."""
        with self._lock:
            ok = self._lock.wait_for(lambda: len(self._chat_requests_locked()) >= n, timeout)
            reqs = self._chat_requests_locked()
        if not ok:
            raise TimeoutError(f"expected {n} chat requests, got {len(reqs)}")
        return reqs

    def wait_path(self, suffix: str, timeout: float = 10.0, count: int = 1) -> Recorded:
        """Block until `count` requests whose path ends with `suffix` arrived; returns the last."""
        def found() -> list[Recorded]:
            return [r for r in self.requests if r.path.endswith(suffix)]

        with self._lock:
            if not self._lock.wait_for(lambda: len(found()) >= count, timeout):
                raise TimeoutError(f"fewer than {count} requests to {suffix} within {timeout}s")
            return found()[count - 1]

    def wait_paused(self, timeout: float = 30.0) -> None:
        """Block until a streamed reply stopped at its `pause_after` chunk."""
        if not self.paused.wait(timeout):
            raise TimeoutError(f"no streamed reply paused within {timeout}s")

    def resume(self) -> None:
        """Let a paused reply (and later ones) go on."""
        self.paused.clear()
        self._resume.set()

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def _chat_requests_locked(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop like a dead server: no listener, and every open (keep-alive) connection closed."""
        import socket

        self._stop.set()
        self._resume.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else Reply()

    def _served(self, model: Any) -> bool:
        if self.server == "ollama" and isinstance(model, str) and ":" not in model.rsplit("/", 1)[-1]:
            model = f"{model}:latest"
        return model in self.models

    def _overflow_message(self, n_prompt: int, max_tokens: int) -> dict[str, Any]:
        """The error body the server sends for a request over its context window."""
        n = self.n_ctx
        if self.server == "llama.cpp":
            return {"error": {"code": 400, "message": "the request exceeds the available context size, try "
                              "increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": n_prompt,
                              "n_ctx": n}}
        if self.server == "vllm":
            return {"object": "error", "message": f"This model's maximum context length is {n} tokens. However, "
                    f"you requested {n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in "
                    "the completion). Please reduce the length of the messages or completion.",
                    "type": "BadRequestError", "param": None, "code": 400}
        return {"error": {"message": f"This model's maximum context length is {n} tokens. However, your "
                          f"messages resulted in {n_prompt} tokens. Please reduce the length of the messages.",
                          "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}

    # ---- HTTP ---------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._conns.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._conns.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                self._send_json(status, {"error": {"message": message, "type": "fake_error", "code": status}},
                                headers)

            def _record(self, body: Any) -> None:
                with fake._lock:
                    fake.requests.append(Recorded(self.command, self.path,
                                                  {k.lower(): v for k, v in self.headers.items()}, body,
                                                  time.monotonic()))
                    fake._lock.notify_all()

            def _authorized(self) -> bool:
                if not fake.api_key:
                    return True
                return self.headers.get("Authorization", "") == f"Bearer {fake.api_key}"

            def _loading(self) -> bool:
                if fake.loading:
                    self._send_json(503, {"error": {"code": 503, "message": "Loading model",
                                                    "type": "unavailable_error"}})
                    return True
                return False

            def do_GET(self) -> None:
                if self.path == "/_fake/requests":
                    with fake._lock:
                        self._send_json(200, [asdict(r) for r in fake.requests])
                    return
                self._record(None)
                if self._loading():
                    return
                if self.path == "/props" and fake.server == "llama.cpp":
                    self._send_json(200, {"default_generation_settings": {"id": 0, "n_ctx": fake.props_n_ctx or fake.n_ctx or 4096,
                                                                          "params": {"n_predict": -1}},
                                          "total_slots": 1, "model_path": f"/models/{fake.models[0]}.gguf",
                                          "build_info": "b6700-fake"})
                    return
                if self.path.rstrip("/") != "/v1/models":
                    self._error(404, f"no route {self.path}")
                    return
                if fake.models_hang:
                    fake._stop.wait()
                    return
                if fake.models_status is not None:
                    self._error(fake.models_status, "forced status")
                    return
                if not self._authorized():
                    self._error(401, "invalid api key")
                    return
                entries = []
                for m in fake.models:
                    entry: dict[str, Any] = {"id": m, "object": "model", "owned_by": "fake", "created": 0}
                    if fake.server == "vllm":
                        entry.update(owned_by="vllm", root=m, parent=None, max_model_len=fake.n_ctx or 32768)
                    elif fake.server == "llama.cpp":
                        entry.update(owned_by="llamacpp", meta={"n_ctx_train": fake.n_ctx_train})
                    elif fake.server == "ollama":
                        entry.update(owned_by="library")
                    entries.append(entry)
                self._send_json(200, {"object": "list", "data": entries})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except json.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                if self.path == "/_fake/script":
                    fake.script(*(Reply(**item) for item in body))
                    self._send_json(200, {"queued": len(body)})
                    return
                self._record(body)
                if self._loading():
                    return
                if self.path == "/tokenize" and fake.server in ("llama.cpp", "vllm"):
                    self._tokenize(body)
                    return
                if self.path == "/api/show" and fake.server == "ollama":
                    self._show(body)
                    return
                if self.path not in ("/v1/chat/completions", "/v1/responses"):
                    self._error(404, f"no route {self.path}")
                    return
                if not self._authorized():
                    self._error(401, "invalid api key")
                    return
                reply = fake._next()
                if reply.delay:
                    fake._stop.wait(reply.delay)
                if reply.hang:
                    fake._stop.wait()
                    return
                if reply.status != 200:
                    self._error(reply.status, reply.error or f"scripted HTTP {reply.status}", reply.headers)
                    return
                if not isinstance(body, dict):
                    self._error(400, "body must be a JSON object")
                    return
                if not fake._served(body.get("model")):
                    self._error(404, f"The model `{body.get('model')}` does not exist.")
                    return
                if self.path == "/v1/responses":
                    self._responses(body, reply)
                    return
                messages = body.get("messages") or []
                n_prompt = prompt_tokens(messages) + fake.template_preamble_tokens
                max_tokens = int(body.get("max_tokens") or 0)
                if fake.n_ctx is not None and fake.server != "ollama":
                    over = n_prompt + max_tokens > fake.n_ctx if fake.server == "vllm" else n_prompt > fake.n_ctx
                    if over:
                        self._overflow(n_prompt, max_tokens, bool(body.get("stream")))
                        return
                text = reply.text if reply.text is not None else echo_text(messages)
                finish = "stop"
                if max_tokens and len(fake_tokens(text)) > max_tokens:
                    text, finish = _cut_to_tokens(text, max_tokens), "length"
                usage = {"prompt_tokens": n_prompt, "completion_tokens": len(fake_tokens(text)),
                         "total_tokens": n_prompt + len(fake_tokens(text))}
                if body.get("stream"):
                    want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    self._stream(text, reply, finish, usage if want_usage else None, str(body.get("model")))
                else:
                    self._send_json(200, {"id": "chatcmpl-fake", "object": "chat.completion",
                                          "model": body.get("model"), "usage": usage,
                                          "choices": [{"index": 0, "finish_reason": finish,
                                                       "message": {"role": "assistant", "content": text}}]},
                                    reply.headers)

            def _overflow(self, n_prompt: int, max_tokens: int, stream: bool) -> None:
                doc = fake._overflow_message(n_prompt, max_tokens)
                if stream and fake.server == "llama.cpp" and fake.overflow_stream != "400":
                    self._start_stream({})
                    if fake.overflow_stream == "error_event":
                        self.wfile.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
                    self.wfile.flush()
                    return
                self._send_json(400, doc)

            def _tokenize(self, body: Any) -> None:
                if not isinstance(body, dict):
                    self._error(400, "body must be a JSON object")
                    return
                if fake.server == "llama.cpp":
                    if not isinstance(body.get("content"), str):
                        self._error(400, "\"content\" must be provided")
                        return
                    ids = [abs(hash(t)) % 50000 for t in fake_tokens(body["content"])]
                    self._send_json(200, {"tokens": ids})
                    return
                if not isinstance(body.get("prompt"), str) or not fake._served(body.get("model")):
                    self._send_json(400, {"object": "error", "message": "bad tokenize request",
                                          "type": "BadRequestError", "code": 400})
                    return
                ids = [abs(hash(t)) % 50000 for t in fake_tokens(body["prompt"])]
                self._send_json(200, {"count": len(ids), "max_model_len": fake.n_ctx or 32768, "tokens": ids})

            def _show(self, body: Any) -> None:
                name = body.get("model") or body.get("name") if isinstance(body, dict) else None
                if not fake._served(name):
                    self._send_json(404, {"error": f"model '{name}' not found"})
                    return
                params = "stop \"<|im_end|>\"\ntemperature 0.7"
                if fake.ollama_num_ctx:
                    params = f"num_ctx {fake.ollama_num_ctx}\n" + params
                self._send_json(200, {"modelfile": "FROM /models/blob", "parameters": params,
                                      "details": {"family": "qwen3", "parameter_size": "30.5B"},
                                      "model_info": {"general.architecture": "qwen3",
                                                     "qwen3.context_length": fake.n_ctx_train},
                                      "capabilities": ["completion", "tools"]})

            def _responses(self, body: dict[str, Any], reply: Reply) -> None:
                given = body.get("input")
                prompt = given if isinstance(given, str) else json.dumps(given)
                last = prompt.strip().splitlines()[-1] if prompt.strip() else ""
                text = reply.text if reply.text is not None else f"echo: {last}"
                self._send_json(200, {"id": "resp-fake", "object": "response", "model": body.get("model"),
                                      "status": "completed",
                                      "output": [{"type": "message", "role": "assistant", "content": [
                                          {"type": "output_text", "text": text}]}],
                                      "usage": {"input_tokens": len(fake_tokens(prompt)),
                                                "output_tokens": len(fake_tokens(text))}})

            def _start_stream(self, headers: dict[str, str]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.close_connection = True

            def _stream(self, text: str, reply: Reply, finish: str, usage: dict[str, int] | None,
                        model: str) -> None:
                self._start_stream(reply.headers)
                if reply.empty_stream:
                    self.wfile.flush()
                    return
                size = max(1, fake.chunk_size)
                pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
                if reply.close_mid:
                    pieces = pieces[: max(1, len(pieces) // 2)]
                with fake._lock:
                    fake.streams += 1
                    stream_no = fake.streams
                self._event({"model": model, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                sent = 0
                for n, piece in enumerate(pieces, 1):
                    if reply.chunk_delay:
                        fake._stop.wait(reply.chunk_delay)
                    self._event({"model": model, "choices": [{"index": 0, "delta": {"content": piece},
                                                              "finish_reason": None}]})
                    sent += len(piece)
                    with fake._lock:
                        fake.emitted.append(Emitted(stream_no, time.monotonic(), sent))
                    if n == reply.pause_after:
                        fake.paused.set()
                        fake._resume.wait()
                if reply.close_mid:
                    self.wfile.flush()
                    self.connection.close()
                    return
                self._event({"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                if usage is not None:
                    self._event({"model": model, "choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _event(self, doc: dict[str, Any]) -> None:
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", **doc}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()

        return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible server for tests")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", default="")
    ap.add_argument("--models", default="fake-model")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--server", default="openai", choices=["openai", "llama.cpp", "vllm", "ollama"])
    ap.add_argument("--n-ctx", type=int, default=0)
    ns = ap.parse_args(argv)
    fake = FakeOpenAI(models=[m for m in ns.models.split(",") if m], api_key=ns.api_key, port=ns.port,
                      server=ns.server, n_ctx=ns.n_ctx or None)
    if ns.port_file:
        tmp = Path(ns.port_file + ".tmp")
        tmp.write_text(str(fake.port))
        tmp.rename(ns.port_file)
    print(f"fake openai listening on {fake.base_url}", flush=True)
    try:
        fake._server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
