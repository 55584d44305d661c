//! `etcds://` against an etcd container that serves TLS with a certificate from a CA made by the
//! test: the CA file is trusted, a URL without one trusts the system's roots (shown for real by a
//! child process whose `SSL_CERT_FILE` names the test CA), and a wrong CA or a certificate for
//! another name is refused at once with an error that says TLS and what to check.

use std::path::Path;
use std::time::{Duration, Instant};

use conformance_tests::pki::{TempDir, TestCa};
use conformance_tests::testbed::{self, Etcd, EtcdOptions};
use registry_core::{Backend, Bytes, Error, ErrorKind};
use registry_etcd::{EtcdBackend, EtcdBuilder};

/// A TLS failure must be reported well within this (it takes milliseconds; a hang would end at
/// the connect timeout plus the request timeout, 4 s).
const PROMPT: Duration = Duration::from_millis(3000);

/// The names the server certificate carries. 127.0.0.2 reaches the same container (the whole of
/// 127.0.0.0/8 is loopback and Docker publishes on every address) but is not among them.
const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// An etcd container serving clients over TLS (no client certificate required), with a certificate
/// for [`SERVER_NAMES`] issued by `ca`.
async fn tls_etcd(ca: &TestCa) -> Option<Etcd> {
    let server = ca.server_cert(SERVER_NAMES);
    let started = testbed::start_etcd(EtcdOptions {
        scheme: Some("https".into()),
        files: vec![
            ("/certs/server.pem".into(), server.cert.into_bytes()),
            ("/certs/server-key.pem".into(), server.key.into_bytes()),
        ],
        extra_args: vec![
            "--cert-file=/certs/server.pem".into(),
            "--key-file=/certs/server-key.pem".into(),
        ],
        ..EtcdOptions::default()
    })
    .await;
    match started {
        Ok(e) => Some(e),
        Err(reason) => testbed::unavailable("etcd with TLS", &reason),
    }
}

fn port(etcd: &Etcd) -> &str {
    etcd.endpoint.rsplit_once(':').expect("host:port").1
}

async fn connect(url: &str) -> (Result<EtcdBackend, Error>, Duration) {
    let start = Instant::now();
    let r = EtcdBuilder::from_url(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .namespace("tls")
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
        Ok(_) => panic!("{url}: connected, but the server's certificate should be refused"),
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

async fn round_trip(backend: &EtcdBackend) {
    backend
        .put("k", Bytes::from_static(b"over TLS"), None)
        .await
        .unwrap();
    let kv = backend
        .get("k")
        .await
        .unwrap()
        .expect("the key just written");
    assert_eq!(kv.value, Bytes::from_static(b"over TLS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_file_is_trusted_and_a_wrong_ca_or_name_is_refused() {
    let ca = TestCa::new("registry test CA");
    let Some(etcd) = tls_etcd(&ca).await else {
        return;
    };
    let port = port(&etcd);
    let dir = TempDir::new("etcd-tls");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let other_file = dir.write("other-ca.pem", &TestCa::new("another CA").pem);
    let with_ca = |host: &str, ca: &Path| format!("etcds://{host}:{port}?ca={}", ca.display());

    // The CA file is trusted: a real round trip, by address and by name.
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
        &format!("etcds://127.0.0.1:{port}"),
        &[
            "not trusted",
            "UnknownIssuer",
            "no CA file was given",
            "ca=PATH",
        ],
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
    let (r, took) = connect(&format!("etcd://127.0.0.1:{port}")).await;
    let e = r.expect_err("plain text to a TLS port");
    eprintln!("etcd:// to the TLS port, refused in {took:?}: {e}");
    assert!(took < PROMPT, "took {took:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("etcds://"), "{e}");
    // A CA file with no certificate in it is a configuration error, found before connecting.
    let empty = dir.write("empty.pem", "");
    let (r, _) = connect(&with_ca("127.0.0.1", &empty)).await;
    let e = r.expect_err("a CA file without a certificate");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("no PEM certificate"), "{e}");
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

/// `etcds://` without a CA file trusts the system's trust store: a child process whose
/// `SSL_CERT_FILE` (honoured like OpenSSL does) names the test CA connects; one whose store is
/// empty - a minimal root without ca-certificates - falls back to the built-in roots, does not
/// panic, and is refused with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_file_the_system_roots_are_trusted() {
    let ca = TestCa::new("registry test CA");
    let Some(etcd) = tls_etcd(&ca).await else {
        return;
    };
    let dir = TempDir::new("etcd-roots");
    let ca_file = dir.write("system-roots.pem", &ca.pem);
    let ca_file = ca_file.to_str().expect("UTF-8 path").to_owned();
    let missing = dir.path().join("none").display().to_string();
    let url = format!("etcds://127.0.0.1:{}", port(&etcd));
    let children = tokio::task::spawn_blocking(move || {
        let ok = run_child(
            "child_connects_with_system_roots",
            &[(CHILD_URL, &url), ("SSL_CERT_FILE", &ca_file)],
        );
        let builtin = run_child(
            "child_is_refused_with_builtin_roots",
            &[
                (CHILD_URL, &url),
                ("SSL_CERT_FILE", &missing),
                ("SSL_CERT_DIR", &missing),
            ],
        );
        (ok, builtin)
    })
    .await
    .unwrap();
    eprintln!("{}\n{}", children.0, children.1);
}

/// The URL a child test connects to, from its parent.
const CHILD_URL: &str = "REGISTRY_TLS_CHILD_URL";

fn child_url() -> String {
    std::env::var(CHILD_URL).unwrap_or_else(|_| {
        panic!("{CHILD_URL} is not set: this test is run by without_a_ca_file_the_system_roots_are_trusted")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by without_a_ca_file_the_system_roots_are_trusted"]
async fn child_connects_with_system_roots() {
    let url = child_url();
    let backend = connect(&url)
        .await
        .0
        .unwrap_or_else(|e| panic!("{url} with SSL_CERT_FILE naming the test CA: {e}"));
    round_trip(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by without_a_ca_file_the_system_roots_are_trusted"]
async fn child_is_refused_with_builtin_roots() {
    refused(
        &child_url(),
        &["not trusted", "UnknownIssuer", "built-in Mozilla roots"],
    )
    .await;
}
