//! Optional liveness probing (Pulse's connect-and-monitor): an instance whose probe fails is hidden
//! from [`get`](crate::Directory::get) and routing at once, and shown again when the probe
//! recovers, without waiting for its TTL.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::model::instance::{Instance, host_port};
use crate::read::directory::Directory;

/// Decides whether an instance is reachable.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// `true` when the instance answers.
    async fn probe(&self, instance: &Instance) -> bool;
}

/// The default probe: a TCP connect to the instance's first address, within a timeout. Addresses
/// may be `host:port` or URLs (`http://host:port/path`).
#[derive(Clone, Debug)]
pub struct TcpProbe {
    timeout: Duration,
}

impl TcpProbe {
    /// A TCP probe that gives up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TcpProbe { timeout }
    }
}

impl Default for TcpProbe {
    fn default() -> Self {
        TcpProbe::new(Duration::from_secs(1))
    }
}

#[async_trait]
impl Probe for TcpProbe {
    async fn probe(&self, instance: &Instance) -> bool {
        let Some(addr) = instance.addrs.first().and_then(|a| host_port(a)) else {
            return false;
        };
        matches!(
            tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        )
    }
}

/// How and how often to probe.
#[derive(Clone)]
pub struct ProbeOptions {
    pub(crate) probe: Arc<dyn Probe>,
    pub(crate) interval: Duration,
    pub(crate) concurrency: usize,
}

impl fmt::Debug for ProbeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeOptions")
            .field("interval", &self.interval)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl ProbeOptions {
    /// Probes with `probe` every `interval`, 16 instances at a time. The interval must be positive
    /// and at most [`MAX_DURATION`](registry_core::config::MAX_DURATION): a discovery refuses to start
    /// with anything else.
    pub fn new(probe: impl Probe, interval: Duration) -> Self {
        ProbeOptions {
            probe: Arc::new(probe),
            interval,
            concurrency: 16,
        }
    }

    /// TCP-connect probing every `interval`.
    pub fn tcp(interval: Duration) -> Self {
        ProbeOptions::new(TcpProbe::default(), interval)
    }

    /// How many probes run at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

/// Probes every listed online instance of `services()` each interval and hides the failing ones.
pub(crate) async fn run(
    directory: Directory,
    services: impl Fn() -> Vec<String> + Send,
    opts: ProbeOptions,
) {
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for service in services() {
            let snap = directory.snapshot(&service);
            let candidates: Vec<Arc<Instance>> = snap
                .all()
                .values()
                .filter(|i| i.is_online())
                .cloned()
                .collect();
            let probe = opts.probe.clone();
            let failing: BTreeSet<String> = futures::stream::iter(candidates)
                .map(|inst| {
                    let probe = probe.clone();
                    async move { (!probe.probe(&inst).await).then(|| inst.id.clone()) }
                })
                .buffer_unordered(opts.concurrency)
                .filter_map(|x| async move { x })
                .collect()
                .await;
            for id in failing.difference(&snap_hidden(&snap)) {
                tracing::info!(service, id, "liveness probe failed: instance hidden");
            }
            for id in snap_hidden(&snap).difference(&failing) {
                tracing::info!(
                    service,
                    id,
                    "liveness probe recovered: instance shown again"
                );
            }
            directory.set_hidden(&service, failing);
        }
    }
}

fn snap_hidden(snap: &crate::read::snapshot::ServiceSnapshot) -> BTreeSet<String> {
    snap.all()
        .keys()
        .filter(|id| snap.is_hidden(id))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("10.0.0.1:80"), Some("10.0.0.1:80"));
        assert_eq!(host_port("http://h:8080/x/y"), Some("h:8080"));
        assert_eq!(host_port("grpc://[::1]:50051"), Some("[::1]:50051"));
        // Credentials are not part of where the probe connects.
        assert_eq!(host_port("http://u:p@h:8080/"), Some("h:8080"));
    }
}
