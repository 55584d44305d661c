//! The dashboard of `registry serve` in a real browser: headless Debian Chromium driven by
//! playwright-core (`tests/dashboard_driver.js`, installed by `scripts/browser.sh`), against the
//! real `registry` binary over a real etcd server of its own (it is paused to make the view stale).
//!
//! Two tests without a browser come first: the page's assets and headers, and the `ring` route
//! the page draws from, in-process on a memory backend.
//!
//! Each step of the browser test saves a screenshot under `<target>/test-artifacts/dashboard/` (the path is printed).
//! Under `REGISTRY_TEST_REQUIRED=1` the test fails when etcd, Node, Chromium or playwright-core
//! cannot be had; otherwise it says why and skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conformance_tests::consul_api::register_service;
use conformance_tests::testbed::{
    ConsulOptions, EtcdOptions, fresh_namespace, start_consul, start_etcd, unavailable,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;

/// The acceptance bound: a registration on the server shows on the open page within this.
const LIVE_INSERT: Duration = Duration::from_secs(1);
/// For what may be slow on a loaded two-core machine: starting Chromium, loading the page.
const SLOW: Duration = Duration::from_secs(90);

fn registry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry"));
    c.env_remove("REGISTRY_BACKEND")
        .env_remove("REGISTRY_NAMESPACE")
        .kill_on_drop(true);
    c
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1000.0
}

/// The target directory: the binary is `<target>/<profile>/registry`.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_registry"))
        .ancestors()
        .nth(2)
        .expect("<target>/<profile>/registry")
        .to_path_buf()
}

/// playwright-core's node_modules: `REGISTRY_PLAYWRIGHT_DIR`, else where scripts/browser.sh
/// installs it.
fn playwright_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("REGISTRY_PLAYWRIGHT_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    let cache = std::env::var_os("REGISTRY_TESTBED_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                })
                .join("service-registry/testbed")
        });
    cache.join("browser/node_modules")
}

/// Why the browser cannot be had, if it cannot.
fn browser_missing(modules: &Path) -> Option<String> {
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("/usr/bin/chromium is missing (Debian: chromium)".into());
    }
    if !modules.join("playwright-core/package.json").exists() {
        return Some(format!("no playwright-core in {}", modules.display()));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("node does not run (Debian: nodejs)".into()),
    }
}

/// A line reader of a child's stdout, as a channel (so that waits can time out).
fn lines(stdout: ChildStdout) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines: Lines<_> = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first line of `rx` that is JSON and matches `pred`, within `limit`.
async fn line_where(
    rx: &mut mpsc::UnboundedReceiver<String>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && pred(&v)
                {
                    return v;
                }
                seen.push(line);
            }
            Ok(None) => panic!("{what}: the process ended its output; it said {seen:#?}"),
            Err(_) => panic!("{what}: nothing within {limit:?}; lines meanwhile: {seen:#?}"),
        }
    }
}

/// A `registry register` process, once it says it is registered (on the server).
struct Registered {
    child: Child,
    out: mpsc::UnboundedReceiver<String>,
    /// When this test read that it is registered (ms since the Unix epoch).
    at_ms: f64,
}

async fn register(common: &[String], service: &str, id: &str, extra: &[&str]) -> Registered {
    let mut child = registry()
        .args(common)
        .args(["register", service, "--id", id, "--json"])
        .args(["--ttl", "30s", "--heartbeat", "2s"])
        .args(extra)
        .stdout(Stdio::piped())
        // Its states (and the errors that go with them) are on stdout; the log of its retries
        // while etcd is paused would only bury the test's own output.
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn registry register");
    let mut out = lines(child.stdout.take().expect("piped"));
    line_where(&mut out, SLOW, &format!("register {id}"), |v| {
        v["state"] == "registered"
    })
    .await;
    Registered {
        child,
        out,
        at_ms: now_ms(),
    }
}

