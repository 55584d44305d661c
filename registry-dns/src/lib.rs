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

#[cfg(doc)]
use registry_engine::{Backoff, Directory, MAX_WEIGHT};

// builder: the settings, checked, and the start; source: the handle it returns; follow: one task
// per SRV name, polling at its TTL; answer: one query and the instances its answer becomes;
// status: the counters and each service's status, shared by the tasks and the handle.
mod answer;
mod builder;
mod follow;
mod source;
mod status;
#[cfg(test)]
mod tests;

pub use answer::{META_NAME, META_PRIORITY, META_TARGET, META_WEIGHT, instance_id};
pub use builder::{DEFAULT_TTL_CEILING, DEFAULT_TTL_FLOOR, DnsSourceBuilder};
pub use source::DnsSource;
pub use status::{DnsCounts, DnsStatus};
