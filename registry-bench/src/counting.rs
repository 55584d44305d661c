//! A backend decorator counting every contract call, so the benchmarks can report how many backend
//! operations the engine issued, on any backend.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use registry::{
    Backend, Capabilities, CondOutcome, Condition, KeyValue, Lease, LeaseId, Listing, Result,
    Revision, WatchStream,
};

#[derive(Default, Debug)]
pub(crate) struct Counts {
    pub(crate) grant: AtomicU64,
    pub(crate) keep_alive: AtomicU64,
    pub(crate) revoke: AtomicU64,
    pub(crate) put: AtomicU64,
    pub(crate) delete: AtomicU64,
    pub(crate) put_if: AtomicU64,
    pub(crate) delete_if: AtomicU64,
    pub(crate) get: AtomicU64,
    pub(crate) list: AtomicU64,
    pub(crate) watch: AtomicU64,
}

impl Counts {
    pub(crate) fn total(&self) -> u64 {
        [
            &self.grant,
            &self.keep_alive,
            &self.revoke,
            &self.put,
            &self.delete,
            &self.put_if,
            &self.delete_if,
            &self.get,
            &self.list,
            &self.watch,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

pub(crate) struct Counting {
    inner: Arc<dyn Backend>,
    pub(crate) counts: Arc<Counts>,
}

impl Counting {
    pub(crate) fn wrap(inner: Arc<dyn Backend>) -> (Arc<dyn Backend>, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        (
            Arc::new(Counting {
                inner,
                counts: counts.clone(),
            }),
            counts,
        )
    }
}

impl fmt::Debug for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({:?})", self.inner)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[async_trait]
impl Backend for Counting {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn grant(&self, ttl: Duration) -> Result<Lease> {
        bump(&self.counts.grant);
        self.inner.grant(ttl).await
    }
    async fn keep_alive(&self, lease: &LeaseId) -> Result<Duration> {
        bump(&self.counts.keep_alive);
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: &LeaseId) -> Result<()> {
        bump(&self.counts.revoke);
        self.inner.revoke(lease).await
    }
    async fn put(&self, key: &str, value: Bytes, lease: Option<&LeaseId>) -> Result<Revision> {
        bump(&self.counts.put);
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<Option<Revision>> {
        bump(&self.counts.delete);
        self.inner.delete(key).await
    }
    async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome> {
        bump(&self.counts.put_if);
        self.inner.put_if(key, value, lease, cond).await
    }
    async fn delete_if(&self, key: &str, cond: Condition) -> Result<CondOutcome> {
        bump(&self.counts.delete_if);
        self.inner.delete_if(key, cond).await
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        bump(&self.counts.get);
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Listing> {
        bump(&self.counts.list);
        self.inner.list(prefix).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        bump(&self.counts.watch);
        self.inner.watch(prefix, after).await
    }
}
