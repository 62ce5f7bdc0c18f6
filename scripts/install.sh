#!/usr/bin/env bash
# Install wgs for development into ./.venv (idempotent; safe to re-run).
#
#   ./scripts/install.sh
#
# Needs python3 >= 3.11 (override with PYTHON=/path/to/python3.x). Creates .venv next to this
# repository's pyproject.toml, upgrades pip and installs wgs in editable mode with the dev tools
# (pytest, ruff, mypy, grpcio-tools). Afterwards: .venv/bin/wgs --help
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
        return 0
    fi
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if ! PY="$(find_python)"; then
    echo "install.sh: need python3 >= 3.11 (none found on PATH; set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "install.sh: $PY is older than 3.11" >&2
    exit 1
fi

if [[ -x .venv/bin/python ]] && ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "install.sh: existing .venv uses Python < 3.11; recreating it" >&2
    rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "install.sh: creating .venv with $("$PY" --version 2>&1)"
    "$PY" -m venv .venv
fi

.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

echo "install.sh: done. Try: .venv/bin/wgs --help"