/// The browser driver: commands in, answers out.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    out: mpsc::UnboundedReceiver<String>,
    next: u64,
}

impl Driver {
    /// Sends `cmd` (an object) and returns its id.
    async fn send(&mut self, mut cmd: Value) -> u64 {
        self.next += 1;
        cmd["id"] = json!(self.next);
        let line = format!("{cmd}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the driver");
        self.next
    }

    /// The driver's answer to command `id`: `started`, or its result (which must be ok).
    async fn answer(&mut self, id: u64, started: bool, limit: Duration) -> Value {
        let what = format!("browser driver, command {id}");
        let v = line_where(&mut self.out, limit, &what, |v| {
            v["id"] == id && (v["started"] == true) == started
        })
        .await;
        if !started {
            assert!(
                v["ok"] == true,
                "the browser step failed: {}\nscreenshot: {}",
                v["error"].as_str().unwrap_or("?"),
                v["shot"]
            );
            if let Some(shot) = v["shot"].as_str() {
                println!("screenshot: {shot}");
            }
            assert_eq!(v["navigations"], 1, "the page was reloaded: {v}");
            assert_eq!(v["problems"], json!([]), "errors in the page: {v}");
        }
        v
    }

    /// Sends `cmd` and waits for its result.
    async fn run(&mut self, cmd: Value, limit: Duration) -> Value {
        let id = self.send(cmd).await;
        self.answer(id, false, limit).await
    }
}

/// Unpauses the container if the test stops while it is paused (so that it can be removed).
struct Paused(String);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["unpause", &self.0])
            .output();
    }
}

