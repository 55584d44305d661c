//! The engine's end-to-end scenarios against etcd: two registries in one process, real time.

use std::sync::Arc;

use conformance_tests::testbed;
use conformance_tests::{Fixture, engine_suite};
use registry_etcd::EtcdBuilder;

async fn fixture(_scenario: &str) -> Option<Fixture> {
    let endpoint = testbed::shared_etcd()?;
    let backend = EtcdBuilder::new()
        .endpoints(endpoint.split(','))
        .namespace(testbed::fresh_namespace("engine"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to etcd at {endpoint}: {e}"));
    Some(Fixture::new(Arc::new(backend)))
}

engine_suite!(fixture);
