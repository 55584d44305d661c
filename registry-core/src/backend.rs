//! The backend contract: the only thing a backend implements.
//!
//! A backend is a small, strongly consistent key-value store with leases and a revisioned change
//! feed, scoped to one namespace. etcd, Consul, Redis and the in-memory backend each implement
//! [`Backend`]; the engine (register, discover, directory, routing) runs unchanged over any of them,
//! and the conformance suite checks every promise below against each.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::lease::{Lease, LeaseId};
use crate::watch::{KeyValue, Listing, WatchStream};

pub use crate::revision::Revision;

/// What a backend promises about itself, so that callers and the conformance suite read limits
/// instead of hard-coding them.
///
/// Construct with [`Capabilities::default`] and the `with_*` methods; fields may be added in minor
/// releases.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The shortest TTL the backend grants. A shorter request is raised to it or rejected with
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput).
    pub min_ttl: Duration,
    /// The longest TTL the backend grants; longer requests are rejected with
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput).
    pub max_ttl: Duration,
    /// Granted TTLs are rounded up to a multiple of this.
    pub ttl_granularity: Duration,
    /// How late after its TTL (counted from the grant or the last successful keep-alive) an expired
    /// lease's keys may still be visible, as a fixed duration; see also
    /// [`expiry_slack_ttl_percent`](Self::expiry_slack_ttl_percent) and
    /// [`expiry_slack_for`](Self::expiry_slack_for). A key is never removed before its TTL has run out.
    pub expiry_slack: Duration,
    /// The part of the expiry slack proportional to the TTL, in percent of it (Consul may wait up to
    /// twice the TTL: 100).
    pub expiry_slack_ttl_percent: u32,
    /// The longest key, in bytes, including nothing of the namespace.
    pub max_key_len: usize,
    /// The largest value, in bytes. A value of exactly this size is accepted; one byte more is
    /// rejected with [`InvalidInput`](crate::ErrorKind::InvalidInput).
    pub max_value_len: usize,
    /// Whether a watch delivers every change. When `false` (Consul), several changes to one key made
    /// between two reads of the backend may reach a watcher as only the last of them; the final state
    /// is always delivered and revisions still strictly increase per key.
    pub exact_history: bool,
    /// An upper bound, under normal load, on the time between a change and its delivery to a watcher.
    pub watch_delay: Duration,
    /// The most conditional writes [`Backend::put_if_many`] applies in one request to the server.
    /// 1 (the default) means it has no batch of its own: one [`put_if`](Backend::put_if) per
    /// write. Callers with many writes (the engine's `register_many`) send batches of at most this
    /// many when it is above 1, and single writes, many in flight, otherwise.
    pub batch_writes: usize,
}

impl Default for Capabilities {
    /// Conservative defaults: 1 s minimum TTL, 1 day maximum, 1 ms granularity, 1 s slack, 1 KiB keys,
    /// 1 MiB values, exact history, 1 s watch delay.
    fn default() -> Self {
        Capabilities {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(86_400),
            ttl_granularity: Duration::from_millis(1),
            expiry_slack: Duration::from_secs(1),
            expiry_slack_ttl_percent: 0,
            max_key_len: 1024,
            max_value_len: 1024 * 1024,
            exact_history: true,
            watch_delay: Duration::from_secs(1),
            batch_writes: 1,
        }
    }
}

impl Capabilities {
    /// Sets [`min_ttl`](Self::min_ttl).
    pub fn with_min_ttl(mut self, v: Duration) -> Self {
        self.min_ttl = v;
        self
    }
    /// Sets [`max_ttl`](Self::max_ttl).
    pub fn with_max_ttl(mut self, v: Duration) -> Self {
        self.max_ttl = v;
        self
    }
    /// Sets [`ttl_granularity`](Self::ttl_granularity).
    pub fn with_ttl_granularity(mut self, v: Duration) -> Self {
        self.ttl_granularity = v;
        self
    }
    /// Sets [`expiry_slack`](Self::expiry_slack).
    pub fn with_expiry_slack(mut self, v: Duration) -> Self {
        self.expiry_slack = v;
        self
    }
    /// Sets [`expiry_slack_ttl_percent`](Self::expiry_slack_ttl_percent).
    pub fn with_expiry_slack_ttl_percent(mut self, v: u32) -> Self {
        self.expiry_slack_ttl_percent = v;
        self
    }

