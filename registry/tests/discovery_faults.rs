//! Discovery against backends that misbehave in ways the memory backend alone does not: one whose
//! watches always answer `Compacted` (history that is never there), and one that refuses the
//! credentials for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use conformance_tests::forward::{Call, Forward, Hook};
use registry::engine::Registry;
use registry::memory::MemoryBackend;
use registry::{Error, ErrorKind, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Every watch answers `Compacted`.
    AlwaysCompacted,
    /// Every list answers `PermissionDenied`.
    Forbidden,
}

/// One fault for the memory backend, counting lists.
struct Faulty {
    fault: Fault,
    lists: AtomicU64,
}

#[async_trait]
impl Hook for Faulty {
    async fn before(&self, call: &Call<'_>) -> Result<()> {
        match (call, self.fault) {
            (Call::List { .. }, fault) => {
                self.lists.fetch_add(1, Ordering::Relaxed);
                if fault == Fault::Forbidden {
                    return Err(Error::new(
                        ErrorKind::PermissionDenied,
                        "this token may not read the prefix",
                    ));
                }
            }
            (Call::Watch { after, .. }, Fault::AlwaysCompacted) => {
                return Err(Error::compacted(after + 1));
            }
            _ => {}
        }
        Ok(())
    }
}

fn faulty(fault: Fault) -> Arc<Forward<Faulty>> {
    let hook = Faulty {
        fault,
        lists: AtomicU64::new(0),
    };
    Arc::new(Forward::new(Arc::new(MemoryBackend::new()), hook))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relisting_after_compacted_backs_off() {
    let backend = faulty(Fault::AlwaysCompacted);
    let registry = Registry::new(backend.clone()).unwrap();
    let d = registry.discover("web").await.unwrap();
    // One second of a backend that answers every watch with Compacted: with a back-off from
    // 100 ms (doubling, jittered) that is a handful of listings, not a hot loop of thousands.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lists = backend.hook().lists.load(Ordering::Relaxed);
    drop(d);
    assert!(
        (2..=12).contains(&lists),
        "{lists} listings in one second of Compacted watches"
    );
}

#[tokio::test(start_paused = true)]
async fn discover_returns_a_permanent_error() {
    let backend = faulty(Fault::Forbidden);
    let registry = Registry::new(backend.clone()).unwrap();
    let e = registry.discover("web").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = registry.discover_all().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
}
