//! What the sections share to set up and watch a run: a TTL the backend grants, a registry with it,
//! waiting until a directory shows something, and this process's resident memory.

use std::sync::Arc;
use std::time::Duration;

use registry::Backend;
use registry::engine::{Directory, Registry};

pub(crate) fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

pub(crate) fn ttl_for(backend: &dyn Backend, at_least: Duration) -> Duration {
    let caps = backend.capabilities();
    caps.grant_ttl(caps.min_ttl.max(at_least))
        .unwrap_or(at_least)
}

pub(crate) fn registry(backend: Arc<dyn Backend>, ns: &str, ttl: Duration) -> Registry {
    Registry::builder(backend)
        .namespace(ns.to_owned())
        .ttl(ttl)
        .heartbeat(ttl / 3)
        .build()
        .expect("valid options")
}

pub(crate) async fn until(
    dir: &Directory,
    service: &str,
    f: impl Fn(&registry::engine::ServiceSnapshot) -> bool,
) -> bool {
    let mut rx = dir.subscribe(service);
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| f(s)))
        .await
        .is_ok()
}