    /// How late after `ttl` a lease's keys may still be visible: the fixed slack plus the
    /// TTL-proportional part (saturating at `Duration::MAX` rather than overflowing).
    pub fn expiry_slack_for(&self, ttl: Duration) -> Duration {
        let proportional = ttl.as_nanos() * u128::from(self.expiry_slack_ttl_percent) / 100;
        let proportional = Duration::new(
            u64::try_from(proportional / 1_000_000_000).unwrap_or(u64::MAX),
            (proportional % 1_000_000_000) as u32,
        );
        self.expiry_slack.saturating_add(proportional)
    }

    /// Sets [`max_key_len`](Self::max_key_len).
    pub fn with_max_key_len(mut self, v: usize) -> Self {
        self.max_key_len = v;
        self
    }
    /// Sets [`max_value_len`](Self::max_value_len).
    pub fn with_max_value_len(mut self, v: usize) -> Self {
        self.max_value_len = v;
        self
    }
    /// Sets [`exact_history`](Self::exact_history).
    pub fn with_exact_history(mut self, v: bool) -> Self {
        self.exact_history = v;
        self
    }
    /// Sets [`watch_delay`](Self::watch_delay).
    pub fn with_watch_delay(mut self, v: Duration) -> Self {
        self.watch_delay = v;
        self
    }
    /// Sets [`batch_writes`](Self::batch_writes) (at least 1).
    pub fn with_batch_writes(mut self, v: usize) -> Self {
        self.batch_writes = v.max(1);
        self
    }

    /// [`grant_ttl`](Self::grant_ttl), or the `InvalidInput` error every backend gives for a TTL out
    /// of range.
    pub fn check_ttl(&self, requested: Duration) -> crate::Result<Duration> {
        self.grant_ttl(requested).ok_or_else(|| {
            crate::Error::invalid(format!(
                "TTL {requested:?} is out of range: it must be positive and at most {:?} (shorter than {:?} is raised to it)",
                self.max_ttl, self.min_ttl
            ))
        })
    }

    /// The TTL a backend with these capabilities grants for a request of `requested`: raised to the
    /// minimum and rounded up to the granularity. `None` when it exceeds the maximum or is zero.
    pub fn grant_ttl(&self, requested: Duration) -> Option<Duration> {
        if requested.is_zero() || requested > self.max_ttl {
            return None;
        }
        let ttl = requested.max(self.min_ttl);
        let g = self.ttl_granularity.as_nanos().max(1);
        let n = ttl.as_nanos().div_ceil(g) * g;
        Some(Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX)))
    }
}

/// What must be true of a key for a conditional write ([`Backend::put_if`],
/// [`Backend::delete_if`]) to happen.
///
/// The backend checks the condition and applies the write in one atomic step on the server: no
/// other change can come between them. Variants may be added in minor releases.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Condition {
    /// The key does not exist ("create if absent"). A key whose lease has ended does not exist.
    Absent,
    /// The key exists and its last change is the one at this revision, as reported by
    /// [`KeyValue::revision`] or returned by the write that made it ("compare and swap"). Holds for
    /// no absent key, and never for revision 0.
    Revision(Revision),
    /// The key exists and is attached to this lease ("write if owner"). Holds for no key without a
    /// lease, and for no key once the lease has ended (its keys are gone with it).
    Lease(LeaseId),
}

/// The outcome of a conditional write ([`Backend::put_if`], [`Backend::delete_if`]).
///
/// Variants may be added in minor releases.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a conditional write may not have happened: look at the outcome"]
pub enum CondOutcome {
    /// The condition held and the write was made: the revision of the change. (A
    /// [`delete_if`](Backend::delete_if) with [`Condition::Absent`] that held changed nothing: it
    /// carries a revision at which the key was absent.)
    Applied(Revision),
    /// The condition did not hold and nothing was written: what the key holds now, if anything.
    ///
    /// Most backends read it in the same atomic step as the failed check; Consul, whose
    /// transactions return nothing when they fail, reads it just after, so it may already show a
    /// later change.
    Failed(Option<KeyValue>),
}

impl CondOutcome {
    /// Whether the write was made.
    pub fn is_applied(&self) -> bool {
        matches!(self, CondOutcome::Applied(_))
    }

    /// The revision of the write, if it was made.
    pub fn applied(&self) -> Option<Revision> {
        match self {
            CondOutcome::Applied(r) => Some(*r),
            _ => None,
        }
    }
}

