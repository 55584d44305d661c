#!/usr/bin/env python3
"""Each library crate's declared minimum Rust version (rust-version) against its dependencies'.

No older toolchain can be had on this project's machines (rustup reaches no toolchain server; the
Debian rustc, 1.63, predates edition 2024), so the MSRV cannot be tested by building with it.
What is checked instead: (1) every crate that a library crate depends on (normal and build
dependencies, every feature, as Cargo.lock resolves them) declares a rust-version no newer than
the library crate's own, and (2) clippy's `incompatible_msrv` lint, on in `cargo clippy` (in the
test command), which flags standard-library items newer than the crate's rust-version. Language
features newer than it would still pass both; none is used as of this writing (no let chains).

Usage: scripts/msrv-check.py CRATE...   (package names; exits 1 on a dependency that needs more)
"""
import json
import subprocess
import sys


def version(v):
    return tuple(int(x) for x in (v or "0").split(".")) + (0,) * (3 - len((v or "0").split(".")))


def main(roots):
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True, capture_output=True, text=True).stdout)
    pkgs = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    by_name = {p["name"]: p["id"] for p in meta["packages"] if p["source"] is None}
    bad = 0
    for root in roots:
        rid = by_name[root]
        msrv = pkgs[rid].get("rust_version")
        if not msrv:
            print(f"msrv: {root} declares no rust-version")
            bad += 1
            continue
        seen, stack, worst = {rid}, [rid], []
        while stack:
            for dep in nodes[stack.pop()]["deps"]:
                kinds = {k["kind"] for k in dep["dep_kinds"]}
                if not (kinds & {None, "build"}) or dep["pkg"] in seen:
                    continue
                seen.add(dep["pkg"])
                stack.append(dep["pkg"])
                p = pkgs[dep["pkg"]]
                if version(p.get("rust_version")) > version(msrv):
                    worst.append(f"{p['name']} {p['version']} (rust-version {p['rust_version']})")
        need = max((version(pkgs[i].get("rust_version")) for i in seen - {rid}), default=(0, 0, 0))
        print(f"msrv: {root}: rust-version {msrv}; {len(seen) - 1} dependencies, "
              f"the newest needs {'.'.join(map(str, need[:2]))}")
        for w in worst:
            print(f"msrv:   needs more than {msrv}: {w}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
