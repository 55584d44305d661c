#!/usr/bin/env bash
# Every test of every crate, as `cargo test --workspace --all-features` runs them, but with
# several test binaries at once.
#
# `cargo test` runs its test binaries one after another; ours mostly wait (on TTLs, watches,
# containers, Consul's reaper), so the suite's time was the sum of every binary's time (about
# 9.5 minutes, 125 s of it one binary). Here the binaries are built once (`cargo test --no-run`),
# then run REGISTRY_TEST_JOBS at a time (default 3), the slowest known ones first, each with
# REGISTRY_TEST_THREADS threads (default 16) in its package's directory, as cargo runs them. Each
# binary's output goes to a log that is printed whole when it fails; a line per binary says how
# it ended and how long it took. The doctests run after, through cargo.
#
# Sourced by scripts/test (run_tests); can be run alone: scripts/run-tests.sh [TEST-BINARY-ARGS]
# (extra arguments go to every test binary, e.g. a name filter).
set -euo pipefail

# The binaries that take longest, started first so that they do not finish last
# (package:target; measured, longest first).
TEST_SLOW_FIRST=(
  fault-suite:catalog
  registry-consul-catalog:mirror
  registry-cli:secrets
  registry-cli:serve_memory
  registry-sim:seeds
  registry-consul:conformance
  registry-consul:engine
  fault-suite:short
  registry-bench:smoke
  registry-consul-catalog:source
  registry-dns:consul
  registry-cli:dashboard
  registry-cli:prometheus
  registry-cli:xds
)

run_tests() {
  local root jobs threads logs list
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  jobs=${REGISTRY_TEST_JOBS:-3}
  threads=${REGISTRY_TEST_THREADS:-16}
  logs=$(mktemp -d)
  list="$logs/binaries"

  # Build every test binary; keep the ones cargo reports (manifest and executable of each test
  # target), one "package:target manifest-dir executable" line each.
  (cd "$root" && cargo test --workspace --all-features --no-run --message-format=json-render-diagnostics) |
    grep '"reason":"compiler-artifact"' |
    grep -E '"profile":\{[^}]*"test":true\}' |
    grep '"executable":"' |
    sed -E 's/.*"manifest_path":"([^"]+)\/Cargo.toml".*"executable":"([^"]+)".*/\1 \2/' |
    while read -r dir exe; do
      local base=${exe##*/}
      echo "${dir##*/}:${base%-*} $dir $exe"
    done > "$list"
  local total
  total=$(wc -l < "$list")
  [ "$total" -gt 0 ] || { echo "run-tests: cargo built no test binary" >&2; return 2; }

  # The known slow ones first, then the rest in cargo's order.
  local ordered="$logs/ordered" name
  : > "$ordered"
  for name in "${TEST_SLOW_FIRST[@]}"; do
    grep "^$name " "$list" >> "$ordered" || true
  done
  printf '%s \n' "${TEST_SLOW_FIRST[@]}" > "$logs/slow"
  grep -v -F -f "$logs/slow" "$list" >> "$ordered" || true

  echo "run-tests: $total test binaries, $jobs at a time, $threads threads each"
  local failed=0 running=0 t0=$SECONDS
  declare -A started=()
  finish() { # reaps one finished binary, prints its line (and its log if it failed)
    local pid code waited
    # Only our binaries' subshells count (wait -n also reports other children of this shell).
    while :; do
      pid=""
      waited=0
      wait -n -p pid || waited=$?
      [ -n "$pid" ] && [ -n "${started[$pid]:-}" ] && break
      if [ "$waited" = 127 ]; then
        echo "run-tests: no test binary left to wait for, $running expected" >&2
        running=0
        failed=$((failed + 1))
        return
      fi
    done
    code=$(cat "$logs/$pid.rc" 2>/dev/null || echo 1)
    local what=${started[$pid]}
    local secs=$(( $(cat "$logs/$pid.end" 2>/dev/null || echo "$SECONDS") - ${what%% *} ))
    what=${what#* }
    local summary
    summary=$(grep -E '^test result:' "$logs/$pid.log" | tail -n1 | sed -E 's/^test result: //; s/; finished in.*//' || true)
    if [ "$code" = 0 ]; then
      printf 'run-tests: ok   %4d s  %s (%s)\n' "$secs" "$what" "$summary"
    else
      failed=$((failed + 1))
      printf 'run-tests: FAIL %4d s  %s (exit %s)\n' "$secs" "$what" "$code"
      sed 's/^/    | /' "$logs/$pid.log"
    fi
    unset "started[$pid]"
    running=$((running - 1))
  }
  local dir exe
  while read -r name dir exe; do
    while [ "$running" -ge "$jobs" ]; do finish; done
    (
      # This subshell's own pid (in the test's process, forked below, $BASHPID is that one's).
      me=$BASHPID
      cd "$dir"
      set +e
      CARGO_MANIFEST_DIR="$dir" "$exe" --test-threads "$threads" "$@" > "$logs/$me.log" 2>&1
      echo $? > "$logs/$me.rc"
      echo $SECONDS > "$logs/$me.end"
    ) &
    started[$!]="$SECONDS $name"
    running=$((running + 1))
  done < "$ordered"
  while [ "$running" -gt 0 ]; do finish; done
  echo "run-tests: test binaries done in $((SECONDS - t0)) s, $failed failed"

  echo "run-tests: doctests"
  local doc=0
  (cd "$root" && cargo test --workspace --all-features --doc --no-fail-fast -- --test-threads "$threads") || doc=$?
  [ -n "${RUN_TESTS_KEEP_LOGS:-}" ] && echo "run-tests: logs kept in $logs" || rm -rf "$logs"
  if [ "$failed" -gt 0 ] || [ "$doc" != 0 ]; then
    echo "run-tests: $failed test binaries failed; doctests exit $doc" >&2
    return 1
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  run_tests "$@"
fi
