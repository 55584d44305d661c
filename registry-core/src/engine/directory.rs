//! The directory: the local, lock-free view of live instances per service (Pulse's Directory plus
//! Dispatch's registry).
//!
//! Readers never lock: [`Directory::get`], [`Directory::find`] and friends load an immutable
//! [`ServiceSnapshot`] through an atomic pointer. Writers (discovery and probing) build a new snapshot,
//! including a freshly built [`Ring`], and swap it in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use super::instance::Instance;
use super::ring::{DEFAULT_VNODES, Ring};
use crate::backend::Revision;

/// The live online instances of a service, shared and immutable.
pub type Instances = Arc<[Arc<Instance>]>;

/// An immutable view of one service at one revision.
#[derive(Clone)]
pub struct ServiceSnapshot {
    service: String,
    all: BTreeMap<String, Arc<Instance>>,
    hidden: BTreeSet<String>,
    online: Instances,
    /// Built from `online` after the snapshot is published, so that publishing never waits for it;
    /// a reader needing it first builds it (once).
    ring: OnceLock<Ring>,
    vnodes: u32,
    revision: Revision,
    stale: bool,
    synced: bool,
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
    fn empty(service: &str) -> Self {
        ServiceSnapshot {
            service: service.to_owned(),
            all: BTreeMap::new(),
            hidden: BTreeSet::new(),
            online: Arc::from(Vec::new()),
            ring: OnceLock::new(),
            vnodes: DEFAULT_VNODES,
            revision: 0,
            stale: false,
            synced: false,
        }
    }

    fn rebuild(
        service: &str,
        all: BTreeMap<String, Arc<Instance>>,
        hidden: BTreeSet<String>,
        revision: Revision,
        stale: bool,
        vnodes: u32,
    ) -> Self {
        let online: Vec<Arc<Instance>> = all
            .values()
            .filter(|i| i.is_online() && !hidden.contains(&i.id))
            .cloned()
            .collect();
        ServiceSnapshot {
            service: service.to_owned(),
            all,
            hidden,
            online: Arc::from(online),
            ring: OnceLock::new(),
            vnodes,
            revision,
            stale,
            synced: true,
        }
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
    pub fn all(&self) -> &BTreeMap<String, Arc<Instance>> {
        &self.all
    }

    /// Whether a liveness probe currently hides `id`.
    pub fn is_hidden(&self, id: &str) -> bool {
        self.hidden.contains(id)
    }

    /// The routing ring over [`online`](Self::online), built from the full membership (on first
    /// use, if the publisher has not built it yet).
    pub fn ring(&self) -> &Ring {
        self.ring
            .get_or_init(|| Ring::with_vnodes(self.online.iter().cloned(), self.vnodes))
    }

    /// The backend revision this view reflects.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the backend is currently unreachable: this is the last good view, kept as is.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Whether the view has been loaded from the backend at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }
}

struct Slot {
    current: ArcSwap<ServiceSnapshot>,
    tx: watch::Sender<Arc<ServiceSnapshot>>,
    /// Serialises writers; readers never take it.
    write: Mutex<()>,
}

struct Inner {
    slots: ArcSwap<HashMap<String, Arc<Slot>>>,
    add_slot: Mutex<()>,
    empty: Instances,
    vnodes: u32,
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

