#!/usr/bin/env bash
# The public API check: `cargo semver-checks` compares each library crate's public API with the
# one at the commit named for it in .semver-baseline (its last accepted API). A change that would
# break users, made without a new major version, fails here, so it is seen in review, not after a
# release. After a deliberate breaking change, bump the crate's version (or, before a release,
# move that crate's baseline to the commit that has the new API). docs/API.md says what each
# baseline is.
#
# cargo-semver-checks (pinned) is used from PATH when it is that version (a machine that has it
# in ~/.cargo/bin, as CI's does), else from the test bed's cache, else installed there from
# crates.io (about 7 minutes of compiling, once).
#
# Sourced by scripts/test (semver_check); can be run alone: scripts/semver.sh [--all].
set -euo pipefail

SEMVER_CHECKS_VERSION=0.51.0
SEMVER_TOOLS="${REGISTRY_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/testbed}/tools"
# The crates whose API users program against: the contract and the engine (re-exported by the
# facade as its root and registry::engine). Checking every library crate took 13.7 minutes here
# (each crate's rustdoc built twice, with its own dependencies), these two 1.4; `--all` checks
# every library crate, for a release. The facade's own paths are covered by
# registry/tests/public_paths.rs (cargo semver-checks does not see re-exports from other crates).
SEMVER_CRATES=(service-registry-core service-registry-engine)
SEMVER_ALL_CRATES=(service-registry-core service-registry-engine service-registry service-registry-memory service-registry-etcd
  service-registry-consul service-registry-consul-catalog service-registry-redis service-registry-dns)

# The cargo-semver-checks to use (installs it into the cache when none of the pinned version is
# found); prints its path.
semver_tool() {
  local found
  found=$(command -v cargo-semver-checks || true)
  if [ -n "$found" ] && "$found" semver-checks --version 2>/dev/null | grep -q "$SEMVER_CHECKS_VERSION"; then
    echo "$found"
    return
  fi
  local bin="$SEMVER_TOOLS/bin/cargo-semver-checks"
  if [ ! -x "$bin" ] || ! "$bin" semver-checks --version 2>/dev/null | grep -q "$SEMVER_CHECKS_VERSION"; then
    echo "semver: installing cargo-semver-checks $SEMVER_CHECKS_VERSION from crates.io (once)" >&2
    cargo install --quiet --locked --root "$SEMVER_TOOLS" --version "$SEMVER_CHECKS_VERSION" cargo-semver-checks >&2 ||
      { echo "semver: could not install cargo-semver-checks" >&2; return 2; }
  fi
  echo "$bin"
}

# The baseline commit of `crate` in .semver-baseline (`crate commit` lines; `*` for the others).
semver_baseline_of() {
  local file=$1 crate=$2 default=""
  while read -r name commit _; do
    case "$name" in
      ''|'#'*) continue ;;
      "$crate") echo "$commit"; return ;;
      '*') default=$commit ;;
    esac
  done < "$file"
  [ -n "$default" ] || { echo "semver: no baseline for $crate in $file" >&2; return 2; }
  echo "$default"
}

semver_check() {
  local root tool crates=("${SEMVER_CRATES[@]}")
  [ "${1:-}" = --all ] && crates=("${SEMVER_ALL_CRATES[@]}")
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  tool=$(semver_tool)
  # One run per baseline, with every crate that has it.
  declare -A by_baseline=()
  local c b
  for c in "${crates[@]}"; do
    b=$(semver_baseline_of "$root/.semver-baseline" "$c")
    git -C "$root" cat-file -e "$b^{commit}" 2>/dev/null ||
      { echo "semver: the baseline $b of $c in .semver-baseline is not a commit of this repository" >&2; return 2; }
    by_baseline[$b]+=" --package $c"
  done
  for b in "${!by_baseline[@]}"; do
    echo "semver: against $b:${by_baseline[$b]//--package/}"
    # shellcheck disable=SC2086
    (cd "$root" && PATH="$(dirname "$tool"):$PATH" cargo semver-checks check-release \
      --baseline-rev "$b" --all-features ${by_baseline[$b]})
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  semver_check "$@"
fi
