//! [`CatalogMirror`]: the mirror of a registry's own instances into Consul's service catalog,
//! through the local agent. An add-on of the engine: it follows the registry's registrations
//! ([`RegistrationObserver`]), as [`CatalogSource`](crate::CatalogSource) follows Consul's
//! catalog, so the Consul backend itself knows nothing of instances.
//!
//! The KV store stays the source of truth; the mirror follows what the registry writes there:
//!
//! - An instance written under a lease registers a service with the agent
//!   (`PUT /v1/agent/service/register`): ID = the instance's Consul KV key,
//!   Name = the service, Address and Port from the first address, Tags from the `tags` metadata
//!   entry (comma-separated), Meta from the metadata plus `version`, `weight` and `registry_lease`,
//!   `Weights.Passing` = the weight (DNS SRV weights).
//! - Liveness follows the lease with **one request per heartbeat per lease**, whatever the number
//!   of instances on it: each lease has one entry of its own, service `registry-lease` with ID
//!   `registry-lease-<session>`, carrying a TTL check (TTL = the lease's TTL) that every successful
//!   keep-alive passes (`PUT /v1/agent/check/pass/...`). Each instance carries an alias check on
//!   that entry (Consul >= 1.3): the agent evaluates it locally, so it goes critical the moment the
//!   lease's check does, and is critical too when the lease's entry is gone.
//! - Both checks have `DeregisterCriticalServiceAfter` = 1 minute (Consul's minimum): a crashed
//!   process's entries leave the catalog after that, when the agent's reaper (every 30 s) runs.
//! - Offline (`"state":"offline"`) is the agent's maintenance mode for that service (a critical
//!   `_service_maintenance:<id>` check, so out of `?passing` and DNS but still listed, as offline
//!   instances are in our directory); online again disables it.
//! - A deleted key, a revoked lease and a lease the server reports gone deregister at once.
//! - A key another live owner holds ([`RegistrationEvent::Yielded`]: it took the id over) leaves
//!   what the mirror registers, heartbeats and registers again after an agent restart; its entry
//!   is deregistered only while the agent's entry is still ours (its `registry_lease` names a
//!   lease of ours, read with `GET /v1/agent/service/<id>` first): when both processes talk to
//!   the same agent, the service ID is the new owner's entry, which the mirror never removes or
//!   writes over. The next `Written` for the key (the registry takes the id back once the other
//!   owner's key is gone) registers it again.
//!
//! Why the agent API and not `/v1/catalog/register`: Consul's catalog is the servers' view of what
//! the agents report. An entry written directly to the catalog belongs to no agent: no agent runs
//! its checks (a TTL check there has no timer, so a dead process would stay passing forever), the
//! reaper never removes it, and the next anti-entropy run of the node's agent deletes it when the
//! node is an agent's own node. Registering with the agent makes the agent own the entry: it runs
//! the TTL and alias checks, syncs them to the catalog (anti-entropy), reaps them, and takes them
//! out when asked - the way Consul's own clients (the CLI, go-micro, Spring) register.
//!
//! Every call runs on one task; nothing here fails a KV write. What waits for the task is bounded
//! whatever the agent's speed ([`queue`]): the latest desired state per service ID (a register
//! and the deregister that followed it are one removal, never two calls in the wrong order), one
//! heartbeat per lease and one end per lease, so at most one entry per instance of the registry
//! plus two per lease, however many events arrive while the agent is slow or away. Lease ends and
//! removals go first, then heartbeats, then registrations: after an agent outage a deregistration
//! reaches the agent before anything else. The keeper never waits for the catalog; a
//! deregistration, a drain and a shutdown wait for it (at most [`REMOVAL_WAIT`], milliseconds
//! normally) once the backend confirmed them ([`RegistrationObserver::settle`]), so that a process
//! that exits right after deregistering or shutting down leaves nothing in the catalog. A failed
//! call is logged (a warning on the first failure, then debug until a call works again), counted,
//! and retried at the lease's next keep-alive; so is an answer the mirror cannot use (counted in
//! `unreadable` too).
//!
//! This file holds the handle and what it tells the task; [`queue`] what waits for the task;
//! [`task`] the task that calls the agent; [`service`] how an instance becomes an agent service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_consul::ConsulBuilder;
use registry_core::Result;
use registry_core::counters::Bump;
use registry_engine::{RegistrationEvent, RegistrationObserver};

