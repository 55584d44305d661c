//! Rust workers and client against the real ZeroMQ Service Suite: the NodeJS broker 1.0.1, the
//! JavaScript client 1.0.3 and a JavaScript worker (service 1.0.1), installed by
//! `scripts/zss-node.sh` (found in its default place, or through ZSS_NODE_MODULES). Without Node these tests fail
//! under REGISTRY_TEST_REQUIRED=1 and skip otherwise, like the server tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zss::{Client, Reply, ServiceConfig, ServiceError, Value};

#[path = "../examples/ping.rs"]
mod ping;

/// The JavaScript side of the tests. `cargo test` sets CARGO_MANIFEST_DIR when it runs the test,
/// and that is preferred over the compile-time value: a shared target directory may hold a test
/// binary built from another checkout of the same sources, whose path no longer exists.
fn js_dir() -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let dir = root.join("js");
    assert!(
        dir.join("broker.js").is_file(),
        "the JavaScript test programs are missing from {}",
        dir.display()
    );
    dir
}

/// Node's modules, or `None` (after saying why) when the tests must skip.
fn node_modules() -> Option<String> {
    let required = matches!(std::env::var("REGISTRY_TEST_REQUIRED").as_deref(), Ok("1"));
    // ZSS_NODE_MODULES, else where scripts/zss-node.sh installs them by default.
    let default_dir = || {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        let dir = std::env::var_os("REGISTRY_TESTBED_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache.join("service-registry/testbed"));
        Some(
            dir.join("zss-node/node_modules")
                .to_string_lossy()
                .into_owned(),
        )
    };
    let found = std::env::var("ZSS_NODE_MODULES")
        .ok()
        .filter(|m| !m.is_empty())
        .or_else(default_dir);
    match found {
        Some(m) if PathBuf::from(&m).join("zmq-service-suite-broker").exists() => Some(m),
        _ => {
            let why = "the real ZSS broker and clients are not installed (run scripts/zss-node.sh)";
            assert!(
                !required,
                "{why}; REGISTRY_TEST_REQUIRED=1 makes this a failure"
            );
            eprintln!("skipping: {why}");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Broker {
    child: Child,
    frontend: String,
    backend: String,
}

impl Broker {
    /// Starts the broker on the given addresses; the error carries what it printed when it exits
    /// before it is ready (for example an address already in use).
    async fn try_start(modules: &str, frontend: &str, backend: &str) -> Result<Broker, String> {
        let mut child = Command::new("node")
            .arg(js_dir().join("broker.js"))
            .args([frontend, backend])
            .env("NODE_PATH", modules)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the broker");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("waiting for messages") {
                    return true;
                }
            }
            false
        })
        .await
        .expect("broker ready within 20 s");
        if !ready {
            let mut said = Vec::new();
            while let Ok(Ok(Some(l))) =
                tokio::time::timeout(Duration::from_secs(2), errors.next_line()).await
            {
                said.push(l);
            }
            return Err(format!(
                "broker on {frontend} / {backend} exited before it was ready: {}",
                said.join("\n")
            ));
        }
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tokio::spawn(async move { while let Ok(Some(_)) = errors.next_line().await {} });
        Ok(Broker {
            child,
            frontend: frontend.into(),
            backend: backend.into(),
        })
    }

    async fn start(modules: &str, frontend: &str, backend: &str) -> Broker {
        Broker::try_start(modules, frontend, backend)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A broker on two free ports. A port found free can be taken (by another test's outgoing
    /// connection) before the broker binds it, so a broker that cannot bind is retried elsewhere.
    async fn new(modules: &str) -> Broker {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let (fe, be) = (free_port(), free_port());
            match Broker::try_start(
                modules,
                &format!("tcp://127.0.0.1:{fe}"),
                &format!("tcp://127.0.0.1:{be}"),
            )
            .await
            {
                Ok(b) => return b,
                Err(e) => {
                    eprintln!("{e}; trying other ports");
                    failures.push(e);
                }
            }
        }
        panic!("no broker started in 5 attempts: {failures:#?}");
    }
}

/// One call through the real JavaScript client; its output line as JSON.
async fn js_call(modules: &str, frontend: &str, sid: &str, verb: &str, payload: Json) -> Json {
    let out = Command::new("node")
        .arg(js_dir().join("client.js"))
        .args([frontend, sid, verb, &payload.to_string(), "3000"])
        .env("NODE_PATH", modules)
        .output()
        .await
        .expect("node runs the client");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("client said {text:?}: {e}"))
}

