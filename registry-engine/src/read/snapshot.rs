//! A service's snapshot: the immutable view of one service at one revision that readers load
//! without a lock, and how the next one is made from it (O(log n) per changed instance).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use registry_core::backend::Revision;

use crate::collections::instances::{InstanceMap, Instances};
use crate::collections::ring::{Ring, RingKind};
use crate::model::instance::Instance;
use crate::read::change::ChangeKind;
use crate::read::merge::{BACKEND_SOURCE, Merged, Origin};

/// The ids a liveness probe hides (persistent: a view's copy shares it).
pub(crate) type Hidden = imbl::OrdSet<String>;

/// An immutable view of one service at one revision.
#[derive(Clone)]
pub struct ServiceSnapshot {
    pub(crate) service: String,
    pub(crate) all: InstanceMap,
    pub(crate) hidden: Hidden,
    pub(crate) online: Instances,
    /// Built from `online` after the snapshot is published, so that publishing never waits for it;
    /// shared by snapshots of the same membership (a stale flag changes nothing to route by).
    pub(crate) ring: Arc<OnceLock<Ring>>,
    /// The newest built ring at publication, and a ring of the members that joined since: walked
    /// together, skipping departed members, while `ring` is not built yet.
    pub(crate) base: Option<Arc<Base>>,
    pub(crate) vnodes: u32,
    pub(crate) ring_kind: RingKind,
    pub(crate) revision: Revision,
    pub(crate) stale: bool,
    /// When the view went stale (`Some` exactly when `stale`).
    pub(crate) stale_since: Option<SystemTime>,
    pub(crate) synced: bool,
    /// Which source each instance comes from.
    pub(crate) origin: Origin,
    /// Instances not shown because a source of higher precedence lists the same id.
    pub(crate) collisions: usize,
}

impl fmt::Debug for ServiceSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceSnapshot")
            .field("service", &self.service)
            .field(
                "online",
                &self.online.iter().map(|i| &i.id).collect::<Vec<_>>(),
            )
            .field("all", &self.all.len())
            .field("hidden", &self.hidden)
            .field("revision", &self.revision)
            .field("stale", &self.stale)
            .field("synced", &self.synced)
            .finish()
    }
}

impl ServiceSnapshot {
    pub(crate) fn empty(service: &str, vnodes: u32, ring_kind: RingKind) -> Self {
        ServiceSnapshot {
            service: service.to_owned(),
            all: InstanceMap::new(),
            hidden: Hidden::new(),
            online: Instances::new(),
            ring: Arc::default(),
            base: None,
            vnodes,
            ring_kind,
            revision: 0,
            stale: false,
            stale_since: None,
            synced: false,
            origin: Origin::Sole(Arc::from(BACKEND_SOURCE)),
            collisions: 0,
        }
    }

    /// What this snapshot merged from its sources, to rebuild it with another hidden set.
    pub(crate) fn merged(&self) -> Merged {
        Merged {
            all: self.all.clone(),
            origin: self.origin.clone(),
            revision: self.revision,
            stale_since: self.stale_since,
            synced: self.synced,
            collisions: self.collisions,
        }
    }

