"""Fixtures for the graph tests: every store test runs on SQLite and, when configured, PostgreSQL.

Workaround, remove once fixed in wgs/common/server.py: ErrorInterceptor wraps every unary-stream
handler as an async generator, but grpc's aio HealthServicer.Watch is a coroutine using
context.write, so Health/Watch fails with INTERNAL and tests.harness.wait_serving never returns.
The graph tests confirm SERVING with a bounded unary Health/Check instead (start_service has
already waited for the address file, written only after SERVING).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.graph import db, migrate
from services.graph.store import GraphStore
from tests import harness


def _wait_serving_check(address: str, service: str = "", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{address} not SERVING within {timeout}s")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=remaining,
                                  wait_for_ready=True)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"{address} not SERVING within {timeout}s") from None
            time.sleep(0.05)


@pytest.fixture(scope="session", autouse=True)
def _health_check_instead_of_watch() -> None:
    harness.wait_serving = _wait_serving_check  # type: ignore[assignment]


@pytest.fixture(params=harness.test_database_urls())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty database (not migrated)."""
    with harness.fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[GraphStore]:
    """A GraphStore over a freshly migrated database."""
    engine = db.create_engine(db_url)
    migrate.upgrade(engine)
    st = GraphStore(engine, hostname="test-host", watch_poll_seconds=0.2)
    try:
        yield st
    finally:
        await st.close()
