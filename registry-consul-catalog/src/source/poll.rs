//! One step of a blocking query on Consul's HTTP API: the read, Consul's index rules, the rate
//! limit and the back-off after an error; and what every task of a source shares.

use std::time::Duration;

use registry_consul::ConsulAgent;
use registry_core::counters::Bump;
use registry_core::{Error, ErrorKind, Result};
use registry_engine::{Backoff, SourceHandle};
use tokio::time::Instant;

use super::{CatalogHealth, SourceStats};

/// What every task of one source shares.
pub(super) struct Shared {
    pub(super) agent: ConsulAgent,
    pub(super) handle: SourceHandle,
    pub(super) health: CatalogHealth,
    pub(super) request_timeout: Duration,
    pub(super) wait: Duration,
    pub(super) min_interval: Duration,
    pub(super) backoff: (Duration, Duration),
    pub(super) stats: SourceStats,
}

impl Shared {
    /// `GET path`, blocking after `index` when given. Returns the answer's index (at least 1) and
    /// body.
    pub(super) async fn get(&self, path: &str, index: Option<u64>) -> Result<(u64, bytes::Bytes)> {
        let (query, timeout) = match index {
            Some(i) => (
                format!("index={i}&wait={}ms", self.wait.as_millis().max(1)),
                self.wait + self.wait / 16 + self.request_timeout,
            ),
            None => (String::new(), self.request_timeout),
        };
        let a = self
            .agent
            .request("GET", path, &query, None, timeout)
            .await?;
        if a.status != 200 {
            let kind = if (400..500).contains(&a.status) {
                ErrorKind::InvalidInput
            } else {
                ErrorKind::Unavailable
            };
            return Err(Error::new(
                kind,
                format!("consul GET {path}: {} {}", a.status, a.text()),
            ));
        }
        Ok((a.index.unwrap_or(0), a.body))
    }
}

/// The index to ask with next, from the one asked with (`prev`, 0 when none) and the one
/// answered, and whether the answer is a reset (Consul's rules for blocking queries: an index
/// that goes backwards resets; an index must be at least 1).
pub(super) fn next_index(prev: u64, answered: u64) -> (u64, bool) {
    let reset = prev > 0 && answered < prev;
    (answered.max(1), reset)
}

/// The blocking-query loop shared by the catalog and the services: rate limit, back-off,
/// resume, reset. `on_answer` gets each answer (and whether it must be taken as a fresh listing);
/// `on_error` each error.
pub(super) struct Poll {
    pub(super) index: u64,
    pub(super) failing: u64,
    pub(super) last_sent: Option<Instant>,
    pub(super) backoff: Backoff,
}

pub(super) enum Step {
    /// An answer: its body, whether it is new (the index moved or it is a listing), whether it is
    /// a reset, and whether it ends a run of errors.
    Answer {
        body: bytes::Bytes,
        fresh: bool,
        reset: bool,
        resumed: bool,
        index: u64,
    },
    /// An error; the pause is already taken.
    Error(Error),
}

impl Poll {
    pub(super) fn new(shared: &Shared) -> Poll {
        Poll {
            index: 0,
            failing: 0,
            last_sent: None,
            backoff: Backoff::new(shared.backoff.0, shared.backoff.1),
        }
    }

    pub(super) async fn step(&mut self, shared: &Shared, path: &str, first: bool) -> Step {
        if let Some(t) = self.last_sent {
            tokio::time::sleep_until(t + shared.min_interval).await;
        }
        self.last_sent = Some(Instant::now());
        // After an error, ask without blocking: the view is fresh as soon as the agent answers.
        let blocking = (self.index > 0 && self.failing == 0).then_some(self.index);
        match shared.get(path, blocking).await {
            Ok((answered, body)) => {
                let stats = &shared.stats;
                if blocking.is_some() {
                    stats.queries.bump();
                } else {
                    stats.lists.bump();
                }
                let resumed = self.failing > 0;
                if resumed {
                    stats.resumes.bump();
                    stats.failing_streak.put(0);
                }
                self.failing = 0;
                self.backoff.reset();
                let prev = self.index;
                let (next, reset) = next_index(prev, answered);
                if reset {
                    stats.resets.bump();
                    tracing::info!(
                        path,
                        prev,
                        answered,
                        "consul catalog: the index went backwards (agent restarted or restored); taking the answer as a new listing"
                    );
                }
                self.index = next;
                Step::Answer {
                    body,
                    fresh: blocking.is_none() || reset || answered != prev,
                    reset,
                    resumed,
                    index: next,
                }
            }
            Err(e) => {
                let stats = &shared.stats;
                stats.errors.bump();
                self.failing += 1;
                stats.failing_streak.put(self.failing);
                if !(first && e.kind().is_permanent()) {
                    let pause = self.backoff.next_delay();
                    stats.last_retry_delay_ms.put(pause.as_millis() as u64);
                    tracing::warn!(path, error = %e, ?pause, failing = self.failing, "consul catalog: request failed; retrying after a pause");
                    tokio::time::sleep(pause).await;
                }
                Step::Error(e)
            }
        }
    }
}
