//! The shape of Consul's `/v1/health/service/NAME` answers, as far as a source reads them.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One entry of `/v1/health/service/NAME`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HealthEntry {
    pub(super) node: NodeEntry,
    pub(super) service: ServiceEntry,
    #[serde(default)]
    pub(super) checks: Vec<CheckEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NodeEntry {
    pub(super) node: String,
    #[serde(default)]
    pub(super) address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceEntry {
    #[serde(rename = "ID")]
    pub(super) id: String,
    pub(super) service: String,
    #[serde(default)]
    pub(super) tags: Option<Vec<String>>,
    #[serde(default)]
    pub(super) address: String,
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Weights {
    pub(super) passing: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CheckEntry {
    pub(super) status: String,
}
