//! `GET /v1/prometheus/sd`: Prometheus HTTP service discovery (`http_sd_configs`).
//!
//! One target group per instance: its addresses as targets (`host:port`, a URL's scheme and path
//! removed), and labels `__meta_registry_service`, `_id`, `_version`, `_state`, `_hidden` plus one
//! `__meta_registry_meta_<key>` per metadata key, the key sanitized to Prometheus' label rules.
//! Offline instances and those hidden by a failing probe are left out unless `?all=true`.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use registry::engine::Directory;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::state_name;
use super::{ApiError, Server};

#[derive(Deserialize)]
pub(crate) struct SdQuery {
    all: Option<String>,
}

/// `GET /v1/prometheus/sd[?all=true]` (built once per state of the directory, see the `cache`
/// module).
pub(crate) async fn prometheus_sd(
    State(server): State<Server>,
    q: Result<Query<SdQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let all = match q.all.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("`all` must be true or false")),
    };
    let dir = server.dir().clone();
    let seq = dir.last_seq();
    let body = server
        .inner
        .answers
        .get(
            super::cache::Key {
                kind: super::cache::Kind::Sd { all },
                seq,
            },
            move || groups(&dir, all).to_string().into(),
        )
        .await;
    Ok(super::cache::json(body))
}

/// The target groups of every service.
fn groups(dir: &Directory, all: bool) -> Value {
    let mut groups = Vec::new();
    for service in dir.services() {
        let snap = dir.snapshot(&service);
        for inst in snap.all().values() {
            let hidden = snap.is_hidden(&inst.id);
            if !all && (!inst.is_online() || hidden) {
                continue;
            }
            let mut targets: Vec<String> = Vec::new();
            for t in inst.addrs.iter().filter_map(|a| target(a)) {
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
            if targets.is_empty() {
                continue;
            }
            let mut labels = BTreeMap::new();
            for (k, v) in &inst.metadata {
                // On a clash after sanitizing (`a.b` and `a-b`), the first key in order wins.
                labels
                    .entry(format!("__meta_registry_meta_{}", sanitize(k)))
                    .or_insert_with(|| v.clone());
            }
            labels.insert("__meta_registry_service".into(), inst.service.clone());
            labels.insert("__meta_registry_id".into(), inst.id.clone());
            labels.insert(
                "__meta_registry_version".into(),
                inst.version.clone().unwrap_or_default(),
            );
            labels.insert("__meta_registry_state".into(), state_name(inst).into());
            labels.insert("__meta_registry_hidden".into(), hidden.to_string());
            if let Some(source) = snap.source_of(&inst.id) {
                labels.insert("__meta_registry_source".into(), source.to_owned());
            }
            groups.push(json!({ "targets": targets, "labels": labels }));
        }
    }
    Value::Array(groups)
}

/// `host:port` of an address given as `host:port` or as a URL (`http://host:port/path`): the
/// scheme, credentials, path, query and fragment removed. `None` if nothing is left.
pub(crate) fn target(addr: &str) -> Option<String> {
    registry::engine::host_port(addr).map(str::to_owned)
}

/// A metadata key as a label name's tail: every character outside `[a-zA-Z0-9_]` becomes `_`
/// (the label starts with `__meta_`, so its first character is always valid).
pub(crate) fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_host_port() {
        assert_eq!(target("10.0.0.1:80").as_deref(), Some("10.0.0.1:80"));
        assert_eq!(
            target("http://10.0.0.1:8080/metrics?x=1").as_deref(),
            Some("10.0.0.1:8080")
        );
        assert_eq!(
            target("https://user:pw@[::1]:443/").as_deref(),
            Some("[::1]:443")
        );
        assert_eq!(
            target("grpc://host.example").as_deref(),
            Some("host.example")
        );
        assert_eq!(target("http:///path"), None);
    }

    #[test]
    fn labels_are_sanitized() {
        assert_eq!(sanitize("zone"), "zone");
        assert_eq!(sanitize("app.kubernetes/io-name"), "app_kubernetes_io_name");
        assert_eq!(sanitize("1st"), "1st");
        assert_eq!(sanitize("é"), "_");
    }
}
