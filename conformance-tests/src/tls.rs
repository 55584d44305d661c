//! The TLS scenarios every backend's `tests/tls.rs` runs (feature `testbed`), against a server of
//! the backend that speaks only TLS, with a certificate from a CA the test makes ([`TlsServer`]).
//!
//! A backend describes itself once ([`TlsBackend`]: its scheme, its server in the test bed, how to
//! connect) and lists its tests:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn the_ca_file_is_trusted_and_a_wrong_ca_or_name_is_refused() {
//!     if let Some(server) = TlsServer::start::<Etcd>().await {
//!         tls::the_ca_file_is_trusted_and_a_wrong_ca_or_name_is_refused::<Etcd>(&server, &[]).await;
//!     }
//! }
//! ```
//!
//! The system's trust store is checked in a child process of the test binary whose `SSL_CERT_FILE`
//! names the test CA ([`system_roots_are_trusted`]): the binary must then have the ignored test
//! `child_connects_with_system_roots` calling [`child_connects_with_system_roots`] (and likewise
//! for [`builtin_roots_are_the_fallback`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use registry_core::{Backend, Bytes, Error, ErrorKind, EventKind};

use crate::pki::{TempDir, TestCa};
use crate::testbed::{
    self, ConsulOptions, Container, EtcdOptions, RedisOptions, ServerKind, ServerTls,
};

/// The names the server certificate carries. 127.0.0.2 reaches the same container (the whole of
/// 127.0.0.0/8 is loopback and Docker publishes on every address) but is not among them.
pub const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// What the scenarios need to know of one backend.
pub trait TlsBackend {
    /// The backend's client.
    type Client: Backend;
    /// The plain-text URL scheme (`etcd`); the TLS one is this and an `s` (`etcds`).
    const SCHEME: &'static str;
    /// The server the test bed starts for it.
    const SERVER: ServerKind;
    /// How soon a refused handshake must be reported (it takes milliseconds; a hang ends at the
    /// connection's timeouts).
    const PROMPT: Duration;
    /// The round trip's lease TTL, and how long its watch may take to see the put.
    const PATIENCE: Duration;

    /// Connects to `url` with the timeouts of these tests (a `url` that does not parse panics).
    fn connect(url: &str) -> impl Future<Output = registry_core::Result<Self::Client>>;
}

/// A TLS server of the backend under test with a certificate for [`SERVER_NAMES`] from a CA of
/// the test's own, and that CA in a file.
#[derive(Debug)]
pub struct TlsServer {
    _container: Container,
    scheme: &'static str,
    port: String,
    dir: TempDir,
    /// The file holding the PEM of the CA that issued the server's certificate.
    pub ca_file: PathBuf,
}

impl TlsServer {
    /// Starts `B`'s server; `None` (after saying why) when it cannot be had and need not be.
    pub async fn start<B: TlsBackend>() -> Option<TlsServer> {
        let ca = TestCa::new("registry test CA");
        let issued = ca.server_cert(SERVER_NAMES);
        let tls = ServerTls {
            cert: issued.cert,
            key: issued.key,
        };
        let what = format!("{} with TLS", B::SCHEME);
        let (container, endpoint) =
            testbed::start_or_skip(&what, start_server(B::SERVER, tls)).await?;
        let port = endpoint.rsplit_once(':').expect("host:port").1.to_owned();
        let dir = TempDir::new(&format!("{}-tls", B::SCHEME));
        let ca_file = dir.write("ca.pem", &ca.pem);
        Some(TlsServer {
            _container: container,
            scheme: B::SCHEME,
            port,
            dir,
            ca_file,
        })
    }

    /// The TLS URL of the server at `host`, trusting the CA in `ca` when given.
    pub fn url(&self, host: &str, ca: Option<&Path>) -> String {
        let url = format!("{}s://{host}:{}", self.scheme, self.port);
        match ca {
            Some(ca) => format!("{url}?ca={}", ca.display()),
            None => url,
        }
    }
}

