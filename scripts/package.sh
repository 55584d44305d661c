#!/usr/bin/env bash
# The publishable crates pack: `cargo package` of every library crate (in dependency order, cargo
# packs them together and builds each from its packed sources alone, against the others' packed
# versions in a local registry), so a missing file, a path-only dependency or incomplete metadata
# is found here rather than at `cargo publish`. And their dependencies pass `cargo deny check
# licenses bans sources` (deny.toml): permissive licenses, crates.io only, no wildcard versions;
# and each declares a minimum Rust version its dependencies allow (scripts/msrv-check.py).
#
# cargo-deny (pinned) is used from PATH when it is that version (CI's machine has it in
# ~/.cargo/bin, which its fresh root gets), else from the test bed's cache, else installed there
# from crates.io (a few minutes of compiling, once).
#
# Sourced by scripts/test (package_check, deny_check); can be run alone: scripts/package.sh.
set -euo pipefail

DENY_VERSION=0.20.2
DENY_TOOLS="${REGISTRY_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/testbed}/tools"
# The library crates, as published (the facade last). The tool (service-registry-cli) is a binary
# crate; the test and benchmark crates are `publish = false`.
PACKAGE_CRATES=(service-registry-core service-registry-engine service-registry-memory
  service-registry-etcd service-registry-consul service-registry-consul-catalog
  service-registry-redis service-registry-dns service-registry-xds service-registry)

package_check() {
  local root args=()
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  for c in "${PACKAGE_CRATES[@]}"; do args+=(-p "$c"); done
  # A clean checkout has nothing to allow; a working copy with edits is still checked as it is.
  (cd "$root" && cargo package --quiet --allow-dirty "${args[@]}")
  echo "package: ${#PACKAGE_CRATES[@]} crates packed and built from their packages"
  # Their declared minimum Rust version against their dependencies' (see the script).
  (cd "$root" && python3 scripts/msrv-check.py "${PACKAGE_CRATES[@]}")
}

deny_tool() {
  local found
  found=$(command -v cargo-deny || true)
  if [ -n "$found" ] && "$found" --version 2>/dev/null | grep -q " $DENY_VERSION\$"; then
    echo "$found"
    return
  fi
  local bin="$DENY_TOOLS/bin/cargo-deny"
  if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q " $DENY_VERSION\$"; then
    echo "deny: installing cargo-deny $DENY_VERSION from crates.io (once)" >&2
    cargo install --quiet --locked --root "$DENY_TOOLS" --version "$DENY_VERSION" cargo-deny >&2 ||
      { echo "deny: could not install cargo-deny" >&2; return 2; }
  fi
  echo "$bin"
}

deny_check() {
  local root tool
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  tool=$(deny_tool)
  (cd "$root" && "$tool" --all-features check --hide-inclusion-graph licenses bans sources)
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  package_check
  deny_check
fi
