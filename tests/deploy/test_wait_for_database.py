"""The graph pod's wait-for-database init container, run for real with the project's interpreter
(the image's venv has the same packages): it passes once PostgreSQL accepts the configured
credentials, gives up with a clear line after its budget, and never prints the password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.deploy.k8s import Obj, get, pod_spec


def _script(rendered: dict[str, list[Obj]]) -> list[str]:
    init = pod_spec(get(rendered["dev"], "Deployment", "wgs-graph"))["initContainers"]
    command = next(c for c in init if c["name"] == "wait-for-database")["command"]
    assert command[:2] == ["python", "-c"]
    return [sys.executable, "-c", command[2]]


def _run(rendered: dict[str, list[Obj]], url: str, budget: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WGS_DATABASE_URL": url, "DB_WAIT_SECONDS": budget}
    return subprocess.run(_script(rendered), env=env, capture_output=True, text=True, timeout=60, check=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sqlite_needs_no_wait(rendered: dict[str, list[Obj]]) -> None:
    proc = _run(rendered, "sqlite:////var/lib/wgs/graph.db", "1")
    assert proc.returncode == 0, proc.stderr


def test_unreachable_database_fails_after_the_budget_without_leaking_the_password(
        rendered: dict[str, list[Obj]]) -> None:
    url = f"postgresql+psycopg://wgs:s3cret-pw@127.0.0.1:{_closed_port()}/wgs"
    proc = _run(rendered, url, "2")
    assert proc.returncode == 1
    assert "still unreachable after 2s" in proc.stderr
    assert "waiting for database" in proc.stdout
    assert "s3cret-pw" not in proc.stdout + proc.stderr
    assert "***" in proc.stderr


def test_reachable_postgres_passes(rendered: dict[str, list[Obj]]) -> None:
    url = os.environ.get("WGS_TEST_DATABASE_URL")
    if not url:
        pytest.skip("WGS_TEST_DATABASE_URL not set (CI sets it to the local PostgreSQL)")
    proc = _run(rendered, url, "20")
    assert proc.returncode == 0, proc.stderr
    assert "accepts connections" in proc.stdout
