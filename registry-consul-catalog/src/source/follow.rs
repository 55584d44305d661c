//! A source's tasks: one worker per followed service, and, when following every service, a
//! supervisor that follows the catalog's list of services and starts and stops workers.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use registry_core::Result;
use registry_core::counters::Bump;
use registry_engine::{Instance, validate_service};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinSet};

use super::decode::decode;
use super::poll::{Poll, Shared, Step};

/// Per-service tasks, aborted when dropped (a `JoinSet` aborts its tasks).
#[derive(Default)]
pub(super) struct Workers {
    pub(super) set: JoinSet<()>,
    pub(super) by_service: BTreeMap<String, AbortHandle>,
}

impl Workers {
    pub(super) fn spawn(
        &mut self,
        shared: &Arc<Shared>,
        service: &str,
    ) -> oneshot::Receiver<Result<()>> {
        // Tasks that ended (a worker only ends by a panic) are let go of here.
        while self.set.try_join_next().is_some() {}
        let (tx, rx) = oneshot::channel();
        let w = ServiceFollower {
            shared: shared.clone(),
            service: service.to_owned(),
            first: Some(tx),
            logged: HashSet::new(),
        };
        let task = self.set.spawn(w.run());
        self.by_service.insert(service.to_owned(), task);
        shared.stats.followed.bump();
        rx
    }

    /// Stops following `service` and waits until its task is gone (so that nothing it was
    /// about to publish lands after what the caller publishes next).
    pub(super) async fn stop(&mut self, shared: &Shared, service: &str) {
        if let Some(t) = self.by_service.remove(service) {
            t.abort();
            let id = t.id();
            while let Some(ended) = self.set.join_next_with_id().await {
                let ended = match ended {
                    Ok((ended, ())) => ended,
                    Err(e) => e.id(),
                };
                if ended == id {
                    break;
                }
            }
            shared.stats.followed.drop_one();
        }
    }

    /// The tasks, to hold (and abort when dropped) without following changes.
    pub(super) fn into_tasks(self) -> JoinSet<()> {
        self.set
    }
}

/// Waits for every worker's first outcome; the first permanent error wins.
pub(super) async fn first_outcomes(firsts: Vec<oneshot::Receiver<Result<()>>>) -> Result<()> {
    let mut outcome = Ok(());
    for rx in firsts {
        if let Ok(Err(e)) = rx.await
            && outcome.is_ok()
        {
            outcome = Err(e);
        }
    }
    outcome
}

/// Follows every service of the catalog: one worker per valid name.
pub(super) struct Supervisor {
    pub(super) shared: Arc<Shared>,
    pub(super) exclude: BTreeSet<String>,
    pub(super) workers: Workers,
    /// Names already refused (logged and counted once each).
    pub(super) refused: BTreeSet<String>,
    pub(super) first: Option<oneshot::Sender<Result<()>>>,
}

