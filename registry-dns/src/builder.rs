//! [`DnsSourceBuilder`]: a source's settings, checked, and [`start`](DnsSourceBuilder::start),
//! which builds the resolver and spawns one follower per SRV name.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::Name;
use registry_core::{Error, ErrorKind, Result};
#[cfg(doc)]
use registry_engine::MAX_WEIGHT;
use registry_engine::{Backoff, DEFAULT_WEIGHT, Directory, validate_service};
use tokio::task::JoinSet;

use crate::answer::Followed;
use crate::follow::{Follower, Schedule};
use crate::source::DnsSource;
use crate::status::{Counters, DnsStatus, Shared};

/// The default [`DnsSourceBuilder::ttl_floor`].
pub const DEFAULT_TTL_FLOOR: Duration = Duration::from_secs(1);
/// The default [`DnsSourceBuilder::ttl_ceiling`].
pub const DEFAULT_TTL_CEILING: Duration = Duration::from_secs(300);

impl DnsSource {
    /// A builder with the defaults: the system's name servers, TTL floor 1 s, ceiling 5 min.
    pub fn builder() -> DnsSourceBuilder {
        DnsSourceBuilder::default()
    }
}

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
