"""The calls that carry a reply's pieces are not traced (wgs.common.telemetry.UNTRACED_CALLS), nor
the database work inside them, while every other call still is: a real graph service with the
embedded file exporter, an agent publishing pieces of a reply."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ServiceProcess, authed_channel, start_service
from tests.telemetry.spanfiles import wait_spans
from wgs.common import traceview
from wgs.common.auth import AGENT, SUPERVISOR
from wgs.common.telemetry import UNTRACED_CALLS
from wgs.v1 import graph_pb2, graph_pb2_grpc, runtime_pb2, runtime_service_pb2, runtime_service_pb2_grpc

PUBLISH = "/wgs.v1.GraphService/PublishPartialMessage"


@pytest.fixture
def traced_graph(tmp_path: Path) -> Iterator[tuple[ServiceProcess, Path]]:
    state = tmp_path / "state"
    svc = start_service("graph", state, env={"OTEL_SDK_DISABLED": "false", "OTEL_BSP_SCHEDULE_DELAY": "50"})
    try:
        yield svc, state / "traces"
    finally:
        svc.terminate()


def test_reply_pieces_leave_no_spans_and_other_calls_still_do(traced_graph: tuple[ServiceProcess, Path]) -> None:
    assert PUBLISH in UNTRACED_CALLS
    graph, traces = traced_graph
    with authed_channel(graph.address, SUPERVISOR) as sup:
        rt = runtime_service_pb2_grpc.RuntimeServiceStub(sup)
        chat = rt.CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(
            name="pieces", supervisor_id="sup-a", lease_seconds=600), timeout=10).task.id
        rt.RecordRunStarted(runtime_service_pb2.RecordRunStartedRequest(
            chat_id=chat, run=runtime_pb2.Run(number=1, pid=1), supervisor_id="sup-a"), timeout=10)
    with authed_channel(graph.address, AGENT, chat_id=chat, run=1) as ch:
        stub = graph_pb2_grpc.GraphServiceStub(ch)
        text = ""
        for piece in ("Tra", "ced ", "no", "t."):
            resp = stub.PublishPartialMessage(graph_pb2.PublishPartialMessageRequest(
                chat_id=chat, run_number=1, request_id="r1", offset=len(text), text=piece), timeout=10)
            assert resp.delivered == 0  # taken (nobody watches)
            text += piece
        stub.ListMessages(graph_pb2.ListMessagesRequest(chat_id=chat), timeout=10)  # traced, and last

    def listed(spans: list[traceview.Span]) -> bool:
        return any(s.name == "/wgs.v1.GraphService/ListMessages" and s.attributes.get("wgs.chat.id") == chat
                   for s in spans)

    spans = wait_spans(traces, listed, "the ListMessages call")
    assert not [s for s in spans if s.name == PUBLISH]
    # After start-up every database call of the graph is inside a call's span; the pieces' checks
    # (authorization, the store's live-run check) would be roots of their own if they leaked out.
    recorded = next(s for s in spans if s.name == "/wgs.v1.RuntimeService/RecordRunStarted")
    orphans = [s for s in spans if "db.system" in s.attributes and s.start_ns > recorded.end_ns
               and not any(p.span_id == s.parent_span_id for p in spans)]
    assert orphans == []
    listing = next(s for s in spans if s.name == "/wgs.v1.GraphService/ListMessages")
    assert any(s.parent_span_id == listing.span_id and "db.system" in s.attributes for s in spans)