async fn docker(args: &[&str]) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_registry_live_in_a_real_browser() {
    let started = Instant::now();
    let modules = playwright_dir();
    if let Some(why) = browser_missing(&modules) {
        return unavailable::<()>(
            "a browser (Debian's chromium, node and playwright-core)",
            &format!("{why}; scripts/browser.sh installs them"),
        )
        .unwrap_or(());
    }
    let etcd = match start_etcd(EtcdOptions::default()).await {
        Ok(e) => e,
        Err(why) => return unavailable::<()>("etcd", &why).unwrap_or(()),
    };
    let artefacts = target_dir().join("test-artifacts/dashboard");
    // This run's screenshots only.
    let _ = std::fs::remove_dir_all(&artefacts);
    std::fs::create_dir_all(&artefacts).expect("create the artefact directory");
    println!("screenshots in {}", artefacts.display());
    let ns = fresh_namespace("dash");
    let common: Vec<String> = ["--backend", &format!("etcd://{}", etcd.endpoint)]
        .into_iter()
        .map(String::from)
        .chain(["--namespace".to_owned(), ns.clone()])
        .collect();

    let _w1 = register(
        &common,
        "web",
        "web-1",
        &[
            "--addr",
            "10.1.0.1:8080",
            "--meta",
            "zone=eu-1",
            "--instance-version",
            "1.4.2",
        ],
    )
    .await;
    let _w2 = register(
        &common,
        "web",
        "web-2",
        &[
            "--addr",
            "10.1.0.2:8080",
            "--meta",
            "zone=eu-2",
            "--meta",
            "tier=gold",
            "--weight",
            "200",
        ],
    )
    .await;
    let _a1 = register(&common, "api", "api-1", &["--addr", "10.2.0.1:9000"]).await;
    let _a2 = register(&common, "api", "api-2", &["--addr", "10.2.0.2:9000"]).await;
    let _a3 = register(
        &common,
        "api",
        "api-3",
        &["--addr", "10.2.0.3:9000", "--offline"],
    )
    .await;

    // Three sources beside the backend, each instance labelled with its own: a static file,
    // Consul's catalog (pay/pay-1) and Consul's DNS interface (SRV records of dnsweb, which the
    // catalog source shows too).
    let static_dir = conformance_tests::pki::TempDir::new("dashboard-static");
    let static_file = static_dir.write(
        "static.json",
        r#"[{"service":"db","id":"db-primary","addrs":["10.3.0.1:5432"]}]"#,
    );
    let consul = match start_consul(ConsulOptions::default()).await {
        Ok(c) => c,
        Err(why) => return unavailable::<()>("consul", &why).unwrap_or(()),
    };
    for (name, id, addr) in [
        ("pay", "pay-1", "10.4.0.1"),
        ("dnsweb", "dns-1", "10.5.0.1"),
    ] {
        register_service(&consul.endpoint, name, id, addr, 8080).await;
    }
    let dns = consul
        .bridge_dns()
        .expect("Consul's DNS interface on the bridge");
    let mut serve = registry()
        .args(&common)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--source")
        .arg(format!("static:{}", static_file.display()))
        .arg("--source")
        .arg(format!("consul-catalog={}", consul.endpoint))
        .arg("--source")
        .arg(format!("dns:dnsweb=dnsweb.service.consul.@{dns}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn registry serve");
    let mut serve_out = lines(serve.stdout.take().expect("piped"));
    let line = tokio::time::timeout(SLOW, serve_out.recv())
        .await
        .expect("serve says where it serves")
        .expect("a line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();

    let mut node = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard_driver.js"))
        .arg(&url)
        .arg(&artefacts)
        .env("REGISTRY_PLAYWRIGHT_DIR", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut driver = Driver {
        stdin: node.stdin.take().expect("piped"),
        out: lines(node.stdout.take().expect("piped")),
        child: node,
        next: 0,
    };

    // 1. The page loads, with its headers, and shows the registered services.
    let t = Instant::now();
    let opened = driver
        .run(
            json!({"cmd": "open", "timeout_ms": SLOW.as_millis()}),
            SLOW + Duration::from_secs(15),
        )
        .await;
    println!("page loaded and live in {:?}", t.elapsed());
    assert_eq!(opened["status"], 200);
    let h = &opened["headers"];
    assert_eq!(h["content-type"], "text/html; charset=utf-8", "{h}");
    assert!(
        h["content-security-policy"]
            .as_str()
            .is_some_and(|c| c.contains("default-src 'self'") && !c.contains("unsafe")),
        "{h}"
    );
    let listed = driver
        .run(
            json!({"cmd": "listed", "min": {"web": 2, "api": 3, "db": 1, "pay": 1, "dnsweb": 2},
                   "timeout_ms": 30_000,
                   "shot": "01-loaded"}),
            SLOW,
        )
        .await;
    let ids = |service: &str| -> Vec<String> {
        listed["services"][service]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("web"), ["web-1", "web-2"], "{listed}");
    assert_eq!(ids("api"), ["api-1", "api-2", "api-3"], "{listed}");
    assert_eq!(ids("db"), ["db-primary"], "{listed}");
    // Every source's label, in the row's source column.
    let sources = |service: &str| -> Vec<String> {
        let mut s: Vec<String> = listed["services"][service]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["source"].as_str().unwrap().to_owned())
            .collect();
        s.sort();
        s
    };
    assert_eq!(sources("db"), ["static"], "{listed}");
    assert_eq!(sources("web"), ["backend", "backend"], "{listed}");
    assert_eq!(sources("pay"), ["consul-catalog"], "{listed}");
    assert_eq!(sources("dnsweb"), ["consul-catalog", "dns"], "{listed}");
    let api3 = &listed["services"]["api"][2];
    assert_eq!(api3["state"], "offline", "{api3}");
    assert_eq!(
        api3["share"], "–",
        "an offline instance owns nothing: {api3}"
    );
    // web-2 has twice web-1's weight: about two thirds of the key space.
    let share = |r: &Value| -> f64 {
        r["share"]
            .as_str()
            .unwrap()
            .trim_end_matches(" %")
            .parse()
            .unwrap_or_else(|_| panic!("a share in %: {r}"))
    };
    let (s1, s2) = (
        share(&listed["services"]["web"][0]),
        share(&listed["services"]["web"][1]),
    );
    assert!((s1 + s2 - 100.0).abs() < 0.2, "{s1} + {s2}");
    assert!(s2 > 50.0 && s2 < 80.0, "web-2's share {s2} %");

    // 2. Hovering an instance shows its share and metadata, and singles out its arcs.
    let hovered = driver
        .run(
            json!({"cmd": "hover", "service": "web", "instance": "web-2",
                   "timeout_ms": 10_000, "shot": "02-hover"}),
            SLOW,
        )
        .await;
    let detail = hovered["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{s2:.1} %")) && detail.contains("zone=eu-2"),
        "{detail}"
    );
    assert!(
        hovered["dimmed"].as_u64() > Some(0) && hovered["own"].as_u64() > Some(0),
        "{hovered}"
    );

    // 3. A new registration shows without a reload, within a second of being on the server.
    let id = driver
        .send(
            json!({"cmd": "expect", "service": "web", "instance": "web-3", "present": true,
                     "timeout_ms": 30_000, "shot": "03-inserted"}),
        )
        .await;
    driver.answer(id, true, SLOW).await;
    let mut w3 = register(&common, "web", "web-3", &["--addr", "10.1.0.3:8080"]).await;
    let seen = driver.answer(id, false, Duration::from_secs(40)).await;
    let insert_ms = seen["seen_ms"].as_f64().unwrap() - w3.at_ms;
    println!("registration on the server -> visible on the page: {insert_ms:.0} ms");
    assert!(
        insert_ms <= LIVE_INSERT.as_millis() as f64,
        "the new instance showed {insert_ms:.0} ms after its registration (bound {LIVE_INSERT:?})"
    );

    // 4. A deregistration disappears (Ctrl-C: the process deregisters before it exits).
    let id = driver
        .send(
            json!({"cmd": "expect", "service": "web", "instance": "web-3", "present": false,
                     "timeout_ms": 30_000, "shot": "04-removed"}),
        )
        .await;
    driver.answer(id, true, SLOW).await;
    let pid = w3.child.id().expect("running").to_string();
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    line_where(&mut w3.out, SLOW, "deregister web-3", |v| {
        v["state"] == "deregistered"
    })
    .await;
    let deregistered = now_ms();
    let gone = driver.answer(id, false, Duration::from_secs(40)).await;
    println!(
        "deregistration -> gone from the page: {:.0} ms",
        gone["seen_ms"].as_f64().unwrap() - deregistered
    );

    // 5. The key box shows the owners `registry find` names.
    for (service, key, n) in [("api", "user-42", 1), ("web", "order/2024-0007", 2)] {
        let shown = driver
            .run(
                json!({"cmd": "find", "service": service, "key": key, "n": n,
                       "timeout_ms": 30_000, "shot": format!("05-key-{service}")}),
                SLOW,
            )
            .await;
        let out = registry()
            .args(&common)
            .args(["find", service, key, "--count", &n.to_string(), "--json"])
            .output()
            .await
            .expect("run registry find");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let found: Value = serde_json::from_slice(&out.stdout).expect("find --json");
        let cli: Vec<&str> = found["owners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        assert_eq!(cli.len(), n);
        assert_eq!(
            shown["owners"],
            json!(cli),
            "the page's owners of {key} in {service} differ from registry find's"
        );
        println!("key {key} of {service}: page and registry find both say {cli:?}");
    }

    // 6. The stale banner shows while etcd is paused, and goes when it runs again.
    let container = etcd.container.id().to_owned();
    let id = driver
        .send(json!({"cmd": "banner", "visible": true, "timeout_ms": 60_000, "shot": "06-stale"}))
        .await;
    driver.answer(id, true, SLOW).await;
    let paused_at = now_ms();
    docker(&["pause", &container]).await;
    let paused = Paused(container.clone());
    let stale = driver.answer(id, false, Duration::from_secs(70)).await;
    println!(
        "etcd paused -> stale banner: {:.0} ms ({})",
        stale["seen_ms"].as_f64().unwrap() - paused_at,
        stale["text"].as_str().unwrap_or("")
    );
    assert!(
        stale["text"]
            .as_str()
            .is_some_and(|t| t.contains("since") && t.contains("web") && t.contains("api")),
        "{stale}"
    );
    let id = driver
        .send(json!({"cmd": "banner", "visible": false, "timeout_ms": 60_000, "shot": "07-fresh"}))
        .await;
    driver.answer(id, true, SLOW).await;
    let resumed_at = now_ms();
    docker(&["unpause", &container]).await;
    drop(paused);
    let fresh = driver.answer(id, false, Duration::from_secs(70)).await;
    println!(
        "etcd unpaused -> banner gone: {:.0} ms",
        fresh["seen_ms"].as_f64().unwrap() - resumed_at
    );

    driver
        .run(json!({"cmd": "close"}), Duration::from_secs(30))
        .await;
    let _ = driver.child.wait().await;
    let _ = serve.kill().await;
    println!("dashboard test done in {:?}", started.elapsed());
}

/// An in-process server on a memory backend, with a writer registering into the same store.
async fn in_process() -> (
    std::net::SocketAddr,
    registry::engine::Registry,
    registry::engine::Directory,
    tokio::sync::oneshot::Sender<()>,
) {
    use registry::engine::{Directory, Registry};
    use registry_cli::serve::{Options, Server};
    let backend = std::sync::Arc::new(registry::memory::MemoryBackend::new());
    let writer = Registry::new(backend.clone()).unwrap();
    let dir = Directory::new();
    let reader = Registry::builder(backend)
        .directory(dir.clone())
        .build()
        .unwrap();
    let discovery = reader.discover_all().await.unwrap();
    discovery.synced().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        Server::new(discovery, Options::default()).serve(listener, async {
            let _ = stopped.await;
        }),
    );
    (addr, writer, dir, stop)
}

