"""ThinRefusals: under a storm of refused calls, refusals are not exported one span each."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from wgs.common.telemetry import ThinRefusals


def test_refused_calls_are_exported_at_most_once_per_interval_and_others_always() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(ThinRefusals(SimpleSpanProcessor(exported), interval=3600))
    tracer = provider.get_tracer("test")
    for i in range(5):
        with tracer.start_as_current_span("/wgs.v1.ChatService/CreateChat", kind=SpanKind.SERVER) as span:
            span.set_attribute("rpc.grpc.status_code", 8)  # RESOURCE_EXHAUSTED, as the gRPC instrumentation sets it
            span.set_attribute("i", i)
    for code in (0, 3, 14):  # OK, INVALID_ARGUMENT, UNAVAILABLE: every one
        with tracer.start_as_current_span("/wgs.v1.ChatService/CreateChat", kind=SpanKind.SERVER) as span:
            span.set_attribute("rpc.grpc.status_code", code)
    with tracer.start_as_current_span("client call", kind=SpanKind.CLIENT) as span:
        span.set_attribute("rpc.grpc.status_code", 8)  # a refusal this process received: kept
    spans = exported.get_finished_spans()
    refused = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes["rpc.grpc.status_code"] == 8]
    assert [s.attributes["i"] for s in refused] == [0]
    assert sorted(s.attributes["rpc.grpc.status_code"] for s in spans if s not in refused) == [0, 3, 8, 14]
    provider.shutdown()
