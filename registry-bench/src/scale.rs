//! Scale (section 3): registering many instances from one process, one after another and at once,
//! against the raw client; a cold start over them; the memory each takes in a directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::Backend;
use registry::engine::{Instance, RegistrationState};
use serde_json::json;

use crate::counting::Counting;
use crate::harness::{registry, rss_bytes, ttl_for, until};
use crate::raw;
use crate::report::Section;
use crate::size::Size;
use crate::stats::ms;

/// Scale (3): registering many instances from one process (time, backend operations) against raw
/// put throughput; cold start of a directory over them; memory per instance held.
pub(crate) async fn run(url: &str, backend: Arc<dyn Backend>, ns: &str, size: Size) -> Section {
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
