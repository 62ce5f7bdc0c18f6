"""What each overlay promises: the endpoints config the services load, the dev stack (PostgreSQL,
Jaeger, migrations gate), prod replicas, disruption budgets and the network paths it allows."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path, PurePosixPath

import pytest
from sqlalchemy.engine import make_url

from services.dispatch.config import parse_config
from tests.deploy.k8s import (
    OVERLAYS,
    Obj,
    env_map,
    get,
    of_kind,
    pod_spec,
    wgs_service_containers,
    workloads,
)
from wgs.common.settings import DEFAULT_PORTS


def _secret_value(objs: list[Obj], secret_name: str, key: str) -> str:
    return base64.b64decode(get(objs, "Secret", secret_name)["data"][key]).decode()


def _container(objs: list[Obj], service: str) -> Obj:
    return next(ref.container for s, ref in wgs_service_containers(objs) if s == service)


def _pod(objs: list[Obj], service: str) -> Obj:
    return next(ref.pod for s, ref in wgs_service_containers(objs) if s == service)


def _config_text(objs: list[Obj], service: str) -> str:
    """The file WGS_CONFIG names, resolved through the container's mounts to the ConfigMap key."""
    container, pod = _container(objs, service), _pod(objs, service)
    path = PurePosixPath(env_map(container)["WGS_CONFIG"]["value"])
    for mount in container["volumeMounts"]:
        mount_path = PurePosixPath(mount["mountPath"])
        if path.parent == mount_path:
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            cm = get(objs, "ConfigMap", volume["configMap"]["name"])
            return str(cm["data"][path.name])
    raise AssertionError(f"{service}: WGS_CONFIG {path} is not on a mounted ConfigMap")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_endpoints_config_loads_and_its_keys_reach_the_supervisor(rendered: dict[str, list[Obj]],
                                                                  overlay: str) -> None:
    objs = rendered[overlay]
    text = _config_text(objs, "dispatch")
    assert _config_text(objs, "supervisor") == text, "dispatch and supervisor must read the same config"
    config = parse_config(text, Path("/etc/wgs/config.toml"))  # the dispatch service's own strict parser
    assert config.endpoints, "no [[endpoints]]"
    assert config.defaults.executor and config.defaults.model and config.defaults.endpoint
    supervisor_env = env_map(_container(objs, "supervisor"))
    for endpoint in config.endpoints:
        assert endpoint.api_key_env, f"endpoint {endpoint.name}: no api_key_env"
        var = supervisor_env.get(endpoint.api_key_env)
        assert var, f"supervisor env lacks {endpoint.api_key_env} (endpoint {endpoint.name})"
        assert var["valueFrom"]["secretKeyRef"]["name"] == "wgs-llm-keys"
        assert var["valueFrom"]["secretKeyRef"]["key"] == endpoint.api_key_env


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_graph_waits_for_its_database_before_migrating(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    pod = _pod(objs, "graph")
    graph_url = env_map(_container(objs, "graph"))["WGS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert not graph_url.get("optional"), "the graph cannot run without its database URL"
    init = [c for c in pod.get("initContainers", []) if c["name"] == "wait-for-database"]
    assert init, "graph has no wait-for-database init container"
    assert env_map(init[0])["WGS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == graph_url
    assert init[0]["image"] == _container(objs, "graph")["image"]


def test_dev_runs_one_of_each_with_postgres_and_jaeger(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["dev"]
    for w in workloads(objs):
        assert w["spec"]["replicas"] == 1, w["metadata"]["name"]
    postgres = get(objs, "StatefulSet", "wgs-postgres")
    pg = pod_spec(postgres)["containers"][0]
    assert pg["image"].startswith("postgres:16."), pg["image"]
    assert {m["mountPath"] for m in pg["volumeMounts"]} >= {"/var/lib/postgresql/data", "/var/run/postgresql"}
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    # The generated URL points at the in-cluster PostgreSQL with the generated password.
    url = make_url(_secret_value(objs, env_map(_container(objs, "graph"))["WGS_DATABASE_URL"]["valueFrom"]
                                 ["secretKeyRef"]["name"], "url"))
    pg_env = env_map(pg)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("wgs-postgres", 5432)
    svc = get(objs, "Service", "wgs-postgres")
    assert any(p["port"] == 5432 for p in svc["spec"]["ports"])
    assert url.username == pg_env["POSTGRES_USER"]["value"] and url.database == pg_env["POSTGRES_DB"]["value"]
    pw_ref = pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert url.password == _secret_value(objs, pw_ref["name"], pw_ref["key"])


def test_dev_traces_go_to_jaeger(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["dev"]
    jaeger = get(objs, "Deployment", "jaeger")
    container = pod_spec(jaeger)["containers"][0]
    assert container["image"].startswith("jaegertracing/all-in-one:1.")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ui = get(objs, "Service", "jaeger")
    assert {p["port"] for p in ui["spec"]["ports"]} >= {16686, 4317, 4318}
    for service, ref in wgs_service_containers(objs):
        endpoint = env_map(ref.container)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"]
        host, _, port = endpoint.removeprefix("http://").partition(":")
        collector = get(objs, "Service", host)
        assert collector["spec"]["selector"] == jaeger["spec"]["selector"]["matchLabels"], service
        target = next(p["targetPort"] for p in collector["spec"]["ports"] if p["port"] == int(port))
        assert ports[target] == 4317, f"{service}: OTLP endpoint does not reach Jaeger's OTLP gRPC port"


def test_prod_replicas_budgets_and_supervisor_identity(rendered: dict[str, list[Obj]]) -> None:
    """Graph and dispatch here; the supervisor replicas, their budget and addresses in test_supervisors."""
    objs = rendered["prod"]
    for service in ("graph", "dispatch"):
        deployment = get(objs, "Deployment", f"wgs-{service}")
        assert deployment["spec"]["replicas"] >= 2
        pdb = get(objs, "PodDisruptionBudget", f"wgs-{service}")
        assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    supervisor = get(objs, "StatefulSet", "wgs-supervisor")
    env = env_map(_container(objs, "supervisor"))
    assert env["WGS_SUPERVISOR_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    claim = supervisor["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in _container(objs, "supervisor")["volumeMounts"]}
    assert mounts[claim] == env["WGS_STATE_DIR"]["value"], "chat logs must live on the persistent volume"
    namespace = of_kind(objs, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- NetworkPolicy evaluation (the subset of semantics our policies use) ---------------------------

NS = "wgs"
Peer = tuple[str, dict[str, str]] | str  # (namespace, pod labels) or an IP address


def _labels_match(selector: Obj, labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "evaluator supports matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(rule_peer: Obj, peer: Peer) -> bool:
    if isinstance(peer, str):
        block = rule_peer.get("ipBlock")
        if not block:
            return False
        ip = ipaddress.ip_address(peer)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    namespace, labels = peer
    if "ipBlock" in rule_peer:
        return False
    ns_sel = rule_peer.get("namespaceSelector")
    if ns_sel is None:
        ns_ok = namespace == NS
    else:
        ns_ok = _labels_match(ns_sel, {"kubernetes.io/metadata.name": namespace})
    return ns_ok and _labels_match(rule_peer.get("podSelector", {}), labels)


def _port_matches(rule: Obj, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("protocol", "TCP") == protocol and p["port"] == port for p in ports)


def _direction_allows(policies: list[Obj], direction: str, pod: dict[str, str], other: Peer, port: int,
                      protocol: str) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if direction in p["spec"]["policyTypes"]
                 and _labels_match(p["spec"]["podSelector"], pod)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(pr, other) for pr in peers)) and _port_matches(rule, port, protocol):
                return True
    return False


def _allowed(policies: list[Obj], src: Peer, dst: Peer, port: int, protocol: str = "TCP") -> bool:
    ok = True
    if not isinstance(src, str) and src[0] == NS:
        ok = _direction_allows(policies, "Egress", src[1], dst, port, protocol)
    if ok and not isinstance(dst, str) and dst[0] == NS:
        ok = _direction_allows(policies, "Ingress", dst[1], src, port, protocol)
    return ok


def test_prod_network_paths(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["prod"]
    policies = of_kind(objs, "NetworkPolicy")
    pods = {s: (NS, ref.workload["spec"]["template"]["metadata"]["labels"]) for s, ref in
            wgs_service_containers(objs)}
    graph, dispatch, supervisor = pods["graph"], pods["dispatch"], pods["supervisor"]
    user: Peer = ("default", {"app": "wgs-cli"})
    stranger_here: Peer = (NS, {"app": "debug"})
    dns: Peer = ("kube-system", {"k8s-app": "kube-dns"})
    collector: Peer = ("observability", {"app": "otel-collector"})
    database, llm, private, metadata = "192.0.2.10", "104.18.32.7", "10.1.2.3", "169.254.169.254"
    p = DEFAULT_PORTS

    # Only the supervisor (and the agents in its pod) calls graph and dispatch.
    assert _allowed(policies, supervisor, graph, p["graph"])
    assert _allowed(policies, supervisor, dispatch, p["dispatch"])
    for caller in (dispatch, user, stranger_here):
        assert not _allowed(policies, caller, graph, p["graph"])
    for caller in (graph, user, stranger_here):
        assert not _allowed(policies, caller, dispatch, p["dispatch"])
    # The same holds at the receiving end alone (not only because the callers' egress is closed).
    for caller in (dispatch, user, stranger_here, graph):
        if caller is not graph:
            assert not _direction_allows(policies, "Ingress", graph[1], caller, p["graph"], "TCP")
        if caller is not dispatch:
            assert not _direction_allows(policies, "Ingress", dispatch[1], caller, p["dispatch"], "TCP")
    # Users and the CLI reach the supervisor's gRPC port, nothing else.
    assert _allowed(policies, user, supervisor, p["supervisor"])
    assert not _allowed(policies, user, supervisor, 8080)
    # Replicas reach each other's gRPC port (calls forwarded to a chat's owner, placed creates), and
    # only that: both the caller's egress and the callee's ingress allow it.
    assert _allowed(policies, supervisor, supervisor, p["supervisor"])
    assert _direction_allows(policies, "Egress", supervisor[1], supervisor, p["supervisor"], "TCP")
    assert not _allowed(policies, supervisor, supervisor, 8080)
    assert not _allowed(policies, supervisor, stranger_here, p["supervisor"])
    assert not _allowed(policies, graph, supervisor, p["supervisor"]) and not _allowed(
        policies, dispatch, supervisor, p["supervisor"]), "graph and dispatch never call the supervisor"
    assert not _allowed(policies, user, stranger_here, 80), "default deny ingress"
    # Graph: PostgreSQL only; supervisor: public LLM endpoints on 443, never private ranges/metadata.
    assert _allowed(policies, graph, database, 5432)
    assert not _allowed(policies, graph, llm, 443)
    assert not _allowed(policies, dispatch, database, 5432)
    assert not _allowed(policies, supervisor, database, 5432)
    assert _allowed(policies, supervisor, llm, 443)
    assert not _allowed(policies, supervisor, llm, 80)
    for blocked in (private, metadata):
        assert not _allowed(policies, supervisor, blocked, 443)
    assert not _allowed(policies, dispatch, llm, 443)
    assert not _allowed(policies, stranger_here, llm, 443), "default deny egress"
    # Everyone resolves names and exports spans.
    for pod in (graph, dispatch, supervisor):
        assert _allowed(policies, pod, dns, 53, "UDP")
        assert _allowed(policies, pod, dns, 53, "TCP")
        assert _allowed(policies, pod, collector, 4317)
        assert not _allowed(policies, pod, collector, 9999)
