//! Discovery against backends that misbehave in ways the memory backend alone does not: one whose
//! watches always answer `Compacted` (history that is never there), and one that refuses the
//! credentials for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use registry::engine::Registry;
use registry::memory::MemoryBackend;
use registry::{
    Backend, Bytes, Capabilities, CondOutcome, Condition, Error, ErrorKind, KeyValue, Lease,
    LeaseId, Listing, Result, Revision, WatchStream,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Every watch answers `Compacted`.
    AlwaysCompacted,
    /// Every list answers `PermissionDenied`.
    Forbidden,
}

/// The memory backend with one fault, counting lists.
#[derive(Debug)]
struct Faulty {
    inner: MemoryBackend,
    fault: Fault,
    lists: AtomicU64,
}

#[async_trait]
impl Backend for Faulty {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn grant(&self, ttl: Duration) -> Result<Lease> {
        self.inner.grant(ttl).await
    }
    async fn keep_alive(&self, lease: &LeaseId) -> Result<Duration> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: &LeaseId) -> Result<()> {
        self.inner.revoke(lease).await
    }
    async fn put(&self, key: &str, value: Bytes, lease: Option<&LeaseId>) -> Result<Revision> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<Option<Revision>> {
        self.inner.delete(key).await
    }
    async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome> {
        self.inner.put_if(key, value, lease, cond).await
    }
    async fn delete_if(&self, key: &str, cond: Condition) -> Result<CondOutcome> {
        self.inner.delete_if(key, cond).await
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        if self.fault == Fault::Forbidden {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "this token may not read the prefix",
            ));
        }
        self.inner.list(prefix).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        if self.fault == Fault::AlwaysCompacted {
            return Err(Error::compacted(after + 1));
        }
        self.inner.watch(prefix, after).await
    }
}

fn faulty(fault: Fault) -> Arc<Faulty> {
    Arc::new(Faulty {
        inner: MemoryBackend::new(),
        fault,
        lists: AtomicU64::new(0),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relisting_after_compacted_backs_off() {
    let backend = faulty(Fault::AlwaysCompacted);
    let registry = Registry::new(backend.clone()).unwrap();
    let d = registry.discover("web").await.unwrap();
    // One second of a backend that answers every watch with Compacted: with a back-off from
    // 100 ms (doubling, jittered) that is a handful of listings, not a hot loop of thousands.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lists = backend.lists.load(Ordering::Relaxed);
    drop(d);
    assert!(
        (2..=12).contains(&lists),
        "{lists} listings in one second of Compacted watches"
    );
}

#[tokio::test(start_paused = true)]
async fn discover_returns_a_permanent_error() {
    let backend = faulty(Fault::Forbidden);
    let registry = Registry::new(backend.clone()).unwrap();
    let e = registry.discover("web").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = registry.discover_all().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
}
