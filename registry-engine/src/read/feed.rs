//! The directory's namespace-wide change feed: every change to every service, in publish order,
//! numbered, with a bounded journal of recent changes to resume from.
//!
//! Each time the [`Directory`] publishes a new view of a service, it compares it with the previous
//! one and appends one [`DirectoryChange`] per difference to its journal, under one lock, with
//! consecutive sequence numbers. Consumers ([`AllChanges`]) keep only a cursor into the journal and
//! copy events out of it: publishing never waits for a consumer, and a consumer that falls further
//! behind than the journal holds gets an explicit [`Resync`] (a full snapshot) instead of a gap.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::model::instance::Instance;
use crate::read::directory::{Directory, ServiceSnapshot};
use registry_core::backend::Revision;

/// How many recent changes a [`Directory`] keeps for [`Directory::all_changes_since`] unless told
/// otherwise ([`DirectoryBuilder::journal_capacity`](crate::DirectoryBuilder::journal_capacity)).
pub const DEFAULT_JOURNAL_CAPACITY: usize = 4096;

/// How many events a consumer copies out of the journal per lock.
const READ_BATCH: usize = 256;

/// One change to one service of a [`Directory`], as journalled when the directory published it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectoryChange {
    /// Position in the directory's feed: starts at 1 and increases by one per change, across all
    /// services. The changes of one publication have consecutive numbers. Pass the last one seen
    /// to [`Directory::all_changes_since`] to resume after it.
    pub seq: u64,
    /// The service that changed.
    pub service: Arc<str>,
    /// The backend revision of the view the change belongs to.
    pub revision: Revision,
    /// When the directory published it (wall clock).
    pub time: SystemTime,
    /// What changed.
    pub kind: ChangeKind,
}

impl DirectoryChange {
    /// The instance the change is about (`None` for [`ChangeKind::Stale`] and
    /// [`ChangeKind::Fresh`]).
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        self.kind.instance()
    }
}

/// What a [`DirectoryChange`] is.
///
/// Instance changes cover every listed instance (online or offline, see
/// [`ServiceSnapshot::all`]), not only the routable ones: an instance going offline, or being hidden
/// by a failing probe, is an [`Update`](ChangeKind::Update). An instance is routed on (it is in
/// [`Directory::get`]) when [`ChangeKind::routable`] says so.
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
    /// ([`ServiceSnapshot::is_stale`]).
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
    /// probe (what [`Directory::get`] returns).
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

/// What an [`AllChanges`] stream yields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DirectoryEvent {
    /// The next change, in sequence.
    Change(DirectoryChange),
    /// Start over from this snapshot: replace everything held. The first item of
    /// [`Directory::all_changes`], and what a consumer gets instead of changes it can no longer be
    /// given.
    Resync(Resync),
}

impl DirectoryEvent {
    /// The sequence number this event brings the consumer to.
    pub fn seq(&self) -> u64 {
        match self {
            DirectoryEvent::Change(c) => c.seq,
            DirectoryEvent::Resync(r) => r.seq,
        }
    }
}

/// A full view of the directory as of a sequence number: every change numbered up to `seq` is in
/// it, none after. The stream continues with change `seq + 1`.
#[derive(Clone)]
#[non_exhaustive]
pub struct Resync {
    /// The sequence number of the last change reflected in `services` (0 if none yet).
    pub seq: u64,
    /// Why the consumer is given a snapshot.
    pub reason: ResyncReason,
    /// Every service the directory knows of, sorted by name (unsynced ones included, empty).
    pub services: Vec<Arc<ServiceSnapshot>>,
}

impl fmt::Debug for Resync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resync")
            .field("seq", &self.seq)
            .field("reason", &self.reason)
            .field(
                "services",
                &self
                    .services
                    .iter()
                    .map(|s| s.service())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Resync {
    /// Every listed instance of the snapshot as the [`ChangeKind::Insert`]s that would rebuild it
    /// from nothing, service by service, by id.
    pub fn inserts(&self) -> impl Iterator<Item = (&str, ChangeKind)> + '_ {
        self.services.iter().flat_map(|s| {
            s.all().values().map(move |i| {
                (
                    s.service(),
                    ChangeKind::Insert {
                        instance: i.clone(),
                        hidden: s.is_hidden(&i.id),
                    },
                )
            })
        })
    }
}

