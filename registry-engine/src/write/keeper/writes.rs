//! Write scheduling: new registrations written in runs (many in flight, stopping when the
//! keep-alive is due), updates, removals by handle, deletes retried while the key is still on our
//! lease, and the read-back that repairs what someone else deleted or overwrote.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use registry_core::backend::{CondOutcome, CondPut, Condition};
use registry_core::error::{Error, ErrorKind, Result};
use registry_core::lease::LeaseId;
use tokio::time::{Instant, timeout, timeout_at};

use super::{Cmd, Fast, Keeper, Member, Next, Written};
use crate::write::observer::RegistrationEvent;
use crate::write::state::{RegistrationState, closed};

/// How a registration's compare-and-swap (after its create found the key) ended: written, or
/// the key changed meanwhile.
fn swapped(outcome: CondOutcome) -> Written {
    match outcome {
        CondOutcome::Applied(_) => Written::Done,
        _ => Written::Raced,
    }
}

/// Batch calls in flight when the backend writes registrations in batches (see
/// [`Keeper::write_shape`]): one being applied, the next on its way.
const BATCHES_IN_FLIGHT: usize = 2;

/// Reads in flight when the keeper checks its own keys at a heartbeat.
const VERIFY_CONCURRENCY: usize = 16;
/// Registrations read back per heartbeat (see [`Keeper::verify`]).
const VERIFY_BATCH: usize = 256;

/// How many deregistered keys a keeper remembers (see [`Keeper::recheck_removed`]).
pub(super) const TOMBSTONES: usize = 256;
/// A full turn of [`Keeper::recheck_removed`] takes this many heartbeats.
const RECHECK_TURN: usize = 8;

/// How many heartbeats a deregistered key whose last write timed out is deleted again (while it
/// is attached to our lease): a write in flight lands within a few request timeouts, far less than
/// this many heartbeats.
const UNCERTAIN_DELETE_HEARTBEATS: u32 = 3;

