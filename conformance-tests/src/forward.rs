//! A backend that forwards every call of the contract to another, with a hook of the test's own
//! around each call: count calls, fail or delay some, or let something else happen in between.
//!
//! ```ignore
//! #[derive(Debug, Default)]
//! struct NoLists;
//! #[async_trait::async_trait]
//! impl conformance_tests::forward::Hook for NoLists {
//!     async fn before(&self, call: &Call<'_>) -> Result<()> {
//!         match call {
//!             Call::List { .. } => Err(Error::unavailable("no lists today")),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//! let backend = Arc::new(Forward::new(Arc::new(MemoryBackend::new()), NoLists));
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::{
    Backend, Bytes, Capabilities, CondOutcome, CondPut, Condition, KeyValue, Lease, LeaseId,
    Listing, Result, Revision, WatchStream,
};

/// The operations of the contract that go through a [`Hook`] (all but `capabilities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`Backend::grant`].
    Grant,
    /// [`Backend::keep_alive`].
    KeepAlive,
    /// [`Backend::revoke`].
    Revoke,
    /// [`Backend::put`].
    Put,
    /// [`Backend::delete`].
    Delete,
    /// [`Backend::put_if`].
    PutIf,
    /// [`Backend::delete_if`].
    DeleteIf,
    /// [`Backend::get`].
    Get,
    /// [`Backend::list`].
    List,
    /// [`Backend::watch`].
    Watch,
    /// [`Backend::put_if_many`].
    PutIfMany,
}

impl Op {
    /// Every operation, in the order of the trait (`Op::ALL[op as usize] == op`).
    pub const ALL: [Op; 11] = [
        Op::Grant,
        Op::KeepAlive,
        Op::Revoke,
        Op::Put,
        Op::Delete,
        Op::PutIf,
        Op::DeleteIf,
        Op::Get,
        Op::List,
        Op::Watch,
        Op::PutIfMany,
    ];
}

/// One call of the contract, with its arguments, as a [`Hook`] sees it.
#[derive(Clone, Copy, Debug)]
pub enum Call<'a> {
    /// [`Backend::grant`].
    Grant {
        /// The requested TTL.
        ttl: Duration,
    },
    /// [`Backend::keep_alive`].
    KeepAlive {
        /// The lease to refresh.
        lease: &'a LeaseId,
    },
    /// [`Backend::revoke`].
    Revoke {
        /// The lease to revoke.
        lease: &'a LeaseId,
    },
    /// [`Backend::put`].
    Put {
        /// The key.
        key: &'a str,
        /// The value.
        value: &'a Bytes,
        /// The lease to attach the key to.
        lease: Option<&'a LeaseId>,
    },
    /// [`Backend::delete`].
    Delete {
        /// The key.
        key: &'a str,
    },
    /// [`Backend::put_if`].
    PutIf {
        /// The key.
        key: &'a str,
        /// The value.
        value: &'a Bytes,
        /// The lease to attach the key to.
        lease: Option<&'a LeaseId>,
        /// What must hold for the write to happen.
        cond: &'a Condition,
    },
    /// [`Backend::delete_if`].
    DeleteIf {
        /// The key.
        key: &'a str,
        /// What must hold for the delete to happen.
        cond: &'a Condition,
    },
    /// [`Backend::get`].
    Get {
        /// The key.
        key: &'a str,
    },
    /// [`Backend::list`].
    List {
        /// The prefix listed.
        prefix: &'a str,
    },
    /// [`Backend::watch`].
    Watch {
        /// The prefix watched.
        prefix: &'a str,
        /// The revision the watch starts after.
        after: Revision,
    },
    /// [`Backend::put_if_many`]: one call for the whole batch (the wrapped backend's own batch,
    /// or its one `put_if` per write, which the hook does not see one by one).
    PutIfMany {
        /// The writes.
        writes: &'a [CondPut],
    },
}

impl<'a> Call<'a> {
    /// The operation.
    pub fn op(&self) -> Op {
        match self {
            Call::Grant { .. } => Op::Grant,
            Call::KeepAlive { .. } => Op::KeepAlive,
            Call::Revoke { .. } => Op::Revoke,
            Call::Put { .. } => Op::Put,
            Call::Delete { .. } => Op::Delete,
            Call::PutIf { .. } => Op::PutIf,
            Call::DeleteIf { .. } => Op::DeleteIf,
            Call::Get { .. } => Op::Get,
            Call::List { .. } => Op::List,
            Call::Watch { .. } => Op::Watch,
            Call::PutIfMany { .. } => Op::PutIfMany,
        }
    }

