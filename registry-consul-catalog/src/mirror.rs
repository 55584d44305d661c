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
//!
//! Why the agent API and not `/v1/catalog/register`: Consul's catalog is the servers' view of what
//! the agents report. An entry written directly to the catalog belongs to no agent: no agent runs
//! its checks (a TTL check there has no timer, so a dead process would stay passing forever), the
//! reaper never removes it, and the next anti-entropy run of the node's agent deletes it when the
//! node is an agent's own node. Registering with the agent makes the agent own the entry: it runs
//! the TTL and alias checks, syncs them to the catalog (anti-entropy), reaps them, and takes them
//! out when asked - the way Consul's own clients (the CLI, go-micro, Spring) register.
//!
//! Every call runs on one task, in the order the registry's keeper made its writes, so that a
//! register never overtakes the deregister that followed it; nothing here fails a KV write. The
//! keeper never waits for the catalog; a deregistration, a drain and a shutdown wait for it (at
//! most [`REMOVAL_WAIT`], milliseconds normally) once the backend confirmed them
//! ([`RegistrationObserver::settle`]), so that a process that exits right after deregistering or
//! shutting down leaves nothing in the catalog. A failed call is
//! logged (a warning on the first failure, then debug until a call works again), counted, and
//! retried at the lease's next keep-alive.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use registry_consul::{ConsulAgent, ConsulBuilder};
use registry_core::Result;
use registry_engine::{Instance, RegistrationEvent, RegistrationObserver};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

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
/// Consul's limits on service `Meta` (1.8: `structs.validateMetaPair`).
const META_MAX_PAIRS: usize = 64;
const META_KEY_MAX: usize = 128;
const META_VALUE_MAX: usize = 512;
/// The metadata entry whose comma-separated values become the service's tags.
const TAGS_ENTRY: &str = "tags";
/// Meta keys the mirror writes itself.
const META_LEASE: &str = "registry_lease";
const META_VERSION: &str = "version";
const META_WEIGHT: &str = "weight";

/// Consul's expiry slack: a session (and so a TTL check) may outlive its TTL by about this much
/// before the agent marks it critical (see the Consul backend's capabilities).
const EXPIRY_SLACK: Duration = Duration::from_secs(2);

/// What the catalog mirror has done since it started. Fields may be added in minor releases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorCounts {
    /// HTTP requests the mirror sent to the agent.
    pub requests: u64,
    /// Instance registrations the agent accepted.
    pub registered: u64,
    /// Deregistrations the agent accepted (instances and per-lease entries).
    pub deregistered: u64,
    /// Heartbeats: passes of a lease's TTL check the agent accepted.
    pub heartbeats: u64,
    /// Requests that failed (refused or unanswered); retried at the next keep-alive.
    pub failures: u64,
    /// Metadata entries left out of a service's `Meta` because Consul would refuse them.
    pub meta_skipped: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    registered: AtomicU64,
    deregistered: AtomicU64,
    heartbeats: AtomicU64,
    failures: AtomicU64,
    meta_skipped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the registry tells the mirror, in the order it happened.
enum Op {
    /// A lease was granted with this TTL.
    Granted { session: String, ttl: Duration },
    /// An instance was written under a lease.
    Put {
        service_id: String,
        instance: Arc<Instance>,
        session: String,
    },
    /// An instance's key was deleted.
    Delete { service_id: String },
    /// A keep-alive of the lease succeeded.
    Heartbeat { session: String },
    /// The lease was revoked, or the server reports it gone.
    LeaseEnded { session: String },
    /// Answered once every operation sent before it is done.
    Flush { done: oneshot::Sender<()> },
}

