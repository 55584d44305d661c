//! The catalog path under faults (issue 15): services that others registered in Consul's catalog,
//! followed by `CatalogSource`s, while the agent is replaced by an empty one, restored from a
//! snapshot, or cut off the network.
//!
//! The scene: a Consul agent from the suite's [`Server`] (fixed host port); an external registrar
//! in the harness that registers three instances of `legacy` through the agent API with TTL checks
//! and passes them every second, registering again whatever the agent has forgotten (as go-micro or
//! Spring Cloud Consul do); two directories, one fed by a passing-only source and one by an
//! all-with-state source; the truth read with plain HTTP from `/v1/health/service/legacy`.
//!
//! After each fault heals, within its bound, and again a second later: the passing-only directory
//! is fresh and shows exactly the ids the truth lists as passing, the other exactly the ids the
//! truth lists, each with the state its health gives. While the agent cannot be read, neither
//! directory may show an empty, fresh view. Each outcome is also appended to `FAULT_REPORT` (the
//! table of `scripts/faults.sh`) as backend `consul-catalog`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance_tests::testbed;
use fault_suite::server::{Backend, Server, Setup};
use registry::consul::{CatalogHealth, CatalogSource, ConsulBuilder};
use registry::engine::Directory;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

const SERVICE: &str = "legacy";
const TTL: &str = "5s";
const TTL_D: Duration = Duration::from_secs(5);

/// One request over a plain HTTP/1.0 connection: (status, body), or why it failed.
async fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {endpoint}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&out).into_owned())
    };
    let text = timeout(Duration::from_secs(2), io)
        .await
        .map_err(|_| "no answer within 2 s".to_owned())??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:.80}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The truth: every listed id with whether all its checks pass.
async fn truth(endpoint: &str) -> Result<BTreeMap<String, bool>, String> {
    let (status, body) = http(
        endpoint,
        "GET",
        &format!("/v1/health/service/{SERVICE}"),
        "",
    )
    .await?;
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&body).map_err(|e| format!("health listing: {e}"))?;
    Ok(entries
        .iter()
        .filter_map(|e| {
            let id = e["Service"]["ID"].as_str()?.to_owned();
            let passing = e["Checks"]
                .as_array()?
                .iter()
                .all(|c| c["Status"] == "passing");
            Some((id, passing))
        })
        .collect())
}

/// The external registrar: keeps `ids` registered and passing; registers again what the agent
/// forgot.
fn registrar(endpoint: String, ids: Arc<Mutex<BTreeSet<String>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now: Vec<String> = ids.lock().unwrap().iter().cloned().collect();
            for (n, id) in now.iter().enumerate() {
                let pass = format!("/v1/agent/check/pass/{id}-ttl");
                if let Ok((200, _)) = http(&endpoint, "PUT", &pass, "").await {
                    continue;
                }
                let def = serde_json::json!({
                    "Name": SERVICE, "ID": id, "Address": "10.7.0.1", "Port": 9000 + n,
                    "Check": {"CheckID": format!("{id}-ttl"), "TTL": TTL}
                });
                if let Ok((200, _)) = http(
                    &endpoint,
                    "PUT",
                    "/v1/agent/service/register",
                    &def.to_string(),
                )
                .await
                {
                    let _ = http(&endpoint, "PUT", &pass, "").await;
                }
            }
            sleep(Duration::from_secs(1)).await;
        }
    })
}

struct Scene {
    server: Server,
    ids: Arc<Mutex<BTreeSet<String>>>,
    registrar: tokio::task::JoinHandle<()>,
    passing: Directory,
    all: Directory,
    _sources: (CatalogSource, CatalogSource),
}

impl Scene {
    async fn start() -> Option<Scene> {
        let server = match Server::start(Backend::Consul, Setup::Single).await {
            Ok(s) => s,
            Err(reason) => return testbed::unavailable("consul (catalog scene)", &reason),
        };
        let ep = server.client_endpoint();
        let ids = Arc::new(Mutex::new(
            ["x0", "x1", "x2"].map(str::to_owned).into_iter().collect(),
        ));
        let registrar = registrar(ep.clone(), ids.clone());
        let consul = ConsulBuilder::new()
            .address(ep.clone())
            .watch_wait(Duration::from_secs(5))
            .request_timeout(Duration::from_secs(2));
        let passing = Directory::new();
        let all = Directory::new();
        let a = CatalogSource::builder(consul.clone())
            .service(SERVICE)
            .start(&passing, "consul-catalog", -10)
            .await
            .expect("start the passing-only source");
        let b = CatalogSource::builder(consul)
            .service(SERVICE)
            .health(CatalogHealth::AllWithState)
            .start(&all, "consul-catalog", -10)
            .await
            .expect("start the all-with-state source");
        let scene = Scene {
            server,
            ids,
            registrar,
            passing,
            all,
            _sources: (a, b),
        };
        let c = scene
            .converge(Instant::now(), Duration::from_secs(30))
            .await;
        assert!(
            c.0.is_some(),
            "the catalog scene did not converge before any fault: {}",
            c.1
        );
        Some(scene)
    }

