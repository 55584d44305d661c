//! What the backend contract's conditional writes cost on one backend, without the registry
//! (issue 30 goal 3): N creates on one lease through `put_if_many` (batches of the backend's
//! size, two calls in flight, as the keeper sends them), through `put_if` (64 in flight) and
//! plain `put`s (64 in flight, no lease), each on fresh keys; the median of ROUNDS rounds.
//!
//! `cargo run --release -p registry-bench --example put_many_cost -- URL [N] [ROUNDS]`
//! (defaults 10,000 and 7; URL as `registry --backend` takes it, e.g. `redis://127.0.0.1:6379`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use registry::{Backend, Bytes, CondPut, Condition};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "memory://".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let backend: Arc<dyn Backend> = registry::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let batch = backend.capabilities().batch_writes;
        let value = Bytes::from(vec![b'v'; 100]);
        let (mut many, mut single, mut plain) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let lease = backend
                .grant(Duration::from_secs(60))
                .await
                .expect("grant")
                .id;
            let key = |what: &str, i: usize| format!("put-many-cost/{what}{round}/{i:06}");

            let writes: Vec<Vec<CondPut>> = (0..n)
                .map(|i| {
                    CondPut::new(
                        key("m", i),
                        value.clone(),
                        Some(lease.clone()),
                        Condition::Absent,
                    )
                })
                .collect::<Vec<_>>()
                .chunks(batch)
                .map(<[CondPut]>::to_vec)
                .collect();
            let t0 = Instant::now();
            futures::stream::iter(writes)
                .map(|w| backend.put_if_many(w))
                .buffer_unordered(2)
                .for_each(|outcomes| async move {
                    assert!(
                        outcomes
                            .iter()
                            .all(|o| matches!(o, Ok(o) if o.is_applied()))
                    );
                })
                .await;
            many.push(n as f64 / t0.elapsed().as_secs_f64());

            let t0 = Instant::now();
            futures::stream::iter(0..n)
                .map(|i| {
                    let (backend, lease, value) = (&backend, &lease, value.clone());
                    let k = key("s", i);
                    async move {
                        backend
                            .put_if(&k, value, Some(lease), Condition::Absent)
                            .await
                    }
                })
                .buffer_unordered(64)
                .for_each(|o| async move {
                    assert!(matches!(o, Ok(o) if o.is_applied()));
                })
                .await;
            single.push(n as f64 / t0.elapsed().as_secs_f64());

            let t0 = Instant::now();
            futures::stream::iter(0..n)
                .map(|i| {
                    let (backend, value) = (&backend, value.clone());
                    let k = key("p", i);
                    async move { backend.put(&k, value, None).await }
                })
                .buffer_unordered(64)
                .for_each(|r| async move {
                    r.expect("put");
                })
                .await;
            plain.push(n as f64 / t0.elapsed().as_secs_f64());
            backend.revoke(&lease).await.expect("revoke");
        }
        let (m, s, p) = (median(many), median(single), median(plain));
        println!(
            "{url}, {n} writes, median of {rounds}: put_if_many (batches of {batch}) {m:.0}/s, \
             put_if 64 in flight {s:.0}/s, put 64 in flight {p:.0}/s: batch {:.2}x put, \
             {:.2}x put_if",
            m / p,
            m / s
        );
    });
}
