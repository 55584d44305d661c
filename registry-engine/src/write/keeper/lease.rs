//! The lease's lifecycle: the heartbeat tick (keep-alive, then the work that follows a good one),
//! the loss of a lease, revoking it at shutdown, and when the next tick is due.

use tokio::time::Instant;

use registry_core::error::{Error, ErrorKind, Result};

use super::Keeper;
use crate::write::observer::RegistrationEvent;
use crate::write::state::RegistrationState;

/// How many of our earlier leases we remember: a key still attached to one of them (a lease we
/// presumed lost while it was in fact alive) is ours to overwrite, not a conflict.
const PAST_LEASES: usize = 8;
impl Keeper {
    /// The next keep-alive is due one heartbeat after the backend last confirmed the lease: writes
    /// do not renew a lease, so they must never push the keep-alive back (a steady stream of
    /// registrations would otherwise starve it until the lease expired).
    ///
    /// Without a lease (every registration left is parked: in conflict, or refused for good, so
    /// nothing asked for one), the next tick is one heartbeat from now: it asks for a lease and
    /// tries the parked ones again. It is never in the past: a tick that finds nothing to do
    /// must not be due again at once (that was a busy loop that served no command).
    pub(super) fn schedule_heartbeat(&mut self) {
        self.backoff.reset();
        self.next_tick = if self.members.is_empty() && self.pending_deletes.is_empty() {
            None
        } else if self.lease.is_some() {
            Some(self.last_ok + self.opts.heartbeat)
        } else {
            Some(Instant::now() + self.opts.heartbeat)
        };
    }

    pub(super) fn schedule_retry(&mut self) {
        let mut at = Instant::now() + self.backoff.next_delay();
        // While the lease may still be alive, retry before it would run out.
        if self.lease.is_some() {
            let expiry = self.last_ok + self.opts.ttl;
            if at > expiry {
                at = expiry.max(Instant::now());
            }
        }
        self.next_tick = Some(at);
    }

    pub(super) fn schedule_heartbeat_if_idle(&mut self) {
        if self.members.is_empty() && self.pending_deletes.is_empty() {
            self.next_tick = None;
        }
    }

    pub(super) async fn tick(&mut self) {
        self.next_tick = None;
        let Some(lease) = self.lease.clone() else {
            // A heartbeat without a lease: write what waits, the parked registrations included
            // (an id in conflict goes back to us once its other owner is gone, even after our
            // lease was lost meanwhile).
            let _ = self.write_pending_with(true).await;
            return;
        };
        let sent = Instant::now();
        let ka = self.call(self.backend.keep_alive(&lease.id)).await;
        if ka.is_ok() {
            self.stats
                .tel
                .seconds("registry_keep_alive_seconds", sent.elapsed());
        }
        self.stats
            .record(&self.stats.keep_alives, "registry_keep_alives_total");
        match ka {
            Ok(_) => {
                self.last_ok = Instant::now();
                self.observers.tell(|| RegistrationEvent::KeptAlive {
                    lease: lease.id.clone(),
                });
                // What follows a keep-alive ends when the next one is due, whatever the
                // backend's pace: a slow read-back or delete must not let the lease run out.
                let next_keep_alive = self.last_ok + self.opts.heartbeat;
                self.retry_deletes(&lease.id, next_keep_alive).await;
                if self.members.is_empty()
                    && self.pending_deletes.is_empty()
                    && self.claims.retire()
                {
                    // Only deletes were pending and they are done: the lease has no purpose left
                    // (unless a caller is writing a new registration on it: see `claims`).
                    if self.call(self.backend.revoke(&lease.id)).await.is_ok() {
                        self.stats
                            .record(&self.stats.revokes, "registry_lease_revokes_total");
                        self.lease_ended(&lease.id);
                    }
                    self.lease = None;
                    self.next_tick = None;
                    return;
                }
                self.verify(&lease.id, next_keep_alive).await;
                self.recheck_removed(&lease.id, next_keep_alive).await;
                let _ = self.write_pending_with(true).await;
            }
            Err(e) if e.kind() == ErrorKind::LeaseNotFound => {
                self.lease_ended(&lease.id);
                self.lose(e);
                let _ = self.write_pending().await;
            }
            Err(e) => {
                if self.last_ok.elapsed() >= self.opts.ttl {
                    self.lose(e);
                    let _ = self.write_pending().await;
                } else {
                    tracing::warn!(error = %e, "keep-alive failed; retrying while the lease may still be alive");
                    self.schedule_retry();
                }
            }
        }
    }

    /// The lease is gone (or must be presumed gone): every registration is lost until written again.
    pub(super) fn lose(&mut self, error: Error) {
        self.stats
            .record(&self.stats.lost, "registry_lease_losses_total");
        tracing::warn!(error = %error, members = self.members.len(), "lease lost; registrations will be written again under a new lease");
        if let Some(old) = self.lease.take() {
            // It may still be alive on the server (we could not reach it): keys found on it
            // later are ours to overwrite.
            self.past_leases.push(old.id);
            if self.past_leases.len() > PAST_LEASES {
                self.past_leases.remove(0);
            }
        }
        self.pending_deletes.clear();
        self.removed.clear();
        let since = Instant::now();
        self.dirty.extend(self.members.keys().cloned());
        for (key, m) in &mut self.members {
            m.written = false;
            let was_registered = m.state.borrow().is_registered()
                || matches!(&*m.state.borrow(), RegistrationState::Lost { .. });
            if was_registered {
                tracing::warn!(key = %key, "registration lost");
                m.state.send_replace(RegistrationState::Lost {
                    since,
                    error: error.clone(),
                });
            }
        }
    }

    /// Every member deregistered: the lease revoked (its keys go with it), or, without a lease,
    /// nothing of ours is in the backend.
    pub(super) async fn shutdown(&mut self) -> Result<()> {
        // No caller writes on the lease from now on; what one wrote goes with it.
        self.claims.close();
        for (_, m) in std::mem::take(&mut self.members) {
            m.state.send_replace(RegistrationState::Deregistered);
        }
        self.pending_deletes.clear();
        self.next_tick = None;
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        tracing::info!(lease = %lease.id, "registry shutting down: revoking its lease");
        match self.call(self.backend.revoke(&lease.id)).await {
            Ok(()) => {
                self.stats
                    .record(&self.stats.revokes, "registry_lease_revokes_total");
                self.lease_ended(&lease.id);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::LeaseNotFound => {
                self.lease_ended(&lease.id);
                Ok(())
            }
            Err(e) => Err(e.context("shutdown: revoking the lease")),
        }
    }
}
