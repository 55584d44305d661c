//! Criterion microbenchmarks of directory lookups at 10, 1,000 and 100,000 instances, and at 1,000
//! while membership churns.
//! `cargo bench -p registry-bench` (add `-- --quick` for a short run).

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use registry::Backend;
use registry::engine::{Directory, Instance, Registry};

fn directory(
    rt: &tokio::runtime::Runtime,
    n: usize,
) -> (Directory, (registry::engine::Discovery, Arc<dyn Backend>)) {
    rt.block_on(async {
        let backend: Arc<dyn Backend> = Arc::new(registry::memory::MemoryBackend::new());
        for i in 0..n {
            let doc = Instance::new("bench", format!("b{i:06}"))
                .addr("10.0.0.1:80")
                .encode();
            backend
                .put(&format!("registry/bench/b{i:06}"), doc, None)
                .await
                .expect("put");
        }
        let r = Registry::new(backend.clone()).expect("registry");
        let d = r.discover("bench").await.expect("discover");
        let mut rx = d.directory().subscribe("bench");
        rx.wait_for(|s| s.online().len() == n)
            .await
            .expect("filled");
        (d.directory().clone(), (d, backend))
    })
}

fn lookups(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut g = c.benchmark_group("lookup");
    for n in [10usize, 1_000, 100_000] {
        let (dir, _keep) = directory(&rt, n);
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("get", n), &n, |b, _| {
            b.iter(|| dir.get("bench"))
        });
        g.bench_with_input(BenchmarkId::new("find", n), &n, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                dir.find("bench", i.to_le_bytes())
            })
        });
        g.bench_with_input(BenchmarkId::new("find_n3", n), &n, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                dir.find_n(3, "bench", i.to_le_bytes())
            })
        });
    }
    // Under churn: a writer adds and removes one instance every 5 ms, so some lookups walk the
    // previous ring with the change overlaid while the new ring is built.
    {
        let n = 1_000usize;
        let (dir, keep) = directory(&rt, n);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (backend, stop) = (keep.1.clone(), stop.clone());
            rt.spawn(async move {
                let doc = Instance::new("bench", "churn").addr("10.9.9.9:1").encode();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = backend.put("registry/bench/churn", doc.clone(), None).await;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    let _ = backend.delete("registry/bench/churn").await;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
        };
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("find_churn", n), &n, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                dir.find("bench", i.to_le_bytes())
            })
        });
        g.bench_with_input(BenchmarkId::new("find_n3_churn", n), &n, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                dir.find_n(3, "bench", i.to_le_bytes())
            })
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = rt.block_on(writer);
    }
    g.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