    /// The key the call names, or its prefix for `list` and `watch`; `None` for the lease calls
    /// and for `put_if_many` (see its writes).
    pub fn key(&self) -> Option<&'a str> {
        match *self {
            Call::Grant { .. }
            | Call::KeepAlive { .. }
            | Call::Revoke { .. }
            | Call::PutIfMany { .. } => None,
            Call::Put { key, .. }
            | Call::Delete { key }
            | Call::PutIf { key, .. }
            | Call::DeleteIf { key, .. }
            | Call::Get { key } => Some(key),
            Call::List { prefix } | Call::Watch { prefix, .. } => Some(prefix),
        }
    }
}

/// What a test adds to the calls a [`Forward`] passes on. Both methods do nothing by default.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Runs before `call` is passed on (it may wait, count, or let something else happen first).
    /// An error is the call's answer: the call is not passed on, and [`after`](Self::after) does
    /// not run.
    async fn before(&self, call: &Call<'_>) -> Result<()> {
        let _ = call;
        Ok(())
    }

    /// Runs when the backend has answered `call`, whatever the answer, before it is returned.
    async fn after(&self, call: &Call<'_>) {
        let _ = call;
    }

    /// Wraps the stream of a watch the backend opened (to end it early, say, as a cut network
    /// would). Returns it unchanged by default.
    fn stream(&self, stream: WatchStream) -> WatchStream {
        stream
    }
}

/// A hook shared with the test that made it (which then reads what it counted).
#[async_trait]
impl<H: Hook> Hook for Arc<H> {
    async fn before(&self, call: &Call<'_>) -> Result<()> {
        (**self).before(call).await
    }

    async fn after(&self, call: &Call<'_>) {
        (**self).after(call).await
    }

    fn stream(&self, stream: WatchStream) -> WatchStream {
        (**self).stream(stream)
    }
}

/// A [`Backend`] that passes every call to `inner`, through `hook`.
pub struct Forward<H> {
    inner: Arc<dyn Backend>,
    hook: H,
}

impl<H: Hook> Forward<H> {
    /// Forwards to `inner` through `hook`.
    pub fn new(inner: Arc<dyn Backend>, hook: H) -> Self {
        Forward { inner, hook }
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The backend the calls go to.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    /// Calls `forward` (which calls `inner`) between the hook's `before` and `after`.
    async fn through<T, F>(&self, call: Call<'_>, forward: impl FnOnce() -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        self.hook.before(&call).await?;
        let answer = forward().await;
        self.hook.after(&call).await;
        answer
    }
}

impl<H> fmt::Debug for Forward<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Forward({:?})", self.inner)
    }
}

#[async_trait]
impl<H: Hook> Backend for Forward<H> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn grant(&self, ttl: Duration) -> Result<Lease> {
        self.through(Call::Grant { ttl }, || self.inner.grant(ttl))
            .await
    }

    async fn keep_alive(&self, lease: &LeaseId) -> Result<Duration> {
        self.through(Call::KeepAlive { lease }, || self.inner.keep_alive(lease))
            .await
    }

    async fn revoke(&self, lease: &LeaseId) -> Result<()> {
        self.through(Call::Revoke { lease }, || self.inner.revoke(lease))
            .await
    }

    async fn put(&self, key: &str, value: Bytes, lease: Option<&LeaseId>) -> Result<Revision> {
        let call = Call::Put {
            key,
            value: &value,
            lease,
        };
        self.through(call, || self.inner.put(key, value.clone(), lease))
            .await
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>> {
        self.through(Call::Delete { key }, || self.inner.delete(key))
            .await
    }

    async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome> {
        let call = Call::PutIf {
            key,
            value: &value,
            lease,
            cond: &cond,
        };
        self.through(call, || {
            self.inner.put_if(key, value.clone(), lease, cond.clone())
        })
        .await
    }

    /// One call through the hook for the whole batch; an error of its `before` is every write's.
    async fn put_if_many(&self, writes: Vec<CondPut>) -> Vec<Result<CondOutcome>> {
        let call = Call::PutIfMany { writes: &writes };
        if let Err(e) = self.hook.before(&call).await {
            return writes.iter().map(|_| Err(e.clone())).collect();
        }
        let answer = self.inner.put_if_many(writes.clone()).await;
        self.hook.after(&call).await;
        answer
    }

    async fn delete_if(&self, key: &str, cond: Condition) -> Result<CondOutcome> {
        let call = Call::DeleteIf { key, cond: &cond };
        self.through(call, || self.inner.delete_if(key, cond.clone()))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.through(Call::Get { key }, || self.inner.get(key))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.through(Call::List { prefix }, || self.inner.list(prefix))
            .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let call = Call::Watch { prefix, after };
        let stream = self
            .through(call, || self.inner.watch(prefix, after))
            .await?;
        Ok(self.hook.stream(stream))
    }
}
