//! A service's slot in the directory: its current snapshot (swapped atomically), its
//! subscribers, what its sources show, and the background builder of its ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::model::instance::Instance;
use crate::read::merge::Sources;
use crate::read::snapshot::ServiceSnapshot;

/// One service of a directory.
pub(crate) struct Slot {
    /// The service name, shared by the changes journalled for it.
    pub(crate) name: Arc<str>,
    pub(crate) current: ArcSwap<ServiceSnapshot>,
    pub(crate) tx: watch::Sender<Arc<ServiceSnapshot>>,
    /// Serialises writers, and holds what each source shows; readers never take it.
    pub(crate) write: Mutex<Sources>,
    /// Whether a background ring builder is running for this service (at most one is).
    pub(crate) building: AtomicBool,
    /// Whether anyone has routed on this service: until then no ring is built in the background.
    pub(crate) routed: AtomicBool,
    /// Set when [`Directory::forget_empty`](crate::Directory::forget_empty) removed this slot
    /// from its directory: a writer that got it just before publishes to a new one instead.
    pub(crate) retired: AtomicBool,
    /// Since when no source has shown an instance of this service (not while stale).
    pub(crate) empty_since: Mutex<Option<std::time::Instant>>,
    /// Rings built by the background builder (for tests).
    #[cfg(test)]
    pub(crate) builds: std::sync::atomic::AtomicUsize,
}

/// How many departed members a lookup may pass over on an older ring before it gives up and builds
/// the current ring itself (beyond the `count` it wants).
const MAX_SKIPPED: usize = 8;

impl Slot {
    /// How long the service has been empty as of `now`, if it is.
    pub(crate) fn empty_for(&self, now: std::time::Instant) -> Option<std::time::Duration> {
        let since = *self.empty_since.lock().unwrap_or_else(|p| p.into_inner());
        since.map(|t| now.saturating_duration_since(t))
    }

    /// Up to `count` distinct routable instances from `key`'s position on the current membership's
    /// ring. If that ring is not built yet, walks the view's [`Base`]: the earlier ring, skipping
    /// members that left (or changed weight), together with the ring of those that joined. Same
    /// answer, without waiting.
    pub(crate) fn route(&self, count: usize, key: &[u8]) -> Vec<Arc<Instance>> {
        if !self.routed.load(Ordering::Relaxed) {
            self.routed.store(true, Ordering::Relaxed);
        }
        let snap = self.current.load();
        if snap.ring.get().is_none() {
            let want = count.min(snap.online.len());
            if let Some((base, ring)) = snap.base.as_ref().and_then(|b| Some((b, b.ring.get()?))) {
                // `count` comes from the caller (a CLI's `-n`): saturate rather than overflow.
                let max_skipped = count.saturating_add(MAX_SKIPPED);
                let found = ring.find_n_overlay(Some(&base.joined), count, key, max_skipped, |m| {
                    snap.routable(&m.id).filter(|now| now.weight == m.weight)
                });
                if let Some(found) = found.filter(|f| f.len() == want) {
                    return found;
                }
            }
        }
        snap.ring()
            .find_n(count, key)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Builds the rings of the newest snapshots until the newest has one; at most one runs per
    /// slot. A publisher that finds a builder running leaves the new snapshot to it.
    pub(crate) fn build_rings(self: Arc<Self>) {
        loop {
            if self
                .building
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return;
            }
            let snap = self.current.load_full();
            snap.ring();
            #[cfg(test)]
            self.builds.fetch_add(1, Ordering::SeqCst);
            self.building.store(false, Ordering::SeqCst);
            // A snapshot published while this one was being built found the flag taken: build it.
            if self.current.load().ring.get().is_some() {
                return;
            }
        }
    }
}
