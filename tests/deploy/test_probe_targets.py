"""The probes point at what the services really report: start graph, dispatch and supervisor as
processes (tests/harness.py) with the manifests' settings and endpoints config, then ask each one's
gRPC health service for exactly the name its Kubernetes probes use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.k8s import Obj, env_map, get, wgs_service_containers
from tests.harness import ServiceProcess, start_service

# Cluster-specific values the local processes replace (addresses, paths); the rest is used as rendered.
LOCAL = {"WGS_GRAPH_LISTEN", "WGS_DISPATCH_LISTEN", "WGS_SUPERVISOR_LISTEN", "WGS_STATE_DIR", "WGS_CONFIG",
         "WGS_GRAPH_ADDR", "WGS_DISPATCH_ADDR", "WGS_DATABASE_URL", "WGS_SUPERVISOR_ID", "WGS_AUTH_SECRET_FILE"}


def _manifest_env(container: Obj) -> dict[str, str]:
    return {k: v["value"] for k, v in env_map(container).items()
            if k.startswith("WGS_") and k not in LOCAL and "value" in v}


@pytest.fixture(scope="module")
def stack(rendered: dict[str, list[Obj]], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[dict[str, ServiceProcess], dict[str, Obj]]]:
    objs = rendered["dev"]
    containers = {s: ref.container for s, ref in wgs_service_containers(objs)}
    state = tmp_path_factory.mktemp("probe-state")
    config = Path(state / "config.toml")
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("wgs-config"))
    config.write_text(cm["data"]["config.toml"])
    procs: dict[str, ServiceProcess] = {}
    try:
        procs["graph"] = start_service("graph", state / "graph", _manifest_env(containers["graph"]))
        procs["dispatch"] = start_service("dispatch", state / "dispatch",
                                          {**_manifest_env(containers["dispatch"]), "WGS_CONFIG": str(config)})
        procs["supervisor"] = start_service("supervisor", state / "supervisor", {
            **_manifest_env(containers["supervisor"]), "WGS_CONFIG": str(config),
            "WGS_GRAPH_ADDR": procs["graph"].address, "WGS_DISPATCH_ADDR": procs["dispatch"].address})
        yield procs, containers
    finally:
        for proc in reversed(list(procs.values())):
            proc.terminate()


@pytest.mark.parametrize("service", ["graph", "dispatch", "supervisor"])
def test_probe_health_name_is_served(stack: tuple[dict[str, ServiceProcess], dict[str, Obj]], service: str) -> None:
    procs, containers = stack
    container = containers[service]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        name = container[kind]["grpc"]["service"]
        with grpc.insecure_channel(procs[service].address) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, f"{service} {kind}: {name}"


def test_unknown_health_name_is_not_found(stack: tuple[dict[str, ServiceProcess], dict[str, Obj]]) -> None:
    """A probe with a wrong name would fail: the health service answers NOT_FOUND for it."""
    procs, _ = stack
    with grpc.insecure_channel(procs["graph"].address) as channel, pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="wgs.v1.Nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_stops_a_service_within_the_pod_grace(rendered: dict[str, list[Obj]],
                                                          stack: tuple[dict[str, ServiceProcess], dict[str, Obj]]
                                                          ) -> None:
    """Stopping a service with SIGTERM (what the kubelet sends) ends it cleanly well within the pod's grace."""
    procs, _ = stack
    period = get(rendered["dev"], "Deployment", "wgs-dispatch")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    code = procs["dispatch"].terminate(timeout=period)
    assert code == 0, procs["dispatch"].stderr()