/// Calls until one succeeds (workers announce themselves asynchronously).
async fn js_call_ok(modules: &str, frontend: &str, sid: &str, verb: &str, payload: Json) -> Json {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = js_call(modules, frontend, sid, verb, payload.clone()).await;
        if r.get("status").is_some() || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn service(sid: &str, broker: &Broker) -> ServiceConfig {
    ServiceConfig::new(sid)
        .broker(broker.backend.clone())
        .heartbeat(Duration::from_millis(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_worker_answers_the_javascript_client() {
    let Some(m) = node_modules() else { return };
    let broker = Broker::new(&m).await;
    let worker = service("rusty", &broker)
        .verb("list", |_p, _m| async {
            Ok(Reply::ok(Value::from("pong")))
        })
        .verb("echo", |p, msg| async move {
            Ok(Reply::ok(Value::map([
                ("echo", p),
                ("client", Value::from(msg.client().unwrap_or_default())),
                (
                    "request-id",
                    msg.header("x-request-id").cloned().unwrap_or(Value::Nil),
                ),
            ])))
        })
        .verb("empty", |_p, _m| async { Ok(Reply::empty()) })
        .verb("accepted", |_p, _m| async {
            Ok(Reply::with_status(202, Value::from("later")))
        })
        .verb("forbidden", |_p, _m| async {
            Err(ServiceError::with_messages(
                403,
                "Not yours",
                "caller lacks the role",
            ))
        })
        .verb("fail", |_p, _m| async { Err(ServiceError::default()) })
        .verb("boom", |_p, _m| async { panic!("handler bug") })
        .verb("bad", |_p, _m| async {
            Ok(Reply::with_status(302, Value::Nil))
        })
        .run();
    let fe = broker.frontend.clone();
    let r = js_call_ok(&m, &fe, "rusty", "list", Json::Null).await;
    assert_eq!(
        (r["status"].clone(), r["payload"].clone()),
        (json!(200), json!("pong")),
        "{r}"
    );
    assert!(
        r["headers"]["response-time"].is_number(),
        "response-time header: {r}"
    );
    let long = "x".repeat(40);
    let r = js_call(
        &m,
        &fe,
        "RUSTY",
        "ECHO",
        json!({"s": long, "big": 4_000_000_000u64, "neg": -70000, "f": 1.5}),
    )
    .await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(
        r["payload"]["echo"],
        json!({"s": long, "big": 4_000_000_000u64, "neg": -70000, "f": 1.5}),
        "{r}"
    );
    assert_eq!(
        r["payload"]["client"], "client",
        "the JS client's identity prefix"
    );
    assert_eq!(r["payload"]["request-id"], "js-test");
    let r = js_call(&m, &fe, "rusty", "empty", Json::Null).await;
    assert_eq!(r["status"], 204, "{r}");
    let r = js_call(&m, &fe, "rusty", "accepted", Json::Null).await;
    assert_eq!(
        (r["status"].clone(), r["payload"].clone()),
        (json!(202), json!("later")),
        "{r}"
    );
    let r = js_call(&m, &fe, "rusty", "forbidden", Json::Null).await;
    assert_eq!(
        r["error"],
        json!({"code": 403, "userMessage": "Not yours", "developerMessage": "caller lacks the role"}),
        "{r}"
    );
    for verb in ["fail", "boom", "bad"] {
        let r = js_call(&m, &fe, "rusty", verb, Json::Null).await;
        assert_eq!(r["error"]["code"], 500, "{verb}: {r}");
        assert!(r["error"]["developerMessage"].is_string(), "{verb}: {r}");
    }
    let r = js_call(&m, &fe, "rusty", "nope", Json::Null).await;
    assert_eq!(r["error"]["code"], 404, "{r}");
    // Still serving after the panic.
    let r = js_call(&m, &fe, "rusty", "list", Json::Null).await;
    assert_eq!(r["status"], 200, "{r}");
    assert!(worker.stop().await, "the broker acknowledged DOWN");
    let r = js_call(&m, &fe, "rusty", "list", Json::Null).await;
    assert_eq!(r["error"]["code"], 404, "no worker after DOWN: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_rust_workers_share_the_load_round_robin() {
    let Some(m) = node_modules() else { return };
    let broker = Broker::new(&m).await;
    let counts: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let workers: Vec<_> = counts
        .iter()
        .map(|c| {
            let c = c.clone();
            service("shared", &broker)
                .verb("work", move |_p, _m| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Ok(Reply::ok(Value::from("done"))) }
                })
                .run()
        })
        .collect();
    js_call_ok(&m, &broker.frontend, "shared", "work", Json::Null).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // every worker has announced itself
    for c in &counts {
        c.store(0, Ordering::SeqCst);
    }
    for _ in 0..9 {
        let r = js_call(&m, &broker.frontend, "shared", "work", Json::Null).await;
        assert_eq!(r["status"], 200, "{r}");
    }
    let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(got, [3, 3, 3], "round robin over three workers");
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_dropped_by_the_broker_within_its_ttl() {
    let Some(m) = node_modules() else { return };
    let broker = Broker::new(&m).await;
    let mk = || {
        service("mortal", &broker).verb("who", |_p, _m| async {
            Ok(Reply::ok(Value::from("alive")))
        })
    };
    let survivor = mk().run();
    let doomed = mk().run();
    js_call_ok(&m, &broker.frontend, "mortal", "who", Json::Null).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    doomed.kill(); // no DOWN: the broker must notice the silence
    // The broker drops a silent worker after its max TTL (2 s by default, checked every 500 ms).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    for i in 0..6 {
        let r = js_call(&m, &broker.frontend, "mortal", "who", Json::Null).await;
        assert_eq!(
            r["status"],
            200,
            "call {i}, {:?} after the kill: {r}",
            killed.elapsed()
        );
    }
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_comes_back_by_itself_when_the_broker_restarts() {
    let Some(m) = node_modules() else { return };
    let mut broker = Broker::new(&m).await;
    let worker = service("phoenix", &broker)
        .verb("ping", |_p, _m| async {
            Ok(Reply::ok(Value::from("pong")))
        })
        .run();
    let r = js_call_ok(&m, &broker.frontend, "phoenix", "ping", Json::Null).await;
    assert_eq!(r["status"], 200, "{r}");
    let (fe, be) = (broker.frontend.clone(), broker.backend.clone());
    broker.child.kill().await.expect("kill the broker");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    let broker = Broker::start(&m, &fe, &be).await;
    let r = js_call_ok(&m, &broker.frontend, "phoenix", "ping", Json::Null).await;
    assert_eq!(
        r["status"],
        200,
        "worker not back {:?} after the restart: {r}",
        restarted.elapsed()
    );
    eprintln!(
        "worker answering again {:?} after the broker restarted",
        restarted.elapsed()
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_calls_a_javascript_worker() {
    let Some(m) = node_modules() else { return };
    let broker = Broker::new(&m).await;
    let mut js = Command::new("node")
        .arg(js_dir().join("worker.js"))
        .args([broker.backend.as_str(), "jsping"])
        .env("NODE_PATH", &m)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the worker");
    let client = Client::new(broker.frontend.clone());
    let t = Duration::from_secs(3);
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        let r = client
            .call("jsping", "list", Value::Nil, Value::Nil, t)
            .await
            .expect("call");
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (r.status, r.payload.clone()),
        (200, Value::from("pong from js")),
        "{r:?}"
    );
    let payload = Value::map([("n", Value::Int(42)), ("s", Value::from("y".repeat(100)))]);
    let r = client
        .call("JSPING", "ECHO", payload.clone(), Value::Nil, t)
        .await
        .expect("call");
    assert_eq!(r.status, 200);
    assert_eq!(r.payload.get("echo"), Some(&payload));
    assert_eq!(r.payload.get("client"), Some(&Value::from("CLIENT")));
    let r = client
        .call("jsping", "nope", Value::Nil, Value::Nil, t)
        .await
        .expect("call");
    assert_eq!(r.status, 404);
    let started = Instant::now();
    let r = client
        .call(
            "jsping",
            "slow",
            Value::Nil,
            Value::Nil,
            Duration::from_millis(500),
        )
        .await
        .expect("call");
    assert_eq!(r.status, 599, "timeout reported as 599");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.payload.get("code"), Some(&Value::Int(599)));
    let _ = js.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ping_example_runs_three_workers_from_one_configuration() {
    let Some(m) = node_modules() else { return };
    let broker = Broker::new(&m).await;
    let config = ping::config(&broker.backend).heartbeat(Duration::from_millis(300));
    let workers: Vec<_> = (0..3).map(|_| config.run()).collect();
    let ids: std::collections::BTreeSet<&str> = workers.iter().map(|w| w.identity()).collect();
    assert_eq!(ids.len(), 3, "each worker has its own identity");
    assert!(ids.iter().all(|i| i.starts_with("PING#")));
    let r = js_call_ok(&m, &broker.frontend, "ping", "list", Json::Null).await;
    assert_eq!(r["payload"], json!(["pong-1", "pong-2"]), "{r}");
    let r = js_call(&m, &broker.frontend, "ping", "get", json!({"id": "pong-2"})).await;
    assert_eq!(
        r["payload"],
        json!({"id": "pong-2", "client": "client"}),
        "{r}"
    );
    let r = js_call(&m, &broker.frontend, "ping", "get", json!({"id": "pong-9"})).await;
    assert_eq!(r["error"]["code"], 404, "{r}");
    let r = js_call(&m, &broker.frontend, "ping", "get", Json::Null).await;
    assert_eq!(r["error"]["code"], 400, "{r}");
    let mut acked = BTreeMap::new();
    for w in workers {
        let id = w.identity().to_owned();
        acked.insert(id, w.stop().await);
    }
    assert!(acked.values().all(|a| *a), "{acked:?}");
}
