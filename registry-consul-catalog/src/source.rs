//! [`CatalogSource`]: services that anyone registered in Consul's catalog (go-micro, Kratos, Spring
//! Cloud Consul, Nomad, `consul services register`), followed through blocking queries and
//! published into a [`Directory`] beside our own instances.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use registry_core::config::check_duration;
use registry_core::{Error, ErrorKind, Result};
use registry_engine::{
    Backoff, DEFAULT_WEIGHT, Directory, Instance, InstanceState, MAX_WEIGHT, SourceHandle,
    validate_id, validate_service,
};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use registry_consul::{ConsulAgent, ConsulBuilder};

/// Which catalog entries a [`CatalogSource`] shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatalogHealth {
    /// Only entries whose checks (the node's and the service's) all pass, as Consul's
    /// `/v1/health/service/NAME?passing` lists them. An entry whose check fails leaves the
    /// directory.
    #[default]
    Passing,
    /// Every entry, its health as its state: passing → online; warning or critical (maintenance
    /// mode included) → offline, listed but not routed.
    AllWithState,
}

/// Which services a [`CatalogSource`] follows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Follow {
    /// These.
    List(BTreeSet<String>),
    /// Every service in the catalog but these.
    All { exclude: BTreeSet<String> },
}

/// Configures a [`CatalogSource`]; from [`CatalogSource::builder`].
#[derive(Clone, Debug)]
pub struct CatalogSourceBuilder {
    consul: ConsulBuilder,
    follow: Follow,
    health: CatalogHealth,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl CatalogSourceBuilder {
    /// Follows `service` (and, called again, others); without this call every service in the
    /// catalog is followed.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        let service = service.into();
        match &mut self.follow {
            Follow::List(l) => {
                l.insert(service);
            }
            Follow::All { .. } => self.follow = Follow::List(BTreeSet::from([service])),
        }
        self
    }

    /// Follows these services.
    pub fn services<S: Into<String>>(mut self, services: impl IntoIterator<Item = S>) -> Self {
        for s in services {
            self = self.service(s);
        }
        self
    }

    /// Follows every service in the catalog (the default), as it comes and goes.
    pub fn all_services(mut self) -> Self {
        if let Follow::List(_) = self.follow {
            self.follow = Follow::All {
                exclude: BTreeSet::new(),
            };
        }
        self
    }

    /// When following every service, leaves this one out (for example `consul`, the servers'
    /// own entry).
    pub fn exclude(mut self, service: impl Into<String>) -> Self {
        if let Follow::All { exclude } = &mut self.follow {
            exclude.insert(service.into());
        }
        self
    }

    /// Which entries are shown (default [`CatalogHealth::Passing`]).
    pub fn health(mut self, health: CatalogHealth) -> Self {
        self.health = health;
        self
    }

