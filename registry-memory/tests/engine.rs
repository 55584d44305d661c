//! The engine's end-to-end scenarios on the in-memory backend, in real time.

use std::sync::Arc;

use conformance_tests::{Fixture, engine_suite};
use registry_memory::MemoryBackend;

async fn fixture(_scenario: &str) -> Option<Fixture> {
    Some(Fixture::new(Arc::new(MemoryBackend::new())))
}

engine_suite!(fixture);
