//! The whole conformance suite against etcd in a container (or `REGISTRY_TEST_ETCD_ENDPOINTS`).
//!
//! Scenarios share one server, each in a fresh namespace, and run in parallel. The compaction
//! scenario gets a server of its own: compaction is cluster-wide and would cut the history other
//! scenarios are reading.

use std::sync::{Arc, OnceLock};

use conformance_tests::testbed::{self, EtcdOptions};
use conformance_tests::{Fixture, conformance_suite};
use registry_etcd::{EtcdBackend, EtcdBuilder};

async fn connect(endpoint: &str) -> EtcdBackend {
    EtcdBuilder::new()
        .endpoints(endpoint.split(','))
        .namespace(testbed::fresh_namespace("conformance"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to etcd at {endpoint}: {e}"))
}

fn with_compactor(backend: EtcdBackend) -> Fixture {
    let c = backend.clone();
    Fixture::new(Arc::new(backend)).with_compactor(move |rev| {
        let c = c.clone();
        Box::pin(async move { c.compact(rev).await })
    })
}

async fn fixture(scenario: &str) -> Option<Fixture> {
    if scenario == "watch_reports_compacted" {
        if let Some(ext) = testbed::ServerKind::Etcd.external_endpoints() {
            // An external server is shared with others: compacting it is not ours to do.
            eprintln!("note: compaction scenario on external etcd {ext} runs without compaction");
            return Some(Fixture::new(Arc::new(connect(&ext).await)));
        }
        // Its own container, kept for the process (the test bed removes leftovers by label).
        static OWN: OnceLock<testbed::Etcd> = OnceLock::new();
        let etcd = match testbed::start_etcd(EtcdOptions::default()).await {
            Ok(e) => e,
            Err(reason) => return testbed::unavailable("etcd", &reason),
        };
        let endpoint = etcd.endpoint.clone();
        let _ = OWN.set(etcd);
        return Some(with_compactor(connect(&endpoint).await));
    }
    let endpoint = testbed::shared_etcd()?;
    Some(Fixture::new(Arc::new(connect(&endpoint).await)))
}

conformance_suite!(fixture);
