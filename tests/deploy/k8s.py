"""Helpers for the deploy checks: find the renderer, render overlays, walk pods and containers.

The renderer is the real kustomize built into kubectl (pinned by deploy/install-tools.sh); objects
are validated with kubernetes-validate's bundled JSON schemas, so nothing here needs a network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
KUBECTL_VERSION = "1.37.1"
# Kubernetes version whose schemas every rendered object must satisfy (the oldest we support:
# native gRPC probes are GA since 1.27; StatefulSet PVC retention is GA since 1.32).
K8S_SCHEMA_VERSION = "1.33.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
WGS_SERVICES = ("graph", "dispatch", "supervisor")
HEALTH_NAMES = {"graph": "wgs.v1.GraphService", "dispatch": "wgs.v1.DispatchService",
                "supervisor": "wgs.v1.ChatService"}

Obj = dict[str, Any]


def find_kubectl() -> str | None:
    """WGS_KUBECTL, else the pinned install of deploy/install-tools.sh, else kubectl on PATH."""
    explicit = os.environ.get("WGS_KUBECTL")
    if explicit:
        return explicit
    tools = Path(os.environ.get("WGS_TOOLS_DIR") or Path.home() / ".cache" / "wgs-tools")
    pinned = tools / f"kubectl-{KUBECTL_VERSION}" / "bin" / "kubectl"
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    return shutil.which("kubectl")


def render(kubectl: str, path: Path) -> list[Obj]:
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def get(objs: list[Obj], kind: str, obj_name: str) -> Obj:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == obj_name:
            return o
    raise AssertionError(f"{kind}/{obj_name} not in the rendered output")


def pod_spec(workload: Obj) -> Obj:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def is_wgs(workload: Obj) -> bool:
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    return bool(labels.get("app.kubernetes.io/part-of") == "wgs")


def wgs_service_of(container: Obj) -> str | None:
    """`serve <name>` in the args → the wgs service the container runs."""
    args = list(container.get("command", [])) + list(container.get("args", []))
    for i, arg in enumerate(args[:-1]):
        if arg == "serve" and args[i + 1] in WGS_SERVICES:
            return str(args[i + 1])
    return None


@dataclass(frozen=True)
class ContainerRef:
    workload: Obj
    pod: Obj
    container: Obj
    init: bool

    @property
    def where(self) -> str:
        return f"{name(self.workload)} container {self.container['name']}"


def containers(objs: list[Obj]) -> Iterator[ContainerRef]:
    for w in workloads(objs):
        pod = pod_spec(w)
        for c in pod.get("initContainers", []):
            yield ContainerRef(w, pod, c, True)
        for c in pod["containers"]:
            yield ContainerRef(w, pod, c, False)


def env_map(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def wgs_service_containers(objs: list[Obj]) -> list[tuple[str, ContainerRef]]:
    out = []
    for ref in containers(objs):
        if not ref.init and is_wgs(ref.workload):
            service = wgs_service_of(ref.container)
            assert service, f"{ref.where}: a wgs container must run `serve <graph|dispatch|supervisor>`"
            out.append((service, ref))
    return out
