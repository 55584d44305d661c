//! [`MemoryBackend`]: the contract implemented in process, with fault injection.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream;
use registry_core::config::clamp_duration;
use registry_core::counters::Bump;
use registry_core::{
    Backend, Capabilities, CondOutcome, CondPut, Condition, Error, Event, KeyValue, Lease, LeaseId,
    Listing, Result, Revision, WatchStream, key,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::state::{Checkpoint, State, parse_lease};

/// Lease ids are unique in the process, so a lease from one memory backend is never mistaken for
/// one of another.
static NEXT_LEASE: AtomicU64 = AtomicU64::new(1);

/// How many retained events a watch stream copies out per lock acquisition.
const WATCH_BATCH: usize = 512;

/// An in-process backend: complete, strongly consistent, with bounded history and fault injection.
///
/// Clones share one store, so two registries in one test talk through one `MemoryBackend`. Lease
/// expiry runs on tokio time: under `tokio::time::pause()` a test that sleeps past a TTL sees the
/// lease expire instantly. Expired leases are removed by a background task (started with the first
/// lease, on the runtime that granted it) and, in any case, before any operation observes the store.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    caps: Capabilities,
    /// Bumped (under the state lock) on every change and every fault that affects watchers.
    changed: watch::Sender<u64>,
    reaper_wake: Arc<Notify>,
    reaper_started: AtomicBool,
    faults: Faults,
    counts: Counters,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the reaper notice that the store is gone.
        self.reaper_wake.notify_one();
    }
}

struct Faults {
    fail_next: AtomicU64,
    unavailable: AtomicBool,
    frozen: watch::Sender<bool>,
    /// Added to every operation, in microseconds.
    latency_us: AtomicU64,
}

registry_core::counters! {
    /// The calls of each operation, counted as they arrive.
    struct Counters =>
    /// How many calls of each contract operation a [`MemoryBackend`] has received (including calls that
    /// failed by fault injection). Tests use it to prove cost claims, such as one keep-alive per
    /// heartbeat however many services a process registers.
    pub struct OperationCounts {
        /// Calls to `grant`.
        grant,
        /// Calls to `keep_alive`.
        keep_alive,
        /// Calls to `revoke`.
        revoke,
        /// Calls to `put`.
        put,
        /// Calls to `delete`.
        delete,
        /// Calls to `put_if`.
        put_if,
        /// Calls to `delete_if`.
        delete_if,
        /// Calls to `put_if_many` (one per call, whatever the number of writes in it).
        put_if_many,
        /// Calls to `get`.
        get,
        /// Calls to `list`.
        list,
        /// Calls to `watch`.
        watch,
    }
}

impl OperationCounts {
    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.grant
            + self.keep_alive
            + self.revoke
            + self.put
            + self.delete
            + self.put_if
            + self.delete_if
            + self.put_if_many
            + self.get
            + self.list
            + self.watch
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("MemoryBackend")
            .field("revision", &st.revision)
            .field("keys", &st.keys.len())
            .field("leases", &st.leases.len())
            .field("history", &st.history.len())
            .finish()
    }
}

