#!/usr/bin/env python3
"""Deliberately breaks the memory backend in named ways and reports which conformance scenarios catch
each breakage (every one must be caught). Usage: scripts/mutation-check.py [NAME...]"""
import subprocess, sys, os
S='registry-memory/src/state.rs'; B='registry-memory/src/backend.rs'; K='registry-core/src/key.rs'
muts={
 'dup_event': (S, "                out.push_back(ev.clone());\n", "                out.push_back(ev.clone());\n                if ev.revision % 10 == 3 { out.push_back(ev.clone()); }\n"),
 'revoke_keeps_keys': (S, "        for k in lease.keys {\n            self.keys.remove(&k);", "        for k in lease.keys {\n            if false { self.keys.remove(&k); }"),
 'prefix_not_dir': (K, "    key.starts_with(normalized_prefix)", "    key.starts_with(normalized_prefix.trim_end_matches('/'))"),
 'keepalive_no_extend': (S, "        lease.deadline = now + lease.ttl;", "        let _ = now;"),
 'put_no_detach': (S, "            if Some(old) != lease {", "            if Some(old) != lease && false {"),
 'never_compacted': (S, "        if cursor < self.compacted {", "        if false && cursor < self.compacted {"),
 'expiry_silent': (S, "            self.history.push_back(Event::delete(k, rev));", "            let _ = rev;"),
 'value_off_by_one': (K, "    if value.len() > caps.max_value_len {", "    if value.len() >= caps.max_value_len {"),
 'list_stale_revision': (S, "            revision: self.revision,\n        }", "            revision: self.revision.saturating_sub(1),\n        }"),
 'watch_skips_batch_edge': (S, "            if read >= budget && ev.revision != last {\n                break;", "            if read >= budget && ev.revision != last {\n                last = ev.revision;\n                break;"),
}

def run(name):
    f, old, new = muts[name]
    src = open(f).read()
    assert old in src, f"mutation {name} no longer applies to {f}"
    open(f, "w").write(src.replace(old, new, 1))
    try:
        out = subprocess.run(["cargo", "test", "-q", "-p", "service-registry-memory", "--test", "conformance"],
                             capture_output=True, text=True).stdout
    finally:
        open(f, "w").write(src)
    caught = [l.strip() for l in out.splitlines() if l.startswith("    ") and l.strip().isidentifier()]
    return caught

if __name__ == "__main__":
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    missed = []
    for name in sys.argv[1:] or muts:
        caught = run(name)
        print(f"{name}: {' '.join(caught) if caught else 'NOT CAUGHT'}")
        if not caught:
            missed.append(name)
    sys.exit(1 if missed else 0)