impl Keeper {
    /// Registers a run of new members: each is checked and inserted, then all are written
    /// together (see [`try_write_pending`](Self::try_write_pending)), and each caller gets the
    /// outcome of its own registration.
    pub(super) async fn add_many(&mut self, adds: Vec<Cmd>) {
        let mut waiting = Vec::with_capacity(adds.len());
        for cmd in adds {
            let Cmd::Add {
                key,
                token,
                cancelled,
                value,
                takeover,
                fast,
                state,
                done,
            } = cmd
            else {
                continue;
            };
            let claimed = !matches!(fast, Fast::No);
            // (One its caller wrote is taken in any case: its handle's removal, queued right
            // behind if it is gone already, deletes it and answers for that.)
            if cancelled.load(Ordering::SeqCst) && !matches!(fast, Fast::Written(_)) {
                // The handle went before its (delayed) first write was applied.
                state.send_replace(RegistrationState::Deregistered);
                if let Some(done) = done {
                    let _ = done.send(Err(closed()));
                }
                if claimed {
                    self.claims.taken(&key, false);
                }
                continue;
            }
            if self.members.contains_key(&key) {
                let e = Error::invalid(format!("{key} is already registered by this registry"));
                tracing::warn!(key = %key, "registration refused: the key is already registered by this registry");
                state.send_replace(RegistrationState::Deregistered);
                if let Some(done) = done {
                    let _ = done.send(Err(e));
                }
                if let Fast::Written(_) = fast {
                    // Never happens: a member's key is not claimed (see `claims`). Were it to,
                    // the member's own value is written again over the caller's.
                    tracing::error!(key = %key, "a registration written by its caller duplicates a member; writing the member again");
                    if let Some(m) = self.members.get_mut(&key) {
                        m.written = false;
                        self.dirty.insert(key.clone());
                    }
                }
                if claimed {
                    self.claims.taken(&key, false);
                }
                continue;
            }
            self.pending_deletes.remove(&key);
            // Written by its caller on the lease we hold: a member already written. On another
            // (lost since), it is written again like any other.
            let written_on = match &fast {
                Fast::Written(l) if self.lease.as_ref().is_some_and(|cur| cur.id == *l) => {
                    Some(l.clone())
                }
                Fast::Written(_) => {
                    state.send_replace(RegistrationState::Lost {
                        since: Instant::now(),
                        error: Error::lease_not_found("the lease it was written on was lost"),
                    });
                    None
                }
                _ => None,
            };
            if written_on.is_none() {
                // The key stays among the deregistered ones (their re-reads skip members): if
                // this registration is refused (another owner holds the id) and dropped, a
                // backup restored later can still bring back our older value of it on our lease
                // (simulator seed 2056746).
                self.dirty.insert(key.clone());
            }
            if let Some(lease) = &written_on {
                self.written(&key, &value, lease);
            }
            self.members.insert(
                key.clone(),
                Member {
                    token,
                    accepted: written_on.as_ref().map(|_| value.clone()),
                    value,
                    state,
                    written: written_on.is_some(),
                    refused: None,
                    uncertain: false,
                    late: matches!(fast, Fast::Claimed { late: true }),
                    takeover,
                    conflict: None,
                },
            );
            if claimed {
                self.claims.taken(&key, true);
            } else {
                self.claims.joined(&key);
            }
            waiting.push((key, token, done));
        }
        if waiting.is_empty() {
            return;
        }
        let mut result = self.write_pending().await;
        while result.is_ok() && self.unfinished {
            // The keep-alive fell due amid a long run of writes: send it (the tick also writes
            // what is left, up to the next keep-alive), then go on.
            self.tick().await;
            result = if self.has_unwritten() {
                self.write_pending().await
            } else {
                Ok(())
            };
        }
        let mut removed = false;
        for (key, token, done) in waiting {
            let mine = match self.members.get(&key) {
                // Gone, or another handle's by now (cannot happen while this runs; be safe).
                Some(m) if m.token != token => Err(closed()),
                None => Err(closed()),
                Some(m) if m.written => Ok(()),
                Some(Member {
                    refused: Some(e), ..
                }) => Err(e.clone()),
                // Only a caller waiting for the result is refused; a delayed registration
                // stays in `Conflict` and is written once the other owner's key is gone.
                Some(Member {
                    conflict: Some(holder),
                    ..
                }) if done.is_some() => Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{key} is registered by another live owner (lease {holder}); \
                         deregister it there, wait for its lease to end, or register with takeover"
                    ),
                )),
                _ => Err(result
                    .as_ref()
                    .err()
                    .cloned()
                    .unwrap_or_else(|| Error::unavailable("registration not written yet"))),
            };
            if let Err(e) = &mine
                && !(e.is_temporary() || e.kind() == ErrorKind::LeaseNotFound)
                && self.members.get(&key).is_some_and(|m| m.token == token)
            {
                // Refused for good: the caller gets the error and no handle.
                if let Some(m) = self.members.remove(&key) {
                    m.state.send_replace(RegistrationState::Deregistered);
                    self.claims.left(&key);
                }
                removed = true;
            }
            if let Some(done) = done {
                let _ = done.send(mine);
            }
        }
        if removed {
            self.schedule_heartbeat_if_idle();
        }
    }

    /// Applies a handle's update: writes the new value now; a value the backend refuses for good
    /// falls back to the last accepted one (written again if it is no longer there).
    pub(super) async fn update(&mut self, key: String, token: u64, value: Bytes) -> Result<()> {
        let lease_before = self.lease.as_ref().map(|l| l.id.clone());
        match self.members.get_mut(&key) {
            Some(m) if m.token == token => {
                // Whether the backend holds this member's accepted value right now.
                let was_written = m.written;
                m.value = value;
                m.written = false;
                self.dirty.insert(key.clone());
                m.refused = None;
                let _ = self.write_pending().await;
                let same_lease = lease_before.is_some()
                    && self.lease.as_ref().map(|l| &l.id) == lease_before.as_ref();
                match self.members.get_mut(&key) {
                    Some(m) if m.written => Ok(()),
                    Some(m) if m.refused.is_some() => {
                        // Refused for good: keep the last value the backend accepted.
                        let e = m.refused.take().unwrap_or_else(closed);
                        match m.accepted.clone() {
                            // Still what the backend holds, under the same lease.
                            Some(v) if was_written && same_lease => {
                                m.value = v;
                                m.written = true;
                            }
                            // Not there (the lease was lost, or it was never written
                            // under this one): write the accepted value again now.
                            Some(v) => {
                                m.value = v;
                                let _ = self.write_pending().await;
                            }
                            None => m.refused = Some(e.clone()),
                        }
                        Err(e)
                    }
                    _ => Err(Error::unavailable(format!(
                        "{key}: update not written yet; it will be at the next attempt"
                    ))),
                }
            }
            _ => Err(Error::new(
                ErrorKind::NotFound,
                format!("{key} is not registered by this handle"),
            )),
        }
    }

    pub(super) async fn remove(&mut self, key: &str) -> Result<()> {
        let Some(member) = self.members.remove(key) else {
            return Ok(());
        };
        let result = self.removed_member(key, member).await;
        // Only now may a caller write the key itself (see `claims`): not while it is deleted.
        self.claims.left(key);
        result
    }

    /// The backend side of [`remove`](Self::remove): `member` is no longer ours to keep.
    async fn removed_member(&mut self, key: &str, member: Member) -> Result<()> {
        member.state.send_replace(RegistrationState::Deregistered);
        tracing::info!(key, "deregistering");
        let Some(lease) = self.lease.clone() else {
            // No lease: nothing of ours is in the backend.
            self.schedule_heartbeat_if_idle();
            return Ok(());
        };
        // (A lease a caller is writing on stays: see `claims`.)
        let result = if self.members.is_empty() && self.claims.retire() {
            // Last one out revokes the lease: deletes the key and stops the heartbeat.
            let r = self.call(self.backend.revoke(&lease.id)).await;
            match &r {
                Ok(()) => {
                    self.stats
                        .record(&self.stats.revokes, "registry_lease_revokes_total");
                    self.lease_ended(&lease.id);
                    self.lease = None;
                    self.pending_deletes.clear();
                    self.removed.clear();
                }
                Err(e) if e.kind() == ErrorKind::LeaseNotFound => {
                    self.lease_ended(&lease.id);
                    self.lease = None;
                    self.pending_deletes.clear();
                    self.removed.clear();
                }
                Err(_) => {
                    self.pending_deletes.insert(key.to_owned(), 1);
                }
            }
            r.or_else(|e| {
                if e.kind() == ErrorKind::LeaseNotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        } else {
            // Delete even if the last write failed: an older value may still be attached.
            match self.delete_if_ours(key, &lease.id).await {
                Ok(()) => {
                    self.remember_removed(key);
                    if member.uncertain || member.late {
                        // Its last write timed out and may land after this delete: delete
                        // again (only while it is on our lease) at the next heartbeats.
                        self.pending_deletes
                            .insert(key.to_owned(), UNCERTAIN_DELETE_HEARTBEATS);
                    }
                    Ok(())
                }
                Err(e) => {
                    self.pending_deletes.insert(
                        key.to_owned(),
                        if member.uncertain || member.late {
                            UNCERTAIN_DELETE_HEARTBEATS
                        } else {
                            1
                        },
                    );
                    Err(e)
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(key, error = %e, "deregistration failed; retrying in the background");
            self.schedule_retry();
        } else {
            self.schedule_heartbeat_if_idle();
        }
        result
    }

    /// Deletes again the keys deregistered while the backend could not be reached, a few at a
    /// time, until `deadline` (the next keep-alive): those not done by then wait for the next
    /// heartbeat. (One at a time and without a deadline, twenty of them against a backend
    /// answering in a second held the keep-alive back until the lease expired.)
    pub(super) async fn retry_deletes(&mut self, lease: &LeaseId, deadline: Instant) {
        use futures::StreamExt;
        let keys: Vec<String> = self.pending_deletes.keys().cloned().collect();
        let this = &*self;
        let mut deletes = futures::stream::iter(keys)
            .map(|key| async move {
                let r = this.delete_if_ours(&key, lease).await;
                (key, r)
            })
            .buffer_unordered(VERIFY_CONCURRENCY);
        let mut done = Vec::new();
        while let Ok(Some((key, r))) = timeout_at(deadline, deletes.next()).await {
            if r.is_ok() {
                done.push(key);
            }
        }
        drop(deletes);
        for key in done {
            self.remember_removed(&key);
            match self.pending_deletes.get_mut(&key) {
                Some(left) if *left > 1 => *left -= 1,
                _ => {
                    self.pending_deletes.remove(&key);
                }
            }
        }
    }

    fn remember_removed(&mut self, key: &str) {
        self.removed.retain(|k| k != key);
        if self.removed.len() == TOMBSTONES {
            self.removed.pop_front();
        }
        self.removed.push_back(key.to_owned());
    }

    /// Reads again a share of the keys last deregistered (all of them every [`RECHECK_TURN`]
    /// heartbeats), and deletes each one found on our lease: a backend restarted from an older
    /// backup brings back keys deleted since, on their old lease, which is ours and lives on, so
    /// they would stay for as long as this process runs. Stops at `deadline` (the next
    /// keep-alive). Costs at most `TOMBSTONES / RECHECK_TURN` reads a heartbeat, and only while
    /// there are such keys; remembers the last [`TOMBSTONES`] only.
    pub(super) async fn recheck_removed(&mut self, lease: &LeaseId, deadline: Instant) {
        use futures::StreamExt;
        if self.removed.is_empty() {
            return;
        }
        let share = self.removed.len().div_ceil(RECHECK_TURN);
        let start = self.removed_cursor % self.removed.len();
        let keys: Vec<String> = self
            .removed
            .iter()
            .cycle()
            .skip(start)
            .take(share)
            .filter(|k| !self.members.contains_key(*k))
            .cloned()
            .collect();
        self.removed_cursor = start + share;
        let backend = &self.backend;
        let op_timeout = self.op_timeout;
        let mut reads = futures::stream::iter(keys)
            .map(|key| async move {
                let r = timeout(op_timeout, backend.get(&key)).await;
                (key, r)
            })
            .buffer_unordered(VERIFY_CONCURRENCY);
        let mut back = Vec::new();
        while let Ok(Some((key, r))) = timeout_at(deadline, reads.next()).await {
            if let Ok(Ok(Some(kv))) = r
                && kv.lease.as_ref() == Some(lease)
                && !self.members.contains_key(&key)
            {
                back.push(key);
            }
        }
        drop(reads);
        for key in back {
            tracing::warn!(key = %key, "a deregistered key is back on our lease (the backend restarted from an older state?); deleting it again");
            self.stats
                .record(&self.stats.repairs, "registry_repairs_total");
            if self.delete_if_ours(&key, lease).await.is_err() {
                self.pending_deletes.entry(key).or_insert(1);
            }
        }
    }

    /// Deletes `key` only while it is still attached to our lease: by the time a deferred delete
    /// runs, another process may have registered the same instance, and that registration is not
    /// ours to remove. One conditional delete, checked on the server: a read followed by a delete
    /// would remove a registration written between the two.
    ///
    /// A key a caller of `register` has claimed is a new registration's, written or about to be:
    /// it is left alone, and that counts as done (see `claims`).
    pub(super) async fn delete_if_ours(&self, key: &str, lease: &LeaseId) -> Result<()> {
        if !self.claims.deleting(key) {
            tracing::debug!(key, "not deleting a key a new registration is writing");
            return Ok(());
        }
        let cond = Condition::Lease(lease.clone());
        let result = self.call(self.backend.delete_if(key, cond)).await;
        self.claims.deleted(key);
        if result?.is_applied() {
            self.stats
                .record(&self.stats.deletes, "registry_deletes_total");
            self.observers.tell(|| RegistrationEvent::Removed {
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    /// Writes one registration under `lease`: only if the key is absent, or still ours (this lease
    /// or one we held before), or a plain value without a lease (written by hand: not a live
    /// registration), or, on the first write, held by another owner when `takeover` was asked or
    /// the stored value is exactly ours (the same instance, restarted before its old lease ended).
    /// A key another live owner holds is never overwritten otherwise: [`Written::Conflict`].
    pub(super) async fn write_member(
        &self,
        key: &str,
        value: Bytes,
        lease: &LeaseId,
    ) -> Result<Written> {
        if !self.members.contains_key(key) {
            return Ok(Written::Raced);
        }
        let absent = self
            .call(
                self.backend
                    .put_if(key, value.clone(), Some(lease), Condition::Absent),
            )
            .await?;
        match self.after_create(key, &value, lease, absent) {
            Next::Done(w) => Ok(w),
            Next::Swap(rev) => {
                let cond = Condition::Revision(rev);
                let swap = self.call(self.backend.put_if(key, value, Some(lease), cond));
                Ok(swapped(swap.await?))
            }
        }
    }

    /// [`write_member`](Self::write_member) for many registrations, with the backend's batch
    /// call ([`Backend::put_if_many`](registry_core::Backend::put_if_many)): one call for all their
    /// creates, then one for the keys that need a compare-and-swap (ours already, or taken over).
    /// Each registration has its own outcome, as alone.
    pub(super) async fn write_members(
        &self,
        keys: Vec<String>,
        lease: &LeaseId,
    ) -> Vec<(String, Bytes, Result<Written>)> {
        let mut out = Vec::with_capacity(keys.len());
        let mut writing = Vec::with_capacity(keys.len());
        for key in keys {
            match self.members.get(&key) {
                Some(m) => writing.push((key, m.value.clone())),
                None => out.push((key, Bytes::new(), Ok(Written::Raced))),
            }
        }
        let creates = writing
            .iter()
            .map(|(k, v)| {
                CondPut::new(k.clone(), v.clone(), Some(lease.clone()), Condition::Absent)
            })
            .collect();
        let outcomes = self.call_many(creates).await;
        let mut swaps = Vec::new();
        for ((key, value), outcome) in writing.into_iter().zip(outcomes) {
            match outcome.map(|o| self.after_create(&key, &value, lease, o)) {
                Ok(Next::Done(w)) => out.push((key, value, Ok(w))),
                Ok(Next::Swap(rev)) => swaps.push((key, value, rev)),
                Err(e) => out.push((key, value, Err(e))),
            }
        }
        if swaps.is_empty() {
            return out;
        }
        let writes = swaps
            .iter()
            .map(|(k, v, rev)| {
                CondPut::new(
                    k.clone(),
                    v.clone(),
                    Some(lease.clone()),
                    Condition::Revision(*rev),
                )
            })
            .collect();
        let outcomes = self.call_many(writes).await;
        for ((key, value, _), outcome) in swaps.into_iter().zip(outcomes) {
            out.push((key, value, outcome.map(swapped)));
        }
        out
    }

    /// How registrations are written: at most this many in one call, and this many calls in
    /// flight. One write per call and [`write_concurrency`](Keeper::write_concurrency) of them,
    /// unless the backend has a batch call ([`Capabilities::batch_writes`] above 1): then batches
    /// of its size, [`BATCHES_IN_FLIGHT`] at once (a write concurrency of 1 writes one batch at a
    /// time).
    ///
    /// [`Capabilities::batch_writes`]: registry_core::Capabilities::batch_writes
    fn write_shape(&self) -> (usize, usize) {
        let batch = self
            .backend
            .capabilities()
            .batch_writes
            .clamp(1, super::ADD_BATCH);
        if batch > 1 {
            (batch, self.write_concurrency.min(BATCHES_IN_FLIGHT))
        } else {
            (1, self.write_concurrency)
        }
    }

    /// One `put_if_many` within the operation timeout: one outcome per write, always (a timeout,
    /// or a backend that answers with another number of outcomes, is every write's error).
    async fn call_many(&self, writes: Vec<CondPut>) -> Vec<Result<CondOutcome>> {
        let n = writes.len();
        match self
            .call(async { Ok(self.backend.put_if_many(writes).await) })
            .await
        {
            Ok(outcomes) if outcomes.len() == n => outcomes,
            Ok(outcomes) => {
                let e = Error::new(
                    ErrorKind::Internal,
                    format!(
                        "the backend answered {} outcomes for a batch of {n} writes",
                        outcomes.len()
                    ),
                );
                vec![Err(e); n]
            }
            Err(e) => vec![Err(e); n],
        }
    }

    /// What comes after the create ("only if absent") of a registration's write: done, a
    /// conflict or a race, or a compare-and-swap at the revision found (see
    /// [`write_member`](Self::write_member) for when we may write over what is there).
    fn after_create(&self, key: &str, value: &Bytes, lease: &LeaseId, absent: CondOutcome) -> Next {
        let (first, takeover) = match self.members.get(key) {
            Some(m) => (m.accepted.is_none(), m.takeover),
            None => return Next::Done(Written::Raced),
        };
        let current = match absent {
            CondOutcome::Applied(_) => return Next::Done(Written::Done),
            CondOutcome::Failed(Some(kv)) => kv,
            // Not applied, and nothing to compare with: try again later.
            _ => return Next::Done(Written::Raced),
        };
        let ours = match &current.lease {
            None => true,
            Some(l) => l == lease || self.past_leases.contains(l),
        };
        if !ours && !(first && (takeover || current.value == *value)) {
            return Next::Done(Written::Conflict(
                current.lease.unwrap_or_else(|| lease.clone()),
            ));
        }
        if !ours {
            tracing::warn!(key, holder = ?current.lease.as_ref().map(|l| l.to_string()), "taking over an instance id another lease holds");
        }
        Next::Swap(current.revision)
    }

    /// Another live owner holds `key`: say so (once) and leave it alone.
    pub(super) fn conflicted(&mut self, key: &str, holder: LeaseId) {
        let Some(m) = self.members.get_mut(key) else {
            return;
        };
        m.written = false;
        self.dirty.insert(key.to_owned());
        if m.conflict.as_ref() == Some(&holder) {
            return;
        }
        self.stats
            .record(&self.stats.conflicts, "registry_conflicts_total");
        tracing::warn!(key, holder = %holder, "another live owner holds this instance id; not writing over it");
        let since = match &*m.state.borrow() {
            RegistrationState::Conflict { since, .. } => *since,
            _ => Instant::now(),
        };
        m.state.send_replace(RegistrationState::Conflict {
            since,
            holder: holder.clone(),
        });
        m.conflict = Some(holder.clone());
        self.observers.tell(|| RegistrationEvent::Yielded {
            key: key.to_owned(),
            holder,
        });
    }

    /// Reads written registrations back (a few reads in flight at a time): one deleted or
    /// overwritten by someone else is marked unwritten (and written again right after), one that
    /// another live owner now holds goes to `Conflict`. A read that fails proves nothing and
    /// changes nothing.
    ///
    /// At most [`VERIFY_BATCH`] per heartbeat, taking turns (in key order, from where the last
    /// heartbeat stopped): a process with many registrations checks each within a few heartbeats
    /// instead of stalling its keep-alives behind thousands of reads.
    ///
    /// It stops at `deadline` (the next keep-alive: a read-back must never hold it back): the
    /// keys whose reads were not back by then are read at the next heartbeat.
    pub(super) async fn verify(&mut self, lease: &LeaseId, deadline: Instant) {
        use futures::StreamExt;
        use std::ops::Bound::{Excluded, Unbounded};
        let written =
            |(k, m): (&String, &Member)| m.written.then(|| (k.clone(), m.accepted.clone()));
        let after = self.verify_cursor.take();
        let mut keys: Vec<(String, Option<Bytes>)> = match &after {
            Some(c) => self
                .members
                .range::<String, _>((Excluded(c), Unbounded))
                .filter_map(written)
                .take(VERIFY_BATCH)
                .collect(),
            None => Vec::new(),
        };
        if keys.len() < VERIFY_BATCH {
            // Wrap around to the start (stopping where this turn began).
            let more: Vec<_> = self
                .members
                .iter()
                .take_while(|(k, _)| after.as_ref().is_none_or(|c| *k <= c))
                .filter_map(written)
                .take(VERIFY_BATCH - keys.len())
                .collect();
            keys.extend(more);
        }
        // The cursor moves past a key only once its read is back (in key order), so the keys
        // cut off by the deadline come first at the next heartbeat.
        self.verify_cursor = after;
        let backend = &self.backend;
        let op_timeout = self.op_timeout;
        let mut pending = futures::stream::iter(keys)
            .map(|(key, accepted)| async move {
                let r = timeout(op_timeout, backend.get(&key)).await;
                (key, accepted, r)
            })
            .buffered(VERIFY_CONCURRENCY);
        let mut reads = Vec::new();
        while let Ok(Some(read)) = timeout_at(deadline, pending.next()).await {
            reads.push(read);
        }
        drop(pending);
        if let Some((key, _, _)) = reads.last() {
            self.verify_cursor = Some(key.clone());
        }
        for (key, accepted, read) in reads {
            let Ok(Ok(current)) = read else { continue };
            if !self.members.get(&key).is_some_and(|m| m.written) {
                continue;
            }
            let problem = match &current {
                None => "deleted by someone else",
                Some(kv) if kv.lease.as_ref() == Some(lease) => {
                    if accepted.as_ref() == Some(&kv.value) {
                        continue;
                    }
                    "overwritten by someone else"
                }
                Some(kv) => match &kv.lease {
                    Some(other) if !self.past_leases.contains(other) => {
                        self.conflicted(&key, other.clone());
                        continue;
                    }
                    _ => "overwritten by someone else",
                },
            };
            self.stats
                .record(&self.stats.repairs, "registry_repairs_total");
            tracing::warn!(key = %key, "registration {problem} while its lease lives; writing it again");
            if let Some(m) = self.members.get_mut(&key) {
                m.written = false;
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Writes every unwritten registration, granting a lease first if there is none. Schedules the
    /// next tick: a heartbeat on success, a jittered retry on failure.
    pub(super) async fn write_pending(&mut self) -> Result<()> {
        self.write_pending_with(false).await
    }

    /// [`write_pending`](Self::write_pending), also retrying the values the backend refused for
    /// good when `include_refused` (once per heartbeat).
    pub(super) async fn write_pending_with(&mut self, include_refused: bool) -> Result<()> {
        let result = self.try_write_pending(include_refused).await;
        match &result {
            Ok(()) => self.schedule_heartbeat(),
            Err(e) => {
                let e = e.clone();
                for (key, m) in &mut self.members {
                    if m.written || m.conflict.is_some() {
                        continue;
                    }
                    let next = match &*m.state.borrow() {
                        RegistrationState::Lost { since, .. } => RegistrationState::Lost {
                            since: *since,
                            error: e.clone(),
                        },
                        _ => RegistrationState::Registering {
                            last_error: Some(e.clone()),
                        },
                    };
                    tracing::debug!(key = %key, error = %e, "registration write failed; retrying");
                    m.state.send_replace(next);
                }
                self.schedule_retry();
            }
        }
        result
    }

    /// Writes the unwritten registrations; those the backend refused for good only when
    /// `include_refused` (at heartbeats), so that they are retried without a hot loop.
    pub(super) async fn try_write_pending(&mut self, include_refused: bool) -> Result<()> {
        self.unfinished = false;
        let members = &self.members;
        self.dirty
            .retain(|k| members.get(k).is_some_and(|m| !m.written));
        if self
            .dirty
            .iter()
            .all(|k| members[k].parked() && !include_refused)
        {
            return Ok(());
        }
        // (A lost registration is unwritten, so it is among the dirty ones.)
        let recovering = self
            .dirty
            .iter()
            .any(|k| matches!(&*members[k].state.borrow(), RegistrationState::Lost { .. }));
        let lease = match self.lease.clone() {
            Some(l) => l,
            None => {
                let l = self.call(self.backend.grant(self.opts.ttl)).await?;
                self.stats
                    .record(&self.stats.grants, "registry_lease_grants_total");
                tracing::debug!(lease = %l.id, ttl = ?l.ttl, "lease granted");
                self.last_ok = Instant::now();
                self.lease = Some(l.clone());
                self.observers.tell(|| RegistrationEvent::LeaseGranted {
                    lease: l.id.clone(),
                    ttl: l.ttl,
                });
                l
            }
        };
        // Writes start only until the keep-alive is due: a long run of registrations against a
        // slow backend must not hold it back (see `run`); the rest is written right after it.
        // (At least one round of writes starts in any case, so that every call makes progress.)
        let keep_alive_due = self.last_ok + self.opts.heartbeat;
        let keys: Vec<String> = self
            .dirty
            .iter()
            .filter(|k| include_refused || !self.members[*k].parked())
            .cloned()
            .collect();
        // Many writes in flight at once (each its own conditional put on the shared lease); the
        // outcomes are applied once they are all back. On a backend with a batch call, the
        // writes go in batches of its size, a couple of batches in flight (one being applied,
        // the next on its way); otherwise one call per write. A temporary failure (the backend
        // is unreachable or slow: the same for every key) stops new writes from starting; those
        // already in flight are awaited, not abandoned.
        let (batch, requests) = self.write_shape();
        let outcomes = {
            use futures::stream::FuturesUnordered;
            use futures::{FutureExt, StreamExt};
            let this = &*self;
            let lease_id = &lease.id;
            // The writes spread over the requests (a few registrations at once go out as
            // several small batches, not one), at most a batch each.
            let take = keys.len().div_ceil(requests).clamp(1, batch);
            let mut queue = keys.into_iter();
            let mut in_flight = FuturesUnordered::new();
            let mut outcomes = Vec::new();
            let mut stop = false;
            let mut unfinished = false;
            let mut started = 0;
            loop {
                while !stop && in_flight.len() < requests {
                    if started >= requests && Instant::now() >= keep_alive_due {
                        unfinished = !queue.as_slice().is_empty();
                        break;
                    }
                    let chunk: Vec<String> = queue.by_ref().take(take).collect();
                    match chunk.len() {
                        0 => break,
                        1 => {
                            let key = chunk.into_iter().next().unwrap_or_default();
                            let value = this.members[&key].value.clone();
                            in_flight.push(
                                async move {
                                    let r = this.write_member(&key, value.clone(), lease_id).await;
                                    vec![(key, value, r)]
                                }
                                .boxed(),
                            );
                        }
                        _ => in_flight.push(this.write_members(chunk, lease_id).boxed()),
                    }
                    started += 1;
                }
                let Some(done) = in_flight.next().await else {
                    break;
                };
                for (key, value, r) in done {
                    if matches!(&r, Err(e) if e.is_temporary() || e.kind() == ErrorKind::LeaseNotFound)
                    {
                        stop = true;
                    }
                    outcomes.push((key, value, r));
                }
            }
            (outcomes, unfinished && !stop)
        };
        let (outcomes, unfinished) = outcomes;
        self.unfinished = unfinished;
        let mut lease_lost = None;
        let mut temporary = None;
        for (key, value, r) in outcomes {
            match r {
                Ok(Written::Raced) => {
                    tracing::debug!(key = %key, "registration changed while being written; retrying at the next heartbeat");
                }
                Ok(Written::Conflict(holder)) => self.conflicted(&key, holder),
                Ok(Written::Done) => {
                    self.stats.record(&self.stats.puts, "registry_puts_total");
                    self.written(&key, &value, &lease.id);
                    if let Some(m) = self.members.get_mut(&key) {
                        if let Some(holder) = m.conflict.take() {
                            tracing::info!(key = %key, holder = %holder, "the other owner's registration is gone; registered again");
                        }
                        m.written = true;
                        m.refused = None;
                        m.uncertain = false;
                        m.accepted = Some(value);
                        if !m.state.borrow().is_registered() {
                            tracing::info!(key = %key, lease = %lease.id, "registered");
                        }
                        m.state.send_replace(RegistrationState::Registered {
                            since: Instant::now(),
                            lease: lease.id.clone(),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::LeaseNotFound => {
                    lease_lost.get_or_insert(e);
                }
                // The backend is unreachable or slow: the same for every key.
                Err(e) if e.is_temporary() => {
                    if e.kind() == ErrorKind::Timeout
                        && let Some(m) = self.members.get_mut(&key)
                    {
                        m.uncertain = true;
                    }
                    temporary.get_or_insert(e);
                }
                // This value is refused for good (too large, not allowed for this key): mark
                // this one registration and go on with the others.
                Err(e) => {
                    self.stats
                        .record(&self.stats.refused, "registry_refused_writes_total");
                    if let Some(m) = self.members.get_mut(&key) {
                        let first = m.refused.is_none();
                        m.refused = Some(e.clone());
                        if let Some(good) = m.accepted.clone().filter(|g| *g != value) {
                            // A refused update: fall back to the value the backend accepted
                            // before (still what it holds unless the lease was lost meanwhile;
                            // then it is written again at the next heartbeat).
                            tracing::warn!(key = %key, error = %e, "the backend refuses this registration's new value; keeping the previous one");
                            m.value = good;
                            continue;
                        }
                        if first {
                            tracing::warn!(key = %key, error = %e, "the backend refuses this registration's value; the others go on");
                        }
                        let next = match &*m.state.borrow() {
                            RegistrationState::Lost { since, .. } => RegistrationState::Lost {
                                since: *since,
                                error: e.clone(),
                            },
                            RegistrationState::Registered { .. } => RegistrationState::Lost {
                                since: Instant::now(),
                                error: e.clone(),
                            },
                            _ => RegistrationState::Registering {
                                last_error: Some(e.clone()),
                            },
                        };
                        m.state.send_replace(next);
                    }
                }
            }
        }
        if let Some(e) = lease_lost {
            self.lose(e.clone());
            return Err(e);
        }
        if let Some(e) = temporary {
            return Err(e);
        }
        if recovering {
            self.stats
                .record(&self.stats.recoveries, "registry_recoveries_total");
            tracing::info!(
                members = self.members.len(),
                "registrations restored under a new lease"
            );
        }
        Ok(())
    }
}
