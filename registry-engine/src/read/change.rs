//! The vocabulary of differences: [`Change`], a difference in a service's online instances (what
//! [`Changes`](crate::Changes) streams yield, like tower's), and [`ChangeKind`], a difference in
//! everything a service lists (what the directory's journal records).

use std::sync::Arc;

use crate::model::instance::Instance;

/// One difference in a service's online instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An instance appeared, came online, came back from a failed probe, or changed (same id,
    /// new details: replace what you hold).
    Insert(String, Arc<Instance>),
    /// An instance left, went offline or was hidden by a failing probe.
    Remove(String),
}

/// What a [`DirectoryChange`](crate::DirectoryChange) is.
///
/// Instance changes cover every listed instance (online or offline, see
/// [`ServiceSnapshot::all`](crate::ServiceSnapshot::all)), not only the routable ones: an instance going offline, or being hidden
/// by a failing probe, is an [`Update`](ChangeKind::Update). An instance is routed on (it is in
/// [`Directory::get`](crate::Directory::get)) when [`ChangeKind::routable`] says so.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeKind {
    /// An instance was listed for the first time (or again after it left).
    Insert {
        /// The instance as listed.
        instance: Arc<Instance>,
        /// Whether a failing liveness probe hides it from routing.
        hidden: bool,
    },
    /// A listed instance changed: its details (state, addresses, metadata, weight, ...) or whether
    /// a probe hides it. Replaces what the consumer holds for its id.
    Update {
        /// The instance as now listed.
        instance: Arc<Instance>,
        /// Whether a failing liveness probe hides it from routing.
        hidden: bool,
    },
    /// An instance is no longer listed.
    Remove {
        /// The instance as last listed.
        instance: Arc<Instance>,
    },
    /// The backend became unreachable: the service's view is the last good one, kept as is
    /// ([`ServiceSnapshot::is_stale`](crate::ServiceSnapshot::is_stale)).
    Stale,
    /// The view is current again (after [`Stale`](ChangeKind::Stale)).
    Fresh,
}

impl ChangeKind {
    /// The change's name: `insert`, `update`, `remove`, `stale` or `fresh`.
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::Insert { .. } => "insert",
            ChangeKind::Update { .. } => "update",
            ChangeKind::Remove { .. } => "remove",
            ChangeKind::Stale => "stale",
            ChangeKind::Fresh => "fresh",
        }
    }

    /// The instance the change is about (`None` for staleness changes).
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        match self {
            ChangeKind::Insert { instance, .. }
            | ChangeKind::Update { instance, .. }
            | ChangeKind::Remove { instance } => Some(instance),
            ChangeKind::Stale | ChangeKind::Fresh => None,
        }
    }

    /// The instance if, after this change, it is routed on: listed, online and not hidden by a
    /// probe (what [`Directory::get`](crate::Directory::get) returns).
    pub fn routable(&self) -> Option<&Arc<Instance>> {
        match self {
            ChangeKind::Insert { instance, hidden } | ChangeKind::Update { instance, hidden }
                if instance.is_online() && !hidden =>
            {
                Some(instance)
            }
            _ => None,
        }
    }
}
