//! Measures how late after its TTL a lease's key disappears, as a watcher sees it: the figure the
//! backend declares as its expiry slack.
//!
//! ```text
//! cargo run --release -p service-registry-redis --example expiry_slack -- redis://127.0.0.1:6379 [leases]
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt;
use registry_core::{Backend, Bytes, EventKind};
use registry_redis::RedisBuilder;

#[tokio::main]
async fn main() -> registry_core::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let ns = format!("slack-{}", std::process::id());
    let backend = RedisBuilder::from_url(&url)?
        .namespace(ns)
        .connect()
        .await?;
    let declared = backend.capabilities().expiry_slack;
    // Not a multiple of the reap interval, and each lease starts at another point of the reaper's
    // cycle, so the figures cover the whole cycle.
    let ttl = Duration::from_millis(337);
    let mut lateness = Vec::with_capacity(n);
    let start = backend.list("").await?.revision;
    let mut events = backend.watch("", start).await?;
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 101)).await;
        let granted_at = Instant::now();
        let lease = backend.grant(ttl).await?;
        backend
            .put(&format!("k/{i}"), Bytes::new(), Some(&lease.id))
            .await?;
        loop {
            let ev = events.next().await.expect("watch ended")?;
            if ev.kind == EventKind::Delete {
                lateness.push(granted_at.elapsed().saturating_sub(ttl));
                break;
            }
        }
    }
    lateness.sort();
    let pct = |p: f64| lateness[((lateness.len() - 1) as f64 * p) as usize];
    println!(
        "{n} leases of {ttl:?}: delete seen after TTL + p50 {:?}, p99 {:?}, max {:?} (declared slack {declared:?})",
        pct(0.5),
        pct(0.99),
        lateness[lateness.len() - 1]
    );
    Ok(())
}
