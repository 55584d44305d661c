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

zss_node_up() {
  command -v node >/dev/null || zn_die "missing: Node.js (node). Install Debian's nodejs and npm."
  command -v npm >/dev/null || zn_die "missing: npm. Install Debian's npm."
  local nodedir
  nodedir=$(dirname "$(dirname "$(command -v node)")")
  [ -f "$nodedir/include/node/node.h" ] || zn_die "missing Node's headers in $nodedir/include/node (Debian: libnode-dev)"
  if ! pkg-config --exists libzmq 2>/dev/null; then
    echo "zss-node: installing Debian's libzmq3-dev and pkg-config" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libzmq3-dev pkg-config >/dev/null 2>&1 || {
      $sudo apt-get update -qq >/dev/null 2>&1 || true
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libzmq3-dev pkg-config >/dev/null ||
        zn_die "could not install libzmq3-dev with apt-get"
    }
  fi
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
