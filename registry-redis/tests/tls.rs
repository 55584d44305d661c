//! `rediss://` against a Redis container serving TLS only, with a certificate from a CA made by the
//! test: with the CA file a real lease, put, get and watch round trip works, and so it does without
//! one in a child process whose system roots (`SSL_CERT_FILE`) hold the test CA; a URL without a CA
//! (the machine's roots), a wrong CA or a certificate for another name is refused at once with an
//! error that says TLS and what to check; a plain-text port, which never answers, within the
//! timeouts. The shared scenarios are `conformance_tests::tls`'s.

use std::time::Duration;

use conformance_tests::testbed::{self, ServerKind};
use conformance_tests::tls::{self, TlsBackend, TlsServer};
use registry_core::{ErrorKind, Result};
use registry_redis::{RedisBackend, RedisBuilder};

struct Redis;

impl TlsBackend for Redis {
    type Client = RedisBackend;
    const SCHEME: &'static str = "redis";
    const SERVER: ServerKind = ServerKind::Redis;
    // A hang would end at the connect timeout plus the request timeout, 4 s.
    const PROMPT: Duration = Duration::from_millis(3000);
    const PATIENCE: Duration = Duration::from_secs(5);

    async fn connect(url: &str) -> Result<RedisBackend> {
        RedisBuilder::from_url(url)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .namespace(testbed::fresh_namespace("tls"))
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
            .connect()
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_trusts_the_ca_file_and_refuses_a_wrong_ca_or_name() {
    let Some(server) = TlsServer::start::<Redis>().await else {
        return;
    };
    tls::the_ca_file_is_trusted_and_a_wrong_ca_or_name_is_refused::<Redis>(&server, &[]).await;
    tls::system_roots_are_trusted(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by rediss_trusts_the_ca_file_and_refuses_a_wrong_ca_or_name"]
async fn child_connects_with_system_roots() {
    tls::child_connects_with_system_roots::<Redis>().await;
}

/// A plain-text Redis takes the TLS client hello for the start of an inline command and waits for
/// the rest, so nothing fails: the connect timeout ends the wait, and the error says to check that
/// the port speaks TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_to_a_plain_text_port_times_out_naming_tls() {
    let Some(endpoint) = testbed::shared_redis() else {
        return;
    };
    let (_dir, url) = tls::url_for_a_plain_text_port::<Redis>(&endpoint);
    let (r, took) = tls::connect::<Redis>(&url).await;
    let e = r.expect_err("a TLS connection to a plain-text port");
    eprintln!("{url}: refused in {took:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.message().contains("TLS port"), "{e}");
    // Bounded by the connect and request timeouts (2 s each), with room for a loaded machine.
    assert!(took < Duration::from_secs(6), "took {took:?}: {e}");
}
