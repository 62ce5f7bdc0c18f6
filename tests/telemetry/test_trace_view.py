"""`wgs trace` for people, from real span files (tests/telemetry/spanfiles.py: the OpenTelemetry SDK
exporting through our OtlpJsonFileExporter, as every wgs process does), read back by traceview as
one line per trace or as span trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.telemetry.spanfiles import Spans, tid, write_chat_day
from wgs.common import traceview


@pytest.fixture
def chat_day(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path / "traces", write_chat_day(tmp_path / "traces")


def test_each_trace_is_summed_up_by_its_root_duration_extent_and_what_failed(chat_day: tuple[Path, dict[str, str]]) -> None:
    traces, ids = chat_day
    spans = traceview.load_spans(traces)
    rows = {t.trace_id: t for t in traceview.summaries(spans)}
    assert [t.trace_id for t in traceview.summaries(spans)] == [
        ids[k] for k in ("db", "create", "get", "send", "send2", "exit")]  # oldest first

    create = rows[ids["create"]]
    assert traceview.display_name(create.root) == "ChatService/CreateChat"
    assert create.root.service == "wgs-supervisor" and create.chat_id == ".chat-1"
    assert create.duration_ms == pytest.approx(100) and create.total_ms == pytest.approx(950)  # until agent.start ended
    assert not create.failed  # the probe's 404 is the agent's business: agent.start did not fail

    send = rows[ids["send"]]
    assert not send.failed and send.total_ms == pytest.approx(2000)  # includes the agent's answer
    failed = rows[ids["send2"]]
    assert failed.error == "agent.answer: Could not answer: the endpoint refused the request (HTTP 400)"
    assert rows[ids["exit"]].error == "killed by signal 9 (SIGKILL)"  # the root itself failed: no prefix

    assert rows[ids["get"]].quiet and rows[ids["db"]].quiet
    assert not any(rows[ids[k]].quiet for k in ("create", "send", "send2", "exit"))


def test_a_failed_read_is_not_folded(tmp_path: Path) -> None:
    s = Spans(tmp_path / "traces")
    with s.rpc("supervisor", "ChatService/GetChat", 0, 1, wgs__chat__id=".chat-9") as get:
        get.set_status(Status(StatusCode.ERROR, "StatusCode.NOT_FOUND: chat '.chat-9' does not exist"))
    (row,) = traceview.summaries(traceview.load_spans(tmp_path / "traces"))
    assert row.failed and not row.quiet and "does not exist" in row.error


def test_span_kinds_are_read_from_the_file(chat_day: tuple[Path, dict[str, str]]) -> None:
    traces, _ = chat_day
    kinds = {s.name: s.kind for s in traceview.load_spans(traces)}
    assert kinds["/wgs.v1.ChatService/CreateChat"] == traceview.KIND_SERVER
    assert kinds["GET"] == traceview.KIND_CLIENT
    assert kinds["agent.answer"] == traceview.KIND_INTERNAL


def test_the_listing_is_one_line_per_trace_under_a_header(chat_day: tuple[Path, dict[str, str]]) -> None:
    traces, ids = chat_day
    rows = [t for t in traceview.summaries(traceview.load_spans(traces)) if not t.quiet]
    lines = traceview.render_summaries(rows).splitlines()
    assert lines[0].split() == ["TIME", "TRACE", "ROOT", "DURATION", "TOTAL", "STATUS", "ERROR"]
    assert len(lines) == 1 + 4
    create, send, send2, exit_line = lines[1:]
    assert ids["create"] in create and "ChatService/CreateChat [supervisor]" in create
    assert "100.0 ms" in create and "950.0 ms" in create and create.rstrip().endswith("ok")
    assert "2.00 s" in send  # the answer took two seconds
    assert " ERROR " in send2 and send2.endswith("agent.answer: Could not answer: the endpoint refused the "
                                                  "request (HTTP 400)")
    assert "agent exit [supervisor]" in exit_line and "killed by signal 9" in exit_line
    with_chat = traceview.render_summaries(rows, with_chat=True).splitlines()
    assert with_chat[0].split()[:3] == ["TIME", "TRACE", "CHAT"] and ".chat-1" in with_chat[1]


def test_folded_traces_are_one_line_naming_the_calls(chat_day: tuple[Path, dict[str, str]]) -> None:
    traces, _ = chat_day
    folded = [t for t in traceview.summaries(traceview.load_spans(traces)) if t.quiet]
    note = traceview.quiet_note(folded)
    assert note.startswith("2 traces of reads, watches and background reports not shown")
    assert "GetChat" in note and "database" in note and "--all" in note


def test_trees_show_current_http_names_genai_and_one_line_values(chat_day: tuple[Path, dict[str, str]]) -> None:
    traces, ids = chat_day
    spans = traceview.load_spans(traces)
    answered = traceview.render_tree(traceview.build_tree(spans, ids["send"]))
    for shown in ("http.request.method=POST", "url.full=http://llm:8080/v1/chat/completions",
                  "server.address=llm", "server.port=8080", "http.response.status_code=200",
                  "gen_ai.operation.name=chat", "gen_ai.request.model=qwen3-coder",
                  "gen_ai.usage.input_tokens=42", "gen_ai.usage.output_tokens=7",
                  "gen_ai.response.finish_reasons=stop", "wgs.outcome=answered"):
        assert shown in answered, shown
    assert "rpc.grpc.status_code=0" not in answered and "rpc.method=" not in answered  # in the name already
    assert answered.index("SendMessage") < answered.index("agent.answer") < answered.index("chat qwen3-coder")

    created = traceview.render_tree(traceview.build_tree(spans, ids["create"]))
    assert "process.command_args=wgs-agent native --model 'qwen3 coder'" in created  # argv as a shell reads it
    assert "GET  [wgs-agent]  10.0 ms  ERROR" in created and "status: 404" in created

    failed = traceview.render_tree(traceview.build_tree(spans, ids["send2"]))
    assert "status: Could not answer: the endpoint refused the request (HTTP 400)" in failed  # one line

    db = traceview.render_tree(traceview.build_tree(spans, ids["db"]))
    assert db == "SELECT 1 FROM tasks  [wgs-graph]  1.0 ms"  # a database call is one line: its statement


def test_old_http_attribute_names_are_shown_too(tmp_path: Path) -> None:
    s = Spans(tmp_path / "traces")
    with s.span("agent", "POST", 0, 5, kind=SpanKind.CLIENT, http__method="POST",
                http__url="http://llm/v1/chat/completions", http__status_code=503) as old:
        pass
    text = traceview.render_tree(traceview.build_tree(traceview.load_spans(tmp_path / "traces"), tid(old)))
    assert "http.method=POST" in text and "http.status_code=503" in text and "http.url=http://llm/v1" in text


def test_summary_json_carries_both_durations_and_the_error(chat_day: tuple[Path, dict[str, str]]) -> None:
    traces, ids = chat_day
    rows = {t.trace_id: t for t in traceview.summaries(traceview.load_spans(traces))}
    doc = traceview.summary_as_json(rows[ids["send2"]])
    assert doc["root"] == "/wgs.v1.ChatService/SendMessage" and doc["service"] == "wgs-supervisor"
    assert doc["duration_ms"] == pytest.approx(40) and doc["total_ms"] == pytest.approx(200)
    assert doc["status"] == "error" and doc["error"].startswith("agent.answer: Could not answer")
    assert doc["chat_id"] == ".chat-1" and doc["quiet"] is False and doc["span_count"] == 3
