//! The bench smoke: `registry-bench --smoke` against each backend, with the sections
//! `scripts/bench.sh` runs on it. It proves that every section still runs, in seconds and in a
//! debug build; the figures come from `scripts/bench.sh` (release build, full or `--quick`).
//!
//! etcd, Redis and Consul are the test bed's shared servers (`conformance_tests::testbed`): under
//! `REGISTRY_TEST_REQUIRED=1` one that cannot be had is a failure, otherwise the test skips.
//! serve-load (on Redis) runs the `registry` binary next to this one: `cargo test --workspace`
//! builds it (registry-cli's tests need it); alone, `cargo build -p service-registry-cli` first.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conformance_tests::testbed;
use serde_json::Value;

/// Every section: its name for `--only`, its key in the JSON report, the start of its Markdown
/// heading.
const SECTIONS: [(&str, &str, &str); 7] = [
    ("propagation", "propagation", "### Propagation ("),
    ("scale", "scale", "### Scale ("),
    ("heartbeat", "heartbeat", "### Heartbeat cost ("),
    ("ring", "ring", "### Ring quality ("),
    ("lookup", "lookup", "### Lookups ("),
    ("estate", "estate", "### Estate: "),
    ("serve-load", "serve_load", "### Serve load: "),
];

/// A smoke run takes seconds: past this it hangs, and is killed.
const LIMIT: Duration = Duration::from_secs(180);

/// Variables that would change the estate section's sizes.
const ESTATE_VARS: [&str; 4] = [
    "REGISTRY_BENCH_ESTATE_CLIENTS",
    "REGISTRY_BENCH_ESTATE_SIZES",
    "REGISTRY_BENCH_ESTATE_PAIRS",
    "REGISTRY_BENCH_ESTATE_WINDOWS",
];

/// Runs `registry-bench --smoke` against `url` with `--only only` (every section when empty) and
/// checks that it succeeds and that its report holds every section asked for. `since`: when the
/// test started (before its server), for the times it prints.
fn smoke(since: Instant, url: &str, only: &[&str]) {
    let scheme = url.split("://").next().expect("a scheme");
    let bench = Path::new(env!("CARGO_BIN_EXE_registry-bench"));
    let out = std::env::temp_dir().join(testbed::fresh_namespace(&format!(
        "registry-bench-smoke-{scheme}"
    )));
    std::fs::create_dir_all(&out).expect("create the report directory");
    let mut cmd = Command::new(bench);
    cmd.args(["--backend", url, "--smoke", "--out"]).arg(&out);
    if !only.is_empty() {
        cmd.args(["--only", &only.join(",")]);
    }
    if only.contains(&"serve-load") {
        let registry = bench.with_file_name("registry");
        assert!(
            registry.is_file(),
            "serve-load runs the `registry` binary, and there is none at {}: build it with \
             `cargo build -p service-registry-cli` (`cargo test --workspace` builds it)",
            registry.display()
        );
        cmd.arg("--registry-bin").arg(registry);
    }
    for var in ESTATE_VARS {
        cmd.env_remove(var);
    }
    let log = |name: &str| {
        std::fs::File::create(out.join(name)).unwrap_or_else(|e| panic!("create {name}: {e}"))
    };
    cmd.stdin(Stdio::null())
        .stdout(log("stdout.txt"))
        .stderr(log("stderr.txt"));

    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("start registry-bench");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for registry-bench") {
            break Some(status);
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    let stderr = std::fs::read_to_string(out.join("stderr.txt")).unwrap_or_default();
    let failed = |what: String| -> ! {
        panic!(
            "registry-bench --smoke against {url}: {what}; its output and report are in {}. \
             Standard error:\n{stderr}",
            out.display()
        )
    };
    match status {
        None => failed(format!("still running after {LIMIT:?}, killed")),
        Some(s) if !s.success() => failed(format!("{s} after {took:.1?}")),
        Some(_) => {}
    }

    let read = |ext: &str| {
        let path = out.join(format!("bench-{scheme}.{ext}"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| failed(format!("no report {}: {e}", path.display())))
    };
    let md = read("md");
    let json: Value = serde_json::from_str(&read("json"))
        .unwrap_or_else(|e| failed(format!("the JSON report does not parse: {e}")));
    if json["size"] != "smoke" || !md.contains("(smoke run") {
        failed("the report does not say it is a smoke run".into());
    }
    // Without --only, every section but serve-load, which needs a backend shared between processes.
    let asked = SECTIONS.iter().filter(|(name, ..)| {
        only.contains(name) || (only.is_empty() && (*name != "serve-load" || scheme != "memory"))
    });
    for (name, key, heading) in asked {
        if json.get(key).is_none_or(Value::is_null) {
            failed(format!("the JSON report has no {key} section"));
        }
        if !md.lines().any(|l| l.starts_with(heading)) {
            failed(format!(
                "the Markdown report has no {name} section ({heading}...)"
            ));
        }
    }
    if let Some(stalled) = json.get("serve_load").map(|s| &s["stalled"]) {
        // The stalled clients must be streams the server holds, not requests it refused (which
        // the phase measured, unnoticed, from issue 28 until the bench's fix of 2026-12-07).
        let held = stalled["timeline"]
            .as_array()
            .map(|t| t.iter().filter_map(|p| p["open"].as_u64()).max())
            .unwrap_or_default();
        if stalled["connect_errors"] != 0 || held != stalled["clients"].as_u64() {
            failed(format!(
                "the stalled clients were not held as streams: {stalled}"
            ));
        }
    }
    eprintln!(
        "registry-bench --smoke against {url}: {took:.1?} ({:.1?} with the server's start)",
        since.elapsed()
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// The `--only` list of `scripts/bench.sh` for etcd and Consul (Redis adds serve-load).
const SHARED_BACKEND: [&str; 4] = ["propagation", "scale", "heartbeat", "estate"];

/// [`smoke`] against the test bed's shared `scheme` server, started by `server`.
fn smoke_on(scheme: &str, server: fn() -> Option<String>, only: &[&str]) {
    let since = Instant::now();
    // None: unavailable and not required (the test bed said why).
    if let Some(endpoint) = server() {
        smoke(since, &format!("{scheme}://{endpoint}"), only);
    }
}

#[test]
fn smoke_memory() {
    smoke(Instant::now(), "memory://", &[]);
}

#[test]
fn smoke_etcd() {
    smoke_on("etcd", testbed::shared_etcd, &SHARED_BACKEND);
}

#[test]
fn smoke_redis() {
    let mut only = SHARED_BACKEND.to_vec();
    only.push("serve-load");
    smoke_on("redis", testbed::shared_redis, &only);
}

#[test]
fn smoke_consul() {
    smoke_on("consul", testbed::shared_consul, &SHARED_BACKEND);
}
