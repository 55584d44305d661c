//! `registry serve` as infrastructure, tried from outside against the real binary with raw
//! sockets: slow and idle clients are cut at the header timeout while the API answers; a flood of
//! connections beyond the file limit is refused cleanly and counted; a token guards every route
//! but the health checks; TLS with a CA the test makes; a foreign `Host` is refused.

use std::process::Stdio;
use std::time::{Duration, Instant};

use conformance_tests::pki::{TempDir, TestCa};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The test process's own descriptors: it opens thousands of connections.
fn raise_our_file_limit(want: u64) {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("read the file limit");
    if soft < want {
        let got = rlimit::increase_nofile_limit(want).expect("raise the file limit");
        assert!(
            got >= want,
            "this test needs {want} open files; the hard limit is {hard}"
        );
    }
}

/// A `registry serve` process and what it printed.
struct Serve {
    child: Child,
    /// `host:port`.
    addr: String,
    /// Everything it wrote to stdout and stderr so far (for the secrets check).
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Starts `registry serve --backend memory:// --listen 127.0.0.1:0 ARGS`, under a file limit
/// of `files` if given.
async fn serve(args: &[&str], files: Option<u64>) -> Serve {
    let bin = env!("CARGO_BIN_EXE_registry");
    let mut cmd = match files {
        Some(n) => {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args(["serve", "--backend", "memory://", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("REGISTRY_BACKEND")
        .env_remove("REGISTRY_NAMESPACE")
        .env_remove("REGISTRY_SERVE_TOKEN")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn registry serve");
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let o = output.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = err.next_line().await {
            o.lock().unwrap().push_str(&(l + "\n"));
        }
    });
    let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
        .await
        .expect("registry serve prints where it serves within 20 s")
        .expect("its output")
        .unwrap_or_else(|| panic!("registry serve ended: {}", output.lock().unwrap()));
    output.lock().unwrap().push_str(&(line.clone() + "\n"));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://").or(w.strip_prefix("https://")))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    let o = output.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = out.next_line().await {
            o.lock().unwrap().push_str(&(l + "\n"));
        }
    });
    Serve {
        child,
        addr,
        output,
    }
}

/// One request over `io` (`Connection: close`), answered within 5 s: the status and body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut answer))
        .await
        .expect("an answer within 5 s")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_owned(), body.to_owned())
}

async fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    exchange(tcp, path, headers).await
}

/// 1,000 connections that send their request's head a byte a second, and 100 that send nothing,
/// are all closed by the server within the header timeout, while the API answers throughout.
///
/// The API is asked from a thread of its own (the 1,100 connections' tasks must not delay the
/// asking), and must answer within half the header timeout: a server that made requests wait for
/// the slow connections would answer only after the timeout closed them. The figure (BENCHMARKS.md
/// section 6.1: 11-17 ms on a quiet machine) is printed; under a loaded CI machine it varies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_at_the_header_timeout() {
    const SLOW: usize = 1000;
    const IDLE: usize = 100;
    let timeout = Duration::from_secs(4);
    raise_our_file_limit(4096);
    let s = serve(&["--header-timeout", "4s"], None).await;
    let started = Instant::now();
    let mut conns = tokio::task::JoinSet::new();
    for i in 0..SLOW + IDLE {
        // One after the other: 1,100 handshakes at once overflow the kernel's accept queue of
        // whatever listens, and a client whose handshake was dropped waits for retransmissions.
        let mut tcp = TcpStream::connect(&s.addr).await.expect("connect");
        let opened = Instant::now();
        conns.spawn(async move {
            let head = b"GET /v1/services HTTP/1.1\r\nHost: localhost\r\n";
            let mut buf = [0u8; 256];
            for byte in head.iter().cycle() {
                if i < SLOW && tcp.write_all(&[*byte]).await.is_err() {
                    return opened.elapsed();
                }
                // A closed connection reads as its end (or a reset) at once.
                match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return opened.elapsed(),
                    Ok(Ok(_)) => {} // hyper's 408 before it closes
                    Err(_) => {}
                }
                if opened.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            opened.elapsed()
        });
    }
    // Meanwhile the API answers, asked from a thread of its own.
    let addr = s.addr.clone();
    let prober = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut slowest = Duration::ZERO;
            while started.elapsed() < timeout + Duration::from_secs(1) {
                let t = Instant::now();
                let (status, _, body) = get(&addr, "/v1/services", &[]).await;
                assert_eq!(status, 200, "{body}");
                slowest = slowest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            slowest
        })
    });
    let slowest = tokio::task::spawn_blocking(move || prober.join().expect("the prober"))
        .await
        .expect("the prober's join");
    let mut longest = Duration::ZERO;
    while let Some(held) = conns.join_next().await {
        longest = longest.max(held.expect("a connection task"));
    }
    eprintln!(
        "{SLOW} slow and {IDLE} idle connections all closed, the last after {longest:.2?} \
         (header timeout {timeout:?}); slowest API answer meanwhile {slowest:.1?}"
    );
    assert!(
        longest < timeout + Duration::from_secs(2),
        "a connection was held {longest:?} (header timeout {timeout:?})"
    );
    assert!(
        slowest < timeout / 2,
        "the API took {slowest:?} (header timeout {timeout:?})"
    );
    let (_, _, metrics) = get(&s.addr, "/metrics", &[]).await;
    let timeouts = metric(&metrics, "registry_http_header_timeouts_total");
    assert!(
        timeouts >= (SLOW + IDLE) as f64,
        "header timeouts counted: {timeouts}"
    );
}

