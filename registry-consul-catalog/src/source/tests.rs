use std::collections::HashSet;

use registry_engine::InstanceState;

use super::decode::{Health, decode};
use super::poll::next_index;
use super::*;

#[test]
fn index_rules() {
    assert_eq!(next_index(0, 0), (1, false), "an index is at least 1");
    assert_eq!(next_index(0, 7), (7, false));
    assert_eq!(next_index(7, 7), (7, false), "the wait ran out");
    assert_eq!(next_index(7, 9), (9, false));
    assert_eq!(next_index(90, 12), (12, true), "backwards: a reset");
    assert_eq!(next_index(5, 0), (1, true));
}

#[test]
fn health_is_the_worst_check() {
    let worst = ["passing", "warning", "passing"]
        .iter()
        .map(|s| Health::of(s))
        .max();
    assert_eq!(worst, Some(Health::Warning));
    assert_eq!(Health::of("maintenance"), Health::Critical);
}

/// One entry in the shape Consul 1.8 answers `/v1/health/service/NAME` with.
fn entry(node: &str, id: &str, port: u16, statuses: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "Node": {"Node": node, "Address": "127.0.0.1", "Datacenter": "dc1"},
        "Service": {
            "ID": id, "Service": "web", "Tags": ["blue"], "Address": "", "Port": port,
            "Meta": {"version": "1.2.3"}, "Weights": {"Passing": 2, "Warning": 1}
        },
        "Checks": statuses.iter().map(|s| serde_json::json!({"CheckID": "c", "Status": s}))
            .collect::<Vec<_>>(),
    })
}

#[test]
fn entries_decode_and_malformed_ones_are_skipped_and_logged_once() {
    let body = serde_json::to_vec(&serde_json::json!([
        entry("n1", "ok", 80, &["passing", "passing"]),
        entry("n1", "failing", 81, &["passing", "critical"]),
        entry("n1", "warn", 82, &["warning"]),
        entry("n1", "bad id", 83, &[]),
        entry("n1", "no-port", 0, &[]),
        entry("n2", "ok", 84, &[]),
        {"Node": {"Node": "n1"}, "Service": {"ID": 5}},
        "not an object",
    ]))
    .unwrap();
    let mut logged = HashSet::new();
    let (shown, skipped) = decode("web", CatalogHealth::Passing, &body, &mut logged).unwrap();
    assert_eq!(shown.keys().collect::<Vec<_>>(), ["ok"]);
    assert_eq!(
        skipped, 5,
        "bad id, no port, the duplicate id, two undecodable"
    );
    assert_eq!(logged.len(), 5);
    let ok = &shown["ok"];
    assert_eq!(
        ok.addrs,
        ["127.0.0.1:80"],
        "the node's address, from node n1 (first by name)"
    );
    assert_eq!(ok.version.as_deref(), Some("1.2.3"));
    assert_eq!(ok.weight, 200, "Weights.Passing 2");
    assert_eq!(ok.metadata["tag.blue"], "");
    assert_eq!(ok.metadata["consul.node"], "n1");
    assert_eq!(ok.metadata["consul.health"], "passing");

    let (all, _) = decode("web", CatalogHealth::AllWithState, &body, &mut logged).unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["failing", "ok", "warn"]);
    assert_eq!(all["failing"].state, InstanceState::Offline);
    assert_eq!(all["warn"].metadata["consul.health"], "warning");
    assert!(all["ok"].is_online());

    assert!(decode("web", CatalogHealth::Passing, b"{not json", &mut logged).is_none());
    let weighted = serde_json::json!([{
        "Node": {"Node": "n", "Address": "::1"},
        "Service": {"ID": "v6", "Service": "web", "Port": 9, "Meta": {"weight": "7"}}
    }, {
        "Node": {"Node": "n", "Address": "::1"},
        "Service": {"ID": "heavy", "Service": "web", "Port": 9, "Meta": {"weight": "0"}}
    }]);
    let (v6, skipped) = decode(
        "web",
        CatalogHealth::Passing,
        &serde_json::to_vec(&weighted).unwrap(),
        &mut logged,
    )
    .unwrap();
    assert_eq!(v6["v6"].addrs, ["[::1]:9"]);
    assert_eq!(v6["v6"].weight, 7);
    assert_eq!(skipped, 1, "a Meta weight of 0");
}
