//! A source for a [`Directory`] that follows DNS SRV records.
//!
//! Services that are announced in DNS rather than in our registry (Consul's DNS interface,
//! Kubernetes' `_port._proto.svc` records, a zone file) show up in the same [`Directory`] as the
//! instances our backend shows: same `get`, `find`, `changes`. A [`DnsSource`] follows one SRV name
//! per service of the directory and publishes, as a source of its own, one instance per SRV record:
//!
//! - **id**: the record's target and port, `<target>:<port>` (lower case, without the final dot;
//!   see [`instance_id`]), so it stays the same from one answer to the next;
//! - **addresses**: `ip:port` for each A/AAAA address of the target, taken from the answer's
//!   additional section (Consul puts them there) or else looked up;
//! - **weight**: the SRV weight times [`DnsSourceBuilder::weight_scale`] (by default one SRV
//!   weight unit is our default weight), at least 1 (SRV weight 0) and at most [`MAX_WEIGHT`];
//! - **metadata**: `dns.name` (the SRV name followed), `dns.target`, `dns.priority` and
//!   `dns.weight` (as in the record). Routing does not look at the priority.
//!
//! **Polling honours the TTLs.** Each name is queried again when the shortest TTL of the records
//! its answer was built from runs out (that of the SOA for a negative answer), but never sooner
//! than [`ttl_floor`](DnsSourceBuilder::ttl_floor) (1 s by default: Consul serves TTL 0 unless
//! configured otherwise) and never later than [`ttl_ceiling`](DnsSourceBuilder::ttl_ceiling)
//! (5 min), up to [`jitter`](DnsSourceBuilder::jitter) early so that a fleet does not query in step.
//! The resolver's cache is off: every poll asks the server.
//!
//! **An empty answer is not an error.** NXDOMAIN, or a name without SRV records, means that the DNS
//! says nothing is there: the service is published empty (and fresh). A failure to get an answer
//! (timeout, SERVFAIL, REFUSED, an unreachable server) marks the source's view of the service stale
//! and keeps its last instances; the query is retried with a growing, jittered delay ([`Backoff`])
//! until an answer comes back. A target whose address cannot be looked up (while the SRV answer
//! came) does not hold up the other records: its instance stays as it was shown (or is not shown if
//! it is new), counted in [`DnsCounts::target_errors`], and the name is queried again at the floor.
//!
//! The resolver is [hickory-resolver](https://docs.rs/hickory-resolver) on tokio: the name servers
//! given with [`DnsSourceBuilder::nameserver`] (UDP, TCP when an answer is truncated), or those of
//! the system (`/etc/resolv.conf`, with its search domains: end a name with `.` to skip them).
//!
//! ```no_run
//! # async fn demo() -> registry_core::Result<()> {
//! use std::time::Duration;
//! use registry_engine::Directory;
//! use registry_dns::DnsSource;
//!
//! let dir = Directory::new();
//! // Consul's DNS interface; `web` and `api` in the directory follow these SRV names.
//! let dns = DnsSource::builder()
//!     .nameserver("10.0.0.2:8600".parse().unwrap())
//!     .follow("web", "web.service.consul.")
//!     .follow("api", "_http._tcp.api.example.com.")
//!     .ttl_floor(Duration::from_secs(2))
//!     .start(&dir, "dns", -10)?;
//! let mut web = dir.subscribe("web");
//! web.wait_for(|s| s.is_synced()).await.ok();
//! if let Some(owner) = dir.find("web", "user-42") {
//!     println!("{} at {:?} (from {:?})", owner.id, owner.addrs, dir.snapshot("web").source_of(&owner.id));
//! }
//! println!("{:?}", dns.counts());
//! drop(dns); // stops polling; what it published stays until withdrawn
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::Ordering;

use registry_core::counters::Bump;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, Record};
use registry_core::{Error, ErrorKind, Result};
use registry_engine::{
    Backoff, DEFAULT_WEIGHT, Directory, Instance, MAX_ID_LEN, MAX_WEIGHT, SourceHandle,
    validate_id, validate_service,
};
use tokio::task::JoinSet;

