//! The whole conformance suite against Redis 7 in a container (or `REGISTRY_TEST_REDIS_ENDPOINTS`),
//! each scenario in its own namespace (its own revision counter and stream).

use std::sync::Arc;

use conformance_tests::testbed;
use conformance_tests::{Fixture, conformance_suite};
use registry_redis::RedisBuilder;

async fn fixture(_scenario: &str) -> Option<Fixture> {
    let endpoint = testbed::shared_redis()?;
    let (host, port) = endpoint.rsplit_once(':').expect("host:port");
    let backend = RedisBuilder::new()
        .address(host, port.parse().expect("port"))
        .namespace(testbed::fresh_namespace("conformance"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to redis at {endpoint}: {e}"));
    // Compaction trims only this namespace's stream: safe on a shared server.
    let c = backend.clone();
    Some(Fixture::new(Arc::new(backend)).with_compactor(move |rev| {
        let c = c.clone();
        Box::pin(async move { c.compact(rev).await })
    }))
}

conformance_suite!(fixture);
