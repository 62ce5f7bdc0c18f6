"""Several supervisor replicas (issue 13): what the manifests must hold for them to work together.

Each replica must be reachable by the others at the address it advertises (its stable pod DNS name
under the headless Service, allowed by the NetworkPolicies and named in the TLS certificate), one
may be down at a time, and its memory limit must hold the live chats its cap lets in.
"""

from __future__ import annotations

import re
import subprocess
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.supervisor.admission import RESERVE_FRACTION, Admission, Memory
from services.supervisor.peers import advertised
from tests.deploy.k8s import DEPLOY, OVERLAYS, Obj, env_map, get, of_kind, pod_spec
from wgs.common import tls
from wgs.common.errors import ResourceExhausted
from wgs.common.settings import DEFAULT_PORTS, ENV_VARS

ENV_DEFAULTS = {v.name: v.default for v in ENV_VARS}
MIB = 1 << 20
# Memory the supervisor needs besides its chats' processes, counted in the capacity arithmetic
# (deploy/README.md "Several supervisors"). Measured: 56 MiB RSS with 100 live native chats, plus its
# three warm run monitors (6 MiB each); the rest is room for `kubectl exec … wgs …` commands (~50 MiB each),
# TLS and span export buffers.
SUPERVISOR_OVERHEAD_BYTES = 256 * MIB
# A live native chat (agent after answering + its run monitor), each physical page counted once, as
# the pod's cgroup is charged: 34.5 MiB (100 chats, deploy/README.md). WGS_CHAT_MEMORY_BYTES must not
# be below it, or admission lets in chats the limit cannot hold.
MEASURED_NATIVE_CHAT_BYTES = int(34.5 * MIB)

_SUFFIX = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity (`4608Mi`, `4.5Gi`, `2G`, `1048576`) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(text))
    assert m, f"memory quantity {text!r} not understood"
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


def test_quantity_bytes() -> None:
    assert quantity_bytes("4608Mi") == quantity_bytes("4.5Gi") == 4608 * MIB
    assert quantity_bytes("2G") == 2_000_000_000 and quantity_bytes("512") == 512


def _supervisor(objs: list[Obj]) -> tuple[Obj, Obj, Obj]:
    """(StatefulSet, pod spec, supervisor container)."""
    sts = get(objs, "StatefulSet", "wgs-supervisor")
    pod = pod_spec(sts)
    container = next(c for c in pod["containers"] if c["name"] == "supervisor")
    return sts, pod, container


def _value(env: dict[str, Obj], name: str) -> str:
    var = env.get(name)
    if var is None:
        return ENV_DEFAULTS[name]
    assert "value" in var, f"{name} must be a plain value here"
    return str(var["value"])