/// Metadata key: the SRV name an instance was found under.
pub const META_NAME: &str = "dns.name";
/// Metadata key: the SRV record's target host (without the final dot).
pub const META_TARGET: &str = "dns.target";
/// Metadata key: the SRV record's priority (lower is preferred; routing ignores it).
pub const META_PRIORITY: &str = "dns.priority";
/// Metadata key: the SRV record's weight, as in the record.
pub const META_WEIGHT: &str = "dns.weight";

/// The default [`DnsSourceBuilder::ttl_floor`].
pub const DEFAULT_TTL_FLOOR: Duration = Duration::from_secs(1);
/// The default [`DnsSourceBuilder::ttl_ceiling`].
pub const DEFAULT_TTL_CEILING: Duration = Duration::from_secs(300);

/// Configures and starts a [`DnsSource`]. From [`DnsSource::builder`].
#[derive(Clone, Debug)]
pub struct DnsSourceBuilder {
    nameservers: Vec<SocketAddr>,
    follow: Vec<(String, String)>,
    ttl_floor: Duration,
    ttl_ceiling: Duration,
    jitter: f64,
    query_timeout: Duration,
    attempts: usize,
    retry_base: Duration,
    retry_max: Duration,
    weight_scale: u32,
}

impl Default for DnsSourceBuilder {
    fn default() -> Self {
        DnsSourceBuilder {
            nameservers: Vec::new(),
            follow: Vec::new(),
            ttl_floor: DEFAULT_TTL_FLOOR,
            ttl_ceiling: DEFAULT_TTL_CEILING,
            jitter: 0.1,
            query_timeout: Duration::from_secs(2),
            attempts: 1,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            weight_scale: DEFAULT_WEIGHT,
        }
    }
}

