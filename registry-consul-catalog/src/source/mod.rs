//! [`CatalogSource`]: services that anyone registered in Consul's catalog (go-micro, Kratos, Spring
//! Cloud Consul, Nomad, `consul services register`), followed through blocking queries and
//! published into a [`Directory`] beside our own instances.
//!
//! [`builder`] configures and starts a source; [`follow`] holds its tasks (one per service, and
//! a supervisor that follows the list of services); [`poll`] one blocking query's step with
//! Consul's index rules; [`decode`] turns catalog entries into instances; [`api`] is the shape of
//! Consul's answers.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use registry_consul::ConsulBuilder;
#[cfg(doc)]
use registry_engine::Directory;
use tokio::task::JoinSet;

mod api;
mod builder;
mod decode;
mod follow;
mod poll;
#[cfg(test)]
mod tests;

pub use builder::CatalogSourceBuilder;
use poll::Shared;

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
/// How an entry becomes an [`Instance`](registry_engine::Instance):
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
/// | `Meta["weight"]`, else `Weights.Passing` × 100 | `weight` (capped at [`MAX_WEIGHT`](registry_engine::MAX_WEIGHT); a `Meta` weight outside 1..=10000 makes the entry malformed) |
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
    /// The source's tasks, aborted when it is dropped.
    tasks: JoinSet<()>,
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
        self.tasks.shutdown().await;
        self.shared.handle.withdraw_all();
    }
}

registry_core::counters! {
    /// A source's counters, shared by its tasks.
    pub(crate) struct SourceStats =>
    /// A copy of a [`CatalogSource`]'s counters.
    pub struct CatalogCounts {
        /// Reads that did not block: each service's first, and the first after an error.
        lists,
        /// Blocking queries answered (a change, or the wait running out).
        queries,
        /// Answers that changed what a service shows and were published.
        publications,
        /// Requests that failed (each followed by a pause and a retry).
        errors,
        /// Times a service was read again after errors (its view fresh again).
        resumes,
        /// Indexes that went backwards: the answer was taken as a fresh listing.
        resets,
        /// Entries skipped as malformed (counted once per answer that carries them).
        skipped,
        /// Service names in the catalog that our validation refuses (each counted once).
        skipped_services,
        /// Services followed now.
        followed,
        /// Consecutive errors of the service that failed last (0 once it answers again).
        failing_streak,
        /// The last pause before a retry, in milliseconds.
        last_retry_delay_ms,
    }
}
