"""The image's build stage, without a container engine: build the wheel from exactly what the
Dockerfile copies (pyproject.toml, README.md, wgs/, services/) and check it holds everything the
runtime needs — every tracked module, the Alembic migrations, the run monitor, both console scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.k8s import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    context = tmp_path_factory.mktemp("docker-context")
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for tree in ("wgs", "services"):
        shutil.copytree(ROOT / tree, context / tree, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--wheel-dir", str(dist), str(context)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = dist.glob("wgs-*.whl")
    return zipfile.ZipFile(path)


def _tracked(*trees: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *trees], cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.splitlines() if (ROOT / p).exists()]


def test_wheel_holds_every_tracked_module_and_data_file(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    wanted = [p for p in _tracked("wgs", "services") if Path(p).suffix in {".py", ".pyi", ".mako", ".ini", ".toml"}
              or Path(p).name == "py.typed"]
    assert wanted
    missing = [p for p in wanted if p not in names]
    assert not missing, f"the image would lack {missing}"


def test_wheel_has_migrations_run_monitor_and_entry_points(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "services/supervisor/runmon.py" in names
    assert any(n.startswith("services/graph/migrations/versions/") and n.endswith(".py")
               and not n.endswith("__init__.py") for n in names), "no Alembic revision in the wheel"
    assert "services/graph/migrations/script.py.mako" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "wgs = wgs.cli.main:main" in text
    assert "wgs-agent = wgs.agent.main:main" in text
