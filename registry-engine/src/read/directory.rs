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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use registry_core::backend::Revision;
use registry_core::error::{Error, Result};
use tokio::sync::watch;

use crate::collections::instances::{InstanceMap, Instances};
use crate::collections::ring::{DEFAULT_VNODES, RingKind};
use crate::model::instance::Instance;
use crate::read::change::ChangeKind;
use crate::read::changes::Changes;
use crate::read::journal::{DEFAULT_JOURNAL_CAPACITY, Journal};
use crate::read::merge::{BACKEND_PRECEDENCE, BACKEND_SOURCE, SourceKey, Sources};
use crate::read::slot::Slot;
use crate::read::snapshot::{Hidden, ServiceSnapshot, Touched};

/// The services' slots by name: a persistent map, so adding or forgetting one service copies
/// O(log n) of it, not the whole map.
type Slots = imbl::HashMap<String, Arc<Slot>>;

struct Inner {
    slots: ArcSwap<Slots>,
    add_slot: Mutex<()>,
    empty: Instances,
    vnodes: u32,
    ring_kind: RingKind,
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
    /// [`MAX_VNODES`](crate::MAX_VNODES); see [`Ring::with_vnodes`](crate::Ring::with_vnodes)).
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
            ring_kind: RingKind::default(),
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
        let snap = Arc::new(ServiceSnapshot::empty(
            service,
            self.inner.vnodes,
            self.inner.ring_kind,
        ));
        let (tx, _) = watch::channel(snap.clone());
        let slot = Arc::new(Slot {
            name: Arc::from(service),
            current: ArcSwap::new(snap),
            tx,
            write: Mutex::new(Sources::default()),
            building: AtomicBool::new(false),
            routed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            empty_since: Mutex::new(None),
            #[cfg(test)]
            builds: Default::default(),
        });
        let mut map = Slots::clone(&self.inner.slots.load());
        map.insert(service.to_owned(), slot.clone());
        self.inner.slots.store(Arc::new(map));
        slot
    }

    /// Forgets the services that have shown no instance in any source for at least `grace` and
    /// that nobody subscribes to ([`Directory::subscribe`], [`Directory::changes`], a
    /// discovery of that one service): [`Directory::services`], the feed's resyncs and what is
    /// built on them stop listing them. Returns how many were forgotten.
    ///
    /// A directory that discovers every service ([`Scope::All`](crate::Scope::All)) otherwise
    /// keeps every name it has seen: one service per pull request or job would grow it without
    /// bound. A forgotten service that gets an instance again comes back as new.
    pub fn forget_empty(&self, grace: Duration) -> usize {
        let now = Instant::now();
        let candidates: Vec<Arc<Slot>> = self
            .inner
            .slots
            .load()
            .values()
            .filter(|s| s.empty_for(now) >= Some(grace))
            .cloned()
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        let _g = lock(&self.inner.add_slot);
        let mut map = Slots::clone(&self.inner.slots.load());
        let mut forgotten = 0;
        for slot in candidates {
            // Under the slot's write lock: no publication is under way, and one that comes
            // after sees `retired` and goes to a new slot.
            let _w = lock(&slot.write);
            if slot.empty_for(now) < Some(grace) || slot.tx.receiver_count() > 0 {
                continue;
            }
            slot.retired.store(true, Ordering::SeqCst);
            map.remove(&*slot.name);
            forgotten += 1;
        }
        self.inner.slots.store(Arc::new(map));
        forgotten
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
            None => Arc::new(ServiceSnapshot::empty(
                service,
                self.inner.vnodes,
                self.inner.ring_kind,
            )),
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

    /// A stream of [`Change`](crate::Change)s to `service`'s online instances: first an `Insert` for every current
    /// instance, then one event per difference between consecutive views. Bursts are coalesced: a
    /// consumer that falls behind sees the net change, never a replay.
    pub fn changes(&self, service: &str) -> Changes {
        Changes::new(self.subscribe(service))
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

    /// How this directory's rings route (see [`DirectoryBuilder::ring_kind`]).
    pub fn ring_kind(&self) -> RingKind {
        self.inner.ring_kind
    }

    /// Claims a source's name and precedence in this directory (see [`Directory::source`]): both
    /// must be free, and neither the backend's.
    pub(crate) fn claim_source(&self, name: &str, precedence: i32) -> Result<SourceKey> {
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
        Ok(SourceKey::new(name, precedence))
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
        if slot.retired.load(Ordering::SeqCst) {
            // Forgotten between the look-up and the lock: the service starts a new slot.
            drop(sources);
            return self.update(service, f);
        }
        let cur = slot.current.load_full();
        let Some((next, changes)) = f(&cur, &mut sources) else {
            return;
        };
        {
            let mut since = lock(&slot.empty_since);
            if next.all.is_empty() && !next.stale {
                since.get_or_insert_with(Instant::now);
            } else {
                *since = None;
            }
        }
        // Every update of every unit test checks the incremental changes against a full diff
        // (up to 5,000 instances, so that a test may time a large service's changes).
        #[cfg(test)]
        if next.all.len() <= 5000 {
            assert_eq!(
                changes,
                crate::read::snapshot::diff(&cur, &next),
                "{service}"
            );
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
    ring_kind: RingKind,
    journal_capacity: usize,
}

impl DirectoryBuilder {
    /// Ring points per instance at the default weight (1 to
    /// [`MAX_VNODES`](crate::MAX_VNODES); default [`DEFAULT_VNODES`]).
    pub fn vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes;
        self
    }

    /// How [`Directory::find`] and every ring of this directory route a key (default
    /// [`RingKind::MultiProbe`]). With [`RingKind::GrpcRingHash`], a key goes to the instance a
    /// gRPC client with `ring_hash` sends it to over this directory's xDS answer (`registry serve
    /// --xds ADDR --xds-balancing ring-hash`, the key in the `x-key` header): one owner per key in
    /// Rust and in every gRPC language.
    ///
    /// ```
    /// use registry_engine::{Directory, RingKind};
    ///
    /// let dir = Directory::builder().ring_kind(RingKind::GrpcRingHash).build();
    /// assert_eq!(dir.ring_kind(), RingKind::GrpcRingHash);
    /// ```
    pub fn ring_kind(mut self, kind: RingKind) -> Self {
        self.ring_kind = kind;
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
                slots: ArcSwap::from_pointee(Slots::new()),
                add_slot: Mutex::new(()),
                empty: Instances::new(),
                vnodes: self.vnodes.clamp(1, crate::MAX_VNODES),
                ring_kind: self.ring_kind,
                journal: Journal::new(self.journal_capacity),
                sources: Mutex::new(BTreeMap::new()),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