/// One conditional write of [`Backend::put_if_many`]: the arguments of one
/// [`put_if`](Backend::put_if).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CondPut {
    /// The key to write.
    pub key: String,
    /// The value to write.
    pub value: Bytes,
    /// The lease to attach the key to; `None` detaches it from any lease.
    pub lease: Option<LeaseId>,
    /// What must hold for the write to happen.
    pub cond: Condition,
}

impl CondPut {
    /// The write of `value` at `key` on `lease` if `cond` holds.
    pub fn new(
        key: impl Into<String>,
        value: Bytes,
        lease: Option<LeaseId>,
        cond: Condition,
    ) -> CondPut {
        CondPut {
            key: key.into(),
            value,
            lease,
            cond,
        }
    }
}

/// How many writes the default [`Backend::put_if_many`] has in flight at once.
const DEFAULT_BATCH_IN_FLIGHT: usize = 32;

/// The backend contract.
///
/// All keys are relative to the backend's namespace (chosen when the backend is built) and follow the
/// rules in [`crate::key`]; prefixes name directories (`a/b` matches `a/b/x`, not `a/bc`). Every method
/// may fail with [`Unavailable`](crate::ErrorKind::Unavailable) or
/// [`Timeout`](crate::ErrorKind::Timeout) when the backend cannot be reached, and with
/// [`PermissionDenied`](crate::ErrorKind::PermissionDenied) when credentials are refused.
///
/// The trait is object-safe: the facade holds an `Arc<dyn Backend>` chosen at run time.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The backend's declared limits and guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Grants a lease with (at least) `ttl`. The returned [`Lease::ttl`] is the TTL actually granted.
    ///
    /// A zero TTL or one above [`Capabilities::max_ttl`] is
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput); one below [`Capabilities::min_ttl`] is
    /// raised to it or rejected with `InvalidInput`.
    async fn grant(&self, ttl: Duration) -> Result<Lease>;

    /// Refreshes the lease so that it lives another full TTL from now, returning the remaining TTL
    /// (at most the granted TTL).
    ///
    /// A lease that has expired, was revoked, or was never issued by this backend is
    /// [`LeaseNotFound`](crate::ErrorKind::LeaseNotFound); once a lease is reported not found it
    /// stays so, and all its keys are gone (or will be within [`Capabilities::expiry_slack`]).
    async fn keep_alive(&self, lease: &LeaseId) -> Result<Duration>;

    /// Revokes the lease, deleting every key attached to it in one atomic change; watchers receive
    /// one delete event per key. An unknown or already revoked lease is
    /// [`LeaseNotFound`](crate::ErrorKind::LeaseNotFound).
    async fn revoke(&self, lease: &LeaseId) -> Result<()>;

    /// Writes `value` at `key`, attached to `lease` when given (the key is deleted when the lease
    /// ends) and detached from any previous lease otherwise. Returns the revision of the change.
    ///
    /// An invalid key or an oversized value is [`InvalidInput`](crate::ErrorKind::InvalidInput); a
    /// lease that no longer exists is [`LeaseNotFound`](crate::ErrorKind::LeaseNotFound) and nothing
    /// is written.
    async fn put(&self, key: &str, value: Bytes, lease: Option<&LeaseId>) -> Result<Revision>;

    /// Deletes `key`. Returns the revision of the delete, or `None` when there was no such key (no
    /// change is made and watchers see nothing).
    async fn delete(&self, key: &str) -> Result<Option<Revision>>;

    /// Writes `value` at `key` exactly as [`put`](Self::put) does, but only if `cond` holds for the
    /// key: the check and the write are one atomic step on the server, so no other change can come
    /// between them.
    ///
    /// Returns [`CondOutcome::Applied`] with the revision of the change, or
    /// [`CondOutcome::Failed`] with what the key holds now; then nothing is written, no revision is
    /// taken and watchers see nothing. An applied conditional put cannot be told from an
    /// unconditional one: the same watch event, attached to `lease` (or detached from any previous
    /// lease when `lease` is `None`).
    ///
    /// An invalid key or an oversized value is [`InvalidInput`](crate::ErrorKind::InvalidInput),
    /// whatever the condition. The condition is checked before the lease: when it does not hold the
    /// outcome is `Failed` even if `lease` has ended; when it holds and `lease` no longer exists,
    /// the call is [`LeaseNotFound`](crate::ErrorKind::LeaseNotFound) and nothing is written. (A
    /// lease id not even of this backend's form may be refused with `LeaseNotFound` up front.)
    async fn put_if(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome>;

    /// Deletes `key` exactly as [`delete`](Self::delete) does, but only if `cond` holds for the
    /// key, checked and applied in one atomic step on the server.
    ///
    /// Returns [`CondOutcome::Applied`] with the revision of the delete, or
    /// [`CondOutcome::Failed`] with what the key holds now (nothing is deleted and watchers see
    /// nothing). With [`Condition::Absent`] the condition holds exactly when there is nothing to
    /// delete: `Applied` with a revision at which the key was absent, and no change.
    ///
    /// An invalid key is [`InvalidInput`](crate::ErrorKind::InvalidInput).
    async fn delete_if(&self, key: &str, cond: Condition) -> Result<CondOutcome>;

    /// Makes many conditional writes in one call: each exactly as [`put_if`](Self::put_if) makes
    /// it alone, with its own outcome, returned in the order given (one per write, always).
    ///
    /// The writes are independent: each is checked and applied atomically on its own, one that
    /// fails (its condition, its lease, its value) fails alone, and the batch as a whole is not
    /// atomic (others' changes may come between two of its writes; watchers see each applied write
    /// as its own event). The writes of one call may be applied in any order, so a batch should
    /// not write one key twice. When the backend cannot be reached every write gets the error.
    ///
    /// Backends with a batch request of their own ([`Capabilities::batch_writes`] above 1) apply
    /// up to that many writes in one request; larger calls are split. The default makes one
    /// [`put_if`](Self::put_if) per write, a few dozen in flight at once.
    async fn put_if_many(&self, writes: Vec<CondPut>) -> Vec<Result<CondOutcome>> {
        use futures::StreamExt;
        futures::stream::iter(writes)
            .map(|w| async move { self.put_if(&w.key, w.value, w.lease.as_ref(), w.cond).await })
            .buffered(DEFAULT_BATCH_IN_FLIGHT)
            .collect()
            .await
    }

    /// Reads one key; `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads every key under `prefix`, in key order, as one consistent snapshot together with the
    /// revision it reflects.
    async fn list(&self, prefix: &str) -> Result<Listing>;

    /// Streams the changes under `prefix` with a revision strictly greater than `after`.
    ///
    /// Events arrive in revision order with no gaps and no duplicates, including the deletes caused by
    /// lease expiry and revoke (when [`Capabilities::exact_history`] is `false`, intermediate values of
    /// one key may be skipped, never the latest). `after = 0` replays the retained history from the
    /// start; `after = listing.revision` continues a [`list`](Self::list) without missing a change.
    ///
    /// When the backend can no longer serve history back to `after`, the call or the stream fails
    /// with [`Compacted`](crate::ErrorKind::Compacted), carrying the oldest revision still available:
    /// re-list and watch again. After yielding any error the stream ends.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_ttl_rounds_and_raises() {
        let caps = Capabilities::default()
            .with_min_ttl(Duration::from_secs(2))
            .with_ttl_granularity(Duration::from_secs(1))
            .with_max_ttl(Duration::from_secs(100));
        assert_eq!(
            caps.grant_ttl(Duration::from_millis(500)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            caps.grant_ttl(Duration::from_millis(2500)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(caps.grant_ttl(Duration::ZERO), None);
        assert_eq!(caps.grant_ttl(Duration::from_secs(101)), None);
    }

    /// `ttl * percent` overflowed (a panic) for long TTLs before it saturated.
    #[test]
    fn expiry_slack_saturates() {
        let caps = Capabilities::default()
            .with_expiry_slack(Duration::from_secs(2))
            .with_expiry_slack_ttl_percent(100);
        assert_eq!(
            caps.expiry_slack_for(Duration::from_secs(15)),
            Duration::from_secs(17)
        );
        assert_eq!(
            caps.clone()
                .with_expiry_slack_ttl_percent(50)
                .expiry_slack_for(Duration::from_millis(15_001)),
            Duration::from_micros(9_500_500)
        );
        assert_eq!(caps.expiry_slack_for(Duration::MAX), Duration::MAX);
        let caps = caps.with_expiry_slack_ttl_percent(u32::MAX);
        assert_eq!(
            caps.expiry_slack_for(Duration::from_secs(u64::MAX / 2)),
            Duration::MAX
        );
    }
}
