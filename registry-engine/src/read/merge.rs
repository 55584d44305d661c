//! How a directory merges what its sources show: each source's view of a service, keyed by its
//! precedence, and their union with collisions resolved (the highest precedence wins an id).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use registry_core::backend::Revision;

use crate::collections::instances::InstanceMap;

/// The name of the source a [`Discovery`](crate::Discovery) publishes under: the registry's own
/// backend.
pub const BACKEND_SOURCE: &str = "backend";

/// The backend's precedence: a source with a higher one wins an id collision with it.
pub const BACKEND_PRECEDENCE: i32 = 0;

/// Identifies a source in a directory: ordered by precedence, highest first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SourceKey {
    /// Reversed, so that iteration meets the highest precedence first.
    rank: std::cmp::Reverse<i32>,
    pub(crate) name: Arc<str>,
}

impl SourceKey {
    pub(crate) fn new(name: &str, precedence: i32) -> SourceKey {
        SourceKey {
            rank: std::cmp::Reverse(precedence),
            name: Arc::from(name),
        }
    }

    pub(crate) fn backend() -> SourceKey {
        SourceKey::new(BACKEND_SOURCE, BACKEND_PRECEDENCE)
    }

    pub(crate) fn precedence(&self) -> i32 {
        self.rank.0
    }
}

/// What one source last published for one service.
#[derive(Clone, Debug, Default)]
pub(crate) struct SourceView {
    /// Shared with the snapshot when this source is the only one: publishing does not copy it.
    pub(crate) all: InstanceMap,
    pub(crate) revision: Revision,
    pub(crate) stale_since: Option<SystemTime>,
    pub(crate) synced: bool,
}

/// Every source's view of one service (kept under the service's write lock).
#[derive(Clone, Debug, Default)]
pub(crate) struct Sources {
    views: BTreeMap<SourceKey, SourceView>,
    /// Ids already logged as collisions (logged once each).
    logged: std::collections::BTreeSet<String>,
}

/// The union of the sources' views of a service.
pub(crate) struct Merged {
    pub(crate) all: InstanceMap,
    /// The source of each instance, when more than one source contributes (else `sole`).
    pub(crate) origin: Origin,
    pub(crate) revision: Revision,
    pub(crate) stale_since: Option<SystemTime>,
    pub(crate) synced: bool,
    pub(crate) collisions: usize,
}

/// Where a snapshot's instances come from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// All from one source (or none).
    Sole(Arc<str>),
    /// From several: the source of each id (persistent: a view's copy shares it).
    Many(imbl::OrdMap<String, Arc<str>>),
}

impl Origin {
    pub(crate) fn of(&self, id: &str) -> &str {
        match self {
            Origin::Sole(s) => s,
            Origin::Many(m) => m.get(id).map_or(BACKEND_SOURCE, |s| s),
        }
    }
}

impl Sources {
    /// Mutable access to `key`'s view (created empty and unsynced if new).
    pub(crate) fn view(&mut self, key: &SourceKey) -> &mut SourceView {
        self.views.entry(key.clone()).or_default()
    }

    pub(crate) fn remove(&mut self, key: &SourceKey) -> Option<SourceView> {
        self.views.remove(key)
    }

    /// The earliest moment a source of this view went stale, if one is.
    pub(crate) fn stale_since(&self) -> Option<SystemTime> {
        self.views.values().filter_map(|v| v.stale_since).min()
    }

    /// What the sources show now, given `prev` (what they showed before `source`'s view changed
    /// from `old` to its current one). When several sources contributed before and still do, only
    /// the ids `source` changed are merged again: O(changes × sources × log n), not O(n).
    pub(crate) fn merge_after(
        &mut self,
        service: &str,
        source: &SourceKey,
        old: &InstanceMap,
        prev: Merged,
    ) -> Merged {
        let contributing = self.views.values().filter(|v| !v.all.is_empty()).count();
        let Origin::Many(mut origin) = prev.origin else {
            return self.merge(service);
        };
        if contributing <= 1 {
            return self.merge(service);
        }
        let mut all = prev.all;
        let new = self
            .views
            .get(source)
            .map(|v| v.all.clone())
            .unwrap_or_default();
        for (id, _, _) in old.diff(&new) {
            let mut holders = self
                .views
                .iter()
                .filter_map(|(k, v)| v.all.get(id).map(|i| (k, i)));
            match holders.next() {
                None => {
                    all.remove(id);
                    origin.remove(id);
                }
                Some((winner, inst)) => {
                    all.insert(inst.clone());
                    origin.insert(id.to_owned(), winner.name.clone());
                    if let Some((other, _)) = holders.next() {
                        if self.logged.insert(id.to_owned()) {
                            tracing::warn!(service, id = %id, shown = %winner.name, hidden = %other.name, "two sources list the same instance id; the one with the higher precedence is shown");
                        }
                        continue;
                    }
                }
            }
            self.logged.remove(id);
        }
        let listed: usize = self.views.values().map(|v| v.all.len()).sum();
        // Every incremental merge of registry-core's unit tests is checked against a full one.
        #[cfg(test)]
        {
            let full = self.clone().merge(service);
            assert!(full.all == all, "{service}: merged instances");
            for id in all.keys() {
                assert_eq!(
                    full.origin.of(id),
                    Origin::Many(origin.clone()).of(id),
                    "{id}"
                );
            }
            assert_eq!(full.collisions, listed - all.len());
        }
        Merged {
            collisions: listed - all.len(),
            all,
            origin: Origin::Many(origin),
            revision: self
                .views
                .get(&SourceKey::backend())
                .map_or(0, |v| v.revision),
            stale_since: self.stale_since(),
            synced: self.views.values().any(|v| v.synced),
        }
    }

    /// The union, the highest precedence winning each id. One source (the usual case) is its own
    /// view, without a merge.
    pub(crate) fn merge(&mut self, service: &str) -> Merged {
        let stale_since = self.views.values().filter_map(|v| v.stale_since).min();
        let synced = self.views.values().any(|v| v.synced);
        let revision = self
            .views
            .get(&SourceKey::backend())
            .map_or(0, |v| v.revision);
        let contributing: Vec<(&SourceKey, &SourceView)> = self
            .views
            .iter()
            .filter(|(_, v)| !v.all.is_empty())
            .collect();
        if contributing.len() <= 1 {
            let (name, all) = match contributing.first() {
                Some((k, v)) => (k.name.clone(), v.all.clone()),
                None => (Arc::from(BACKEND_SOURCE), InstanceMap::new()),
            };
            return Merged {
                all,
                origin: Origin::Sole(name),
                revision,
                stale_since,
                synced,
                collisions: 0,
            };
        }
        let mut all = InstanceMap::new();
        let mut origin = imbl::OrdMap::new();
        let mut collided = std::collections::BTreeSet::new();
        for (key, view) in &contributing {
            for (id, inst) in view.all.iter() {
                if let Some(winner) = origin.get(id) {
                    collided.insert(id.to_owned());
                    if !self.logged.contains(id) {
                        tracing::warn!(service, id = %id, shown = %winner, hidden = %key.name, "two sources list the same instance id; the one with the higher precedence is shown");
                    }
                    continue;
                }
                all.insert(inst.clone());
                origin.insert(id.to_owned(), key.name.clone());
            }
        }
        // Counted once per hidden duplicate; an id that no longer collides may be logged again.
        let collisions = contributing.iter().map(|(_, v)| v.all.len()).sum::<usize>() - all.len();
        self.logged = collided;
        Merged {
            all,
            origin: Origin::Many(origin),
            revision,
            stale_since,
            synced,
            collisions,
        }
    }
}
