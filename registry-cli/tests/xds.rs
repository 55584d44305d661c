//! `registry serve --xds` with real gRPC clients installed from package registries (no
//! hand-written xDS client): Python's grpcio (whose C-core resolves `xds:///echo`) and Node's
//! @grpc/grpc-js with @grpc/grpc-js-xds, each given a bootstrap file naming our server, call real
//! gRPC servers registered with `registry register` over a real etcd. Measured: calls spread by weight, a new instance gets calls within 1 s, a
//! deregistered one none later than 1 s after its deregistration returned, an offline one none.
//!
//! The tonic channels of `registry::tonic` are tried against the same real servers, each a process
//! of its own, stopped and killed (`tonic_channels_route_around_a_hung_and_a_crashed_server`).
//!
//! Needs scripts/grpc-clients.sh (REGISTRY_GRPC_PYTHON, REGISTRY_GRPC_NODE_DIR) and the test
//! bed's etcd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conformance_tests::pki::TempDir;
use conformance_tests::testbed::{self, fresh_namespace, unavailable};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

/// The acceptance bound for a change to reach the calls.
const LIVE: Duration = Duration::from_secs(1);

fn registry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry"));
    c.env_remove("REGISTRY_BACKEND")
        .env_remove("REGISTRY_NAMESPACE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Where scripts/grpc-clients.sh installs the clients.
fn clients_dir() -> PathBuf {
    std::env::var_os("REGISTRY_TESTBED_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/service-registry/testbed")
        })
        .join("grpc-clients")
}

/// The venv's python with grpcio (scripts/grpc-clients.sh), if installed.
fn python() -> Result<PathBuf, String> {
    let py = std::env::var_os("REGISTRY_GRPC_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| clients_dir().join("venv/bin/python"));
    let ok = std::process::Command::new(&py)
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(py)
    } else {
        Err(format!(
            "{} cannot import grpc; scripts/grpc-clients.sh installs it",
            py.display()
        ))
    }
}

/// @grpc/grpc-js-xds's node_modules (scripts/grpc-clients.sh), if installed.
fn node_modules() -> Result<PathBuf, String> {
    let dir = std::env::var_os("REGISTRY_GRPC_NODE_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| clients_dir().join("node_modules"));
    if dir.join("@grpc/grpc-js-xds/package.json").exists() {
        Ok(dir)
    } else {
        Err(format!(
            "no @grpc/grpc-js-xds in {}; scripts/grpc-clients.sh installs it",
            dir.display()
        ))
    }
}

/// The client under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lang {
    /// Python's grpcio (client.py).
    Python,
    /// Node's @grpc/grpc-js with @grpc/grpc-js-xds (client.js).
    Node,
}

/// The client's command for `service` (`extra` after it), or why it cannot run here.
fn client_command(lang: Lang, service: &str, extra: &[&str]) -> Result<Command, String> {
    let mut c = match lang {
        Lang::Python => {
            let mut c = Command::new(python()?);
            c.arg(script("client.py"));
            c
        }
        Lang::Node => {
            let modules = node_modules()?;
            let mut c = Command::new("node");
            c.arg(script("client.js")).env("NODE_PATH", modules);
            c
        }
    };
    c.arg(service).args(extra).kill_on_drop(true);
    Ok(c)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/xds")
        .join(name)
}

/// A child's stdout lines, as a channel (so that waits can time out).
fn lines(stdout: ChildStdout) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next_line(rx: &mut mpsc::UnboundedReceiver<String>, what: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no line within 30 s"))
        .unwrap_or_else(|| panic!("{what}: the process ended its output"))
}

/// One report of the client: when, and the calls each server answered so far.
#[derive(Debug, Clone)]
struct Report {
    t: i64,
    counts: BTreeMap<String, u64>,
    errors: u64,
    last_error: String,
}

impl Report {
    fn count(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }
}

/// The client's reports, as they come.
struct Client {
    _child: Child,
    out: mpsc::UnboundedReceiver<String>,
    last: Option<Report>,
}

impl Client {
    async fn next(&mut self) -> Report {
        let line = next_line(&mut self.out, "the gRPC client").await;
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
        let r = Report {
            t: v["t"].as_i64().unwrap(),
            counts: v["counts"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                .collect(),
            errors: v["errors"].as_u64().unwrap(),
            last_error: v["last_error"].as_str().unwrap_or("").to_owned(),
        };
        self.last = Some(r.clone());
        r
    }

    /// Reads reports until `pred` holds, within `limit`.
    async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Report) -> bool,
    ) -> Report {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let r = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| panic!("{what}: not within {limit:?}; last {:?}", self.last));
            if pred(&r) {
                return r;
            }
        }
    }
}

