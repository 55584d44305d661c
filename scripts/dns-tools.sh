#!/usr/bin/env bash
# Installs `dig` (Debian's bind9-dnsutils) when it is missing: the Consul catalog tests ask the
# agent's DNS interface with it (registry-consul/tests/catalog.rs), and under
# REGISTRY_TEST_REQUIRED=1 they fail without it.
#
# Sourced by scripts/test (`dns_tools_up`); can be run alone.
set -euo pipefail

dt_die() { echo "dns-tools: $*" >&2; exit 2; }

dns_tools_up() {
  command -v dig >/dev/null && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  command -v apt-get >/dev/null || dt_die "missing: dig; install your system's DNS tools (Debian: bind9-dnsutils)"
  echo "dns-tools: installing Debian's bind9-dnsutils (dig)" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bind9-dnsutils >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bind9-dnsutils >/dev/null ||
      dt_die "could not install bind9-dnsutils with apt-get"
  }
  command -v dig >/dev/null || dt_die "bind9-dnsutils is installed but dig is not on PATH"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  dns_tools_up
fi