/// The value of the first sample named `name` in a Prometheus text answer.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Against a file limit of 1,024, 5,000 connections: those beyond the server's limit are told
/// 503 and closed at once, counted in `/metrics`; the server keeps running and answers normally
/// once connections are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_and_counted() {
    const ATTEMPTS: usize = 5000;
    raise_our_file_limit(ATTEMPTS as u64 + 512);
    let s = serve(&["--header-timeout", "60s"], Some(1024)).await;
    let limit = registry_cli::serve::connection_limit(1024);
    let mut held = Vec::new();
    let mut refused = 0;
    let mut slowest_refusal = Duration::ZERO;
    // In waves of 500 (the listen backlog), each connection watched for half a second: a held one
    // says nothing and gets nothing; a refused one is answered at once.
    for wave in 0..ATTEMPTS.div_ceil(500) {
        let mut conns = tokio::task::JoinSet::new();
        for _ in (wave * 500)..((wave + 1) * 500).min(ATTEMPTS) {
            let addr = s.addr.clone();
            conns.spawn(async move {
                let mut tcp = TcpStream::connect(&addr).await.expect("connect");
                let t = Instant::now();
                let mut answer = Vec::new();
                match tokio::time::timeout(Duration::from_millis(500), tcp.read_to_end(&mut answer))
                    .await
                {
                    Err(_) => Err(tcp),
                    Ok(r) => {
                        r.expect("read the refusal");
                        Ok((String::from_utf8_lossy(&answer).into_owned(), t.elapsed()))
                    }
                }
            });
        }
        while let Some(c) = conns.join_next().await {
            match c.expect("a connection task") {
                Err(tcp) => held.push(tcp),
                Ok((answer, took)) => {
                    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
                    assert!(answer.contains("too many connections"), "{answer}");
                    refused += 1;
                    slowest_refusal = slowest_refusal.max(took);
                }
            }
        }
    }
    // A connection the kernel completed while the accept queue was full may reach the server
    // only when it sends something. So each unanswered one asks for /healthz (keeping the
    // connection): the server holds `limit` of them, which answer 200; the others are refused.
    let mut asked = tokio::task::JoinSet::new();
    for mut tcp in held.drain(..) {
        asked.spawn(async move {
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .expect("send");
            let mut answer = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
                .await
                .expect("an answer within 10 s")
                .unwrap_or(0);
            (String::from_utf8_lossy(&answer[..n]).into_owned(), tcp)
        });
    }
    while let Some(c) = asked.join_next().await {
        let (answer, tcp) = c.expect("a connection task");
        if answer.starts_with("HTTP/1.1 200 ") {
            held.push(tcp);
        } else {
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
            refused += 1;
        }
    }
    eprintln!(
        "file limit 1024: {} connections held (limit {limit}), {refused} refused, slowest \
         refusal {slowest_refusal:.1?}",
        held.len()
    );
    assert_eq!(held.len(), limit, "held connections");
    assert_eq!(refused, ATTEMPTS - limit, "refused connections");
    // Free one slot: the API answers, and the refusals are counted.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, metrics) = get(&s.addr, "/metrics", &[]).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(
        metric(&metrics, "registry_http_connections_refused_total"),
        refused as f64
    );
    assert_eq!(
        metric(&metrics, "registry_http_connection_limit"),
        limit as f64
    );
    assert_eq!(metric(&metrics, "registry_http_accept_failures_total"), 0.0);
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, body) = get(&s.addr, "/v1/services", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (_, _, metrics) = get(&s.addr, "/metrics", &[]).await;
    assert_eq!(metric(&metrics, "registry_http_connections"), 1.0);
    drop(s);
}

