#!/usr/bin/env bash
# Installs the real ZeroMQ Service Suite from npm (broker 1.0.1, client 1.0.3, service 1.0.1) for the
# zss interoperability tests. As published they do not install offline: their `zeromq` dependency is
# forced to 5.3.1 with npm `overrides` and built against Debian's libzmq3-dev
# (npm_config_zmq_external=true) with Node's own headers (/usr/include/node), so nothing is
# downloaded but the npm packages. Reruns reuse the installation.
#
# Sourced by scripts/test (sets ZSS_NODE_MODULES); can be run alone.
set -euo pipefail

ZSS_NODE_DIR="${REGISTRY_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/testbed}/zss-node"

zn_die() { echo "zss-node: $*" >&2; exit 2; }

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

zss_node_up() {
  # Node.js and npm, Node's headers, and what node-gyp needs to build the zeromq module against
  # Debian's libzmq: a fresh machine has none of them.
  local missing=()
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  command -v make >/dev/null || missing+=(make)
  command -v g++ >/dev/null || missing+=(g++)
  command -v python3 >/dev/null || missing+=(python3)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  pkg-config --exists libzmq 2>/dev/null || missing+=(libzmq3-dev)
  local nodedir
  if command -v node >/dev/null; then
    nodedir=$(dirname "$(dirname "$(command -v node)")")
    [ -f "$nodedir/include/node/node.h" ] || missing+=(libnode-dev)
  else
    missing+=(libnode-dev)
  fi
  [ ${#missing[@]} -eq 0 ] || apt_install zss-node "${missing[@]}"
  nodedir=$(dirname "$(dirname "$(command -v node)")")
  [ -f "$nodedir/include/node/node.h" ] || zn_die "missing Node's headers in $nodedir/include/node (Debian: libnode-dev)"
  pkg-config --exists libzmq || zn_die "libzmq is not found by pkg-config (Debian: libzmq3-dev)"
  mkdir -p "$ZSS_NODE_DIR"
  local manifest='{
  "name": "zss-interop",
  "private": true,
  "dependencies": {
    "zmq-service-suite-broker": "1.0.1",
    "zmq-service-suite-client": "1.0.3",
    "zmq-service-suite-service": "1.0.1"
  },
  "overrides": { "zeromq": "5.3.1" }
}'
  if [ ! -f "$ZSS_NODE_DIR/package.json" ] || [ "$(cat "$ZSS_NODE_DIR/package.json")" != "$manifest" ] ||
     [ ! -d "$ZSS_NODE_DIR/node_modules/zmq-service-suite-broker" ]; then
    echo "zss-node: installing the ZSS broker, client and service from npm (zeromq 5.3.1 on Debian's libzmq)" >&2
    printf '%s\n' "$manifest" > "$ZSS_NODE_DIR/package.json"
    (cd "$ZSS_NODE_DIR" &&
      npm_config_zmq_external=true npm_config_nodedir="$nodedir" \
        npm install --no-audit --no-fund --loglevel=error >"$ZSS_NODE_DIR/npm-install.log" 2>&1) ||
      zn_die "npm install failed; see $ZSS_NODE_DIR/npm-install.log"
  fi
  node -e "require('$ZSS_NODE_DIR/node_modules/zeromq')" 2>/dev/null ||
    zn_die "the zeromq module does not load; see $ZSS_NODE_DIR/npm-install.log"
  export ZSS_NODE_MODULES="$ZSS_NODE_DIR/node_modules"
  echo "zss-node: ready ($ZSS_NODE_MODULES)" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  zss_node_up
  echo "export ZSS_NODE_MODULES=$ZSS_NODE_MODULES"
fi
