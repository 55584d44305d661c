//! Change streams of one service: [`Changes`] (its online instances) and the queue that turns
//! consecutive snapshots into [`Change`]s, which selections use too.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::collections::instances::Instances;
use crate::model::instance::Instance;
use crate::read::change::Change;
use crate::read::snapshot::{ServiceSnapshot, touched};

/// The stream returned by [`Directory::changes`](crate::Directory::changes).
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
    pub(crate) fn new(rx: watch::Receiver<Arc<ServiceSnapshot>>) -> Self {
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
