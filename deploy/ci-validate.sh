#!/usr/bin/env bash
# Deploy checks for CI: install the pinned renderer, then render every kustomize overlay, validate
# each object against the Kubernetes JSON schemas and check the policies (tests/deploy).
#
#   deploy/ci-validate.sh          # from anywhere; uses ./.venv of the repository
#
# With CI set, a missing renderer fails the tests instead of skipping them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WGS_KUBECTL="$(deploy/install-tools.sh | tail -n 1)"
export WGS_KUBECTL
PY="${WGS_PYTHON:-$ROOT/.venv/bin/python}"
"$PY" -m pytest tests/deploy -q -p no:cacheprovider
