"""No span lost at shutdown: SIGTERM flushes what the batch processor still holds. Health checks
are never traced."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fakes.otlp_receiver import OtlpReceiver
from tests.harness import authed_channel, start_service
from wgs.common.auth import SUPERVISOR
from wgs.v1 import dispatch_pb2, dispatch_pb2_grpc


def test_sigterm_flushes_spans_and_health_is_not_traced(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        # An export delay far longer than the test: the span can only arrive through the flush.
        svc = start_service("dispatch", tmp_path / "state", env={
            "OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
        })
        try:
            with authed_channel(svc.address, SUPERVISOR) as ch:
                for _ in range(3):
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                dispatch_pb2_grpc.DispatchServiceStub(ch).PlanSpawn(
                    dispatch_pb2.PlanSpawnRequest(command=["true"]), timeout=5)
            assert receiver.spans == []  # still held in the batch processor
        finally:
            assert svc.terminate() == 0
        spans = receiver.wait_for(lambda s: any(x.name.endswith("/PlanSpawn") for x in s), timeout=10)
        assert [s.name for s in spans] == ["/wgs.v1.DispatchService/PlanSpawn"]
        assert spans[0].attributes["wgs.plan.executor"] == "command"
