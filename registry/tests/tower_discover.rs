//! The directory's change stream used directly as a `tower::discover::Discover`.
#![cfg(feature = "tower")]

use std::sync::Arc;
use std::time::Duration;

use futures::future::poll_fn;
use registry::engine::{Instance, Registry};
use registry::memory::MemoryBackend;
use tower::discover::{Change, Discover};

#[tokio::test(start_paused = true)]
async fn changes_stream_is_a_tower_discover() {
    let backend = MemoryBackend::new();
    let a = Registry::new(Arc::new(backend.clone())).unwrap();
    let b = Registry::new(Arc::new(backend)).unwrap();
    let _d = b.discover("web").await.unwrap();
    let r1 = a
        .register(Instance::new("web", "w1").addr("10.0.0.1:80"))
        .await
        .unwrap();
    let mut discover = Box::pin(
        b.directory()
            .changes("web")
            .into_discover(|inst: &Instance| inst.addrs[0].clone()),
    );
    fn assert_discover<D: Discover<Key = String, Service = String>>(_: &D) {}
    assert_discover(&discover);
    let first = poll_fn(|cx| discover.as_mut().poll_discover(cx)).await;
    match first {
        Some(Ok(Change::Insert(id, addr))) => {
            assert_eq!((id.as_str(), addr.as_str()), ("w1", "10.0.0.1:80"))
        }
        other => panic!("{other:?}"),
    }
    r1.deregister().await.unwrap();
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        poll_fn(|cx| discover.as_mut().poll_discover(cx)),
    )
    .await
    .unwrap();
    assert!(matches!(next, Some(Ok(Change::Remove(id))) if id == "w1"));
}
