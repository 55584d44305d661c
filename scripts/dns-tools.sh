#!/usr/bin/env bash
# Installs `dig` (Debian's bind9-dnsutils) when it is missing: the Consul catalog tests ask the
# agent's DNS interface with it (registry-consul-catalog/tests/mirror.rs), and under
# REGISTRY_TEST_REQUIRED=1 they fail without it.
#
# Sourced by scripts/test (`dns_tools_up`); can be run alone.
set -euo pipefail

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

dns_tools_up() {
  command -v dig >/dev/null && return 0
  apt_install dns-tools bind9-dnsutils
  command -v dig >/dev/null || { echo "dns-tools: bind9-dnsutils is installed but dig is not on PATH" >&2; exit 2; }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  dns_tools_up
fi
