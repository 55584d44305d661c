//! Acceptance: a real Prometheus (Debian's 2.42, in a container of the test bed) finds its targets
//! through `registry serve`'s HTTP service discovery (`/v1/prometheus/sd`) over a real etcd.
//!
//! Everything is the real binary: one `registry serve` is the discovery endpoint; three more
//! `registry serve` processes are the targets (each serves `/metrics`), registered with
//! `registry register` under a 2 s TTL. Prometheus must scrape each of them (`health: up`) with the
//! `__meta_registry_*` labels, metadata included, and a relabel rule must turn a metadata label
//! into a target label. Then one `registry register` process is killed with SIGKILL (so nothing
//! deregisters it: its lease runs out) and its target must leave Prometheus' `/api/v1/targets`
//! within the bound stated in [`REMOVAL_BOUND`].

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use conformance_tests::testbed::{self, PrometheusOptions};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// The registration's TTL (etcd's smallest lease the backend accepts).
const TTL: Duration = Duration::from_secs(2);
/// Prometheus' `refresh_interval` for the HTTP SD.
const REFRESH: Duration = Duration::from_secs(2);
/// What Prometheus 2.42 adds on its own, whatever the configuration: its discovery manager passes
/// new target sets on at most every 5 s, and its scrape manager applies them at most every 5 s
/// (fixed 5 s tickers in that version, no flag), so up to 10 s in the worst phase.
const PROMETHEUS_BATCHING: Duration = Duration::from_secs(10);
/// The rest: etcd's lease expiry checks, the watch reaching `registry serve`, our polling, and a
/// 2-core machine busy with the rest of the suite.
const SLACK: Duration = Duration::from_secs(5);
/// A SIGKILLed instance must be gone from `/api/v1/targets` within this long of the kill.
const REMOVAL_BOUND: Duration = Duration::from_secs(
    REFRESH.as_secs() + TTL.as_secs() + PROMETHEUS_BATCHING.as_secs() + SLACK.as_secs(),
);

const SERVICE: &str = "prom-target";
/// The token of the SD server.
const SD_TOKEN: &str = "prom-sd-token-5b2e";

type Http = Client<HttpConnector, Empty<Bytes>>;