impl DnsSourceBuilder {
    /// Asks this name server (`ip:port`, UDP and TCP when an answer is truncated); may be given
    /// more than once. Without any, the system's configuration (`/etc/resolv.conf`) is used.
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameservers.push(addr);
        self
    }

    /// Shows the SRV records of `srv_name` (`web.service.consul.`, `_http._tcp.example.com.`) as
    /// the instances of `service` in the directory. A service follows one name.
    pub fn follow(mut self, service: impl Into<String>, srv_name: impl Into<String>) -> Self {
        self.follow.push((service.into(), srv_name.into()));
        self
    }

    /// The shortest wait between two queries of a name, whatever the TTL (default 1 s).
    pub fn ttl_floor(mut self, floor: Duration) -> Self {
        self.ttl_floor = floor;
        self
    }

    /// The longest wait between two queries of a name, whatever the TTL (default 5 min).
    pub fn ttl_ceiling(mut self, ceiling: Duration) -> Self {
        self.ttl_ceiling = ceiling;
        self
    }

    /// Up to this fraction of the wait (0 to 1, default 0.1) is taken off at random, never
    /// going below the floor.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// How long one query may take, all name servers and retries included (default 2 s).
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// How many times the resolver retries a query that failed (default 1).
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts;
        self
    }

    /// The back-off after a failed query: starting near `base`, doubling, at most `max` (default
    /// 500 ms to 30 s). Named as the same setting of `DiscoveryOptions` and
    /// `CatalogSourceBuilder`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base;
        self.retry_max = max;
        self
    }

    /// The former name of [`backoff`](Self::backoff).
    #[deprecated(note = "renamed backoff, as in DiscoveryOptions and CatalogSourceBuilder")]
    pub fn retry(self, base: Duration, max: Duration) -> Self {
        self.backoff(base, max)
    }

    /// The weight of an instance per unit of SRV weight (default [`DEFAULT_WEIGHT`], so SRV
    /// weight 1, Consul's default, is our default weight). 1 takes SRV weights as they are. The
    /// result is at least 1 and at most [`MAX_WEIGHT`].
    pub fn weight_scale(mut self, scale: u32) -> Self {
        self.weight_scale = scale;
        self
    }

    fn validate(&self) -> Result<Vec<Followed>> {
        if self.follow.is_empty() {
            return Err(Error::invalid("a DNS source follows at least one SRV name"));
        }
        if self.ttl_floor.is_zero() {
            return Err(Error::invalid(
                "the DNS source's TTL floor must be above zero",
            ));
        }
        if self.ttl_ceiling < self.ttl_floor {
            return Err(Error::invalid(format!(
                "the DNS source's TTL ceiling ({:?}) is below its floor ({:?})",
                self.ttl_ceiling, self.ttl_floor
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::invalid(format!(
                "the DNS source's jitter is a fraction from 0 to 1, not {}",
                self.jitter
            )));
        }
        if self.query_timeout.is_zero() || self.retry_base.is_zero() || self.weight_scale == 0 {
            return Err(Error::invalid(
                "the DNS source's query timeout, retry delay and weight scale must be above zero",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (service, srv) in &self.follow {
            validate_service(service)?;
            if !seen.insert(service.as_str()) {
                return Err(Error::invalid(format!(
                    "service {service:?} follows two SRV names; a service follows one"
                )));
            }
            let name = Name::from_str(srv).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("{srv:?} is not a DNS name"),
                )
                .with_source(e)
            })?;
            if name.is_root() {
                return Err(Error::invalid(format!(
                    "{srv:?} is not a DNS name to follow"
                )));
            }
            out.push(Followed {
                service: service.clone(),
                srv: srv.clone(),
                name,
            });
        }
        Ok(out)
    }

    fn resolver(&self) -> Result<TokioResolver> {
        let mut builder = if self.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "cannot read the system's DNS configuration",
                )
                .with_source(e)
            })?
        } else {
            let servers = self
                .nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    ns
                })
                .collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            );
            // Only the server's word: no /etc/hosts.
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts = builder.options_mut();
        // Every poll asks the server: the TTLs are honoured by the polling itself.
        opts.cache_size = 0;
        opts.timeout = self.query_timeout;
        opts.attempts = self.attempts;
        builder.build().map_err(|e| {
            Error::new(ErrorKind::InvalidInput, "cannot build the DNS resolver").with_source(e)
        })
    }

    /// Starts following the names, publishing into `dir` as source `name` with `precedence` (see
    /// [`Directory::source`]). Must be called within a tokio runtime; polling runs in tasks of
    /// that runtime until the returned [`DnsSource`] is dropped.
    pub fn start(self, dir: &Directory, name: &str, precedence: i32) -> Result<DnsSource> {
        let followed = self.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::invalid("a DNS source must be started within a tokio runtime"))?;
        let resolver = self.resolver()?;
        let handle = Arc::new(dir.source(name, precedence)?);
        let shared = Arc::new(Shared {
            counts: Counters::default(),
            status: Mutex::new(
                followed
                    .iter()
                    .map(|f| {
                        (
                            f.service.clone(),
                            DnsStatus {
                                srv_name: f.srv.clone(),
                                ..DnsStatus::default()
                            },
                        )
                    })
                    .collect(),
            ),
        });
        let schedule = Schedule {
            floor: self.ttl_floor,
            ceiling: self.ttl_ceiling,
            jitter: self.jitter,
        };
        let mut tasks = JoinSet::new();
        for f in followed {
            let follower = Follower {
                followed: f,
                resolver: resolver.clone(),
                handle: handle.clone(),
                shared: shared.clone(),
                schedule,
                deadline: self
                    .query_timeout
                    .saturating_mul(u32::try_from(self.attempts + 1).unwrap_or(u32::MAX))
                    .saturating_add(self.query_timeout),
                backoff: Backoff::new(self.retry_base, self.retry_max),
                weight_scale: self.weight_scale,
            };
            tasks.spawn_on(follower.run(), &runtime);
        }
        Ok(DnsSource {
            tasks,
            shared,
            handle,
        })
    }
}

