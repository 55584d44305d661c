//! Catalog entries as instances: the mapping from Consul's health answers to our documents, with
//! malformed entries skipped and counted.

use std::collections::{BTreeMap, HashSet};

use registry_engine::{DEFAULT_WEIGHT, Instance, InstanceState, MAX_WEIGHT, validate_id};

use super::CatalogHealth;
use super::api::HealthEntry;

/// The instances an answer shows and how many entries were skipped, or `None` when the answer is
/// not a JSON array at all. Entries that cannot be used are logged once (`logged` remembers
/// them).
pub(super) fn decode(
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
pub(super) fn instance(
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
pub(super) enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    pub(super) fn of(status: &str) -> Health {
        match status {
            "passing" => Health::Passing,
            "warning" => Health::Warning,
            // "critical", "maintenance", and anything unknown.
            _ => Health::Critical,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}
