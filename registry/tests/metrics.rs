//! The observability example runs, and the metrics it shows are the ones the registry documents,
//! with the values of what it did.

#[path = "../examples/metrics_prometheus.rs"]
mod example;

use std::collections::BTreeMap;

fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_exports_registration_and_discovery_metrics() {
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let text = example::run(&exporter).await;
    let m = samples(&text);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in:\n{text}"))
    };
    // One registration left, registered; none in another state.
    assert_eq!(
        get(r#"registry_registrations{namespace="shop",state="registered"}"#),
        1.0
    );
    assert_eq!(
        get(r#"registry_registrations{namespace="shop",state="registering"}"#),
        0.0
    );
    assert_eq!(get(r#"registry_lease_grants_total{namespace="shop"}"#), 1.0);
    assert_eq!(get(r#"registry_puts_total{namespace="shop"}"#), 2.0);
    assert_eq!(get(r#"registry_deletes_total{namespace="shop"}"#), 1.0);
    assert!(get(r#"registry_keep_alives_total{namespace="shop"}"#) >= 2.0);
    assert!(get(r#"registry_keep_alive_seconds_count{namespace="shop"}"#) >= 2.0);
    assert_eq!(
        get(r#"registry_discovery_lists_total{namespace="shop"}"#),
        1.0
    );
    assert_eq!(
        get(r#"registry_discovery_watches_total{namespace="shop"}"#),
        1.0
    );
    // Two puts and a delete, seen through the watch.
    assert_eq!(
        get(r#"registry_discovery_events_total{namespace="shop"}"#),
        3.0
    );
    assert!(get(r#"registry_apply_delay_seconds_count{namespace="shop"}"#) >= 1.0);
    assert_eq!(
        get(r#"registry_service_stale{namespace="shop",service="web"}"#),
        0.0
    );
}
