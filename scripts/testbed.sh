#!/usr/bin/env bash
# The containerized test bed: makes real etcd, Consul and Redis servers available to the tests on a
# fresh Debian machine that has no container image registry.
#
#   1. If no Docker engine answers, install Debian's docker.io (when missing) and start dockerd.
#   2. Download the real server binaries from Debian's packages (etcd 3.5 from trixie, consul 1.8
#      from bullseye, redis-server 7.0 and prometheus 2.42 from bookworm), through a private apt
#      configuration whose mirror is read from the system's own apt configuration; nothing is
#      installed on the host.
#   3. Build small local images (FROM scratch: the binary plus the shared libraries ldd names).
#   4. Write the environment that points the tests at those images (optional: the tests find the
#      images by asking the engine, so `cargo test -p service-registry-etcd` works right after this script).
#
# Reruns reuse the downloaded packages and the built images. Sourced by scripts/test; can also be
# run alone (`scripts/testbed.sh`).
#
# Environment: REGISTRY_TESTBED_CACHE (default ~/.cache/service-registry/testbed).

set -euo pipefail

TESTBED_CACHE="${REGISTRY_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/testbed}"
TESTBED_ENV="$TESTBED_CACHE/testbed.env"
TESTBED_LABEL="service-registry-test=1"

tb_log() { echo "testbed: $*" >&2; }
tb_die() { echo "testbed: $*" >&2; exit 2; }

tb_sudo() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    tb_die "need root for: $* (run as root or install sudo)"; fi
}

tb_docker_ok() { docker info >/dev/null 2>&1; }

# An engine of this machine that the default socket does not reach. In a chroot (a fresh root made
# with debootstrap, as ../shared/tools/fresh-machine.sh does) whose /var/run is the usual symlink
# to /run, a socket bind-mounted to /var/run/docker.sock from outside lands on the host's own path,
# not in the root; the host's engine is still there, through the root of process 1. Only the
# engine's socket is used this way, and only when no engine answers otherwise.
tb_find_engine() {
  local sock
  for sock in /var/run/docker.sock /run/docker.sock /proc/1/root/run/docker.sock /proc/1/root/var/run/docker.sock; do
    [ -S "$sock" ] || continue
    if DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; then
      export DOCKER_HOST="unix://$sock"
      tb_log "using the Docker engine at $sock"
      return 0
    fi
  done
  return 1
}

tb_ensure_docker() {
  if tb_docker_ok; then return; fi
  if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null || tb_die "no Docker engine and no apt-get to install Debian's docker.io"
    tb_log "installing Debian's docker.io"
    tb_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1 || {
      tb_sudo apt-get update -qq >/dev/null 2>&1 || true
      tb_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null ||
        tb_die "could not install docker.io with apt-get"
    }
  fi
  if tb_docker_ok || tb_find_engine; then return; fi
  tb_log "starting dockerd (log: $TESTBED_CACHE/dockerd.log)"
  mkdir -p "$TESTBED_CACHE"
  tb_sudo sh -c "nohup dockerd >'$TESTBED_CACHE/dockerd.log' 2>&1 &"
  for _ in $(seq 1 60); do tb_docker_ok && break; sleep 1; done
  tb_docker_ok || tb_die "dockerd did not come up; see $TESTBED_CACHE/dockerd.log"
}

# The Debian mirror, read from the system's apt configuration (never hard-coded).
tb_mirror() {
  local m=""
  m=$(apt-get indextargets --no-release-info --format '$(REPO_URI)' 2>/dev/null |
      grep -v -- '-security' | head -n1 || true)
  if [ -z "$m" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || tb_die "cannot find a Debian mirror in the system's apt configuration"
  echo "${m%/}/"
}

# prometheus (for the acceptance test of `registry serve`'s HTTP service discovery) is one Go
# binary; only the package is downloaded, not its dependencies (web assets, adduser).
TB_PACKAGES="etcd-server/trixie consul/bullseye redis-server/bookworm redis-tools/bookworm libjemalloc2/bookworm liblzf1/bookworm prometheus/bookworm"

# The packages of TB_PACKAGES that are not in the cache yet (a cache from before a package was
# added to the list gets just that one).
tb_missing_debs() {
  local pkg
  for pkg in $TB_PACKAGES; do
    compgen -G "$1/${pkg%%/*}_*.deb" >/dev/null || echo "$pkg"
  done
}

tb_fetch_debs() {
  local apt="$TESTBED_CACHE/apt" debs="$TESTBED_CACHE/debs" missing
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/cache" "$debs"
  missing=$(tb_missing_debs "$debs" | tr '\n' ' ')
  if [ -z "${missing// /}" ]; then return; fi
  local mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mirror=$(tb_mirror)
  [ -f "$keyring" ] || tb_die "missing $keyring (Debian's debian-archive-keyring package)"
  : > "$apt/sources.list"
  for suite in trixie bullseye bookworm; do
    echo "deb [signed-by=$keyring] $mirror $suite main" >> "$apt/sources.list"
  done
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
              -o "Dir::Cache::Archives=$apt/archives" -o "APT::Sandbox::User=root" -qq)
  tb_log "downloading server packages from Debian: $missing"
  apt-get "${opts[@]}" update >/dev/null || tb_die "apt-get update with the private configuration failed"
  # shellcheck disable=SC2086
  (cd "$debs" && apt-get "${opts[@]}" download $missing >/dev/null) ||
    tb_die "apt-get download of $missing failed"
}

