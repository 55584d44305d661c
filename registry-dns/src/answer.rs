//! One query of a followed SRV name and what its answer lists: the SRV records, their targets'
//! addresses (from the answer's additional section, else looked up), and the instances they become
//! ([`instance_id`], the `dns.*` metadata).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, Record};
use registry_engine::{Instance, MAX_ID_LEN, MAX_WEIGHT, validate_id};

/// Metadata key: the SRV name an instance was found under.
pub const META_NAME: &str = "dns.name";
/// Metadata key: the SRV record's target host (without the final dot).
pub const META_TARGET: &str = "dns.target";
/// Metadata key: the SRV record's priority (lower is preferred; routing ignores it).
pub const META_PRIORITY: &str = "dns.priority";
/// Metadata key: the SRV record's weight, as in the record.
pub const META_WEIGHT: &str = "dns.weight";

/// A service and the SRV name it follows (as given, and parsed).
pub(crate) struct Followed {
    pub(crate) service: String,
    pub(crate) srv: String,
    pub(crate) name: Name,
}

/// What one answer lists.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub(crate) instances: BTreeMap<String, Instance>,
    pub(crate) skipped: u64,
    pub(crate) target_errors: u64,
    pub(crate) ttl: Option<Duration>,
}

/// One poll: the SRV records, then the targets' addresses. `Err` is a failure to get an
/// answer; "nothing there" is an empty answer.
pub(crate) async fn query(
    resolver: &TokioResolver,
    followed: &Followed,
    weight_scale: u32,
    last: Option<&BTreeMap<String, Instance>>,
) -> std::result::Result<Answer, String> {
    let name = &followed.name;
    let lookup = match resolver.srv_lookup(name.clone()).await {
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
            let ips = match target_addresses(resolver, &target, lookup.additionals()).await {
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
                    tracing::warn!(name = %followed.srv, target = %target, error = %why, "dns source: cannot look up an SRV target's address");
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
                tracing::debug!(name = %followed.srv, target = target_text, "dns source: skipping a record whose target has no address");
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
        let mut inst = Instance::new(&followed.service, id.clone())
            .weight(
                u32::from(weight)
                    .saturating_mul(weight_scale)
                    .clamp(1, MAX_WEIGHT),
            )
            .meta(META_NAME, &followed.srv)
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
                tracing::warn!(name = %followed.srv, error = %e, "dns source: skipping a record");
                answer.skipped += 1;
            }
        }
    }
    answer.ttl = ttl.map(|t| Duration::from_secs(u64::from(t)));
    Ok(answer)
}

/// The addresses of `target`: from the answer's additional section, else looked up. An empty
/// list when the DNS says it has none; `Err` when the lookup fails.
async fn target_addresses(
    resolver: &TokioResolver,
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
    match resolver.lookup_ip(target.clone()).await {
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
