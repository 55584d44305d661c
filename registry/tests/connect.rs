//! `registry::connect` picks the backend by URL scheme, against real servers when built with them.
#![cfg(all(feature = "etcd", feature = "redis", feature = "consul"))]

use registry::{Bytes, ErrorKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_and_redis_urls_connect_to_real_servers() {
    let ns = conformance_tests::testbed::fresh_namespace("connect");
    if let Some(ep) = conformance_tests::testbed::shared_etcd() {
        let b = registry::connect(&format!("etcd://{ep}/{ns}"))
            .await
            .unwrap();
        b.put("k", Bytes::from_static(b"v"), None).await.unwrap();
        assert!(b.get("k").await.unwrap().is_some());
    }
    if let Some(ep) = conformance_tests::testbed::shared_consul() {
        let b = registry::connect(&format!("consul://{ep}/{ns}"))
            .await
            .unwrap();
        b.put("k", Bytes::from_static(b"v"), None).await.unwrap();
        assert!(b.get("k").await.unwrap().is_some());
    }
    if let Some(ep) = conformance_tests::testbed::shared_redis() {
        let b = registry::connect(&format!("redis://{ep}?namespace={ns}"))
            .await
            .unwrap();
        b.put("k", Bytes::from_static(b"v"), None).await.unwrap();
        assert!(b.get("k").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn unreachable_servers_say_where_and_what_to_check() {
    let port = conformance_tests::testbed::free_port();
    for url in [
        format!("etcd://127.0.0.1:{port}?connect_timeout=1s&timeout=1s"),
        format!("redis://127.0.0.1:{port}"),
        format!("consul://127.0.0.1:{port}"),
    ] {
        let e = registry::connect(&url).await.unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
            "{url}: {e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("127.0.0.1:{port}")),
            "{url}: no address in {msg}"
        );
        assert!(msg.contains("check"), "{url}: no hint in {msg}");
    }
}