/// One HTTP/1.1 request (`extra` header lines included): status, headers (names lower-case),
/// body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> (u16, std::collections::HashMap<String, String>, String) {
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    // Bodies here are small and not chunked by the server (static assets, JSON).
    (status, headers, body.to_owned())
}

/// The page, its script and style sheet are embedded and served with their types, a policy that
/// allows only this server, and an entity tag; the server's rules (GET only, no body) hold.
#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_headers() {
    let (addr, _writer, _dir, _stop) = in_process().await;
    let mut tags = Vec::new();
    for (path, kind, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<script src=\"/dashboard.js\"",
        ),
        (
            "/dashboard.js",
            "text/javascript; charset=utf-8",
            "new EventSource(",
        ),
        ("/dashboard.css", "text/css; charset=utf-8", ".banner"),
        ("/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let (status, h, body) = http(addr, "GET", path, "").await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(h["content-type"], kind, "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let csp = &h["content-security-policy"];
        assert!(
            csp.contains("default-src 'self'")
                && csp.contains("script-src 'self'")
                && csp.contains("connect-src 'self'")
                && !csp.contains("unsafe")
                && !csp.contains("http"),
            "{path}: {csp}"
        );
        assert!(body.contains(needle), "{path}");
        // Nothing is loaded from elsewhere.
        assert!(
            !body.contains("https://") && !body.contains("//cdn"),
            "{path}"
        );
        let etag = h["etag"].clone();
        let (status, _, body) =
            http(addr, "GET", path, &format!("If-None-Match: {etag}\r\n")).await;
        assert_eq!((status, body.as_str()), (304, ""), "{path}");
        tags.push(etag);
    }
    tags.dedup();
    assert_eq!(tags.len(), 4, "one tag per asset");
    let (status, _, body) = http(addr, "POST", "/", "").await;
    assert_eq!(status, 405, "{body}");
    let (status, _, _) = http(addr, "GET", "/", "Content-Length: 5\r\n").await;
    assert_eq!(status, 413);
    let (status, _, body) = http(addr, "GET", "/dashboard.jsx", "").await;
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""), "{body}");
}

