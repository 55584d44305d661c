//! Where `Registry::register_many` spends its time on the memory backend (issue 30 goal 3):
//! ROUNDS rounds of N instances at once, each on a fresh registry, against the backend's own
//! unconditional put with 64 in flight in the same process.
//!
//! `cargo run --release -p registry-bench --example register_many_cost -- [N] [ROUNDS]`
//! (defaults 10,000 and 20).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use registry::Backend;
use registry::engine::{Instance, Registry};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let mut many = Vec::new();
        let mut raw = Vec::new();
        for round in 0..rounds {
            let backend: Arc<dyn Backend> = Arc::new(registry::memory::MemoryBackend::new());
            let registry = Registry::builder(backend.clone())
                .ttl(Duration::from_secs(30))
                .heartbeat(Duration::from_secs(10))
                .build()
                .expect("a registry");
            let batch: Vec<Instance> = (0..n)
                .map(|i| {
                    Instance::new("many", format!("m{round}-{i:05}"))
                        .addr(format!("10.3.{}.{}:80", i / 250 % 250, i % 250))
                })
                .collect();
            let t0 = Instant::now();
            let regs = registry.register_many(batch).await;
            many.push(n as f64 / t0.elapsed().as_secs_f64());
            assert!(regs.iter().all(|r| r.is_ok()));
            registry.crash();
            drop(regs);

            let t0 = Instant::now();
            futures::stream::iter(0..n)
                .map(|i| {
                    let backend = backend.clone();
                    let doc = Instance::new("raw", format!("r{i:05}"))
                        .addr("10.4.0.1:80")
                        .encode();
                    async move { backend.put(&format!("raw/r{i:05}"), doc, None).await }
                })
                .buffer_unordered(64)
                .for_each(|r| async move {
                    r.expect("put");
                })
                .await;
            raw.push(n as f64 / t0.elapsed().as_secs_f64());
        }
        many.sort_by(f64::total_cmp);
        raw.sort_by(f64::total_cmp);
        let (m, r) = (many[rounds / 2], raw[rounds / 2]);
        println!(
            "{n} at once, median of {rounds}: register_many {m:.0}/s, raw put 64 in flight {r:.0}/s: {:.2}x",
            m / r
        );
    });
}
