//! Answers that cost O(directory) (`/v1/services`, Prometheus SD, a ring's picture), built once
//! per state of the directory and shared by every request for it until the directory changes.
//! Built off the runtime's threads, which the discovery also runs on: a directory of 100,000
//! instances must not hold its watch back while a scrape is answered.
//!
//! A state is the feed's sequence number ([`Directory::last_seq`](registry::engine::Directory::last_seq)):
//! every change of any snapshot (instances, staleness, probes) is numbered, so an answer built at
//! a number is right for every request that reads that number. Read before the snapshots, the
//! number can only be older than what the answer shows, never newer, so no request gets an answer
//! older than its own number.
//!
//! One answer is kept per kind (the newest): an older state's answer is never served again once a
//! newer one is built, so it is dropped then, and memory holds at most one document per kind,
//! however fast the directory changes. A resync is exact: a stream that resumes from a resync at
//! number N needs that one, not a newer one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::OnceCell;

/// How many kinds of answer are kept (the newest of each): a few routes and variants, a few rings.
const CAPACITY: usize = 32;

/// What kind of answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Services,
    Sd {
        all: bool,
    },
    Ring {
        service: String,
    },
    /// A change stream's resync of every service, for `reason` (start, lagged, unknown id).
    Resync {
        reason: &'static str,
    },
}

/// What an answer was built for: a kind, at a state of the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) kind: Kind,
    pub(crate) seq: u64,
}

/// The newest answer of each kind, each built once (concurrent requests for the same one wait for
/// it).
#[derive(Default)]
pub(crate) struct AnswerCache {
    entries: Mutex<VecDeque<(Key, Arc<OnceCell<Bytes>>)>>,
}

impl AnswerCache {
    /// Forgets every answer: the directory changed without a new sequence number (it forgot
    /// services). An answer being built keeps going for those who wait for it; the next request
    /// builds anew.
    pub(crate) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The answer for `key`: the cached one, or `build`'s, run on a blocking thread.
    pub(crate) async fn get(
        &self,
        key: Key,
        build: impl FnOnce() -> Bytes + Send + 'static,
    ) -> Bytes {
        let exact = matches!(key.kind, Kind::Resync { .. });
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.iter_mut().find(|(k, _)| k.kind == key.kind) {
                // Built at this state, or (but for a resync) at a newer one.
                Some((k, cell)) if k.seq == key.seq || (!exact && k.seq > key.seq) => cell.clone(),
                // An older state's: replaced.
                Some((k, cell)) if k.seq < key.seq => {
                    *k = key;
                    *cell = Arc::new(OnceCell::new());
                    cell.clone()
                }
                // A resync for an older state than the one kept: built, not kept.
                Some(_) => Arc::new(OnceCell::new()),
                None => {
                    if entries.len() == CAPACITY {
                        entries.pop_front();
                    }
                    let cell = Arc::new(OnceCell::new());
                    entries.push_back((key, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(|| async {
            tokio::task::spawn_blocking(build)
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "building an answer failed");
                    if exact {
                        // Nothing is written to the change stream rather than a broken event.
                        Bytes::new()
                    } else {
                        Bytes::from_static(br#"{"error":"internal error"}"#)
                    }
                })
        })
        .await
        .clone()
    }
}

/// How many recent change events are kept as SSE bytes. The streams of a server read a change
/// within moments of each other; one that falls further behind serializes it again.
const FRAMES: usize = 1024;

/// Recent change events as the bytes of their SSE events, by sequence number (slot `seq %
/// FRAMES`): a change is serialized once for every stream that writes it, not once per client
/// (1,000 clients at 20 changes/s were 20,000 serializations a second, which made JSON answers
/// several times slower; BENCHMARKS.md section 6). At most [`FRAMES`] events are held.
pub(crate) struct ChangeFrames {
    slots: Box<[Mutex<Option<Frame>>]>,
}

/// A change's sequence number and its SSE bytes.
type Frame = (u64, Bytes);

impl Default for ChangeFrames {
    fn default() -> Self {
        ChangeFrames {
            slots: (0..FRAMES).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl ChangeFrames {
    /// The bytes of change `seq`: the kept ones, or `build`'s (kept for the other streams). Two
    /// streams that miss at once both build it (the same bytes); no lock is held while building.
    pub(crate) fn get_or(&self, seq: u64, build: impl FnOnce() -> Bytes) -> Bytes {
        let slot = &self.slots[(seq % FRAMES as u64) as usize];
        if let Some((s, bytes)) = &*slot.lock().unwrap_or_else(|p| p.into_inner())
            && *s == seq
        {
            return bytes.clone();
        }
        let bytes = build();
        let mut kept = slot.lock().unwrap_or_else(|p| p.into_inner());
        // A newer change in the slot stays: the streams are past this one.
        if kept.as_ref().is_none_or(|(s, _)| *s < seq) {
            *kept = Some((seq, bytes.clone()));
        }
        bytes
    }
}

/// A JSON answer from its bytes.
pub(crate) fn json(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change is built once for all its readers; a slot keeps the newer of two changes that
    /// share it, and an evicted one is built again.
    #[test]
    fn a_change_is_serialized_once_for_every_stream() {
        let frames = ChangeFrames::default();
        let built = std::cell::Cell::new(0);
        let frame = |seq: u64| {
            frames.get_or(seq, || {
                built.set(built.get() + 1);
                Bytes::from(format!("event {seq}"))
            })
        };
        for _ in 0..1000 {
            assert_eq!(frame(7), "event 7");
        }
        assert_eq!(built.get(), 1, "1,000 streams, one serialization");
        let newer = 7 + FRAMES as u64;
        assert_eq!(frame(newer), format!("event {newer}"));
        assert_eq!(built.get(), 2);
        // The old change, read late, is built again but does not push the newer one out.
        assert_eq!(frame(7), "event 7");
        assert_eq!(built.get(), 3);
        assert_eq!(frame(newer), format!("event {newer}"));
        assert_eq!(built.get(), 3);
    }
}