/// Follows SRV names and publishes what they list into a [`Directory`]. From
/// [`DnsSource::builder`].
///
/// Dropping it stops the polling; what it published stays in the directory (as when a
/// [`Discovery`](registry_engine::Discovery) is dropped) until
/// [`withdraw_all`](Self::withdraw_all).
pub struct DnsSource {
    /// One poller per followed name, aborted with the source.
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
    handle: Arc<SourceHandle>,
}

impl fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSource")
            .field("name", &self.handle.name())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl DnsSource {
    /// A builder with the defaults: the system's name servers, TTL floor 1 s, ceiling 5 min.
    pub fn builder() -> DnsSourceBuilder {
        DnsSourceBuilder::default()
    }

    /// The source's name in the directory.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// What happened so far, over every name followed.
    pub fn counts(&self) -> DnsCounts {
        self.shared.counts.snapshot()
    }

    /// Where following `service` stands (`None` if this source does not follow it).
    pub fn status(&self, service: &str) -> Option<DnsStatus> {
        lock(&self.shared.status).get(service).cloned()
    }

    /// Stops polling and removes everything this source published.
    pub fn withdraw_all(mut self) {
        self.tasks.abort_all();
        self.handle.withdraw_all();
    }
}

registry_core::counters! {
    /// A source's counters, shared by its pollers.
    struct Counters =>
    /// Counters of a [`DnsSource`], over every name it follows.
    pub struct DnsCounts {
        /// SRV queries sent.
        queries,
        /// Queries answered (records, NXDOMAIN or no records).
        answers,
        /// Queries that failed (timeout, SERVFAIL, REFUSED, unreachable, ...): the view went or
        /// stayed stale.
        errors,
        /// Answers that listed nothing (NXDOMAIN, no SRV records, or none usable).
        empty_answers,
        /// SRV records that could not become an instance (a target without an address, a duplicate
        /// target and port, an invalid instance, a target whose lookup failed and that was not shown
        /// before), counted in every answer that has them.
        skipped_records,
        /// Lookups of an SRV target's address that failed (timeout, SERVFAIL, ...) in an answer that
        /// did come: the target's records keep the instance shown before (or are skipped if there was
        /// none), the others are updated, and the name is queried again at the floor.
        target_errors,
        /// Answers that changed what the directory shows.
        changes,
    }
}

/// Where following one service stands. From [`DnsSource::status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsStatus {
    /// The SRV name followed.
    pub srv_name: String,
    /// The instances the last answer listed.
    pub instances: usize,
    /// The TTL of the last answer (the shortest of its records; `None` before the first or when
    /// the answer carried none).
    pub last_ttl: Option<Duration>,
    /// The wait chosen after the last query: from the TTL after an answer, from the back-off
    /// after a failure.
    pub next_query_in: Duration,
    /// Failed queries since the last answer.
    pub consecutive_errors: u32,
    /// Why the last query failed, if it did.
    pub last_error: Option<String>,
    /// The source's revision of the service: how many answers changed it.
    pub revision: u64,
}

/// The id of the instance an SRV record with this target and port becomes: `<target>:<port>`,
/// lower case, without the final dot. Characters our ids do not allow are replaced by `-`, a
/// leading one is dropped, and a target too long is cut; in those cases a hash of the whole
/// target is added so that two targets never share an id.
///
/// ```
/// assert_eq!(
///     registry_dns::instance_id("0A000001.addr.dc1.consul.", 8080),
///     "0a000001.addr.dc1.consul:8080"
/// );
/// ```
pub fn instance_id(target: &str, port: u16) -> String {
    let host = target
        .strip_suffix('.')
        .unwrap_or(target)
        .to_ascii_lowercase();
    let suffix = format!(":{port}");
    let mut clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let leading = clean
        .find(|c: char| c.is_ascii_alphanumeric())
        .unwrap_or(clean.len());
    clean.drain(..leading);
    let fits = clean.len() + suffix.len() <= MAX_ID_LEN;
    if clean == host && fits && !clean.is_empty() {
        return clean + &suffix;
    }
    // Altered: add a hash of the original so that distinct targets keep distinct ids.
    let tag = format!("-{:016x}", fnv1a(host.as_bytes()));
    let room = MAX_ID_LEN - suffix.len() - tag.len();
    clean.truncate(room);
    if clean.is_empty() {
        clean.push('h');
    }
    clean + &tag + &suffix
}

