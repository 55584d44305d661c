//! A backend decorator counting every contract call, so the benchmarks can report how many backend
//! operations the engine issued, on any backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use conformance_tests::forward::{Call, Forward, Hook, Op};
use registry::{Backend, Result};

/// How many calls of each operation went through, indexed by [`Op`].
#[derive(Default, Debug)]
pub(crate) struct Counts([AtomicU64; Op::ALL.len()]);

impl Counts {
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[async_trait]
impl Hook for Counts {
    async fn before(&self, call: &Call<'_>) -> Result<()> {
        self.0[call.op() as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Wraps backends in a counting [`Forward`].
pub(crate) struct Counting;

impl Counting {
    pub(crate) fn wrap(inner: Arc<dyn Backend>) -> (Arc<dyn Backend>, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        (Arc::new(Forward::new(inner, counts.clone())), counts)
    }
}
