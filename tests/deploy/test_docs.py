"""deploy/README.md documents every environment variable and the commands the checks rely on."""

from __future__ import annotations

import re

from tests.deploy.k8s import DEPLOY
from wgs.common.settings import ENV_VARS

README = DEPLOY / "README.md"


def _table_rows() -> dict[str, str]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"^\|\s*`([A-Z0-9_]+)`\s*\|\s*([^|]+)\|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_every_env_var_is_in_the_readme_table_with_its_readers() -> None:
    rows = _table_rows()
    missing = [v.name for v in ENV_VARS if v.name not in rows]
    assert not missing, f"deploy/README.md section 8 lacks {missing}"
    for var in ENV_VARS:
        documented = {s.strip() for s in rows[var.name].split(",")}
        assert documented == set(var.services), f"{var.name}: README says {documented}, ENV_VARS {var.services}"
    unknown = set(rows) - {v.name for v in ENV_VARS}
    assert not unknown, f"README documents variables that ENV_VARS does not declare: {sorted(unknown)}"


def test_readme_gives_the_commands_users_need() -> None:
    text = README.read_text()
    for needed in ("docker build -t wgs:0.1.0 .", "kind load docker-image wgs:0.1.0",
                   "kubectl apply -k deploy/k8s/overlays/dev", "kubectl apply -k deploy/k8s/overlays/prod",
                   "port-forward svc/jaeger 16686", "port-forward svc/wgs-supervisor 50153",
                   "WGS_SUPERVISOR_ADDR=127.0.0.1:50153", "WGS_JAEGER_URL=", "/trace/",
                   "create secret generic wgs-database", "create secret generic wgs-llm-keys",
                   "deploy/ci-validate.sh"):
        assert needed in text, f"deploy/README.md lacks {needed!r}"
