//! The library's metrics, exported to Prometheus: the library records through the `metrics`
//! facade, the application installs the exporter it wants (here `metrics-exporter-prometheus`,
//! rendering the text format that a `/metrics` route would serve).
//!
//! ```text
//! cargo run -p service-registry --example metrics_prometheus
//! ```

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use registry::engine::{Instance, Registry};

/// Registers two instances, discovers them, deregisters one, and returns the metrics as
/// Prometheus text.
pub(crate) async fn run(exporter: &PrometheusHandle) -> String {
    let backend = registry::connect("memory://")
        .await
        .expect("memory backend");
    let registry = Registry::builder(backend)
        .namespace("shop")
        .ttl(Duration::from_secs(3))
        .heartbeat(Duration::from_millis(200))
        .build()
        .expect("registry");
    let discovery = registry.discover("web").await.expect("discover");
    let w1 = registry
        .register(Instance::new("web", "web-1").addr("10.0.0.1:80"))
        .await
        .expect("register web-1");
    let _w2 = registry
        .register(Instance::new("web", "web-2").addr("10.0.0.2:80"))
        .await
        .expect("register web-2");
    while discovery.directory().get("web").len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A few heartbeats, then one instance leaves.
    tokio::time::sleep(Duration::from_millis(700)).await;
    w1.deregister().await.expect("deregister web-1");
    while discovery.directory().get("web").len() > 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    exporter.render()
}

#[allow(dead_code)] // the test includes this file and calls `run` itself
#[tokio::main]
async fn main() {
    let exporter = PrometheusBuilder::new()
        .install_recorder()
        .expect("no other metrics recorder is installed");
    print!("{}", run(&exporter).await);
}
