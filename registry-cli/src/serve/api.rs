//! The JSON API: services, instances, owners.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use registry::engine::{Instance, ServiceSnapshot, validate_id, validate_service};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Server, rfc3339};

/// The most owners one `owners` request may ask for.
pub(crate) const MAX_OWNERS: usize = 64;

/// The state name of an instance: `online` or `offline`.
pub(crate) fn state_name(i: &Instance) -> &'static str {
    i.state.as_str()
}

/// An address as served: credentials in it (`scheme://user:pass@host/...`, or `user@host:port`)
/// are removed; the rest is kept as written.
pub(crate) fn without_credentials(addr: &str) -> std::borrow::Cow<'_, str> {
    let (scheme, rest) = match addr.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, addr),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((_, host)) = rest[..end].rsplit_once('@') else {
        return std::borrow::Cow::Borrowed(addr);
    };
    let tail = &rest[end..];
    std::borrow::Cow::Owned(match scheme {
        Some(scheme) => format!("{scheme}://{host}{tail}"),
        None => format!("{host}{tail}"),
    })
}

/// A backend revision as served: a string, since revisions above 2^53 (Redis') do not survive
/// as JSON numbers in JavaScript.
pub(crate) fn revision_json(r: registry::Revision) -> Value {
    Value::String(r.to_string())
}

/// One instance as the API shows it.
pub(crate) fn instance_json(i: &Instance, hidden: bool) -> Value {
    let addrs: Vec<std::borrow::Cow<'_, str>> =
        i.addrs.iter().map(|a| without_credentials(a)).collect();
    json!({
        "service": i.service,
        "id": i.id,
        "addrs": addrs,
        "state": state_name(i),
        "metadata": i.metadata,
        "version": i.version,
        "weight": i.weight,
        "hidden": hidden,
        "routable": i.is_online() && !hidden,
    })
}

/// Staleness, revision and counts of a service's view.
fn summary(s: &ServiceSnapshot) -> Value {
    json!({
        "name": s.service(),
        "instances": s.all().len(),
        "routable": s.online().len(),
        "offline": s.all().values().filter(|i| !i.is_online()).count(),
        "stale": s.is_stale(),
        "stale_since": s.stale_since().map(rfc3339),
        "synced": s.is_synced(),
        "revision": revision_json(s.revision()),
    })
}

/// A service's summary plus its instances, by id.
pub(crate) fn service_json(s: &ServiceSnapshot) -> Value {
    let mut v = summary(s);
    let list: Vec<Value> = s
        .all()
        .values()
        .map(|i| {
            let mut v = instance_json(i, s.is_hidden(&i.id));
            v["source"] = json!(s.source_of(&i.id));
            v
        })
        .collect();
    v["instances"] = json!(list);
    v
}

/// `GET /v1/services` (built once per state of the directory, see the `cache` module).
pub(crate) async fn services(State(server): State<Server>) -> Response {
    let dir = server.dir().clone();
    let seq = dir.last_seq();
    let body = server
        .inner
        .answers
        .get(
            super::cache::Key {
                kind: super::cache::Kind::Services,
                seq,
            },
            move || {
                let list: Vec<Value> = dir
                    .services()
                    .iter()
                    .map(|s| summary(&dir.snapshot(s)))
                    .collect();
                let stale = list.iter().any(|v| v["stale"] == json!(true));
                json!({ "services": list, "stale": stale, "seq": seq })
                    .to_string()
                    .into()
            },
        )
        .await;
    super::cache::json(body)
}