impl MemoryBackend {
    pub(crate) fn from_parts(mut caps: Capabilities, history_limit: usize) -> Self {
        // Whatever capabilities the user declared, a granted TTL stays within MAX_DURATION (about
        // twice it after rounding up to the granularity), so lease deadlines cannot overflow.
        caps.max_ttl = clamp_duration(caps.max_ttl);
        caps.min_ttl = caps.min_ttl.min(caps.max_ttl);
        caps.ttl_granularity = caps.ttl_granularity.min(caps.max_ttl);
        let (changed, _) = watch::channel(0);
        let (frozen, _) = watch::channel(false);
        MemoryBackend {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(history_limit)),
                caps,
                changed,
                reaper_wake: Arc::new(Notify::new()),
                reaper_started: AtomicBool::new(false),
                faults: Faults {
                    fail_next: AtomicU64::new(0),
                    unavailable: AtomicBool::new(false),
                    frozen,
                    latency_us: AtomicU64::new(0),
                },
                counts: Counters::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written in a way that matters
        // more than losing the whole store, so recover the guard.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the store after applying due expiries (so no operation ever sees an expired lease).
    fn lock_fresh(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        if st.expire_due(Instant::now()) {
            self.notify(&st);
        }
        st
    }

    /// Wakes watchers; called with the state lock held so that no change is missed.
    fn notify(&self, _held: &MutexGuard<'_, State>) {
        self.inner.changed.send_modify(|v| *v += 1);
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.lock_fresh().revision
    }

    /// The number of retained history events.
    pub fn history_len(&self) -> usize {
        self.lock().history.len()
    }

    /// Discards history at or below `revision`: a watch from an older revision then fails with
    /// [`Compacted`](registry_core::ErrorKind::Compacted), as etcd does after compaction.
    pub fn compact(&self, revision: Revision) {
        let mut st = self.lock();
        st.compact(revision);
        self.notify(&st);
    }

    /// A copy of the store's keys and leases now, to [`restore`](Self::restore) later.
    pub fn checkpoint(&self) -> Checkpoint {
        self.lock_fresh().checkpoint()
    }

    /// Puts back the keys and leases of `checkpoint`, as a server restored from an older backup
    /// comes back: keys deleted since reappear, keys written since are gone, and every restored
    /// lease gets a whole TTL from now (leases granted since are gone: their keep-alives answer
    /// `LeaseNotFound`). The revision goes on growing; the history is gone, so every watch ends
    /// and a watch from an earlier revision fails with `Compacted` (its reader lists again).
    pub fn restore(&self, checkpoint: &Checkpoint) {
        let mut st = self.lock();
        st.restore(checkpoint, Instant::now());
        self.notify(&st);
        drop(st);
        self.inner.reaper_wake.notify_one();
    }

    /// Makes the next `n` operations (of any kind, including opening a watch) fail with
    /// [`Unavailable`](registry_core::ErrorKind::Unavailable).
    pub fn fail_next(&self, n: u64) {
        self.inner.faults.fail_next.store(n, Ordering::SeqCst);
    }

    /// Simulates an outage: while `down`, every operation fails with `Unavailable` and open watch
    /// streams end with `Unavailable`. Time keeps running in the "server", so leases that are not
    /// kept alive expire meanwhile, exactly as on a real server the client cannot reach.
    pub fn set_unavailable(&self, down: bool) {
        self.inner.faults.unavailable.store(down, Ordering::SeqCst);
        if down {
            self.drop_watches();
        }
    }

    /// Ends every open watch stream with an `Unavailable` error (as a server restart would).
    pub fn drop_watches(&self) {
        let mut st = self.lock();
        st.watch_epoch += 1;
        self.notify(&st);
    }

    /// Freezes the backend: operations and watch deliveries hang until [`unfreeze`](Self::unfreeze)
    /// (as with a server that accepts connections but stops answering). Leases keep expiring.
    pub fn freeze(&self) {
        self.inner.faults.frozen.send_replace(true);
    }

    /// Ends a [`freeze`](Self::freeze); hung operations proceed.
    pub fn unfreeze(&self) {
        self.inner.faults.frozen.send_replace(false);
    }

    /// Makes every operation take `latency` longer (as a distant or loaded server would), so
    /// tests can see what a zero-latency store hides: a backlog of requests, a keep-alive waiting
    /// behind them. `Duration::ZERO` turns it off.
    pub fn set_latency(&self, latency: std::time::Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.inner.faults.latency_us.store(us, Ordering::SeqCst);
    }

    /// How many calls of each operation this store has received.
    pub fn operation_counts(&self) -> OperationCounts {
        self.inner.counts.snapshot()
    }

    /// Counts a call, waits out a freeze, then applies injected failures.
    async fn gate(&self, counter: &AtomicU64) -> Result<()> {
        counter.bump();
        let latency = self.inner.faults.latency_us.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(latency)).await;
        }
        wait_unfrozen(&self.inner).await;
        if self.inner.faults.unavailable.load(Ordering::SeqCst) {
            return Err(Error::unavailable(
                "memory backend is unavailable (fault injection)",
            ));
        }
        let injected = self
            .inner
            .faults
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            return Err(Error::unavailable(
                "memory backend failed this operation (fault injection)",
            ));
        }
        Ok(())
    }

    fn ensure_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::SeqCst) {
            return;
        }
        // Outside a tokio runtime expiry still happens, lazily, before every operation.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&self.inner);
            let wake = self.inner.reaper_wake.clone();
            rt.spawn(reaper(weak, wake));
        } else {
            self.inner.reaper_started.store(false, Ordering::SeqCst);
        }
    }

    fn lease_id(id: &LeaseId) -> Result<u64> {
        parse_lease(id).ok_or_else(|| {
            Error::lease_not_found(format!("{id} is not a lease of the memory backend"))
        })
    }
}