    /// An empty directory whose rings use `vnodes` points per instance at the default weight.
    pub fn with_vnodes(vnodes: u32) -> Self {
        Directory {
            inner: Arc::new(Inner {
                slots: ArcSwap::from_pointee(HashMap::new()),
                add_slot: Mutex::new(()),
                empty: Arc::from(Vec::new()),
                vnodes: vnodes.max(1),
            }),
        }
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
        let snap = Arc::new(ServiceSnapshot::empty(service));
        let (tx, _) = watch::channel(snap.clone());
        let slot = Arc::new(Slot {
            current: ArcSwap::new(snap),
            tx,
            write: Mutex::new(()),
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
            None => Arc::new(ServiceSnapshot::empty(service)),
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
    pub fn find(&self, service: &str, key: impl AsRef<[u8]>) -> Option<Arc<Instance>> {
        let slots = self.inner.slots.load();
        let snap = slots.get(service)?.current.load();
        snap.ring().find(key.as_ref()).cloned()
    }

    /// Up to `count` distinct online instances of `service`, walking the ring from `key`.
    pub fn find_n(&self, count: usize, service: &str, key: impl AsRef<[u8]>) -> Vec<Arc<Instance>> {
        let slots = self.inner.slots.load();
        let Some(slot) = slots.get(service) else {
            return Vec::new();
        };
        let snap = slot.current.load();
        snap.ring()
            .find_n(count, key.as_ref())
            .into_iter()
            .cloned()
            .collect()
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

    /// Replaces `service`'s instances as of `revision`. An incremental update older than the current
    /// view is ignored; an `authoritative` one (a full listing) always applies, since a backend that
    /// lost its history may restart its revisions lower.
    pub(crate) fn publish(
        &self,
        service: &str,
        all: BTreeMap<String, Arc<Instance>>,
        revision: Revision,
        authoritative: bool,
    ) {
        self.update(service, |cur| {
            if !authoritative && cur.synced && revision < cur.revision {
                return None;
            }
            Some(ServiceSnapshot::rebuild(
                service,
                all,
                cur.hidden.clone(),
                revision,
                false,
                self.inner.vnodes,
            ))
        });
    }

    /// Marks `service`'s view stale (backend unreachable) or fresh again, keeping its instances.
    pub(crate) fn set_stale(&self, service: &str, stale: bool) {
        self.update(service, |cur| {
            (cur.stale != stale).then(|| ServiceSnapshot {
                stale,
                ..ServiceSnapshot::clone(cur)
            })
        });
    }

    /// Hides the instances whose liveness probe fails (and shows the others again).
    pub(crate) fn set_hidden(&self, service: &str, hidden: BTreeSet<String>) {
        self.update(service, |cur| {
            (cur.hidden != hidden).then(|| {
                ServiceSnapshot::rebuild(
                    service,
                    cur.all.clone(),
                    hidden,
                    cur.revision,
                    cur.stale,
                    self.inner.vnodes,
                )
            })
        });
    }

    fn update(&self, service: &str, f: impl FnOnce(&ServiceSnapshot) -> Option<ServiceSnapshot>) {
        let slot = self.slot_or_create(service);
        let _g = lock(&slot.write);
        let cur = slot.current.load_full();
        let Some(next) = f(&cur) else { return };
        let next = Arc::new(next);
        slot.current.store(next.clone());
        slot.tx.send_replace(next.clone());
        // Subscribers already see the new membership; build its ring off their path and off the
        // publisher's (a ring of 10,000 instances takes ~90 ms). A reader that needs it first builds
        // it itself; the ring is built once either way.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || {
                    next.ring();
                });
            }
            Err(_) => {
                next.ring();
            }
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
    views: WatchStream<Arc<ServiceSnapshot>>,
    held: BTreeMap<String, Arc<Instance>>,
    pending: VecDeque<Change>,
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes")
            .field("held", &self.held.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Changes {
    fn new(rx: watch::Receiver<Arc<ServiceSnapshot>>) -> Self {
        Changes {
            views: WatchStream::new(rx),
            held: BTreeMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// Queues the differences between what the consumer holds and `snap`.
    fn diff(&mut self, snap: &ServiceSnapshot) {
        let next: BTreeMap<String, Arc<Instance>> = snap
            .online
            .iter()
            .map(|i| (i.id.clone(), i.clone()))
            .collect();
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
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Poll::Ready(Some(c));
            }
            match Pin::new(&mut self.views).poll_next(cx) {
                Poll::Ready(Some(snap)) => self.diff(&snap),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
