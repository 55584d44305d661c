//! Lookups (section 2): nanoseconds per `get`, `find`, `find_n(3)` on an in-process directory,
//! alone and contended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use registry::Backend;
use registry::engine::{Directory, Instance, Registry};
use serde_json::json;

use crate::harness::until;
use crate::report::Section;
use crate::size::Size;
use crate::stats;

/// Lookups (2), timed in this binary (criterion gives the detailed figures: `cargo bench -p
/// registry-bench`): nanoseconds per `get`, `find`, `find_n(3)`, alone and with the other core
/// reading while a writer churns membership.
pub(crate) async fn run(size: Size) -> Section {
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
