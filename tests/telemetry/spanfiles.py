"""Span files written the way every wgs process writes them: the OpenTelemetry SDK exporting through
our OtlpJsonFileExporter into <dir>/<service>.jsonl, at chosen times (for `wgs trace` tests)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from wgs.common import traceview
from wgs.common.telemetry import OtlpJsonFileExporter

_IN_MODIFY, _IN_CLOSE_WRITE, _IN_CREATE = 0x2, 0x8, 0x100

T0 = 1_790_000_000_000_000_000  # ns
MS = 1_000_000


class Spans:
    """Writes spans of several services into <dir>/<service>.jsonl, at given times (ms after T0)."""

    def __init__(self, traces: Path) -> None:
        self.traces = traces
        self._providers: dict[str, TracerProvider] = {}

    def tracer(self, service: str) -> trace.Tracer:
        if service not in self._providers:
            p = TracerProvider(resource=Resource.create({"service.name": f"wgs-{service}"}))
            p.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(self.traces / f"{service}.jsonl")))
            self._providers[service] = p
        return self._providers[service].get_tracer("test")

    @contextmanager
    def span(self, service: str, name: str, start: float, end: float, *, parent: Span | None = None,
             kind: SpanKind = SpanKind.INTERNAL, error: str | None = None,
             **attributes: Any) -> Iterator[Span]:
        ctx = trace.set_span_in_context(parent) if parent is not None else trace.set_span_in_context(
            trace.INVALID_SPAN)
        attrs = {k.replace("__", "."): v for k, v in attributes.items()}
        span = self.tracer(service).start_span(name, context=ctx, kind=kind, attributes=attrs,
                                               start_time=T0 + int(start * MS))
        try:
            yield span
        finally:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end(end_time=T0 + int(end * MS))

    def rpc(self, service: str, method: str, start: float, end: float, *, parent: Span | None = None,
            kind: SpanKind = SpanKind.SERVER, **attributes: Any) -> Any:
        svc, _, name = method.partition("/")
        return self.span(service, f"/wgs.v1.{svc}/{name}", start, end, parent=parent, kind=kind,
                         rpc__system="grpc", rpc__service=f"wgs.v1.{svc}", rpc__method=name,
                         rpc__grpc__status_code=0, **attributes)


def tid(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def write_chat_day(traces: Path) -> dict[str, str]:
    """Span files of one chat's life as the services trace it: create (with the agent's start, whose
    endpoint probe gets a 404), a GetChat, a message answered by the model, a message the model
    fails, an exit; plus database work outside any call. Returns the trace ids by what they are."""
    s = Spans(traces)
    ids: dict[str, str] = {}
    with s.rpc("supervisor", "ChatService/CreateChat", 0, 100) as create:
        with s.rpc("graph", "RuntimeService/CreateChatTask", 10, 20, parent=create, wgs__chat__id=".chat-1"):
            pass
        with s.span("supervisor", "wgs-agent", 30, 60, parent=create, kind=SpanKind.CLIENT,
                    wgs__chat__id=".chat-1", process__pid=4242,
                    process__command_args=["wgs-agent", "native", "--model", "qwen3 coder"]) as spawn, \
                s.span("agent", "agent.start", 800, 950, parent=spawn, wgs__chat__id=".chat-1") as start:
            with s.span("agent", "GET", 810, 820, parent=start, kind=SpanKind.CLIENT, error="404",
                        http__request__method="GET", url__full="http://llm:8080/props",
                        server__address="llm", server__port=8080, http__response__status_code=404):
                pass
    ids["create"] = tid(create)
    with s.rpc("supervisor", "ChatService/GetChat", 1000, 1005) as get, \
            s.rpc("graph", "RuntimeService/GetChatRecord", 1001, 1004, parent=get, wgs__chat__id=".chat-1"):
        pass
    ids["get"] = tid(get)
    with s.rpc("supervisor", "ChatService/SendMessage", 2000, 2050) as send:
        with s.rpc("graph", "GraphService/AppendMessage", 2010, 2040, parent=send, wgs__chat__id=".chat-1") as app, \
                s.span("agent", "agent.answer", 2045, 4000, parent=app, wgs__chat__id=".chat-1",
                       wgs__outcome="answered") as answer, \
                s.span("agent", "chat qwen3-coder", 2050, 3990, parent=answer, kind=SpanKind.CLIENT,
                       gen_ai__operation__name="chat", gen_ai__request__model="qwen3-coder",
                       gen_ai__usage__input_tokens=42, gen_ai__usage__output_tokens=7,
                       gen_ai__response__finish_reasons=["stop"], server__address="llm") as chat, \
                s.span("agent", "POST", 2051, 3989, parent=chat, kind=SpanKind.CLIENT,
                       http__request__method="POST", url__full="http://llm:8080/v1/chat/completions",
                       server__address="llm", server__port=8080, http__response__status_code=200):
            pass
    ids["send"] = tid(send)
    with s.rpc("supervisor", "ChatService/SendMessage", 5000, 5040) as send2:
        with s.rpc("graph", "GraphService/AppendMessage", 5010, 5030, parent=send2, wgs__chat__id=".chat-1") as app2, \
                s.span("agent", "agent.answer", 5035, 5200, parent=app2, wgs__chat__id=".chat-1",
                       wgs__outcome="error", error="Could not answer: the endpoint refused the request\n(HTTP 400)"):
            pass
    ids["send2"] = tid(send2)
    with s.span("supervisor", "agent exit", 9000, 9000, wgs__chat__id=".chat-1", process__exit__code=-1,
                wgs__exit__signal="SIGKILL", error="killed by signal 9 (SIGKILL)") as exit_span:
        pass
    ids["exit"] = tid(exit_span)
    with s.span("graph", "SELECT graph.db", -50, -49, db__system="sqlite",
                db__statement="SELECT 1\n  FROM tasks") as db:
        pass
    ids["db"] = tid(db)
    return ids


def wait_spans(traces: Path, done: Callable[[list[traceview.Span]], bool], what: str,
               timeout: float = 60) -> list[traceview.Span]:
    """Block until the span files satisfy `done` (inotify on the directory: exporters append)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        traces.mkdir(parents=True, exist_ok=True, mode=0o700)
        assert libc.inotify_add_watch(fd, str(traces).encode(), _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE) >= 0
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            spans = traceview.load_spans(traces)
            if done(spans):
                return spans
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the span files never showed {what}"
            if poller.poll(remaining * 1000):
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, 65536)
    finally:
        os.close(fd)
