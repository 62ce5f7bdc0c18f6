"""One trace per chat, across processes: client → supervisor → graph → dispatch → spawn → agent.

Every process (graph, dispatch, supervisor and the spawned wgs-agent) exports over OTLP/gRPC to a
real TraceService receiver on loopback; the test asserts the tree, the attributes, the exit span's
link to the creating trace, and that the API key value appears nowhere in what was exported.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.harness import ServiceProcess, authed_channel, kill_agents, start_service
from wgs.v1 import chat_pb2, chat_pb2_grpc, runtime_pb2

API_KEY = "sk-trace-test-6f1d2c9a8b7e4d3c2b1a"
MODEL = "qwen3-coder"
SERVICES = {"wgs-graph", "wgs-dispatch", "wgs-supervisor", "wgs-agent"}


@pytest.fixture
def traced_stack(tmp_path: Path) -> Iterator[tuple[OtlpReceiver, FakeOpenAI, list[ServiceProcess], dict[str, str]]]:
    with OtlpReceiver() as receiver, FakeOpenAI(models=[MODEL], api_key=API_KEY) as llm:
        state = tmp_path / "state"
        state.mkdir()
        (state / "config.toml").write_text(
            f'[[endpoints]]\nname = "lab"\nurl = "{llm.base_url}"\napi_key_env = "LAB_API_KEY"\ndefault = true\n'
        )
        otel = {"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_TRACES_SAMPLER": "always_on"}
        procs: list[ServiceProcess] = []
        try:
            procs.append(start_service("graph", state, env=otel))
            procs.append(start_service("dispatch", state, env=otel))
            sup_env = {**otel, "WGS_GRAPH_ADDR": procs[0].address, "WGS_DISPATCH_ADDR": procs[1].address,
                       "LAB_API_KEY": API_KEY}
            procs.append(start_service("supervisor", state, env=sup_env))
            yield receiver, llm, procs, sup_env
        finally:
            for p in reversed(procs):
                p.terminate()
            kill_agents(state)


def wait_running(stub: chat_pb2_grpc.ChatServiceStub, chat_id: str, not_pid: int) -> int:
    """Wait (WatchChat) until the chat runs again with a new agent; return its pid."""
    for event in stub.WatchChat(chat_pb2.WatchChatRequest(chat_id=chat_id), timeout=30):
        run = event.chat.runtime.current_run
        if event.chat.runtime.state == runtime_pb2.RUNTIME_STATE_RUNNING and run.pid and run.pid != not_pid:
            return run.pid
    raise AssertionError("the chat did not run again")


def _one(spans: list[ReceivedSpan], **match: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span with {match}, got {[(s.service, s.name) for s in found]}"
    return found[0]


def test_create_chat_is_one_trace_from_client_to_agent(traced_stack: tuple) -> None:
    receiver, _llm, procs, sup_env = traced_stack
    provider = TracerProvider(resource=Resource.create({"service.name": "wgs-test-client"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)))
    tracer = provider.get_tracer("test")

    with authed_channel(procs[2].address) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        with tracer.start_as_current_span("client CreateChat", kind=SpanKind.CLIENT) as client_span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            chat = stub.CreateChat(chat_pb2.CreateChatRequest(executor="nex", model=MODEL, endpoint="lab"),
                                   metadata=list(carrier.items()), timeout=30).chat
        trace_id = format(client_span.get_span_context().trace_id, "032x")
        client_id = format(client_span.get_span_context().span_id, "016x")
        assert chat.runtime.state == runtime_pb2.RUNTIME_STATE_RUNNING, chat.runtime.last_error
        assert chat.trace_id == trace_id
        pid = chat.runtime.current_run.pid

        def complete(spans: list[ReceivedSpan]) -> bool:
            mine = [s for s in spans if s.trace_id == trace_id]
            return SERVICES <= {s.service for s in mine} and any(s.name == "agent.start" for s in mine)

        spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
        by_id = {s.span_id: s for s in spans}

        create = _one(spans, service="wgs-supervisor", name="/wgs.v1.ChatService/CreateChat")
        assert create.parent_span_id == client_id

        def ancestors(span: ReceivedSpan) -> list[str]:
            out = []
            while span.parent_span_id in by_id:
                span = by_id[span.parent_span_id]
                out.append(span.span_id)
            return out

        graph_create = _one(spans, service="wgs-graph", name="/wgs.v1.RuntimeService/CreateChatTask")
        assert create.span_id in ancestors(graph_create)
        assert any(s.service == "wgs-graph" and s.parent_span_id == graph_create.span_id for s in spans), \
            "database spans under the graph RPC"

        plans = [s for s in spans if s.service == "wgs-dispatch" and s.name == "/wgs.v1.DispatchService/PlanSpawn"]
        assert len(plans) == 1  # planned once, before anything was written
        plan = plans[0]
        assert create.span_id in ancestors(plan)
        assert plan.end_time_unix_nano <= graph_create.start_time_unix_nano  # the plan came first
        assert plan.attributes["wgs.plan.executor"] == "native"
        assert plan.attributes["wgs.plan.executor.source"] == "request"
        assert plan.attributes["wgs.plan.model.source"] == "request"
        assert plan.attributes["wgs.plan.endpoint.name"] == "lab"
        assert plan.attributes["wgs.plan.endpoint.url"] == chat.runtime.plan.endpoint.url
        assert "lab" in plan.attributes["wgs.plan.endpoint.source"]

        spawn = _one(spans, service="wgs-supervisor", name="wgs-agent")
        assert spawn.kind == SpanKind.CLIENT.value + 1  # OTLP enum: CLIENT = 3
        assert create.span_id in ancestors(spawn)
        assert spawn.attributes["process.executable.name"] == "wgs-agent"
        assert spawn.attributes["process.pid"] == pid
        assert spawn.attributes["process.command_args"][:2] == ["wgs-agent", "native"]
        assert spawn.attributes["wgs.chat.id"] == chat.id
        assert spawn.attributes["wgs.stderr.path"] == chat.runtime.current_run.stderr_path

        recorded = _one(spans, service="wgs-graph", name="/wgs.v1.RuntimeService/RecordRunStarted")
        assert create.span_id in ancestors(recorded)

        agent_start = _one(spans, service="wgs-agent", name="agent.start")
        assert agent_start.parent_span_id == spawn.span_id
        assert any(s.service == "wgs-agent" and s.parent_span_id == agent_start.span_id for s in spans), \
            "the endpoint check (HTTP client span) under agent.start"

        # A later death is its own span, linked to the creating trace.
        os.kill(pid, signal.SIGKILL)

        def exit_recorded(all_spans: list[ReceivedSpan]) -> bool:
            return any(s.name == "agent exit" and s.attributes.get("process.pid") == pid for s in all_spans)

        exit_span = next(s for s in receiver.wait_for(exit_recorded)
                         if s.name == "agent exit" and s.attributes.get("process.pid") == pid)
        assert trace_id in {t for t, _ in exit_span.links}
        assert exit_span.attributes["wgs.exit.signal"] == "SIGKILL"
        assert exit_span.attributes["error.type"] == "SIGKILL"
        assert exit_span.attributes["wgs.stderr.path"] == chat.runtime.current_run.stderr_path
        assert "wgs.chat.restart_count" in exit_span.attributes
        assert exit_span.status_code == 2  # ERROR

        # After kill -9 of the supervisor and a restart, the adopted agent's exit still links to
        # the creating call (its ids are stored with the chat, not only in the supervisor's memory).
        running = wait_running(stub, chat.id, not_pid=pid)
        procs[2].kill9()
        procs[2] = start_service("supervisor", Path(procs[2].env["WGS_STATE_DIR"]), env=sup_env)
    with authed_channel(procs[2].address) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        adopted = stub.GetChat(chat_pb2.GetChatRequest(chat_id=chat.id), timeout=30).chat
        assert adopted.runtime.current_run.pid == running
        os.kill(running, signal.SIGKILL)

        def adopted_exit(all_spans: list[ReceivedSpan]) -> bool:
            return any(s.name == "agent exit" and s.attributes.get("process.pid") == running for s in all_spans)

        later = next(s for s in receiver.wait_for(adopted_exit)
                     if s.name == "agent exit" and s.attributes.get("process.pid") == running)
        assert (trace_id, create.span_id) in later.links
        stub.DeleteChat(chat_pb2.DeleteChatRequest(chat_id=chat.id), timeout=30)
    provider.shutdown()
    for p in procs:
        p.terminate()  # flush everything each process still holds
    assert all(API_KEY.encode() not in raw for raw in receiver.raw), "API key exported in telemetry"
    assert all(API_KEY not in p.stderr() for p in procs), "API key in a service log"
