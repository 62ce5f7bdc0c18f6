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

import base64
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode
from opentelemetry.util.types import Attributes

_provider: TracerProvider | None = None
_instrumented: set[str] = set()

_log = logging.getLogger("wgs.telemetry")

# OTLP/JSON of spans, built as dicts straight from the SDK's spans. It is what
# MessageToDict(encode_spans(spans)) gives with the trace and span ids as hex (the OTLP/JSON rule,
# where protobuf JSON has base64): camelCase names, fields in field-number order, 64-bit integers as
# strings, enums by name, default values left out, a message field that is set written even when
# empty (`"status": {}`). Going through the protobuf messages and MessageToDict cost the supervisor
# ~15 % of its CPU while 900 exits were recorded at once (docs/performance.md, "900 deaths at
# once"); tests/telemetry/test_file_export.py compares the two on every kind of span and value.
_KIND_NAMES = {
    SpanKind.INTERNAL: "SPAN_KIND_INTERNAL", SpanKind.SERVER: "SPAN_KIND_SERVER",
    SpanKind.CLIENT: "SPAN_KIND_CLIENT", SpanKind.PRODUCER: "SPAN_KIND_PRODUCER",
    SpanKind.CONSUMER: "SPAN_KIND_CONSUMER",
}
_STATUS_NAMES = {StatusCode.OK: "STATUS_CODE_OK", StatusCode.ERROR: "STATUS_CODE_ERROR"}
_FLAGS_HAS_IS_REMOTE = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_FLAGS_IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _json_double(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _any_value(value: Any) -> dict[str, Any]:
    """An AnyValue; ValueError for what the protobuf encoder refuses too (the attribute is dropped)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"{value} is out of the range of int64")
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": _json_double(value)}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Sequence):
        values = [_any_value(v) for v in value]
        return {"arrayValue": {"values": values} if values else {}}
    if isinstance(value, Mapping):
        kvs = [{"key": str(k), "value": _any_value(v)} if str(k) else {"value": _any_value(v)}
               for k, v in value.items()]
        return {"kvlistValue": {"values": kvs} if kvs else {}}
    raise ValueError(f"Invalid type {type(value)} of value {value}")


def _attributes(attributes: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not attributes:
        return out
    for key, value in attributes.items():
        try:
            kv: dict[str, Any] = {"key": key} if key else {}
            kv["value"] = _any_value(value)
        except (ValueError, TypeError) as exc:
            _log.exception("Failed to encode key %s: %s", key, exc)
            continue
        out.append(kv)
    return out


def _flags(context: SpanContext | None) -> int:
    return _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if context is not None and context.is_remote else 0)


def _put_attributes(doc: dict[str, Any], attributes: Any, dropped: int) -> None:
    """`attributes` and `droppedAttributesCount` of a span, event or link, each only when non-empty
    (as MessageToDict leaves out default values)."""
    encoded = _attributes(attributes)
    if encoded:
        doc["attributes"] = encoded
    if dropped:
        doc["droppedAttributesCount"] = dropped


def _span_json(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None
    doc: dict[str, Any] = {"traceId": format(ctx.trace_id, "032x"), "spanId": format(ctx.span_id, "016x")}
    if ctx.trace_state:
        doc["traceState"] = ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())
    if span.parent is not None:
        doc["parentSpanId"] = format(span.parent.span_id, "016x")
    if span.name:
        doc["name"] = span.name
    doc["kind"] = _KIND_NAMES[span.kind]
    if span.start_time:
        doc["startTimeUnixNano"] = str(span.start_time)
    if span.end_time:
        doc["endTimeUnixNano"] = str(span.end_time)
    _put_attributes(doc, span.attributes, span.dropped_attributes)
    if span.events:
        events = []
        for event in span.events:
            ev: dict[str, Any] = {}
            if event.timestamp:
                ev["timeUnixNano"] = str(event.timestamp)
            if event.name:
                ev["name"] = event.name
            _put_attributes(ev, event.attributes, event.dropped_attributes)
            events.append(ev)
        doc["events"] = events
    if span.dropped_events:
        doc["droppedEventsCount"] = span.dropped_events
    if span.links:
        links = []
        for link in span.links:
            ln: dict[str, Any] = {"traceId": format(link.context.trace_id, "032x"),
                                  "spanId": format(link.context.span_id, "016x")}
            _put_attributes(ln, link.attributes, link.dropped_attributes)
            ln["flags"] = _flags(link.context)
            links.append(ln)
        doc["links"] = links
    if span.dropped_links:
        doc["droppedLinksCount"] = span.dropped_links
    status: dict[str, Any] = {}
    if span.status.description:
        status["message"] = span.status.description
    if span.status.status_code in _STATUS_NAMES:
        status["code"] = _STATUS_NAMES[span.status.status_code]
    doc["status"] = status
    doc["flags"] = _flags(span.parent)
    return doc


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The OTLP/JSON ExportTraceServiceRequest of `spans` (grouped by resource, then scope, as the
    OTLP exporters group them)."""
    grouped: dict[Any, dict[Any, list[dict[str, Any]]]] = {}
    for span in spans:
        scopes = grouped.setdefault(span.resource, {})
        scopes.setdefault(span.instrumentation_scope or None, []).append(_span_json(span))
    resource_spans = []
    for resource, scopes in grouped.items():
        scope_spans = []
        for scope, docs in scopes.items():
            scope_doc: dict[str, Any] = {}
            if scope is not None:
                if scope.name:
                    scope_doc["name"] = scope.name
                if scope.version:
                    scope_doc["version"] = scope.version
                scope_attributes = _attributes(scope.attributes)
                if scope_attributes:
                    scope_doc["attributes"] = scope_attributes
            entry: dict[str, Any] = {"scope": scope_doc, "spans": docs}
            if scope is not None and scope.schema_url:
                entry["schemaUrl"] = scope.schema_url
            scope_spans.append(entry)
        resource_attributes = _attributes(resource.attributes)
        rs: dict[str, Any] = {"resource": {"attributes": resource_attributes} if resource_attributes else {},
                              "scopeSpans": scope_spans}
        if resource.schema_url:
            rs["schemaUrl"] = resource.schema_url
        resource_spans.append(rs)
    return {"resourceSpans": resource_spans} if resource_spans else {}


class OtlpJsonFileExporter(SpanExporter):
    """Appends spans to a file as OTLP/JSON lines (the embedded default exporter)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # spans name chats and files: private

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            line = json.dumps(otlp_json(spans), separators=(",", ":")) + "\n"
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
