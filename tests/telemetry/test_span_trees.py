"""Span trees per service, in process, with an in-memory exporter: the graph's RPC span holds its
database spans; the dispatch span carries the resolution with the source of every choice."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer, filters
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util._once import Once

from services.dispatch.config import ConfigStore
from services.dispatch.servicer import DispatchServicer
from services.graph import db, migrate
from services.graph.records import ChatRecords
from services.graph.servicer import RuntimeServicer
from services.graph.store import GraphStore
from wgs.v1 import dispatch_pb2, dispatch_pb2_grpc, runtime_service_pb2, runtime_service_pb2_grpc


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """A global SDK tracer provider for this module (as each service process has one)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "wgs-in-process"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)
    server_instrumentor = GrpcAioInstrumentorServer(filter_=filters.negate(filters.health_check()))
    server_instrumentor.instrument(tracer_provider=provider)
    try:
        yield memory
    finally:
        server_instrumentor.uninstrument()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


async def _serve(register: object) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    register(server)  # type: ignore[operator]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


@pytest.fixture
async def graph(exporter: InMemorySpanExporter, tmp_path: Path) -> AsyncIterator[str]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'graph.db'}")
    migrate.upgrade(engine)
    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=trace.get_tracer_provider())
    store = GraphStore(engine)
    server, address = await _serve(
        lambda s: runtime_service_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(ChatRecords(store)), s))
    exporter.clear()
    yield address
    await server.stop(0)
    await store.close()
    SQLAlchemyInstrumentor().uninstrument()
    engine.dispose()


async def test_graph_rpc_span_holds_its_database_spans(graph: str, exporter: InMemorySpanExporter) -> None:
    async with grpc.aio.insecure_channel(graph) as ch:
        resp = await runtime_service_pb2_grpc.RuntimeServiceStub(ch).CreateChatTask(runtime_service_pb2.CreateChatTaskRequest(
            name="t", supervisor_id="sup-1", lease_seconds=30, executor="native"), timeout=10)
    spans = exporter.get_finished_spans()
    rpc = next(s for s in spans if s.name == "/wgs.v1.RuntimeService/CreateChatTask")
    assert rpc.kind == SpanKind.SERVER
    assert rpc.attributes is not None and rpc.attributes["wgs.supervisor.id"] == "sup-1"
    sql = _children(spans, rpc)
    assert sql, "database spans must be children of the RPC span"
    assert all(s.attributes is not None and s.attributes.get("db.system") == "sqlite" for s in sql)
    statements = " ".join(str((s.attributes or {}).get("db.statement", "")) for s in sql)
    assert "UPDATE counters" in statements and "INSERT INTO tasks" in statements
    assert resp.task.id == ".chat-1"


@pytest.fixture
async def dispatch(exporter: InMemorySpanExporter, tmp_path: Path) -> AsyncIterator[str]:
    config = tmp_path / "config.toml"
    config.write_text('[[endpoints]]\nname = "lambda01"\nurl = "https://lambda01.example:30000"\n'
                      'api_key_env = "LAMBDA_KEY"\ndefault = true\n')
    server, address = await _serve(lambda s: dispatch_pb2_grpc.add_DispatchServiceServicer_to_server(
        DispatchServicer(ConfigStore(config)), s))
    exporter.clear()
    yield address
    await server.stop(0)


async def test_plan_span_carries_the_resolution_and_its_sources(dispatch: str,
                                                               exporter: InMemorySpanExporter) -> None:
    async with grpc.aio.insecure_channel(dispatch) as ch:
        await dispatch_pb2_grpc.DispatchServiceStub(ch).PlanSpawn(dispatch_pb2.PlanSpawnRequest(
            executor="nex", model="qwen3-coder"), timeout=10)
    [span] = [s for s in exporter.get_finished_spans() if s.name == "/wgs.v1.DispatchService/PlanSpawn"]
    attrs = dict(span.attributes or {})
    assert (attrs["wgs.plan.executor"], attrs["wgs.plan.executor.source"]) == ("native", "request")
    assert (attrs["wgs.plan.model"], attrs["wgs.plan.model.source"]) == ("qwen3-coder", "request")
    assert attrs["wgs.plan.endpoint.name"] == "lambda01"
    assert attrs["wgs.plan.endpoint.url"] == "https://lambda01.example:30000"
    assert attrs["wgs.plan.endpoint.source"] == "config default (endpoint 'lambda01')"
