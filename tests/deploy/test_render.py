"""Every overlay renders with the real kustomize and every object is valid Kubernetes."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.deploy.k8s import K8S_SCHEMA_VERSION, OVERLAYS, Obj, name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_renders_the_three_services(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    kinds = {name(o) for o in objs}
    for expected in ("Deployment/wgs-graph", "Deployment/wgs-dispatch", "StatefulSet/wgs-supervisor",
                     "Service/wgs-graph", "Service/wgs-dispatch", "Service/wgs-supervisor"):
        assert expected in kinds, f"{overlay}: {expected} missing"
    names = [name(o) + "@" + o["metadata"].get("namespace", "") for o in objs]
    assert len(names) == len(set(names)), f"{overlay}: duplicate objects"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_matches_the_kubernetes_schema(rendered: dict[str, list[Obj]], overlay: str) -> None:
    errors = []
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, K8S_SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.caught.path)
            errors.append(f"{name(obj)}: {path}: {exc.caught.message}")
    assert not errors, f"{overlay} is not valid Kubernetes {K8S_SCHEMA_VERSION}:\n" + "\n".join(errors)


def test_schema_validation_rejects_a_broken_object() -> None:
    """The validator runs offline with bundled schemas and does reject bad objects (no silent pass)."""
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {"spec": {"containers": []}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_SCHEMA_VERSION, strict=True)
    unknown_field = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "automount": False}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown_field, K8S_SCHEMA_VERSION, strict=True)