/// A `registry register` process, once it says it is registered.
async fn register(common: &[String], id: &str, port: u16, extra: &[&str]) -> Child {
    let mut child = registry()
        .args(common)
        .args(["register", "echo", "--id", id, "--json"])
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(if extra.contains(&"--ttl") {
            &[][..]
        } else {
            &["--ttl", "30s", "--heartbeat", "2s"][..]
        })
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn registry register");
    let mut out = lines(child.stdout.take().unwrap());
    loop {
        let line = next_line(&mut out, &format!("register {id}")).await;
        if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["state"] == "registered") {
            break;
        }
    }
    // Keep reading its output so that it never blocks on a full pipe.
    tokio::spawn(async move { while out.recv().await.is_some() {} });
    child
}

async fn metrics(addr: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    answer
}

fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{metrics}"))
}

/// Real gRPC servers (Python's), one per name, each answering with its name; their ports.
async fn grpc_servers(py: &Path, names: &[&str]) -> (Child, BTreeMap<String, u16>) {
    let mut servers = Command::new(py)
        .arg(script("servers.py"))
        .args(names)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the Python gRPC servers");
    let mut out = lines(servers.stdout.take().unwrap());
    let mut port = BTreeMap::new();
    for _ in names {
        let v: Value = serde_json::from_str(&next_line(&mut out, "servers.py").await).unwrap();
        port.insert(
            v["name"].as_str().unwrap().to_owned(),
            v["port"].as_u64().unwrap() as u16,
        );
    }
    (servers, port)
}

/// `registry serve --xds 127.0.0.1:0` with `extra` arguments: the process, its HTTP address and
/// its xDS address.
async fn serve_xds(common: &[String], extra: &[&str]) -> (Child, String, String) {
    let mut serve = registry()
        .args(common)
        .args(["serve", "--listen", "127.0.0.1:0", "--xds", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn registry serve");
    let mut out = lines(serve.stdout.take().unwrap());
    let http = next_line(&mut out, "serve").await;
    let http = http
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("http://")
                .or_else(|| w.strip_prefix("https://"))
        })
        .unwrap_or_else(|| panic!("no address in {http:?}"))
        .trim_end_matches('/')
        .to_owned();
    let xds_line = next_line(&mut out, "serve's xDS line").await;
    let xds = xds_line
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .unwrap_or_else(|| panic!("no xDS address in {xds_line:?}"))
        .to_owned();
    (serve, http, xds)
}

