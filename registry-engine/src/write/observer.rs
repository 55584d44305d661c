//! Following a registry's own registrations: what its keepers did, told to an observer in the
//! order they did it, for add-ons that mirror the registrations somewhere else (a service catalog,
//! an audit log) without knowing how a backend stores them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::lease::LeaseId;

use crate::model::instance::Instance;

/// One thing a registry's keeper did, as an [`RegistrationObserver`] is told of it.
///
/// Each keeper (the shared lease's, and each dedicated lease's) reports its own events in the
/// order they happened; events of different keepers may interleave.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationEvent {
    /// A lease was granted.
    LeaseGranted {
        /// The lease.
        lease: LeaseId,
        /// The TTL the backend granted.
        ttl: Duration,
    },
    /// The backend accepted an instance under `lease`: its first write, an update, a rewrite
    /// under a new lease after a loss, or a repair.
    Written {
        /// The lease the instance is attached to.
        lease: LeaseId,
        /// The instance's backend key.
        key: String,
        /// The instance as written.
        instance: Arc<Instance>,
    },
    /// An instance's key was deleted (deregistered while its lease goes on).
    Removed {
        /// The instance's backend key.
        key: String,
    },
    /// A keep-alive of `lease` succeeded: everything written under it lives on.
    KeptAlive {
        /// The lease.
        lease: LeaseId,
    },
    /// `lease` ended, and every key attached to it with it: revoked by the registry, or reported
    /// gone by the backend (`LeaseNotFound`). (A lease only presumed lost, the backend being
    /// unreachable, is not reported: its registrations are written under a new lease, which the
    /// observer sees as [`Written`](Self::Written) events.)
    LeaseEnded {
        /// The lease.
        lease: LeaseId,
    },
    /// Another live owner holds the instance's key (it took the id over, or held it first): the
    /// registry stopped writing it and no longer holds it, though its lease lives on for its other
    /// registrations. An add-on that mirrors `key` removes its copy until the next
    /// [`Written`](Self::Written) for it (the registry takes the id back once the other owner's
    /// key is gone).
    Yielded {
        /// The instance's backend key.
        key: String,
        /// The lease of the owner that holds it now.
        holder: LeaseId,
    },
}

/// An add-on that follows a registry's own registrations (see
/// [`RegistryBuilder::observer`](crate::RegistryBuilder::observer)).
///
/// [`observe`](Self::observe) is called by the keeper itself, so it must not block or wait: queue
/// the work and do it elsewhere. The registry never fails a registration because of an observer.
#[async_trait]
pub trait RegistrationObserver: Send + Sync + fmt::Debug + 'static {
    /// One event, in the order the keeper made it.
    fn observe(&self, event: &RegistrationEvent);

    /// Waits until the work for the events observed so far is done, or for as long as the
    /// observer allows (it bounds the wait itself). [`Registration::deregister`],
    /// [`Registration::drain`] and [`Registry::shutdown`] call it after the backend confirmed the
    /// removal, so that a process that exits right after them leaves nothing behind in what the
    /// observer mirrors. By default, returns at once.
    ///
    /// [`Registration::deregister`]: crate::Registration::deregister
    /// [`Registration::drain`]: crate::Registration::drain
    /// [`Registry::shutdown`]: crate::Registry::shutdown
    async fn settle(&self) {}
}

/// The observers of one registry (none, usually): what keepers and handles hold.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observers(Option<Arc<dyn RegistrationObserver>>);

impl Observers {
    pub(crate) fn new(observer: Option<Arc<dyn RegistrationObserver>>) -> Observers {
        Observers(observer)
    }

    /// Whether anyone listens (events that cost something to build are built only then).
    pub(crate) fn any(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn tell(&self, event: impl FnOnce() -> RegistrationEvent) {
        if let Some(o) = &self.0 {
            o.observe(&event());
        }
    }

    pub(crate) async fn settle(&self) {
        if let Some(o) = &self.0 {
            o.settle().await;
        }
    }
}
