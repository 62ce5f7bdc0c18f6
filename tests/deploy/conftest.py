"""Fixtures for the deploy checks. The renderer is required in CI (CI set): missing → the tests
fail. Locally, without it, they are skipped with the command that installs it."""

from __future__ import annotations

import os

import pytest

from tests.deploy.k8s import OVERLAYS, Obj, find_kubectl, render


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = find_kubectl()
    if path is None:
        message = "kubectl (kustomize renderer) not found; install it with deploy/install-tools.sh"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: the deploy checks must run)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[Obj]]:
    return {overlay: render(kubectl, path) for overlay, path in OVERLAYS.items()}
