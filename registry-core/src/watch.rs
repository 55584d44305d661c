//! Stored entries, listings and watch events.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

use crate::error::Result;
use crate::lease::LeaseId;
use crate::revision::Revision;

/// A key and its current value as stored by a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, relative to the backend's namespace.
    pub key: String,
    /// The value bytes.
    pub value: Bytes,
    /// The revision of the last put of this key.
    pub revision: Revision,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The answer to [`list`](crate::Backend::list): entries in key order and the revision they reflect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Entries under the prefix, sorted by key (byte order).
    pub entries: Vec<KeyValue>,
    /// The backend revision this listing is a snapshot of. Watching from this revision delivers
    /// exactly the changes made after the snapshot.
    pub revision: Revision,
}

/// Whether a watch event is a put or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted, explicitly or because its lease expired or was revoked.
    Delete,
}

/// One change to one key, as delivered by [`watch`](crate::Backend::watch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key, relative to the backend's namespace.
    pub key: String,
    /// The new value for a put; empty for a delete.
    pub value: Bytes,
    /// The revision of the change. Several events may share a revision when one atomic operation
    /// changed several keys (a lease revoke or expiry); they are delivered consecutively.
    pub revision: Revision,
}

impl Event {
    /// A put event.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>, revision: Revision) -> Self {
        Event {
            kind: EventKind::Put,
            key: key.into(),
            value: value.into(),
            revision,
        }
    }

    /// A delete event.
    pub fn delete(key: impl Into<String>, revision: Revision) -> Self {
        Event {
            kind: EventKind::Delete,
            key: key.into(),
            value: Bytes::new(),
            revision,
        }
    }
}

/// The stream returned by [`watch`](crate::Backend::watch).
///
/// After it yields an error it yields nothing more: the caller resumes with a new watch from the last
/// revision it processed, or re-lists on [`Compacted`](crate::ErrorKind::Compacted).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send + 'static>>;

/// What a backend reads its events from in batches (a blocking query, a blocking stream read):
/// each [`read`](Self::read) appends the next events, possibly none. See [`batched`].
#[async_trait::async_trait]
pub trait EventBatches: Send + 'static {
    /// Waits for the next events and appends them to `out` (in order). An error ends the watch:
    /// the stream yields it after the events already read, then ends.
    async fn read(&mut self, out: &mut VecDeque<Event>) -> Result<()>;
}

/// A [`WatchStream`] over a source read in batches: events one by one, in order, then the first
/// error, then the end. The loop every polling backend needs, written once.
pub fn batched<S: EventBatches>(source: S) -> WatchStream {
    struct State<S> {
        source: S,
        ready: VecDeque<Event>,
        ended: bool,
    }
    let state = State {
        source,
        ready: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.ready.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.ended {
                return None;
            }
            if let Err(e) = st.source.read(&mut st.ready).await {
                st.ended = true;
                return Some((Err(e), st));
            }
        }
    }))
}
