//! Metrics and structured events, through the [`metrics`] facade and [`tracing`]: the library
//! records, the application chooses an exporter (or none: without a recorder installed, recording
//! costs an atomic load).
//!
//! Every metric has a `namespace` label (the registry's key prefix).
//!
//! | metric | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `registry_registrations` | gauge | `state` | registrations of this process by state (`registering`, `registered`, `lost`, `conflict`) |
//! | `registry_lease_grants_total` | counter | | leases granted |
//! | `registry_keep_alives_total` | counter | | keep-alives sent |
//! | `registry_keep_alive_seconds` | histogram | | keep-alive round trips that succeeded |
//! | `registry_lease_losses_total` | counter | | leases declared lost |
//! | `registry_recoveries_total` | counter | | registrations written again under a new lease |
//! | `registry_puts_total`, `registry_deletes_total`, `registry_lease_revokes_total` | counter | | writes |
//! | `registry_refused_writes_total` | counter | | writes the backend refused for good |
//! | `registry_repairs_total` | counter | | registrations found deleted or overwritten, written again |
//! | `registry_conflicts_total` | counter | | instance ids found held by another live owner |
//! | `registry_discovery_lists_total` | counter | | full listings (first and re-lists) |
//! | `registry_discovery_watches_total` | counter | | watch streams opened (first and resumes) |
//! | `registry_discovery_events_total` | counter | | watch events applied |
//! | `registry_discovery_skipped_total` | counter | | values that did not decode, skipped |
//! | `registry_discovery_errors_total` | counter | | backend errors met by discoveries |
//! | `registry_service_stale` | gauge | `service` | 1 while the service's view is stale |
//! | `registry_apply_delay_seconds` | histogram | | watch events: arrival to published in the directory |
//!
//! Handles are looked up at each recording, so a recorder installed after the registry was built
//! is used too. Events: every change of a registration's state is an `info` event (`warn` for
//! `lost` and `conflict`) with `service`, `id`, `state`, `from` and, when registered, `lease`;
//! discovery logs listings, resumptions and staleness with `scope` and `revision`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::registry::RegistrationState;

/// What a registry or discovery labels its metrics with.
#[derive(Clone)]
pub(crate) struct Telemetry {
    namespace: Arc<str>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new(crate::registry::DEFAULT_NAMESPACE)
    }
}

impl Telemetry {
    pub(crate) fn new(namespace: &str) -> Telemetry {
        Telemetry {
            namespace: Arc::from(namespace),
        }
    }

    pub(crate) fn count(&self, name: &'static str) {
        metrics::counter!(name, "namespace" => self.namespace.to_string()).increment(1);
    }

    pub(crate) fn seconds(&self, name: &'static str, d: Duration) {
        metrics::histogram!(name, "namespace" => self.namespace.to_string())
            .record(d.as_secs_f64());
    }

    pub(crate) fn stale(&self, service: &str, stale: bool) {
        metrics::gauge!("registry_service_stale", "namespace" => self.namespace.to_string(), "service" => service.to_owned())
            .set(f64::from(u8::from(stale)));
    }

    fn registrations(&self, state: &'static str, delta: f64) {
        metrics::gauge!("registry_registrations", "namespace" => self.namespace.to_string(), "state" => state)
            .increment(delta);
    }
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