    /// The view after `cur` with what the sources now show (`merged`) and `hidden`, and the
    /// changes from `cur` to it. Costs O(log n) per changed instance, not O(n): the maps share
    /// their untouched nodes, so comparing them visits only what differs, and the online list is
    /// patched, not rebuilt.
    ///
    /// `changed`, if given, holds every id whose entry differs between `cur.all` and `merged.all`
    /// (it may hold more): then the maps are not compared to find them, which at 100,000
    /// instances was a fifth of a change's cost (the comparison walks the nodes beside the
    /// changed path). The hidden sets are compared either way.
    pub(crate) fn next(
        cur: &ServiceSnapshot,
        merged: Merged,
        hidden: Hidden,
        changed: Option<&Touched>,
    ) -> (Self, Vec<ChangeKind>) {
        let Merged {
            all,
            origin,
            revision,
            stale_since,
            synced,
            collisions,
        } = merged;
        let ids = match changed {
            Some(changed) => {
                let mut ids = touched((&cur.all, &cur.hidden), (&cur.all, &hidden));
                ids.extend(changed.keys().map(String::as_str));
                // Every update of registry-core's unit tests checks the hint against the diff,
                // and every update of a debug build (the workspace's tests, the discovery's
                // hints included) its entries against the maps.
                #[cfg(test)]
                {
                    let full = touched((&cur.all, &cur.hidden), (&all, &hidden));
                    assert!(full.is_subset(&ids), "a change hint misses ids");
                }
                if cfg!(debug_assertions) {
                    for (id, (old, new)) in changed {
                        assert!(same_entry(old.as_ref(), cur.all.get(id)), "hint's old {id}");
                        assert!(same_entry(new.as_ref(), all.get(id)), "hint's new {id}");
                    }
                }
                ids
            }
            None => touched((&cur.all, &cur.hidden), (&all, &hidden)),
        };
        let mut changes = Vec::new();
        let mut online_changes: Vec<(&str, Option<&Arc<Instance>>)> = Vec::new();
        // How many more instances are routed after than before.
        let mut online_delta = 0isize;
        for &id in &ids {
            // The hint carries both entries: at 100,000 instances each look-up in a map is a
            // descent through memory that no other change has touched lately.
            let (old, new) = match changed.and_then(|c| c.get(id)) {
                Some((old, new)) => (old.as_ref(), new.as_ref()),
                None => (cur.all.get(id), all.get(id)),
            };
            let (was_hidden, is_hidden) = (cur.hidden.contains(id), hidden.contains(id));
            // A hint may name ids that did not change: they change nothing (not even the online
            // list's version, which would cost its ring).
            if same_entry(old, new) && was_hidden == is_hidden {
                continue;
            }
            match (old, new) {
                (Some(old), None) => changes.push(ChangeKind::Remove {
                    instance: old.clone(),
                }),
                (None, Some(new)) => changes.push(ChangeKind::Insert {
                    instance: new.clone(),
                    hidden: is_hidden,
                }),
                (Some(old), Some(new)) => {
                    if !(Arc::ptr_eq(old, new) || old == new) || was_hidden != is_hidden {
                        changes.push(ChangeKind::Update {
                            instance: new.clone(),
                            hidden: is_hidden,
                        });
                    }
                }
                (None, None) => {}
            }
            let was_routed = old.is_some_and(|o| o.is_online() && !was_hidden);
            let routed = new.filter(|n| n.is_online() && !is_hidden);
            if was_routed || routed.is_some() {
                online_changes.push((id, routed));
                online_delta += isize::from(routed.is_some()) - isize::from(was_routed);
            }
        }
        match (cur.stale, stale_since.is_some()) {
            (false, true) => changes.push(ChangeKind::Stale),
            (true, false) => changes.push(ChangeKind::Fresh),
            _ => {}
        }
        let online = if hidden.is_empty()
            && cur.online.len().checked_add_signed(online_delta) == Some(all.len())
        {
            // Every listed instance is online and visible (the online list holds a subset of the
            // map's entries, as many as it has): the online list is the map itself, so a change
            // copies one tree path instead of two.
            Instances::sharing(&all)
        } else if online_changes.is_empty() {
            cur.online.clone()
        } else if cur.online.is_empty() {
            // Only additions, in id order (`ids` is sorted): built at once, not one by one.
            Instances::from_sorted(
                online_changes
                    .iter()
                    .filter_map(|(_, r)| r.cloned())
                    .collect(),
            )
        } else {
            cur.online.with_changes(online_changes.iter().copied())
        };
        // Every update of registry-core's unit tests checks the online list against the map.
        #[cfg(test)]
        if all.len() <= 5000 {
            let routable: Vec<&Arc<Instance>> = all
                .values()
                .filter(|i| i.is_online() && !hidden.contains(&i.id))
                .collect();
            assert!(
                online.iter().eq(routable.iter().copied()),
                "the online list is the map's online, visible instances"
            );
        }
        // The same routable members (same versions): the ring and its base stay valid. A gRPC
        // ring's members are the endpoints: an offline instance's address counts too.
        let same_members = match cur.ring_kind {
            RingKind::MultiProbe => {
                online_changes.is_empty() || Instances::ptr_eq(&online, &cur.online)
            }
            RingKind::GrpcRingHash => changes
                .iter()
                .all(|c| matches!(c, ChangeKind::Stale | ChangeKind::Fresh)),
        };
        let (ring, base) = if same_members {
            (cur.ring.clone(), cur.base.clone())
        } else {
            (Arc::default(), Base::after(cur, &online_changes))
        };
        let next = ServiceSnapshot {
            service: cur.service.clone(),
            all,
            hidden,
            online,
            ring,
            base,
            vnodes: cur.vnodes,
            ring_kind: cur.ring_kind,
            revision,
            stale: stale_since.is_some(),
            stale_since,
            synced,
            origin,
            collisions,
        };
        (next, changes)
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Online instances not hidden by a failing probe, sorted by id: what routing uses.
    pub fn online(&self) -> &Instances {
        &self.online
    }

    /// Every listed instance, online or offline, by id.
    pub fn all(&self) -> &InstanceMap {
        &self.all
    }

    /// The name of the source `id` comes from ([`BACKEND_SOURCE`] for the registry's own
    /// backend), or `None` if it is not listed. See [`Directory::source`](crate::Directory::source).
    pub fn source_of(&self, id: &str) -> Option<&str> {
        self.all.contains_key(id).then(|| self.origin.of(id))
    }

    /// How many instances are not shown because a source of higher precedence lists the same id.
    pub fn collisions(&self) -> usize {
        self.collisions
    }

    /// Whether a liveness probe currently hides `id`.
    pub fn is_hidden(&self, id: &str) -> bool {
        self.hidden.contains(id)
    }

    /// The routing ring over [`online`](Self::online) (built here, once, if the directory's
    /// background builder has not built it yet), of the directory's
    /// [`RingKind`](crate::DirectoryBuilder::ring_kind): on a gRPC ring, over the healthy
    /// [`endpoints`](Self::endpoints).
    pub fn ring(&self) -> &Ring {
        self.ring.get_or_init(|| match self.ring_kind {
            RingKind::MultiProbe => Ring::with_vnodes(self.online.iter().cloned(), self.vnodes),
            RingKind::GrpcRingHash => Ring::grpc(self.grpc_members()),
        })
    }

    /// `id`'s current instance if it is online and not hidden: a member of this view's ring.
    pub(crate) fn routable(&self, id: &str) -> Option<Arc<Instance>> {
        self.all
            .get(id)
            .filter(|i| i.is_online() && !self.hidden.contains(id))
            .cloned()
    }

    /// The backend revision this view reflects (that of the [`BACKEND_SOURCE`]; 0 if only other
    /// sources list the service).
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the backend (or another source of this view) is currently unreachable: this is the
    /// last good view, kept as is.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// When the view went stale, if it is (wall clock, as the directory noticed it).
    pub fn stale_since(&self) -> Option<SystemTime> {
        self.stale_since
    }

    /// Whether the view has been loaded from the backend at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }
}

/// The ids whose entry or hidden flag differs between two versions of a service, in order.
/// Visits only the tree nodes the versions do not share (and the hidden sets, if they differ).
pub(crate) fn touched<'a>(
    (old_all, old_hidden): (&'a InstanceMap, &'a Hidden),
    (new_all, new_hidden): (&'a InstanceMap, &'a Hidden),
) -> BTreeSet<&'a str> {
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    if !old_all.ptr_eq(new_all) {
        ids.extend(old_all.diff(new_all).map(|(id, _, _)| id));
    }
    if old_hidden != new_hidden {
        ids.extend(
            old_hidden
                .iter()
                .filter(|id| !new_hidden.contains(*id))
                .map(String::as_str),
        );
        ids.extend(
            new_hidden
                .iter()
                .filter(|id| !old_hidden.contains(*id))
                .map(String::as_str),
        );
    }
    ids
}