/// FNV-1a, 64 bits: stable across processes and versions, unlike the standard library's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// When to query again.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    floor: Duration,
    ceiling: Duration,
    jitter: f64,
}

impl Schedule {
    /// The wait before the next query after an answer whose records live `ttl`: the TTL
    /// within [floor, ceiling], less up to `jitter` of it (`u` in [0, 1) is the random draw), never
    /// below the floor. `None` (no TTL known) waits the floor.
    fn next(&self, ttl: Option<Duration>, u: f64) -> Duration {
        let base = ttl
            .unwrap_or(Duration::ZERO)
            .clamp(self.floor, self.ceiling);
        let early = base.mul_f64(self.jitter * u.clamp(0.0, 1.0));
        base.saturating_sub(early).max(self.floor)
    }
}

struct Followed {
    service: String,
    srv: String,
    name: Name,
}

struct Shared {
    counts: Counters,
    status: Mutex<HashMap<String, DnsStatus>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one answer lists.
#[derive(Debug, Default)]
struct Answer {
    instances: BTreeMap<String, Instance>,
    skipped: u64,
    target_errors: u64,
    ttl: Option<Duration>,
}

struct Follower {
    followed: Followed,
    resolver: TokioResolver,
    handle: Arc<SourceHandle>,
    shared: Arc<Shared>,
    schedule: Schedule,
    deadline: Duration,
    backoff: Backoff,
    weight_scale: u32,
}

impl Follower {
    async fn run(mut self) {
        let service = self.followed.service.clone();
        let mut last: Option<BTreeMap<String, Instance>> = None;
        let mut revision = 0u64;
        let mut stale = false;
        let counts = &self.shared.counts;
        loop {
            counts.queries.bump();
            let started = Instant::now();
            let result = match tokio::time::timeout(self.deadline, self.query(last.as_ref())).await
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

    /// One poll: the SRV records, then the targets' addresses. `Err` is a failure to get an
    /// answer; "nothing there" is an empty answer.
    async fn query(
        &self,
        last: Option<&BTreeMap<String, Instance>>,
    ) -> std::result::Result<Answer, String> {
        let name = &self.followed.name;
        let lookup = match self.resolver.srv_lookup(name.clone()).await {
            Ok(l) => l,
            Err(e) => return negative(&e).ok_or_else(|| describe(&e)),
        };
        let mut ttl: Option<u32> = None;
        let mut shortest = |t: u32| ttl = Some(ttl.map_or(t, |m| m.min(t)));
        let mut records: Vec<(u16, u16, u16, Name)> = Vec::new();
        for r in lookup.answers() {
            if let RData::SRV(srv) = &r.data {
                shortest(r.ttl);
                records.push((srv.priority, srv.weight, srv.port, srv.target.clone()));
            }
        }
        // Deterministic over the server's shuffling: when two records share a target and
        // port, the preferred one (lowest priority, then highest weight) is kept.
        records.sort_by(|a, b| {
            (a.0, std::cmp::Reverse(a.1), &a.3, a.2).cmp(&(b.0, std::cmp::Reverse(b.1), &b.3, b.2))
        });
        let mut answer = Answer::default();
        // Per target: its addresses, or `None` when looking them up failed.
        let mut addresses: HashMap<Name, Option<Vec<IpAddr>>> = HashMap::new();
        for (priority, weight, port, target) in records {
            if target.is_root() {
                // RFC 2782: "." says the service is decidedly not available here.
                continue;
            }
            let key = target.to_lowercase();
            if !addresses.contains_key(&key) {
                let ips = match self.addresses(&target, lookup.additionals()).await {
                    Ok((ips, t)) => {
                        if let Some(t) = t {
                            shortest(t);
                        }
                        Some(ips)
                    }
                    Err(why) => {
                        // One target that cannot be looked up does not hold up the others:
                        // its records keep what they showed, and the next poll comes soon.
                        answer.target_errors += 1;
                        shortest(0);
                        tracing::warn!(name = %self.followed.srv, target = %target, error = %why, "dns source: cannot look up an SRV target's address");
                        None
                    }
                };
                addresses.insert(key.clone(), ips);
            }
            let target_text = target.to_ascii();
            let target_text = target_text.strip_suffix('.').unwrap_or(&target_text);
            let id = instance_id(target_text, port);
            if answer.instances.contains_key(&id) {
                answer.skipped += 1;
                continue;
            }
            let ips = match &addresses[&key] {
                Some(ips) if !ips.is_empty() => ips,
                Some(_) => {
                    tracing::debug!(name = %self.followed.srv, target = target_text, "dns source: skipping a record whose target has no address");
                    answer.skipped += 1;
                    continue;
                }
                None => {
                    match last.and_then(|l| l.get(&id)) {
                        Some(before) => {
                            answer.instances.insert(id, before.clone());
                        }
                        None => answer.skipped += 1,
                    }
                    continue;
                }
            };
            let mut inst = Instance::new(&self.followed.service, id.clone())
                .weight(
                    u32::from(weight)
                        .saturating_mul(self.weight_scale)
                        .clamp(1, MAX_WEIGHT),
                )
                .meta(META_NAME, &self.followed.srv)
                .meta(META_TARGET, target_text)
                .meta(META_PRIORITY, priority.to_string())
                .meta(META_WEIGHT, weight.to_string());
            for ip in ips {
                inst = inst.addr(SocketAddr::new(*ip, port).to_string());
            }
            match validate_id(&id).and_then(|()| inst.validate()) {
                Ok(()) => {
                    answer.instances.insert(id, inst);
                }
                Err(e) => {
                    tracing::warn!(name = %self.followed.srv, error = %e, "dns source: skipping a record");
                    answer.skipped += 1;
                }
            }
        }
        answer.ttl = ttl.map(|t| Duration::from_secs(u64::from(t)));
        Ok(answer)
    }

    /// The addresses of `target`: from the answer's additional section, else looked up. An empty
    /// list when the DNS says it has none; `Err` when the lookup fails.
    async fn addresses(
        &self,
        target: &Name,
        additionals: &[Record],
    ) -> std::result::Result<(Vec<IpAddr>, Option<u32>), String> {
        let mut ips = Vec::new();
        let mut ttl: Option<u32> = None;
        for r in additionals {
            // Names compare without regard to case.
            if r.name != *target {
                continue;
            }
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            ttl = Some(ttl.map_or(r.ttl, |m| m.min(r.ttl)));
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if !ips.is_empty() {
            return Ok((ips, ttl));
        }
        match self.resolver.lookup_ip(target.clone()).await {
            Ok(found) => {
                let ttl = found.as_lookup().answers().iter().map(|r| r.ttl).min();
                let mut ips: Vec<IpAddr> = Vec::new();
                for ip in found.iter() {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                Ok((ips, ttl))
            }
            Err(e) if e.is_no_records_found() => Ok((Vec::new(), None)),
            Err(e) => Err(format!("looking up {target}: {}", describe(&e))),
        }
    }
}

/// An NXDOMAIN or no-records error is an answer: nothing is there (with the negative TTL, if
/// the server gave one).
fn negative(e: &NetError) -> Option<Answer> {
    if !e.is_no_records_found() {
        return None;
    }
    let ttl = match e {
        NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(nr)) => nr.negative_ttl,
        _ => None,
    };
    Some(Answer {
        ttl: ttl.map(|t| Duration::from_secs(u64::from(t))),
        ..Answer::default()
    })
}

fn describe(e: &NetError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests;