/// Starts a `kind` server that speaks only TLS, with `tls`'s certificate; returns the container and
/// its `127.0.0.1:port`.
///
/// On a fixed host port: the tests reach the server as `localhost` too, which may resolve to `::1`,
/// and Docker gives an ephemeral mapping's IPv4 and IPv6 sides ports of their own, so `::1` at the
/// IPv4 side's port can be another container (CI once reached a plain-text etcd there). A fixed
/// mapping binds the same port on both sides, and `free_port` takes it below the ephemeral range.
async fn start_server(kind: ServerKind, tls: ServerTls) -> Result<(Container, String), String> {
    let tls = Some(tls);
    let host_port = Some(testbed::free_port());
    match kind {
        ServerKind::Etcd => testbed::start_etcd(EtcdOptions {
            tls,
            host_port,
            ..EtcdOptions::default()
        })
        .await
        .map(|s| (s.container, s.endpoint)),
        ServerKind::Redis => testbed::start_redis(RedisOptions {
            tls,
            host_port,
            ..RedisOptions::default()
        })
        .await
        .map(|s| (s.container, s.endpoint)),
        ServerKind::Consul => testbed::start_consul(ConsulOptions {
            tls,
            host_port,
            ..ConsulOptions::default()
        })
        .await
        .map(|s| (s.container, s.endpoint)),
        ServerKind::Prometheus => Err("Prometheus is not a backend".to_owned()),
    }
}

/// Connects to `url`, timing it.
pub async fn connect<B: TlsBackend>(url: &str) -> (registry_core::Result<B::Client>, Duration) {
    let start = Instant::now();
    let r = B::connect(url).await;
    (r, start.elapsed())
}

/// Connecting to `url` fails promptly with an `Unavailable` error that says TLS and contains every
/// one of `words`.
pub async fn refused<B: TlsBackend>(url: &str, words: &[&str]) -> Error {
    let (r, took) = connect::<B>(url).await;
    let e = match r {
        Ok(_) => panic!("{url}: connected, but the TLS handshake should fail"),
        Err(e) => e,
    };
    eprintln!("{url}: refused in {took:?}: {e}");
    assert!(took < B::PROMPT, "{url}: took {took:?} to fail: {e}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{url}: {e}");
    assert!(e.message().contains("TLS: "), "{url}: {e}");
    for w in words {
        assert!(e.message().contains(w), "{url}: no `{w}` in: {e}");
    }
    e
}

/// A lease, a put under it, a get, the put seen by a watch within `patience`, and the revoke
/// taking the key away.
pub async fn round_trip(backend: &dyn Backend, patience: Duration) {
    let before = backend.list("").await.unwrap().revision;
    let mut events = backend.watch("", before).await.unwrap();
    let lease = backend.grant(patience).await.unwrap();
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
    let ev = tokio::time::timeout(patience, events.next())
        .await
        .unwrap_or_else(|_| panic!("the watch did not see the put within {patience:?}"))
        .expect("the watch is open")
        .unwrap();
    assert_eq!(
        (ev.kind, ev.key.as_str(), ev.revision),
        (EventKind::Put, "web/w1", rev)
    );
    backend.revoke(&lease.id).await.unwrap();
    assert!(backend.get("web/w1").await.unwrap().is_none());
}

/// The CA file is trusted: a real [`round_trip`], by address and by name. Refused at once, with an
/// error that says TLS and what to check: no CA file (the system's roots, which do not hold the
/// test CA; the error also has every one of `no_ca_words`), a CA that did not issue the server's
/// certificate, and an address the certificate does not carry. Plain text to the TLS port is
/// refused with a hint naming the TLS scheme, and a CA file without a certificate is a
/// configuration error found before connecting.
pub async fn the_ca_file_is_trusted_and_a_wrong_ca_or_name_is_refused<B: TlsBackend>(
    server: &TlsServer,
    no_ca_words: &[&str],
) {
    let ca_file = Some(server.ca_file.as_path());
    for host in ["127.0.0.1", "localhost"] {
        let url = server.url(host, ca_file);
        let backend = B::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        round_trip(&backend, B::PATIENCE).await;
    }

    let mut words = vec!["not trusted", "UnknownIssuer", "ca=PATH"];
    words.extend_from_slice(no_ca_words);
    refused::<B>(&server.url("127.0.0.1", None), &words).await;
    let other_file = server
        .dir
        .write("other-ca.pem", &TestCa::new("another CA").pem);
    let other = other_file.display().to_string();
    refused::<B>(
        &server.url("127.0.0.1", Some(&other_file)),
        &["not trusted", "UnknownIssuer", &other, "ca=PATH"],
    )
    .await;
    refused::<B>(
        &server.url("127.0.0.2", ca_file),
        &["not valid for the name", "127.0.0.2"],
    )
    .await;

    let plain = format!("{}://127.0.0.1:{}", B::SCHEME, server.port);
    let (r, took) = connect::<B>(&plain).await;
    let e = r.expect_err("plain text to a TLS port");
    eprintln!("{plain}: refused in {took:?}: {e}");
    assert!(took < B::PROMPT, "took {took:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains(&format!("{}s://", B::SCHEME)), "{e}");

    let empty = server.dir.write("empty.pem", "");
    let (r, _) = connect::<B>(&server.url("127.0.0.1", Some(&empty))).await;
    let e = r.expect_err("a CA file without a certificate");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.message().contains("no PEM certificate"), "{e}");
}