    fn endpoint(&self) -> String {
        self.server.client_endpoint()
    }

    /// What is wrong now (empty when the directories agree with the truth and the registrar).
    /// Without `registrar`, only the directories against the truth.
    async fn check(&self, registrar: bool) -> Result<(), String> {
        let t = truth(&self.endpoint()).await?;
        let want: BTreeSet<&String> = t.iter().filter(|(_, p)| **p).map(|(id, _)| id).collect();
        let expected = self.ids.lock().unwrap().clone();
        let mut why = Vec::new();
        if registrar && want.iter().copied().cloned().collect::<BTreeSet<_>>() != expected {
            why.push(format!(
                "the truth passes {want:?}, the registrar keeps {expected:?}"
            ));
        }
        let p = self.passing.snapshot(SERVICE);
        let shown: BTreeSet<&String> = p.online().iter().map(|i| &i.id).collect();
        if shown != want || p.all().len() != shown.len() {
            why.push(format!(
                "passing-only shows {shown:?}, the truth passes {want:?}"
            ));
        }
        if p.is_stale() {
            why.push("passing-only is stale".into());
        }
        let a = self.all.snapshot(SERVICE);
        let listed: BTreeMap<&str, bool> =
            a.all().iter().map(|(id, i)| (id, i.is_online())).collect();
        let truth_all: BTreeMap<&str, bool> = t.iter().map(|(id, p)| (id.as_str(), *p)).collect();
        if listed != truth_all {
            why.push(format!(
                "all-with-state lists {listed:?}, the truth {truth_all:?}"
            ));
        }
        if a.is_stale() {
            why.push("all-with-state is stale".into());
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    /// Waits until [`check`](Self::check) (with the registrar) passes twice a second apart, within `bound` of `since`:
    /// (time to converge, why not at the bound).
    async fn converge(&self, since: Instant, bound: Duration) -> (Option<Duration>, String) {
        self.converge_to(since, bound, true).await
    }

    async fn converge_to(
        &self,
        since: Instant,
        bound: Duration,
        registrar: bool,
    ) -> (Option<Duration>, String) {
        let mut last = String::new();
        while since.elapsed() <= bound {
            match self.check(registrar).await {
                Ok(()) => {
                    let at = since.elapsed();
                    sleep(Duration::from_secs(1)).await;
                    match self.check(registrar).await {
                        Ok(()) => return (Some(at), String::new()),
                        Err(e) => last = format!("a second later: {e}"),
                    }
                }
                Err(e) => last = e,
            }
            sleep(Duration::from_millis(200)).await;
        }
        (None, last)
    }

    /// Samples the directories while the agent cannot be read: neither may be empty and fresh.
    fn watch_during(
        &self,
    ) -> (
        tokio::task::JoinHandle<Vec<String>>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, a, ep, flag) = (
            self.passing.clone(),
            self.all.clone(),
            self.endpoint(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            let mut bad = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if truth(&ep).await.is_err() {
                    for (name, d) in [("passing-only", &p), ("all-with-state", &a)] {
                        let s = d.snapshot(SERVICE);
                        if s.all().is_empty() && !s.is_stale() && bad.len() < 5 {
                            bad.push(format!(
                                "{name}: empty and fresh while the agent cannot be read"
                            ));
                        }
                    }
                }
                sleep(Duration::from_millis(200)).await;
            }
            bad
        });
        (task, stop)
    }

    async fn shutdown(self) {
        self.registrar.abort();
        drop(self.server);
    }
}