async fn get_json(http: &Http, url: &str) -> Result<Value, String> {
    let r = tokio::time::timeout(Duration::from_secs(5), http.get(url.parse().unwrap()))
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = r.status();
    let body = r
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{url}: {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
}

fn registry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry"));
    c.env_remove("REGISTRY_BACKEND")
        .env_remove("REGISTRY_NAMESPACE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Starts `registry serve --listen 127.0.0.1:0 SERVE_ARGS` with `backend` and returns it with
/// the `host:port` it printed.
async fn serve(backend: &[&str], serve_args: &[&str]) -> (Child, String) {
    let mut child = registry()
        .args(backend)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(serve_args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn registry serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("registry serve prints where it serves within 20 s")
        .expect("read its output")
        .expect("a line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    // Keep reading so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Prometheus' active targets of job `registry`, by `__meta_registry_id`.
async fn active_targets(http: &Http, prometheus: &str) -> Result<BTreeMap<String, Value>, String> {
    let v = get_json(
        http,
        &format!("http://{prometheus}/api/v1/targets?state=active"),
    )
    .await?;
    let targets = v["data"]["activeTargets"]
        .as_array()
        .ok_or_else(|| format!("no data.activeTargets in {v}"))?;
    Ok(targets
        .iter()
        .filter(|t| t["scrapePool"] == "registry")
        .filter_map(|t| {
            let id = t["discoveredLabels"]["__meta_registry_id"].as_str()?;
            Some((id.to_owned(), t.clone()))
        })
        .collect())
}

/// The ids `registry serve`'s SD lists (the SD server of the test wants this bearer token).
async fn sd_ids(http: &Http, sd: &str) -> Vec<String> {
    let request = hyper::Request::get(format!("http://{sd}/v1/prometheus/sd"))
        .header("authorization", format!("Bearer {SD_TOKEN}"))
        .body(Empty::new())
        .unwrap();
    let v = async {
        let r = tokio::time::timeout(Duration::from_secs(5), http.request(request))
            .await
            .map_err(|_| "no answer within 5 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let body = r
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
    }
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("the SD answer is an array: {v}"))
        .iter()
        .filter_map(|g| {
            g["labels"]["__meta_registry_id"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_what_registry_serve_discovers_and_drops_what_expires() {
    let t_start = Instant::now();
    let Some(etcd) = testbed::shared_etcd() else {
        return;
    };
    let url = format!("etcd://{etcd}");
    let ns = testbed::fresh_namespace("prom");
    let backend = ["--backend", url.as_str(), "--namespace", ns.as_str()];
    let http: Http = Client::builder(TokioExecutor::new()).build_http();

    // The discovery endpoint, over etcd, behind a token: Prometheus sends it (`authorization`
    // in `http_sd_configs`; without a `type`, 2.42 sends the bare token, which the server
    // takes); a request without it is refused.
    let token = SD_TOKEN;
    let dir = conformance_tests::pki::TempDir::new("prometheus-token");
    let token_file = dir.write("token", token);
    let (_sd_server, sd) = serve(&backend, &["--token-file", token_file.to_str().unwrap()]).await;
    let refused = http
        .get(format!("http://{sd}/v1/prometheus/sd").parse().unwrap())
        .await
        .expect("the SD answers");
    assert_eq!(refused.status().as_u16(), 401, "the SD without its token");

    // The targets: `registry serve` processes (on an empty in-process store) that serve /metrics.
    let ids = ["t1", "t2", "t3"];
    let teams = ["core", "edge", "core"];
    let mut targets = Vec::new();
    for _ in ids {
        targets.push(serve(&["--backend", "memory://"], &[]).await);
    }

    // Register each target with the CLI: TTL 2 s, metadata with a key Prometheus must sanitize.
    let mut registrations = Vec::new();
    for ((id, team), (_, addr)) in ids.iter().zip(teams).zip(&targets) {
        let child = registry()
            .args(backend)
            .args(["register", SERVICE, "--id", id, "--addr", addr])
            .args(["--meta", &format!("team={team}")])
            .args(["--meta", &format!("build.sha=sha-{id}")])
            .args(["--instance-version", "1.2.3"])
            .args([
                "--ttl",
                &format!("{}s", TTL.as_secs()),
                "--heartbeat",
                "500ms",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn registry register");
        registrations.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while sd_ids(&http, &sd).await != ids {
        assert!(
            Instant::now() < deadline,
            "the SD never listed {ids:?}: {:?}",
            sd_ids(&http, &sd).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Prometheus, pointed at the SD; the relabel rules copy the service and a metadata label.
    let config = format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: registry
    http_sd_configs:
      - url: http://{sd}/v1/prometheus/sd
        refresh_interval: {refresh}s
        authorization:
          credentials: {SD_TOKEN}
    relabel_configs:
      - source_labels: [__meta_registry_service]
        target_label: service
      - source_labels: [__meta_registry_meta_team]
        target_label: team
",
        refresh = REFRESH.as_secs()
    );
    let prometheus = match testbed::start_prometheus(PrometheusOptions {
        config,
        extra_args: Vec::new(),
    })
    .await
    {
        Ok(p) => p,
        Err(reason) => return testbed::unavailable::<()>("Prometheus", &reason).unwrap_or(()),
    };
    let prom = prometheus.endpoint.clone();
    let build = get_json(&http, &format!("http://{prom}/api/v1/status/buildinfo"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "Prometheus {} at {prom}; SD at http://{sd}/v1/prometheus/sd",
        build["data"]["version"]
    );

    // Every registered target is scraped successfully, with the discovered labels.
    let t_prom = Instant::now();
    let deadline = t_prom + Duration::from_secs(60);
    let seen = loop {
        let now = active_targets(&http, &prom).await;
        if let Ok(t) = &now
            && t.len() == ids.len()
            && t.values().all(|t| t["health"] == "up")
        {
            break t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "not all of {ids:?} up in Prometheus within 60 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "all {} targets up in Prometheus {:.1?} after it started",
        ids.len(),
        t_prom.elapsed()
    );
    for ((id, team), (_, addr)) in ids.iter().zip(teams).zip(&targets) {
        let t = &seen[*id];
        let d = &t["discoveredLabels"];
        assert_eq!(d["__address__"], addr.as_str(), "{t}");
        assert_eq!(d["__meta_registry_service"], SERVICE, "{t}");
        assert_eq!(d["__meta_registry_id"], *id, "{t}");
        assert_eq!(d["__meta_registry_version"], "1.2.3", "{t}");
        assert_eq!(d["__meta_registry_state"], "online", "{t}");
        assert_eq!(d["__meta_registry_meta_team"], team, "{t}");
        assert_eq!(
            d["__meta_registry_meta_build_sha"],
            format!("sha-{id}"),
            "{t}"
        );
        let l = &t["labels"];
        assert_eq!(l["job"], "registry", "{t}");
        assert_eq!(l["instance"], addr.as_str(), "{t}");
        assert_eq!(l["service"], SERVICE, "{t}");
        assert_eq!(l["team"], team, "{t}");
        assert_eq!(t["scrapeUrl"], format!("http://{addr}/metrics"), "{t}");
        assert_eq!(t["lastError"], "", "{t}");
    }
    // What was scraped is stored: `up` is 1 for each, under the relabelled labels.
    let q = get_json(
        &http,
        &format!(
            "http://{prom}/api/v1/query?query=up%7Bjob%3D%22registry%22%2Cteam%3D%22core%22%7D"
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut core: Vec<(String, String)> = q["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{q}"))
        .iter()
        .map(|r| {
            (
                r["metric"]["instance"].as_str().unwrap_or("").to_owned(),
                r["value"][1].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    core.sort();
    let mut want: Vec<(String, String)> = [&targets[0].1, &targets[2].1]
        .iter()
        .map(|a| (a.to_string(), "1".to_owned()))
        .collect();
    want.sort();
    assert_eq!(core, want, "up{{team=\"core\"}}: {q}");

    // SIGKILL t2's registration: nobody deregisters it, its lease expires after the TTL.
    let victim = "t2";
    let i = ids.iter().position(|id| *id == victim).unwrap();
    registrations[i].start_kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = registrations[i].wait().await;
    let mut sd_gone = None;
    let prom_gone = loop {
        if sd_gone.is_none() && !sd_ids(&http, &sd).await.iter().any(|id| id == victim) {
            sd_gone = Some(killed.elapsed());
        }
        let now = active_targets(&http, &prom)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if !now.contains_key(victim) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() <= REMOVAL_BOUND,
            "{victim} still in Prometheus' targets {:.1?} after SIGKILL (bound {REMOVAL_BOUND:?} = \
             refresh {REFRESH:?} + TTL {TTL:?} + Prometheus' batching {PROMETHEUS_BATCHING:?} + \
             slack {SLACK:?}); the SD dropped it after {sd_gone:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sd_gone = sd_gone.map_or_else(|| "(not seen)".to_owned(), |d| format!("{d:.1?}"));
    eprintln!(
        "{victim} SIGKILLed: gone from the SD after {sd_gone}, from Prometheus' targets after \
         {prom_gone:.1?} (bound {REMOVAL_BOUND:?})"
    );
    // Not sooner than its lease allows (less a margin for the lease's start before the kill):
    // it went because it expired, not because something deregistered it.
    assert!(
        prom_gone >= TTL - Duration::from_millis(500),
        "{victim} left {prom_gone:?} after SIGKILL, before its TTL ran out"
    );
    // The others are still there and up.
    let rest = active_targets(&http, &prom)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rest_ids: Vec<&str> = rest.keys().map(String::as_str).collect();
    rest_ids.sort();
    assert_eq!(rest_ids, ["t1", "t3"], "{rest:?}");
    assert!(rest.values().all(|t| t["health"] == "up"), "{rest:?}");
    eprintln!("test took {:.1?}", t_start.elapsed());
}
