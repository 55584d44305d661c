//! Where a registration stands, and the sending side of that state (counted and logged).

use std::fmt;
use std::sync::Arc;

use registry_core::error::{Error, ErrorKind};
use registry_core::lease::LeaseId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::telemetry::Telemetry;

/// Where a registration stands. Watch it with [`Registration::watch_state`](crate::Registration::watch_state).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RegistrationState {
    /// Not yet written (waiting for the delay, or the first write is being retried).
    Registering {
        /// Why the last attempt failed, if one did.
        last_error: Option<Error>,
    },
    /// Written and kept alive.
    Registered {
        /// When it was (last) written.
        since: Instant,
        /// The lease it is attached to.
        lease: LeaseId,
    },
    /// The lease was lost (keep-alive said `LeaseNotFound`, or the backend was unreachable for
    /// longer than the TTL): the instance is probably not visible to others. A new lease is being
    /// obtained and the registration written again.
    Lost {
        /// When it was lost.
        since: Instant,
        /// The last error seen.
        error: Error,
    },
    /// Another live owner (another process's lease) holds this instance id: it took the id over,
    /// or wrote it while our lease was lost. This registration does not fight it: it is written
    /// again (and becomes `Registered`) only once the other owner's key is gone.
    Conflict {
        /// When the conflict was first seen.
        since: Instant,
        /// The lease of the owner holding the id.
        holder: LeaseId,
    },
    /// Deregistered (explicitly, by drain, or by dropping the handle).
    Deregistered,
}

impl RegistrationState {
    /// A short name: `registering`, `registered`, `lost`, `conflict`, `deregistered`.
    pub fn name(&self) -> &'static str {
        match self {
            RegistrationState::Registering { .. } => "registering",
            RegistrationState::Registered { .. } => "registered",
            RegistrationState::Lost { .. } => "lost",
            RegistrationState::Conflict { .. } => "conflict",
            RegistrationState::Deregistered => "deregistered",
        }
    }

    /// Whether the state is `Registered`.
    pub fn is_registered(&self) -> bool {
        matches!(self, RegistrationState::Registered { .. })
    }
}

impl fmt::Display for RegistrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistrationState::Lost { error, .. } => write!(f, "lost ({error})"),
            RegistrationState::Registering {
                last_error: Some(e),
            } => write!(f, "registering (last attempt: {e})"),
            other => f.write_str(other.name()),
        }
    }
}

/// The error of a call to a keeper that has stopped.
pub(crate) fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the registry's lease keeper has stopped")
}

/// The sending side of a registration's state: every change is counted in the
/// `registry_registrations` gauge and logged with the registration's service and id.
pub(crate) struct StateTx {
    tx: watch::Sender<RegistrationState>,
    tel: Telemetry,
    service: Arc<str>,
    id: Arc<str>,
}

/// States a registration is counted in; `deregistered` is not one (it is gone).
fn counted(state: &RegistrationState) -> Option<&'static str> {
    match state {
        RegistrationState::Deregistered => None,
        s => Some(s.name()),
    }
}

impl StateTx {
    pub(crate) fn new(
        initial: RegistrationState,
        tel: Telemetry,
        service: &str,
        id: &str,
    ) -> (StateTx, watch::Receiver<RegistrationState>) {
        if let Some(name) = counted(&initial) {
            tel.registrations(name, 1.0);
        }
        let (tx, rx) = watch::channel(initial);
        (
            StateTx {
                tx,
                tel,
                service: Arc::from(service),
                id: Arc::from(id),
            },
            rx,
        )
    }

    /// Replaces the state (like [`watch::Sender::send_replace`]), counting and logging a change.
    pub(crate) fn send_replace(&self, next: RegistrationState) -> RegistrationState {
        let (from, to) = (counted(&self.tx.borrow()), counted(&next));
        let prev_name = self.tx.borrow().name();
        let changed = prev_name != next.name();
        if changed {
            if let Some(f) = from {
                self.tel.registrations(f, -1.0);
            }
            if let Some(t) = to {
                self.tel.registrations(t, 1.0);
            }
            let (service, id, state) = (&*self.service, &*self.id, next.name());
            match &next {
                RegistrationState::Registered { lease, .. } => {
                    tracing::info!(service, id, state, from = prev_name, lease = %lease, "registration state");
                }
                RegistrationState::Lost { error, .. } => {
                    tracing::warn!(service, id, state, from = prev_name, error = %error, "registration state");
                }
                RegistrationState::Conflict { holder, .. } => {
                    tracing::warn!(service, id, state, from = prev_name, holder = %holder, "registration state");
                }
                RegistrationState::Registering { last_error } => {
                    tracing::info!(
                        service,
                        id,
                        state,
                        from = prev_name,
                        last_error = last_error.as_ref().map(tracing::field::display),
                        "registration state"
                    );
                }
                RegistrationState::Deregistered => {
                    tracing::info!(service, id, state, from = prev_name, "registration state");
                }
            }
        }
        self.tx.send_replace(next)
    }

    /// The current state.
    pub(crate) fn borrow(&self) -> watch::Ref<'_, RegistrationState> {
        self.tx.borrow()
    }
}

impl Drop for StateTx {
    fn drop(&mut self) {
        // A registration dropped without reaching `Deregistered` (its keeper went away) is no
        // longer counted either.
        if let Some(name) = counted(&self.tx.borrow()) {
            self.tel.registrations(name, -1.0);
        }
    }
}