async fn wait_unfrozen(inner: &Inner) {
    let mut rx = inner.faults.frozen.subscribe();
    // The sender lives in `inner`, so `wait_for` can only end by the predicate.
    let _ = rx.wait_for(|frozen| !*frozen).await;
}

/// Removes expired leases at their deadline, so watchers see the deletes on time even when no one
/// touches the store.
async fn reaper(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let backend = MemoryBackend { inner };
            let st = backend.lock_fresh();
            st.next_deadline()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.caps.clone()
    }

    async fn grant(&self, ttl: Duration) -> Result<Lease> {
        self.gate(&self.inner.counts.grant).await?;
        let caps = &self.inner.caps;
        let granted = caps.check_ttl(ttl)?;
        let id = NEXT_LEASE.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.lock_fresh();
            st.grant(id, granted, Instant::now());
        }
        self.ensure_reaper();
        self.inner.reaper_wake.notify_one();
        Ok(Lease {
            id: LeaseId::new(id.to_string()),
            ttl: granted,
        })
    }

    async fn keep_alive(&self, lease: &LeaseId) -> Result<Duration> {
        self.gate(&self.inner.counts.keep_alive).await?;
        let id = Self::lease_id(lease)?;
        let now = Instant::now();
        self.lock_fresh().keep_alive(id, now)
    }

    async fn revoke(&self, lease: &LeaseId) -> Result<()> {
        self.gate(&self.inner.counts.revoke).await?;
        let id = Self::lease_id(lease)?;
        let mut st = self.lock_fresh();
        st.revoke(id)?;
        self.notify(&st);
        Ok(())
    }

    async fn put(&self, k: &str, value: Bytes, lease: Option<&LeaseId>) -> Result<Revision> {
        self.gate(&self.inner.counts.put).await?;
        key::validate_put(k, &value, &self.inner.caps)?;
        let lease = lease.map(Self::lease_id).transpose()?;
        let mut st = self.lock_fresh();
        let rev = st.put(k, value, lease)?;
        self.notify(&st);
        Ok(rev)
    }

    async fn delete(&self, k: &str) -> Result<Option<Revision>> {
        self.gate(&self.inner.counts.delete).await?;
        key::validate_key(k, &self.inner.caps)?;
        let mut st = self.lock_fresh();
        let rev = st.delete(k);
        if rev.is_some() {
            self.notify(&st);
        }
        Ok(rev)
    }

    async fn put_if(
        &self,
        k: &str,
        value: Bytes,
        lease: Option<&LeaseId>,
        cond: Condition,
    ) -> Result<CondOutcome> {
        self.gate(&self.inner.counts.put_if).await?;
        key::validate_put(k, &value, &self.inner.caps)?;
        let lease = lease.map(Self::lease_id).transpose()?;
        let mut st = self.lock_fresh();
        let outcome = st.put_if(k, value, lease, &cond)?;
        if outcome.is_applied() {
            self.notify(&st);
        }
        Ok(outcome)
    }

    /// Applies up to [`Capabilities::batch_writes`] writes under one hold of the store's lock and
    /// wakes the watchers once for all of them; a larger call is split into such batches.
    async fn put_if_many(&self, writes: Vec<CondPut>) -> Vec<Result<CondOutcome>> {
        let mut out = Vec::with_capacity(writes.len());
        let batch = self.inner.caps.batch_writes.max(1);
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let chunk: Vec<CondPut> = writes.by_ref().take(batch).collect();
            if let Err(e) = self.gate(&self.inner.counts.put_if_many).await {
                out.extend(chunk.iter().map(|_| Err(e.clone())));
                continue;
            }
            // Checked before the lock, as `put_if` does: the lock is held for the writes only.
            let checked: Vec<Result<(CondPut, Option<u64>)>> = chunk
                .into_iter()
                .map(|w| {
                    key::validate_put(&w.key, &w.value, &self.inner.caps)?;
                    let lease = w.lease.as_ref().map(Self::lease_id).transpose()?;
                    Ok((w, lease))
                })
                .collect();
            let mut st = self.lock_fresh();
            let mut applied = false;
            for w in checked {
                out.push(w.and_then(|(w, lease)| {
                    let outcome = st.put_if(&w.key, w.value, lease, &w.cond)?;
                    applied |= outcome.is_applied();
                    Ok(outcome)
                }));
            }
            if applied {
                self.notify(&st);
            }
        }
        out
    }

    async fn delete_if(&self, k: &str, cond: Condition) -> Result<CondOutcome> {
        self.gate(&self.inner.counts.delete_if).await?;
        key::validate_key(k, &self.inner.caps)?;
        let mut st = self.lock_fresh();
        let before = st.revision;
        let outcome = st.delete_if(k, &cond);
        if st.revision != before {
            self.notify(&st);
        }
        Ok(outcome)
    }

    async fn get(&self, k: &str) -> Result<Option<KeyValue>> {
        self.gate(&self.inner.counts.get).await?;
        key::validate_key(k, &self.inner.caps)?;
        Ok(self.lock_fresh().get(k))
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.gate(&self.inner.counts.list).await?;
        key::validate_prefix(prefix, &self.inner.caps)?;
        Ok(self.lock_fresh().list(prefix))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.gate(&self.inner.counts.watch).await?;
        key::validate_prefix(prefix, &self.inner.caps)?;
        let epoch = self.lock().watch_epoch;
        let cursor = Cursor {
            backend: self.clone(),
            prefix: key::normalize_prefix(prefix).into_owned(),
            after,
            epoch,
            buffer: VecDeque::new(),
            rx: self.inner.changed.subscribe(),
            done: false,
        };
        Ok(Box::pin(stream::unfold(cursor, Cursor::next)))
    }
}