impl Supervisor {
    pub(super) async fn run(mut self) {
        let mut poll = Poll::new(&self.shared);
        loop {
            let first = self.first.is_some();
            match poll.step(&self.shared, "/v1/catalog/services", first).await {
                Step::Error(e) => {
                    if first && e.kind().is_permanent() {
                        tracing::warn!(error = %e, "consul catalog: the agent refuses the catalog listing");
                        if let Some(tx) = self.first.take() {
                            let _ = tx.send(Err(e));
                        }
                        return;
                    }
                    if let Some(tx) = self.first.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Step::Answer { body, fresh, .. } => {
                    if !fresh {
                        continue;
                    }
                    let names: BTreeMap<String, serde_json::Value> = match serde_json::from_slice(
                        &body,
                    ) {
                        Ok(n) => n,
                        Err(e) => {
                            // Not Consul's shape: nothing to act on; keep what is followed.
                            self.shared.stats.errors.bump();
                            tracing::warn!(error = %e, "consul catalog: unreadable service list");
                            continue;
                        }
                    };
                    let firsts = self.apply(names).await;
                    if let Some(tx) = self.first.take() {
                        let _ = tx.send(first_outcomes(firsts).await);
                    }
                }
            }
        }
    }

    /// Starts workers for new services and stops (and empties) those that left.
    pub(super) async fn apply(
        &mut self,
        names: BTreeMap<String, serde_json::Value>,
    ) -> Vec<oneshot::Receiver<Result<()>>> {
        let mut wanted = BTreeSet::new();
        for name in names.into_keys() {
            if self.exclude.contains(&name) {
                continue;
            }
            if let Err(e) = validate_service(&name) {
                if self.refused.insert(name.clone()) {
                    self.shared.stats.skipped_services.bump();
                    tracing::warn!(service = %name, error = %e, "consul catalog: skipping a service whose name this registry refuses");
                }
                continue;
            }
            wanted.insert(name);
        }
        let gone: Vec<String> = self
            .workers
            .by_service
            .keys()
            .filter(|s| !wanted.contains(*s))
            .cloned()
            .collect();
        for s in gone {
            self.workers.stop(&self.shared, &s).await;
            tracing::info!(service = %s, "consul catalog: the service left the catalog");
            self.shared.stats.publications.bump();
            self.shared.handle.publish(&s, [], 0);
        }
        let mut firsts = Vec::new();
        for s in wanted {
            if !self.workers.by_service.contains_key(&s) {
                firsts.push(self.workers.spawn(&self.shared, &s));
            }
        }
        firsts
    }
}

/// Follows one service.
pub(super) struct ServiceFollower {
    pub(super) shared: Arc<Shared>,
    pub(super) service: String,
    pub(super) first: Option<oneshot::Sender<Result<()>>>,
    /// Entries already logged as skipped, with why (logged once each, until they change).
    pub(super) logged: HashSet<(String, String)>,
}

impl ServiceFollower {
    pub(super) async fn run(mut self) {
        let path = format!("/v1/health/service/{}", self.service);
        let mut poll = Poll::new(&self.shared);
        let mut stale = false;
        let mut last: Option<BTreeMap<String, Instance>> = None;
        loop {
            let first = self.first.is_some();
            match poll.step(&self.shared, &path, first).await {
                Step::Error(e) => {
                    if first && e.kind().is_permanent() {
                        tracing::warn!(service = %self.service, error = %e, "consul catalog: the agent refuses the service's health listing");
                        if let Some(tx) = self.first.take() {
                            let _ = tx.send(Err(e));
                        }
                        return;
                    }
                    if !stale {
                        stale = true;
                        self.shared.handle.set_stale(&self.service, true);
                    }
                    if let Some(tx) = self.first.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Step::Answer {
                    body,
                    fresh,
                    reset,
                    resumed,
                    index,
                } => {
                    if resumed {
                        tracing::info!(service = %self.service, "consul catalog: the service answers again");
                    }
                    if fresh || last.is_none() {
                        match self.decode(&body) {
                            Some(next) => {
                                if last.as_ref() != Some(&next) || reset {
                                    let rev = if reset { 0 } else { index };
                                    // Counted first: whoever sees the publication sees it counted.
                                    self.shared.stats.publications.bump();
                                    self.shared.handle.publish(
                                        &self.service,
                                        next.values().cloned(),
                                        rev,
                                    );
                                    stale = false;
                                    last = Some(next);
                                }
                            }
                            None => {
                                // The whole answer is unreadable: keep the last view, stale, and
                                // ask again from scratch after a pause.
                                self.shared.stats.errors.bump();
                                poll.index = 0;
                                if !stale {
                                    stale = true;
                                    self.shared.handle.set_stale(&self.service, true);
                                }
                                if let Some(tx) = self.first.take() {
                                    let _ = tx.send(Ok(()));
                                }
                                tokio::time::sleep(poll.backoff.next_delay()).await;
                                continue;
                            }
                        }
                    }
                    if stale && last.is_some() {
                        stale = false;
                        self.shared.handle.set_stale(&self.service, false);
                    }
                    if let Some(tx) = self.first.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
        }
    }

    /// The instances an answer shows, or `None` when it is not a JSON array at all. Entries that
    /// cannot be used are skipped, logged once and counted.
    pub(super) fn decode(&mut self, body: &[u8]) -> Option<BTreeMap<String, Instance>> {
        let (out, skipped) = decode(&self.service, self.shared.health, body, &mut self.logged)?;
        self.shared
            .stats
            .skipped
            .fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
        Some(out)
    }
}