mod queue;
mod service;
mod task;
#[cfg(test)]
mod tests;

use queue::{Change, Job, Pushed, Queue};
use task::Mirror;

/// The service name of the per-lease entries that carry the heartbeat's TTL check.
pub const LEASE_SERVICE: &str = "registry-lease";
/// `DeregisterCriticalServiceAfter` of every check we register: Consul 1.8's minimum
/// (`check_deregister_interval_min`; shorter values are raised to it).
pub const DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// How often a Consul 1.8 agent looks for services to reap (`check_reap_interval`, fixed).
pub const REAP_INTERVAL: Duration = Duration::from_secs(30);
/// How long a deregistration, a delete or a revoke waits for the catalog to follow before it
/// returns (milliseconds normally; the removal goes on in the background past this).
pub const REMOVAL_WAIT: Duration = Duration::from_secs(1);

/// Consul's expiry slack: a session (and so a TTL check) may outlive its TTL by about this much
/// before the agent marks it critical (see the Consul backend's capabilities).
const EXPIRY_SLACK: Duration = Duration::from_secs(2);

registry_core::counters! {
    /// The mirror's counters, shared by its handle and its task.
    struct Counters =>
    /// What the catalog mirror has done since it started. Fields may be added in minor releases.
    pub struct MirrorCounts {
        /// HTTP requests the mirror sent to the agent.
        requests,
        /// Instance registrations the agent accepted.
        registered,
        /// Deregistrations the agent accepted (instances and per-lease entries).
        deregistered,
        /// Heartbeats: passes of a lease's TTL check the agent accepted.
        heartbeats,
        /// Requests that failed (refused, unanswered, or answered with something the mirror
        /// cannot use); retried at the next keep-alive.
        failures,
        /// Agent answers the mirror could not use (unreadable JSON, a session without a usable
        /// TTL); logged, and counted in `failures` too.
        unreadable,
        /// Events merged into an operation already waiting for the agent (a later state of the
        /// same service ID, a second heartbeat of the same lease) instead of queued behind it.
        coalesced,
        /// Metadata entries left out of a service's `Meta` because Consul would refuse them.
        meta_skipped,
    }
}

/// The mirror of a registry's instances into Consul's catalog: give it to
/// [`RegistryBuilder::observer`](registry_engine::RegistryBuilder::observer).
///
/// Its memory is bounded by the registry's size, not by the agent's speed: what waits for the
/// agent is at most one operation per service ID (the latest state of the instance: registered
/// as last written, or removed), one heartbeat per lease and one end per lease; an event for
/// something already waiting replaces it ([`MirrorCounts::coalesced`]). Lease ends and removals
/// are sent first, then heartbeats, then registrations.
///
/// ```no_run
/// # async fn demo() -> registry_core::Result<()> {
/// use std::sync::Arc;
/// use registry_consul::ConsulBuilder;
/// use registry_consul_catalog::CatalogMirror;
/// use registry_engine::{Instance, Registry};
///
/// let consul = ConsulBuilder::from_url("consul://127.0.0.1:8500")?;
/// let mirror = Arc::new(CatalogMirror::start(&consul)?);
/// let registry = Registry::builder(Arc::new(consul.connect().await?))
///     .observer(mirror.clone())
///     .build()?;
/// let _web1 = registry.register(Instance::new("web", "web-1").addr("10.0.0.1:8080")).await?;
/// // `consul catalog services` now lists `web`; `mirror.counts()` says what the mirror did.
/// # Ok(()) }
/// ```
pub struct CatalogMirror {
    queue: Arc<Queue>,
    counters: Arc<Counters>,
    /// Names each instance's service as its Consul KV key.
    consul: ConsulBuilder,
}