/// The mirror of a registry's instances into Consul's catalog: give it to
/// [`RegistryBuilder::observer`](registry_engine::RegistryBuilder::observer).
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
    tx: mpsc::UnboundedSender<Op>,
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
    /// dropped (after the operations already sent).
    pub fn start(consul: &ConsulBuilder) -> Result<CatalogMirror> {
        let agent = consul.agent()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let mirror = Mirror {
            timeout: agent.request_timeout(),
            agent,
            counters: counters.clone(),
            leases: HashMap::new(),
            instances: BTreeMap::new(),
            pending_deregisters: BTreeSet::new(),
            failing: false,
            in_maintenance: None,
        };
        tokio::spawn(mirror.run(rx));
        Ok(CatalogMirror {
            tx,
            counters,
            consul: consul.clone(),
        })
    }

    fn send(&self, op: Op) {
        if self.tx.send(op).is_err() {
            // The task is gone (its runtime was shut down): nothing can be mirrored any more.
            bump(&self.counters.failures);
            tracing::debug!("consul catalog mirror: its task has ended; operation dropped");
        }
    }

    /// Waits (at most `limit`) until the operations sent so far are done: a deregistration is in
    /// the catalog when the call that made it returns, so a process that exits right after its
    /// `shutdown` leaves nothing behind.
    async fn flush(&self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        self.send(Op::Flush { done });
        if tokio::time::timeout(limit, wait).await.is_err() {
            tracing::debug!(
                ?limit,
                "consul catalog mirror: still busy; its deregistration goes on in the background"
            );
        }
    }

    /// What the mirror has done so far.
    pub fn counts(&self) -> MirrorCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MirrorCounts {
            requests: get(&c.requests),
            registered: get(&c.registered),
            deregistered: get(&c.deregistered),
            heartbeats: get(&c.heartbeats),
            failures: get(&c.failures),
            meta_skipped: get(&c.meta_skipped),
        }
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

#[async_trait]
impl RegistrationObserver for CatalogMirror {
    fn observe(&self, event: &RegistrationEvent) {
        let op = match event {
            RegistrationEvent::LeaseGranted { lease, ttl } => Op::Granted {
                session: lease.as_str().to_owned(),
                ttl: *ttl,
            },
            RegistrationEvent::Written {
                lease,
                key,
                instance,
            } => Op::Put {
                service_id: self.consul.kv_key(key),
                instance: instance.clone(),
                session: lease.as_str().to_owned(),
            },
            RegistrationEvent::Removed { key } => Op::Delete {
                service_id: self.consul.kv_key(key),
            },
            RegistrationEvent::KeptAlive { lease } => Op::Heartbeat {
                session: lease.as_str().to_owned(),
            },
            RegistrationEvent::LeaseEnded { lease } => Op::LeaseEnded {
                session: lease.as_str().to_owned(),
            },
            // Events of later versions: nothing to mirror.
            _ => return,
        };
        self.send(op);
    }

    async fn settle(&self) {
        self.flush(REMOVAL_WAIT).await;
    }
}

/// The ID of a lease's own entry (and of its TTL check).
pub(crate) fn lease_service_id(session: &str) -> String {
    format!("{LEASE_SERVICE}-{session}")
}

/// Host and port of an instance address: `host:port`, `[v6]:port`, or a URL
/// (`scheme://[user@]host[:port][/...]`, port 80/443 by default for http(s) and ws(s)). Port 0
/// when none can be told.
pub(crate) fn split_address(addr: &str) -> (String, u16) {
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, addr),
    };
    let authority = if scheme.is_some() {
        let a = rest.split(['/', '?', '#']).next().unwrap_or("");
        a.rsplit_once('@').map_or(a, |(_, host)| host)
    } else {
        rest
    };
    let default_port = match scheme.as_deref() {
        Some("http" | "ws") => 80,
        Some("https" | "wss") => 443,
        _ => 0,
    };
    if let Some(inner) = authority.strip_prefix('[') {
        if let Some((host, tail)) = inner.split_once(']') {
            let port = tail
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(default_port);
            return (host.to_owned(), port);
        }
    }
    match authority.rsplit_once(':') {
        // One colon only: `host:port` (a bare IPv6 address has several and no port).
        Some((host, port)) if !host.contains(':') && !host.is_empty() => match port.parse() {
            Ok(p) => (host.to_owned(), p),
            Err(_) => (authority.to_owned(), default_port),
        },
        _ => (authority.to_owned(), default_port),
    }
}

fn meta_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= META_KEY_MAX
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !k.starts_with("consul-")
}