    /// Retry back-off bounds after errors (default 100 ms to 5 s, jittered).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Starts following, publishing into `dir` as source `name` with `precedence` (see
    /// [`Directory::source`]). Returns once every followed service has been read once or has
    /// failed to be (then it is marked stale and retried); an error the agent will keep giving
    /// (a refused token, a bad request) is returned instead.
    pub async fn start(
        self,
        dir: &Directory,
        name: &str,
        precedence: i32,
    ) -> Result<CatalogSource> {
        let agent = self.consul.agent()?;
        check_duration("Consul request timeout", agent.request_timeout())?;
        check_duration("Consul blocking query wait", agent.watch_wait())?;
        check_duration("Consul minimum poll interval", agent.min_poll_interval())?;
        registry_core::config::check_max_duration("catalog back-off base", self.backoff_base)?;
        registry_core::config::check_max_duration("catalog back-off maximum", self.backoff_max)?;
        if let Follow::List(l) = &self.follow {
            for s in l {
                validate_service(s)?;
            }
        }
        // A refused token or request is the caller's to see before the source takes its name in
        // the directory (a name stays taken). An agent that does not answer is not: the source
        // starts, and its views are stale until the agent answers.
        if let Err(e) = agent
            .request(
                "GET",
                "/v1/catalog/services",
                "",
                None,
                agent.request_timeout(),
            )
            .await
        {
            if is_permanent(&e) {
                return Err(e.context(format!(
                    "cannot follow Consul's catalog at {}",
                    agent.address()
                )));
            }
        }
        let handle = dir.source(name, precedence)?;
        let shared = Arc::new(Shared {
            handle,
            health: self.health,
            request_timeout: agent.request_timeout(),
            wait: agent.watch_wait(),
            min_interval: agent.min_poll_interval(),
            agent,
            backoff: (self.backoff_base, self.backoff_max),
            stats: Stats::default(),
        });
        let task = match &self.follow {
            Follow::List(services) => {
                let mut workers = Workers::default();
                let mut firsts = Vec::new();
                for s in services {
                    firsts.push(workers.spawn(&shared, s));
                }
                let outcome = first_outcomes(firsts).await;
                if let Err(e) = outcome {
                    drop(workers);
                    return Err(e);
                }
                // Holds the workers: aborted (through `Workers`' drop) when this task is.
                tokio::spawn(async move {
                    let _workers = workers;
                    std::future::pending::<()>().await
                })
            }
            Follow::All { exclude } => {
                let (tx, rx) = oneshot::channel();
                let sup = Supervisor {
                    shared: shared.clone(),
                    exclude: exclude.clone(),
                    workers: Workers::default(),
                    refused: BTreeSet::new(),
                    first: Some(tx),
                };
                let task = tokio::spawn(sup.run());
                if let Ok(Err(e)) = rx.await {
                    task.abort();
                    return Err(e);
                }
                task
            }
        };
        Ok(CatalogSource {
            shared,
            task: Some(task),
            follow: self.follow,
        })
    }
}

/// Follows services in Consul's catalog, registered by anyone, and publishes them into a
/// [`Directory`] as a source of its own (see [`Directory::source`]: its name marks where each
/// instance comes from, its precedence settles an id that two sources list). Dropping it stops
/// following; what it published stays, like a dropped
/// [`Discovery`](registry_engine::Discovery)'s view.
///
/// One long-poll per followed service on `/v1/health/service/NAME?index=I&wait=W`, and, when every
/// service is followed, one more on `/v1/catalog/services` to learn which services exist. The same
/// guarantees as a [`Discovery`](registry_engine::Discovery) of our own backend:
///
/// - **Resume by index.** Each query carries the last `X-Consul-Index`; an answer with the same
///   index (the wait ran out, or something unrelated changed) changes nothing. Queries of one
///   service are at least the backend's minimum poll interval apart (Consul asks clients to rate
///   limit blocking queries).
/// - **An index that goes backwards** (the agent restarted without its data, a snapshot restored)
///   is Consul's documented reset: the answer is taken as a fresh listing, published whatever its
///   index, and followed from there. An index of 0 is used as 1.
/// - **Back-off.** After an error the source waits (jittered, exponential, 100 ms to 5 s by
///   default) and asks again without blocking, so the view is fresh as soon as the agent answers.
/// - **Stale, not empty.** While a service cannot be read its instances stay as last published and
///   its view is marked stale; the next good answer makes it fresh. An agent that stops answering
///   in the middle of a blocking query is noticed when that query's deadline passes: the wait
///   (the builder's [`watch_wait`](ConsulBuilder::watch_wait)), plus 1/16 of it (Consul's jitter),
///   plus the request timeout.
/// - **Malformed entries are skipped, logged once and counted**: an entry that does not decode, an
///   id or a service name our validation refuses, an entry without a port or an address, an id
///   that a second node also uses. The others are shown.
/// - **A service that leaves the catalog is published empty.**
///
/// How an entry becomes an [`Instance`]:
///
/// | Consul                                   | Instance                                        |
/// |------------------------------------------|-------------------------------------------------|
/// | `Service.ID`                             | `id`                                            |
/// | `Service.Service`                        | `service`                                       |
/// | `Service.Address` (else `Node.Address`) and `Service.Port` | `addrs`, one `host:port` (`[v6]:port`) |
/// | `Service.Meta`                           | `metadata`, as is                               |
/// | each tag `T` in `Service.Tags`           | `metadata["tag.T"] = ""`                        |
/// | `Node.Node`                              | `metadata["consul.node"]`                       |
/// | the worst status of the entry's checks   | `metadata["consul.health"]` (`passing`, `warning`, `critical`) |
/// | `Meta["version"]`                        | `version`                                       |
/// | `Meta["weight"]`, else `Weights.Passing` × 100 | `weight` (capped at [`MAX_WEIGHT`]; a `Meta` weight outside 1..=10000 makes the entry malformed) |
///
/// [`CatalogHealth`] says which entries are shown: only those whose checks all pass (Consul's
/// `?passing`, the default), or every one with its health as its state (passing → online, warning
/// or critical → offline, listed but not routed).
///
/// The ACL token, TLS, datacenter and Consul namespace are the [`ConsulBuilder`]'s; the token
/// travels in the `X-Consul-Token` header and is never printed. Consul 1.8 filters what a token
/// may not read out of catalog answers instead of refusing them: a token without `service:read`
/// sees those services as empty.
///
/// ```no_run
/// # async fn demo() -> registry_core::Result<()> {
/// use registry_consul::ConsulBuilder;
/// use registry_consul_catalog::{CatalogHealth, CatalogSource};
/// use registry_engine::Directory;
///
/// let dir = Directory::new();
/// let catalog = CatalogSource::builder(ConsulBuilder::new().address("127.0.0.1:8500"))
///     .service("billing")
///     .health(CatalogHealth::Passing)
///     .start(&dir, "consul-catalog", -10)
///     .await?;
/// // Routed like any instance; marked with where it comes from.
/// if let Some(owner) = dir.find("billing", "customer-42") {
///     assert_eq!(dir.snapshot("billing").source_of(&owner.id), Some("consul-catalog"));
/// }
/// println!("{:?}", catalog.counts());
/// # Ok(()) }
/// ```
pub struct CatalogSource {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    follow: Follow,
}

