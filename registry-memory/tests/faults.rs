//! The memory backend's own promises: paused-time expiry, bounded history and fault injection.

use std::time::Duration;

use futures::StreamExt;
use registry_core::{Backend, Bytes, ErrorKind, EventKind};
use registry_memory::MemoryBackend;

#[tokio::test(start_paused = true)]
async fn expiry_follows_paused_tokio_time() {
    let backend = MemoryBackend::new();
    let lease = backend.grant(Duration::from_secs(30)).await.unwrap();
    backend
        .put("k", Bytes::from_static(b"v"), Some(&lease.id))
        .await
        .unwrap();
    let mut stream = backend.watch("", backend.revision()).await.unwrap();
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(29_999)).await;
    assert!(backend.get("k").await.unwrap().is_some(), "expired early");
    // The reaper delivers the delete at the deadline with nobody touching the store.
    let ev = stream.next().await.unwrap().unwrap();
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn history_limit_compacts_old_revisions() {
    let backend = MemoryBackend::builder().history_limit(5).build();
    for i in 0..10 {
        backend
            .put(&format!("k/{i}"), Bytes::new(), None)
            .await
            .unwrap();
    }
    assert_eq!(backend.history_len(), 5);
    let mut old = backend.watch("k", 2).await.unwrap();
    let err = old.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Compacted);
    assert_eq!(err.compacted_revision(), Some(6));
    assert!(
        old.next().await.is_none(),
        "stream continues after an error"
    );
    let mut ok = backend.watch("k", 5).await.unwrap();
    assert_eq!(ok.next().await.unwrap().unwrap().revision, 6);
}

#[tokio::test]
async fn fail_next_fails_exactly_n_operations() {
    let backend = MemoryBackend::new();
    backend.fail_next(2);
    assert_eq!(
        backend.get("a").await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert!(backend.list("").await.unwrap_err().is_temporary());
    assert!(backend.get("a").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn outage_breaks_watches_and_lets_leases_expire() {
    let backend = MemoryBackend::new();
    let lease = backend.grant(Duration::from_secs(5)).await.unwrap();
    backend
        .put("k", Bytes::new(), Some(&lease.id))
        .await
        .unwrap();
    let mut stream = backend.watch("", 0).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().kind, EventKind::Put);
    backend.set_unavailable(true);
    assert_eq!(
        stream.next().await.unwrap().unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert!(backend.keep_alive(&lease.id).await.is_err());
    tokio::time::sleep(Duration::from_secs(6)).await;
    backend.set_unavailable(false);
    assert_eq!(
        backend.keep_alive(&lease.id).await.unwrap_err().kind(),
        ErrorKind::LeaseNotFound
    );
    assert!(backend.get("k").await.unwrap().is_none());
}

#[tokio::test]
async fn drop_watches_ends_open_streams_only() {
    let backend = MemoryBackend::new();
    let mut before = backend.watch("", 0).await.unwrap();
    backend.drop_watches();
    assert!(before.next().await.unwrap().is_err());
    let mut after = backend.watch("", 0).await.unwrap();
    backend.put("x", Bytes::new(), None).await.unwrap();
    assert!(after.next().await.unwrap().is_ok());
}

#[tokio::test]
async fn freeze_holds_operations_until_unfreeze() {
    let backend = MemoryBackend::new();
    backend.freeze();
    let pending = tokio::spawn({
        let b = backend.clone();
        async move { b.put("x", Bytes::new(), None).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!pending.is_finished(), "put completed while frozen");
    assert!(backend.operation_counts().put == 1);
    backend.unfreeze();
    assert!(pending.await.unwrap().is_ok());
    assert!(backend.get("x").await.unwrap().is_some());
}

#[tokio::test]
async fn lease_ids_are_not_shared_between_stores() {
    let a = MemoryBackend::new();
    let b = MemoryBackend::new();
    let lease = a.grant(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        b.keep_alive(&lease.id).await.unwrap_err().kind(),
        ErrorKind::LeaseNotFound
    );
}
