"""The Dockerfile follows the image rules. No Docker engine runs in CI, so the file is parsed:
pinned slim base, multi-stage wheel build, venv-only runtime, numeric non-root USER, entrypoint."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch

import pytest

from tests.deploy.k8s import ROOT

DOCKERFILE = ROOT / "Dockerfile"
BASE_RE = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


@dataclass
class Stage:
    image: str
    alias: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Logical instructions (continuations joined, comments dropped), split into stages."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], parts[0])
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(image, alias))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM, found {keyword}"
            k, _, v = args.partition("=")
            global_args[k] = v
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def test_base_image_is_pinned_slim_python_311(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "multi-stage build expected"
    for stage in stages:
        if stage.image in {s.alias for s in stages}:
            continue
        assert BASE_RE.match(stage.image), f"base {stage.image!r} is not python:3.11.<patch>-slim-bookworm"
        assert ":latest" not in stage.image
    assert stages[0].image == stages[-1].image, "build and runtime must share the base (venv paths)"


def test_build_stage_builds_a_wheel_and_installs_it_into_the_venv(stages: list[Stage]) -> None:
    build = stages[0]
    runs = " && ".join(build.all("RUN"))
    assert "python -m venv /opt/venv" in runs
    assert "pip wheel" in runs and "/opt/venv/bin/pip install /dist/wgs-" in runs
    assert "test -x /opt/venv/bin/wgs-agent" in runs, "the image must contain the agent the supervisor spawns"


def test_runtime_stage_copies_only_the_venv_and_runs_as_numeric_non_root(stages: list[Stage]) -> None:
    final = stages[-1]
    copies = final.all("COPY")
    assert copies == [f"--from={stages[0].alias} /opt/venv /opt/venv"], f"runtime copies {copies}"
    runs = " ".join(final.all("RUN"))
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runs), "tools in the runtime stage"
    users = final.all("USER")
    assert users, "no USER in the runtime stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == 10001, f"USER {users[-1]!r} must be the numeric uid 10001"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert "--uid 10001" in runs
    assert final.all("WORKDIR"), "no WORKDIR"


def test_runtime_environment_entrypoint_and_state_volume(stages: list[Stage]) -> None:
    final = stages[-1]
    env = " ".join(final.all("ENV"))
    pairs = dict(item.split("=", 1) for item in shlex.split(env))
    assert pairs["PYTHONUNBUFFERED"] == "1"
    assert pairs["WGS_STATE_DIR"] == "/var/lib/wgs"
    assert pairs["PATH"].startswith("/opt/venv/bin:")
    assert json.loads(final.all("VOLUME")[-1]) == [pairs["WGS_STATE_DIR"]]
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["wgs"]
    assert json.loads(final.all("CMD")[-1]) == ["serve", "graph"]
    for service, port in (("GRAPH", 50151), ("DISPATCH", 50152), ("SUPERVISOR", 50153)):
        assert pairs[f"WGS_{service}_LISTEN"] == f"0.0.0.0:{port}"


def test_no_secrets_or_latest_anywhere() -> None:
    text = DOCKERFILE.read_text()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        assert ":latest" not in line
        assert not re.search(r"(?i)\b(ENV|ARG)\b.*(API_KEY|TOKEN|PASSWORD|SECRET)", line), line
        assert not re.search(r"(?i)\bADD\s+https?://", line), "no remote ADD"


def test_console_scripts_exist_for_entrypoint_and_agent() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["wgs"] == "wgs.cli.main:main"
    assert scripts["wgs-agent"] == "wgs.agent.main:main"


def test_build_context_keeps_the_sources_and_drops_the_rest(stages: list[Stage]) -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch(path, p) or fnmatch(path.split("/")[0], p) for p in patterns)

    for kw, args in stages[0].instructions:
        if kw == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                if "[" in src:
                    continue
                assert (ROOT / src).exists(), f"COPY source {src} missing"
                assert not ignored(src), f"COPY source {src} is excluded by .dockerignore"
    for unwanted in (".git", ".venv", ".wgs", "tests", "deploy", ".env"):
        assert ignored(unwanted), f"{unwanted} would be sent to the build context"
