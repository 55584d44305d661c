//! The directory: the local, lock-free view of live instances per service (Pulse's Directory plus
//! Dispatch's registry).
//!
//! Readers never lock: [`Directory::get`], [`Directory::find`] and friends load an immutable
//! [`ServiceSnapshot`] through an atomic pointer. Writers (discovery and probing) build a new snapshot
//! and swap it in. A new snapshot shares everything unchanged with the previous one (the instance
//! map and the online list are persistent trees, see [`InstanceMap`] and [`Instances`]), so a
//! change costs O(log n) per changed instance whatever the size of the service, and so do the
//! journal's changes and [`Changes`] streams, which compare only the parts that differ. A batch of
//! watch events that arrives together is published as one snapshot. Once a service has been routed on ([`Directory::find`], [`Directory::find_n`]),
//! its [`Ring`] is built after each change by one background builder per service that always builds
//! the newest membership (a burst of changes costs one build, not one per change); services only
//! ever read with [`Directory::get`] never pay for rings.
//! Until it is ready, [`Directory::find`] does not wait for it: it walks the newest built ring,
//! skipping departed members, together with a small ring of the members that joined since, which
//! gives exactly the new ring's answer (a member's points depend only on its id and weight). Only
//! when too much has changed since the last built ring does a lookup build the ring itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use futures::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::collections::instances::{InstanceMap, Instances};
use crate::collections::ring::{DEFAULT_VNODES, Ring};
use crate::model::instance::Instance;
use crate::read::feed::{AllChanges, ChangeKind, DEFAULT_JOURNAL_CAPACITY, Journal};
use crate::read::source::{
    BACKEND_PRECEDENCE, BACKEND_SOURCE, Merged, Origin, SourceHandle, SourceKey, Sources,
};
use registry_core::backend::Revision;
use registry_core::error::{Error, Result};

/// The ids a liveness probe hides (persistent: a view's copy shares it).
type Hidden = imbl::OrdSet<String>;

/// An immutable view of one service at one revision.
#[derive(Clone)]
pub struct ServiceSnapshot {
    service: String,
    all: InstanceMap,
    hidden: Hidden,
    online: Instances,
    /// Built from `online` after the snapshot is published, so that publishing never waits for it;
    /// shared by snapshots of the same membership (a stale flag changes nothing to route by).
    ring: Arc<OnceLock<Ring>>,
    /// The newest built ring at publication, and a ring of the members that joined since: walked
    /// together, skipping departed members, while `ring` is not built yet.
    base: Option<Arc<Base>>,
    vnodes: u32,
    revision: Revision,
    stale: bool,
    /// When the view went stale (`Some` exactly when `stale`).
    stale_since: Option<SystemTime>,
    synced: bool,
    /// Which source each instance comes from.
    origin: Origin,
    /// Instances not shown because a source of higher precedence lists the same id.
    collisions: usize,
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
    fn empty(service: &str, vnodes: u32) -> Self {
        ServiceSnapshot {
            service: service.to_owned(),
            all: InstanceMap::new(),
            hidden: Hidden::new(),
            online: Instances::new(),
            ring: Arc::default(),
            base: None,
            vnodes,
            revision: 0,
            stale: false,
            stale_since: None,
            synced: false,
            origin: Origin::Sole(Arc::from(BACKEND_SOURCE)),
            collisions: 0,
        }
    }

