use async_trait::async_trait;

use super::*;
use crate::{DiscoveryOptions, ProbeOptions, Scope};
use bytes::Bytes;
use registry_core::backend::{Capabilities, CondOutcome, Condition};
use registry_core::config::MAX_DURATION;
use registry_core::lease::Lease;
use registry_core::lease::LeaseId;
use registry_core::watch::{KeyValue, Listing, WatchStream};

/// A backend that declares `caps` and answers nothing: enough for option validation, which
/// must happen before any call.
#[derive(Debug)]
struct Unreachable(Capabilities);

fn down<T>() -> Result<T> {
    Err(Error::unavailable("stub backend"))
}

#[async_trait]
impl Backend for Unreachable {
    fn capabilities(&self) -> Capabilities {
        self.0.clone()
    }
    async fn grant(&self, _: Duration) -> Result<Lease> {
        down()
    }
    async fn keep_alive(&self, _: &LeaseId) -> Result<Duration> {
        down()
    }
    async fn revoke(&self, _: &LeaseId) -> Result<()> {
        down()
    }
    async fn put(&self, _: &str, _: Bytes, _: Option<&LeaseId>) -> Result<u64> {
        down()
    }
    async fn delete(&self, _: &str) -> Result<Option<u64>> {
        down()
    }
    async fn put_if(
        &self,
        _: &str,
        _: Bytes,
        _: Option<&LeaseId>,
        _: Condition,
    ) -> Result<CondOutcome> {
        down()
    }
    async fn delete_if(&self, _: &str, _: Condition) -> Result<CondOutcome> {
        down()
    }
    async fn get(&self, _: &str) -> Result<Option<KeyValue>> {
        down()
    }
    async fn list(&self, _: &str) -> Result<Listing> {
        down()
    }
    async fn watch(&self, _: &str, _: u64) -> Result<WatchStream> {
        down()
    }
}

/// A backend declaring no upper TTL bound, as `MemoryBuilder::capabilities` allows.
fn unbounded() -> Arc<dyn Backend> {
    Arc::new(Unreachable(
        Capabilities::default().with_max_ttl(Duration::MAX),
    ))
}

fn invalid<T: fmt::Debug>(r: Result<T>) -> Error {
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    e
}

/// Before the check, a TTL of `Duration::MAX` on a backend declaring no maximum built fine and
/// panicked later in `last_ok + ttl` (or in the backend's own deadline arithmetic).
#[test]
fn registry_refuses_durations_whose_deadlines_would_overflow() {
    let huge = Duration::MAX;
    let e = invalid(Registry::builder(unbounded()).ttl(huge).build());
    assert!(e.message().contains("too large"), "{e}");
    invalid(
        Registry::builder(unbounded())
            .ttl(MAX_DURATION + Duration::from_secs(1))
            .heartbeat(Duration::from_secs(5))
            .build(),
    );
    invalid(Registry::builder(unbounded()).delay(huge).build());
    invalid(Registry::builder(unbounded()).op_timeout(huge).build());
    let e = invalid(
        Registry::builder(unbounded())
            .op_timeout(Duration::ZERO)
            .build(),
    );
    assert!(e.message().contains("operation timeout"), "{e}");
    // The largest accepted values still build.
    assert!(
        Registry::builder(unbounded())
            .ttl(MAX_DURATION)
            .heartbeat(MAX_DURATION / 2)
            .delay(MAX_DURATION)
            .op_timeout(MAX_DURATION)
            .build()
            .is_ok()
    );
}

#[tokio::test]
async fn dedicated_leases_and_delays_are_checked_per_registration() {
    let registry = Registry::builder(unbounded()).build().unwrap();
    let inst = || Instance::new("web", "a").addr("x:1");
    let huge = LeaseOptions {
        ttl: Duration::MAX,
        heartbeat: Duration::from_secs(1),
    };
    invalid(
        registry
            .register_with(inst(), RegisterOptions::new().dedicated_lease(huge))
            .await,
    );
    invalid(
        registry
            .register_with(inst(), RegisterOptions::new().delay(Duration::MAX))
            .await,
    );
}

/// A zero probe interval panicked in `tokio::time::interval` (in the probe task) and a zero
/// poll interval listed in a busy loop; both are refused when the discovery starts.
#[tokio::test]
async fn discovery_refuses_zero_and_huge_intervals() {
    let registry = Registry::builder(unbounded()).build().unwrap();
    let scope = || Scope::Service("web".into());
    for (opts, what) in [
        (
            DiscoveryOptions::new().poll(Duration::ZERO),
            "poll interval",
        ),
        (DiscoveryOptions::new().poll(Duration::MAX), "poll interval"),
        (
            DiscoveryOptions::new().probe(ProbeOptions::tcp(Duration::ZERO)),
            "probe interval",
        ),
        (
            DiscoveryOptions::new().probe(ProbeOptions::tcp(Duration::MAX)),
            "probe interval",
        ),
        (
            DiscoveryOptions::new().op_timeout(Duration::ZERO),
            "operation timeout",
        ),
        (
            DiscoveryOptions::new().backoff(Duration::MAX, Duration::MAX),
            "backoff",
        ),
    ] {
        let e = invalid(registry.discover_with(scope(), opts).await);
        assert!(e.message().contains(what), "{what}: {e}");
    }
}