/// A Rust process's view of service `echo` in namespace `ns` over the backend at `url`: its own
/// registry and directory, once the directory lists `n` instances.
async fn rust_view(
    url: &str,
    ns: &str,
    n: usize,
    directory: registry::engine::Directory,
) -> (registry::engine::Registry, registry::engine::Discovery) {
    let backend = registry::connect(url)
        .await
        .expect("connect to the backend");
    let reader = registry::engine::Registry::builder(backend)
        .namespace(ns)
        .directory(directory)
        .build()
        .expect("a registry");
    let discovery = reader.discover("echo").await.expect("discover echo");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while discovery.directory().get("echo").len() < n {
        assert!(tokio::time::Instant::now() < deadline, "echo not listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (reader, discovery)
}

/// A bootstrap file naming the xDS server at `server_uri`, with `extra` fields merged into the
/// server's entry (channel credentials, call credentials).
fn bootstrap(dir: &TempDir, node: &str, server_uri: &str, extra: Value) -> PathBuf {
    let mut server = serde_json::json!({
        "server_uri": server_uri,
        "channel_creds": [{"type": "insecure"}],
        "server_features": ["xds_v3"]
    });
    if let (Some(s), Value::Object(extra)) = (server.as_object_mut(), extra) {
        s.extend(extra);
    }
    dir.write(
        &format!("bootstrap-{node}.json"),
        &serde_json::json!({"xds_servers": [server], "node": {"id": node, "locality": {}}})
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_follows_the_directory_over_xds() {
    follows(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_xds_follows_the_directory_over_xds() {
    follows(Lang::Node).await;
}

/// What every scenario here starts from: Python with grpcio (the gRPC servers are Python's), the
/// shared etcd, a fresh namespace, and the `registry` arguments that name both.
struct Bed {
    py: PathBuf,
    url: String,
    ns: String,
    common: Vec<String>,
}

/// The [`Bed`] for namespaces named `prefix-...`; `None` when Python's grpcio or etcd is missing,
/// after saying why (a failure under `REGISTRY_TEST_REQUIRED=1`).
fn bed(prefix: &str) -> Option<Bed> {
    let py = match python() {
        Ok(p) => p,
        Err(why) => return unavailable("Python's grpcio", &why),
    };
    let etcd = testbed::shared_etcd()?;
    let ns = fresh_namespace(prefix);
    let url = format!("etcd://{etcd}");
    let common = vec![
        "--backend".into(),
        url.clone(),
        "--namespace".into(),
        ns.clone(),
    ];
    Some(Bed {
        py,
        url,
        ns,
        common,
    })
}

/// The scenario, with `lang`'s client (the servers are Python's in both).
async fn follows(lang: Lang) {
    if let Err(why) = client_command(lang, "echo", &[]) {
        return unavailable::<()>(&format!("the {lang:?} gRPC client"), &why).unwrap_or(());
    }
    let Some(Bed { py, common, .. }) = bed("xds") else {
        return;
    };

    // Four real gRPC servers, each answering with its name.
    let (mut servers, port) = grpc_servers(&py, &["a", "b", "c", "d"]).await;
    // a and b online, weights 1:3; d offline from the start.
    let mut a = register(&common, "a", port["a"], &["--weight", "100"]).await;
    let _b = register(&common, "b", port["b"], &["--weight", "300"]).await;
    let _d = register(&common, "d", port["d"], &["--offline"]).await;

    let (mut serve, http, xds) = serve_xds(&common, &[]).await;
    let dir = TempDir::new("xds-bootstrap");
    let bootstrap = bootstrap(&dir, &format!("xds-test-{lang:?}"), &xds, Value::Null);
    let mut child = client_command(lang, "echo", &[])
        .expect("checked above")
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the Python gRPC client");
    let mut client = Client {
        out: lines(child.stdout.take().unwrap()),
        _child: child,
        last: None,
    };

    // Calls reach a and b, by weight; never d (offline).
    let start = client
        .until(Duration::from_secs(60), "calls to a and b", |r| {
            r.count("a") > 0 && r.count("b") > 0
        })
        .await;
    let end = client
        // 8,000 rather than the 4,000 of the acceptance: a client that picks localities at
        // random by weight (grpc-js) has a spread of ±0.08 on the ratio then, ±0.11 at 4,000.
        .until(Duration::from_secs(60), "8,000 calls", |r| {
            r.count("a") + r.count("b") >= start.count("a") + start.count("b") + 8000
        })
        .await;
    let (ca, cb) = (
        end.count("a") - start.count("a"),
        end.count("b") - start.count("b"),
    );
    let ratio = cb as f64 / ca as f64;
    eprintln!("{lang:?}: weights 100:300 -> calls {ca}:{cb} (ratio {ratio:.3})");
    assert!(
        (2.7..=3.3).contains(&ratio),
        "weights 1:3 give calls {ca}:{cb} (ratio {ratio:.3}), not 1:3 within 10%"
    );
    assert_eq!(end.count("d"), 0, "an offline instance got calls: {end:?}");
    assert_eq!(
        end.count("c"),
        0,
        "an unregistered server got calls: {end:?}"
    );

    // A new instance gets calls within 1 s of its registration.
    let before = now_ms();
    let _c = register(&common, "c", port["c"], &["--weight", "100"]).await;
    let registered = now_ms();
    let first = client
        .until(Duration::from_secs(10), "calls to c", |r| r.count("c") > 0)
        .await;
    let took = first.t - registered;
    eprintln!(
        "{lang:?}: c registered (register took {} ms), first call to it {took} ms later",
        registered - before
    );
    assert!(
        took <= LIVE.as_millis() as i64,
        "a new instance got its first call {took} ms after its registration"
    );

    // A deregistered instance gets no call later than 1 s after its deregistration returned
    // (`registry register` deregisters on SIGINT, then exits).
    let pid = a.id().expect("a's pid");
    // The shell's kill builtin: a minimal Debian has no /bin/kill (procps).
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .expect("kill -INT");
    assert!(killed.success());
    tokio::time::timeout(Duration::from_secs(15), a.wait())
        .await
        .expect("register a exits within 15 s of SIGINT")
        .unwrap();
    let gone = now_ms();
    let mut last_a = client.last.clone().unwrap();
    let mut last_change = last_a.t;
    let settled = loop {
        let r = client.next().await;
        if r.count("a") != last_a.count("a") {
            last_change = r.t;
        }
        last_a = r.clone();
        if r.t - gone > 3_000 {
            break r;
        }
    };
    let after = last_change - gone;
    eprintln!(
        "{lang:?}: a deregistered: its last call {after} ms after the deregistration returned"
    );
    assert!(
        after <= LIVE.as_millis() as i64,
        "a deregistered instance still got calls {after} ms after its deregistration"
    );
    assert!(
        settled.errors == end.errors,
        "{} calls failed meanwhile, the last with {}",
        settled.errors - end.errors,
        settled.last_error
    );

    // The xDS server's counters in /metrics: one stream, answers accepted, none rejected.
    let m = metrics(&http).await;
    assert_eq!(sample(&m, "registry_xds_streams "), 1.0, "{m}");
    assert!(
        sample(&m, "registry_xds_acks_total{type=\"eds\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "registry_xds_nacks_total{type=\"eds\"}"),
        0.0,
        "{m}"
    );
    serve.kill().await.ok();
    servers.kill().await.ok();
}

/// The ring: with `--xds-balancing ring-hash`, each client's owner of 10,000 keys (its ring hash
/// on the `x-key` header) against `Directory::find` in a Rust process whose directory (over the
/// same etcd) routes on gRPC's ring (`RingKind::GrpcRingHash`), and against a directory on the
/// default multi-probe ring, which is not gRPC's (its agreement is printed, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_owners_agree_with_directory_find() {
    if let Err(why) = client_command(Lang::Node, "echo", &[]) {
        return unavailable::<()>("the Node gRPC client", &why).unwrap_or(());
    }
    let Some(Bed {
        py,
        url,
        ns,
        common,
    }) = bed("xds-ring")
    else {
        return;
    };
    let (mut servers, port) = grpc_servers(&py, &["a", "b", "c"]).await;
    let _a = register(&common, "a", port["a"], &["--weight", "100"]).await;
    let _b = register(&common, "b", port["b"], &["--weight", "200"]).await;
    let _c = register(&common, "c", port["c"], &["--weight", "100"]).await;
    let (mut serve, _, xds) = serve_xds(&common, &["--xds-balancing", "ring-hash"]).await;
    let dir = TempDir::new("xds-ring-bootstrap");
    let bootstrap = bootstrap(&dir, "xds-ring-test", &xds, Value::Null);
    // Two Rust processes' views: their own directories of the service, over the same etcd, one
    // on gRPC's ring, one on the default ring.
    let grpc_dir = registry::engine::Directory::builder()
        .ring_kind(registry::engine::RingKind::GrpcRingHash)
        .build();
    let (_grpc_reader, grpc_view) = rust_view(&url, &ns, 3, grpc_dir).await;
    let (_reader, default_view) = rust_view(&url, &ns, 3, Default::default()).await;
    let keys: Vec<String> = (0..10_000).map(|k| format!("user-{k}")).collect();

    // Both clients at once, each asking for every key's owner.
    let mut runs = Vec::new();
    for lang in [Lang::Python, Lang::Node] {
        let mut child = client_command(lang, "echo", &["--keys"])
            .expect("checked above")
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a gRPC client");
        let mut stdin = child.stdin.take().unwrap();
        let input = keys.join("\n") + "\n";
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        runs.push((lang, child));
    }
    for (lang, mut child) in runs {
        let mut out = lines(child.stdout.take().unwrap());
        let (mut same_grpc, mut same_dir, mut seen) = (0u32, 0u32, 0u32);
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..keys.len() {
            let line = tokio::time::timeout(Duration::from_secs(60), out.recv())
                .await
                .unwrap_or_else(|_| panic!("{lang:?}: no owner within 60 s"))
                .unwrap_or_else(|| panic!("{lang:?}: the client ended after {seen} keys"));
            let v: Value = serde_json::from_str(&line).unwrap();
            let (key, owner) = (v["key"].as_str().unwrap(), v["owner"].as_str().unwrap());
            seen += 1;
            *counts.entry(owner.to_owned()).or_default() += 1;
            let owner_in = |view: &registry::engine::Discovery| {
                view.directory()
                    .find("echo", key)
                    .is_some_and(|i| i.id == owner)
            };
            same_grpc += u32::from(owner_in(&grpc_view));
            same_dir += u32::from(owner_in(&default_view));
        }
        eprintln!(
            "{lang:?}: {seen} keys, owners {counts:?}; same owner as Directory::find on gRPC's \
             ring {same_grpc} ({:.2} %), on the default ring {same_dir} ({:.2} %)",
            same_grpc as f64 * 100.0 / seen as f64,
            same_dir as f64 * 100.0 / seen as f64
        );
        assert_eq!(
            same_grpc, seen,
            "{lang:?}: Directory::find on gRPC's ring must pick the client's owner for every key"
        );
    }
    serve.kill().await.ok();
    servers.kill().await.ok();
}

/// A JWT-shaped token expiring in 2100 (gRPC's JWT call credentials read its `exp`; our server
/// compares the whole token, as an opaque secret).
fn jwt_shaped(subject: &str) -> String {
    use base64::Engine;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"{subject}","exp":4102444800}}"#)),
        b64("not-checked")
    )
}

/// TLS and a token on the xDS port with grpcio's own bootstrap: TLS channel credentials (gRFC
/// A65) and the token, from a file, as JWT call credentials (gRFC A97; experimental in gRPC,
/// `GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true`). With the right token the client finds the
/// service's instance; with a wrong one its streams are refused and it finds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_over_tls_with_a_token() {
    let Some(Bed { py, common, .. }) = bed("xds-tls") else {
        return;
    };
    let (mut servers, port) = grpc_servers(&py, &["a"]).await;
    let _a = register(&common, "a", port["a"], &[]).await;
    let dir = TempDir::new("xds-tls");
    let ca = conformance_tests::pki::TestCa::new("xds test CA");
    let issued = ca.server_cert(&["localhost", "127.0.0.1"]);
    let cert = dir.write("cert.pem", &issued.cert);
    let key = dir.write("key.pem", &issued.key);
    let ca_file = dir.write("ca.pem", &ca.pem);
    let token = dir.write("token.jwt", &jwt_shaped("right"));
    let wrong = dir.write("wrong.jwt", &jwt_shaped("wrong"));
    let (mut serve, _, xds) = serve_xds(
        &common,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ],
    )
    .await;
    let xds_port = xds.rsplit_once(':').unwrap().1;
    let server_uri = format!("localhost:{xds_port}");
    for (node, token_file, allowed) in [("right", &token, true), ("wrong", &wrong, false)] {
        let file = bootstrap(
            &dir,
            node,
            &server_uri,
            serde_json::json!({
                "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": ca_file}}],
                "call_creds": [{"type": "jwt_token_file", "config": {"jwt_token_file": token_file}}]
            }),
        );
        let mut child = client_command(Lang::Python, "echo", &[])
            .expect("checked above")
            .env("GRPC_XDS_BOOTSTRAP", &file)
            .env("GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS", "true")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the Python gRPC client");
        let mut client = Client {
            out: lines(child.stdout.take().unwrap()),
            _child: child,
            last: None,
        };
        if allowed {
            let r = client
                .until(
                    Duration::from_secs(30),
                    "calls over TLS with the token",
                    |r| r.count("a") > 0,
                )
                .await;
            eprintln!("TLS and the token: {} calls answered", r.count("a"));
        } else {
            // Watched for 5 s from the first failed call.
            let first_failure = client
                .until(Duration::from_secs(30), "a failed call", |r| r.errors > 0)
                .await
                .t;
            let end = client
                .until(Duration::from_secs(30), "5 s of a wrong token", |r| {
                    r.t - first_failure >= 5_000
                })
                .await;
            assert_eq!(
                end.count("a"),
                0,
                "a wrong token found the service: {end:?}"
            );
            eprintln!(
                "a wrong token: {} calls failed in 5 s, none answered ({})",
                end.errors, end.last_error
            );
        }
    }
    serve.kill().await.ok();
    servers.kill().await.ok();
}

