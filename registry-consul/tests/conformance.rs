//! The whole conformance suite against a Consul 1.8 agent in a container (or
//! `REGISTRY_TEST_CONSUL_ENDPOINTS`), each scenario under its own KV prefix. Scenarios wait on the
//! declared TTL and slack (10 s minimum TTL, up to twice the TTL), no longer.

use std::sync::Arc;

use conformance_tests::testbed;
use conformance_tests::{Fixture, conformance_suite};
use registry_consul::ConsulBuilder;

async fn fixture(_scenario: &str) -> Option<Fixture> {
    let endpoint = testbed::shared_consul()?;
    let backend = ConsulBuilder::new()
        .address(endpoint.clone())
        .namespace(testbed::fresh_namespace("conformance"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to consul at {endpoint}: {e}"));
    // Consul keeps no history: nothing to compact, and the backend declares exactly that.
    Some(Fixture::new(Arc::new(backend)))
}

conformance_suite!(fixture);