    /// What this snapshot merged from its sources, to rebuild it with another hidden set.
    fn merged(&self) -> Merged {
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
    fn next(
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
        // The same routable members (same versions): the ring and its base stay valid.
        let same_members = online_changes.is_empty() || Instances::ptr_eq(&online, &cur.online);
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
    /// backend), or `None` if it is not listed. See [`Directory::source`].
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
    /// background builder has not built it yet).
    pub fn ring(&self) -> &Ring {
        self.ring
            .get_or_init(|| Ring::with_vnodes(self.online.iter().cloned(), self.vnodes))
    }

    /// `id`'s current instance if it is online and not hidden: a member of this view's ring.
    fn routable(&self, id: &str) -> Option<Arc<Instance>> {
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
fn touched<'a>(
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
struct Base {
    ring: Arc<OnceLock<Ring>>,
    joined: Ring,
}

impl Base {
    /// The base of the view that follows `cur` after `online_changes` (id -> its routable
    /// instance now, or `None`): `cur`'s ring if it is built, otherwise `cur`'s base, with the
    /// joined members carried over and patched. `None` if neither is built or more than
    /// [`MAX_JOINED`] members are not on that ring. O(changes × log n), never O(n).
    fn after(
        cur: &ServiceSnapshot,
        online_changes: &[(&str, Option<&Arc<Instance>>)],
    ) -> Option<Arc<Base>> {
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

struct Slot {
    /// The service name, shared by the changes journalled for it.
    name: Arc<str>,
    current: ArcSwap<ServiceSnapshot>,
    tx: watch::Sender<Arc<ServiceSnapshot>>,
    /// Serialises writers, and holds what each source shows; readers never take it.
    write: Mutex<Sources>,
    /// Whether a background ring builder is running for this service (at most one is).
    building: AtomicBool,
    /// Whether anyone has routed on this service: until then no ring is built in the background.
    routed: AtomicBool,
    /// Rings built by the background builder (for tests).
    #[cfg(test)]
    builds: std::sync::atomic::AtomicUsize,
}

/// How many departed members a lookup may pass over on an older ring before it gives up and builds
/// the current ring itself (beyond the `count` it wants).
const MAX_SKIPPED: usize = 8;

impl Slot {
    /// Up to `count` distinct routable instances from `key`'s position on the current membership's
    /// ring. If that ring is not built yet, walks the view's [`Base`]: the earlier ring, skipping
    /// members that left (or changed weight), together with the ring of those that joined. Same
    /// answer, without waiting.
    fn route(&self, count: usize, key: &[u8]) -> Vec<Arc<Instance>> {
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
    fn build_rings(self: Arc<Self>) {
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

struct Inner {
    slots: ArcSwap<HashMap<String, Arc<Slot>>>,
    add_slot: Mutex<()>,
    empty: Instances,
    vnodes: u32,
    journal: Journal,
    /// The sources added with [`Directory::source`], by name, with their precedence.
    sources: Mutex<BTreeMap<String, i32>>,
}

/// The local view of live instances, per service. Cheap to clone; clones share the view.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("services", &self.services())
            .finish()
    }
}

impl Default for Directory {
    fn default() -> Self {
        Directory::new()
    }
}

impl Directory {
    /// An empty directory whose rings use [`DEFAULT_VNODES`].
    pub fn new() -> Self {
        Directory::with_vnodes(DEFAULT_VNODES)
    }

    /// An empty directory whose rings use `vnodes` points per instance at the default weight (1 to
    /// [`MAX_VNODES`](crate::collections::ring::MAX_VNODES); see [`Ring::with_vnodes`]).
    pub fn with_vnodes(vnodes: u32) -> Self {
        Directory::builder().vnodes(vnodes).build()
    }

    /// A directory with other settings than [`Directory::new`]'s.
    ///
    /// ```
    /// use registry_engine::Directory;
    ///
    /// let dir = Directory::builder().vnodes(64).journal_capacity(100_000).build();
    /// assert_eq!(dir.journal_capacity(), 100_000);
    /// ```
    pub fn builder() -> DirectoryBuilder {
        DirectoryBuilder {
            vnodes: DEFAULT_VNODES,
            journal_capacity: DEFAULT_JOURNAL_CAPACITY,
        }
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// Every service's current snapshot, sorted by service.
    pub(crate) fn snapshots(&self) -> Vec<Arc<ServiceSnapshot>> {
        let slots = self.inner.slots.load();
        let mut v: Vec<Arc<ServiceSnapshot>> =
            slots.values().map(|s| s.current.load_full()).collect();
        v.sort_by(|a, b| a.service.cmp(&b.service));
        v
    }

    fn slot(&self, service: &str) -> Option<Arc<Slot>> {
        self.inner.slots.load().get(service).cloned()
    }

    fn slot_or_create(&self, service: &str) -> Arc<Slot> {
        if let Some(s) = self.slot(service) {
            return s;
        }
        let _g = lock(&self.inner.add_slot);
        if let Some(s) = self.slot(service) {
            return s;
        }
        let snap = Arc::new(ServiceSnapshot::empty(service, self.inner.vnodes));
        let (tx, _) = watch::channel(snap.clone());
        let slot = Arc::new(Slot {
            name: Arc::from(service),
            current: ArcSwap::new(snap),
            tx,
            write: Mutex::new(Sources::default()),
            building: AtomicBool::new(false),
            routed: AtomicBool::new(false),
            #[cfg(test)]
            builds: Default::default(),
        });
        let mut map = HashMap::clone(&self.inner.slots.load());
        map.insert(service.to_owned(), slot.clone());
        self.inner.slots.store(Arc::new(map));
        slot
    }

    /// The services the directory knows of, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.slots.load().keys().cloned().collect();
        v.sort();
        v
    }

    /// The current snapshot of `service` (empty and unsynced if never discovered).
    pub fn snapshot(&self, service: &str) -> Arc<ServiceSnapshot> {
        match self.slot(service) {
            Some(s) => s.current.load_full(),
            None => Arc::new(ServiceSnapshot::empty(service, self.inner.vnodes)),
        }
    }

    /// The live online instances of `service`, sorted by id (lock-free; no allocation).
    pub fn get(&self, service: &str) -> Instances {
        match self.inner.slots.load().get(service) {
            Some(s) => s.current.load().online.clone(),
            None => self.inner.empty.clone(),
        }
    }

    /// Every listed instance of `service`, online and offline (each carries its state), sorted by id.
    pub fn all(&self, service: &str) -> Vec<Arc<Instance>> {
        self.snapshot(service).all.values().cloned().collect()
    }

    /// Whether `service`'s view is the last good one kept while the backend is unreachable.
    pub fn is_stale(&self, service: &str) -> bool {
        self.snapshot(service).stale
    }

    /// The owner of `key` among `service`'s online instances, by consistent hashing.
    ///
    /// Never waits for a ring to be rebuilt: right after a membership change, the previous ring is
    /// walked (skipping departed members) until the new one is ready.
    pub fn find(&self, service: &str, key: impl AsRef<[u8]>) -> Option<Arc<Instance>> {
        let slots = self.inner.slots.load();
        let slot = slots.get(service)?;
        if let Some(ring) = slot.current.load().ring.get() {
            return ring.find(key.as_ref()).cloned();
        }
        slot.route(1, key.as_ref()).pop()
    }

    /// Up to `count` distinct online instances of `service`, walking the ring from `key`.
    pub fn find_n(&self, count: usize, service: &str, key: impl AsRef<[u8]>) -> Vec<Arc<Instance>> {
        let slots = self.inner.slots.load();
        let Some(slot) = slots.get(service) else {
            return Vec::new();
        };
        slot.route(count, key.as_ref())
    }

    /// A watchable snapshot of `service`: `borrow()` is the current view, `changed()` wakes on the
    /// next one.
    pub fn subscribe(&self, service: &str) -> watch::Receiver<Arc<ServiceSnapshot>> {
        self.slot_or_create(service).tx.subscribe()
    }

    /// A stream of [`Change`]s to `service`'s online instances: first an `Insert` for every current
    /// instance, then one event per difference between consecutive views. Bursts are coalesced: a
    /// consumer that falls behind sees the net change, never a replay.
    pub fn changes(&self, service: &str) -> Changes {
        Changes::new(self.subscribe(service))
    }

    /// Every change to every service of the directory, services that appear later included, in
    /// the order the directory published them: first a [`Resync`](crate::Resync) with the current
    /// state ([`ResyncReason::Start`](crate::ResyncReason::Start)), then each
    /// [`DirectoryChange`](crate::DirectoryChange) after it, numbered without gaps.
    ///
    /// A consumer that falls behind by more than the journal holds
    /// ([`journal_capacity`](Self::journal_capacity)) gets a new `Resync`
    /// ([`ResyncReason::Lagged`](crate::ResyncReason::Lagged)) instead of the changes it missed;
    /// it never holds up the directory, and its memory stays bounded.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use registry_engine::{ChangeKind, Directory, DirectoryEvent};
    ///
    /// # async fn demo(dir: Directory) {
    /// let mut feed = dir.all_changes();
    /// while let Some(event) = feed.next().await {
    ///     match event {
    ///         DirectoryEvent::Resync(r) => {
    ///             println!("start over at #{}: {} services", r.seq, r.services.len());
    ///         }
    ///         DirectoryEvent::Change(c) => match &c.kind {
    ///             ChangeKind::Stale | ChangeKind::Fresh => {
    ///                 println!("#{} {} is {}", c.seq, c.service, c.kind.name());
    ///             }
    ///             kind => {
    ///                 let id = &kind.instance().unwrap().id;
    ///                 println!("#{} {} {}/{id}", c.seq, kind.name(), c.service);
    ///             }
    ///         },
    ///         _ => {} // kinds of events added later
    ///     }
    /// }
    /// # }
    /// ```
    pub fn all_changes(&self) -> AllChanges {
        AllChanges::start(self.clone())
    }

    /// Like [`all_changes`](Self::all_changes), but resuming after change number `after` (the last
    /// one the consumer saw; 0 for "from the beginning"): the changes numbered above it, with no
    /// gap and no repeat, if the journal still holds them all. Otherwise the stream starts with a
    /// [`Resync`](crate::Resync) that says why
    /// ([`Lagged`](crate::ResyncReason::Lagged): too old;
    /// [`Unknown`](crate::ResyncReason::Unknown): never issued, e.g. from before a restart).
    ///
    /// ```
    /// use futures::StreamExt;
    /// use registry_engine::{Directory, DirectoryEvent};
    ///
    /// # async fn demo(dir: Directory, last_event_id: u64) {
    /// let mut feed = dir.all_changes_since(last_event_id);
    /// if let Some(DirectoryEvent::Resync(r)) = feed.next().await {
    ///     println!("cannot resume after #{last_event_id} ({:?}): start over", r.reason);
    /// }
    /// # }
    /// ```
    pub fn all_changes_since(&self, after: u64) -> AllChanges {
        AllChanges::since(self.clone(), after)
    }

    /// The number of the newest change published (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.inner.journal.last()
    }

    /// How many recent changes the directory keeps for consumers to catch up or resume from.
    pub fn journal_capacity(&self) -> usize {
        self.inner.journal.capacity()
    }

    /// Ring points per instance at the default weight (see [`DirectoryBuilder::vnodes`]): what a
    /// ring of some of this directory's instances needs to agree with its own rings.
    pub fn vnodes(&self) -> u32 {
        self.inner.vnodes
    }

    /// A new source feeding this directory, named `name` (unique in the directory; [`BACKEND_SOURCE`]
    /// is the registry's own), with `precedence` (unique too; higher wins an id collision; the
    /// backend's is [`BACKEND_PRECEDENCE`]). See [`SourceHandle`] and the module on sources.
    pub fn source(&self, name: &str, precedence: i32) -> Result<SourceHandle> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(format!(
                "source name {name:?}: 1 to 64 characters, no control characters"
            )));
        }
        let mut names = lock(&self.inner.sources);
        if name == BACKEND_SOURCE || names.contains_key(name) {
            return Err(Error::invalid(format!(
                "a source named {name:?} already feeds this directory"
            )));
        }
        if precedence == BACKEND_PRECEDENCE {
            return Err(Error::invalid(format!(
                "precedence {precedence} is the backend's; give source {name:?} another"
            )));
        }
        if let Some((other, _)) = names.iter().find(|(_, p)| **p == precedence) {
            return Err(Error::invalid(format!(
                "source {other:?} already has precedence {precedence}; give source {name:?} another"
            )));
        }
        names.insert(name.to_owned(), precedence);
        Ok(SourceHandle::new(
            self.clone(),
            SourceKey::new(name, precedence),
        ))
    }

    /// Replaces `service`'s instances from the backend as of `revision`. An incremental update
    /// older than the current view is ignored; an `authoritative` one (a full listing) always
    /// applies, since a backend that lost its history may restart its revisions lower.
    pub(crate) fn publish(
        &self,
        service: &str,
        all: impl Into<InstanceMap>,
        revision: Revision,
        authoritative: bool,
    ) {
        self.publish_from(&SourceKey::backend(), service, all, revision, authoritative);
    }

    /// Replaces what `source` shows of `service` (see [`publish`](Self::publish)).
    pub(crate) fn publish_from(
        &self,
        source: &SourceKey,
        service: &str,
        all: impl Into<InstanceMap>,
        revision: Revision,
        authoritative: bool,
    ) {
        self.publish_inner(source, service, all.into(), revision, authoritative, None);
    }

    /// Like [`publish`](Self::publish) (not authoritative), with `changed`: every id whose entry
    /// differs between `all` and `before` (a watch event's ids), with its entry in `before` and in
    /// `all`. If `before` is what the backend showed until now, the directory need not compare the
    /// maps to find them, nor look the ids up in them.
    pub(crate) fn publish_changed(
        &self,
        service: &str,
        all: InstanceMap,
        revision: Revision,
        before: &InstanceMap,
        changed: &Touched,
    ) {
        let source = SourceKey::backend();
        let hint = Some((before, changed));
        self.publish_inner(&source, service, all, revision, false, hint);
    }

    fn publish_inner(
        &self,
        source: &SourceKey,
        service: &str,
        all: InstanceMap,
        revision: Revision,
        authoritative: bool,
        hint: Option<(&InstanceMap, &Touched)>,
    ) {
        self.update(service, |cur, sources| {
            let view = sources.view(source);
            if !authoritative && view.synced && revision < view.revision {
                return None;
            }
            let old = std::mem::replace(&mut view.all, all);
            let new = view.all.clone();
            view.revision = revision;
            view.stale_since = None;
            view.synced = true;
            let merged = sources.merge_after(service, source, &old, cur.merged());
            // The hint lists what differs from `before` to `new`: it holds for the view only if
            // the source showed `before` (no publication was refused or made by another in
            // between), the view was that and becomes `new` (one source: with others, their
            // entries may show through).
            let changed = hint
                .filter(|(before, _)| {
                    before.ptr_eq(&old) && cur.all.ptr_eq(&old) && merged.all.ptr_eq(&new)
                })
                .map(|(_, changed)| changed);
            Some(ServiceSnapshot::next(
                cur,
                merged,
                cur.hidden.clone(),
                changed,
            ))
        });
    }

    /// Marks `service`'s view from the backend stale (backend unreachable) or fresh again,
    /// keeping its instances.
    pub(crate) fn set_stale(&self, service: &str, stale: bool) {
        self.set_stale_from(&SourceKey::backend(), service, stale);
    }

    /// Marks what `source` shows of `service` stale or fresh.
    pub(crate) fn set_stale_from(&self, source: &SourceKey, service: &str, stale: bool) {
        self.update(service, |cur, sources| {
            let view = sources.view(source);
            if view.stale_since.is_some() == stale {
                return None;
            }
            view.stale_since = stale.then(SystemTime::now);
            let stale_since = sources.stale_since();
            if stale_since == cur.stale_since {
                return None;
            }
            let stale = stale_since.is_some();
            let change = match (cur.stale, stale) {
                (false, true) => vec![ChangeKind::Stale],
                (true, false) => vec![ChangeKind::Fresh],
                _ => Vec::new(),
            };
            let next = ServiceSnapshot {
                stale,
                stale_since,
                ..ServiceSnapshot::clone(cur)
            };
            Some((next, change))
        });
    }

    /// Removes everything `source` shows of `service`.
    pub(crate) fn withdraw(&self, source: &SourceKey, service: &str) {
        if self.slot(service).is_none() {
            return;
        }
        self.update(service, |cur, sources| {
            let old = sources.remove(source)?;
            let merged = sources.merge_after(service, source, &old.all, cur.merged());
            Some(ServiceSnapshot::next(cur, merged, cur.hidden.clone(), None))
        });
    }

    /// Hides the instances whose liveness probe fails (and shows the others again).
    pub(crate) fn set_hidden(&self, service: &str, hidden: BTreeSet<String>) {
        let hidden: Hidden = hidden.into_iter().collect();
        self.update(service, |cur, _| {
            (cur.hidden != hidden).then(|| ServiceSnapshot::next(cur, cur.merged(), hidden, None))
        });
    }

    fn update(
        &self,
        service: &str,
        f: impl FnOnce(&ServiceSnapshot, &mut Sources) -> Option<(ServiceSnapshot, Vec<ChangeKind>)>,
    ) {
        let slot = self.slot_or_create(service);
        let mut sources = lock(&slot.write);
        let cur = slot.current.load_full();
        let Some((next, changes)) = f(&cur, &mut sources) else {
            return;
        };
        // Every update of every unit test checks the incremental changes against a full diff
        // (up to 5,000 instances, so that a test may time a large service's changes).
        #[cfg(test)]
        if next.all.len() <= 5000 {
            assert_eq!(changes, crate::read::feed::diff(&cur, &next), "{service}");
        }
        let next = Arc::new(next);
        let ring_ready = next.ring.get().is_some();
        // Journalled and made current together, so a feed's snapshot is exactly as of a number.
        self.inner
            .journal
            .append(&slot.name, next.revision, changes, || {
                slot.current.store(next.clone())
            });
        slot.tx.send_replace(next);
        if ring_ready || !slot.routed.load(Ordering::Relaxed) {
            return;
        }
        // Subscribers already see the new membership; its ring is built off their path and off
        // the publisher's (10,000 instances take ~90 ms), by this slot's single builder.
        let slot = slot.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !slot.building.load(Ordering::SeqCst) => {
                rt.spawn_blocking(move || slot.build_rings());
            }
            Ok(_) => {}
            Err(_) => slot.build_rings(),
        }
    }
}

/// Settings of a [`Directory`], from [`Directory::builder`].
#[derive(Clone, Debug)]
pub struct DirectoryBuilder {
    vnodes: u32,
    journal_capacity: usize,
}

impl DirectoryBuilder {
    /// Ring points per instance at the default weight (1 to
    /// [`MAX_VNODES`](crate::collections::ring::MAX_VNODES); default [`DEFAULT_VNODES`]).
    pub fn vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes;
        self
    }

    /// How many recent changes the directory keeps (default
    /// [`DEFAULT_JOURNAL_CAPACITY`](crate::DEFAULT_JOURNAL_CAPACITY); at least 1). This bounds
    /// how far [`Directory::all_changes_since`] can resume from and how far a consumer of
    /// [`Directory::all_changes`] may fall behind before it is given a snapshot instead.
    pub fn journal_capacity(mut self, capacity: usize) -> Self {
        self.journal_capacity = capacity;
        self
    }

    /// The empty directory.
    pub fn build(self) -> Directory {
        Directory {
            inner: Arc::new(Inner {
                slots: ArcSwap::from_pointee(HashMap::new()),
                add_slot: Mutex::new(()),
                empty: Instances::new(),
                vnodes: self.vnodes.clamp(1, crate::collections::ring::MAX_VNODES),
                journal: Journal::new(self.journal_capacity),
                sources: Mutex::new(BTreeMap::new()),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One difference in a service's online instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An instance appeared, came online, came back from a failed probe, or changed (same id,
    /// new details: replace what you hold).
    Insert(String, Arc<Instance>),
    /// An instance left, went offline or was hidden by a failing probe.
    Remove(String),
}

/// The stream returned by [`Directory::changes`].
pub struct Changes {
    queue: ChangeQueue,
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.queue.last.as_ref().map_or(0, |s| s.online.len());
        f.debug_struct("Changes")
            .field("held", &held)
            .field("pending", &self.queue.pending.len())
            .finish()
    }
}

/// A service's views, turned into the [`Change`]s of a set of members (the online instances for
/// [`Changes`], a selection's for [`SelectedChanges`](crate::SelectedChanges)): what the consumer
/// holds, and the changes queued for it.
pub(crate) struct ChangeQueue {
    views: WatchStream<Arc<ServiceSnapshot>>,
    /// What the consumer holds, for [`poll_next`](Self::poll_next) (a selection's members).
    pub(crate) held: BTreeMap<String, Arc<Instance>>,
    /// The view the consumer holds the online instances of, for
    /// [`poll_next_online`](Self::poll_next_online).
    last: Option<Arc<ServiceSnapshot>>,
    pub(crate) pending: VecDeque<Change>,
}

impl ChangeQueue {
    pub(crate) fn new(rx: watch::Receiver<Arc<ServiceSnapshot>>) -> Self {
        ChangeQueue {
            views: WatchStream::new(rx),
            held: BTreeMap::new(),
            last: None,
            pending: VecDeque::new(),
        }
    }

    /// Queues the differences in online instances between the view the consumer holds and
    /// `next`: O(log n) per changed instance (see [`touched`]), not a comparison of the lists.
    fn diff_online(&mut self, next: Arc<ServiceSnapshot>) {
        let Some(prev) = self.last.take() else {
            self.pending.extend(
                next.online
                    .iter()
                    .map(|i| Change::Insert(i.id.clone(), i.clone())),
            );
            self.last = Some(next);
            return;
        };
        if !Instances::ptr_eq(&prev.online, &next.online) {
            let mut inserts = Vec::new();
            for id in touched((&prev.all, &prev.hidden), (&next.all, &next.hidden)) {
                match (prev.online.find(id), next.online.find(id)) {
                    (Some(_), None) => self.pending.push_back(Change::Remove(id.to_owned())),
                    (None, Some(new)) => inserts.push(Change::Insert(id.to_owned(), new.clone())),
                    (Some(old), Some(new)) if !(Arc::ptr_eq(old, new) || old == new) => {
                        inserts.push(Change::Insert(id.to_owned(), new.clone()));
                    }
                    _ => {}
                }
            }
            self.pending.extend(inserts);
        }
        self.last = Some(next);
    }

    /// The next change to the online instances.
    fn poll_next_online(&mut self, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Poll::Ready(Some(c));
            }
            match Pin::new(&mut self.views).poll_next(cx) {
                Poll::Ready(Some(snap)) => self.diff_online(snap),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Queues the differences between what the consumer holds and `members`.
    fn diff(&mut self, members: &Instances) {
        let next: BTreeMap<String, Arc<Instance>> =
            members.iter().map(|i| (i.id.clone(), i.clone())).collect();
        for id in self.held.keys() {
            if !next.contains_key(id) {
                self.pending.push_back(Change::Remove(id.clone()));
            }
        }
        for (id, inst) in &next {
            if self.held.get(id) != Some(inst) {
                self.pending
                    .push_back(Change::Insert(id.clone(), inst.clone()));
            }
        }
        self.held = next;
    }

    /// The next change, `members` giving the members of each new view.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        mut members: impl FnMut(&ServiceSnapshot) -> Instances,
    ) -> Poll<Option<Change>> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Poll::Ready(Some(c));
            }
            match Pin::new(&mut self.views).poll_next(cx) {
                Poll::Ready(Some(snap)) => self.diff(&members(&snap)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Changes {
    fn new(rx: watch::Receiver<Arc<ServiceSnapshot>>) -> Self {
        Changes {
            queue: ChangeQueue::new(rx),
        }
    }

    /// Adapts the stream to [`tower::discover::Discover`](https://docs.rs/tower/latest/tower/discover/trait.Discover.html):
    /// `make` turns each inserted instance into a service.
    #[cfg(feature = "tower")]
    pub fn into_discover<S, F>(
        self,
        mut make: F,
    ) -> impl Stream<Item = Result<tower::discover::Change<String, S>, std::convert::Infallible>>
    + Send
    + Unpin
    where
        F: FnMut(&Instance) -> S + Send + 'static,
        S: Send + 'static,
    {
        use futures::StreamExt;
        self.map(move |c| {
            Ok(match c {
                Change::Insert(id, inst) => tower::discover::Change::Insert(id, make(&inst)),
                Change::Remove(id) => tower::discover::Change::Remove(id),
            })
        })
    }
}

impl Stream for Changes {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        self.queue.poll_next_online(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize, skip: usize) -> BTreeMap<String, Arc<Instance>> {
        (skip..n)
            .map(|i| {
                let id = format!("m{i:05}");
                (id.clone(), Arc::new(Instance::new("svc", id).addr("x:1")))
            })
            .collect()
    }

    /// The hint the discovery gives with a change: `ids` with their entries before and after.
    fn hint<'a>(
        before: &InstanceMap,
        after: &InstanceMap,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Touched {
        ids.into_iter()
            .map(|id| {
                (
                    id.to_owned(),
                    (before.get(id).cloned(), after.get(id).cloned()),
                )
            })
            .collect()
    }

    /// While every listed instance is online and visible, the online list is the map's own tree
    /// (a change copies one path); it parts from it when one goes offline or is hidden, and
    /// shares it again when all are back.
    #[test]
    fn the_online_list_is_the_map_while_every_instance_is_online() {
        let dir = Directory::new();
        let shared = |dir: &Directory| {
            let s = dir.snapshot("svc");
            s.all().is_shared_by(s.online())
        };
        let mut all: InstanceMap = members(1000, 0).into();
        dir.publish("svc", all.clone(), 1, true);
        assert!(shared(&dir), "loaded, all online");
        assert_eq!(dir.get("svc").len(), 1000);
        let before = all.clone();
        all.insert(Arc::new(Instance::new("svc", "m00500x").addr("x:1")));
        dir.publish_changed(
            "svc",
            all.clone(),
            2,
            &before,
            &hint(&before, &all, ["m00500x"]),
        );
        assert!(shared(&dir), "a join keeps it shared");
        let off = Instance::new("svc", "m00500")
            .addr("x:1")
            .state(crate::InstanceState::Offline);
        let before = all.clone();
        all.insert(Arc::new(off));
        dir.publish_changed(
            "svc",
            all.clone(),
            3,
            &before,
            &hint(&before, &all, ["m00500"]),
        );
        assert!(!shared(&dir), "one offline: the online list has fewer");
        assert_eq!(dir.get("svc").len(), 1000);
        assert!(!dir.get("svc").contains_id("m00500"));
        let before = all.clone();
        all.remove("m00500");
        dir.publish_changed(
            "svc",
            all.clone(),
            4,
            &before,
            &hint(&before, &all, ["m00500"]),
        );
        assert!(shared(&dir), "the offline one left: all online again");
        dir.set_hidden("svc", ["m00007".to_owned()].into());
        assert!(!shared(&dir), "hidden by a probe");
        assert!(!dir.get("svc").contains_id("m00007"));
        dir.set_hidden("svc", BTreeSet::new());
        assert!(shared(&dir));
        assert_eq!(dir.get("svc").len(), 1000);
    }

    /// Random steps (joins, leaves, updates, going offline, probe hiding, staleness) over a
    /// service of a few hundred instances: each step's incremental changes must be exactly what
    /// comparing the whole views gives, the patched online list exactly the routable instances,
    /// a lookup's base exactly "the earlier ring plus the members not on it", and a `Changes`
    /// consumer must end up holding exactly the online instances.
    #[test]
    fn incremental_views_equal_views_rebuilt_from_scratch() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        #[derive(Clone, Debug)]
        enum Step {
            Put(u16, u32, bool),
            Remove(u16),
            Hide(u16),
            Show(u16),
            Stale(bool),
            BuildRing,
        }
        let step = prop_oneof![
            4 => (0u16..300, prop_oneof![Just(100u32), Just(50), Just(200)], any::<bool>())
                .prop_map(|(i, w, on)| Step::Put(i, w, on)),
            3 => (0u16..300).prop_map(Step::Remove),
            1 => (0u16..300).prop_map(Step::Hide),
            1 => (0u16..300).prop_map(Step::Show),
            1 => any::<bool>().prop_map(Step::Stale),
            1 => Just(Step::BuildRing),
        ];
        let batches = proptest::collection::vec(proptest::collection::vec(step, 1..6), 1..60);
        let mut runner = TestRunner::new(Config {
            cases: 64,
            ..Config::default()
        });
        runner
            .run(&batches, |batches| {
                let dir = Directory::new();
                let mut all = InstanceMap::new();
                let mut hidden = BTreeSet::new();
                for i in 0..200u16 {
                    all.insert(Arc::new(
                        Instance::new("svc", format!("m{i:03}")).addr("10.0.0.1:1"),
                    ));
                }
                dir.publish("svc", all.clone(), 1, true);
                let mut changes = dir.changes("svc");
                let mut held: BTreeMap<String, Arc<Instance>> = BTreeMap::new();
                for (n, batch) in batches.into_iter().enumerate() {
                    let mut stale = None;
                    let before = all.clone();
                    let mut ids = BTreeSet::new();
                    for step in batch {
                        if let Step::Put(i, ..) | Step::Remove(i) = step {
                            ids.insert(format!("m{i:03}"));
                        }
                        match step {
                            Step::Put(i, w, on) => {
                                let inst = Instance::new("svc", format!("m{i:03}"))
                                    .addr("10.0.0.1:1")
                                    .weight(w);
                                let inst = if on {
                                    inst
                                } else {
                                    inst.state(crate::InstanceState::Offline)
                                };
                                all.insert(Arc::new(inst));
                            }
                            Step::Remove(i) => {
                                all.remove(&format!("m{i:03}"));
                            }
                            Step::Hide(i) => {
                                hidden.insert(format!("m{i:03}"));
                            }
                            Step::Show(i) => {
                                hidden.remove(&format!("m{i:03}"));
                            }
                            Step::Stale(s) => stale = Some(s),
                            Step::BuildRing => {
                                dir.snapshot("svc").ring();
                            }
                        }
                    }
                    // Whole maps, maps with the ids that changed (as the discovery publishes
                    // them; `next` checks the ids against a diff), and ids relative to a map the
                    // directory does not hold (to be ignored).
                    let rev = 2 + n as u64;
                    match n % 3 {
                        0 => dir.publish("svc", all.clone(), rev, false),
                        1 => {
                            let ids = ids.iter().map(String::as_str);
                            dir.publish_changed(
                                "svc",
                                all.clone(),
                                rev,
                                &before,
                                &hint(&before, &all, ids),
                            )
                        }
                        _ => {
                            let mut other = before.clone();
                            other.insert(Arc::new(Instance::new("svc", "zz").addr("x:1")));
                            dir.publish_changed("svc", all.clone(), rev, &other, &Touched::new());
                        }
                    }
                    dir.set_hidden("svc", hidden.clone());
                    if let Some(s) = stale {
                        dir.set_stale("svc", s);
                    }
                    // (Each update's changes were checked against a full diff in `update`.)
                    let after = dir.snapshot("svc");
                    let want: Vec<Arc<Instance>> = after
                        .all()
                        .values()
                        .filter(|i| i.is_online() && !after.is_hidden(&i.id))
                        .cloned()
                        .collect();
                    prop_assert_eq!(after.online().to_vec(), want.clone());
                    if let Some(base) = &after.base {
                        let ring = base.ring.get().expect("a base ring is built");
                        let on_ring = |m: &Arc<Instance>| {
                            ring.members()
                                .iter()
                                .any(|r| r.id == m.id && r.weight == m.weight)
                        };
                        let joined: Vec<&String> =
                            want.iter().filter(|m| !on_ring(m)).map(|m| &m.id).collect();
                        let got: Vec<&String> =
                            base.joined.members().iter().map(|m| &m.id).collect();
                        prop_assert_eq!(got, joined);
                    }
                    while let Some(c) =
                        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut changes))
                            .flatten()
                    {
                        match c {
                            Change::Insert(id, inst) => {
                                held.insert(id, inst);
                            }
                            Change::Remove(id) => {
                                prop_assert!(held.remove(&id).is_some(), "removed {} unheld", id);
                            }
                        }
                    }
                    let held_now: Vec<Arc<Instance>> = held.values().cloned().collect();
                    prop_assert_eq!(held_now, want);
                }
                Ok(())
            })
            .unwrap();
    }

    /// A burst of membership changes must not start one ring build per change (at 100,000
    /// instances a ring takes about a second and 150 MB), and lookups during the burst must give
    /// the current view's answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_changes_builds_few_rings_and_lookups_never_return_departed_members() {
        // Rings of 2 points per member build in about a millisecond: with 512 per member (1.5
        // million points, what a large estate's ring costs) a build outlasts several changes.
        let vnodes = 512;
        let dir = Directory::with_vnodes(vnodes);
        let n = 3000;
        dir.publish("svc", members(n, 0), 1, true);
        dir.find("svc", b"routed from now on");
        let slot = dir.slot("svc").unwrap();
        while slot.current.load().ring.get().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let before = slot.builds.load(Ordering::SeqCst);
        let changes = 40;
        let mut answers = Vec::new();
        for c in 1..=changes {
            // Each change removes the lowest remaining member.
            dir.publish("svc", members(n, c), 1 + c as u64, false);
            let snap = dir.snapshot("svc");
            answers.clear();
            for k in 0..200u32 {
                let owner = dir.find("svc", k.to_le_bytes()).expect("an owner");
                assert!(snap.routable(&owner.id).is_some(), "{} has left", owner.id);
                answers.push(owner.id.clone());
                for m in dir.find_n(3, "svc", k.to_le_bytes()) {
                    assert!(snap.routable(&m.id).is_some(), "{} has left", m.id);
                }
            }
        }
        while slot.current.load().ring.get().is_none() || slot.building.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let builds = slot.builds.load(Ordering::SeqCst) - before;
        assert!(
            builds < changes / 2,
            "{builds} background builds for {changes} changes"
        );
        // Lookups answered from the earlier ring were the new ring's answers.
        let expected = Ring::with_vnodes(members(n, changes).into_values(), vnodes);
        for (k, owner) in answers.iter().enumerate() {
            assert_eq!(
                Some(owner),
                expected.find(&(k as u32).to_le_bytes()).map(|m| &m.id),
                "key {k}"
            );
        }
    }

    /// While the new ring is not built (the builder is held busy here), lookups walk the last built
    /// ring with the departed members skipped and the joined ones added, over several publications,
    /// and give exactly the answers of a ring of the current membership, without building one.
    /// `count + MAX_SKIPPED` overflowed (a panic in debug builds) when a lookup asked for
    /// `usize::MAX` owners while a new ring was not built yet.
    #[test]
    fn asking_for_usize_max_owners_during_a_rebuild_is_not_an_overflow() {
        let dir = Directory::new();
        dir.publish("svc", members(50, 0), 1, true);
        assert_eq!(dir.find_n(usize::MAX, "svc", b"k").len(), 50);
        let slot = dir.slot("svc").unwrap();
        // Outside a runtime the ring was built inline; hold the builder off for the next view.
        slot.building.store(true, Ordering::SeqCst);
        dir.publish("svc", members(60, 5), 2, false);
        assert!(slot.current.load().ring.get().is_none());
        assert!(slot.current.load().base.is_some());
        let all = dir.find_n(usize::MAX, "svc", b"k");
        assert_eq!(all.len(), 55);
        slot.building.store(false, Ordering::SeqCst);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_before_the_new_ring_is_built_give_its_answers() {
        let dir = Directory::new();
        dir.publish("svc", members(2000, 0), 1, true);
        dir.find("svc", b"routed from now on");
        let slot = dir.slot("svc").unwrap();
        while slot.current.load().ring.get().is_none() || slot.building.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        slot.building.store(true, Ordering::SeqCst);
        // Three publications: ten leave, thirty join, then five more leave.
        let steps = [members(2000, 10), members(2030, 10), members(2030, 15)];
        for (i, view) in steps.into_iter().enumerate() {
            dir.publish("svc", view.clone(), 2 + i as u64, false);
            let expected = Ring::new(view.into_values());
            for k in 0..5000u32 {
                let key = k.to_le_bytes();
                let want: Vec<_> = expected.find_n(3, &key).into_iter().cloned().collect();
                assert_eq!(dir.find("svc", key).as_ref(), want.first(), "key {k}");
                assert_eq!(dir.find_n(3, "svc", key), want, "key {k}");
            }
            assert!(
                slot.current.load().ring.get().is_none(),
                "answered without building the new ring"
            );
        }
        slot.building.store(false, Ordering::SeqCst);
    }

    /// A service read only with `get` never has a ring built; the first lookup builds one, and
    /// from then on the background builder keeps it current.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rings_are_built_only_for_services_that_are_routed_on() {
        let dir = Directory::new();
        for c in 0..5 {
            dir.publish("svc", members(500, c), 1 + c as u64, true);
            assert_eq!(dir.get("svc").len(), 500 - c);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let slot = dir.slot("svc").unwrap();
        assert_eq!(slot.builds.load(Ordering::SeqCst), 0);
        assert!(slot.current.load().ring.get().is_none());

        assert!(dir.find("svc", b"k").is_some());
        assert!(
            slot.current.load().ring.get().is_some(),
            "built by the lookup"
        );
        dir.publish("svc", members(500, 5), 10, true);
        let t0 = std::time::Instant::now();
        while slot.current.load().ring.get().is_none() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "the background builder keeps a routed service's ring current"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(slot.builds.load(Ordering::SeqCst), 1);
    }
}