/// The snapshot of `service`, or why not: 400 for a name that cannot be a service, 404 for one
/// the directory does not know.
fn known(server: &Server, service: &str) -> Result<Arc<ServiceSnapshot>, ApiError> {
    validate_service(service).map_err(|e| ApiError::bad_request(e.message().to_owned()))?;
    let dir = server.dir();
    if !dir.services().iter().any(|s| s == service) {
        return Err(ApiError::not_found(format!("no service {service}")));
    }
    Ok(dir.snapshot(service))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// `GET /v1/services/{service}`.
pub(crate) async fn service(
    State(server): State<Server>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let service = path(p)?;
    let snap = known(&server, &service)?;
    Ok(Json(service_json(&snap)))
}

/// `GET /v1/services/{service}/instances/{id}`.
pub(crate) async fn instance(
    State(server): State<Server>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (service, id) = path(p)?;
    let snap = known(&server, &service)?;
    validate_id(&id).map_err(|e| ApiError::bad_request(e.message().to_owned()))?;
    let inst = snap
        .all()
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no instance {id} of service {service}")))?;
    let mut v = instance_json(inst, snap.is_hidden(&id));
    v["source"] = json!(snap.source_of(&id));
    v["stale"] = json!(snap.is_stale());
    v["stale_since"] = json!(snap.stale_since().map(rfc3339));
    v["revision"] = revision_json(snap.revision());
    Ok(Json(v))
}

#[derive(Deserialize)]
pub(crate) struct OwnersQuery {
    key: Option<String>,
    n: Option<String>,
}

/// `GET /v1/services/{service}/owners?key=K&n=N`: what `Directory::find_n` says.
pub(crate) async fn owners(
    State(server): State<Server>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<OwnersQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let service = path(p)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let snap = known(&server, &service)?;
    let key = q
        .key
        .ok_or_else(|| ApiError::bad_request("the query parameter `key` is required"))?;
    let n = match q.n.as_deref() {
        None => 1,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_OWNERS).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("`n` must be a number from 1 to {MAX_OWNERS}"))
            })?,
    };
    let owners: Vec<Value> = server
        .dir()
        .find_n(n, &service, key.as_bytes())
        .iter()
        .map(|i| instance_json(i, false))
        .collect();
    Ok(Json(json!({
        "service": service,
        "key": key,
        "owners": owners,
        "stale": snap.is_stale(),
        "stale_since": snap.stale_since().map(rfc3339),
        "revision": revision_json(snap.revision()),
    })))
}

/// The most arcs a `ring` answer draws: a ring of many members (2 points each at the default
/// weight) has more, and is then drawn at this resolution (see [`arcs`]).
pub(crate) const MAX_ARCS: usize = 720;

#[derive(Deserialize)]
pub(crate) struct RingQuery {
    key: Option<String>,
}

/// One stretch of the circle, as fractions of the key space from 0 (hash 0) to 1 (hash 2^64),
/// and the index of its owner in the members.
#[derive(Debug, PartialEq)]
pub(crate) struct Stretch {
    pub(crate) from: f64,
    pub(crate) to: f64,
    pub(crate) owner: usize,
}

/// The circle's stretches in order from hash 0, adjacent ones of the same owner merged; `exact`
/// when they are the ring's own (at most [`MAX_ARCS`]). A stretch belongs to the member whose point
/// is the first at or after it: where a *probe* landing there is taken. A key is looked up at
/// [`PROBES`](registry::engine::PROBES) positions and goes to the point nearest to any of them, so
/// a stretch's length is a member's reach per probe, not its share of keys (that is
/// [`Ring::shares`](registry::engine::Ring::shares)). A ring with more is drawn as
/// [`MAX_ARCS`] equal stretches, each given to the member that owns most of it (then merged):
/// a picture at that resolution. Shares are always exact ([`registry::engine::Ring::shares`]).
pub(crate) fn arcs(ring: &registry::engine::Ring) -> (Vec<Stretch>, bool) {
    const FULL: f64 = 18_446_744_073_709_551_616.0; // 2^64
    let points: Vec<(u64, usize)> = owned_points(ring).collect();
    let Some(&(_, first)) = points.first() else {
        return (Vec::new(), true);
    };
    // [0, p0] and (p[i-1], p[i]] belong to point i; (p[last], 2^64) to the first point.
    let mut exact: Vec<Stretch> = Vec::new();
    let mut from = 0.0;
    for &(p, owner) in points.iter().chain(std::iter::once(&(u64::MAX, first))) {
        let to = if p == u64::MAX { 1.0 } else { p as f64 / FULL };
        push_merged(&mut exact, from, to, owner);
        from = to;
    }
    if exact.len() <= MAX_ARCS {
        return (exact, true);
    }
    // Equal buckets, each to the owner of most of it.
    let mut coarse: Vec<Stretch> = Vec::new();
    let mut at = 0usize;
    let mut covered: std::collections::HashMap<usize, f64> = std::collections::HashMap::new();
    for b in 0..MAX_ARCS {
        let (lo, hi) = (b as f64 / MAX_ARCS as f64, (b + 1) as f64 / MAX_ARCS as f64);
        covered.clear();
        while at < exact.len() && exact[at].from < hi {
            let a = &exact[at];
            *covered.entry(a.owner).or_default() += a.to.min(hi) - a.from.max(lo);
            if a.to > hi {
                break;
            }
            at += 1;
        }
        let owner = covered
            .iter()
            .max_by(|x, y| x.1.total_cmp(y.1).then(y.0.cmp(x.0)))
            .map_or(first, |(&o, _)| o);
        push_merged(&mut coarse, lo, hi, owner);
    }
    (coarse, false)
}

