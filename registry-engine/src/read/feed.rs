//! The directory's namespace-wide change feed: every change to every service, in publish order,
//! numbered, with a bounded journal of recent changes to resume from.
//!
//! Each time the [`Directory`] publishes a new view of a service, it compares it with the previous
//! one and appends one [`DirectoryChange`](crate::DirectoryChange) per difference to its journal, under one lock, with
//! consecutive sequence numbers. Consumers ([`AllChanges`]) keep only a cursor into the journal and
//! copy events out of it: publishing never waits for a consumer, and a consumer that falls further
//! behind than the journal holds gets an explicit [`Resync`](crate::Resync) (a full snapshot) instead of a gap.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_stream::wrappers::WatchStream;

use crate::read::directory::Directory;
use crate::read::journal::{DirectoryEvent, ResyncReason};

/// How many events a consumer copies out of the journal per lock.
const READ_BATCH: usize = 256;

impl Directory {
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
}

/// The stream returned by [`Directory::all_changes`] and [`Directory::all_changes_since`]: every
/// change to every service of the directory, services that appear later included, in order.
///
/// It holds only a position in the directory's journal (plus at most one batch of copied events),
/// so a consumer that stops reading costs nothing and holds nobody up; when it reads again after
/// the journal has moved past its position, it gets a [`Resync`](crate::Resync) with
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
    /// A stream starting with a [`Resync`](crate::Resync) of the current state.
    pub(crate) fn start(dir: Directory) -> Self {
        let journal = dir.journal();
        // Subscribed before the snapshot: nothing published after it can be missed.
        let wake = WatchStream::from_changes(journal.subscribe());
        let resync = journal.resync(|_| ResyncReason::Start, || dir.snapshots());
        AllChanges {
            next: resync.seq + 1,
            pending: VecDeque::from([DirectoryEvent::Resync(resync)]),
            dir,
            wake,
        }
    }

    /// A stream of the changes after `after`, or a [`Resync`](crate::Resync) if `after` was never issued.
    pub(crate) fn since(dir: Directory, after: u64) -> Self {
        let journal = dir.journal();
        let wake = WatchStream::from_changes(journal.subscribe());
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
        let lagged = match journal.copy_from(next, READ_BATCH, &mut self.pending) {
            Ok(copied) => {
                self.next += copied;
                false
            }
            Err(_) => true,
        };
        if lagged {
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

#[cfg(test)]
mod tests;