/// A TLS URL (`<scheme>s://endpoint?ca=FILE`) for a server at `endpoint` that speaks plain text,
/// trusting a fresh test CA kept in the returned directory.
pub fn url_for_a_plain_text_port<B: TlsBackend>(endpoint: &str) -> (TempDir, String) {
    let dir = TempDir::new(&format!("{}-plain", B::SCHEME));
    let ca_file = dir.write("ca.pem", &TestCa::new("registry test CA").pem);
    let url = format!("{}s://{endpoint}?ca={}", B::SCHEME, ca_file.display());
    (dir, url)
}

/// The URL a child test connects to, from its parent.
const CHILD_URL: &str = "REGISTRY_TLS_CHILD_URL";

/// Runs this test binary's test `child` in a child process, with `url` in [`CHILD_URL`] and `env`
/// (and no `SSL_CERT_FILE` or `SSL_CERT_DIR` of this process), and returns its output.
async fn run_child(child: &'static str, url: String, env: Vec<(&'static str, String)>) -> String {
    let run = move || {
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args(["--ignored", "--exact", "--nocapture", child])
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .env(CHILD_URL, url)
            .envs(env)
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
    };
    let text = tokio::task::spawn_blocking(run).await.unwrap();
    eprintln!("{text}");
    text
}

/// Without a CA file the system's trust store is what counts: this binary's test
/// `child_connects_with_system_roots` ([`child_connects_with_system_roots`]), run in a child
/// process whose `SSL_CERT_FILE` (honoured as OpenSSL does) names the test CA, connects.
pub async fn system_roots_are_trusted(server: &TlsServer) {
    let ca = server.ca_file.to_str().expect("UTF-8 path").to_owned();
    run_child(
        "child_connects_with_system_roots",
        server.url("127.0.0.1", None),
        vec![("SSL_CERT_FILE", ca)],
    )
    .await;
}

/// A system trust store that is empty (a minimal root without ca-certificates) falls back to the
/// built-in roots: this binary's test `child_is_refused_with_builtin_roots`
/// ([`child_is_refused_with_builtin_roots`]), run in a child process whose `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` name nothing, does not panic and is refused with an error that says so.
pub async fn builtin_roots_are_the_fallback(server: &TlsServer) {
    let missing = server.dir.path().join("none").display().to_string();
    run_child(
        "child_is_refused_with_builtin_roots",
        server.url("127.0.0.1", None),
        vec![
            ("SSL_CERT_FILE", missing.clone()),
            ("SSL_CERT_DIR", missing),
        ],
    )
    .await;
}

fn child_url() -> String {
    std::env::var(CHILD_URL).unwrap_or_else(|_| {
        panic!("{CHILD_URL} is not set: this test is run in a child process by another test")
    })
}

/// The child of [`system_roots_are_trusted`]: connects without a CA file and makes a round trip.
pub async fn child_connects_with_system_roots<B: TlsBackend>() {
    let url = child_url();
    let backend = B::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{url} with SSL_CERT_FILE naming the test CA: {e}"));
    round_trip(&backend, B::PATIENCE).await;
}

/// The child of [`builtin_roots_are_the_fallback`]: refused, naming the built-in roots.
pub async fn child_is_refused_with_builtin_roots<B: TlsBackend>() {
    refused::<B>(
        &child_url(),
        &["not trusted", "UnknownIssuer", "built-in Mozilla roots"],
    )
    .await;
}