/// The ring's points with the index of their owner in [`Ring::members`](registry::engine::Ring::members)
/// (sorted by id, so found by binary search).
fn owned_points(ring: &registry::engine::Ring) -> impl Iterator<Item = (u64, usize)> + '_ {
    let members = ring.members();
    ring.owned_points().map(move |(p, m)| {
        let owner = members
            .binary_search_by(|x| x.id.cmp(&m.id))
            .expect("a point's owner is a member");
        (p, owner)
    })
}

fn push_merged(arcs: &mut Vec<Stretch>, from: f64, to: f64, owner: usize) {
    if let Some(last) = arcs.last_mut().filter(|l| l.owner == owner) {
        last.to = to;
    } else if to > from || arcs.is_empty() {
        arcs.push(Stretch { from, to, owner });
    }
    // Otherwise an empty stretch (two points at the same fraction): nothing to draw.
}

/// `GET /v1/services/{service}/ring[?key=K]`: each routable instance's share of the key space,
/// from the ring [`Directory::find`](registry::engine::Directory::find) routes by, and the arcs
/// to draw it; with `key`, where the key falls on the circle and its owner.
pub(crate) async fn ring(
    State(server): State<Server>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<RingQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let service = path(p)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let seq = server.dir().last_seq();
    let snap = known(&server, &service)?;
    // The picture is built once per state of the directory; the key's part, cheap, per request.
    let key = q.key.map(|key| {
        const FULL: f64 = 18_446_744_073_709_551_616.0; // 2^64
        let h = registry::engine::hash_key(key.as_bytes());
        let probes: Vec<f64> = registry::engine::probes(key.as_bytes())
            .iter()
            .map(|&p| p as f64 / FULL)
            .collect();
        let owner = snap.ring().find(key.as_bytes()).map(|m| m.id.clone());
        json!({ "key": key, "position": h as f64 / FULL, "probes": probes, "owner": owner })
    });
    let cache_key = super::cache::Key {
        kind: super::cache::Kind::Ring {
            service: service.clone(),
        },
        seq,
    };
    let picture = server
        .inner
        .answers
        .get(cache_key, move || {
            ring_picture(&service, &snap).to_string().into()
        })
        .await;
    // The picture is a JSON object: the key goes in before its closing brace.
    let mut body = Vec::with_capacity(picture.len() + 256);
    body.extend_from_slice(&picture[..picture.len() - 1]);
    body.extend_from_slice(br#","key":"#);
    body.extend_from_slice(json!(key).to_string().as_bytes());
    body.push(b'}');
    Ok(super::cache::json(body.into()))
}

/// A service's ring as the `ring` route draws it, without the key's part.
fn ring_picture(service: &str, snap: &ServiceSnapshot) -> Value {
    let ring = snap.ring();
    let shares = ring.shares();
    let mut counts = vec![0usize; ring.len()];
    for (_, owner) in owned_points(ring) {
        counts[owner] += 1;
    }
    let members: Vec<Value> = ring
        .members()
        .iter()
        .zip(&shares)
        .zip(&counts)
        .map(|((m, share), points)| {
            json!({ "id": m.id, "weight": m.weight, "points": points, "share": share })
        })
        .collect();
    let (arcs, exact) = arcs(ring);
    let arcs: Vec<Value> = arcs
        .iter()
        .map(|a| json!({ "from": a.from, "to": a.to, "member": a.owner }))
        .collect();
    json!({
        "service": service,
        "points": ring.points(),
        "members": members,
        "arcs": arcs,
        "arcs_exact": exact,
        "stale": snap.is_stale(),
        "stale_since": snap.stale_since().map(rfc3339),
        "revision": revision_json(snap.revision()),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use registry::engine::{Instance, Ring};

    use super::{MAX_ARCS, arcs, revision_json, without_credentials};

    #[test]
    fn credentials_are_not_served() {
        for (given, served) in [
            ("10.0.0.1:80", "10.0.0.1:80"),
            (
                "http://user:pw@10.0.0.1:8080/x?a=b@c",
                "http://10.0.0.1:8080/x?a=b@c",
            ),
            ("https://token@[::1]:443/", "https://[::1]:443/"),
            ("user:pw@host.example:9000", "host.example:9000"),
            ("redis://:s3cret@cache:6379/0", "redis://cache:6379/0"),
            (
                "http://host.example/path@not-credentials",
                "http://host.example/path@not-credentials",
            ),
        ] {
            assert_eq!(without_credentials(given), served, "{given}");
        }
    }

    #[test]
    fn revisions_are_strings_past_2_pow_53() {
        assert_eq!(
            revision_json(1_037_280_802_947_203_073),
            serde_json::json!("1037280802947203073")
        );
    }

    fn ring(n: usize) -> Ring {
        Ring::new((0..n).map(|i| Arc::new(Instance::new("s", format!("m{i}")).addr("x:1"))))
    }

    /// The exact arcs cover the circle once, in order; each stretch is owned by the member whose
    /// point comes first at or after it, so a key's owner is the owner of the stretch of one of its
    /// probes (the one nearest to a point).
    #[test]
    fn exact_arcs_match_the_ring() {
        let r = ring(3);
        let (arcs, exact) = arcs(&r);
        assert!(exact && arcs.len() <= MAX_ARCS && arcs.len() > 3);
        assert_eq!(arcs[0].from, 0.0);
        assert_eq!(arcs.last().unwrap().to, 1.0);
        assert!(
            arcs.windows(2)
                .all(|w| w[0].to == w[1].from && w[0].owner != w[1].owner)
        );
        let total: f64 = arcs.iter().map(|a| a.to - a.from).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        for k in 0..2000u32 {
            let key = k.to_le_bytes();
            let found = &r.find(&key).unwrap().id;
            let reached = registry::engine::probes(&key).iter().any(|&p| {
                let at = p as f64 / 2f64.powi(64);
                arcs.iter()
                    .filter(|a| a.from <= at && at <= a.to)
                    .any(|a| r.members()[a.owner].id == *found)
            });
            assert!(reached, "key {k}: no probe lands on {found}'s stretches");
        }
    }

    /// A big ring is drawn at a bounded resolution.
    #[test]
    fn many_members_are_drawn_in_at_most_max_arcs() {
        let (arcs, exact) = arcs(&ring(400));
        assert!(!exact);
        assert!(arcs.len() <= MAX_ARCS && arcs.len() > 40, "{}", arcs.len());
        assert_eq!((arcs[0].from, arcs.last().unwrap().to), (0.0, 1.0));
        assert!(arcs.windows(2).all(|w| w[0].to == w[1].from));
        let (none, exact) = arcs_of_empty();
        assert!(none.is_empty() && exact);
    }

    fn arcs_of_empty() -> (Vec<super::Stretch>, bool) {
        arcs(&Ring::new(Vec::new()))
    }
}
