#!/usr/bin/env bash
# Builds the `registry serve` image from deploy/Dockerfile: FROM scratch, with the `registry`
# binary, the shared libraries ldd names for it, the machine's CA certificates (Debian's
# ca-certificates) and /etc/passwd naming user 10001 (`registry`), which the image runs as. No image
# registry is needed: nothing is pulled.
#
#   scripts/serve-image.sh [--binary PATH] [--tag NAME:TAG]
#
# Without --binary it builds the release binary (cargo build --release -p service-registry-cli).
# Starts the Docker engine if needed (scripts/testbed.sh). Prints the tag.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=""
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
tag="service-registry:$version"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "serve-image: unknown argument $1 (--binary PATH, --tag NAME:TAG)" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release --quiet -p service-registry-cli --bin registry) >&2
  target=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  binary="$target/release/registry"
fi
[ -x "$binary" ] || { echo "serve-image: $binary is not an executable" >&2; exit 2; }
certs=/etc/ssl/certs/ca-certificates.crt
if [ ! -s "$certs" ]; then
  # shellcheck source=scripts/apt-install.sh
  source "$root/scripts/apt-install.sh"
  apt_install serve-image ca-certificates
fi
[ -s "$certs" ] || { echo "serve-image: no $certs; install Debian's ca-certificates" >&2; exit 2; }

# shellcheck source=scripts/testbed.sh
source "$root/scripts/testbed.sh"
tb_ensure_docker >&2

ctx=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$ctx" "$log"' EXIT
mkdir -p "$ctx/root/usr/bin" "$ctx/root/etc/ssl/certs" "$ctx/root/tmp"
chmod 1777 "$ctx/root/tmp"
cp -L "$binary" "$ctx/root/usr/bin/registry"
# The dynamic loader and every library the binary links (glibc's, libgcc's), at their own paths.
ldd "$binary" | awk '/=> \// { print $3 } /^[ \t]*\/.*ld-linux/ { print $1 }' | while read -r lib; do
  mkdir -p "$ctx/root$(dirname "$lib")"
  cp -L "$lib" "$ctx/root$lib"
done
cp -L "$certs" "$ctx/root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/nonexistent\nregistry:x:10001:10001:registry:/tmp:/nonexistent\n' > "$ctx/root/etc/passwd"
printf 'root:x:0:\nregistry:x:10001:\n' > "$ctx/root/etc/group"
cp "$root/deploy/Dockerfile" "$ctx/Dockerfile"
# The classic builder: BuildKit would want its own front-end image from a registry.
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null 2>"$log" ||
  { cat "$log" >&2; echo "serve-image: docker build failed" >&2; exit 2; }
echo "$tag"