/// `/v1/services/{service}/ring`: the routable instances' shares (weights count; offline ones
/// are not members), arcs that cover the circle and give each key to the instance `find` names,
/// and where a given key falls.
#[tokio::test]
async fn the_ring_route_shows_what_find_routes_by() {
    use registry::engine::{Instance, InstanceState, PROBES, hash_key, probes};
    let (addr, writer, dir, _stop) = in_process().await;
    let mut regs = Vec::new();
    for (id, weight) in [("a1", 100), ("a2", 100), ("a3", 300)] {
        let i = Instance::new("api", id).addr("10.0.0.1:80").weight(weight);
        regs.push(writer.register(i).await.unwrap());
    }
    let off = Instance::new("api", "a4")
        .addr("10.0.0.4:80")
        .state(InstanceState::Offline);
    regs.push(writer.register(off).await.unwrap());
    for _ in 0..1000 {
        if dir.all("api").len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _, body) = http(addr, "GET", "/v1/services/api/ring?key=user-42", "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let members = v["members"].as_array().unwrap();
    let ids: Vec<&str> = members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a1", "a2", "a3"], "offline instances own nothing");
    assert_eq!(v["points"], 2 + 2 + 6, "2 points per member at weight 100");
    let shares: Vec<f64> = members
        .iter()
        .map(|m| m["share"].as_f64().unwrap())
        .collect();
    assert!(
        (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{shares:?}"
    );
    assert!(
        (shares[2] - 0.6).abs() < 0.1,
        "weight 300 of 500: {shares:?}"
    );
    assert_eq!(v["arcs_exact"], true);
    let arcs: Vec<(f64, f64, usize)> = v["arcs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["from"].as_f64().unwrap(),
                a["to"].as_f64().unwrap(),
                a["member"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!((arcs[0].0, arcs.last().unwrap().1), (0.0, 1.0));
    assert!(arcs.windows(2).all(|w| w[0].1 == w[1].0), "contiguous");
    let total: f64 = arcs.iter().map(|a| a.1 - a.0).sum();
    assert!(
        (total - 1.0).abs() < 1e-9,
        "arcs cover the circle once: {total}"
    );
    // A stretch belongs to the point at or after it: where a probe landing there goes. A key's
    // owner is the owner of one of its probes' stretches.
    for k in 0..3000 {
        let key = format!("user-{k}");
        let found = dir.find("api", &key).unwrap();
        let reached = probes(key.as_bytes()).iter().any(|&p| {
            let at = p as f64 / 2f64.powi(64);
            arcs.iter()
                .filter(|a| a.0 <= at && at <= a.1)
                .any(|a| ids[a.2] == found.id)
        });
        assert!(reached, "{key}: no probe lands on {}'s stretches", found.id);
    }
    let owner = dir.find("api", "user-42").unwrap();
    assert_eq!(v["key"]["owner"], owner.id.as_str());
    assert_eq!(v["key"]["key"], "user-42");
    let at = v["key"]["position"].as_f64().unwrap();
    assert!((at - hash_key(b"user-42") as f64 / 2f64.powi(64)).abs() < 1e-12);
    let at: Vec<f64> = v["key"]["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(at.len(), PROBES);
    assert_eq!(at[0], v["key"]["position"].as_f64().unwrap());
    assert_eq!(v["stale"], false);
    let (status, _, _) = http(addr, "GET", "/v1/services/nosuch/ring", "").await;
    assert_eq!(status, 404);
    let (status, _, _) = http(addr, "GET", "/v1/services/bad%20name/ring", "").await;
    assert_eq!(status, 400);
}
