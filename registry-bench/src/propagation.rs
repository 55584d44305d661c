//! Propagation (section 1): how long a registration takes to be seen by another process, against
//! the backend contract and the raw client; and how long a crashed instance takes to go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::Backend;
use registry::engine::Instance;
use serde_json::json;

use crate::harness::{registry, ttl_for, until};
use crate::raw;
use crate::report::Section;
use crate::size::Size;
use crate::stats::{self, json as sjson, ms, summarize};

/// Propagation (1): register/deregister at A -> visible/gone at B, next to the raw put -> event
/// latency; and crash -> removal past the TTL, against the declared slack.
pub(crate) async fn run(url: &str, backend: Arc<dyn Backend>, ns: &str, size: Size) -> Section {
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
