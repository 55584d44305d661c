//! `consuls://` against a Consul agent serving its HTTP API over HTTPS, with a certificate from a CA
//! made by the test: with the CA file a real session, put, get and blocking-query watch round trip
//! works; a URL without a CA, a wrong CA, a certificate for another name, or a plain-HTTP port is
//! refused at once (no retrying until the request timeout) with an error that says TLS and what to
//! check.

use std::path::Path;
use std::time::{Duration, Instant};

use conformance_tests::pki::{TempDir, TestCa};
use conformance_tests::testbed::{self, ConsulOptions, ServerTls};
use futures::StreamExt;
use registry_consul::{ConsulBackend, ConsulBuilder};
use registry_core::{Backend, Bytes, Error, ErrorKind, EventKind};

/// The request timeout of these connections.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A TLS failure must be reported well within the request timeout: it takes milliseconds, and
/// retrying a handshake that failed cannot help.
const PROMPT: Duration = Duration::from_millis(2000);

async fn connect(url: &str) -> (Result<ConsulBackend, Error>, Duration) {
    let start = Instant::now();
    let r = ConsulBuilder::from_url(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .namespace(testbed::fresh_namespace("tls"))
        .request_timeout(TIMEOUT)
        .watch_wait(Duration::from_secs(2))
        .connect()
        .await;
    (r, start.elapsed())
}

/// Connecting to `url` fails promptly with an `Unavailable` error that says TLS and contains every
/// one of `words`.
async fn refused(url: &str, words: &[&str]) -> Error {
    let (r, took) = connect(url).await;
    let e = match r {
        Ok(_) => panic!("{url}: connected, but the TLS handshake should fail"),
        Err(e) => e,
    };
    eprintln!("{url}: refused in {took:?}: {e}");
    assert!(took < PROMPT, "{url}: took {took:?} to fail: {e}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{url}: {e}");
    assert!(e.message().contains("TLS: "), "{url}: {e}");
    for w in words {
        assert!(e.message().contains(w), "{url}: no `{w}` in: {e}");
    }
    e
}

/// A session, a put under it, a get, and the put seen by a watch (blocking queries).
async fn round_trip(backend: &ConsulBackend) {
    let before = backend.list("").await.unwrap().revision;
    let mut events = backend.watch("", before).await.unwrap();
    let lease = backend.grant(Duration::from_secs(10)).await.unwrap();
    let rev = backend
        .put("web/w1", Bytes::from_static(b"over TLS"), Some(&lease.id))
        .await
        .unwrap();
    let kv = backend
        .get("web/w1")
        .await
        .unwrap()
        .expect("the key just written");
    assert_eq!(kv.value, Bytes::from_static(b"over TLS"));
    let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the watch sees the put within 10 s")
        .expect("the watch is open")
        .unwrap();
    assert_eq!(
        (ev.kind, ev.key.as_str(), ev.revision),
        (EventKind::Put, "web/w1", rev)
    );
    backend.revoke(&lease.id).await.unwrap();
    assert!(backend.get("web/w1").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuls_trusts_the_ca_file_and_refuses_a_wrong_ca_or_name() {
    let ca = TestCa::new("registry test CA");
    // 127.0.0.2 reaches the same container (all of 127.0.0.0/8 is loopback, and Docker publishes
    // on every address) but is not a name the certificate carries.
    let server = ca.server_cert(&["localhost", "127.0.0.1"]);
    let consul = match testbed::start_consul(ConsulOptions {
        tls: Some(ServerTls {
            cert: server.cert,
            key: server.key,
        }),
        ..ConsulOptions::default()
    })
    .await
    {
        Ok(c) => c,
        Err(reason) => {
            return testbed::unavailable::<()>("consul with HTTPS", &reason).unwrap_or(());
        }
    };
    let port = consul.endpoint.rsplit_once(':').expect("host:port").1;
    let dir = TempDir::new("consul-tls");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let other_file = dir.write("other-ca.pem", &TestCa::new("another CA").pem);
    let with_ca = |host: &str, ca: &Path| format!("consuls://{host}:{port}?ca={}", ca.display());

    // The CA file is trusted: real operations, by address and by name.
    for host in ["127.0.0.1", "localhost"] {
        let url = with_ca(host, &ca_file);
        let backend = connect(&url)
            .await
            .0
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        round_trip(&backend).await;
    }

    // No CA file: the built-in roots, which do not hold the test CA.
    refused(
        &format!("consuls://127.0.0.1:{port}"),
        &["not trusted", "UnknownIssuer", "ca=PATH"],
    )
    .await;
    // A CA that did not issue the server's certificate.
    let other = other_file.display().to_string();
    refused(
        &with_ca("127.0.0.1", &other_file),
        &["not trusted", "UnknownIssuer", &other, "ca=PATH"],
    )
    .await;
    // The right CA, but the certificate does not carry the address connected to.
    refused(
        &with_ca("127.0.0.2", &ca_file),
        &["not valid for the name", "127.0.0.2"],
    )
    .await;

    // Plain text to the TLS port: the hint names the TLS scheme.
    let (r, took) = connect(&format!("consul://127.0.0.1:{port}")).await;
    let e = r.expect_err("plain text to a TLS port");
    eprintln!("consul:// to the TLS port, refused in {took:?}: {e}");
    assert!(took < PROMPT, "took {took:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("consuls://"), "{e}");
    // A CA file with no certificate in it is a configuration error, found before connecting.
    let empty = dir.write("empty.pem", "");
    let (r, _) = connect(&with_ca("127.0.0.1", &empty)).await;
    let e = r.expect_err("a CA file without a certificate");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("no PEM certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuls_to_a_plain_http_port_says_it_is_not_tls() {
    let Some(endpoint) = testbed::shared_consul() else {
        return;
    };
    let dir = TempDir::new("consul-plain");
    let ca_file = dir.write("ca.pem", &TestCa::new("registry test CA").pem);
    refused(
        &format!("consuls://{endpoint}?ca={}", ca_file.display()),
        &["did not answer in TLS", "plain-text port"],
    )
    .await;
}
