"""A small OpenAI-compatible HTTP server for tests (stdlib only), speaking the real protocol.

Use in a test as a context manager (server thread on a free loopback port):

    with FakeOpenAI(models=["qwen3-coder"], api_key="sk-test") as fake:
        fake.script(Reply(status=429, headers={"Retry-After": "1"}), Reply(text="hello"))
        ... fake.base_url ... fake.requests ...

or as a process: `python -m tests.fakes.fake_openai --port-file F [--models a,b] [--api-key K]`
(scripted responses can then be queued with `POST /_fake/script`, a JSON list of Reply fields, and
the recorded requests read with `GET /_fake/requests`).

Default behaviour of POST /v1/chat/completions: answer "echo: <last user message>", streamed as
SSE chunks ending with `data: [DONE]` when the request asks for stream, else a JSON completion.
Scripted replies (consumed in order, one per chat request) can instead: return any status with
headers and an OpenAI error body, delay, hang (until the server stops), close the connection in the
middle of a streamed reply, or reply with given text.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


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


def echo_text(messages: list[dict[str, Any]]) -> str:
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return f"echo: {last.get('content', '') if last else ''}"


class FakeOpenAI:
    def __init__(self, models: list[str] | None = None, api_key: str = "", host: str = "127.0.0.1",
                 port: int = 0, tls: tuple[str, str] | None = None, chunk_size: int = 4) -> None:
        self.models = list(models if models is not None else ["fake-model"])
        self.api_key = api_key
        self.chunk_size = chunk_size
        self.requests: list[Recorded] = []
        self.models_status: int | None = None  # force a status on GET /v1/models
        self.models_hang = False  # GET /v1/models never answers (until the server stops)
        self._script: deque[Reply] = deque()
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

    def wait_path(self, suffix: str, timeout: float = 10.0) -> Recorded:
        """Block until a request whose path ends with `suffix` arrived."""
        def found() -> Recorded | None:
            return next((r for r in self.requests if r.path.endswith(suffix)), None)

        with self._lock:
            if not self._lock.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(f"no request to {suffix} within {timeout}s")
            hit = found()
        assert hit is not None
        return hit

    def _chat_requests_locked(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else Reply()

    # ---- HTTP ---------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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

            def do_GET(self) -> None:
                if self.path == "/_fake/requests":
                    with fake._lock:
                        self._send_json(200, [asdict(r) for r in fake.requests])
                    return
                self._record(None)
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
                self._send_json(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "owned_by": "fake"} for m in fake.models]})

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
                if self.path != "/v1/chat/completions":
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
                if body.get("model") not in fake.models:
                    self._error(404, f"The model `{body.get('model')}` does not exist.")
                    return
                text = reply.text if reply.text is not None else echo_text(body.get("messages") or [])
                if body.get("stream"):
                    self._stream(text, reply)
                else:
                    self._send_json(200, {"id": "chatcmpl-fake", "object": "chat.completion",
                                          "model": body.get("model"),
                                          "choices": [{"index": 0, "finish_reason": "stop",
                                                       "message": {"role": "assistant", "content": text}}]},
                                    reply.headers)

            def _stream(self, text: str, reply: Reply) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.close_connection = True
                size = max(1, fake.chunk_size)
                pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
                if reply.close_mid:
                    pieces = pieces[: max(1, len(pieces) // 2)]
                self._event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                for piece in pieces:
                    self._event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                if reply.close_mid:
                    self.wfile.flush()
                    self.connection.close()
                    return
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
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
    ns = ap.parse_args(argv)
    fake = FakeOpenAI(models=[m for m in ns.models.split(",") if m], api_key=ns.api_key, port=ns.port)
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
