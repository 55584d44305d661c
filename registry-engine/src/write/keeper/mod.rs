//! The keeper: the task that owns one lease and the registrations on it. It keeps the lease
//! alive on a schedule no command backlog can delay, writes registrations (each with its own
//! outcome: a value the backend refuses marks that registration only), rewrites everything under a
//! new lease when the old one is lost, and removes registrations by the identity of their handle,
//! never by key alone. [`Registry`](crate::Registry) and [`Registration`](crate::Registration) talk
//! to it through [`Cmd`]s.
//!
//! This file holds the task's state and its loop (commands and the heartbeat tick); [`lease`]
//! the lease's lifecycle (keep-alive, loss, revoke, the schedule of the next tick); [`writes`]
//! the scheduling of registration writes, deletes and read-backs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};

use crate::backoff::Backoff;
use crate::model::instance::Instance;
use crate::model::layout::Layout;
use crate::write::observer::{Observers, RegistrationEvent};
use crate::write::options::LeaseOptions;
use crate::write::state::{RegistrationState, StateTx, closed};
use crate::write::stats::RegistryStats;
use registry_core::backend::Backend;
use registry_core::error::{Error, ErrorKind, Result};
use registry_core::lease::{Lease, LeaseId};

/// What handles and the registry ask of a keeper.
pub(crate) enum Cmd {
    Add {
        key: String,
        token: u64,
        cancelled: Arc<AtomicBool>,
        value: Bytes,
        /// Whether the first write may replace the id held by another live owner.
        takeover: bool,
        /// Whether the caller claimed the key and wrote it itself (see [`claims`]).
        fast: Fast,
        state: StateTx,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    Update {
        key: String,
        token: u64,
        value: Bytes,
        done: oneshot::Sender<Result<()>>,
    },
    Remove {
        key: String,
        token: u64,
        done: Option<oneshot::Sender<Result<()>>>,
    },
    /// Deregister everything and stop.
    Shutdown { done: oneshot::Sender<Result<()>> },
}

/// What the caller of a registration did with its key itself (see [`claims`]).
pub(crate) enum Fast {
    /// Nothing: the keeper writes it.
    No,
    /// It claimed the key but did not write it (the keeper writes it); `late` when its write
    /// timed out, so that it may still land (see [`Member::late`]).
    Claimed { late: bool },
    /// It claimed the key and wrote it on this lease (only if absent), and told the handle so.
    Written(LeaseId),
}

struct Member {
    /// The handle this member belongs to.
    token: u64,
    value: Bytes,
    /// The value the backend last accepted for this key, if any: what an update the backend
    /// refuses for good falls back to. `None` until the first write succeeded: only that first
    /// write may take over the id (see [`Cmd::Add::takeover`]).
    accepted: Option<Bytes>,
    state: StateTx,
    written: bool,
    /// Why the backend refused `value` for good (too large, not allowed). Such a member is
    /// written again only at heartbeats, and blocks no other registration.
    refused: Option<Error>,
    /// The last write timed out: it may have been applied, or may still be applied later.
    uncertain: bool,
    /// The caller's own first write timed out (see [`Fast::Claimed`]): it may land at any time,
    /// even after the keeper's own write succeeded, so a deregistration deletes the key again at
    /// the next heartbeats, as after an uncertain write.
    late: bool,
    takeover: bool,
    /// Another live owner holds the key: we do not write over it (retried at heartbeats, with
    /// "only if absent").
    conflict: Option<LeaseId>,
}

impl Member {
    /// Left out of ordinary writes (retried once per heartbeat only).
    fn parked(&self) -> bool {
        self.refused.is_some() || self.conflict.is_some()
    }
}

/// How one conditional write of a registration ended.
enum Written {
    Done,
    /// Another live owner holds the key.
    Conflict(LeaseId),
    /// The key changed between our read and our write: try again later.
    Raced,
}

/// After the create of a registration's write: its end, or the compare-and-swap still to make.
enum Next {
    Done(Written),
    /// Write over the value found, only if it is still at this revision.
    Swap(registry_core::backend::Revision),
}

/// The most new registrations taken off the command queue and written as one run (see
/// [`Keeper::add_many`]): the writes in flight drain at the end of each run, and every caller of
/// a run waits for the last write of it. A due keep-alive never waits for a run: writes stop
/// starting when it is due (see [`Keeper::try_write_pending`]).
const ADD_BATCH: usize = 4096;

/// Owns one lease and the registrations attached to it.
pub(crate) struct Keeper {
    backend: Arc<dyn Backend>,
    opts: LeaseOptions,
    op_timeout: Duration,
    /// Registration writes in flight at once.
    write_concurrency: usize,
    /// The last [`try_write_pending`](Self::try_write_pending) stopped starting writes because
    /// the keep-alive was due: some registrations are left for right after it.
    unfinished: bool,
    lease: Option<Lease>,
    /// Our earlier leases, newest last (see [`PAST_LEASES`](lease::PAST_LEASES)).
    past_leases: Vec<LeaseId>,
    /// The last key read back at the previous heartbeat (see [`Keeper::verify`]).
    verify_cursor: Option<String>,
    /// The last moment the backend confirmed the lease (grant or keep-alive).
    last_ok: Instant,
    members: BTreeMap<String, Member>,
    /// Every key of `members` that may be unwritten (a superset: pruned by
    /// [`try_write_pending`](Self::try_write_pending)), so that writing one new registration
    /// does not scan all the others: with 100,000 registrations, a scan per write made
    /// registering them one by one quadratic.
    dirty: BTreeSet<String>,
    /// Keys deregistered while the backend was unreachable, still attached to the live lease.
    /// Keys to delete (while attached to our lease) at the next heartbeats, with how many more
    /// heartbeats to do it: one for a delete that failed, more for a key whose last write timed
    /// out (that write may still land after the delete and bring the key back).
    pending_deletes: BTreeMap<String, u32>,
    /// The keys last deregistered (deleted while attached to the current lease), oldest first,
    /// at most [`TOMBSTONES`](writes::TOMBSTONES): read again in turns at heartbeats and deleted
    /// if they came back on our lease, as they do when the backend restarts from an older backup
    /// (see [`Keeper::recheck_removed`]). Forgotten with the lease.
    removed: std::collections::VecDeque<String>,
    /// Where the last turn of [`Keeper::recheck_removed`] stopped.
    removed_cursor: usize,
    backoff: Backoff,
    next_tick: Option<Instant>,
    stats: Arc<RegistryStats>,
    /// Who follows what this keeper does (see [`RegistrationObserver`](crate::RegistrationObserver)).
    observers: Observers,
    /// Where instances live: to tell observers which instance a key holds.
    layout: Layout,
    /// What callers of `register` may write themselves (see [`claims`]).
    claims: Arc<Claims>,
}

mod claims;
mod lease;
mod writes;

pub(crate) use claims::Claims;

impl Keeper {
    /// Whether a registration waits to be written (not parked by a refusal or a conflict).
    fn has_unwritten(&self) -> bool {
        self.dirty.iter().any(|k| {
            self.members
                .get(k)
                .is_some_and(|m| !m.written && !m.parked())
        })
    }

    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        lease: LeaseOptions,
        op_timeout: Duration,
        write_concurrency: usize,
        stats: Arc<RegistryStats>,
        observers: Observers,
        layout: Layout,
    ) -> Keeper {
        Keeper {
            backend,
            opts: lease,
            op_timeout,
            write_concurrency: write_concurrency.max(1),
            unfinished: false,
            lease: None,
            past_leases: Vec::new(),
            verify_cursor: None,
            last_ok: Instant::now(),
            members: BTreeMap::new(),
            dirty: BTreeSet::new(),
            pending_deletes: BTreeMap::new(),
            removed: std::collections::VecDeque::new(),
            removed_cursor: 0,
            backoff: Backoff::new(
                Duration::from_millis(100).min(lease.heartbeat / 2),
                lease.heartbeat.max(Duration::from_millis(200)),
            ),
            next_tick: None,
            stats,
            observers,
            layout,
            claims: Arc::default(),
        }
    }

