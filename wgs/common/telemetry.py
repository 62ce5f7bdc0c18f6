"""OpenTelemetry set-up for every wgs process, configured only by the standard OTEL_* variables.

- OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set: spans go over OTLP/gRPC.
- Otherwise (the embedded default) spans are appended to <state dir>/traces/<service>.jsonl in
  OTLP/JSON encoding (one ExportTraceServiceRequest per line), which `wgs trace` reads.
- OTEL_SDK_DISABLED=true turns tracing off. Sampler, resource attributes and service name come from
  OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME as the SDK defines them.

Health checks and reflection are never traced, nor are the calls that carry a reply's pieces
(UNTRACED_CALLS: a trace of their own for every piece, dozens a second while a reply streams, grew
the embedded trace store by 200-300 KB per second of streaming and cost the graph 1-3 ms of CPU per
piece; see docs/performance.md, "Streaming replies"). Calls refused for load (RESOURCE_EXHAUSTED)
are exported at most one a second (ThinRefusals). Our own attributes live under `wgs.*`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

_provider: TracerProvider | None = None
_instrumented: set[str] = set()

HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hexify(obj: Any) -> Any:
    """OTLP/JSON wants trace and span ids as hex strings, not protobuf-JSON base64."""
    import base64

    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in HEX_ID_FIELDS and isinstance(v, str):
                out[k] = base64.b64decode(v).hex()
            else:
                out[k] = _hexify(v)
        return out
    if isinstance(obj, list):
        return [_hexify(v) for v in obj]
    return obj


class OtlpJsonFileExporter(SpanExporter):
    """Appends spans to a file as OTLP/JSON lines (the embedded default exporter)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # spans name chats and files: private

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        try:
            doc = _hexify(MessageToDict(encode_spans(spans)))
            line = json.dumps(doc, separators=(",", ":")) + "\n"
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


# Server spans of these methods are not recorded; under parent-based sampling (the default) neither
# is anything inside them (their database calls).
UNTRACED_CALLS = frozenset({"/wgs.v1.GraphService/PublishPartialMessage"})


class UntracedCalls(Sampler):
    """The configured sampler, except that calls in UNTRACED_CALLS are dropped."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: SpanKind | None = None,
                      attributes: Attributes = None, links: Sequence[Link] | None = None,
                      trace_state: Any = None) -> SamplingResult:
        if kind == SpanKind.SERVER and name in UNTRACED_CALLS:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"UntracedCalls{{{self.inner.get_description()}}}"


REFUSED_CODE = 8  # google.rpc.Code RESOURCE_EXHAUSTED
REFUSAL_SPAN_INTERVAL = 1.0


class ThinRefusals(SpanProcessor):
    """`inner`, except that server spans of calls refused for load (RESOURCE_EXHAUSTED) are passed
    on at most once per REFUSAL_SPAN_INTERVAL. Under a storm a refusal must cost next to nothing, and
    encoding and writing a span for each was most of what one cost (docs/performance.md, "Overload");
    the supervisor logs how many calls it refused instead (services/supervisor/admission.py)."""

    def __init__(self, inner: SpanProcessor, interval: float = REFUSAL_SPAN_INTERVAL) -> None:
        self.inner = inner
        self.interval = interval
        self._last = -interval

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind == SpanKind.SERVER and (span.attributes or {}).get("rpc.grpc.status_code") == REFUSED_CODE:
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _otlp_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_tracing(service: str, state_dir: Path | None, *, instrument_grpc_server: bool = False,
                  instrument_grpc_client: bool = True, instrument_httpx: bool = False) -> TracerProvider | None:
    """Install the global tracer provider for this process (idempotent)."""
    global _provider
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if _provider is None:
        default_name = f"wgs-{service}"
        attrs = {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or default_name}
        resource = Resource.create(attrs)
        provider = TracerProvider(resource=resource)  # its sampler: OTEL_TRACES_SAMPLER, as the SDK reads it
        provider.sampler = UntracedCalls(provider.sampler)  # before any tracer exists: they copy it
        exporter: SpanExporter | None
        if _otlp_configured():
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif state_dir is not None:
            exporter = OtlpJsonFileExporter(state_dir / "traces" / f"{service}.jsonl")
        else:
            exporter = None
        if exporter is not None:
            # OTEL_BSP_* apply as the SDK defines them; only the export delay defaults shorter than
            # the SDK's 5 s, so `wgs trace` right after a call sees it.
            delay = float(os.environ.get("OTEL_BSP_SCHEDULE_DELAY") or 500)
            provider.add_span_processor(ThinRefusals(BatchSpanProcessor(exporter, schedule_delay_millis=delay)))
        trace.set_tracer_provider(provider)
        _provider = provider
    _instrument(instrument_grpc_server, instrument_grpc_client, instrument_httpx)
    return _provider


def _instrument(server: bool, client: bool, httpx_: bool) -> None:
    from opentelemetry.instrumentation.grpc import filters

    not_health = filters.negate(
        filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))
    )
    if server and "grpc_server" not in _instrumented:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

        GrpcAioInstrumentorServer(filter_=not_health).instrument()
        _instrumented.add("grpc_server")
    if client and "grpc_client" not in _instrumented:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient

        GrpcAioInstrumentorClient(filter_=not_health).instrument()
        GrpcInstrumentorClient(filter_=not_health).instrument()
        _instrumented.add("grpc_client")
    if httpx_ and "httpx" not in _instrumented:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument()
        _instrumented.add("httpx")


def instrument_sqlalchemy(engine: Any) -> None:
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine, enable_commenter=False)


def shutdown_tracing(timeout_millis: int = 5000) -> None:
    """Flush and stop: called on graceful shutdown so no span is lost."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)
        _provider.shutdown()


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def current_traceparent() -> str:
    """W3C traceparent of the current span ("" when there is none)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)