/// The state of one watch stream: a position in the shared history, so a slow reader costs no
/// memory and loses nothing until history is compacted past it.
struct Cursor {
    backend: MemoryBackend,
    prefix: String,
    after: Revision,
    epoch: u64,
    buffer: VecDeque<Event>,
    rx: watch::Receiver<u64>,
    done: bool,
}

impl Cursor {
    async fn next(mut self) -> Option<(Result<Event>, Cursor)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(ev) = self.buffer.pop_front() {
                return Some((Ok(ev), self));
            }
            wait_unfrozen(&self.backend.inner).await;
            let failure = {
                let backend = self.backend.clone();
                let st = backend.lock_fresh();
                if st.watch_epoch != self.epoch
                    || backend.inner.faults.unavailable.load(Ordering::SeqCst)
                {
                    Some(Error::unavailable(
                        "memory backend dropped the watch stream",
                    ))
                } else {
                    // Mark the current notification as seen before reading, under the lock that
                    // every change is made under: a change after this point wakes `changed()`.
                    self.rx.mark_unchanged();
                    match st.read_history(&self.prefix, self.after, WATCH_BATCH, &mut self.buffer) {
                        Ok(cursor) => {
                            self.after = cursor;
                            None
                        }
                        Err(oldest) => Some(Error::compacted(oldest)),
                    }
                }
            };
            if let Some(err) = failure {
                self.done = true;
                return Some((Err(err), self));
            }
            if self.buffer.is_empty() && self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use registry_core::ErrorKind;
    use registry_core::config::MAX_DURATION;

    use super::*;

    /// With capabilities declaring no TTL bound, `grant(Duration::MAX)` panicked in `now + ttl`;
    /// so did any grant once the minimum TTL was `Duration::MAX`.
    #[tokio::test]
    async fn unbounded_declared_ttls_never_overflow_a_deadline() {
        let caps = Capabilities::default()
            .with_max_ttl(Duration::MAX)
            .with_ttl_granularity(Duration::MAX);
        let b = MemoryBackend::from_parts(caps, 16);
        assert_eq!(b.capabilities().max_ttl, MAX_DURATION);
        let e = b.grant(Duration::MAX).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let lease = b.grant(MAX_DURATION).await.unwrap();
        assert!(lease.ttl >= MAX_DURATION);
        b.keep_alive(&lease.id).await.unwrap();
        b.put("k", Bytes::new(), Some(&lease.id)).await.unwrap();

        let caps = MemoryBackend::new()
            .capabilities()
            .with_min_ttl(Duration::MAX);
        let b = MemoryBackend::from_parts(caps, 16);
        let lease = b.grant(Duration::from_secs(1)).await.unwrap();
        assert_eq!(lease.ttl, b.capabilities().max_ttl);
        b.keep_alive(&lease.id).await.unwrap();
    }
}