/// Whether two entries of a map are the same one (the same `Arc`, or both absent).
fn same_entry(a: Option<&Arc<Instance>>, b: Option<&Arc<Instance>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The ids a batch of events changed in a service's map, each with its entry before the batch
/// and after it (`None`: absent).
pub(crate) type Touched = BTreeMap<String, (Option<Arc<Instance>>, Option<Arc<Instance>>)>;

/// An earlier view's built ring plus a ring of the members not on it (see [`Slot::route`]).
pub(crate) struct Base {
    pub(crate) ring: Arc<OnceLock<Ring>>,
    pub(crate) joined: Ring,
}

impl Base {
    /// The base of the view that follows `cur` after `online_changes` (id -> its routable
    /// instance now, or `None`): `cur`'s ring if it is built, otherwise `cur`'s base, with the
    /// joined members carried over and patched. `None` if neither is built or more than
    /// [`MAX_JOINED`] members are not on that ring. O(changes × log n), never O(n).
    pub(crate) fn after(
        cur: &ServiceSnapshot,
        online_changes: &[(&str, Option<&Arc<Instance>>)],
    ) -> Option<Arc<Base>> {
        // A gRPC ring's entries depend on every member's weight: it is rebuilt, not walked with
        // the joined members.
        if cur.ring_kind != RingKind::MultiProbe {
            return None;
        }
        let (cell, mut joined): (_, BTreeMap<&str, Arc<Instance>>) = if cur.ring.get().is_some() {
            (cur.ring.clone(), BTreeMap::new())
        } else {
            let b = cur.base.as_ref()?;
            let joined = b
                .joined
                .members()
                .iter()
                .map(|m| (m.id.as_str(), m.clone()));
            (b.ring.clone(), joined.collect())
        };
        let ring = cell.get()?;
        let members = ring.members();
        for &(id, now) in online_changes {
            joined.remove(id);
            let Some(now) = now else { continue };
            let on_ring = members
                .binary_search_by(|m| m.id.as_str().cmp(id))
                .is_ok_and(|i| members[i].weight == now.weight);
            if !on_ring {
                joined.insert(id, now.clone());
            }
        }
        if joined.len() > MAX_JOINED {
            return None;
        }
        let joined = Ring::with_vnodes(joined.into_values(), cur.vnodes);
        Some(Arc::new(Base { ring: cell, joined }))
    }
}

/// How many joined members a [`Base`] may carry; beyond it, lookups build the new ring.
const MAX_JOINED: usize = 64;

#[cfg(test)]
/// The changes from `cur` to `next` (two views of one service): instance differences by id, then
/// the staleness transition, if any. By comparing the whole views (O(n)): the reference the
/// directory's incremental changes are tested against.
#[cfg(test)]
pub(crate) fn diff(cur: &ServiceSnapshot, next: &ServiceSnapshot) -> Vec<ChangeKind> {
    let mut out = Vec::new();
    let (mut a, mut b) = (cur.all().iter().peekable(), next.all().iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((x, _)), Some((y, _))) => x.cmp(y),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (_, old) = a.next().unwrap();
                out.push(ChangeKind::Remove {
                    instance: old.clone(),
                });
            }
            std::cmp::Ordering::Greater => {
                let (id, new) = b.next().unwrap();
                out.push(ChangeKind::Insert {
                    instance: new.clone(),
                    hidden: next.is_hidden(id),
                });
            }
            std::cmp::Ordering::Equal => {
                let ((id, old), (_, new)) = (a.next().unwrap(), b.next().unwrap());
                let hidden = next.is_hidden(id);
                if !(Arc::ptr_eq(old, new) || old == new) || hidden != cur.is_hidden(id) {
                    out.push(ChangeKind::Update {
                        instance: new.clone(),
                        hidden,
                    });
                }
            }
        }
    }
    match (cur.is_stale(), next.is_stale()) {
        (false, true) => out.push(ChangeKind::Stale),
        (true, false) => out.push(ChangeKind::Fresh),
        _ => {}
    }
    out
}