/// gRPC messages as raw bytes (the Python servers answer `/echo.Echo/Who` with their name, no
/// protobuf): a codec for tonic's client.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; bytes::Buf::remaining(src)];
        bytes::Buf::copy_to_slice(src, &mut v);
        Ok(Some(v))
    }
}

/// One `/echo.Echo/Who` call through a tonic transport, keyed by `key`: the server's name.
async fn who<T>(transport: T, key: &str) -> Result<String, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError>,
{
    let mut grpc = tonic::client::Grpc::new(transport);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.into().to_string()))?;
    let mut request = tonic::Request::new(Vec::new());
    registry::tonic::set_key(&mut request, key)?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/echo.Echo/Who");
    let reply = grpc.unary(request, path, Raw).await?;
    Ok(String::from_utf8_lossy(&reply.into_inner()).into_owned())
}

/// Sends `signal` (STOP, CONT, KILL) to `pid` with the shell's kill builtin (a minimal Debian
/// has no /bin/kill).
fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{signal} {pid}");
}

/// The tonic channels (registry::tonic, the Rust side) against real gRPC servers, each a process
/// of its own, registered with `registry register` over etcd, with the default settings:
/// - a SIGSTOPped owner (it accepts connections and never answers): a storm of calls for its key
///   reaches the next ring member within twice the default per-attempt timeout;
/// - a crashed instance (its server and its `registry register` SIGKILLed: connections refused
///   until its lease ends): a storm through the balanced channel loses at most 0.1 % of its calls
///   before the directory drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_channels_route_around_a_hung_and_a_crashed_server() {
    let Some(Bed {
        py,
        url,
        ns,
        common,
    }) = bed("tonic-outliers")
    else {
        return;
    };
    let mut servers = BTreeMap::new();
    let mut regs = BTreeMap::new();
    for name in ["a", "b", "c"] {
        let (child, port) = grpc_servers(&py, &[name]).await;
        regs.insert(
            name,
            register(
                &common,
                name,
                port[name],
                &["--ttl", "4s", "--heartbeat", "1s"],
            )
            .await,
        );
        servers.insert(name, child);
    }
    let (_reader, discovery) = rust_view(&url, &ns, 3, Default::default()).await;
    let dir = discovery.directory();
    let keyed =
        registry::tonic::Channels::new(dir, "echo").keyed_by_header(registry::tonic::KEY_HEADER);
    let balanced = registry::tonic::Channels::new(dir, "echo").balanced();

    // A hung owner.
    let key = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| dir.find("echo", k).unwrap().id == "a")
        .unwrap();
    let next = dir.find_n(2, "echo", &key)[1].id.clone();
    assert_eq!(who(keyed.clone(), &key).await.unwrap(), "a");
    signal(servers["a"].id().unwrap(), "STOP");
    let stopped = Instant::now();
    let mut storm = Vec::new();
    for _ in 0..16 {
        let (keyed, key) = (keyed.clone(), key.clone());
        storm.push(tokio::spawn(async move {
            loop {
                if let Ok(server) = who(keyed.clone(), &key).await {
                    return (server, Instant::now());
                }
            }
        }));
    }
    let mut latest = Duration::ZERO;
    for caller in storm {
        let (server, at) = caller.await.unwrap();
        assert_eq!(server, next);
        latest = latest.max(at - stopped);
    }
    let bound = registry::tonic::DEFAULT_ATTEMPT_TIMEOUT * 2;
    eprintln!(
        "a SIGSTOPped: 16 callers of its key all reached {next} within {latest:.2?} (bound {bound:?})"
    );
    assert!(latest <= bound, "{latest:?}");
    assert!(keyed.is_ejected("a"));
    signal(servers["a"].id().unwrap(), "CONT");

    // A crashed instance: its server and its registration process killed; the lease ends after
    // its TTL (4 s) and the directory drops it.
    for _ in 0..30 {
        who(balanced.clone(), "warm").await.unwrap();
    }
    signal(servers["b"].id().unwrap(), "KILL");
    signal(regs["b"].id().unwrap(), "KILL");
    let crashed = Instant::now();
    let dir2 = dir.clone();
    let mut storm = Vec::new();
    for c in 0..8 {
        let (balanced, dir) = (balanced.clone(), dir2.clone());
        storm.push(tokio::spawn(async move {
            let (mut failed, mut ok, mut i) = (0u64, 0u64, 0u64);
            while dir.get("echo").iter().any(|i| i.id == "b") {
                i += 1;
                match who(balanced.clone(), &format!("k{c}-{i}")).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                assert!(crashed.elapsed() < Duration::from_secs(30), "b never left");
            }
            (failed, ok)
        }));
    }
    let (mut failed, mut ok) = (0, 0);
    for caller in storm {
        let (f, o) = caller.await.unwrap();
        failed += f;
        ok += o;
    }
    let rate = failed as f64 / (failed + ok) as f64;
    eprintln!(
        "b crashed: {failed} of {} calls failed in the {:.1?} until its lease ended ({:.3} %)",
        failed + ok,
        crashed.elapsed(),
        rate * 100.0
    );
    assert!(rate <= 0.001, "{failed} of {} calls failed", failed + ok);
    for (_, mut s) in servers {
        s.kill().await.ok();
    }
}
