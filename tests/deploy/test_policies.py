"""Policies every rendered overlay must meet: probes, security context, images, resources,
shutdown grace, environment variables, Service ports, ServiceAccounts and secrets."""

from __future__ import annotations

import re

import pytest

from tests.deploy.k8s import (
    HEALTH_NAMES,
    OVERLAYS,
    WGS_SERVICES,
    Obj,
    containers,
    env_map,
    get,
    is_wgs,
    name,
    of_kind,
    pod_spec,
    wgs_service_containers,
    wgs_service_of,
    workloads,
)
from wgs.common.settings import DEFAULT_PORTS, ENV_VARS

ENV_BY_NAME = {v.name: v for v in ENV_VARS}
OVERLAY_NAMES = sorted(OVERLAYS)
SECRETISH = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD|PASSWD|DATABASE_URL|_URL_WITH_PASSWORD)$")
URL_WITH_PASSWORD = re.compile(r"://[^/@:\s]+:[^/@\s]+@")


def _grace(env: dict[str, Obj]) -> float:
    var = env.get("WGS_SHUTDOWN_GRACE_SECONDS")
    return float(var["value"] if var and "value" in var else ENV_BY_NAME["WGS_SHUTDOWN_GRACE_SECONDS"].default)


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_each_service_container_has_grpc_readiness_and_liveness_probes(rendered: dict[str, list[Obj]],
                                                                       overlay: str) -> None:
    seen = set()
    for service, ref in wgs_service_containers(rendered[overlay]):
        seen.add(service)
        c = ref.container
        port = DEFAULT_PORTS[service]
        assert [p["containerPort"] for p in c["ports"] if p.get("name") == "grpc"] == [port], ref.where
        # With TLS (prod) the kubelet, which speaks no TLS, probes the plaintext health-only listener.
        health = env_map(c).get("WGS_HEALTH_LISTEN", {}).get("value")
        if health:
            port = int(health.rpartition(":")[2])
            assert [p["containerPort"] for p in c["ports"] if p.get("name") == "health"] == [port], ref.where
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = c.get(kind)
            assert probe, f"{ref.where}: no {kind}"
            assert probe.get("grpc") == {"port": port, "service": HEALTH_NAMES[service]}, (
                f"{ref.where}: {kind} must be a native gRPC probe of {HEALTH_NAMES[service]} on {port}")
    assert seen == set(WGS_SERVICES), f"{overlay}: services without a container: {set(WGS_SERVICES) - seen}"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_pods_and_containers_are_locked_down(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for w in workloads(rendered[overlay]):
        pod = pod_spec(w)
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, f"{name(w)}: pod runAsNonRoot"
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name(w)}: pod seccomp"
        assert pod.get("automountServiceAccountToken") is False, f"{name(w)}: service account token mounted"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name(w)
        if is_wgs(w):
            assert psc.get("runAsUser") == 10001, f"{name(w)}: wgs pods run as uid 10001"
    for ref in containers(rendered[overlay]):
        sc = ref.container.get("securityContext", {})
        uid = sc.get("runAsUser", ref.pod.get("securityContext", {}).get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, f"{ref.where}: numeric non-root runAsUser"
        assert sc.get("readOnlyRootFilesystem") is True, f"{ref.where}: readOnlyRootFilesystem"
        assert sc.get("allowPrivilegeEscalation") is False, f"{ref.where}: allowPrivilegeEscalation"
        assert not sc.get("privileged"), f"{ref.where}: privileged"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{ref.where}: capabilities drop ALL"
        assert not sc.get("capabilities", {}).get("add"), f"{ref.where}: adds capabilities"
        # A read-only root needs a writable /tmp.
        mounts = {m["mountPath"]: m["name"] for m in ref.container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in ref.pod.get("volumes", [])}
        assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{ref.where}: no emptyDir /tmp"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_images_are_pinned(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for ref in containers(rendered[overlay]):
        image = ref.container["image"]
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{ref.where}: image {image!r} has no tag"
        assert tag != "latest", f"{ref.where}: image {image!r} uses latest"
        assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?([.-][\w.-]+)?", tag), f"{ref.where}: {image!r}: tag is not a version"
        if is_wgs(ref.workload):
            assert repo.rsplit("/", 1)[-1] == "wgs", f"{ref.where}: wgs workloads run the wgs image"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_every_container_has_requests_and_limits(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for ref in containers(rendered[overlay]):
        res = ref.container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert res.get(part, {}).get(resource), f"{ref.where}: no {part}.{resource}"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_termination_grace_exceeds_the_services_shutdown_grace(rendered: dict[str, list[Obj]],
                                                               overlay: str) -> None:
    for service, ref in wgs_service_containers(rendered[overlay]):
        env = env_map(ref.container)
        grace = _grace(env)
        if service == "supervisor":
            # It may still be stopping agents (SIGTERM, then SIGKILL after WGS_STOP_GRACE_SECONDS).
            stop = env.get("WGS_STOP_GRACE_SECONDS", {}).get("value", ENV_BY_NAME["WGS_STOP_GRACE_SECONDS"].default)
            grace += float(stop)
        period = ref.pod.get("terminationGracePeriodSeconds", 30)
        assert period > grace + 5, f"{ref.where}: terminationGracePeriodSeconds {period} <= grace {grace} + 5"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_wgs_env_vars_are_known_and_meant_for_that_service(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for ref in containers(rendered[overlay]):
        if not is_wgs(ref.workload):
            continue
        # Init containers belong to the pod's service (e.g. graph's wait-for-database). Agents run in
        # the supervisor's container and inherit its environment, so agent settings belong there.
        services = {s for s, r in wgs_service_containers(rendered[overlay]) if r.workload is ref.workload}
        if "supervisor" in services:
            services.add("agent")
        names = [e["name"] for e in ref.container.get("env", [])]
        assert len(names) == len(set(names)), f"{ref.where}: duplicate env names"
        for var in names:
            if not var.startswith("WGS_"):
                continue
            assert var in ENV_BY_NAME, f"{ref.where}: {var} is not declared in wgs.common.settings.ENV_VARS"
            assert services & set(ENV_BY_NAME[var].services), (
                f"{ref.where}: {var} is not read by {services} (ENV_VARS says {ENV_BY_NAME[var].services})")


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_services_listen_on_all_interfaces_and_find_each_other(rendered: dict[str, list[Obj]],
                                                               overlay: str) -> None:
    objs = rendered[overlay]
    services = {s["metadata"]["name"]: s for s in of_kind(objs, "Service")}
    for service, ref in wgs_service_containers(objs):
        env = env_map(ref.container)
        listen = env[f"WGS_{service.upper()}_LISTEN"]["value"]
        assert listen == f"0.0.0.0:{DEFAULT_PORTS[service]}", f"{ref.where}: {listen}"
        assert env["OTEL_SERVICE_NAME"]["value"] == f"wgs-{service}", ref.where
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http"), ref.where
        assert env["WGS_STATE_DIR"]["value"] in {m["mountPath"] for m in ref.container["volumeMounts"]}, (
            f"{ref.where}: WGS_STATE_DIR is not a mounted volume")
        for peer in ("graph", "dispatch"):
            var = env.get(f"WGS_{peer.upper()}_ADDR")
            if var is None:
                continue
            host, _, port = var["value"].rpartition(":")
            svc = services.get(host)
            assert svc, f"{ref.where}: {var['value']} names no Service"
            assert any(p["port"] == int(port) and p["name"] == "grpc" for p in svc["spec"]["ports"]), ref.where
            assert svc["spec"]["selector"] == {"app.kubernetes.io/name": f"wgs-{peer}"}, ref.where


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_service_ports_are_named_grpc(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    for service in WGS_SERVICES:
        svc = get(objs, "Service", f"wgs-{service}")
        assert svc["spec"]["ports"] == [{"name": "grpc", "port": DEFAULT_PORTS[service], "targetPort": "grpc",
                                         "protocol": "TCP", "appProtocol": "grpc"}], name(svc)
        workload = next(w for w in workloads(objs) if w["metadata"]["name"] == f"wgs-{service}")
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), f"{name(svc)} selects nothing"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_each_service_has_its_own_service_account_without_token(rendered: dict[str, list[Obj]],
                                                                overlay: str) -> None:
    objs = rendered[overlay]
    accounts = {o["metadata"]["name"]: o for o in of_kind(objs, "ServiceAccount")}
    used = []
    for w in workloads(objs):
        sa = pod_spec(w).get("serviceAccountName")
        assert sa in accounts, f"{name(w)}: serviceAccountName {sa!r} is not defined"
        assert accounts[sa].get("automountServiceAccountToken") is False, f"ServiceAccount/{sa}"
        used.append(sa)
    assert len(used) == len(set(used)), f"{overlay}: workloads share a ServiceAccount"


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_secrets_only_by_reference(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    for ref in containers(objs):
        for e in ref.container.get("env", []):
            if SECRETISH.search(e["name"]) or e["name"].startswith("POSTGRES_PASSWORD"):
                assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), (
                    f"{ref.where}: {e['name']} must come from a secretKeyRef")
            if "value" in e:
                assert not URL_WITH_PASSWORD.search(e["value"]), f"{ref.where}: {e['name']} has a password"
        assert not ref.container.get("envFrom"), f"{ref.where}: use explicit secretKeyRef env, not envFrom"
    for cm in of_kind(objs, "ConfigMap"):
        for key, text in cm.get("data", {}).items():
            assert not URL_WITH_PASSWORD.search(text), f"{name(cm)}/{key} holds a credential"
            assert not re.search(r"(?m)^\s*api_key\s*=", text), f"{name(cm)}/{key}: api_key written in config"


def test_prod_defines_no_secret_values(rendered: dict[str, list[Obj]]) -> None:
    assert of_kind(rendered["prod"], "Secret") == [], "prod must not carry Secrets; the operator creates them"
    assert of_kind(rendered["base"], "Secret") == []


def test_dev_secret_references_resolve(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["dev"]
    secrets = {s["metadata"]["name"]: s for s in of_kind(objs, "Secret")}
    for ref in containers(objs):
        for e in ref.container.get("env", []):
            key_ref = e.get("valueFrom", {}).get("secretKeyRef")
            if key_ref is None or key_ref.get("optional"):
                continue
            secret = secrets.get(key_ref["name"])
            assert secret, f"{ref.where}: Secret {key_ref['name']} is not generated in dev"
            assert key_ref["key"] in secret.get("data", {}), f"{ref.where}: key {key_ref['key']} missing"


TLS_SECRET = "wgs-tls"
TLS_FILES = {"WGS_TLS_CERT_FILE": "tls.crt", "WGS_TLS_KEY_FILE": "tls.key", "WGS_TLS_CA_FILE": "ca.crt"}


def test_prod_every_workload_serves_and_dials_mutual_tls_from_the_wgs_tls_secret(rendered: dict[str, list[Obj]]) -> None:
    """Prod (docs/security.md, deploy/README.md): each service serves TLS, requires client
    certificates and dials its peers with its own, all from the cert-manager Secret wgs-tls, mounted
    read-only; a plaintext listener off loopback is never allowed."""
    objs = rendered["prod"]
    assert {w["metadata"]["name"] for w in workloads(objs)} == {f"wgs-{s}" for s in WGS_SERVICES}, (
        "a new prod workload: decide its TLS here first")
    seen = set()
    for service, ref in wgs_service_containers(objs):
        seen.add(service)
        tls_volumes = {v["name"] for v in ref.pod.get("volumes", [])
                       if v.get("secret", {}).get("secretName") == TLS_SECRET}
        assert tls_volumes, f"{ref.where}: the pod mounts no Secret {TLS_SECRET}"
        mounts = {m["name"]: m for m in ref.container.get("volumeMounts", []) if m["name"] in tls_volumes}
        assert len(mounts) == 1, f"{ref.where}: Secret {TLS_SECRET} must be mounted once, got {sorted(mounts)}"
        mount = next(iter(mounts.values()))
        assert mount.get("readOnly") is not False, f"{ref.where}: the TLS mount must be read-only"
        volume = next(v for v in ref.pod["volumes"] if v["name"] == mount["name"])
        items = volume["secret"].get("items")
        assert items is None or set(TLS_FILES.values()) <= {i["path"] for i in items}, ref.where
        env = env_map(ref.container)
        for var, file in TLS_FILES.items():
            assert env.get(var, {}).get("value") == f"{mount['mountPath'].rstrip('/')}/{file}", (
                f"{ref.where}: {var} must name {file} in the {TLS_SECRET} mount ({mount['mountPath']})")
        assert env.get("WGS_TLS_CLIENT_AUTH", {}).get("value") == "1", f"{ref.where}: mutual TLS is off"
        assert env.get("WGS_ALLOW_INSECURE_LISTEN", {}).get("value", "0") == "0", (
            f"{ref.where}: prod must not allow a plaintext listener")
    assert seen == set(WGS_SERVICES)


# The Secrets graph and dispatch may reference (dev suffixes generated names with a content hash).
GRAPH_DISPATCH_SECRETS = re.compile(r"\A(wgs-auth|wgs-database|wgs-tls)(-[a-z0-9]{10})?\Z")


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_graph_and_dispatch_reference_no_api_key_secret(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Least privilege: only the supervisor gets LLM API keys (wgs-llm-keys); graph and dispatch
    reference no such Secret, by env, envFrom or volume, and carry no key-shaped variable."""
    objs = rendered[overlay]
    for w in workloads(objs):
        if not is_wgs(w):
            continue
        pod = pod_spec(w)
        services = {wgs_service_of(c) for c in pod["containers"]}
        refs = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        refs |= {s["secret"]["name"] for v in pod.get("volumes", []) for s in v.get("projected", {}).get("sources", [])
                 if "secret" in s}
        for c in pod.get("initContainers", []) + pod["containers"]:
            refs |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                     if "secretKeyRef" in e.get("valueFrom", {})}
            refs |= {f["secretRef"]["name"] for f in c.get("envFrom", []) if "secretRef" in f}
            if services & {"graph", "dispatch"}:
                keys = [e["name"] for e in c.get("env", []) if "API_KEY" in e["name"]]
                assert not keys, f"{name(w)} container {c['name']}: API key variables {keys}"
        if "supervisor" in services:
            assert any(r.startswith("wgs-llm-keys") for r in refs), f"{name(w)}: the supervisor lost its keys"
        elif services & {"graph", "dispatch"}:
            stray = sorted(r for r in refs if not GRAPH_DISPATCH_SECRETS.match(r))
            assert not stray, f"{overlay} {name(w)} references Secrets it must not have: {stray}"
