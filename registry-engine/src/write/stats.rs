//! What a registry did: live counters, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::Telemetry;

/// Counters of what a registry did, for tests, metrics and the bench.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Where the counters are also recorded (the `metrics` facade).
    pub(crate) tel: Telemetry,
    pub(crate) grants: AtomicU64,
    pub(crate) keep_alives: AtomicU64,
    pub(crate) puts: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) revokes: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) repairs: AtomicU64,
    pub(crate) conflicts: AtomicU64,
}

/// A copy of [`RegistryStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryCounts {
    /// Leases granted.
    pub grants: u64,
    /// Keep-alives sent.
    pub keep_alives: u64,
    /// Instance documents written.
    pub puts: u64,
    /// Instance keys deleted.
    pub deletes: u64,
    /// Leases revoked.
    pub revokes: u64,
    /// Times a lease was declared lost.
    pub lost: u64,
    /// Times registrations were written again under a new lease after a loss.
    pub recoveries: u64,
    /// Writes the backend refused for good (a value too large, a key not allowed): each marks
    /// its own registration only.
    pub refused: u64,
    /// Registrations found deleted or overwritten by someone else while their lease lived, and
    /// written again.
    pub repairs: u64,
    /// Times a registration found its instance id held by another live owner.
    pub conflicts: u64,
}

impl RegistryStats {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one in `c` and in the metric `name`.
    pub(crate) fn record(&self, c: &AtomicU64, name: &'static str) {
        Self::bump(c);
        self.tel.count(name);
    }

    /// The current counts.
    pub fn counts(&self) -> RegistryCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RegistryCounts {
            grants: l(&self.grants),
            keep_alives: l(&self.keep_alives),
            puts: l(&self.puts),
            deletes: l(&self.deletes),
            revokes: l(&self.revokes),
            lost: l(&self.lost),
            recoveries: l(&self.recoveries),
            refused: l(&self.refused),
            repairs: l(&self.repairs),
            conflicts: l(&self.conflicts),
        }
    }
}
