"""The agent's partial-reply publisher (wgs/agent/graph_sink.py) against a real graph service: the
first piece of a reply goes out without waiting for more, a burst of pieces is coalesced into few
calls, watchers always end up with exactly the reply's text, a retried reply starts again at 0, and
close() sends what is pending."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from tests.agent.conftest import Chat, OwnGraph, new_chat
from tests.harness import ServiceProcess, authed_aio_channel, authed_channel
from wgs.agent.errors import FAIL_CONTEXT
from wgs.agent.graph_sink import GraphStatusSink
from wgs.agent.status import EndpointWaitingEvent, PartialReplyEvent, Status
from wgs.common.auth import AGENT, CLIENT, SUPERVISOR
from wgs.v1 import (
    graph_pb2,
    graph_pb2_grpc,
    plan_pb2,
    runtime_pb2,
    runtime_service_pb2,
    runtime_service_pb2_grpc,
    task_pb2,
)


@pytest.fixture
def live_chat(chat: Chat) -> Chat:
    """The chat with run 1 recorded as started: its agent token may publish."""
    assert chat.rt is not None
    chat.rt.RecordRunStarted(runtime_service_pb2.RecordRunStartedRequest(
        chat_id=chat.id, run=runtime_pb2.Run(number=1, pid=1), supervisor_id="agent-tests"), timeout=10)
    return chat


class Watcher:
    """A WatchMessages(include_partial) client: the pieces it got, in order, and the text it holds."""

    def __init__(self) -> None:
        self.pieces: asyncio.Queue[task_pb2.PartialMessage] = asyncio.Queue()
        self.held: dict[str, str] = {}

    async def next(self) -> task_pb2.PartialMessage:
        piece = await asyncio.wait_for(self.pieces.get(), 30)
        so_far = self.held.get(piece.request_id, "")
        self.held[piece.request_id] = so_far[: piece.offset] + piece.text
        return piece

    async def until(self, request_id: str, text: str) -> list[task_pb2.PartialMessage]:
        got = []
        while self.held.get(request_id) != text:
            got.append(await self.next())
        return got


@asynccontextmanager
async def watching(graph: ServiceProcess, chat: Chat) -> AsyncIterator[Watcher]:
    """A registered watcher: it has received the chat's user message, stored before it watched."""
    chat.send("a question")
    w = Watcher()
    ready = asyncio.Event()
    async with authed_aio_channel(graph.address, CLIENT) as ch:
        call = graph_pb2_grpc.GraphServiceStub(ch).WatchMessages(
            graph_pb2.WatchMessagesRequest(chat_id=chat.id, include_partial=True), timeout=60)

        async def read() -> None:
            async for resp in call:
                if resp.HasField("partial"):
                    w.pieces.put_nowait(resp.partial)
                else:
                    ready.set()

        reader = asyncio.create_task(read())
        try:
            await asyncio.wait_for(ready.wait(), 30)
            yield w
        finally:
            call.cancel()
            reader.cancel()


@asynccontextmanager
async def sink_for(graph: ServiceProcess, chat: Chat) -> AsyncIterator[GraphStatusSink]:
    async with authed_aio_channel(graph.address, AGENT, chat_id=chat.id, run=1) as ch:
        sink = GraphStatusSink(graph_pb2_grpc.GraphServiceStub(ch), chat.id, 1)  # type: ignore[arg-type]
        try:
            yield sink
        finally:
            await sink.close()


def tokens(n: int) -> str:
    return "".join(f"token{i} " for i in range(n))


async def test_the_first_piece_goes_alone_then_a_burst_is_coalesced(graph: ServiceProcess, live_chat: Chat) -> None:
    async with watching(graph, live_chat) as w, sink_for(graph, live_chat) as sink:
        await sink.partial_reply(PartialReplyEvent("r1", tokens(1), tokens(1)))
        first = await w.next()  # published with nothing more to come: no waiting for company
        assert (first.offset, first.text) == (0, tokens(1))
        for n in range(2, 61):  # then a model streaming far faster than the flush interval
            await sink.partial_reply(PartialReplyEvent("r1", f"token{n - 1} ", tokens(n)))
        rest = await w.until("r1", tokens(60))
    assert len(rest) < 10, [p.text for p in rest]  # 59 pieces, a few calls
    assert rest[0].offset == len(tokens(1))  # each call sends only what watchers do not have


async def test_a_retried_reply_starts_again_at_zero_and_close_sends_what_is_pending(
        graph: ServiceProcess, live_chat: Chat) -> None:
    async with watching(graph, live_chat) as w:
        async with sink_for(graph, live_chat) as sink:
            await sink.partial_reply(PartialReplyEvent("r2", "First att", "First att"))
            assert (await w.next()).text == "First att"
            await sink.partial_reply(PartialReplyEvent("r2", "Second", "Second"))  # the agent retried
            await sink.partial_reply(PartialReplyEvent("r2", " attempt.", "Second attempt."))
        # Leaving sink_for closed the sink, whatever the flush interval said.
        got = await w.until("r2", "Second attempt.")
    assert got[0].offset == 0 and "Second attempt.".startswith(got[0].text)


