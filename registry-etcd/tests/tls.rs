//! `etcds://` against an etcd container that serves TLS with a certificate from a CA made by the
//! test: the CA file is trusted, a URL without one trusts the system's roots (shown for real by a
//! child process whose `SSL_CERT_FILE` names the test CA), and a wrong CA or a certificate for
//! another name is refused at once with an error that says TLS and what to check. The scenarios
//! are `conformance_tests::tls`'s.

use std::time::Duration;

use conformance_tests::testbed::ServerKind;
use conformance_tests::tls::{self, TlsBackend, TlsServer};
use registry_core::Result;
use registry_etcd::{EtcdBackend, EtcdBuilder};

struct Etcd;

impl TlsBackend for Etcd {
    type Client = EtcdBackend;
    const SCHEME: &'static str = "etcd";
    const SERVER: ServerKind = ServerKind::Etcd;
    // A hang would end at the connect timeout plus the request timeout, 4 s.
    const PROMPT: Duration = Duration::from_millis(3000);
    const PATIENCE: Duration = Duration::from_secs(5);

    async fn connect(url: &str) -> Result<EtcdBackend> {
        EtcdBuilder::from_url(url)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .namespace("tls")
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
            .connect()
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_file_is_trusted_and_a_wrong_ca_or_name_is_refused() {
    let Some(server) = TlsServer::start::<Etcd>().await else {
        return;
    };
    let no_ca = ["no CA file was given"];
    tls::the_ca_file_is_trusted_and_a_wrong_ca_or_name_is_refused::<Etcd>(&server, &no_ca).await;
}

/// `etcds://` without a CA file trusts the system's trust store: a child process whose
/// `SSL_CERT_FILE` (honoured like OpenSSL does) names the test CA connects; one whose store is
/// empty - a minimal root without ca-certificates - falls back to the built-in roots, does not
/// panic, and is refused with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_file_the_system_roots_are_trusted() {
    let Some(server) = TlsServer::start::<Etcd>().await else {
        return;
    };
    tls::system_roots_are_trusted(&server).await;
    tls::builtin_roots_are_the_fallback(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by without_a_ca_file_the_system_roots_are_trusted"]
async fn child_connects_with_system_roots() {
    tls::child_connects_with_system_roots::<Etcd>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by without_a_ca_file_the_system_roots_are_trusted"]
async fn child_is_refused_with_builtin_roots() {
    tls::child_is_refused_with_builtin_roots::<Etcd>().await;
}