fn report(fault: &str, conv: &(Option<Duration>, String), during: &[String]) -> bool {
    let passed = conv.0.is_some() && during.is_empty();
    eprintln!(
        "fault {fault:<24} on consul-catalog: {} {}{}{}",
        if passed { "PASS" } else { "FAIL" },
        conv.0.map_or("NOT converged".to_owned(), |d| format!(
            "converged in {:.1} s",
            d.as_secs_f64()
        )),
        if conv.1.is_empty() {
            String::new()
        } else {
            format!("\n    at the bound: {}", conv.1)
        },
        during
            .iter()
            .map(|d| format!("\n    during the fault: {d}"))
            .collect::<String>()
    );
    if let Ok(path) = std::env::var("FAULT_REPORT")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(
            f,
            "consul-catalog\t{fault}\t{}\t{}\t-\t-",
            if passed { "pass" } else { "FAIL" },
            conv.0
                .map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
        );
    }
    passed
}

/// The agent replaced by an empty one on the same port: every registration gone, the index back
/// near 0. The registrar registers again; the sources re-list (an index reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_restart_empty() {
    let Some(mut scene) = Scene::start().await else {
        return;
    };
    let (during, stop) = scene.watch_during();
    scene
        .server
        .replace_fresh(0)
        .await
        .expect("replace the agent");
    let healed = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = during.await.unwrap();
    let conv = scene
        .converge(healed, TTL_D + Duration::from_secs(10))
        .await;
    let n = scene._sources.0.counts();
    scene.shutdown().await;
    eprintln!("restart-empty: {n:?}");
    assert!(
        report("restart-empty", &conv, &during),
        "{conv:?} {during:?}"
    );
}

/// A snapshot taken, an instance retired and another added, the snapshot restored (the index
/// goes backwards without any error): the directories follow what the agent then says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_restore_snapshot() {
    let Some(mut scene) = Scene::start().await else {
        return;
    };
    scene.server.snapshot().await.expect("snapshot");
    // Move the index on, then change the membership.
    {
        let mut ids = scene.ids.lock().unwrap();
        ids.remove("x2");
        ids.insert("x3".into());
    }
    let (s, _) = http(
        &scene.endpoint(),
        "PUT",
        "/v1/agent/service/deregister/x2",
        "",
    )
    .await
    .expect("deregister x2");
    assert_eq!(s, 200);
    let c = scene
        .converge(Instant::now(), Duration::from_secs(15))
        .await;
    assert!(c.0.is_some(), "before the restore: {}", c.1);
    scene.server.restore().await.expect("restore");
    let healed = Instant::now();
    // The restored catalog has x2 and not x3 until the agent's anti-entropy (a full sync about
    // once a minute on a small cluster) puts its own services back: the directories must follow
    // the truth within a blocking query's deadline (5 s wait + 1/16 + 2 s) and 4 s of slack, then
    // the registrar's set once Consul itself has it.
    let follow = scene
        .converge_to(healed, Duration::from_secs(12), false)
        .await;
    let consul = scene.converge(healed, Duration::from_secs(120)).await;
    let n = scene._sources.0.counts();
    scene.shutdown().await;
    eprintln!(
        "restore-snapshot: the directories followed the restored truth in {:?}; Consul's \
         anti-entropy brought the registrar's set back in {:?}; {n:?}",
        follow.0, consul.0
    );
    assert!(report("restore-snapshot", &follow, &[]), "{follow:?}");
    assert!(
        consul.0.is_some(),
        "Consul's anti-entropy within 120 s: {consul:?}"
    );
    assert!(n.resets >= 1, "{n:?}");
}

/// The agent's port black-holed for longer than the checks' TTL: the views stay (stale), the
/// checks go critical, and after the heal the registrar's passes bring everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_network_cut() {
    if let Err(reason) = Server::can_cut_network().await {
        testbed::unavailable::<()>("a network cut (nsenter, iptables)", &reason);
        return;
    }
    let Some(scene) = Scene::start().await else {
        return;
    };
    let (during, stop) = scene.watch_during();
    scene.server.cut_network(0).await.expect("cut");
    sleep(TTL_D * 2 + Duration::from_secs(2)).await;
    let stale = (
        scene.passing.is_stale(SERVICE),
        scene.passing.get(SERVICE).len(),
    );
    scene.server.heal_network(0).await.expect("heal");
    let healed = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = during.await.unwrap();
    let conv = scene
        .converge(healed, TTL_D + Duration::from_secs(10))
        .await;
    scene.shutdown().await;
    assert!(report("network-cut", &conv, &during), "{conv:?} {during:?}");
    assert_eq!(stale, (true, 3), "during the cut: stale, all three kept");
}