/// The service's `Meta`: ours first, then the instance's metadata that Consul accepts. Returns
/// the left-out keys with why.
pub(crate) fn service_meta(
    inst: &Instance,
    session: &str,
) -> (BTreeMap<String, String>, Vec<(String, &'static str)>) {
    let mut meta = BTreeMap::new();
    meta.insert(META_LEASE.to_owned(), session.to_owned());
    meta.insert(META_WEIGHT.to_owned(), inst.weight.to_string());
    let mut skipped = Vec::new();
    if let Some(v) = &inst.version {
        if v.len() <= META_VALUE_MAX {
            meta.insert(META_VERSION.to_owned(), v.clone());
        } else {
            skipped.push((META_VERSION.to_owned(), "value longer than 512 bytes"));
        }
    }
    for (k, v) in &inst.metadata {
        let why = if !meta_key_ok(k) {
            "key not 1-128 of A-Z a-z 0-9 _ - (or starting with the reserved consul-)"
        } else if v.len() > META_VALUE_MAX {
            "value longer than 512 bytes"
        } else if meta.contains_key(k) {
            "key used by the registry itself"
        } else if meta.len() >= META_MAX_PAIRS {
            "more than 64 entries"
        } else {
            meta.insert(k.clone(), v.clone());
            continue;
        };
        skipped.push((k.clone(), why));
    }
    (meta, skipped)
}

/// The service's tags: the comma-separated values of the `tags` metadata entry.
pub(crate) fn service_tags(inst: &Instance) -> Vec<String> {
    inst.metadata
        .get(TAGS_ENTRY)
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-encodes a query value.
fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

#[derive(Default)]
struct LeaseEntry {
    ttl: Option<Duration>,
    /// Its own entry (with the TTL check) is registered with the agent, as far as we know.
    registered: bool,
    /// The service IDs of its instances.
    members: BTreeSet<String>,
}

struct InstanceEntry {
    session: String,
    registration: Value,
    offline: bool,
    /// The agent holds `registration` (and the maintenance state below).
    synced: bool,
    /// Whether maintenance mode is on at the agent, as far as we know (`None`: unknown).
    maintenance: Option<bool>,
}

struct Mirror {
    agent: ConsulAgent,
    timeout: Duration,
    counters: Arc<Counters>,
    leases: HashMap<String, LeaseEntry>,
    instances: BTreeMap<String, InstanceEntry>,
    /// Deregistrations that failed: retried at every heartbeat until the agent confirms them (an
    /// entry left behind would stay passing while its lease lives).
    pending_deregisters: BTreeSet<String>,
    /// The last request failed (for logging: one warning per run of failures).
    failing: bool,
    /// The services the agent has in maintenance mode (see [`Mirror::in_maintenance`]).
    in_maintenance: Option<BTreeSet<String>>,
}

impl Mirror {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = rx.recv().await {
            match op {
                Op::Granted { session, ttl } => {
                    self.leases.entry(session).or_default().ttl = Some(ttl);
                }
                Op::Put {
                    service_id,
                    instance,
                    session,
                } => self.put(service_id, &instance, session).await,
                Op::Delete { service_id } => self.delete(&service_id).await,
                Op::Heartbeat { session } => self.heartbeat(&session).await,
                Op::LeaseEnded { session } => self.lease_ended(&session).await,
                Op::Flush { done } => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// One request to the agent; `true` when it answered with success.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        body: Option<Value>,
    ) -> bool {
        bump(&self.counters.requests);
        let body = body.map(|b| b.to_string().into_bytes());
        let what = format!("{method} {path}");
        match self
            .agent
            .request(method, path, query, body, self.timeout)
            .await
        {
            Ok(a) if a.is_success() => {
                if self.failing {
                    self.failing = false;
                    tracing::info!("consul catalog mirror: the agent accepts requests again");
                }
                true
            }
            Ok(a) => {
                self.failed(&what, &format!("{} {}", a.status, a.text()));
                false
            }
            Err(e) => {
                self.failed(&what, &e.to_string());
                false
            }
        }
    }

    fn failed(&mut self, what: &str, why: &str) {
        bump(&self.counters.failures);
        if self.failing {
            tracing::debug!(
                request = what,
                error = why,
                "consul catalog mirror: request failed"
            );
        } else {
            self.failing = true;
            tracing::warn!(
                request = what,
                error = why,
                "consul catalog mirror: request failed; the KV registration is unaffected, the \
                 catalog is retried at the next keep-alive (catalog=false in the URL turns the \
                 mirror off)"
            );
        }
    }

    async fn put(&mut self, service_id: String, inst: &Instance, session: String) {
        let registration = self.registration(&service_id, &session, inst);
        let mut maintenance = None;
        if let Some(old) = self.instances.remove(&service_id) {
            maintenance = old.maintenance;
            if old.session != session {
                self.leave_lease(&old.session, &service_id).await;
            }
        }
        self.pending_deregisters.remove(&service_id);
        self.leases
            .entry(session.clone())
            .or_default()
            .members
            .insert(service_id.clone());
        self.instances.insert(
            service_id.clone(),
            InstanceEntry {
                session,
                registration,
                offline: !inst.is_online(),
                synced: false,
                maintenance,
            },
        );
        self.sync_instance(&service_id).await;
    }

    fn registration(&self, service_id: &str, session: &str, inst: &Instance) -> Value {
        let (address, port) = split_address(inst.addrs.first().map_or("", String::as_str));
        let (meta, skipped) = service_meta(inst, session);
        for (k, why) in &skipped {
            bump(&self.counters.meta_skipped);
            tracing::warn!(
                instance = %inst,
                meta_key = %k.chars().take(64).collect::<String>(),
                why,
                "consul catalog mirror: metadata entry left out of the service's Meta"
            );
        }
        let lease_id = lease_service_id(session);
        json!({
            "ID": service_id,
            "Name": inst.service,
            "Tags": service_tags(inst),
            "Address": address,
            "Port": port,
            "Meta": meta,
            "Weights": {"Passing": inst.weight, "Warning": 1},
            "Check": {
                "Name": "registry lease",
                "Notes": format!(
                    "alias of {lease_id}: passing while the registering process keeps its lease alive"
                ),
                "AliasService": lease_id,
                "DeregisterCriticalServiceAfter": go_duration(DEREGISTER_AFTER),
            },
        })
    }

    /// Registers an instance (its lease's entry first) and sets its maintenance mode; `true` when
    /// the agent has it all.
    async fn sync_instance(&mut self, service_id: &str) -> bool {
        let Some(e) = self.instances.get(service_id) else {
            return true;
        };
        let session = e.session.clone();
        let registration = e.registration.clone();
        if !self.ensure_lease(&session).await {
            return false;
        }
        if !self
            .request("PUT", "/v1/agent/service/register", "", Some(registration))
            .await
        {
            return false;
        }
        bump(&self.counters.registered);
        let Some(e) = self.instances.get(service_id) else {
            return true;
        };
        let offline = e.offline;
        // Maintenance mode survives a re-registration: for an ID new to this process (an earlier
        // run may have left it on) ask the agent's list, read once; then set it when it differs.
        if e.maintenance.is_none() {
            let on = self
                .in_maintenance()
                .await
                .map(|ids| ids.contains(service_id));
            if let Some(e) = self.instances.get_mut(service_id) {
                e.maintenance = on;
            }
        }
        let known = self.instances.get(service_id).and_then(|e| e.maintenance);
        if known != Some(offline) {
            let query = if offline {
                format!(
                    "enable=true&reason={}",
                    query_value("offline: set_online(false) through the service registry")
                )
            } else {
                "enable=false".to_owned()
            };
            let path = format!("/v1/agent/service/maintenance/{service_id}");
            if !self.request("PUT", &path, &query, None).await {
                return false;
            }
            if let Some(e) = self.instances.get_mut(service_id) {
                e.maintenance = Some(offline);
            }
            if let Some(ids) = &mut self.in_maintenance {
                if offline {
                    ids.insert(service_id.to_owned());
                } else {
                    ids.remove(service_id);
                }
            }
        }
        if let Some(e) = self.instances.get_mut(service_id) {
            e.synced = true;
        }
        true
    }

    /// The services the agent has in maintenance mode: listed once (`GET /v1/agent/checks`), then
    /// kept up to date with our own changes. `None` when the agent does not answer.
    async fn in_maintenance(&mut self) -> Option<&BTreeSet<String>> {
        if self.in_maintenance.is_none() {
            bump(&self.counters.requests);
            let a = match self
                .agent
                .request("GET", "/v1/agent/checks", "", None, self.timeout)
                .await
            {
                Ok(a) if a.status == 200 => a,
                Ok(a) => {
                    self.failed(
                        "GET /v1/agent/checks",
                        &format!("{} {}", a.status, a.text()),
                    );
                    return None;
                }
                Err(e) => {
                    self.failed("GET /v1/agent/checks", &e.to_string());
                    return None;
                }
            };
            #[derive(Deserialize)]
            struct Check {
                #[serde(rename = "CheckID")]
                check_id: String,
                #[serde(rename = "ServiceID", default)]
                service_id: String,
            }
            let checks: HashMap<String, Check> = serde_json::from_slice(&a.body).ok()?;
            self.in_maintenance = Some(
                checks
                    .into_values()
                    .filter(|c| c.check_id.starts_with("_service_maintenance:"))
                    .map(|c| c.service_id)
                    .collect(),
            );
        }
        self.in_maintenance.as_ref()
    }

    /// Registers the lease's own entry with its TTL check (passing) unless the agent has it.
    async fn ensure_lease(&mut self, session: &str) -> bool {
        let entry = self.leases.entry(session.to_owned()).or_default();
        if entry.registered {
            return true;
        }
        let ttl = match entry.ttl {
            Some(t) => t,
            None => match self.session_ttl(session).await {
                Some(t) => {
                    self.leases.entry(session.to_owned()).or_default().ttl = Some(t);
                    t
                }
                None => return false,
            },
        };
        let id = lease_service_id(session);
        let body = json!({
            "ID": id,
            "Name": LEASE_SERVICE,
            "Meta": {META_LEASE: session},
            "Check": {
                "CheckID": id,
                "Name": "registry lease heartbeat",
                "Notes": "passed at every keep-alive of the lease; its instances' checks are aliases of this one",
                "TTL": go_duration(ttl),
                "Status": "passing",
                "DeregisterCriticalServiceAfter": go_duration(DEREGISTER_AFTER),
            },
        });
        if !self
            .request("PUT", "/v1/agent/service/register", "", Some(body))
            .await
        {
            return false;
        }
        self.leases
            .entry(session.to_owned())
            .or_default()
            .registered = true;
        true
    }

    /// The TTL of a lease this backend did not grant (another handle of the same session).
    async fn session_ttl(&mut self, session: &str) -> Option<Duration> {
        bump(&self.counters.requests);
        let path = format!("/v1/session/info/{session}");
        let a = match self
            .agent
            .request("GET", &path, "", None, self.timeout)
            .await
        {
            Ok(a) if a.status == 200 => a,
            Ok(a) => {
                self.failed(&path, &format!("{} {}", a.status, a.text()));
                return None;
            }
            Err(e) => {
                self.failed(&path, &e.to_string());
                return None;
            }
        };
        #[derive(Deserialize)]
        struct S {
            #[serde(rename = "TTL")]
            ttl: String,
        }
        let s: Vec<S> = serde_json::from_slice(&a.body).unwrap_or_default();
        s.first()
            .and_then(|s| registry_core::config::parse_duration(&s.ttl))
    }

    async fn deregister(&mut self, service_id: &str) -> bool {
        let path = format!("/v1/agent/service/deregister/{service_id}");
        if self.request("PUT", &path, "", None).await {
            bump(&self.counters.deregistered);
            self.pending_deregisters.remove(service_id);
            true
        } else {
            self.pending_deregisters.insert(service_id.to_owned());
            false
        }
    }

    async fn delete(&mut self, service_id: &str) {
        let old = self.instances.remove(service_id);
        self.deregister(service_id).await;
        if let Some(old) = old {
            self.leave_lease(&old.session, service_id).await;
        }
    }

    /// Takes an instance off its lease; a lease left with no instance leaves the catalog too.
    async fn leave_lease(&mut self, session: &str, service_id: &str) {
        let Some(lease) = self.leases.get_mut(session) else {
            return;
        };
        lease.members.remove(service_id);
        if lease.members.is_empty() && lease.registered {
            lease.registered = false;
            self.deregister(&lease_service_id(session)).await;
        }
    }

    async fn heartbeat(&mut self, session: &str) {
        // Earlier failures first, stopping at the first that fails again: an agent that refuses
        // (a token without service:write) costs a request or two per heartbeat, not one per
        // instance.
        let retries: Vec<String> = self.pending_deregisters.iter().cloned().collect();
        for id in retries {
            if !self.deregister(&id).await {
                break;
            }
        }
        let Some(lease) = self.leases.get(session) else {
            return;
        };
        if lease.members.is_empty() {
            // A lease with no instance (plain keys, or all deregistered): nothing to keep alive.
            return;
        }
        // Instances whose registration failed earlier are tried again first.
        let unsynced: Vec<String> = lease
            .members
            .iter()
            .filter(|id| self.instances.get(*id).is_some_and(|e| !e.synced))
            .cloned()
            .collect();
        for id in &unsynced {
            if !self.sync_instance(id).await {
                break;
            }
        }
        if !self.leases.get(session).is_some_and(|l| l.registered) {
            return;
        }
        let path = format!("/v1/agent/check/pass/{}", lease_service_id(session));
        if self.request("PUT", &path, "", None).await {
            bump(&self.counters.heartbeats);
            return;
        }
        // The agent does not know the check (it restarted without its state, or reaped the
        // entry after a long silence) or did not answer: register everything of this lease
        // again (the entry is registered passing, which is the heartbeat).
        let members: Vec<String> = match self.leases.get_mut(session) {
            Some(l) => {
                l.registered = false;
                l.members.iter().cloned().collect()
            }
            None => return,
        };
        for id in &members {
            if let Some(e) = self.instances.get_mut(id) {
                e.synced = false;
                e.maintenance = None;
            }
        }
        self.in_maintenance = None;
        for id in &members {
            if !self.sync_instance(id).await {
                break;
            }
        }
    }

    async fn lease_ended(&mut self, session: &str) {
        let lease = self.leases.remove(session).unwrap_or_default();
        if !lease.registered && lease.members.is_empty() {
            // Nothing of this lease was mirrored (a lease for plain keys).
            return;
        }
        // The agent says which services are on this lease (by our meta key): an instance that
        // another process took over on this agent is on its lease now and stays. Only when the
        // agent cannot tell, our own record.
        let filter = format!("Meta.{META_LEASE} == \"{session}\"");
        bump(&self.counters.requests);
        let listed = match self
            .agent
            .request(
                "GET",
                "/v1/agent/services",
                &format!("filter={}", query_value(&filter)),
                None,
                self.timeout,
            )
            .await
        {
            Ok(a) if a.status == 200 => {
                serde_json::from_slice::<HashMap<String, Value>>(&a.body).ok()
            }
            _ => None,
        };
        let mut ids: BTreeSet<String> = match listed {
            Some(listed) => listed.into_keys().collect(),
            None => lease.members,
        };
        let lease_id = lease_service_id(session);
        ids.remove(&lease_id);
        for id in ids {
            // Not one that has moved to another lease since.
            if self
                .instances
                .get(&id)
                .is_some_and(|e| e.session != session)
            {
                continue;
            }
            self.instances.remove(&id);
            self.deregister(&id).await;
        }
        self.deregister(&lease_id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for (a, host, port) in [
            ("10.0.0.1:8080", "10.0.0.1", 8080),
            ("web.local:80", "web.local", 80),
            ("[::1]:9000", "::1", 9000),
            ("http://10.0.0.2:8081/path?x=1", "10.0.0.2", 8081),
            ("https://user:pw@api.example:8443", "api.example", 8443),
            ("http://10.0.0.3/", "10.0.0.3", 80),
            ("https://[fe80::1]/x", "fe80::1", 443),
            ("grpc://10.0.0.4:50051", "10.0.0.4", 50051),
            ("fe80::1", "fe80::1", 0),
            ("just-a-host", "just-a-host", 0),
            ("host:notaport", "host:notaport", 0),
        ] {
            assert_eq!(split_address(a), (host.to_owned(), port), "{a}");
        }
    }

    #[test]
    fn meta_keeps_what_consul_accepts_and_says_what_it_left_out() {
        let mut inst = Instance::new("web", "w1")
            .addr("10.0.0.1:80")
            .version("1.2.3")
            .weight(7)
            .meta("app", "a")
            .meta("bad key", "x")
            .meta("consul-reserved", "x")
            .meta("long", "v".repeat(513))
            .meta("k".repeat(129), "x")
            .meta("weight", "mine");
        for i in 0..70 {
            inst = inst.meta(format!("m{i:02}"), "x");
        }
        let (meta, skipped) = service_meta(&inst, "s-1");
        assert_eq!(meta.len(), META_MAX_PAIRS);
        assert_eq!(meta["registry_lease"], "s-1");
        assert_eq!(meta["weight"], "7");
        assert_eq!(meta["version"], "1.2.3");
        assert_eq!(meta["app"], "a");
        let left: Vec<&str> = skipped.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["bad key", "consul-reserved", "long", "weight"] {
            assert!(left.contains(&k), "{k} in {left:?}");
        }
        // 64 = 3 of ours + app + 60 of the 70 others (in key order).
        assert_eq!(skipped.len(), 5 + 10, "{left:?}");
    }

    #[test]
    fn tags_come_from_the_tags_entry() {
        let inst = Instance::new("web", "w1")
            .addr("x:1")
            .meta("tags", "blue, canary,,");
        assert_eq!(service_tags(&inst), vec!["blue", "canary"]);
        assert!(service_tags(&Instance::new("web", "w1").addr("x:1")).is_empty());
    }
}