/// With a token, every route but the health checks wants it (Bearer, or Basic's password); over
/// TLS with a CA the test makes; a foreign `Host` is refused; the token is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_and_tls_guard_the_api_and_the_host_is_checked() {
    let token = "tok-3f9a1c0e7b";
    let dir = TempDir::new("serve-guard");
    let ca = TestCa::new("registry serve test CA");
    let cert = ca.server_cert(&["localhost", "127.0.0.1"]);
    let token_file = dir.write("token", &format!("{token}\n"));
    let cert_file = dir.write("cert.pem", &cert.cert);
    let key_file = dir.write("key.pem", &cert.key);
    let s = serve(
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
            "--allow-host",
            "registry.test",
        ],
        None,
    )
    .await;
    assert!(
        s.output.lock().unwrap().contains("https://"),
        "{}",
        s.output.lock().unwrap()
    );

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let addr = s.addr.clone();
    let https = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let tls = tls.clone();
        let addr = addr.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let io = tls.connect(name, tcp).await.expect("TLS handshake");
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            exchange(io, path, &h).await
        }
    };
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{token}"));
    let bearer = format!("Bearer {token}");
    let (status, head, body) = https("/v1/services", vec![]).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    let wrong = vec![("Authorization", "Bearer tok-3f9a1c0e7c".to_owned())];
    assert_eq!(https("/v1/services", wrong).await.0, 401);
    let ok = vec![("Authorization", bearer.clone())];
    let (status, _, body) = https("/v1/services", ok).await;
    assert_eq!(status, 200, "{body}");
    for path in ["/metrics", "/v1/prometheus/sd", "/"] {
        let ok = vec![("Authorization", format!("Basic {basic}"))];
        assert_eq!(https(path, ok).await.0, 200, "{path} with Basic");
        assert_eq!(https(path, vec![]).await.0, 401, "{path} without a token");
    }
    for path in ["/healthz", "/readyz"] {
        let (status, _, body) = https(path, vec![]).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Host: an allowed name and IP literals pass; another name does not.
    for (host, want) in [
        ("registry.test:443", 200),
        ("127.0.0.1", 200),
        ("[::1]:9797", 200),
        ("attacker.example", 421),
        ("localhost.attacker.example:80", 421),
    ] {
        let h = vec![("Host", host.to_owned()), ("Authorization", bearer.clone())];
        let (status, _, body) = https("/v1/services", h).await;
        assert_eq!(status, want, "Host {host}: {body}");
    }
    // Plain HTTP to the TLS port gets no answer; a client that does not trust the CA fails.
    let plain = TcpStream::connect(&s.addr).await.unwrap();
    let mut plain = plain;
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plain HTTP answered"
    );
    let untrusting = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let tcp = TcpStream::connect(&s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(untrusting))
            .connect(name, tcp)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let output = s.output.lock().unwrap().clone();
    assert!(!output.contains(token), "the token was printed: {output}");
    assert!(!output.contains(&basic), "the token was printed: {output}");
}

/// Beyond loopback without a token the command refuses to start, saying why; `--no-auth` is the
/// explicit way to do it anyway.
#[tokio::test]
async fn beyond_loopback_a_token_is_required() {
    let out = Command::new(env!("CARGO_BIN_EXE_registry"))
        .args(["serve", "--backend", "memory://", "--listen", "0.0.0.0:0"])
        .env_remove("REGISTRY_SERVE_TOKEN")
        .env_remove("REGISTRY_BACKEND")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.contains("--no-auth"),
        "{err}"
    );
    let mut s = serve(&[], None).await;
    let (status, _, body) = get(&s.addr, "/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"alive"}"#));
    s.child.kill().await.unwrap();
    let mut open = Command::new(env!("CARGO_BIN_EXE_registry"))
        .args([
            "serve",
            "--backend",
            "memory://",
            "--listen",
            "0.0.0.0:0",
            "--no-auth",
        ])
        .env_remove("REGISTRY_SERVE_TOKEN")
        .env_remove("REGISTRY_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(open.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert!(line.contains("serving"), "{line}");
}