    /// What this keeper lets the callers of `register` write themselves (see [`claims`]).
    pub(crate) fn claims(&self) -> Arc<Claims> {
        self.claims.clone()
    }

    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Cmd>,
        mut halt: watch::Receiver<bool>,
    ) {
        // Whether the last turn of the loop was a tick: then a waiting command goes first.
        let mut ticked = false;
        loop {
            // Callers write on the lease held now (none while there is none).
            self.claims.publish(self.lease.as_ref().map(|l| &l.id));
            let tick = self.next_tick;
            // A due keep-alive goes before queued commands (a backlog of registrations against a
            // slow backend must not let the lease run out), but ticks and commands take turns
            // when both are ready: on a backend so slow that a heartbeat's work fills the
            // heartbeat, the tick is always due, and preferring it starved every command
            // (deregistrations and shutdowns were never answered). A command's work is bounded
            // (a few calls, each within the operation timeout; long runs of registrations stop
            // for the keep-alive themselves), so the keep-alive waits at most one of them.
            let command_first = ticked && !rx.is_empty();
            tokio::select! {
                biased;
                // The registry may be dropped while handles live on; only a real halt stops us.
                true = async { halt.wait_for(|h| *h).await.is_ok() } => {
                    tracing::info!("registry halted: keep-alives stopped without deregistering");
                    return;
                }
                _ = sleep_until(tick.unwrap_or_else(far_future)), if tick.is_some() && !command_first => {
                    self.tick().await;
                    ticked = true;
                }
                cmd = rx.recv() => { ticked = false; match cmd {
                    Some(Cmd::Shutdown { done }) => {
                        let _ = done.send(self.shutdown().await);
                        self.refuse_queued(&mut rx);
                        return;
                    }
                    Some(add @ Cmd::Add { .. }) => {
                        // Registrations queued behind this one are written together, many in
                        // flight at once. Only a run of consecutive adds is taken: the first
                        // other command ends it and runs right after, so an update or removal
                        // never overtakes the registration it follows.
                        let mut adds = vec![add];
                        let mut next = None;
                        while adds.len() < ADD_BATCH {
                            match rx.try_recv() {
                                Ok(add @ Cmd::Add { .. }) => adds.push(add),
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.add_many(adds).await;
                        match next {
                            Some(Cmd::Shutdown { done }) => {
                                let _ = done.send(self.shutdown().await);
                                self.refuse_queued(&mut rx);
                                return;
                            }
                            Some(cmd) => self.handle(cmd).await,
                            None => {}
                        }
                    }
                    Some(cmd) => self.handle(cmd).await,
                    None => {
                        // Every handle and the registry are gone: nothing is left to keep.
                        if let Some(lease) = self.lease.take()
                            && self.call(self.backend.revoke(&lease.id)).await.is_ok() {
                                self.lease_ended(&lease.id);
                            }
                        return;
                    }
                }},
            }
        }
    }

    /// After a shutdown: the registrations still queued are answered (their handles end
    /// `Deregistered`; one a caller wrote itself went with the revoked lease).
    fn refuse_queued(&self, rx: &mut mpsc::UnboundedReceiver<Cmd>) {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Add { state, done, .. } => {
                    state.send_replace(RegistrationState::Deregistered);
                    if let Some(done) = done {
                        let _ = done.send(Err(closed()));
                    }
                }
                Cmd::Update { done, .. } => {
                    let _ = done.send(Err(closed()));
                }
                // Shut down already.
                Cmd::Shutdown { done } => {
                    let _ = done.send(Ok(()));
                }
                Cmd::Remove { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                }
            }
        }
    }

    /// Tells the observers that `lease` ended (revoked, or reported gone).
    fn lease_ended(&self, lease: &LeaseId) {
        self.observers.tell(|| RegistrationEvent::LeaseEnded {
            lease: lease.clone(),
        });
    }

    /// Tells the observers that the backend accepted `value` for `key` under `lease`.
    fn written(&self, key: &str, value: &Bytes, lease: &LeaseId) {
        if !self.observers.any() {
            return;
        }
        let decoded = self
            .layout
            .parse(key)
            .ok_or_else(|| Error::invalid("not an instance key"))
            .and_then(|(service, id)| Instance::decode(service, id, value));
        match decoded {
            Ok(instance) => self.observers.tell(|| RegistrationEvent::Written {
                lease: lease.clone(),
                key: key.to_owned(),
                instance: Arc::new(instance),
            }),
            Err(e) => {
                tracing::debug!(key, error = %e, "not telling observers of a write that is not an instance")
            }
        }
    }

    async fn call<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match timeout(self.op_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("backend did not answer within {:?}", self.op_timeout),
            )),
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            add @ Cmd::Add { .. } => self.add_many(vec![add]).await,
            Cmd::Update {
                key,
                token,
                value,
                done,
            } => {
                let result = self.update(key, token, value).await;
                let _ = done.send(result);
            }
            // The run loop stops after this; here only for completeness.
            Cmd::Shutdown { done } => {
                let _ = done.send(self.shutdown().await);
            }
            Cmd::Remove { key, token, done } => {
                let result = if self.members.get(&key).is_some_and(|m| m.token == token) {
                    self.remove(&key).await
                } else {
                    // Not this handle's (a rejected duplicate, or already removed).
                    Ok(())
                };
                if let Some(done) = done {
                    let _ = done.send(result);
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