/// Why an [`AllChanges`] stream yields a [`Resync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResyncReason {
    /// The stream starts ([`Directory::all_changes`]): the current state.
    Start,
    /// The changes after `after` are no longer in the journal: the resume point was too old, or
    /// the consumer fell further behind than the journal holds. `oldest` is the oldest change the
    /// journal still held.
    Lagged {
        /// The last change the consumer had.
        after: u64,
        /// The oldest change still journalled (the newest number plus one if none is).
        oldest: u64,
    },
    /// The resume point was never issued by this directory (it is ahead of the newest change:
    /// from another directory, or from before a restart).
    Unknown {
        /// The resume point asked for.
        after: u64,
    },
}

struct Entries {
    events: VecDeque<DirectoryChange>,
    /// The number the next change gets.
    next: u64,
}

impl Entries {
    fn oldest(&self) -> u64 {
        self.next - self.events.len() as u64
    }
}

/// The bounded journal of a directory's changes, and the feed's wake-up signal.
pub(crate) struct Journal {
    entries: Mutex<Entries>,
    capacity: usize,
    /// The newest change's number, readable without the lock.
    last: AtomicU64,
    notify: watch::Sender<u64>,
}

impl Journal {
    pub(crate) fn new(capacity: usize) -> Self {
        Journal {
            entries: Mutex::new(Entries {
                events: VecDeque::new(),
                next: 1,
            }),
            capacity: capacity.max(1),
            last: AtomicU64::new(0),
            notify: watch::channel(0).0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Appends `changes` of `service` with consecutive numbers and runs `publish` (which makes the
    /// view they lead to current) under the same lock, so that a [`Resync`] taken under it is
    /// exactly as of its number. Wakes the consumers.
    pub(crate) fn append(
        &self,
        service: &Arc<str>,
        revision: Revision,
        changes: Vec<ChangeKind>,
        publish: impl FnOnce(),
    ) {
        if changes.is_empty() {
            let _g = lock(&self.entries);
            publish();
            return;
        }
        let time = SystemTime::now();
        let last = {
            let mut e = lock(&self.entries);
            for kind in changes {
                if e.events.len() == self.capacity {
                    e.events.pop_front();
                }
                let seq = e.next;
                e.next += 1;
                e.events.push_back(DirectoryChange {
                    seq,
                    service: service.clone(),
                    revision,
                    time,
                    kind,
                });
            }
            publish();
            let last = e.next - 1;
            self.last.store(last, Ordering::Release);
            last
        };
        self.notify.send_replace(last);
    }

    /// A snapshot of everything as of the newest change.
    fn resync(
        &self,
        reason: impl FnOnce(&Entries) -> ResyncReason,
        services: impl FnOnce() -> Vec<Arc<ServiceSnapshot>>,
    ) -> Resync {
        let e = lock(&self.entries);
        Resync {
            seq: e.next - 1,
            reason: reason(&e),
            services: services(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The stream returned by [`Directory::all_changes`] and [`Directory::all_changes_since`]: every
/// change to every service of the directory, services that appear later included, in order.
///
/// It holds only a position in the directory's journal (plus at most one batch of copied events),
/// so a consumer that stops reading costs nothing and holds nobody up; when it reads again after
/// the journal has moved past its position, it gets a [`Resync`] with
/// [`ResyncReason::Lagged`]. The stream never ends while it exists (it keeps the directory alive).
pub struct AllChanges {
    dir: Directory,
    /// The number of the next change to yield.
    next: u64,
    pending: VecDeque<DirectoryEvent>,
    wake: WatchStream<u64>,
}

impl fmt::Debug for AllChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllChanges")
            .field("next", &self.next)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl AllChanges {
    /// A stream starting with a [`Resync`] of the current state.
    pub(crate) fn start(dir: Directory) -> Self {
        let journal = dir.journal();
        // Subscribed before the snapshot: nothing published after it can be missed.
        let wake = WatchStream::from_changes(journal.notify.subscribe());
        let resync = journal.resync(|_| ResyncReason::Start, || dir.snapshots());
        AllChanges {
            next: resync.seq + 1,
            pending: VecDeque::from([DirectoryEvent::Resync(resync)]),
            dir,
            wake,
        }
    }

    /// A stream of the changes after `after`, or a [`Resync`] if `after` was never issued.
    pub(crate) fn since(dir: Directory, after: u64) -> Self {
        let journal = dir.journal();
        let wake = WatchStream::from_changes(journal.notify.subscribe());
        let mut pending = VecDeque::new();
        let mut next = after.saturating_add(1);
        if after > journal.last() {
            let resync = journal.resync(|_| ResyncReason::Unknown { after }, || dir.snapshots());
            next = resync.seq + 1;
            pending.push_back(DirectoryEvent::Resync(resync));
        }
        AllChanges {
            dir,
            next,
            pending,
            wake,
        }
    }

    /// Copies the next batch of changes (or a resync if they are gone) into `pending`.
    fn read(&mut self) {
        let journal = self.dir.journal();
        if journal.last() < self.next {
            return;
        }
        let next = self.next;
        let mut lagged = None;
        {
            let e = lock(&journal.entries);
            let oldest = e.oldest();
            if next < oldest {
                lagged = Some(oldest);
            } else {
                let from = (next - oldest) as usize;
                let to = e.events.len().min(from + READ_BATCH);
                for c in e.events.range(from..to) {
                    self.pending.push_back(DirectoryEvent::Change(c.clone()));
                }
                self.next += (to - from) as u64;
            }
        }
        if lagged.is_some() {
            let dir = &self.dir;
            let resync = journal.resync(
                |e| ResyncReason::Lagged {
                    after: next - 1,
                    oldest: e.oldest(),
                },
                || dir.snapshots(),
            );
            self.next = resync.seq + 1;
            self.pending.push_back(DirectoryEvent::Resync(resync));
        }
    }
}

impl Stream for AllChanges {
    type Item = DirectoryEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<DirectoryEvent>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.pending.pop_front() {
                return Poll::Ready(Some(ev));
            }
            this.read();
            if !this.pending.is_empty() {
                continue;
            }
            match Pin::new(&mut this.wake).poll_next(cx) {
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use futures::{FutureExt, StreamExt};

    use super::*;
    use crate::InstanceState;

    fn inst(service: &str, id: &str) -> Arc<Instance> {
        Arc::new(Instance::new(service, id).addr("10.0.0.1:80"))
    }

    fn view(service: &str, ids: &[&str]) -> BTreeMap<String, Arc<Instance>> {
        ids.iter()
            .map(|id| (id.to_string(), inst(service, id)))
            .collect()
    }

    /// The next event if one is ready now.
    fn ready(feed: &mut AllChanges) -> Option<DirectoryEvent> {
        feed.next()
            .now_or_never()
            .map(|e| e.expect("the feed never ends"))
    }

    fn change(feed: &mut AllChanges) -> DirectoryChange {
        match ready(feed) {
            Some(DirectoryEvent::Change(c)) => c,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn resync(feed: &mut AllChanges) -> Resync {
        match ready(feed) {
            Some(DirectoryEvent::Resync(r)) => r,
            other => panic!("expected a resync, got {other:?}"),
        }
    }

    /// (seq, service, kind, id, revision) of every change ready now.
    fn drain(feed: &mut AllChanges) -> Vec<(u64, String, &'static str, String, Revision)> {
        let mut out = Vec::new();
        while let Some(ev) = ready(feed) {
            let DirectoryEvent::Change(c) = ev else {
                panic!("unexpected {ev:?}")
            };
            let id = c.instance().map(|i| i.id.clone()).unwrap_or_default();
            out.push((c.seq, c.service.to_string(), c.kind.name(), id, c.revision));
        }
        out
    }

    fn row(
        seq: u64,
        service: &str,
        kind: &'static str,
        id: &str,
        revision: Revision,
    ) -> (u64, String, &'static str, String, Revision) {
        (seq, service.into(), kind, id.into(), revision)
    }

    /// Publishes a fixed history over two services (`b` appears only later) and returns it as
    /// the rows the feed must yield.
    fn history(dir: &Directory) -> Vec<(u64, String, &'static str, String, Revision)> {
        dir.publish("a", view("a", &["a1", "a2"]), 1, true);
        dir.publish("b", view("b", &["b1"]), 2, true);
        let mut a = view("a", &["a1", "a3"]);
        a.insert(
            "a1".into(),
            Arc::new(
                Instance::new("a", "a1")
                    .addr("10.0.0.1:80")
                    .state(InstanceState::Offline),
            ),
        );
        dir.publish("a", a, 3, false);
        dir.set_stale("b", true);
        // Same instances, new allocations: nothing changes but the staleness.
        dir.publish("b", view("b", &["b1"]), 4, true);
        dir.set_hidden("a", BTreeSet::from(["a3".to_string()]));
        // Older than the view: ignored, no change.
        dir.publish("a", view("a", &[]), 2, false);
        vec![
            row(1, "a", "insert", "a1", 1),
            row(2, "a", "insert", "a2", 1),
            row(3, "b", "insert", "b1", 2),
            row(4, "a", "update", "a1", 3),
            row(5, "a", "remove", "a2", 3),
            row(6, "a", "insert", "a3", 3),
            row(7, "b", "stale", "", 2),
            row(8, "b", "fresh", "", 4),
            row(9, "a", "update", "a3", 3),
        ]
    }

    #[test]
    fn every_change_of_every_service_arrives_in_order_with_consecutive_numbers() {
        let dir = Directory::new();
        let mut feed = dir.all_changes();
        let start = resync(&mut feed);
        assert_eq!((start.seq, start.reason), (0, ResyncReason::Start));
        assert!(start.services.is_empty());
        assert!(ready(&mut feed).is_none());

        let want = history(&dir);
        assert_eq!(drain(&mut feed), want);
        assert_eq!(dir.last_seq(), 9);

        // The details: what an update carries, hidden flags, staleness in snapshots.
        let mut again = dir.all_changes_since(3);
        let c = change(&mut again);
        assert_eq!(c.kind.name(), "update");
        assert_eq!(c.instance().unwrap().state, InstanceState::Offline);
        assert!(c.kind.routable().is_none(), "offline is not routed on");
        let last = drain(&mut again).pop().unwrap();
        assert_eq!(last.0, 9);
        let mut at9 = dir.all_changes_since(8);
        match change(&mut at9).kind {
            ChangeKind::Update { instance, hidden } => {
                assert!(hidden);
                assert_eq!(instance.id, "a3");
            }
            other => panic!("{other:?}"),
        }
        dir.set_stale("a", true);
        let stale = change(&mut feed);
        assert_eq!((stale.seq, stale.kind.name()), (10, "stale"));
        assert!(dir.snapshot("a").stale_since().is_some());
        assert!(dir.snapshot("b").stale_since().is_none());

        // A late starter's snapshot is exactly as of the newest number.
        let mut late = dir.all_changes();
        let r = resync(&mut late);
        assert_eq!((r.seq, r.reason), (10, ResyncReason::Start));
        let names: Vec<_> = r.services.iter().map(|s| s.service()).collect();
        assert_eq!(names, ["a", "b"]);
        let inserts: Vec<_> = r
            .inserts()
            .map(|(s, k)| (s.to_string(), k.instance().unwrap().id.clone()))
            .collect();
        assert_eq!(
            inserts,
            [("a", "a1"), ("a", "a3"), ("b", "b1")].map(|(s, i)| (s.to_string(), i.to_string()))
        );
        assert!(ready(&mut late).is_none());
    }

    #[test]
    fn resuming_from_the_middle_replays_exactly_the_missed_changes() {
        let dir = Directory::new();
        let want = history(&dir);
        for after in 0..=9 {
            let mut feed = dir.all_changes_since(after);
            assert_eq!(drain(&mut feed), want[after as usize..], "after {after}");
        }
        // And then follows live.
        let mut feed = dir.all_changes_since(5);
        assert_eq!(drain(&mut feed).len(), 4);
        dir.publish("c", view("c", &["c1"]), 5, true);
        assert_eq!(drain(&mut feed), [row(10, "c", "insert", "c1", 5)]);
    }

    #[test]
    fn resuming_from_a_number_the_journal_no_longer_holds_is_an_explicit_resync() {
        let dir = Directory::builder().journal_capacity(4).build();
        history(&dir);
        // Holds 6..=9.
        let mut feed = dir.all_changes_since(5);
        assert_eq!(
            drain(&mut feed).iter().map(|r| r.0).collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
        let mut feed = dir.all_changes_since(4);
        let r = resync(&mut feed);
        assert_eq!(
            r.reason,
            ResyncReason::Lagged {
                after: 4,
                oldest: 6
            }
        );
        assert_eq!(r.seq, 9);
        let held: Vec<_> = r
            .inserts()
            .map(|(s, k)| format!("{s}/{}", k.instance().unwrap().id))
            .collect();
        assert_eq!(held, ["a/a1", "a/a3", "b/b1"]);
        assert!(ready(&mut feed).is_none());
        dir.publish("c", view("c", &["c1"]), 5, true);
        assert_eq!(drain(&mut feed), [row(10, "c", "insert", "c1", 5)]);

        // A number never issued (from a previous process, say) is not silently taken as "now".
        let mut feed = dir.all_changes_since(1000);
        let r = resync(&mut feed);
        assert_eq!(
            (r.seq, r.reason),
            (10, ResyncReason::Unknown { after: 1000 })
        );
    }

    #[test]
    fn a_consumer_that_never_reads_holds_nobody_up_and_is_resynced() {
        let capacity = 16;
        let dir = Directory::builder().journal_capacity(capacity).build();
        let mut stuck = dir.all_changes();
        let mut live = dir.all_changes();
        assert_eq!(resync(&mut live).reason, ResyncReason::Start);
        let mut seen = 0;
        // At most 9 changes per publication: a reader that keeps up never lags.
        for n in 1..=1999u64 {
            let ids: Vec<String> = (0..n % 10).map(|i| format!("i{i}")).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            dir.publish("svc", view("svc", &ids), n, true);
            for (seq, ..) in drain(&mut live) {
                seen += 1;
                assert_eq!(seq, seen, "in order, no gap");
            }
            assert!(dir.journal().entries.lock().unwrap().events.len() <= capacity);
        }
        assert_eq!(seen, dir.last_seq());
        // The stuck consumer buffered nothing meanwhile, and is told it missed changes.
        assert_eq!(stuck.pending.len(), 1, "only its start snapshot");
        assert_eq!(resync(&mut stuck).reason, ResyncReason::Start);
        let r = resync(&mut stuck);
        assert!(
            matches!(r.reason, ResyncReason::Lagged { after: 0, .. }),
            "{r:?}"
        );
        assert_eq!(r.seq, dir.last_seq());
        assert_eq!(r.services[0].all().len(), 9);
        assert!(ready(&mut stuck).is_none());
    }

    /// A publication bigger than the journal reaches a consumer that was up to date as a resync,
    /// not as a partial batch.
    #[test]
    fn a_batch_bigger_than_the_journal_becomes_a_resync() {
        let dir = Directory::builder().journal_capacity(4).build();
        let mut feed = dir.all_changes();
        resync(&mut feed);
        dir.publish("svc", view("svc", &["1", "2", "3", "4", "5", "6"]), 1, true);
        let r = resync(&mut feed);
        assert_eq!(
            r.reason,
            ResyncReason::Lagged {
                after: 0,
                oldest: 3
            }
        );
        assert_eq!(r.services[0].all().len(), 6);
    }

    /// Concurrent publishers on several services and a slow reader on a small journal: applying
    /// what the feed yields (resyncs included) always rebuilds exactly the directory's state as of
    /// the last number seen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applying_the_feed_rebuilds_the_directory() {
        let dir = Directory::builder().journal_capacity(64).build();
        let mut feed = dir.all_changes();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let dir = dir.clone();
                tokio::spawn(async move {
                    let service = format!("s{w}");
                    for n in 0..300u64 {
                        let ids: Vec<String> = (0..(n * 7 + w) % 13)
                            .map(|i| format!("i{}", (i * n) % 17))
                            .collect();
                        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                        dir.publish(&service, view(&service, &ids), n + 1, true);
                        if n % 10 == 0 {
                            dir.set_stale(&service, n % 20 == 0);
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let mut model: BTreeMap<String, (BTreeMap<String, Arc<Instance>>, bool)> = BTreeMap::new();
        let mut last = 0;
        let done = async {
            for w in writers {
                w.await.unwrap();
            }
        };
        tokio::pin!(done);
        let mut finished = false;
        loop {
            let ev = if finished {
                match ready(&mut feed) {
                    Some(ev) => ev,
                    None => break,
                }
            } else {
                tokio::select! {
                    _ = &mut done => { finished = true; continue; }
                    ev = feed.next() => ev.unwrap(),
                }
            };
            match ev {
                DirectoryEvent::Resync(r) => {
                    assert!(r.seq >= last);
                    last = r.seq;
                    model = r
                        .services
                        .iter()
                        .map(|s| {
                            let all = s.all().iter().map(|(k, v)| (k.to_owned(), v.clone()));
                            (s.service().to_string(), (all.collect(), s.is_stale()))
                        })
                        .collect();
                }
                DirectoryEvent::Change(c) => {
                    assert_eq!(c.seq, last + 1, "no gap, no repeat");
                    last = c.seq;
                    let (held, stale) = model.entry(c.service.to_string()).or_default();
                    match c.kind {
                        ChangeKind::Insert { instance, .. } => {
                            assert!(held.insert(instance.id.clone(), instance).is_none());
                        }
                        ChangeKind::Update { instance, .. } => {
                            assert!(held.insert(instance.id.clone(), instance).is_some());
                        }
                        ChangeKind::Remove { instance } => {
                            assert!(held.remove(&instance.id).is_some());
                        }
                        ChangeKind::Stale => *stale = true,
                        ChangeKind::Fresh => *stale = false,
                    }
                }
            }
        }
        assert_eq!(last, dir.last_seq());
        for snap in dir.snapshots() {
            let (held, stale) = &model[snap.service()];
            let all: BTreeMap<String, Arc<Instance>> = snap
                .all()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect();
            assert_eq!(held, &all, "{}", snap.service());
            assert_eq!(*stale, snap.is_stale(), "{}", snap.service());
        }
    }
}