def _expanded_env(container: Obj, pod_name: str, namespace: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it for one pod: downward-API fields filled
    in, `$(VAR)` replaced by variables defined *earlier* in the list (later ones stay literal)."""
    out: dict[str, str] = {}
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                    lambda m: out.get(m.group(1), m.group(0)), str(e["value"]))
        elif "fieldRef" in e.get("valueFrom", {}):
            out[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


def _namespace(objs: list[Obj], sts: Obj) -> str:
    return str(sts["metadata"].get("namespace", "default"))


# --- replicas, budget, spread ---------------------------------------------------------------------


def test_prod_runs_three_supervisors_one_may_be_down_spread_over_nodes(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["prod"]
    sts, pod, _ = _supervisor(objs)
    assert sts["spec"]["replicas"] == 3
    # Independent replicas: a pod that is not Ready must not hold back the replacement of the others.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    budgets = [p for p in of_kind(objs, "PodDisruptionBudget")
               if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
    assert len(budgets) == 1, f"supervisor pods need exactly one PodDisruptionBudget, found {len(budgets)}"
    assert budgets[0]["spec"] == {"maxUnavailable": 1, "selector": budgets[0]["spec"]["selector"]}
    assert budgets[0]["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    spreads = [c for c in pod.get("topologySpreadConstraints", [])
               if c["topologyKey"] == "kubernetes.io/hostname"
               and c["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]]
    assert spreads and spreads[0]["maxSkew"] == 1, "supervisor replicas are not spread over nodes"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_each_replica_advertises_its_stable_pod_dns_name(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    sts, _, container = _supervisor(objs)
    namespace = _namespace(objs, sts)
    env = env_map(container)
    assert env["WGS_SUPERVISOR_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    headless = get(objs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None", "the StatefulSet's serviceName must be a headless Service"
    assert headless["spec"].get("publishNotReadyAddresses") is True, (
        "a replica that is not Ready may still own chats: its peers must resolve it")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in headless["spec"]["selector"].items())
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    listen = env["WGS_SUPERVISOR_LISTEN"]["value"]
    seen = set()
    for ordinal in range(max(3, sts["spec"]["replicas"])):  # also the names of a scaled-up set
        pod_name = f"{sts['metadata']['name']}-{ordinal}"
        expanded = _expanded_env(container, pod_name, namespace)
        assert expanded["WGS_SUPERVISOR_ID"] == pod_name
        address = expanded["WGS_SUPERVISOR_ADVERTISE_ADDR"]
        assert "$(" not in address, f"{address}: a variable is not defined before WGS_SUPERVISOR_ADVERTISE_ADDR"
        host, _, port = address.rpartition(":")
        assert host == f"{pod_name}.{headless['metadata']['name']}.{namespace}.svc", address
        assert int(port) == grpc_port == DEFAULT_PORTS["supervisor"]
        assert any(p["port"] == int(port) and p["targetPort"] == "grpc" for p in headless["spec"]["ports"])
        assert advertised(address, listen) == address, "the supervisor must advertise the configured name as is"
        seen.add(address)
    assert len(seen) == max(3, sts["spec"]["replicas"])
    # Clients use the load-balanced Service; any replica answers.
    clients = get(objs, "Service", "wgs-supervisor")
    assert clients["spec"].get("clusterIP") != "None" and clients["spec"]["type"] == "ClusterIP"


# --- capacity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_memory_limit_holds_every_chat_the_cap_admits(rendered: dict[str, list[Obj]], overlay: str) -> None:
    _, _, container = _supervisor(rendered[overlay])
    env = env_map(container)
    cap = int(_value(env, "WGS_MAX_LIVE_CHATS"))
    chat = int(_value(env, "WGS_CHAT_MEMORY_BYTES"))
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    assert cap > 0, "WGS_MAX_LIVE_CHATS=0 (no cap) leaves only the memory check between the pod and its limit"
    assert chat >= MEASURED_NATIVE_CHAT_BYTES, (
        f"WGS_CHAT_MEMORY_BYTES={chat} is below what a native chat was measured to use ({MEASURED_NATIVE_CHAT_BYTES})")
    need = cap * chat + SUPERVISOR_OVERHEAD_BYTES
    usable = limit * (1 - RESERVE_FRACTION)
    assert need <= usable, (
        f"{overlay}: {cap} chats x {chat / MIB:g} MiB + {SUPERVISOR_OVERHEAD_BYTES / MIB:g} MiB = {need / MIB:g} MiB "
        f"do not fit in {1 - RESERVE_FRACTION:.0%} of the {limit / MIB:g} MiB limit ({usable / MIB:g} MiB)")
    # The same through the supervisor's own admission check: with the cap's last chat about to be
    # created (the supervisor at its budget, cap - 1 chats at theirs), memory does not refuse it —
    # the cap is what bounds the pod, and the limit is never reached.
    used = SUPERVISOR_OVERHEAD_BYTES + (cap - 1) * chat
    Admission(max_concurrent=1, queue_seconds=0, chat_bytes=chat,
              memory=lambda: Memory(used=used, limit=limit)).check_memory()
    # ... while a chat that would pass the limit is refused (the check is live, not decorative).
    with pytest.raises(ResourceExhausted):
        Admission(max_concurrent=1, queue_seconds=0, chat_bytes=chat,
                  memory=lambda: Memory(used=int(usable) - chat + 1, limit=limit)).check_memory()


def test_prod_supervisor_memory_is_reserved_on_its_node(rendered: dict[str, list[Obj]]) -> None:
    """Request = limit: a node never has to evict a full supervisor (every chat in it) under pressure."""
    _, _, container = _supervisor(rendered["prod"])
    res = container["resources"]
    assert quantity_bytes(res["requests"]["memory"]) == quantity_bytes(res["limits"]["memory"])


# --- shutdown -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_termination_grace_covers_shutdown_and_stopping_agents(rendered: dict[str, list[Obj]],
                                                               overlay: str) -> None:
    """SIGTERM → SIGKILL leaves time for in-flight calls (shutdown grace), for agents being stopped
    (stop grace, then their run monitor's 3 s margin) and for spans to flush."""
    _, pod, container = _supervisor(rendered[overlay])
    env = env_map(container)
    shutdown = float(_value(env, "WGS_SHUTDOWN_GRACE_SECONDS"))
    stop = float(_value(env, "WGS_STOP_GRACE_SECONDS"))
    period = pod["terminationGracePeriodSeconds"]
    assert period >= shutdown + stop + 3 + 5, f"terminationGracePeriodSeconds {period} < {shutdown} + {stop} + 3 + 5"


# --- the certificate names every replica -----------------------------------------------------------


def _readme_certificate() -> Obj:
    text = (DEPLOY / "README.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and doc.get("kind") == "Certificate":
            return doc
    raise AssertionError("deploy/README.md has no cert-manager Certificate example")


def _covers(pattern: str, host: str) -> bool:
    """RFC 6125 §6.4.3 as TLS libraries apply it: a wildcard stands for exactly one leftmost label."""
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


def _dialled_names(objs: list[Obj]) -> list[str]:
    """Every host name a wgs process dials in prod: the Services, and each replica's advertised name."""
    sts, _, container = _supervisor(objs)
    namespace = _namespace(objs, sts)
    names = []
    for service in ("wgs-graph", "wgs-dispatch", "wgs-supervisor"):
        names += [service, f"{service}.{namespace}.svc"]
    for ordinal in range(max(3, sts["spec"]["replicas"]) + 2):
        expanded = _expanded_env(container, f"{sts['metadata']['name']}-{ordinal}", namespace)
        names.append(expanded["WGS_SUPERVISOR_ADVERTISE_ADDR"].rpartition(":")[0])
    return names


def test_documented_certificate_names_every_replica(rendered: dict[str, list[Obj]]) -> None:
    cert = _readme_certificate()
    assert cert["metadata"]["namespace"] == _namespace(rendered["prod"], _supervisor(rendered["prod"])[0])
    assert {"server auth", "client auth"} <= set(cert["spec"]["usages"]), "replicas are servers and clients"
    dns = cert["spec"]["dnsNames"]
    missing = [n for n in _dialled_names(rendered["prod"]) if not any(_covers(p, n) for p in dns)]
    assert not missing, f"the Certificate in deploy/README.md does not name {missing}"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _issue(tmp: Path, dns_names: list[str]) -> tls.TlsConfig:
    """A CA and one certificate for `dns_names` (server and client auth), like cert-manager's wgs-tls."""
    ca_key, ca, key, csr, crt, ext = (tmp / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt",
                                                         "ext.cnf"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=wgs-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(ca_key), "-out", str(ca))
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in dns_names)
                   + "\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=wgs", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
             "-extfile", str(ext), "-out", str(crt))
    return tls.TlsConfig(cert_file=str(crt), key_file=str(key), ca_file=str(ca), client_auth=True)


def _health(port: int, cfg: tls.TlsConfig, name: str) -> grpc.StatusCode | int:
    creds = tls.channel_credentials(cfg)
    assert creds is not None
    options = [("grpc.ssl_target_name_override", name)]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
        return int(resp.status)


def test_a_replica_verifies_its_peer_by_the_documented_certificate(rendered: dict[str, list[Obj]],
                                                                    tmp_path: Path) -> None:
    """With the Certificate of deploy/README.md (one for every service, mutual TLS as in prod), a
    replica dialling a peer's advertised pod DNS name gets through gRPC's own hostname check; a name
    the certificate does not cover is refused."""
    cfg = _issue(tmp_path, list(_readme_certificate()["spec"]["dnsNames"]))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(cfg))
    server.start()
    try:
        for peer in _dialled_names(rendered["prod"]):
            assert _health(port, cfg, peer) == health_pb2.HealthCheckResponse.SERVING, peer
        assert _health(port, cfg, "wgs-supervisor-0.other-headless.wgs.svc") == grpc.StatusCode.UNAVAILABLE
        assert _health(port, cfg, "a.wgs-supervisor-0.wgs-supervisor-headless.wgs.svc") == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