impl fmt::Debug for CatalogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogSource")
            .field("name", &self.shared.handle.name())
            .field("agent", &self.shared.agent.address())
            .field("follow", &self.follow)
            .field("health", &self.shared.health)
            .field("counts", &self.counts())
            .finish()
    }
}

impl Drop for CatalogSource {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl CatalogSource {
    /// A builder over this agent (its address, token, TLS, datacenter, request timeout, blocking
    /// query wait and minimum poll interval are used).
    pub fn builder(consul: ConsulBuilder) -> CatalogSourceBuilder {
        CatalogSourceBuilder {
            consul,
            follow: Follow::All {
                exclude: BTreeSet::new(),
            },
            health: CatalogHealth::default(),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }

    /// The source's name in its directory.
    pub fn name(&self) -> &str {
        self.shared.handle.name()
    }

    /// The counters so far.
    pub fn counts(&self) -> CatalogCounts {
        self.shared.stats.snapshot()
    }

    /// Stops following and removes everything this source published.
    pub async fn stop_and_withdraw(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.shared.handle.withdraw_all();
    }
}

/// A copy of a [`CatalogSource`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatalogCounts {
    /// Reads that did not block: each service's first, and the first after an error.
    pub lists: u64,
    /// Blocking queries answered (a change, or the wait running out).
    pub queries: u64,
    /// Answers that changed what a service shows and were published.
    pub publications: u64,
    /// Requests that failed (each followed by a pause and a retry).
    pub errors: u64,
    /// Times a service was read again after errors (its view fresh again).
    pub resumes: u64,
    /// Indexes that went backwards: the answer was taken as a fresh listing.
    pub resets: u64,
    /// Entries skipped as malformed (counted once per answer that carries them).
    pub skipped: u64,
    /// Service names in the catalog that our validation refuses (each counted once).
    pub skipped_services: u64,
    /// Services followed now.
    pub followed: u64,
    /// Consecutive errors of the service that failed last (0 once it answers again).
    pub failing_streak: u64,
    /// The last pause before a retry, in milliseconds.
    pub last_retry_delay_ms: u64,
}

#[derive(Debug, Default)]
struct Stats {
    lists: AtomicU64,
    queries: AtomicU64,
    publications: AtomicU64,
    errors: AtomicU64,
    resumes: AtomicU64,
    resets: AtomicU64,
    skipped: AtomicU64,
    skipped_services: AtomicU64,
    followed: AtomicU64,
    failing_streak: AtomicU64,
    last_retry_delay_ms: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> CatalogCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CatalogCounts {
            lists: l(&self.lists),
            queries: l(&self.queries),
            publications: l(&self.publications),
            errors: l(&self.errors),
            resumes: l(&self.resumes),
            resets: l(&self.resets),
            skipped: l(&self.skipped),
            skipped_services: l(&self.skipped_services),
            followed: l(&self.followed),
            failing_streak: l(&self.failing_streak),
            last_retry_delay_ms: l(&self.last_retry_delay_ms),
        }
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every task of one source shares.
struct Shared {
    agent: ConsulAgent,
    handle: SourceHandle,
    health: CatalogHealth,
    request_timeout: Duration,
    wait: Duration,
    min_interval: Duration,
    backoff: (Duration, Duration),
    stats: Stats,
}

impl Shared {
    /// `GET path`, blocking after `index` when given. Returns the answer's index (at least 1) and
    /// body.
    async fn get(&self, path: &str, index: Option<u64>) -> Result<(u64, bytes::Bytes)> {
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

/// Per-service tasks, aborted when dropped.
#[derive(Default)]
struct Workers {
    tasks: BTreeMap<String, JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

impl Workers {
    fn spawn(&mut self, shared: &Arc<Shared>, service: &str) -> oneshot::Receiver<Result<()>> {
        let (tx, rx) = oneshot::channel();
        let w = Worker {
            shared: shared.clone(),
            service: service.to_owned(),
            first: Some(tx),
            logged: HashSet::new(),
        };
        self.tasks.insert(service.to_owned(), tokio::spawn(w.run()));
        Stats::bump(&shared.stats.followed);
        rx
    }

    /// Stops following `service` and waits until its task is gone (so that nothing it was
    /// about to publish lands after what the caller publishes next).
    async fn stop(&mut self, shared: &Shared, service: &str) {
        if let Some(t) = self.tasks.remove(service) {
            t.abort();
            let _ = t.await;
            shared.stats.followed.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Waits for every worker's first outcome; the first permanent error wins.
async fn first_outcomes(firsts: Vec<oneshot::Receiver<Result<()>>>) -> Result<()> {
    let mut outcome = Ok(());
    for rx in firsts {
        if let Ok(Err(e)) = rx.await {
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
    }
    outcome
}

/// Errors that retrying cannot cure.
fn is_permanent(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::PermissionDenied | ErrorKind::Unsupported | ErrorKind::InvalidInput
    )
}

/// The index to ask with next, from the one asked with (`prev`, 0 when none) and the one
/// answered, and whether the answer is a reset (Consul's rules for blocking queries: an index
/// that goes backwards resets; an index must be at least 1).
fn next_index(prev: u64, answered: u64) -> (u64, bool) {
    let reset = prev > 0 && answered < prev;
    (answered.max(1), reset)
}

/// The blocking-query loop shared by the catalog and the services: rate limit, back-off,
/// resume, reset. `on_answer` gets each answer (and whether it must be taken as a fresh listing);
/// `on_error` each error.
struct Poll {
    index: u64,
    failing: u64,
    last_sent: Option<Instant>,
    backoff: Backoff,
}

enum Step {
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
    fn new(shared: &Shared) -> Poll {
        Poll {
            index: 0,
            failing: 0,
            last_sent: None,
            backoff: Backoff::new(shared.backoff.0, shared.backoff.1),
        }
    }

    async fn step(&mut self, shared: &Shared, path: &str, first: bool) -> Step {
        if let Some(t) = self.last_sent {
            tokio::time::sleep_until(t + shared.min_interval).await;
        }
        self.last_sent = Some(Instant::now());
        // After an error, ask without blocking: the view is fresh as soon as the agent answers.
        let blocking = (self.index > 0 && self.failing == 0).then_some(self.index);
        match shared.get(path, blocking).await {
            Ok((answered, body)) => {
                let stats = &shared.stats;
                Stats::bump(if blocking.is_some() {
                    &stats.queries
                } else {
                    &stats.lists
                });
                let resumed = self.failing > 0;
                if resumed {
                    Stats::bump(&stats.resumes);
                    stats.failing_streak.store(0, Ordering::Relaxed);
                }
                self.failing = 0;
                self.backoff.reset();
                let prev = self.index;
                let (next, reset) = next_index(prev, answered);
                if reset {
                    Stats::bump(&stats.resets);
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
                Stats::bump(&stats.errors);
                self.failing += 1;
                stats.failing_streak.store(self.failing, Ordering::Relaxed);
                if !(first && is_permanent(&e)) {
                    let pause = self.backoff.next_delay();
                    stats
                        .last_retry_delay_ms
                        .store(pause.as_millis() as u64, Ordering::Relaxed);
                    tracing::warn!(path, error = %e, ?pause, failing = self.failing, "consul catalog: request failed; retrying after a pause");
                    tokio::time::sleep(pause).await;
                }
                Step::Error(e)
            }
        }
    }
}

/// Follows every service of the catalog: one worker per valid name.
struct Supervisor {
    shared: Arc<Shared>,
    exclude: BTreeSet<String>,
    workers: Workers,
    /// Names already refused (logged and counted once each).
    refused: BTreeSet<String>,
    first: Option<oneshot::Sender<Result<()>>>,
}

impl Supervisor {
    async fn run(mut self) {
        let mut poll = Poll::new(&self.shared);
        loop {
            let first = self.first.is_some();
            match poll.step(&self.shared, "/v1/catalog/services", first).await {
                Step::Error(e) => {
                    if first && is_permanent(&e) {
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
                            Stats::bump(&self.shared.stats.errors);
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
    async fn apply(
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
                    Stats::bump(&self.shared.stats.skipped_services);
                    tracing::warn!(service = %name, error = %e, "consul catalog: skipping a service whose name this registry refuses");
                }
                continue;
            }
            wanted.insert(name);
        }
        let gone: Vec<String> = self
            .workers
            .tasks
            .keys()
            .filter(|s| !wanted.contains(*s))
            .cloned()
            .collect();
        for s in gone {
            self.workers.stop(&self.shared, &s).await;
            tracing::info!(service = %s, "consul catalog: the service left the catalog");
            Stats::bump(&self.shared.stats.publications);
            self.shared.handle.publish(&s, [], 0);
        }
        let mut firsts = Vec::new();
        for s in wanted {
            if !self.workers.tasks.contains_key(&s) {
                firsts.push(self.workers.spawn(&self.shared, &s));
            }
        }
        firsts
    }
}

/// Follows one service.
struct Worker {
    shared: Arc<Shared>,
    service: String,
    first: Option<oneshot::Sender<Result<()>>>,
    /// Entries already logged as skipped, with why (logged once each, until they change).
    logged: HashSet<(String, String)>,
}

impl Worker {
    async fn run(mut self) {
        let path = format!("/v1/health/service/{}", self.service);
        let mut poll = Poll::new(&self.shared);
        let mut stale = false;
        let mut last: Option<BTreeMap<String, Instance>> = None;
        loop {
            let first = self.first.is_some();
            match poll.step(&self.shared, &path, first).await {
                Step::Error(e) => {
                    if first && is_permanent(&e) {
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
                                    Stats::bump(&self.shared.stats.publications);
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
                                Stats::bump(&self.shared.stats.errors);
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
    fn decode(&mut self, body: &[u8]) -> Option<BTreeMap<String, Instance>> {
        let (out, skipped) = decode(&self.service, self.shared.health, body, &mut self.logged)?;
        self.shared
            .stats
            .skipped
            .fetch_add(skipped, Ordering::Relaxed);
        Some(out)
    }
}

/// The instances an answer shows and how many entries were skipped, or `None` when the answer is
/// not a JSON array at all. Entries that cannot be used are logged once (`logged` remembers
/// them).
fn decode(
    service: &str,
    health: CatalogHealth,
    body: &[u8],
    logged: &mut HashSet<(String, String)>,
) -> Option<(BTreeMap<String, Instance>, u64)> {
    let entries: Vec<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(service, error = %e, "consul catalog: the health listing is not a JSON array");
            return None;
        }
    };
    let mut out = BTreeMap::new();
    let mut skipped = 0;
    let mut seen = HashSet::new();
    let mut entries: Vec<(usize, serde_json::Value)> = entries.into_iter().enumerate().collect();
    // The same id on two nodes: the first node (by name) wins, whatever the answer's order.
    entries.sort_by_cached_key(|(i, v)| {
        (
            v.pointer("/Node/Node")
                .and_then(|n| n.as_str())
                .map(str::to_owned),
            *i,
        )
    });
    for (i, raw) in entries {
        let label = raw
            .pointer("/Service/ID")
            .and_then(|v| v.as_str())
            .map_or_else(|| format!("entry #{i}"), str::to_owned);
        let made = serde_json::from_value::<HealthEntry>(raw)
            .map_err(|e| format!("does not decode: {e}"))
            .and_then(|entry| instance(service, health, entry));
        let why = match made {
            Ok(Some(inst)) => {
                if out.contains_key(&inst.id) {
                    Some("another node registers the same id".to_owned())
                } else {
                    out.insert(inst.id.clone(), inst);
                    None
                }
            }
            Ok(None) => None,
            Err(why) => Some(why),
        };
        if let Some(why) = why {
            skipped += 1;
            let key = (label, why);
            if !logged.contains(&key) {
                tracing::warn!(service, id = %key.0, why = %key.1, "consul catalog: skipping an entry");
            }
            seen.insert(key);
        }
    }
    *logged = seen;
    Some((out, skipped))
}

/// The instance an entry shows (`None` when its health hides it), or why it cannot be used.
fn instance(
    service: &str,
    mode: CatalogHealth,
    e: HealthEntry,
) -> std::result::Result<Option<Instance>, String> {
    let s = e.service;
    if s.service != service {
        return Err(format!("belongs to service {:?}", s.service));
    }
    validate_id(&s.id).map_err(|e| e.message().to_owned())?;
    let health = e
        .checks
        .iter()
        .map(|c| Health::of(&c.status))
        .max()
        .unwrap_or(Health::Passing);
    if health != Health::Passing && mode == CatalogHealth::Passing {
        return Ok(None);
    }
    let host = if s.address.is_empty() {
        e.node.address.as_str()
    } else {
        s.address.as_str()
    };
    if host.is_empty() {
        return Err("no address (neither the service's nor its node's)".to_owned());
    }
    let port = match s.port {
        Some(p) if p > 0 => p,
        _ => return Err("no port".to_owned()),
    };
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut inst = Instance::new(s.service, s.id).addr(addr);
    let meta = s.meta.unwrap_or_default();
    if let Some(v) = meta.get("version").filter(|v| !v.is_empty()) {
        inst = inst.version(v.clone());
    }
    let from_weights =
        s.weights
            .map(|w| w.passing)
            .filter(|w| *w > 0)
            .map_or(DEFAULT_WEIGHT, |w| {
                u32::try_from(w)
                    .unwrap_or(u32::MAX)
                    .saturating_mul(DEFAULT_WEIGHT)
                    .min(MAX_WEIGHT)
            });
    inst.weight = match meta.get("weight") {
        Some(w) => match w.parse::<u32>() {
            Ok(w) if (1..=MAX_WEIGHT).contains(&w) => w,
            _ => return Err(format!("Meta weight {w:?} is not in 1..={MAX_WEIGHT}")),
        },
        None => from_weights,
    };
    for t in s.tags.unwrap_or_default() {
        inst.metadata.insert(format!("tag.{t}"), String::new());
    }
    inst.metadata.extend(meta);
    inst.metadata
        .insert("consul.node".to_owned(), e.node.node.clone());
    inst.metadata
        .insert("consul.health".to_owned(), health.as_str().to_owned());
    inst.state = if health == Health::Passing {
        InstanceState::Online
    } else {
        InstanceState::Offline
    };
    inst.validate().map_err(|e| e.message().to_owned())?;
    Ok(Some(inst))
}

/// A check's status, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    fn of(status: &str) -> Health {
        match status {
            "passing" => Health::Passing,
            "warning" => Health::Warning,
            // "critical", "maintenance", and anything unknown.
            _ => Health::Critical,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

/// One entry of `/v1/health/service/NAME`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: NodeEntry,
    service: ServiceEntry,
    #[serde(default)]
    checks: Vec<CheckEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeEntry {
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckEntry {
    status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 0), (1, false), "an index is at least 1");
        assert_eq!(next_index(0, 7), (7, false));
        assert_eq!(next_index(7, 7), (7, false), "the wait ran out");
        assert_eq!(next_index(7, 9), (9, false));
        assert_eq!(next_index(90, 12), (12, true), "backwards: a reset");
        assert_eq!(next_index(5, 0), (1, true));
    }

    #[test]
    fn health_is_the_worst_check() {
        let worst = ["passing", "warning", "passing"]
            .iter()
            .map(|s| Health::of(s))
            .max();
        assert_eq!(worst, Some(Health::Warning));
        assert_eq!(Health::of("maintenance"), Health::Critical);
    }

    /// One entry in the shape Consul 1.8 answers `/v1/health/service/NAME` with.
    fn entry(node: &str, id: &str, port: u16, statuses: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "Node": {"Node": node, "Address": "127.0.0.1", "Datacenter": "dc1"},
            "Service": {
                "ID": id, "Service": "web", "Tags": ["blue"], "Address": "", "Port": port,
                "Meta": {"version": "1.2.3"}, "Weights": {"Passing": 2, "Warning": 1}
            },
            "Checks": statuses.iter().map(|s| serde_json::json!({"CheckID": "c", "Status": s}))
                .collect::<Vec<_>>(),
        })
    }

    #[test]
    fn entries_decode_and_malformed_ones_are_skipped_and_logged_once() {
        let body = serde_json::to_vec(&serde_json::json!([
            entry("n1", "ok", 80, &["passing", "passing"]),
            entry("n1", "failing", 81, &["passing", "critical"]),
            entry("n1", "warn", 82, &["warning"]),
            entry("n1", "bad id", 83, &[]),
            entry("n1", "no-port", 0, &[]),
            entry("n2", "ok", 84, &[]),
            {"Node": {"Node": "n1"}, "Service": {"ID": 5}},
            "not an object",
        ]))
        .unwrap();
        let mut logged = HashSet::new();
        let (shown, skipped) = decode("web", CatalogHealth::Passing, &body, &mut logged).unwrap();
        assert_eq!(shown.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(
            skipped, 5,
            "bad id, no port, the duplicate id, two undecodable"
        );
        assert_eq!(logged.len(), 5);
        let ok = &shown["ok"];
        assert_eq!(
            ok.addrs,
            ["127.0.0.1:80"],
            "the node's address, from node n1 (first by name)"
        );
        assert_eq!(ok.version.as_deref(), Some("1.2.3"));
        assert_eq!(ok.weight, 200, "Weights.Passing 2");
        assert_eq!(ok.metadata["tag.blue"], "");
        assert_eq!(ok.metadata["consul.node"], "n1");
        assert_eq!(ok.metadata["consul.health"], "passing");

        let (all, _) = decode("web", CatalogHealth::AllWithState, &body, &mut logged).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["failing", "ok", "warn"]);
        assert_eq!(all["failing"].state, InstanceState::Offline);
        assert_eq!(all["warn"].metadata["consul.health"], "warning");
        assert!(all["ok"].is_online());

        assert!(decode("web", CatalogHealth::Passing, b"{not json", &mut logged).is_none());
        let weighted = serde_json::json!([{
            "Node": {"Node": "n", "Address": "::1"},
            "Service": {"ID": "v6", "Service": "web", "Port": 9, "Meta": {"weight": "7"}}
        }, {
            "Node": {"Node": "n", "Address": "::1"},
            "Service": {"ID": "heavy", "Service": "web", "Port": 9, "Meta": {"weight": "0"}}
        }]);
        let (v6, skipped) = decode(
            "web",
            CatalogHealth::Passing,
            &serde_json::to_vec(&weighted).unwrap(),
            &mut logged,
        )
        .unwrap();
        assert_eq!(v6["v6"].addrs, ["[::1]:9"]);
        assert_eq!(v6["v6"].weight, 7);
        assert_eq!(skipped, 1, "a Meta weight of 0");
    }
}
