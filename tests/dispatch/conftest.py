"""Test setup for the dispatch tests.

Workaround, remove once fixed: wgs.common.server.ErrorInterceptor wraps every unary-stream handler as
an async generator, but grpc's aio HealthServicer.Watch is a coroutine that uses context.write, so
Health/Watch fails with INTERNAL and tests.harness.wait_serving (which uses Watch) never returns.
start_service already waits for the address file, which the bootstrap writes only after health is
SERVING; here we confirm that with a bounded unary Health/Check instead of Watch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

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


@pytest.fixture(scope="package", autouse=True)
def _health_check_instead_of_watch() -> Iterator[None]:
    original = harness.wait_serving
    harness.wait_serving = _wait_serving_check  # type: ignore[assignment]
    yield
    harness.wait_serving = original  # type: ignore[assignment]
