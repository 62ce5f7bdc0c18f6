"""The agent loop in-process: answers stored in a real graph service, status events, and spans."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from tests.agent.conftest import ASSISTANT, SYSTEM_ERROR, Chat
from tests.agent.recording_sink import RecordingSink
from tests.fakes.fake_openai import FakeOpenAI, Reply
from tests.harness import ServiceProcess, token
from wgs.agent.conversation import Msg
from wgs.agent.graph_link import GraphLink
from wgs.agent.loop import AgentLoop
from wgs.agent.native import NativeBackend
from wgs.agent.openai_http import GenerationSettings, HttpSettings, OpenAIClient, normalize_base_url
from wgs.agent.status import AnswerFailedEvent, AnswerSucceededEvent, TokenUsageEvent
from wgs.common.auth import AGENT


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """A global SDK tracer provider for this module (as the agent process has one)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "wgs-agent-in-process"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)
    try:
        yield memory
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


def native(fake: FakeOpenAI) -> NativeBackend:
    settings = HttpSettings(endpoint=fake.base_url, base_url=normalize_base_url(fake.base_url), model="m",
                            max_retries=1, backoff_base=0.01, read_timeout=10.0)
    return NativeBackend(OpenAIClient(settings), "sys", GenerationSettings(max_tokens=128, temperature=0.3))


def user_message(chat: Chat, content: str) -> Msg:
    rid = chat.send(content)
    stored = next(m for m in chat.messages() if m.request_id == rid)
    return Msg.from_proto(stored)


@pytest.fixture(autouse=True)
def agent_token(chat: Chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process plays the chat's agent for run 1 (the chat is STARTING: the run being spawned)."""
    monkeypatch.setenv("WGS_TOKEN", token(AGENT, chat.id, 1))


async def test_answer_outcomes_reach_the_sink_and_the_chat(graph: ServiceProcess, chat: Chat) -> None:
    sink = RecordingSink()
    with FakeOpenAI(models=["m"]) as fake:
        fake.script(Reply(status=400, error="unsupported parameter"))
        link = GraphLink(graph.address, chat.id)
        loop = AgentLoop(link, native(fake), sink=sink)
        try:
            await loop.backend.start(loop.status)
            failed_msg, ok_msg = user_message(chat, "first"), user_message(chat, "second")
            await loop._answer(failed_msg)
            await loop._answer(ok_msg)
        finally:
            await loop.backend.close()
            await link.close()
    answers = chat.answers()
    assert answers[failed_msg.key][0].role == SYSTEM_ERROR and answers[ok_msg.key][0].role == ASSISTANT
    failed = sink.of(AnswerFailedEvent)
    assert len(failed) == 1 and failed[0].request_id == failed_msg.key and failed[0].kind == "rejected"
    assert "HTTP 400" in failed[0].message and failed[0].message == answers[failed_msg.key][0].content
    done = sink.of(AnswerSucceededEvent)
    assert len(done) == 1 and done[0].request_id == ok_msg.key and done[0].output_tokens > 0
    usage = sink.of(TokenUsageEvent)
    assert [u.request_id for u in usage] == [ok_msg.key] and usage[0].source == "server"
    assert (done[0].input_tokens, done[0].output_tokens) == (usage[0].input_tokens, usage[0].output_tokens)


def _one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_answer_joins_the_senders_trace_and_the_llm_call_is_a_genai_span(
        graph: ServiceProcess, chat: Chat, exporter: InMemorySpanExporter) -> None:
    sender_trace, sender_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with FakeOpenAI(models=["m"], chunk_size=4) as fake:
        fake.script(Reply(text="a reply streamed in 8 chunks!!!!", chunk_delay=0.05))  # 32 chars
        link = GraphLink(graph.address, chat.id)
        loop = AgentLoop(link, native(fake), sink=RecordingSink())
        try:
            await loop.backend.start(loop.status)
            exporter.clear()
            msg = dataclasses.replace(user_message(chat, "hello"),
                                      traceparent=f"00-{sender_trace}-{sender_span}-01")
            await loop._answer(msg)
            plain = user_message(chat, "no trace context")
            await loop._answer(plain)
        finally:
            await loop.backend.close()
            await link.close()
        assert "traceparent" in fake.chat_requests()[0].headers  # the server can join the trace too
    spans = exporter.get_finished_spans()
    answers = [s for s in spans if s.name == "agent.answer"]
    joined, own = answers
    assert format(joined.context.trace_id, "032x") == sender_trace
    assert joined.parent is not None and format(joined.parent.span_id, "016x") == sender_span
    assert own.parent is None and own.context.trace_id != joined.context.trace_id
    chat_span = next(s for s in spans if s.name == "chat m" and s.context.trace_id == joined.context.trace_id)
    assert chat_span.parent is not None and chat_span.parent.span_id == joined.context.span_id
    a = chat_span.attributes or {}
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "m"
    assert a["gen_ai.request.max_tokens"] == 128 and a["gen_ai.request.temperature"] == 0.3
    assert a["gen_ai.response.model"] == "m" and tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    # The span covers the whole stream (8 chunks 50 ms apart), not just the response headers.
    duration = (chat_span.end_time - chat_span.start_time) / 1e9
    assert duration >= 0.35 and 0 < a["gen_ai.response.time_to_first_chunk"] < duration
    assert any(e.name == "gen_ai.response.first_chunk" for e in chat_span.events)
    post = next(s for s in spans if s.name == "POST" and s.parent is not None
                and s.parent.span_id == chat_span.context.span_id)
    p = post.attributes or {}
    assert p["http.request.method"] == "POST" and p["url.full"].endswith("/v1/chat/completions")
    assert p["http.response.status_code"] == 200 and p["server.address"] == "127.0.0.1"
    assert (post.end_time - post.start_time) / 1e9 >= 0.35  # ends with the body, not at the headers
