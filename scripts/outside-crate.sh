#!/usr/bin/env bash
# A project outside this workspace that depends on the facade with the `etcd` feature, built as a
# user would build it, following exactly the set-up step README.md and the facade's docs give:
#
#   apt-get update && apt-get install protobuf-compiler      (protoc, for etcd-client's build script)
#
# The workspace's own builds use the protoc that the protoc-bin-vendored crate brings (through
# .cargo/config.toml), which an outside project does not see: so this is the test that the
# documented step is the one needed, and enough. CI runs it in a brand-new Debian root with only
# Rust (.ci/run), where there is no protoc until the step runs. Elsewhere it runs the step only as
# root on a Debian-like system when protoc is missing, and otherwise says what to install.
#
# Builds the crate (cargo's own target directory unless CARGO_TARGET_DIR is set) and runs it: it
# prints the etcd backend's type and the schemes the facade was built with.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! command -v protoc >/dev/null 2>&1 && [ -z "${PROTOC:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "outside-crate: no protoc; the documented step: apt-get update && apt-get install protobuf-compiler"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
  else
    echo "outside-crate: no protoc; as README.md says: apt-get update && apt-get install protobuf-compiler" >&2
    exit 2
  fi
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/outside-crate.XXXXXX")
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "outside-crate"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
service-registry = { path = "$root/registry", features = ["etcd"] }
tokio = { version = "1", features = ["macros", "rt"] }

# Its own workspace: not a member of any workspace above it.
[workspace]
TOML
cat > "$dir/src/main.rs" <<'RS'
use registry::engine::{Instance, Registry};

#[tokio::main(flavor = "current_thread")]
async fn main() -> registry::Result<()> {
    // The etcd backend is linked in, and the facade knows its scheme.
    println!("etcd backend: {}", std::any::type_name::<registry::etcd::EtcdBackend>());
    let schemes: Vec<&str> = registry::SCHEMES.iter().map(|(s, _)| *s).collect();
    println!("schemes: {}", schemes.join(", "));
    assert!(schemes.contains(&"etcd"));
    // And the engine works, here on the in-memory backend.
    let registry = Registry::new(registry::connect("memory://").await?)?;
    let _web1 = registry.register(Instance::new("web", "web-1").addr("10.0.0.1:8080")).await?;
    let discovery = registry.discover("web").await?;
    println!("owner of user-42: {:?}", discovery.directory().find("web", "user-42").map(|i| i.id.clone()));
    Ok(())
}
RS
echo "outside-crate: building $dir (depends on $root/registry with the etcd feature)"
(cd "$dir" && cargo run -q)
echo "outside-crate: ok"
