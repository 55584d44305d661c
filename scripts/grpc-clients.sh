#!/usr/bin/env bash
# Installs the real gRPC clients the xDS tests (registry-cli/tests/xds.rs) drive: Python's grpcio
# (PyPI, in a virtual environment of Debian's python3; its C-core resolves `xds:///` targets) and
# Node's @grpc/grpc-js with @grpc/grpc-js-xds (npm). Pinned; reruns reuse the installation.
#
# Sourced by scripts/test (sets REGISTRY_GRPC_PYTHON and REGISTRY_GRPC_NODE_DIR); can be run alone.
set -euo pipefail

GRPCIO_VERSION=1.85.4
GRPC_JS_VERSION=1.14.7
GRPC_JS_XDS_VERSION=1.14.1
GRPC_DIR="${REGISTRY_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/testbed}/grpc-clients"

gc_die() { echo "grpc-clients: $*" >&2; exit 2; }

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

grpc_clients_up() {
  local missing=()
  [ -x /usr/bin/python3 ] || missing+=(python3)
  /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  [ ${#missing[@]} -eq 0 ] || apt_install grpc-clients "${missing[@]}"
  mkdir -p "$GRPC_DIR"
  # Python: grpcio in a venv of Debian's python3 (not whatever python3 is first on the PATH).
  local py="$GRPC_DIR/venv/bin/python"
  if ! "$py" -c "import grpc, sys; sys.exit(grpc.__version__ != '$GRPCIO_VERSION')" 2>/dev/null; then
    echo "grpc-clients: installing grpcio $GRPCIO_VERSION from PyPI" >&2
    rm -rf "$GRPC_DIR/venv"
    /usr/bin/python3 -m venv "$GRPC_DIR/venv" || gc_die "cannot make a venv (Debian: python3-venv)"
    "$py" -m pip install --quiet --disable-pip-version-check "grpcio==$GRPCIO_VERSION" \
      >"$GRPC_DIR/pip-install.log" 2>&1 || gc_die "pip install failed; see $GRPC_DIR/pip-install.log"
  fi
  "$py" -c 'import grpc' 2>/dev/null || gc_die "grpcio does not load; see $GRPC_DIR/pip-install.log"
  # Node: grpc-js and its xDS plugin.
  local manifest
  manifest='{
  "name": "registry-xds-grpc-clients",
  "private": true,
  "dependencies": { "@grpc/grpc-js": "'"$GRPC_JS_VERSION"'", "@grpc/grpc-js-xds": "'"$GRPC_JS_XDS_VERSION"'" }
}'
  if [ ! -f "$GRPC_DIR/package.json" ] || [ "$(cat "$GRPC_DIR/package.json")" != "$manifest" ] ||
     [ ! -d "$GRPC_DIR/node_modules/@grpc/grpc-js-xds" ]; then
    echo "grpc-clients: installing @grpc/grpc-js $GRPC_JS_VERSION and @grpc/grpc-js-xds $GRPC_JS_XDS_VERSION from npm" >&2
    printf '%s\n' "$manifest" > "$GRPC_DIR/package.json"
    (cd "$GRPC_DIR" && npm install --no-audit --no-fund --loglevel=error \
        >"$GRPC_DIR/npm-install.log" 2>&1) ||
      gc_die "npm install failed; see $GRPC_DIR/npm-install.log"
  fi
  (cd "$GRPC_DIR" && node -e "require('@grpc/grpc-js-xds').register()") 2>/dev/null ||
    gc_die "@grpc/grpc-js-xds does not load; see $GRPC_DIR/npm-install.log"
  export REGISTRY_GRPC_PYTHON="$py"
  export REGISTRY_GRPC_NODE_DIR="$GRPC_DIR/node_modules"
  echo "grpc-clients: ready (grpcio $GRPCIO_VERSION, @grpc/grpc-js-xds $GRPC_JS_XDS_VERSION)" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  grpc_clients_up
  echo "export REGISTRY_GRPC_PYTHON=$REGISTRY_GRPC_PYTHON"
  echo "export REGISTRY_GRPC_NODE_DIR=$REGISTRY_GRPC_NODE_DIR"
fi
