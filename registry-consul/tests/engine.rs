//! The engine's end-to-end scenarios against Consul: two registries in one process, real time.

use std::sync::Arc;

use conformance_tests::testbed;
use conformance_tests::{Fixture, engine_suite};
use registry_consul::ConsulBuilder;

async fn fixture(_scenario: &str) -> Option<Fixture> {
    let endpoint = testbed::shared_consul()?;
    let backend = ConsulBuilder::new()
        .address(endpoint.clone())
        .namespace(testbed::fresh_namespace("engine"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to consul at {endpoint}: {e}"));
    Some(Fixture::new(Arc::new(backend)))
}

engine_suite!(fixture);
