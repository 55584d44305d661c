#!/usr/bin/env bash
# The fault suite against the real servers (fault-suite crate; see fault-suite/README.md).
#
#   scripts/faults.sh --short                      every fault once per backend (the tests of
#                                                  `cargo test -p fault-suite --test short`) and
#                                                  the catalog path (`--test catalog`)
#   scripts/faults.sh --seed N --minutes M [--backend etcd|redis|consul]
#                                                  random faults chained on one long-lived scene per
#                                                  backend, seeded; prints a summary table
#
# Starts the test bed (Docker engine, server images) first. REGISTRY_TEST_REQUIRED defaults to 1:
# a fault whose server or capability is missing fails instead of skipping.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export REGISTRY_TEST_REQUIRED="${REGISTRY_TEST_REQUIRED:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/target}"

mode=short seed="" minutes=5 backends=""
while [ $# -gt 0 ]; do
  case "$1" in
    --short) mode=short ;;
    --seed) mode=seeded; seed=$2; shift ;;
    --minutes) mode=seeded; minutes=$2; shift ;;
    --backend) backends="${backends:+$backends,}$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "faults.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=scripts/testbed.sh
source "$root/scripts/testbed.sh"
testbed_up
trap tb_clean EXIT

report=$(mktemp)
export FAULT_REPORT="$report"
t0=$SECONDS
status=0
if [ "$mode" = short ]; then
  cargo test -p fault-suite --test short --test catalog -- --test-threads "${FAULT_THREADS:-12}" || status=$?
  echo
  printf '%-8s %-26s %-5s %10s %5s %9s\n' backend fault result converge lost phantoms
  sort "$report" | while IFS=$'\t' read -r b f r c l p; do
    printf '%-8s %-26s %-5s %10s %5s %9s\n' "$b" "$f" "$r" "$([ "$c" = - ] && echo - || echo "$c s")" "$l" "$p"
  done
else
  [ -n "$seed" ] || seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  echo "faults.sh: seed $seed, $minutes minutes, backends ${backends:-all}"
  FAULT_SEED="$seed" FAULT_MINUTES="$minutes" FAULT_BACKENDS="$backends" \
    cargo test -p fault-suite --test seeded -- --ignored --nocapture || status=$?
fi
rm -f "$report"
echo "faults.sh: $mode run took $((SECONDS - t0)) s (exit $status)"
exit "$status"
