//! The whole conformance suite against the in-memory backend.

use std::sync::Arc;

use conformance_tests::{Fixture, conformance_suite};
use registry_memory::MemoryBackend;

/// Every scenario gets its own store: the memory backend's namespace is the instance.
async fn fixture(_scenario: &str) -> Option<Fixture> {
    let backend = MemoryBackend::new();
    let compactor = backend.clone();
    Some(Fixture::new(Arc::new(backend)).with_compactor(move |rev| {
        compactor.compact(rev);
        Box::pin(async { Ok(()) })
    }))
}

conformance_suite!(fixture);

#[test]
fn suite_has_at_least_30_scenarios() {
    assert_eq!(CONFORMANCE_SCENARIOS, conformance_tests::SCENARIOS);
    assert!(
        CONFORMANCE_SCENARIOS.len() >= 30,
        "{}",
        CONFORMANCE_SCENARIOS.len()
    );
}
