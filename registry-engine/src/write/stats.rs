//! What a registry did: live counters, and their snapshot.

use std::sync::atomic::AtomicU64;

use registry_core::counters::Bump;

use crate::telemetry::Telemetry;

registry_core::counters! {
    /// Counters of what a registry did, for tests, metrics and the bench.
    pub struct RegistryStats {
        /// Where the counters are also recorded (the `metrics` facade).
        tel: Telemetry,
    } =>
    /// A copy of [`RegistryStats`] at one moment.
    pub struct RegistryCounts {
        /// Leases granted.
        grants,
        /// Keep-alives sent.
        keep_alives,
        /// Instance documents written.
        puts,
        /// Instance keys deleted.
        deletes,
        /// Leases revoked.
        revokes,
        /// Times a lease was declared lost.
        lost,
        /// Times registrations were written again under a new lease after a loss.
        recoveries,
        /// Writes the backend refused for good (a value too large, a key not allowed): each marks
        /// its own registration only.
        refused,
        /// Registrations found deleted or overwritten by someone else while their lease lived, and
        /// written again.
        repairs,
        /// Times a registration found its instance id held by another live owner.
        conflicts,
    }
}

impl RegistryStats {
    /// Counts one in `c` and in the metric `name`.
    pub(crate) fn record(&self, c: &AtomicU64, name: &'static str) {
        c.bump();
        self.tel.count(name);
    }

    /// The current counts.
    pub fn counts(&self) -> RegistryCounts {
        self.snapshot()
    }
}
