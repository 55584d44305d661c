//! `rediss://` against a Redis container serving TLS only, with a certificate from a CA made by the
//! test: with the CA file a real lease, put, get and watch round trip works, and so it does without
//! one in a child process whose system roots (`SSL_CERT_FILE`) hold the test CA; a URL without a CA
//! (the machine's roots), a wrong CA or a certificate for another name is refused at once with an
//! error that says TLS and what to check; a plain-text port, which never answers, within the
//! timeouts.

use std::path::Path;
use std::time::{Duration, Instant};

use conformance_tests::pki::{TempDir, TestCa};
use conformance_tests::testbed::{self, RedisOptions, ServerTls};
use futures::StreamExt;
use registry_core::{Backend, Bytes, Error, ErrorKind, EventKind};
use registry_redis::{RedisBackend, RedisBuilder};

/// A TLS failure must be reported well within this (it takes milliseconds; a hang would end at
/// the connect timeout plus the request timeout, 4 s).
const PROMPT: Duration = Duration::from_millis(3000);

async fn connect(url: &str) -> (Result<RedisBackend, Error>, Duration) {
    let start = Instant::now();
    let r = RedisBuilder::from_url(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .namespace(testbed::fresh_namespace("tls"))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
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

/// A lease, a put under it, a get, and the put seen by a watch (on a connection of its own).
async fn round_trip(backend: &RedisBackend) {
    let before = backend.list("").await.unwrap().revision;
    let mut events = backend.watch("", before).await.unwrap();
    let lease = backend.grant(Duration::from_secs(5)).await.unwrap();
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
    let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the watch sees the put within 5 s")
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
async fn rediss_trusts_the_ca_file_and_refuses_a_wrong_ca_or_name() {
    let ca = TestCa::new("registry test CA");
    // 127.0.0.2 reaches the same container (all of 127.0.0.0/8 is loopback, and Docker publishes
    // on every address) but is not a name the certificate carries.
    let server = ca.server_cert(&["localhost", "127.0.0.1"]);
    let redis = match testbed::start_redis(RedisOptions {
        tls: Some(ServerTls {
            cert: server.cert,
            key: server.key,
        }),
        ..RedisOptions::default()
    })
    .await
    {
        Ok(r) => r,
        Err(reason) => return testbed::unavailable::<()>("redis with TLS", &reason).unwrap_or(()),
    };
    let port = redis.endpoint.rsplit_once(':').expect("host:port").1;
    let dir = TempDir::new("redis-tls");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let other_file = dir.write("other-ca.pem", &TestCa::new("another CA").pem);
    let with_ca = |host: &str, ca: &Path| format!("rediss://{host}:{port}?ca={}", ca.display());

    // The CA file is trusted: real operations, by address and by name.
    for host in ["127.0.0.1", "localhost"] {
        let url = with_ca(host, &ca_file);
        let backend = connect(&url)
            .await
            .0
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        round_trip(&backend).await;
    }

    // No CA file: the system's roots, which do not hold the test CA.
    refused(
        &format!("rediss://127.0.0.1:{port}"),
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
    let (r, took) = connect(&format!("redis://127.0.0.1:{port}")).await;
    let e = r.expect_err("plain text to a TLS port");
    eprintln!("redis:// to the TLS port, refused in {took:?}: {e}");
    assert!(took < PROMPT, "took {took:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("rediss://"), "{e}");
    // A CA file with no certificate in it is a configuration error, found before connecting.
    let empty = dir.write("empty.pem", "");
    let (r, _) = connect(&with_ca("127.0.0.1", &empty)).await;
    let e = r.expect_err("a CA file without a certificate");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("no PEM certificate"), "{e}");

    // Without a CA file the system's trust store is what counts: a child process whose
    // SSL_CERT_FILE (honoured as OpenSSL does) names the test CA connects.
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = ca_file.to_str().expect("UTF-8 path").to_owned();
    tokio::task::spawn_blocking(move || {
        run_child(
            "child_connects_with_system_roots",
            &[(CHILD_URL, &url), ("SSL_CERT_FILE", &ca)],
        )
    })
    .await
    .unwrap();
}

/// Runs this test binary's `child` test in a child process with `env`, and returns its output.
fn run_child(child: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--ignored", "--exact", "--nocapture", child])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("run the child test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {child} failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "child {child} ran no test:\n{text}"
    );
    text
}

/// The URL a child test connects to, from its parent.
const CHILD_URL: &str = "REGISTRY_TLS_CHILD_URL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by rediss_trusts_the_ca_file_and_refuses_a_wrong_ca_or_name"]
async fn child_connects_with_system_roots() {
    let url = std::env::var(CHILD_URL).unwrap_or_else(|_| {
        panic!("{CHILD_URL} is not set: this test is run by rediss_trusts_the_ca_file_and_refuses_a_wrong_ca_or_name")
    });
    let backend = connect(&url)
        .await
        .0
        .unwrap_or_else(|e| panic!("{url} with SSL_CERT_FILE naming the test CA: {e}"));
    round_trip(&backend).await;
}

/// A plain-text Redis takes the TLS client hello for the start of an inline command and waits for
/// the rest, so nothing fails: the connect timeout ends the wait, and the error says to check that
/// the port speaks TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_to_a_plain_text_port_times_out_naming_tls() {
    let Some(endpoint) = testbed::shared_redis() else {
        return;
    };
    let dir = TempDir::new("redis-plain");
    let ca_file = dir.write("ca.pem", &TestCa::new("registry test CA").pem);
    let url = format!("rediss://{endpoint}?ca={}", ca_file.display());
    let (r, took) = connect(&url).await;
    let e = r.expect_err("a TLS connection to a plain-text port");
    eprintln!("{url}: refused in {took:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.message().contains("TLS port"), "{e}");
    // Bounded by the connect and request timeouts (2 s each), with room for a loaded machine.
    assert!(took < Duration::from_secs(6), "took {took:?}: {e}");
}
