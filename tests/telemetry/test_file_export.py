"""The embedded trace store: spans exported as OTLP/JSON lines read back as the same tree."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind

from wgs.common.telemetry import OtlpJsonFileExporter
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
