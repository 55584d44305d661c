//! How an instance becomes a service of the agent: its address and port, its `Meta` within
//! Consul's limits, its tags.

use std::collections::BTreeMap;
use std::time::Duration;

use registry_engine::Instance;

use super::LEASE_SERVICE;

/// Consul's limits on service `Meta` (1.8: `structs.validateMetaPair`).
pub(super) const META_MAX_PAIRS: usize = 64;
pub(super) const META_KEY_MAX: usize = 128;
pub(super) const META_VALUE_MAX: usize = 512;
/// The metadata entry whose comma-separated values become the service's tags.
pub(super) const TAGS_ENTRY: &str = "tags";
/// Meta keys the mirror writes itself.
pub(super) const META_LEASE: &str = "registry_lease";
pub(super) const META_VERSION: &str = "version";
pub(super) const META_WEIGHT: &str = "weight";

/// The ID of a lease's own entry (and of its TTL check).
pub(super) fn lease_service_id(session: &str) -> String {
    format!("{LEASE_SERVICE}-{session}")
}

/// Host and port of an instance address: `host:port`, `[v6]:port`, or a URL
/// (`scheme://[user@]host[:port][/...]`, port 80/443 by default for http(s) and ws(s)). Port 0
/// when none can be told.
pub(super) fn split_address(addr: &str) -> (String, u16) {
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
    if let Some(inner) = authority.strip_prefix('[')
        && let Some((host, tail)) = inner.split_once(']')
    {
        let port = tail
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return (host.to_owned(), port);
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

pub(super) fn meta_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= META_KEY_MAX
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !k.starts_with("consul-")
}

/// The service's `Meta`: ours first, then the instance's metadata that Consul accepts. Returns
/// the left-out keys with why.
pub(super) fn service_meta(
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
pub(super) fn service_tags(inst: &Instance) -> Vec<String> {
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
pub(super) fn query_value(v: &str) -> String {
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

pub(super) fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}
