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

use crate::model::layout::DEFAULT_NAMESPACE;

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
        Telemetry::new(DEFAULT_NAMESPACE)
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

    pub(crate) fn registrations(&self, state: &'static str, delta: f64) {
        metrics::gauge!("registry_registrations", "namespace" => self.namespace.to_string(), "state" => state)
            .increment(delta);
    }
}
