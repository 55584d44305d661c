//! `registry-bench --backend URL [--quick | --smoke] [--out DIR]`: how fast, how cheap and how far
//! the registry scales on one backend, each figure next to its baseline measured in the same run.
//! Writes a Markdown report and a JSON file; `--quick` runs everything small, in well under a minute;
//! `--smoke` runs every section at the smallest size that still goes through all of its code, in
//! seconds even in a debug build (its figures mean nothing: `tests/smoke.rs` runs it per backend).
//!
//! `serve-load` (on a backend shared between processes, not memory://) runs the `registry serve`
//! binary (`--registry-bin`, by default next to this one) under many SSE clients and a fixed rate of
//! JSON requests: see `serve_load.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use registry::engine::{
    Directory, Instance, LeaseOptions, RegisterOptions, RegistrationState, Registry, Ring,
};
use registry::{Backend, Bytes};
use serde_json::{Value, json};

mod counting;
mod estate;
mod raw;
mod serve_load;
mod stats;

use counting::Counting;
use stats::{json as sjson, ms, summarize};

/// How big a run is. Published figures come from `Full` runs; `Quick` keeps its sizes too, since
/// reports refer to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Size {
    Full,
    /// `--quick`: everything small, in well under a minute per backend (release build).
    Quick,
    /// `--smoke`: every section at the smallest size that still runs all of its code paths.
    Smoke,
}

impl Size {
    /// The value for this size, of the three given.
    pub(crate) fn pick<T>(self, full: T, quick: T, smoke: T) -> T {
        match self {
            Size::Full => full,
            Size::Quick => quick,
            Size::Smoke => smoke,
        }
    }

    fn name(self) -> &'static str {
        self.pick("full", "quick", "smoke")
    }
}

