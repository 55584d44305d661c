//! Discover (Pulse's Discover, without polling): list, then watch from the listed revision; resume
//! after a broken stream, re-list after `Compacted`, keep the last good view (marked stale) while
//! the backend is unreachable, and skip values that do not decode.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use registry_core::counters::{Bump, Counter};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::backoff::Backoff;
use crate::collections::instances::InstanceMap;
use crate::model::instance::Instance;
use crate::model::layout::Layout;
use crate::read::directory::Directory;
use crate::read::probe::{self, ProbeOptions};
use crate::read::snapshot::Touched;
use crate::telemetry::Telemetry;
use registry_core::backend::{Backend, Revision};
use registry_core::config::{check_duration, check_max_duration};
use registry_core::error::{Error, ErrorKind, Result};
use registry_core::watch::{Event, EventKind, KeyValue};

/// What a discovery covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// One service.
    Service(String),
    /// Every service in the namespace.
    All,
}

/// How a discovery runs.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    poll: Option<Duration>,
    op_timeout: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
    probe: Option<ProbeOptions>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            poll: None,
            op_timeout: None,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            probe: None,
        }
    }
}

impl DiscoveryOptions {
    /// Watch mode (the default): list once, then follow the backend's change feed.
    pub fn new() -> Self {
        DiscoveryOptions::default()
    }

    /// Poll mode (Pulse's): list every `interval` instead of watching. For parity, and for backends
    /// whose watch is disabled. The interval must be positive and at most
    /// [`MAX_DURATION`](registry_core::config::MAX_DURATION): the discovery refuses to start otherwise.
    pub fn poll(mut self, interval: Duration) -> Self {
        self.poll = Some(interval);
        self
    }

    /// Deadline for each list (default: the registry's operation timeout).
    pub fn op_timeout(mut self, t: Duration) -> Self {
        self.op_timeout = Some(t);
        self
    }

    /// Retry backoff bounds after errors (default 100 ms to 5 s, jittered).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Probes instances for liveness and hides those that fail.
    pub fn probe(mut self, probe: ProbeOptions) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Checks every duration: the poll and probe intervals and the timeout must be positive (a
    /// zero interval would spin, or panic in `tokio::time::interval`), and every one at most
    /// [`MAX_DURATION`](registry_core::config::MAX_DURATION).
    fn validate(&self) -> Result<()> {
        if let Some(poll) = self.poll {
            check_duration("discovery poll interval", poll)?;
        }
        if let Some(t) = self.op_timeout {
            check_duration("discovery operation timeout", t)?;
        }
        check_max_duration("discovery backoff base", self.backoff_base)?;
        check_max_duration("discovery backoff maximum", self.backoff_max)?;
        if let Some(p) = &self.probe {
            check_duration("probe interval", p.interval)?;
        }
        Ok(())
    }

    pub(crate) fn with_default_timeout(mut self, t: Duration) -> Self {
        self.op_timeout.get_or_insert(t);
        self
    }
}

/// The upper bounds, in seconds, of the buckets of [`ApplyDelay`] (the last bucket, above them
/// all, is unbounded).
pub const APPLY_DELAY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// How long watch events took from reaching the discovery to being published in its
/// [`Directory`] (decoding, the new snapshot, the ring, the change feed): one observation per
/// batch of events read together, counted in fixed buckets.
///
/// This is the part of the propagation delay that happens in this process, and the part that
/// grows with a service's size and with the load on the process. The backend's own delay (a write
/// committed, then sent to watchers) is not included: etcd, Consul and Redis give their events no
/// time that a reader could compare with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyDelay {
    /// Observations per bucket, not cumulative: `buckets[i]` counts delays above
    /// `APPLY_DELAY_BUCKETS[i - 1]` and at most `APPLY_DELAY_BUCKETS[i]`; the last element counts
    /// those above every bound.
    pub buckets: [u64; APPLY_DELAY_BUCKETS.len() + 1],
    /// The sum of every observed delay, in microseconds.
    pub sum_micros: u64,
}

