//! The directory's journal: a bounded, numbered record of recent changes to every service, which
//! the feed ([`AllChanges`](crate::AllChanges)) reads from, and the events the feed yields.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use registry_core::backend::Revision;
use tokio::sync::watch;

use crate::model::instance::Instance;
use crate::read::change::ChangeKind;
use crate::read::snapshot::ServiceSnapshot;

/// How many recent changes a [`Directory`](crate::Directory) keeps for [`Directory::all_changes_since`](crate::Directory::all_changes_since) unless told
/// otherwise ([`DirectoryBuilder::journal_capacity`](crate::DirectoryBuilder::journal_capacity)).
pub const DEFAULT_JOURNAL_CAPACITY: usize = 4096;

/// One change to one service of a [`Directory`](crate::Directory), as journalled when the directory published it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectoryChange {
    /// Position in the directory's feed: starts at 1 and increases by one per change, across all
    /// services. The changes of one publication have consecutive numbers. Pass the last one seen
    /// to [`Directory::all_changes_since`](crate::Directory::all_changes_since) to resume after it.
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

/// What an [`AllChanges`](crate::AllChanges) stream yields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum DirectoryEvent {
    /// The next change, in sequence.
    Change(DirectoryChange),
    /// Start over from this snapshot: replace everything held. The first item of
    /// [`Directory::all_changes`](crate::Directory::all_changes), and what a consumer gets instead of changes it can no longer be
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

/// Why an [`AllChanges`](crate::AllChanges) stream yields a [`Resync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResyncReason {
    /// The stream starts ([`Directory::all_changes`](crate::Directory::all_changes)): the current state.
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

pub(crate) struct Entries {
    events: VecDeque<DirectoryChange>,
    /// The number the next change gets.
    next: u64,
}

impl Entries {
    pub(crate) fn oldest(&self) -> u64 {
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

    /// How many changes the journal holds now (for tests: never more than its capacity).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.entries).events.len()
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

    /// A receiver woken with the newest change's number after every append.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Copies up to `max` changes, from number `next` on, to the end of `out`, and says how many;
    /// or, if the journal no longer holds change `next`, the oldest number it holds.
    pub(crate) fn copy_from(
        &self,
        next: u64,
        max: usize,
        out: &mut VecDeque<DirectoryEvent>,
    ) -> std::result::Result<u64, u64> {
        let e = lock(&self.entries);
        let oldest = e.oldest();
        if next < oldest {
            return Err(oldest);
        }
        let from = (next - oldest) as usize;
        let to = e.events.len().min(from + max);
        out.extend(
            e.events
                .range(from..to)
                .map(|c| DirectoryEvent::Change(c.clone())),
        );
        Ok((to - from) as u64)
    }

    /// A snapshot of everything as of the newest change.
    pub(crate) fn resync(
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