struct Args {
    url: String,
    size: Size,
    out: std::path::PathBuf,
    only: Option<Vec<String>>,
    registry_bin: Option<String>,
    serve: serve_load::Config,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        url: "memory://".into(),
        size: Size::Full,
        out: "bench-results".into(),
        only: None,
        registry_bin: None,
        serve: serve_load::Config::new(Size::Full),
    };
    let (mut sse, mut rps, mut secs, mut stall) = (None, None, None, None);
    let number = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.and_then(|v| v.parse().ok())
            .ok_or(format!("{what} needs a number"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backend" | "-b" => a.url = it.next().ok_or("--backend needs a URL")?,
            "--quick" => a.size = Size::Quick,
            "--smoke" => a.size = Size::Smoke,
            "--out" => a.out = it.next().ok_or("--out needs a directory")?.into(),
            "--only" => {
                a.only = Some(
                    it.next()
                        .ok_or("--only needs a list")?
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            "--registry-bin" => {
                a.registry_bin = Some(it.next().ok_or("--registry-bin needs a path")?)
            }
            "--serve-clients" => sse = Some(number(it.next(), "--serve-clients")? as usize),
            "--serve-rps" => rps = Some(number(it.next(), "--serve-rps")? as u32),
            "--serve-secs" => secs = Some(number(it.next(), "--serve-secs")?),
            "--serve-stall-secs" => stall = Some(number(it.next(), "--serve-stall-secs")?),
            "--help" | "-h" => {
                return Err("usage: registry-bench [--backend URL] [--quick | --smoke] [--out DIR] [--only propagation,scale,heartbeat,ring,lookup,estate,serve-load]\n       serve-load: [--registry-bin PATH] [--serve-clients N] [--serve-rps N] [--serve-secs N] [--serve-stall-secs N]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.serve = serve_load::Config::new(a.size);
    if let Some(n) = sse {
        a.serve.sse = n;
        a.serve.stalled = n;
    }
    if let Some(n) = rps {
        a.serve.rps = n;
    }
    if let Some(n) = secs {
        a.serve.phase = Duration::from_secs(n);
    }
    if let Some(n) = stall {
        a.serve.stall_watch = Duration::from_secs(n);
    }
    Ok(a)
}

/// A report section: Markdown lines and a JSON value.
struct Section {
    md: Vec<String>,
    json: Value,
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn ttl_for(backend: &dyn Backend, at_least: Duration) -> Duration {
    let caps = backend.capabilities();
    caps.grant_ttl(caps.min_ttl.max(at_least))
        .unwrap_or(at_least)
}

fn registry(backend: Arc<dyn Backend>, ns: &str, ttl: Duration) -> Registry {
    Registry::builder(backend)
        .namespace(ns.to_owned())
        .ttl(ttl)
        .heartbeat(ttl / 3)
        .build()
        .expect("valid options")
}

async fn until(
    dir: &Directory,
    service: &str,
    f: impl Fn(&registry::engine::ServiceSnapshot) -> bool,
) -> bool {
    let mut rx = dir.subscribe(service);
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| f(s)))
        .await
        .is_ok()
}

/// Propagation (1): register/deregister at A -> visible/gone at B, next to the raw put -> event
/// latency; and crash -> removal past the TTL, against the declared slack.
async fn propagation(url: &str, backend: Arc<dyn Backend>, ns: &str, size: Size) -> Section {
    let n = size.pick(1000, 40, 4);
    // A smoke run's crashes are watched for a few seconds only: a short TTL where the backend
    // grants one (Consul's is at least 10 s, so none of its crashed instances go in that time).
    let ttl = ttl_for(&*backend, Duration::from_secs(size.pick(5, 5, 1)));
    let a = registry(backend.clone(), ns, ttl);
    let b = registry(backend.clone(), ns, ttl);
    let d = b.discover("prop").await.expect("discover");
    let dir = d.directory().clone();
    // Paced, so that what is measured is propagation, not the coalescing a watch applies to
    // back-to-back changes (Consul's blocking-query loop polls at most every 100 ms by default).
    let pace = raw::PACE;
    let (mut since_call, mut since_return, mut regs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        tokio::time::sleep(pace).await;
        let id = format!("i{i}");
        let t0 = Instant::now();
        let reg = a
            .register(Instance::new("prop", &id).addr("10.0.0.1:80"))
            .await
            .expect("register");
        let t1 = Instant::now();
        assert!(
            until(&dir, "prop", |s| s.all().contains_key(&id)).await,
            "{id} never visible"
        );
        since_call.push(t0.elapsed());
        since_return.push(t1.elapsed());
        regs.push((id, reg));
    }
    let mut dereg = Vec::new();
    for (id, reg) in regs {
        tokio::time::sleep(pace).await;
        reg.deregister().await.expect("deregister");
        let t1 = Instant::now();
        assert!(
            until(&dir, "prop", |s| !s.all().contains_key(&id)).await,
            "{id} never gone"
        );
        dereg.push(t1.elapsed());
    }
    eprintln!("  registrations measured; backend contract baseline ...");
    let contract = contract_latency(&*backend, ns, ttl, n, pace).await;
    eprintln!("  raw baseline ...");
    let raw = raw::latency(url, n).await;
    eprintln!("  crashes ...");

    // Crashes: k processes crash at once; each instance should go TTL (+ slack) after its last
    // keep-alive, which was at most one heartbeat before the crash.
    let k = size.pick(20, 3, 2);
    let mut crashed = Vec::new();
    for i in 0..k {
        let p = registry(backend.clone(), ns, ttl);
        let reg = p
            .register(Instance::new("crash", format!("c{i}")).addr("10.0.0.2:80"))
            .await
            .expect("register");
        crashed.push((p, reg));
    }
    let dc = b.discover("crash").await.expect("discover");
    let cdir = dc.directory().clone();
    assert!(until(&cdir, "crash", |s| s.all().len() == k).await);
    let at = Instant::now();
    for (p, reg) in crashed {
        p.crash();
        std::mem::forget(reg);
    }
    let mut gone_after: BTreeMap<String, Duration> = BTreeMap::new();
    let mut rx = cdir.subscribe("crash");
    let watch_for = ttl * 3 + Duration::from_secs(30);
    let watch_for = size.pick(watch_for, watch_for, watch_for.min(Duration::from_secs(4)));
    while gone_after.len() < k && at.elapsed() < watch_for {
        let snap = rx.borrow_and_update().clone();
        for i in 0..k {
            let id = format!("c{i}");
            if !snap.all().contains_key(&id) {
                gone_after.entry(id).or_insert_with(|| at.elapsed());
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
    // The last keep-alive was at most one heartbeat before the crash, so removal is due between
    // TTL - heartbeat and TTL after the crash, plus the declared slack.
    let since_crash: Vec<Duration> = gone_after.values().copied().collect();
    let slack = backend.capabilities().expiry_slack_for(ttl);

    let sc = summarize(since_call);
    let sr = summarize(since_return);
    let sd = summarize(dereg);
    let crash = summarize(if since_crash.is_empty() {
        vec![Duration::ZERO]
    } else {
        since_crash
    });
    let mut md = vec![
        format!("### Propagation ({n} registrations, one every {pace:?})"),
        String::new(),
        "| measure | p50 | p99 | max |".into(),
        "|---|---|---|---|".into(),
    ];
    let row = |name: &str, s: &stats::Summary| {
        format!("| {name} | {} | {} | {} |", ms(s.p50), ms(s.p99), ms(s.max))
    };
    md.push(row("register called -> visible at B", &sc));
    md.push(row("register returned -> visible at B", &sr));
    md.push(row("deregister returned -> gone at B", &sd));
    let mut j = json!({
        "n": n,
        "register_from_call": sjson(&sc),
        "register_from_return": sjson(&sr),
        "deregister_from_return": sjson(&sd),
        "crash": { "k": k, "ttl_ms": ttl.as_millis() as u64, "heartbeat_ms": (ttl / 3).as_millis() as u64, "declared_slack_ms": slack.as_millis() as u64, "removed_after_crash": sjson(&crash), "removed": gone_after.len() },
    });
    md.push(row(
        "backend contract: put with a lease -> watch event",
        &contract,
    ));
    j["contract_put_to_event"] = sjson(&contract);
    match raw {
        Ok(r) => {
            md.push(row("**raw client: put -> watch event**", &r));
            let over = sc.p99.as_secs_f64() / r.p99.as_secs_f64() - 1.0;
            let over50 = sc.p50.as_secs_f64() / r.p50.as_secs_f64() - 1.0;
            md.push(String::new());
            md.push(format!(
                "Registry against the raw client (register called -> visible, against put -> event, same pace): p50 **{:+.0}%**, p99 **{:+.0}%** (goal: p99 under +20%).",
                over50 * 100.0,
                over * 100.0
            ));
            j["overhead_p50"] = json!(over50);
            md.push(format!(
                "Split at p50: the engine (register called -> visible, against the backend contract's own put -> event) {:+.0}%; the backend (contract against the raw client) {:+.0}%.",
                (sc.p50.as_secs_f64() / contract.p50.as_secs_f64() - 1.0) * 100.0,
                (contract.p50.as_secs_f64() / r.p50.as_secs_f64() - 1.0) * 100.0
            ));
            j["raw_put_to_event"] = sjson(&r);
            j["overhead_p99"] = json!(over);
        }
        Err(e) => md.push(format!("| raw client | {e} | | |")),
    }
    md.push(String::new());
    md.push(format!(
        "Crash: {k} processes stop heart-beating at once (TTL {ttl:?}, heartbeat {:?}); gone after the crash: p50 {}, max {} ({} of {k} removed). Due between {:?} and {:?} (TTL, less the heartbeat since the last keep-alive, plus the declared slack {slack:?}).",
        ttl / 3,
        ms(crash.p50),
        ms(crash.max),
        gone_after.len(),
        ttl - ttl / 3,
        ttl + slack,
    ));
    if size == Size::Smoke && gone_after.len() < k {
        md.push(format!("(Smoke run: watched for {watch_for:?} only.)"));
    }
    Section { md, json: j }
}

/// The backend contract alone, same pace: put (attached to a lease, with an instance-sized value) ->
/// watch event. Separates what the engine adds from what the backend adds over its raw client.
async fn contract_latency(
    backend: &dyn Backend,
    ns: &str,
    ttl: Duration,
    n: usize,
    pace: Duration,
) -> stats::Summary {
    use futures::StreamExt;
    let lease = backend.grant(ttl).await.expect("grant");
    let prefix = format!("{ns}-contract");
    let start = backend.list(&prefix).await.expect("list").revision;
    let mut events = backend.watch(&prefix, start).await.expect("watch");
    let doc = Instance::new("contract", "c").addr("10.0.0.1:80").encode();
    let mut samples = Vec::with_capacity(n);
    let mut beat = Instant::now();
    for i in 0..n {
        tokio::time::sleep(pace).await;
        if beat.elapsed() > ttl / 3 {
            let _ = backend.keep_alive(&lease.id).await;
            beat = Instant::now();
        }
        let key = format!("{prefix}/c{i}");
        let t0 = Instant::now();
        backend
            .put(&key, doc.clone(), Some(&lease.id))
            .await
            .expect("put");
        loop {
            let ev = events
                .next()
                .await
                .expect("watch ended")
                .expect("watch failed");
            if ev.key == key {
                samples.push(t0.elapsed());
                break;
            }
        }
    }
    let _ = backend.revoke(&lease.id).await;
    summarize(samples)
}

/// Scale (3): registering many instances from one process (time, backend operations) against raw
/// put throughput; cold start of a directory over them; memory per instance held.
async fn scale(url: &str, backend: Arc<dyn Backend>, ns: &str, size: Size) -> Section {
    let n = size.pick(10_000, 300, 20);
    let ttl = ttl_for(&*backend, Duration::from_secs(30));
    let (counted, counts) = Counting::wrap(backend.clone());
    let a = registry(counted, ns, ttl);
    let t0 = Instant::now();
    let mut regs = Vec::with_capacity(n);
    for i in 0..n {
        regs.push(
            a.register(Instance::new("scale", format!("s{i:05}")).addr(format!(
                "10.1.{}.{}:80",
                i / 250,
                i % 250
            )))
            .await
            .expect("register"),
        );
    }
    let took = t0.elapsed();
    let ops = counts.total();

    // The same number registered at once from another registry (its own shared lease), under
    // another service so the cold start below still finds exactly `n`.
    let (counted, batch_counts) = Counting::wrap(backend.clone());
    let b = registry(counted, ns, ttl);
    let batch: Vec<Instance> = (0..n)
        .map(|i| {
            Instance::new("scale-batch", format!("b{i:05}")).addr(format!(
                "10.3.{}.{}:80",
                i / 250,
                i % 250
            ))
        })
        .collect();
    let t0 = Instant::now();
    let batch_regs = b.register_many(batch).await;
    let batch_took = t0.elapsed();
    let batch_ops = batch_counts.total();
    let batch_failed = batch_regs.iter().filter(|r| r.is_err()).count();
    if let Some(RegistrationState::Registered { lease, .. }) = batch_regs
        .iter()
        .find_map(|r| r.as_ref().ok())
        .map(|r| r.state())
    {
        let _ = backend.revoke(&lease).await;
    }
    b.crash();
    for r in batch_regs.into_iter().flatten() {
        std::mem::forget(r);
    }
    let batch_rate = n as f64 / batch_took.as_secs_f64();

    // What each registration costs the backend, without the registry: our conditional put
    // ("only if absent", on a lease), 64 in flight.
    let cond_rate =
        match backend.grant(ttl).await {
            Ok(lease) => {
                use futures::StreamExt;
                let t0 = Instant::now();
                let results: Vec<_> =
                    futures::stream::iter(0..n)
                        .map(|i| {
                            let (backend, lease) = (backend.clone(), lease.id.clone());
                            let inst = Instance::new("scale-cond", format!("c{i:05}"))
                                .addr(format!("10.4.{}.{}:80", i / 250, i % 250));
                            let key = format!("{ns}/scale-cond/c{i:05}");
                            async move {
                                backend
                                    .put_if(
                                        &key,
                                        inst.encode(),
                                        Some(&lease),
                                        registry::Condition::Absent,
                                    )
                                    .await
                            }
                        })
                        .buffer_unordered(64)
                        .collect()
                        .await;
                let took = t0.elapsed();
                let _ = backend.revoke(&lease.id).await;
                match results.into_iter().find_map(|r| r.err()) {
                    Some(e) => Err(e.to_string()),
                    None => Ok(n as f64 / took.as_secs_f64()),
                }
            }
            Err(e) => Err(e.to_string()),
        };

    let raw = raw::throughput(url, n).await;

    // Cold start: a new process discovers them all.
    let rss0 = rss_bytes();
    let c = registry(backend.clone(), ns, ttl);
    let t0 = Instant::now();
    let d = c.discover("scale").await.expect("discover");
    let ok = until(d.directory(), "scale", |s| s.all().len() == n).await;
    let cold = t0.elapsed();
    let rss1 = rss_bytes();
    let per_instance = match (rss0, rss1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / n as f64),
        _ => None,
    };
    // Clean up at once: revoke the shared lease (deletes everything), stop the keeper.
    if let Some(RegistrationState::Registered { lease, .. }) = regs.first().map(|r| r.state()) {
        let _ = backend.revoke(&lease).await;
    }
    a.crash();
    for r in regs {
        std::mem::forget(r);
    }
    let rate = n as f64 / took.as_secs_f64();
    let mut md = vec![
        format!("### Scale ({n} instances from one process)"),
        String::new(),
        "| measure | value |".into(),
        "|---|---|".into(),
        format!(
            "| register {n}, one after another | {:.2} s ({rate:.0}/s), {ops} backend operations ({:.2} per instance) |",
            took.as_secs_f64(),
            ops as f64 / n as f64
        ),
    ];
    md.push(format!(
        "| register {n} at once | {:.2} s ({batch_rate:.0}/s){}, {batch_ops} backend operations ({:.2} per instance) |",
        batch_took.as_secs_f64(),
        if batch_failed > 0 {
            format!(" ({batch_failed} failed!)")
        } else {
            String::new()
        },
        batch_ops as f64 / n as f64
    ));
    let mut j = json!({"n": n, "register_s": took.as_secs_f64(), "register_per_s": rate, "backend_ops": ops,
        "register_at_once_s": batch_took.as_secs_f64(), "register_at_once_per_s": batch_rate,
        "register_at_once_failed": batch_failed, "register_at_once_backend_ops": batch_ops,
        "cold_start_s": cold.as_secs_f64(), "cold_start_complete": ok});
    match raw {
        Ok((seq, piped)) => {
            md.push(format!(
                "| **raw client: sequential puts** | {seq:.0}/s (registry one after another reaches {:.0}%) |",
                rate / seq * 100.0
            ));
            md.push(format!(
                "| **raw client: 64 puts in flight** | {piped:.0}/s (registry at once reaches {:.0}%) |",
                batch_rate / piped * 100.0
            ));
            j["register_at_once_vs_raw_pipelined"] = json!(batch_rate / piped);
            match &cond_rate {
                Ok(c) => {
                    md.push(format!(
                        "| backend contract: 64 conditional puts on a lease in flight (no registry) | {c:.0}/s ({:.0}% of raw pipelined; registry at once reaches {:.0}% of it) |",
                        c / piped * 100.0,
                        batch_rate / c * 100.0
                    ));
                    j["conditional_pipelined_per_s"] = json!(c);
                }
                Err(e) => md.push(format!("| backend contract: conditional puts | {e} |")),
            }
            j["raw_sequential_per_s"] = json!(seq);
            j["raw_pipelined_per_s"] = json!(piped);
        }
        Err(e) => md.push(format!("| raw client | {e} |")),
    }
    md.push(format!(
        "| cold start: discover {n} existing instances | {} {} |",
        ms(cold),
        if ok { "" } else { "(incomplete!)" }
    ));
    if let Some(b) = per_instance {
        md.push(format!(
            "| resident memory per instance held in a directory (ring included) | {:.0} bytes |",
            b
        ));
        j["rss_per_instance_bytes"] = json!(b);
    }
    Section { md, json: j }
}

/// Heartbeat cost (4): backend requests per second to keep many registrations alive, with one shared
/// lease, one lease per registration, and Pulse's rewrite of every key every heartbeat.
async fn heartbeat(backend: Arc<dyn Backend>, ns: &str, size: Size) -> Section {
    let k = size.pick(1000, 50, 3);
    let ttl = ttl_for(&*backend, Duration::from_secs(size.pick(3, 3, 1)));
    let beat = ttl / 3;
    // At most half a second in a smoke run, even where the heartbeat is longer (Consul's 3.3 s).
    let window = size.pick(beat * 3, beat, beat.min(Duration::from_millis(500)));
    let mut rows = Vec::new();
    let mut j = json!({"registrations": k, "heartbeat_ms": beat.as_millis() as u64});
    for mode in ["shared lease (default)", "one lease per registration"] {
        let (counted, counts) = Counting::wrap(backend.clone());
        let r = registry(counted, &format!("{ns}-hb"), ttl);
        let mut regs = Vec::new();
        for i in 0..k {
            let inst = Instance::new("hb", format!("h{i}")).addr("10.2.0.1:80");
            let reg = if mode.starts_with("shared") {
                r.register(inst).await
            } else {
                r.register_with(
                    inst,
                    RegisterOptions::new().dedicated_lease(LeaseOptions {
                        ttl,
                        heartbeat: beat,
                    }),
                )
                .await
            };
            regs.push(reg.expect("register"));
        }
        let before = counts.total();
        tokio::time::sleep(window).await;
        let per_s = (counts.total() - before) as f64 / window.as_secs_f64();
        rows.push(format!("| {mode} | {per_s:.1} |"));
        j[mode] = json!(per_s);
        for reg in regs {
            let _ = reg.deregister().await;
        }
    }
    // Pulse: every key written again every heartbeat.
    let (counted, counts) = Counting::wrap(backend.clone());
    let started = Instant::now();
    // A round a window where the window is shorter than a heartbeat (a smoke run on Consul).
    let mut tick = tokio::time::interval(beat.min(window));
    while started.elapsed() < window {
        tick.tick().await;
        for i in 0..k {
            let _ = counted
                .put(
                    &format!("{ns}-pulse/hb/p{i}"),
                    Bytes::from_static(b"node"),
                    None,
                )
                .await;
        }
    }
    let per_s = counts.total() as f64 / started.elapsed().as_secs_f64();
    rows.push(format!(
        "| Pulse: rewrite every key every heartbeat | {per_s:.1} |"
    ));
    j["pulse rewrite"] = json!(per_s);
    for i in 0..k {
        let _ = backend.delete(&format!("{ns}-pulse/hb/p{i}")).await;
    }
    let mut md = vec![
        format!("### Heartbeat cost ({k} registrations, heartbeat {beat:?})"),
        String::new(),
        "| mode | backend requests per second |".into(),
        "|---|---|".into(),
    ];
    md.extend(rows);
    Section { md, json: j }
}

/// Ring quality (5): keys moved when one instance joins or leaves, and load spread at 128 vnodes.
/// The ratio (to the ideal share of keys moved) farthest from 1, or 1 when there is none.
fn farthest_from_ideal(ratios: &[f64]) -> f64 {
    ratios.iter().copied().fold(1.0, |worst, r| {
        if (r - 1.0).abs() > (worst - 1.0).abs() {
            r
        } else {
            worst
        }
    })
}

fn ring_quality(size: Size) -> Section {
    let inst = |id: String| Arc::new(Instance::new("ring", id).addr("x:1"));
    let (key_count, keys_label, memberships) = size.pick(
        (100_000, "100,000", 20),
        (100_000, "100,000", 20),
        (2_000, "2,000", 2),
    );
    let keys: Vec<String> = (0..key_count).map(|k| format!("key-{k}")).collect();
    let load_note = match size {
        Size::Smoke => {
            "Load is counted over the keys (far too few for a meaningful figure in a smoke run)"
        }
        _ => {
            "Load is counted over the 100,000 keys (at n = 100, 1,000 keys a member: sampling alone puts max/mean near 1.08)"
        }
    };
    let mut md = vec![
        format!(
            "### Ring quality ({} points per instance, {} probes per key, {keys_label} keys, {memberships} random memberships each)",
            registry::engine::DEFAULT_VNODES,
            registry::engine::PROBES,
        ),
        String::new(),
        format!(
            "{load_note}; share is the ring's own exact share of the key space (`Ring::shares`)."
        ),
        String::new(),
        "| n | moved on join (ideal 1/(n+1)) | moved on leave (ideal 1/n) | load max/mean | load min/mean | load CV | share max/mean | share min/mean |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    let mut j = json!({});
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for n in [3usize, 10, 100] {
        let (mut join, mut leave, mut maxr, mut minr, mut cv) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut share_max, mut share_min) = (vec![], vec![]);
        for _ in 0..memberships {
            let ids: Vec<String> = (0..n).map(|_| format!("m{:016x}", next())).collect();
            let ring = Ring::new(ids.iter().cloned().map(inst));
            let shares = ring.shares();
            share_max.push(shares.iter().cloned().fold(0.0, f64::max) * n as f64);
            share_min.push(shares.iter().cloned().fold(f64::MAX, f64::min) * n as f64);
            let owners: Vec<String> = keys
                .iter()
                .map(|k| ring.find(k.as_bytes()).expect("owner").id.clone())
                .collect();
            let mut plus = ids.clone();
            plus.push(format!("new{:016x}", next()));
            let joined = Ring::new(plus.into_iter().map(inst));
            let moved = keys
                .iter()
                .zip(&owners)
                .filter(|(k, o)| &joined.find(k.as_bytes()).expect("owner").id != *o)
                .count();
            join.push(moved as f64 / keys.len() as f64 * (n + 1) as f64);
            let left = Ring::new(ids[1..].iter().cloned().map(inst));
            if n > 1 {
                let moved = keys
                    .iter()
                    .zip(&owners)
                    .filter(|(k, o)| &left.find(k.as_bytes()).expect("owner").id != *o)
                    .count();
                leave.push(moved as f64 / keys.len() as f64 * n as f64);
            }
            let mut load: BTreeMap<&str, usize> = BTreeMap::new();
            for o in &owners {
                *load.entry(o.as_str()).or_default() += 1;
            }
            let mean = keys.len() as f64 / n as f64;
            let loads: Vec<f64> = ids
                .iter()
                .map(|i| *load.get(i.as_str()).unwrap_or(&0) as f64)
                .collect();
            maxr.push(loads.iter().cloned().fold(0.0, f64::max) / mean);
            minr.push(loads.iter().cloned().fold(f64::MAX, f64::min) / mean);
            let var = loads.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n as f64;
            cv.push(var.sqrt() / mean);
        }
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        md.push(format!(
            "| {n} | {:.3} × ideal (worst {:.3}) | {:.3} × ideal (worst {:.3}) | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            avg(&join),
            farthest_from_ideal(&join),
            avg(&leave),
            farthest_from_ideal(&leave),
            avg(&maxr),
            avg(&minr),
            avg(&cv),
            avg(&share_max),
            avg(&share_min)
        ));
        j[n.to_string()] = json!({"join_ratio": avg(&join), "leave_ratio": avg(&leave), "max_over_mean": avg(&maxr), "min_over_mean": avg(&minr), "cv": avg(&cv), "share_max_over_mean": avg(&share_max), "share_min_over_mean": avg(&share_min)});
    }
    Section { md, json: j }
}

/// Lookups (2), timed in this binary (criterion gives the detailed figures: `cargo bench -p
/// registry-bench`): nanoseconds per `get`, `find`, `find_n(3)`, alone and with the other core
/// reading while a writer churns membership.
async fn lookup(size: Size) -> Section {
    let sizes: &[usize] = size.pick(&[10, 1000, 100_000], &[10, 1000], &[10]);
    let mut md = vec![
        "### Lookups (in-process directory; median of 5 runs)".into(),
        String::new(),
        "| instances | get | find | find_n(3) | get, contended | find, contended | find_n(3), contended |".into(),
        "|---|---|---|---|---|---|---|".into(),
    ];
    let mut j = json!({});
    for &n in sizes {
        let (dir, backend, _d) = filled_directory(n).await;
        let iters: u64 = size.pick(200_000, 20_000, 1_000);
        let alone = measure(&dir, iters);
        // Contention: another thread reads as fast as it can, a writer churns membership.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(dir.find("bench", i.to_le_bytes()));
                    i += 1;
                }
            })
        };
        let writer = {
            let (backend, stop) = (backend.clone(), stop.clone());
            tokio::spawn(async move {
                let doc = Instance::new("bench", "churn").addr("10.9.9.9:1").encode();
                while !stop.load(Ordering::Relaxed) {
                    let _ = backend.put("registry/bench/churn", doc.clone(), None).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _ = backend.delete("registry/bench/churn").await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let contended = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || measure(&dir, iters)
        })
        .await
        .expect("measure");
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        let _ = writer.await;
        md.push(format!(
            "| {n} | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns |",
            alone[0], alone[1], alone[2], contended[0], contended[1], contended[2]
        ));
        j[n.to_string()] = json!({"get_ns": alone[0], "find_ns": alone[1], "find3_ns": alone[2], "contended": {"get_ns": contended[0], "find_ns": contended[1], "find3_ns": contended[2]}});
    }
    Section { md, json: j }
}

/// A directory holding `n` instances of service `bench`, filled through a real discovery over the
/// memory backend.
async fn filled_directory(n: usize) -> (Directory, Arc<dyn Backend>, registry::engine::Discovery) {
    let backend: Arc<dyn Backend> = Arc::new(registry::memory::MemoryBackend::new());
    for i in 0..n {
        let doc = Instance::new("bench", format!("b{i:06}"))
            .addr(format!("10.3.{}.{}:80", i / 250 % 250, i % 250))
            .encode();
        backend
            .put(&format!("registry/bench/b{i:06}"), doc, None)
            .await
            .expect("put");
    }
    let r = Registry::new(backend.clone()).expect("registry");
    let d = r.discover("bench").await.expect("discover");
    assert!(until(d.directory(), "bench", |s| s.online().len() == n).await);
    (d.directory().clone(), backend, d)
}

/// Median ns/op of 5 runs of `iters` calls, for get, find and find_n(3).
fn measure(dir: &Directory, iters: u64) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (slot, op) in out.iter_mut().zip(0..3) {
        let runs: Vec<f64> = (0..5)
            .map(|_| {
                let t0 = Instant::now();
                for i in 0..iters {
                    let key = i.to_le_bytes();
                    match op {
                        0 => {
                            std::hint::black_box(dir.get("bench"));
                        }
                        1 => {
                            std::hint::black_box(dir.find("bench", key));
                        }
                        _ => {
                            std::hint::black_box(dir.find_n(3, "bench", key));
                        }
                    }
                }
                t0.elapsed().as_nanos() as f64 / iters as f64
            })
            .collect();
        *slot = stats::median(&runs);
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let want = |s: &str| a.only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let backend = match registry::connect(&a.url).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(3);
        }
    };
    let ns = format!("bench-{}", std::process::id());
    let scheme = a.url.split("://").next().unwrap_or("backend").to_owned();
    let started = Instant::now();
    let mut sections: Vec<(&str, Section)> = Vec::new();
    if want("propagation") {
        eprintln!("propagation ...");
        sections.push((
            "propagation",
            propagation(&a.url, backend.clone(), &ns, a.size).await,
        ));
    }
    if want("scale") {
        eprintln!("scale ...");
        sections.push((
            "scale",
            scale(&a.url, backend.clone(), &format!("{ns}-scale"), a.size).await,
        ));
    }
    if want("heartbeat") {
        eprintln!("heartbeat ...");
        sections.push(("heartbeat", heartbeat(backend.clone(), &ns, a.size).await));
    }
    if want("ring") {
        eprintln!("ring ...");
        sections.push(("ring", ring_quality(a.size)));
    }
    if want("lookup") {
        eprintln!("lookup ...");
        sections.push(("lookup", lookup(a.size).await));
    }
    if want("estate") {
        eprintln!("estate ...");
        let cfg = estate::Config::new(a.size, &scheme);
        sections.push((
            "estate",
            estate::run(&a.url, backend.clone(), &format!("{ns}-estate"), &cfg).await,
        ));
    }
    // Needs a backend that another process can reach: by default on every backend but memory.
    let shared = scheme != "memory";
    let asked = a
        .only
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == "serve-load"));
    if asked && !shared {
        eprintln!("serve-load needs a backend shared with the server process, not memory://");
        std::process::exit(2);
    }
    if want("serve-load") && shared {
        eprintln!("serve-load ...");
        let bin = a.registry_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("registry")))
                .map_or("registry".into(), |p| p.display().to_string())
        });
        match serve_load::run(
            &a.url,
            backend.clone(),
            &format!("{ns}-serve"),
            &bin,
            &a.serve,
        )
        .await
        {
            Ok(s) => sections.push(("serve_load", s)),
            Err(e) => {
                eprintln!("error: serve-load: {e}");
                std::process::exit(3);
            }
        }
    }
    let mut md = vec![
        format!(
            "## Backend {} ({} run{})",
            scheme,
            a.size.name(),
            if a.size == Size::Smoke {
                ": it proves each section runs; its figures mean nothing"
            } else {
                ""
            }
        ),
        String::new(),
        format!(
            "Command: `registry-bench --backend {}{}`; {:.0} s.",
            a.url,
            match a.size {
                Size::Full => String::new(),
                other => format!(" --{}", other.name()),
            },
            started.elapsed().as_secs_f64()
        ),
    ];
    let mut j = json!({"backend": a.url, "quick": a.size == Size::Quick, "size": a.size.name(), "seconds": started.elapsed().as_secs_f64()});
    for (name, s) in sections {
        md.push(String::new());
        md.extend(s.md);
        j[name] = s.json;
    }
    let text = md.join("\n") + "\n";
    println!("{text}");
    if let Err(e) = std::fs::create_dir_all(&a.out)
        .and_then(|_| std::fs::write(a.out.join(format!("bench-{scheme}.md")), &text))
        .and_then(|_| {
            std::fs::write(
                a.out.join(format!("bench-{scheme}.json")),
                serde_json::to_string_pretty(&j).unwrap_or_default(),
            )
        })
    {
        eprintln!("cannot write results to {}: {e}", a.out.display());
        std::process::exit(3);
    }
}
