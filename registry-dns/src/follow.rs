//! Following one SRV name: a [`Follower`] task queries it, publishes what changed into the
//! directory, keeps the name's status, and waits as its [`Schedule`] says (the back-off after a
//! failure).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use registry_core::counters::Bump;
use registry_engine::{Backoff, Instance, SourceHandle};

use crate::answer::{Followed, query};
use crate::status::{DnsStatus, Shared, lock};

/// When to query again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) floor: Duration,
    pub(crate) ceiling: Duration,
    pub(crate) jitter: f64,
}

impl Schedule {
    /// The wait before the next query after an answer whose records live `ttl`: the TTL
    /// within [floor, ceiling], less up to `jitter` of it (`u` in [0, 1) is the random draw), never
    /// below the floor. `None` (no TTL known) waits the floor.
    pub(crate) fn next(&self, ttl: Option<Duration>, u: f64) -> Duration {
        let base = ttl
            .unwrap_or(Duration::ZERO)
            .clamp(self.floor, self.ceiling);
        let early = base.mul_f64(self.jitter * u.clamp(0.0, 1.0));
        base.saturating_sub(early).max(self.floor)
    }
}

pub(crate) struct Follower {
    pub(crate) followed: Followed,
    pub(crate) resolver: TokioResolver,
    pub(crate) handle: Arc<SourceHandle>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) schedule: Schedule,
    pub(crate) deadline: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) weight_scale: u32,
}

impl Follower {
    pub(crate) async fn run(mut self) {
        let service = self.followed.service.clone();
        let mut last: Option<BTreeMap<String, Instance>> = None;
        let mut revision = 0u64;
        let mut stale = false;
        let counts = &self.shared.counts;
        loop {
            counts.queries.bump();
            let started = Instant::now();
            let result = match tokio::time::timeout(
                self.deadline,
                query(
                    &self.resolver,
                    &self.followed,
                    self.weight_scale,
                    last.as_ref(),
                ),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", self.deadline)),
            };
            let mut status = DnsStatus {
                srv_name: self.followed.srv.clone(),
                ..DnsStatus::default()
            };
            match result {
                Ok(answer) => {
                    self.backoff.reset();
                    counts.answers.bump();
                    counts
                        .skipped_records
                        .fetch_add(answer.skipped, Ordering::Relaxed);
                    counts
                        .target_errors
                        .fetch_add(answer.target_errors, Ordering::Relaxed);
                    if answer.instances.is_empty() {
                        counts.empty_answers.bump();
                    }
                    if last.as_ref() != Some(&answer.instances) {
                        revision += 1;
                        let skipped = self.handle.publish(
                            &service,
                            answer.instances.values().cloned(),
                            revision,
                        );
                        debug_assert_eq!(skipped, 0, "instances are validated before");
                        counts.changes.bump();
                        tracing::debug!(service, name = %self.followed.srv, instances = answer.instances.len(), revision, "dns source: the answer changed");
                        last = Some(answer.instances);
                    } else if stale {
                        self.handle.set_stale(&service, false);
                    }
                    if stale {
                        tracing::info!(service, name = %self.followed.srv, "dns source: answers again");
                    }
                    stale = false;
                    status.next_query_in = self.schedule.next(answer.ttl, fastrand::f64());
                    status.last_ttl = answer.ttl;
                }
                Err(why) => {
                    counts.errors.bump();
                    if !stale {
                        tracing::warn!(service, name = %self.followed.srv, error = %why, took = ?started.elapsed(), "dns source: query failed; keeping the last instances, marked stale");
                        self.handle.set_stale(&service, true);
                        stale = true;
                    }
                    status.next_query_in = self.backoff.next_delay();
                    status.consecutive_errors = self.backoff.attempts();
                    status.last_error = Some(why);
                }
            }
            status.instances = last.as_ref().map_or(0, BTreeMap::len);
            status.revision = revision;
            let wait = status.next_query_in;
            lock(&self.shared.status).insert(service.clone(), status);
            tokio::time::sleep(wait).await;
        }
    }
}