impl ApplyDelay {
    /// How many delays were observed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

registry_core::counters! {
    /// Counters of one discovery.
    struct DiscoveryStats {
        /// Where the counters are also recorded (the `metrics` facade).
        tel: Telemetry,
    } =>
    /// A copy of a discovery's counters.
    pub struct DiscoveryCounts {
        /// Full listings made (the first one, and every re-list after compaction or in poll mode).
        lists,
        /// Watch streams opened (the first one and every resumption).
        watches,
        /// Watch events applied.
        events,
        /// Values under the namespace that did not decode and were skipped.
        malformed,
        /// Backend errors met (each followed by a retry).
        errors,
        /// How long watch events took from arriving to being published in the directory.
        apply_delay: DelayHistogram => ApplyDelay,
    }
}

impl DiscoveryStats {
    fn inc(&self, c: &AtomicU64, name: &'static str) {
        c.bump();
        self.tel.count(name);
    }

    fn observe_apply_delay(&self, d: Duration) {
        self.tel.seconds("registry_apply_delay_seconds", d);
        self.apply_delay.observe(d);
    }
}

/// The live side of [`ApplyDelay`]: a bucket count per bound and the sum.
#[derive(Debug, Default)]
struct DelayHistogram {
    buckets: [AtomicU64; APPLY_DELAY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl DelayHistogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = APPLY_DELAY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(APPLY_DELAY_BUCKETS.len());
        self.buckets[i].bump();
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl Counter for DelayHistogram {
    type Snapshot = ApplyDelay;

    fn snapshot(&self) -> ApplyDelay {
        ApplyDelay {
            buckets: std::array::from_fn(|i| self.buckets[i].snapshot()),
            sum_micros: self.sum_micros.snapshot(),
        }
    }
}

/// A running discovery. Cheap to clone: clones share the running discovery, which stops when the
/// last of them is dropped (the directory keeps the last view). [`Registry::discover`] and
/// [`Registry::discover_all`] hand out clones of one discovery per scope while it runs.
///
/// [`Registry::discover`]: crate::Registry::discover
/// [`Registry::discover_all`]: crate::Registry::discover_all
#[derive(Clone)]
pub struct Discovery {
    run: Arc<Running>,
}

/// What the clones of a [`Discovery`] share.
pub(crate) struct Running {
    directory: Directory,
    stats: Arc<DiscoveryStats>,
    synced: watch::Receiver<bool>,
    /// The worker and the probe: aborted when the last handle goes (a `JoinSet` aborts its
    /// tasks when dropped).
    _tasks: JoinSet<()>,
    scope: Scope,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("scope", &self.run.scope)
            .field("counts", &self.counts())
            .finish()
    }
}

impl Discovery {
    pub(crate) async fn start(
        backend: Arc<dyn Backend>,
        layout: Layout,
        directory: Directory,
        scope: Scope,
        opts: DiscoveryOptions,
    ) -> Result<Discovery> {
        if let Scope::Service(s) = &scope {
            crate::model::names::validate_service(s)?;
        }
        opts.validate()?;
        let stats = Arc::new(DiscoveryStats {
            tel: Telemetry::new(layout.namespace()),
            ..DiscoveryStats::default()
        });
        let (synced_tx, synced_rx) = watch::channel(false);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let worker = Watcher {
            backend,
            layout,
            directory: directory.clone(),
            scope: scope.clone(),
            opts: opts.clone(),
            stats: stats.clone(),
            view: BTreeMap::new(),
            revision: 0,
            logged: HashSet::new(),
            synced: synced_tx,
            first: Some(first_tx),
            events_since_list: 0,
        };
        let span = tracing::info_span!("discovery", namespace = worker.layout.namespace(), scope = ?worker.scope);
        let mut tasks = JoinSet::new();
        tasks.spawn(tracing::Instrument::instrument(worker.run(), span));
        // Wait for the first attempt (success or failure) so `get` answers right away. A
        // permanent refusal (credentials, permissions, an unsupported operation) is the caller's
        // to see now, not a view that stays unsynced for ever.
        if let Ok(Err(e)) = first_rx.await {
            return Err(e);
        }
        if let Some(p) = opts.probe.clone() {
            let dir = directory.clone();
            let scope = scope.clone();
            let services = move || match &scope {
                Scope::Service(s) => vec![s.clone()],
                Scope::All => dir.services(),
            };
            tasks.spawn(probe::run(directory.clone(), services, p));
        }
        Ok(Discovery {
            run: Arc::new(Running {
                directory,
                stats,
                synced: synced_rx,
                _tasks: tasks,
                scope,
            }),
        })
    }

