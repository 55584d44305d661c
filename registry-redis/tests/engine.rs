//! The engine's end-to-end scenarios against Redis: two registries in one process, real time.

use std::sync::Arc;

use conformance_tests::testbed;
use conformance_tests::{Fixture, engine_suite};
use registry_redis::RedisBuilder;

async fn fixture(_scenario: &str) -> Option<Fixture> {
    let endpoint = testbed::shared_redis()?;
    let (host, port) = endpoint.rsplit_once(':').expect("host:port");
    let backend = RedisBuilder::new()
        .address(host, port.parse().expect("port"))
        .namespace(testbed::fresh_namespace("engine"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to redis at {endpoint}: {e}"));
    Some(Fixture::new(Arc::new(backend)))
}

engine_suite!(fixture);