async def test_pieces_of_a_run_that_is_no_longer_live_are_refused_and_never_raised(
        graph: ServiceProcess, live_chat: Chat) -> None:
    assert live_chat.rt is not None
    live_chat.rt.RecordRunExited(runtime_service_pb2.RecordRunExitedRequest(
        supervisor_id="agent-tests", exits=[runtime_service_pb2.RunExit(
            chat_id=live_chat.id, run=runtime_pb2.Run(number=1, exit_code=0),
            state=runtime_pb2.RUNTIME_STATE_EXITED)]), timeout=10)
    async with authed_aio_channel(graph.address, AGENT, chat_id=live_chat.id, run=1) as ch:
        stub = graph_pb2_grpc.GraphServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.PublishPartialMessage(graph_pb2.PublishPartialMessageRequest(
                chat_id=live_chat.id, run_number=1, request_id="r3", text="late"), timeout=10)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "is not live" in (exc.value.details() or "")
    async with sink_for(graph, live_chat) as sink:
        await sink.partial_reply(PartialReplyEvent("r3", "late", "late"))  # logged, not raised


async def test_status_events_become_the_chats_agent_status(graph: ServiceProcess, live_chat: Chat) -> None:
    """What the agent's Status reports through the real sink is what the chat's record says: the
    wait with its next attempt, the window with how it was learnt, token totals, the last answer
    error, and their clearing by a success and the endpoint's return."""
    assert live_chat.rt is not None
    clock = [datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)]

    def record() -> runtime_pb2.AgentStatus:
        return live_chat.rt.GetChatRecord(runtime_service_pb2.GetChatRecordRequest(  # type: ignore[union-attr]
            chat_id=live_chat.id), timeout=10).runtime.agent

    async with sink_for(graph, live_chat) as sink:
        status = Status(sink, clock=lambda: clock[0])
        await status.context_window(2048, "server", "llama.cpp GET /props n_ctx", 512)
        await status.endpoint_waiting("endpoint http://h:1 unreachable: connection refused", 4.0)
        clock[0] += timedelta(seconds=4)
        await status.endpoint_waiting("endpoint http://h:1 unreachable: connection refused", 8.0)
        await status.token_usage("r1", 1200, 80, "server")
        await status.answer_failed("r1", FAIL_CONTEXT, "Could not answer: the request does not fit")
        await sink.close()
        got = record()
        assert (got.context_window, got.context_window_source, got.context_window_detail) == (
            2048, plan_pb2.CHOICE_SOURCE_SERVER, "llama.cpp GET /props n_ctx")
        assert got.waiting.reason.endswith("connection refused")
        assert got.waiting.since.ToDatetime(UTC) == datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
        assert got.waiting.next_attempt_at.ToDatetime(UTC) == datetime(2026, 3, 1, 12, 0, 12, tzinfo=UTC)
        assert (got.input_tokens, got.output_tokens) == (1200, 80)
        err = got.last_answer_error
        assert (err.error_class, err.request_id, err.message) == (
            "context_overflow", "r1", "Could not answer: the request does not fit")

        await status.endpoint_back()
        await status.token_usage("r2", 300, 20, "server")
        await status.answer_succeeded("r2", 300, 20)
        await sink.close()
        got = record()
        assert not got.HasField("waiting") and not got.HasField("last_answer_error")
        assert (got.input_tokens, got.output_tokens, got.answers) == (1500, 100, 1)


async def test_a_report_the_graph_cannot_take_is_sent_again_until_it_is(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """An agent waiting for its endpoint reports it once: if the graph was restarting then, the chat
    would show a healthy agent for as long as the endpoint stays down."""
    graph = OwnGraph(tmp_path / "own-graph")
    address = graph.serve()
    try:
        with authed_channel(address, SUPERVISOR) as ch:
            chat = new_chat(ch)
            assert chat.rt is not None
            chat.rt.RecordRunStarted(runtime_service_pb2.RecordRunStartedRequest(
                chat_id=chat.id, run=runtime_pb2.Run(number=1, pid=1), supervisor_id="agent-tests"), timeout=10)
        graph.stop()
        async with authed_aio_channel(address, AGENT, chat_id=chat.id, run=1) as ch:
            sink = GraphStatusSink(graph_pb2_grpc.GraphServiceStub(ch), chat.id, 1)  # type: ignore[arg-type]
            reason = "endpoint http://127.0.0.1:1 unreachable: connection refused"
            await sink.endpoint_waiting(EndpointWaitingEvent(reason, datetime.now(UTC)))
            for _ in range(1500):  # until its first try failed (a log record is the only sign): 30 s at most
                if any("sending it again" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the report was never tried")
            graph.serve(graph.port)
            with authed_channel(address, SUPERVISOR) as ch:
                records = runtime_service_pb2_grpc.RuntimeServiceStub(ch)
                for _ in range(600):  # the resend backs off to at most 5 s; 30 s at most
                    rt = records.GetChatRecord(runtime_service_pb2.GetChatRecordRequest(chat_id=chat.id),
                                               timeout=10).runtime
                    if rt.agent.waiting.reason:
                        break
                    await asyncio.sleep(0.05)
            assert rt.agent.waiting.reason == reason and rt.agent.run_number == 1
            await sink.close()
    finally:
        graph.stop()
