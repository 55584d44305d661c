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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::OnceCell;

/// How many answers are kept (the newest): a few routes and variants, a few rings.
const CAPACITY: usize = 32;

/// What an answer was built for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Services { seq: u64 },
    Sd { seq: u64, all: bool },
    Ring { seq: u64, service: String },
}

/// The newest answers, each built once (concurrent requests for the same one wait for it).
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
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.iter().find(|(k, _)| *k == key) {
                Some((_, cell)) => cell.clone(),
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
                    Bytes::from_static(br#"{"error":"internal error"}"#)
                })
        })
        .await
        .clone()
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
