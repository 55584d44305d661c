#!/usr/bin/env bash
# Runs registry-bench against every backend: memory in process, etcd, Redis and Consul in containers
# from the test bed's images (scripts/testbed.sh). Results: bench-results/bench-<backend>.{md,json}.
# On Redis it also runs serve-load: the release `registry serve` binary, in its own process, under
# SSE clients (1,000; 200 with --quick) and a fixed rate of JSON requests.
#
# Usage: scripts/bench.sh [--quick] [backend ...]     (backends: memory etcd redis consul)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/target}"
# shellcheck source=scripts/testbed.sh
source "$root/scripts/testbed.sh"

quick=()
backends=()
for a in "$@"; do
  case "$a" in
    --quick) quick=(--quick) ;;
    *) backends+=("$a") ;;
  esac
done
[ ${#backends[@]} -gt 0 ] || backends=(memory etcd redis consul)

testbed_up
cargo build -q --release -p registry-bench -p service-registry-cli
bench="$CARGO_TARGET_DIR/release/registry-bench"
registry_bin="$CARGO_TARGET_DIR/release/registry"
# serve-load holds 1,000 SSE clients and as many stalled ones (the server inherits the limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
  echo "bench: only $(ulimit -n) open files allowed; serve-load needs about 2,500 (raise the hard limit)" >&2
fi
out="$root/bench-results"
mkdir -p "$out"

started=()
cleanup() { [ ${#started[@]} -eq 0 ] || docker rm -f "${started[@]}" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# start NAME IMAGE PORT CMD... -> prints the host port
start() {
  local name=$1 image=$2 port=$3; shift 3
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker run -d --label "$TESTBED_LABEL" --name "$name" -p "127.0.0.1::$port" "$image" "$@" >/dev/null
  started+=("$name")
  docker port "$name" "$port/tcp" | head -n1 | sed 's/.*://'
}

wait_ready() { # NAME MESSAGE
  for _ in $(seq 1 60); do
    docker logs "$1" 2>&1 | grep -q "$2" && return 0
    sleep 0.5
  done
  echo "bench: $1 did not become ready" >&2
  return 1
}

for b in "${backends[@]}"; do
  case "$b" in
    memory) url="memory://"; only=() ;;
    etcd)
      p=$(start bench-etcd "$ETCD_IMAGE" 2379 etcd --name e --data-dir /data/e \
          --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://127.0.0.1:2379)
      wait_ready bench-etcd "ready to serve client requests"
      url="etcd://127.0.0.1:$p"; only=(--only propagation,scale,heartbeat,estate) ;;
    redis)
      p=$(start bench-redis "$REDIS_IMAGE" 6379 redis-server --bind 0.0.0.0 --protected-mode no --save "" --appendonly no)
      wait_ready bench-redis "Ready to accept connections"
      url="redis://127.0.0.1:$p"; only=(--only propagation,scale,heartbeat,estate,serve-load) ;;
    consul)
      # The estate opens up to 1,000 clients from this one address; the agent's default is 200
      # HTTP connections per client address, and the rest are refused.
      p=$(start bench-consul "$CONSUL_IMAGE" 8500 consul agent -dev -client 0.0.0.0 \
          -hcl 'limits { http_max_conns_per_client = 4096 }')
      wait_ready bench-consul "Synced node info"
      url="consul://127.0.0.1:$p"; only=(--only propagation,scale,heartbeat,estate) ;;
    *) echo "bench: unknown backend $b (memory, etcd, redis, consul)" >&2; exit 2 ;;
  esac
  echo "bench: $b ($url)" >&2
  "$bench" --backend "$url" "${quick[@]}" "${only[@]}" --registry-bin "$registry_bin" --out "$out"
done