# Copies $1 (an absolute path in the extracted tree or on the host) and every library ldd names for
# it into the image root $2.
tb_copy_with_libs() {
  local bin=$1 root=$2 extracted=$3 lib
  mkdir -p "$root/usr/bin"
  cp -L "$bin" "$root/usr/bin/"
  LD_LIBRARY_PATH="$extracted/usr/lib/x86_64-linux-gnu" ldd "$bin" |
    awk '/=> \// { print $3 } /^[ \t]*\/.*ld-linux/ { print $1 }' | while read -r lib; do
      mkdir -p "$root$(dirname "${lib#$extracted}")"
      cp -L "$lib" "$root${lib#$extracted}"
    done
}

tb_build_image() {
  local name=$1 version=$2 binary=$3 extracted=$4
  local image="registry-test/$name:$version"
  if docker image inspect "$image" >/dev/null 2>&1; then echo "$image"; return; fi
  tb_log "building $image from Debian's $binary"
  local ctx
  ctx=$(mktemp -d)
  mkdir -p "$ctx/root/tmp" "$ctx/root/data" "$ctx/root/etc"
  chmod 1777 "$ctx/root/tmp"
  echo "root:x:0:0:root:/:/nonexistent" > "$ctx/root/etc/passwd"
  echo "root:x:0:" > "$ctx/root/etc/group"
  tb_copy_with_libs "$extracted/usr/bin/$binary" "$ctx/root" "$extracted"
  cat > "$ctx/Dockerfile" <<EOF
FROM scratch
COPY root/ /
ENV PATH=/usr/bin
WORKDIR /data
LABEL org.opencontainers.image.description="$name $version from Debian's packages, for the service-registry tests"
EOF
  DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >/dev/null 2>"$TESTBED_CACHE/build.log" || tb_die "docker build of $image failed"
  rm -rf "$ctx"
  echo "$image"
}

tb_version() { # the upstream version in a .deb file name: etcd-server_3.5.16-4_amd64.deb -> 3.5.16
  basename "$1" | sed -E 's/^[^_]+_([0-9]+%3a)?([0-9.]+).*/\2/'
}

tb_build_images() {
  local debs="$TESTBED_CACHE/debs" extracted="$TESTBED_CACHE/extracted"
  if [ ! -x "$extracted/usr/bin/etcd" ] || [ ! -x "$extracted/usr/bin/consul" ] ||
     [ ! -e "$extracted/usr/bin/redis-server" ] || [ ! -x "$extracted/usr/bin/prometheus" ]; then
    rm -rf "$extracted"
    mkdir -p "$extracted"
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$extracted"; done
  fi
  ETCD_IMAGE=$(tb_build_image etcd "$(tb_version "$debs"/etcd-server_*.deb)" etcd "$extracted")
  CONSUL_IMAGE=$(tb_build_image consul "$(tb_version "$debs"/consul_*.deb)" consul "$extracted")
  REDIS_IMAGE=$(tb_build_image redis "$(tb_version "$debs"/redis-server_*.deb)" redis-server "$extracted")
  PROMETHEUS_IMAGE=$(tb_build_image prometheus "$(tb_version "$debs"/prometheus_*.deb)" prometheus "$extracted")
}

# Removes containers left behind by earlier runs: those whose test process is gone (each test
# container removes itself when its process exits, so this only finds what a crash of the watcher
# or of the engine left). Containers of a test process still running are kept.
tb_clean() {
  local id pid
  docker ps -aq --filter "label=$TESTBED_LABEL" 2>/dev/null | while read -r id; do
    pid=$(docker inspect -f '{{ index .Config.Labels "service-registry-test.pid" }}' "$id" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      docker rm -f -v "$id" >/dev/null 2>&1 || true
    fi
  done
  # Networks of the cluster tests are named regtest-*; one still in use is not removed.
  docker network ls -q --filter name=regtest- 2>/dev/null | xargs -r docker network rm >/dev/null 2>&1 || true
}

testbed_up() {
  local t0=$SECONDS
  mkdir -p "$TESTBED_CACHE"
  tb_ensure_docker
  tb_clean
  tb_fetch_debs
  tb_build_images
  cat > "$TESTBED_ENV" <<EOF
export REGISTRY_TEST_ETCD_IMAGE=${ETCD_IMAGE%:*}
export REGISTRY_TEST_ETCD_TAG=${ETCD_IMAGE##*:}
export REGISTRY_TEST_CONSUL_IMAGE=${CONSUL_IMAGE%:*}
export REGISTRY_TEST_CONSUL_TAG=${CONSUL_IMAGE##*:}
export REGISTRY_TEST_REDIS_IMAGE=${REDIS_IMAGE%:*}
export REGISTRY_TEST_REDIS_TAG=${REDIS_IMAGE##*:}
export REGISTRY_TEST_PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE%:*}
export REGISTRY_TEST_PROMETHEUS_TAG=${PROMETHEUS_IMAGE##*:}
EOF
  # shellcheck disable=SC1090
  source "$TESTBED_ENV"
  tb_log "ready in $((SECONDS - t0)) s: $ETCD_IMAGE $CONSUL_IMAGE $REDIS_IMAGE $PROMETHEUS_IMAGE"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  testbed_up
  echo "testbed: ready; run the backend tests, e.g. cargo test -p service-registry-etcd" >&2
fi
