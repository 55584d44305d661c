//! Where the engine's share of propagation goes on the memory backend (issue 30 goal 1): the
//! latency of `Registry::register` alone, back to back or with a pause before each call, on a
//! current-thread or a two-worker runtime.
//!
//! `cargo run --release -p registry-bench --example register_latency -- [N] [PAUSE_MS] [current|multi]`
//! (defaults: 2,000 registrations, no pause, multi). Results in BENCHMARKS.md section 1.1.

use std::time::{Duration, Instant};

use registry::engine::{Instance, Registry};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let pause = Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(0));
    let flavor = args.next().unwrap_or_else(|| "multi".into());
    let rt = match flavor.as_str() {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .expect("a runtime");
    rt.block_on(async move {
        let backend = registry::connect("memory://").await.expect("memory backend");
        let registry = Registry::builder(backend)
            .ttl(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(1))
            .build()
            .expect("a registry");
        let mut took = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let instance = Instance::new("web", format!("w{i}")).addr("10.0.0.1:8080");
            let t = Instant::now();
            handles.push(registry.register(instance).await.expect("register"));
            took.push(t.elapsed());
        }
        took.sort();
        println!(
            "{n} registrations, pause {pause:?}, {flavor} runtime: register p50 {:?} p90 {:?} p99 {:?}",
            took[n / 2],
            took[n * 9 / 10],
            took[n * 99 / 100]
        );
    });
}