    /// Another handle on the same running discovery, if one still runs.
    pub(crate) fn from_weak(weak: &std::sync::Weak<Running>) -> Option<Discovery> {
        weak.upgrade().map(|run| Discovery { run })
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Running> {
        Arc::downgrade(&self.run)
    }

    /// The directory this discovery feeds.
    pub fn directory(&self) -> &Directory {
        &self.run.directory
    }

    /// What this discovery covers.
    pub fn scope(&self) -> &Scope {
        &self.run.scope
    }

    /// The counters so far.
    pub fn counts(&self) -> DiscoveryCounts {
        self.run.stats.snapshot()
    }

    /// Whether the view has been loaded from the backend at least once.
    pub fn is_synced(&self) -> bool {
        *self.run.synced.borrow()
    }

    /// Waits until the view has been loaded from the backend at least once.
    pub async fn synced(&self) {
        let mut rx = self.run.synced.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The discovery loop's state: the decoded view, by service then id.
struct Watcher {
    backend: Arc<dyn Backend>,
    layout: Layout,
    directory: Directory,
    scope: Scope,
    opts: DiscoveryOptions,
    stats: Arc<DiscoveryStats>,
    view: BTreeMap<String, InstanceMap>,
    revision: Revision,
    /// Keys whose bad value was already logged (logged once per key until it changes to good).
    logged: HashSet<String>,
    synced: watch::Sender<bool>,
    /// Told the outcome of the first listing: `start` returns a permanent error from it.
    first: Option<tokio::sync::oneshot::Sender<Result<()>>>,
    /// Events applied since the last listing: a watch that delivered nothing before answering
    /// `Compacted` again makes the next re-list wait (a backend that keeps answering it must not
    /// become a hot loop).
    events_since_list: u64,
}

enum WatchEnd {
    /// History is gone: list again.
    Relist,
    /// The stream broke or could not be opened: resume from the last revision after a pause.
    Broken(Error),
}

impl Watcher {
    fn prefix(&self) -> String {
        match &self.scope {
            Scope::Service(s) => self.layout.service_prefix(s),
            Scope::All => self.layout.all_prefix(),
        }
    }

    fn op_timeout(&self) -> Duration {
        self.opts.op_timeout.unwrap_or(Duration::from_secs(10))
    }

    fn services(&self) -> Vec<String> {
        match &self.scope {
            Scope::Service(s) => vec![s.clone()],
            Scope::All => self.view.keys().cloned().collect(),
        }
    }

    fn mark_stale(&self, stale: bool) {
        for s in self.services() {
            self.directory.set_stale(&s, stale);
            self.stats.tel.stale(&s, stale);
        }
    }

    fn first_done(&mut self, outcome: Result<()>) {
        if let Some(tx) = self.first.take() {
            let _ = tx.send(outcome);
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(self.opts.backoff_base, self.opts.backoff_max);
        let mut relist_backoff = Backoff::new(self.opts.backoff_base, self.opts.backoff_max);
        loop {
            match self.list().await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    self.stats
                        .inc(&self.stats.errors, "registry_discovery_errors_total");
                    if self.first.is_some() && e.kind().is_permanent() {
                        tracing::warn!(scope = ?self.scope, error = %e, "discovery: the backend refuses the listing");
                        self.first_done(Err(e));
                        return;
                    }
                    tracing::warn!(scope = ?self.scope, error = %e, "discovery: list failed; keeping the last view (stale)");
                    self.mark_stale(true);
                    if let Scope::Service(s) = &self.scope {
                        self.directory.set_stale(s, true);
                    }
                    self.first_done(Ok(()));
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
            self.first_done(Ok(()));
            self.events_since_list = 0;
            if let Some(interval) = self.opts.poll {
                tokio::time::sleep(interval).await;
                continue;
            }
            // Watch from the listing; resume after breaks; list again only when history is gone.
            loop {
                match self.follow().await {
                    WatchEnd::Relist => break,
                    WatchEnd::Broken(e) => {
                        self.stats
                            .inc(&self.stats.errors, "registry_discovery_errors_total");
                        tracing::warn!(scope = ?self.scope, error = %e, revision = self.revision, "discovery: watch broken; resuming");
                        self.mark_stale(true);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
            if self.events_since_list == 0 {
                // Compacted again with nothing in between: wait before the next listing.
                let pause = relist_backoff.next_delay();
                tracing::warn!(scope = ?self.scope, revision = self.revision, ?pause, "discovery: history compacted again right after a listing; listing again after a pause");
                tokio::time::sleep(pause).await;
            } else {
                relist_backoff.reset();
                tracing::info!(scope = ?self.scope, revision = self.revision, "discovery: history compacted; listing again");
            }
        }
    }

    async fn list(&mut self) -> Result<()> {
        let prefix = self.prefix();
        let listing = match timeout(self.op_timeout(), self.backend.list(&prefix)).await {
            Ok(r) => r?,
            Err(_) => return Err(Error::new(ErrorKind::Timeout, "list timed out")),
        };
        self.stats
            .inc(&self.stats.lists, "registry_discovery_lists_total");
        let mut next: BTreeMap<String, InstanceMap> = BTreeMap::new();
        if let Scope::Service(s) = &self.scope {
            next.insert(s.clone(), InstanceMap::new());
        }
        let mut seen = HashSet::new();
        for kv in &listing.entries {
            seen.insert(kv.key.clone());
            if let Some((service, inst)) = self.decode(kv) {
                next.entry(service).or_default().insert(inst);
            }
        }
        self.logged.retain(|k| seen.contains(k));
        // Services that vanished entirely are published empty: that is the backend's truth.
        for service in self.view.keys() {
            if !next.contains_key(service) {
                self.directory
                    .publish(service, InstanceMap::new(), listing.revision, true);
            }
        }
        for (service, instances) in &next {
            self.directory
                .publish(service, instances.clone(), listing.revision, true);
        }
        self.view = next;
        // A listing is the truth, even if the backend's revisions restarted lower.
        self.revision = listing.revision;
        self.synced.send_replace(true);
        tracing::debug!(
            revision = listing.revision,
            keys = listing.entries.len(),
            "discovery: listed"
        );
        Ok(())
    }

    /// Decodes one entry, or logs (once per key) and counts why it is skipped.
    fn decode(&mut self, kv: &KeyValue) -> Option<(String, Arc<Instance>)> {
        let r = match self.layout.parse(&kv.key) {
            Some((service, id)) => {
                Instance::decode(service, id, &kv.value).map(|i| (service.to_owned(), Arc::new(i)))
            }
            None => Err(Error::new(
                ErrorKind::Decode,
                "key does not have the shape {namespace}/{service}/{id}",
            )),
        };
        match r {
            Ok(v) => {
                self.logged.remove(&kv.key);
                Some(v)
            }
            Err(e) => {
                self.stats
                    .inc(&self.stats.malformed, "registry_discovery_skipped_total");
                if self.logged.insert(kv.key.clone()) {
                    tracing::warn!(key = %kv.key, error = %e, "discovery: skipping a value that is not a valid instance");
                }
                None
            }
        }
    }

    async fn follow(&mut self) -> WatchEnd {
        let prefix = self.prefix();
        let opened = timeout(
            self.op_timeout(),
            self.backend.watch(&prefix, self.revision),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == ErrorKind::Compacted => return WatchEnd::Relist,
            Ok(Err(e)) => return WatchEnd::Broken(e),
            Err(_) => return WatchEnd::Broken(Error::new(ErrorKind::Timeout, "watch timed out")),
        };
        self.stats
            .inc(&self.stats.watches, "registry_discovery_watches_total");
        tracing::debug!(revision = self.revision, "discovery: watching");
        self.mark_stale(false);
        loop {
            let Some(item) = stream.next().await else {
                return WatchEnd::Broken(Error::unavailable("watch stream ended"));
            };
            let received = Instant::now();
            let mut batch = Vec::new();
            match item {
                Ok(ev) => batch.push(ev),
                Err(e) if e.kind() == ErrorKind::Compacted => return WatchEnd::Relist,
                Err(e) => return WatchEnd::Broken(e),
            }
            // Coalesce whatever is already buffered into one publication per service.
            let mut end = None;
            while let Some(Some(item)) = stream.next().now_or_never() {
                match item {
                    Ok(ev) => batch.push(ev),
                    Err(e) if e.kind() == ErrorKind::Compacted => {
                        end = Some(WatchEnd::Relist);
                        break;
                    }
                    Err(e) => {
                        end = Some(WatchEnd::Broken(e));
                        break;
                    }
                }
            }
            self.apply(batch);
            self.stats.observe_apply_delay(received.elapsed());
            if let Some(end) = end {
                return end;
            }
        }
    }

    fn apply(&mut self, events: Vec<Event>) {
        self.events_since_list += events.len() as u64;
        // Per service changed: its map before these events and the ids they changed, so that the
        // directory need not compare the maps to find them.
        let mut dirty = Dirty::new();
        for ev in events {
            self.stats
                .inc(&self.stats.events, "registry_discovery_events_total");
            self.revision = self.revision.max(ev.revision);
            let parsed = self
                .layout
                .parse(&ev.key)
                .map(|(s, i)| (s.to_owned(), i.to_owned()));
            match ev.kind {
                EventKind::Put => {
                    let kv = KeyValue {
                        key: ev.key.clone(),
                        value: ev.value,
                        revision: ev.revision,
                        lease: None,
                    };
                    match self.decode(&kv) {
                        Some((service, inst)) => {
                            if self.in_scope(&service) {
                                let id = inst.id.clone();
                                let m = self.view.entry(service.clone()).or_default();
                                let (_, touched) = dirty
                                    .entry(service)
                                    .or_insert_with(|| (m.clone(), Touched::new()));
                                let old = m.insert(inst.clone());
                                // The entry before the batch is the one its first event found.
                                touched.entry(id).or_insert((old, None)).1 = Some(inst);
                            }
                        }
                        None => {
                            // A bad value replaced whatever was there: that instance is gone.
                            if let Some((service, id)) = parsed {
                                self.remove_from_view(service, id, &mut dirty);
                            }
                        }
                    }
                }
                EventKind::Delete => {
                    self.logged.remove(&ev.key);
                    if let Some((service, id)) = parsed {
                        self.remove_from_view(service, id, &mut dirty);
                    }
                }
            }
        }
        for (service, (before, touched)) in dirty {
            let instances = self.view.get(&service).cloned().unwrap_or_default();
            // Every service discovered: one whose last instance left is dropped from the view
            // (the directory shows it empty, and may forget it), or names that come and go
            // would grow the view without bound.
            if instances.is_empty() && matches!(self.scope, Scope::All) {
                self.view.remove(&service);
            }
            self.directory
                .publish_changed(&service, instances, self.revision, &before, &touched);
        }
    }

    /// Removes `id` from `service`'s view; if it was there, records the change in `dirty` (with
    /// the view as it was, if this is the service's first change of the batch).
    fn remove_from_view(&mut self, service: String, id: String, dirty: &mut Dirty) {
        if let Some(m) = self.view.get_mut(&service) {
            let before = m.clone();
            if let Some(old) = m.remove(&id) {
                let (_, touched) = dirty.entry(service).or_insert((before, Touched::new()));
                touched.entry(id).or_insert((Some(old), None)).1 = None;
            }
        }
    }

    fn in_scope(&self, service: &str) -> bool {
        match &self.scope {
            Scope::Service(s) => s == service,
            Scope::All => true,
        }
    }
}

/// Per service changed by a batch of events: its map before them and the ids they changed.
type Dirty = BTreeMap<String, (InstanceMap, Touched)>;
