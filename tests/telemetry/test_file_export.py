"""The embedded trace store: spans exported as OTLP/JSON lines read back as the same tree."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from wgs.common.telemetry import OtlpJsonFileExporter, otlp_json
from wgs.common.traceview import build_tree, linked_traces, load_spans, render_tree, trace_ids_for_chat


def _provider(path: Path, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
    return provider


def test_spans_round_trip_as_a_tree_with_hex_ids(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    sup = _provider(traces / "supervisor.jsonl", "wgs-supervisor").get_tracer("t")
    with sup.start_as_current_span("ChatService/CreateChat", kind=SpanKind.SERVER) as root:
        root.set_attribute("wgs.chat.id", ".chat-1")
        with sup.start_as_current_span("python3", kind=SpanKind.CLIENT) as spawn:
            spawn.set_attribute("process.pid", 4242)
            spawn.set_attribute("process.command_args", ["python3", "-c", "pass"])
            spawn.set_attribute("wgs.stderr.path", "/s/chats/.chat-1/run-1.log")
    creating = format(root.get_span_context().trace_id, "032x")
    with sup.start_as_current_span("agent exit", links=[Link(root.get_span_context())]) as exit_span:
        exit_span.set_attribute("wgs.chat.id", ".chat-1")
        exit_span.set_attribute("process.exit.code", 3)

    # Each line is an OTLP/JSON ExportTraceServiceRequest with hex ids.
    first = json.loads((traces / "supervisor.jsonl").read_text().splitlines()[0])
    span_doc = first["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span_doc["traceId"]) == 32 and int(span_doc["traceId"], 16)

    spans = load_spans(traces)
    assert trace_ids_for_chat(spans, ".chat-1")[0] == creating
    roots = build_tree(spans, creating)
    assert [r.name for r in roots] == ["ChatService/CreateChat"]
    assert [c.name for c in roots[0].children] == ["python3"]
    child = roots[0].children[0]
    assert child.attributes["process.pid"] == 4242
    assert child.attributes["process.command_args"] == ["python3", "-c", "pass"]
    assert roots[0].service == "wgs-supervisor"
    later = linked_traces(spans, creating)
    assert len(later) == 1 and later[0] != creating
    text = render_tree(roots)
    assert "wgs.stderr.path=/s/chats/.chat-1/run-1.log" in text
    assert text.index("ChatService/CreateChat") < text.index("python3")


def test_unreadable_lines_are_skipped(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "x.jsonl").write_text("not json\n\n{}\n")
    assert load_spans(traces) == []


def _reference(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The exporter's document as it was built before (protobuf messages, MessageToDict, ids to hex)."""
    import base64

    def hexify(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
                    else hexify(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [hexify(v) for v in obj]
        return obj

    return cast(dict[str, Any], hexify(MessageToDict(encode_spans(spans))))


def _every_kind_of_span() -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    resources = [Resource.create({"service.name": "wgs-supervisor", "host.pid": 42}),
                 Resource({}, schema_url="https://opentelemetry.io/schemas/1.21.0")]
    for resource, limits in zip(resources, (None, SpanLimits(max_span_attributes=3, max_events=1, max_links=1,
                                                         max_event_attributes=1, max_link_attributes=0)), strict=True):
        provider = TracerProvider(resource=resource, span_limits=limits)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        plain = provider.get_tracer("wgs.supervisor")
        scoped = provider.get_tracer("scoped", "1.2.3", schema_url="https://example.com/s",
                                     attributes={"scope.attr": True})
        nameless = provider.get_tracer("")
        with plain.start_as_current_span("ChatService/CreateChat", kind=SpanKind.SERVER, attributes={
            "wgs.chat.id": ".chat-1", "rpc.grpc.status_code": 0, "big": 2**62, "negative": -7, "ratio": 0.25,
            "whole": 3.0, "nan": float("nan"), "inf": float("inf"), "minus_inf": float("-inf"), "yes": True,
            "no": False, "empty": "", "zero": 0, "argv": ["python3", "-c", "pass"], "ints": [1, 2, 3],
            "floats": [0.5, 1.5], "bools": [True, False], "none": [], "unicode": "é → ✓ \x00 \"q\"",
        }) as root:
            root.add_event("event", {"n": 1, "s": "x"})
            root.add_event("bare", timestamp=1_790_000_000_000_000_000)
            with scoped.start_as_current_span("python3", kind=SpanKind.CLIENT) as child:
                child.set_status(Status(StatusCode.ERROR, "exit code 3"))
            with nameless.start_as_current_span("", kind=SpanKind.PRODUCER) as ok:
                ok.set_status(Status(StatusCode.OK))
            with plain.start_as_current_span("consumer", kind=SpanKind.CONSUMER):
                pass
        remote = SpanContext(trace_id=0x0123456789ABCDEF0123456789ABCDEF, span_id=0x1122334455667788,
                             is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v"), ("a", "b")]))
        with plain.start_as_current_span("agent exit", context=trace.set_span_in_context(NonRecordingSpan(remote)),
                                         links=[Link(root.get_span_context(), {"why": "spawn"}), Link(remote)]) as span:
            span.set_status(Status(StatusCode.ERROR))
        provider.shutdown()
    # What the SDK's providers never make, but a ReadableSpan may hold: no resource attributes, no
    # scope, counts of dropped attributes, events and links.
    bounded = BoundedAttributes(maxlen=1, attributes={"a": 1, "b": 2})
    bare = ReadableSpan("bare", context=SpanContext(trace_id=7, span_id=9, is_remote=False),
                        resource=Resource.get_empty(), attributes=bounded, start_time=5, end_time=6,
                        events=BoundedList.from_seq(1, [Event("e1"), Event("e2", {"x": None})]),
                        links=BoundedList.from_seq(1, [Link(root.get_span_context()), Link(root.get_span_context())]))
    return [*memory.get_finished_spans(), bare]


def test_the_exported_json_is_what_protobuf_message_to_dict_made(tmp_path: Path) -> None:
    """otlp_json builds the dicts directly (cheaper); the file must not change: same keys, same order,
    same values as MessageToDict of the OTLP protobuf encoding, with hex ids."""
    spans = _every_kind_of_span()
    for batch in (spans, spans[:1], spans[2:5], spans[-1:]):
        assert json.dumps(otlp_json(batch)) == json.dumps(_reference(batch))
    path = tmp_path / "t.jsonl"
    OtlpJsonFileExporter(path).export(spans)
    line = path.read_text()
    assert line == json.dumps(_reference(spans), separators=(",", ":")) + "\n"
    assert len(load_spans(tmp_path)) == len(spans)
