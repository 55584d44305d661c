//! The JSON API: services, instances, owners.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use registry::engine::{Instance, InstanceState, ServiceSnapshot, validate_id, validate_service};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Server, rfc3339};

/// The most owners one `owners` request may ask for.
pub(crate) const MAX_OWNERS: usize = 64;

/// The state name of an instance: `online` or `offline`.
pub(crate) fn state_name(i: &Instance) -> &'static str {
    match i.state {
        InstanceState::Online => "online",
        InstanceState::Offline => "offline",
    }
}

/// One instance as the API shows it.
pub(crate) fn instance_json(i: &Instance, hidden: bool) -> Value {
    json!({
        "service": i.service,
        "id": i.id,
        "addrs": i.addrs,
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
        "revision": s.revision(),
    })
}

/// A service's summary plus its instances, by id.
pub(crate) fn service_json(s: &ServiceSnapshot) -> Value {
    let mut v = summary(s);
    let list: Vec<Value> = s
        .all()
        .values()
        .map(|i| instance_json(i, s.is_hidden(&i.id)))
        .collect();
    v["instances"] = json!(list);
    v
}

/// `GET /v1/services`.
pub(crate) async fn services(State(server): State<Server>) -> Json<Value> {
    let dir = server.dir();
    let seq = dir.last_seq();
    let list: Vec<Value> = dir
        .services()
        .iter()
        .map(|s| summary(&dir.snapshot(s)))
        .collect();
    let stale = list.iter().any(|v| v["stale"] == json!(true));
    Json(json!({ "services": list, "stale": stale, "seq": seq }))
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
    v["stale"] = json!(snap.is_stale());
    v["stale_since"] = json!(snap.stale_since().map(rfc3339));
    v["revision"] = json!(snap.revision());
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
        "revision": snap.revision(),
    })))
}
