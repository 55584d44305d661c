#!/usr/bin/env bash
# The public API check: `cargo semver-checks` compares every library crate's public API with the
# one at the commit named in .semver-baseline (the last accepted API). A change that would break
# users, made without a new major version, fails here, so it is seen in review, not after a
# release. After a deliberate breaking change, bump the crate's version (or, before a release,
# move the baseline to the commit that has the new API).
#
# Installs cargo-semver-checks (pinned) from crates.io into the test bed's cache when missing.
# Sourced by scripts/test (semver_check); can be run alone.
set -euo pipefail

SEMVER_CHECKS_VERSION=0.51.0
SEMVER_TOOLS="${REGISTRY_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/testbed}/tools"
# The crates whose API others use.
SEMVER_CRATES=(registry-core registry registry-memory registry-etcd registry-consul registry-redis registry-dns)

semver_check() {
  local root bin
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  bin="$SEMVER_TOOLS/bin/cargo-semver-checks"
  if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$SEMVER_CHECKS_VERSION"; then
    echo "semver: installing cargo-semver-checks $SEMVER_CHECKS_VERSION from crates.io (once)" >&2
    cargo install --quiet --locked --root "$SEMVER_TOOLS" --version "$SEMVER_CHECKS_VERSION" cargo-semver-checks ||
      { echo "semver: could not install cargo-semver-checks" >&2; exit 2; }
  fi
  local baseline
  baseline=$(tr -d ' \n' < "$root/.semver-baseline")
  git -C "$root" cat-file -e "$baseline^{commit}" 2>/dev/null ||
    { echo "semver: the baseline $baseline in .semver-baseline is not a commit of this repository" >&2; exit 2; }
  local args=()
  for c in "${SEMVER_CRATES[@]}"; do args+=(--package "$c"); done
  (cd "$root" && PATH="$SEMVER_TOOLS/bin:$PATH" cargo semver-checks check-release --baseline-rev "$baseline" --all-features "${args[@]}")
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  semver_check
fi