impl fmt::Debug for CatalogMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogMirror")
            .field("counts", &self.counts())
            .finish()
    }
}

impl CatalogMirror {
    /// Starts the mirror's task on the current Tokio runtime, talking to the agent `consul` names
    /// (the one the registry's Consul backend talks to). The task ends when the mirror is
    /// dropped (after the operations already waiting).
    pub fn start(consul: &ConsulBuilder) -> Result<CatalogMirror> {
        let agent = consul.agent()?;
        let queue = Arc::new(Queue::default());
        let counters = Arc::new(Counters::default());
        tokio::spawn(Mirror::new(agent, counters.clone()).run(queue.clone()));
        Ok(CatalogMirror {
            queue,
            counters,
            consul: consul.clone(),
        })
    }

    fn send(&self, job: Job) {
        match self.queue.push(job) {
            Pushed::Queued => {}
            Pushed::Coalesced => self.counters.coalesced.bump(),
            Pushed::Gone => {
                // The task is gone (its runtime was shut down): nothing can be mirrored any more.
                self.counters.failures.bump();
                tracing::debug!("consul catalog mirror: its task has ended; operation dropped");
            }
        }
    }

    /// Waits (at most `limit`) until the operations sent so far are done (or superseded by later
    /// ones): a deregistration is in the catalog when the call that made it returns, so a process
    /// that exits right after its `shutdown` leaves nothing behind.
    async fn flush(&self, limit: Duration) {
        let wait = self.queue.flush();
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::debug!(
                ?limit,
                "consul catalog mirror: still busy; its deregistration goes on in the background"
            );
        }
    }

    /// What the mirror has done so far.
    pub fn counts(&self) -> MirrorCounts {
        self.counters.snapshot()
    }
}

impl CatalogMirror {
    /// How long after the last keep-alive of a lease with time-to-live `ttl` its instances may
    /// stay in Consul's catalog when the process dies without deregistering: their checks go
    /// critical `ttl` after the last heartbeat (Consul runs TTL checks on a timer; its expiry slack
    /// covers the alias checks and the sync), and the agent's reaper, which runs every 30 s,
    /// removes services whose check has been critical for 1 minute
    /// (`DeregisterCriticalServiceAfter`, Consul's minimum); then the agent syncs the removal to
    /// the catalog within moments (5 s allowed here).
    pub fn removal_bound(ttl: Duration) -> Duration {
        ttl + EXPIRY_SLACK + DEREGISTER_AFTER + REAP_INTERVAL + Duration::from_secs(5)
    }
}

impl Drop for CatalogMirror {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[async_trait]
impl RegistrationObserver for CatalogMirror {
    fn observe(&self, event: &RegistrationEvent) {
        let job = match event {
            RegistrationEvent::LeaseGranted { lease, ttl } => Job::Granted {
                session: lease.as_str().to_owned(),
                ttl: *ttl,
            },
            RegistrationEvent::Written {
                lease,
                key,
                instance,
            } => Job::Instance {
                service_id: self.consul.kv_key(key),
                change: Change::Put {
                    instance: instance.clone(),
                    session: lease.as_str().to_owned(),
                },
            },
            RegistrationEvent::Removed { key } => Job::Instance {
                service_id: self.consul.kv_key(key),
                change: Change::Delete,
            },
            RegistrationEvent::Yielded { key, holder } => Job::Instance {
                service_id: self.consul.kv_key(key),
                change: Change::Yield {
                    holder: holder.as_str().to_owned(),
                },
            },
            RegistrationEvent::KeptAlive { lease } => Job::Heartbeat {
                session: lease.as_str().to_owned(),
            },
            RegistrationEvent::LeaseEnded { lease } => Job::LeaseEnded {
                session: lease.as_str().to_owned(),
            },
            // Events of later versions: nothing to mirror.
            _ => return,
        };
        self.send(job);
    }

    async fn settle(&self) {
        self.flush(REMOVAL_WAIT).await;
    }
}
