//! Heartbeat cost (section 4): the backend requests a second that keep registrations alive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::engine::{Instance, LeaseOptions, RegisterOptions};
use registry::{Backend, Bytes};
use serde_json::json;

use crate::counting::Counting;
use crate::harness::{registry, ttl_for};
use crate::report::Section;
use crate::size::Size;

/// Heartbeat cost (4): backend requests per second to keep many registrations alive, with one shared
/// lease, one lease per registration, and Pulse's rewrite of every key every heartbeat.
pub(crate) async fn run(backend: Arc<dyn Backend>, ns: &str, size: Size) -> Section {
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
