//! `consuls://` against a Consul agent serving its HTTP API over HTTPS, with a certificate from a CA
//! made by the test: with the CA file a real session, put, get and blocking-query watch round trip
//! works; a URL without a CA, a wrong CA, a certificate for another name, or a plain-HTTP port is
//! refused at once (no retrying until the request timeout) with an error that says TLS and what to
//! check. The shared scenarios are `conformance_tests::tls`'s.

use std::time::Duration;

use conformance_tests::testbed::{self, ServerKind};
use conformance_tests::tls::{self, TlsBackend, TlsServer};
use registry_consul::{ConsulBackend, ConsulBuilder};
use registry_core::Result;

struct Consul;

impl TlsBackend for Consul {
    type Client = ConsulBackend;
    const SCHEME: &'static str = "consul";
    const SERVER: ServerKind = ServerKind::Consul;
    // Well within the request timeout (3 s): retrying a handshake that failed cannot help.
    const PROMPT: Duration = Duration::from_millis(2000);
    const PATIENCE: Duration = Duration::from_secs(10);

    async fn connect(url: &str) -> Result<ConsulBackend> {
        ConsulBuilder::from_url(url)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .namespace(testbed::fresh_namespace("tls"))
            .request_timeout(Duration::from_secs(3))
            .watch_wait(Duration::from_secs(2))
            .connect()
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuls_trusts_the_ca_file_and_refuses_a_wrong_ca_or_name() {
    let Some(server) = TlsServer::start::<Consul>().await else {
        return;
    };
    tls::the_ca_file_is_trusted_and_a_wrong_ca_or_name_is_refused::<Consul>(&server, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuls_to_a_plain_http_port_says_it_is_not_tls() {
    let Some(endpoint) = testbed::shared_consul() else {
        return;
    };
    let (_dir, url) = tls::url_for_a_plain_text_port::<Consul>(&endpoint);
    tls::refused::<Consul>(&url, &["did not answer in TLS", "plain-text port"]).await;
}
