#!/usr/bin/env bash
# Runs a command (by default scripts/test) in a brand-new Debian root through
# ../shared/tools/fresh-machine.sh, with this machine's Docker engine shared into it.
#
# The tool shares the engine by bind-mounting /var/run/docker.sock into the root; in a debootstrap
# root /var/run is a symlink to /run, so the mount lands on the host's own path and the root has no
# engine (scripts/testbed.sh would then start a second dockerd in the chroot, which cannot build
# images there). So this script gives the tool a base root (FRESH_BASE) that is the tool's own base,
# copied, with /var/run as an empty directory: nothing is installed in it that the tool's base lacks.
#
#   scripts/fresh-test.sh                 # scripts/test on a fresh root
#   scripts/fresh-test.sh -- CMD ARGS...  # any command
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tool=${FRESH_MACHINE:-$root/../shared/tools/fresh-machine.sh}
[ -f "$tool" ] || { echo "fresh-test: $tool not found" >&2; exit 2; }
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || set -- scripts/test

tool_base=/var/tmp/fresh-base
base=/var/tmp/service-registry-fresh-base
if [ ! -x "$tool_base/usr/bin/gcc" ]; then
  bash "$tool" -- true # builds the tool's base root
fi
if [ ! -x "$base/usr/bin/gcc" ] || [ "$tool_base/usr/bin/gcc" -nt "$base/usr/bin/gcc" ]; then
  rm -rf "$base"
  cp -a "$tool_base" "$base"
fi
if [ -L "$base/var/run" ]; then
  rm "$base/var/run"
  mkdir -p "$base/var/run"
fi
FRESH_BASE=$base exec bash "$tool" -- "$@"
