//! The catalog source against a real Consul 1.8 agent: services registered by others (the consul
//! CLI in the agent's container, or Consul's HTTP API through a plain HTTP/1.0 client written
//! here) appear in our directory, and the truth is read back through Consul's own API.
//!
//! Each test that pauses, restarts or restores its agent, or follows every service, has an agent
//! of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conformance_tests::consul_api;
use conformance_tests::testbed::{self, ConsulOptions};
use registry_consul::ConsulBuilder;
use registry_consul_catalog::{CatalogHealth, CatalogSource};
use registry_engine::{
    BACKEND_SOURCE, Directory, Instance, InstanceState, Registry, Ring, ServiceSnapshot,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

const SOURCE: &str = "consul-catalog";

async fn agent(opts: ConsulOptions) -> Option<testbed::Consul> {
    match testbed::start_consul(opts).await {
        Ok(c) => Some(c),
        Err(reason) => testbed::unavailable("consul", &reason),
    }
}

/// The agent's settings for a source: short waits, so that failures show quickly.
fn consul(endpoint: &str, wait: Duration) -> ConsulBuilder {
    ConsulBuilder::new()
        .address(endpoint)
        .watch_wait(wait)
        .request_timeout(Duration::from_secs(1))
}

async fn put(endpoint: &str, path: &str, body: Value) {
    let (status, text) = consul_api::http(endpoint, "PUT", path, &body.to_string()).await;
    assert_eq!(status, 200, "PUT {path}: {text}");
}

/// Consul's own view of a service: id -> aggregated status of its checks.
async fn truth(endpoint: &str, service: &str) -> BTreeMap<String, String> {
    let (status, body) = consul_api::http(
        endpoint,
        "GET",
        &format!("/v1/health/service/{service}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let entries: Vec<Value> = serde_json::from_str(&body).unwrap();
    entries
        .iter()
        .map(|e| {
            let statuses: Vec<&str> = e["Checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["Status"].as_str().unwrap())
                .collect();
            let worst = ["critical", "warning"]
                .into_iter()
                .find(|s| statuses.contains(s))
                .unwrap_or("passing");
            (
                e["Service"]["ID"].as_str().unwrap().to_owned(),
                worst.to_owned(),
            )
        })
        .collect()
}

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `consul ARGS` inside the agent's container.
fn cli(c: &testbed::Consul, args: &[&str]) -> String {
    let mut all = vec!["exec", c.container.id(), "consul"];
    all.extend_from_slice(args);
    docker(&all)
}

/// `consul services register FILE` with this service definition, the file copied into the
/// container (the image has nothing but the consul binary; no host path is mounted).
fn cli_register(c: &testbed::Consul, file: &str, definition: Value) {
    let local = std::env::temp_dir().join(format!("catalog-{}-{file}", std::process::id()));
    std::fs::write(&local, definition.to_string()).unwrap();
    let inside = format!("/{file}");
    docker(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{}:{inside}", c.container.id()),
    ]);
    std::fs::remove_file(&local).unwrap();
    let out = cli(c, &["services", "register", &inside]);
    assert!(out.contains("Registered service"), "{out}");
}

/// Waits until `service`'s view satisfies `ok`; returns how long it took.
async fn until(
    dir: &Directory,
    service: &str,
    limit: Duration,
    what: &str,
    ok: impl Fn(&ServiceSnapshot) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut rx = dir.subscribe(service);
    let r = timeout(limit, async {
        loop {
            if ok(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    let snap = dir.snapshot(service);
    assert!(
        r.is_ok() && ok(&snap),
        "{service}: {what} not within {limit:?}; the view: online {:?}, all {:?}, stale {}",
        ids(snap.online().iter().map(|i| &i.id)),
        snap.all()
            .values()
            .map(|i| (&i.id, i.state))
            .collect::<Vec<_>>(),
        snap.is_stale()
    );
    started.elapsed()
}

fn ids<'a>(it: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    it.map(String::as_str).collect()
}

fn online(s: &ServiceSnapshot) -> Vec<&str> {
    ids(s.online().iter().map(|i| &i.id))
}

fn listed(s: &ServiceSnapshot) -> Vec<&str> {
    s.all().keys().collect()
}

/// An instance registered through the agent's HTTP API (no check of its own: passing).
async fn agent_register(endpoint: &str, service: &str, id: &str, port: u16, meta: Value) {
    put(
        endpoint,
        "/v1/agent/service/register",
        json!({"Name": service, "ID": id, "Address": "10.3.0.1", "Port": port, "Meta": meta}),
    )
    .await;
}

/// The acceptance check of issue 15 (item 2): a service registered with the consul CLI, with a
/// TTL check the test passes and then lets fail, appears in our directory, routes keys with
/// `find`, and leaves when its check fails (passing-only) or goes offline (all with state); a
/// deregistration removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_registered_service_appears_routes_and_leaves_when_its_check_fails() {
    let Some(c) = agent(ConsulOptions::default()).await else {
        return;
    };
    let ep = c.endpoint.clone();
    let dir = Directory::new();
    let passing = CatalogSource::builder(consul(&ep, Duration::from_secs(5)))
        .service("legacy-web")
        .start(&dir, SOURCE, -10)
        .await
        .expect("start the passing-only source");
    let all_dir = Directory::new();
    let all = CatalogSource::builder(consul(&ep, Duration::from_secs(5)))
        .service("legacy-web")
        .health(CatalogHealth::AllWithState)
        .start(&all_dir, SOURCE, -10)
        .await
        .expect("start the all-with-state source");
    const TTL: Duration = Duration::from_secs(4);
    for (id, port) in [("lw-1", 8081), ("lw-2", 8082)] {
        cli_register(
            &c,
            &format!("{id}.json"),
            json!({"service": {
                "name": "legacy-web", "id": id, "address": "10.1.0.1", "port": port,
                "tags": ["blue", "v1"], "meta": {"version": "1.2.3", "zone": "a"},
                "check": {"id": format!("{id}-ttl"), "name": "ttl", "ttl": "4s"}
            }}),
        );
    }
    // A TTL check starts critical: Consul lists both, not passing; we list them offline (all
    // with state) and show none of them (passing only).
    let t = truth(&ep, "legacy-web").await;
    assert_eq!(t.values().collect::<Vec<_>>(), ["critical", "critical"]);
    until(
        &all_dir,
        "legacy-web",
        Duration::from_secs(5),
        "both listed, offline",
        |s| listed(s) == ["lw-1", "lw-2"] && s.online().is_empty(),
    )
    .await;
    assert!(dir.get("legacy-web").is_empty(), "nothing passes yet");

    // The checks pass: both appear, from our source, as Consul describes them.
    let passed = Instant::now();
    for id in ["lw-1", "lw-2"] {
        put(&ep, &format!("/v1/agent/check/pass/{id}-ttl"), json!(null)).await;
    }
    let appeared = until(
        &dir,
        "legacy-web",
        Duration::from_secs(5),
        "both online",
        |s| online(s) == ["lw-1", "lw-2"],
    )
    .await;
    eprintln!("figure: check passed -> listed in the directory in {appeared:?}");
    assert_eq!(
        truth(&ep, "legacy-web").await.values().collect::<Vec<_>>(),
        ["passing", "passing"]
    );
    let snap = dir.snapshot("legacy-web");
    assert_eq!(snap.source_of("lw-1"), Some(SOURCE));
    assert_eq!(snap.source_of("lw-2"), Some(SOURCE));
    let lw1 = &snap.all()["lw-1"];
    assert_eq!(lw1.addrs, ["10.1.0.1:8081"]);
    assert_eq!(lw1.version.as_deref(), Some("1.2.3"));
    assert_eq!(lw1.weight, 100, "Consul's default weight 1 is our default");
    assert_eq!(lw1.metadata["zone"], "a");
    assert_eq!(lw1.metadata["tag.blue"], "");
    assert_eq!(lw1.metadata["tag.v1"], "");
    assert_eq!(lw1.metadata["consul.health"], "passing");
    until(
        &all_dir,
        "legacy-web",
        Duration::from_secs(5),
        "both online",
        |s| online(s) == ["lw-1", "lw-2"],
    )
    .await;

    // `find` routes keys over both, exactly as a ring over the two does.
    let ring = Ring::new(snap.online().iter().cloned());
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..2000 {
        let key = format!("user-{k}");
        let owner = dir.find("legacy-web", &key).expect("an owner");
        assert_eq!(owner.id, ring.find(key.as_bytes()).unwrap().id, "{key}");
        *owners.entry(owner.id.clone()).or_default() += 1;
    }
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert!(owners.values().all(|n| *n > 400), "{owners:?}");

    // lw-1 keeps passing; lw-2's check is left to fail.
    let keeper = {
        let ep = ep.clone();
        tokio::spawn(async move {
            loop {
                put(&ep, "/v1/agent/check/pass/lw-1-ttl", json!(null)).await;
                sleep(Duration::from_secs(1)).await;
            }
        })
    };
    until(
        &dir,
        "legacy-web",
        TTL + Duration::from_secs(5),
        "lw-2 gone once its TTL ran out",
        |s| online(s) == ["lw-1"] && listed(s) == ["lw-1"],
    )
    .await;
    let left = passed.elapsed();
    eprintln!("figure: last pass of a {TTL:?} TTL check -> gone from the directory in {left:?}");
    assert!(left >= TTL, "not before the TTL ran out: {left:?}");
    let t = truth(&ep, "legacy-web").await;
    assert_eq!(t["lw-2"], "critical", "Consul's truth: {t:?}");
    assert_eq!(t["lw-1"], "passing", "Consul's truth: {t:?}");
    until(
        &all_dir,
        "legacy-web",
        Duration::from_secs(5),
        "lw-2 offline",
        |s| online(s) == ["lw-1"] && listed(s) == ["lw-1", "lw-2"],
    )
    .await;
    let lw2 = all_dir.snapshot("legacy-web").all()["lw-2"].clone();
    assert_eq!(lw2.state, InstanceState::Offline);
    assert_eq!(lw2.metadata["consul.health"], "critical");
    for k in 0..200 {
        assert_eq!(
            dir.find("legacy-web", format!("user-{k}")).unwrap().id,
            "lw-1"
        );
    }

    // A deregistration leaves at once.
    let out = cli(&c, &["services", "deregister", "-id=lw-1"]);
    assert!(out.contains("Deregistered"), "{out}");
    keeper.abort();
    let gone = until(&dir, "legacy-web", Duration::from_secs(5), "empty", |s| {
        s.all().is_empty()
    })
    .await;
    eprintln!("figure: consul services deregister -> gone from the directory in {gone:?}");
    until(
        &all_dir,
        "legacy-web",
        Duration::from_secs(5),
        "only lw-2",
        |s| listed(s) == ["lw-2"],
    )
    .await;
    assert!(!truth(&ep, "legacy-web").await.contains_key("lw-1"));
    for s in [&passing, &all] {
        let n = s.counts();
        assert_eq!(n.errors, 0, "{n:?}");
        assert_eq!(n.lists, 1, "one listing, then blocking queries: {n:?}");
        assert!(n.queries >= 3, "{n:?}");
    }
}

/// Resume by index: a service that changes many times in a row is followed with blocking
/// queries from the last index (one listing, then queries that wait), and the final state is
/// never missed; while nothing changes the queries wait the whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_resume_by_index_and_never_miss_the_final_state() {
    let Some(c) = agent(ConsulOptions::default()).await else {
        return;
    };
    let ep = c.endpoint.clone();
    let dir = Directory::new();
    let wait = Duration::from_secs(2);
    let src = CatalogSource::builder(consul(&ep, wait))
        .service("churn")
        .start(&dir, SOURCE, -10)
        .await
        .unwrap();
    const CHANGES: u32 = 60;
    for i in 0..CHANGES {
        agent_register(&ep, "churn", "c1", 80, json!({"gen": i.to_string()})).await;
        if i % 2 == 0 {
            agent_register(&ep, "churn", "c2", 81, json!({})).await;
        } else {
            put(&ep, "/v1/agent/service/deregister/c2", json!(null)).await;
        }
        // Now and then a pause, so that the source answers many times mid-churn.
        if i % 3 == 0 {
            sleep(Duration::from_millis(60)).await;
        }
    }
    let last = (CHANGES - 1).to_string();
    until(
        &dir,
        "churn",
        Duration::from_secs(10),
        "the final state",
        |s| listed(s) == ["c1"] && s.all()["c1"].metadata.get("gen") == Some(&last),
    )
    .await;
    let busy = src.counts();
    let reached = dir.snapshot("churn");
    assert_eq!(busy.lists, 1, "{busy:?}");
    assert_eq!(busy.errors, 0, "{busy:?}");
    assert!(busy.queries >= 5, "followed mid-churn: {busy:?}");
    assert!(
        busy.publications <= u64::from(CHANGES) * 2 + 1,
        "one publication per answer at most: {busy:?}"
    );
    // Idle: each query waits for a change (the whole wait, plus Consul's jitter of wait/16).
    let idle = Duration::from_secs(6);
    sleep(idle).await;
    let quiet = src.counts();
    let asked = quiet.queries + quiet.lists - busy.queries - busy.lists;
    assert!(
        asked <= 4,
        "{asked} queries in {idle:?} with a {wait:?} wait: not blocking on the index ({quiet:?})"
    );
    assert_eq!(
        quiet.publications,
        busy.publications,
        "nothing changed: {:?} -> {:?}",
        reached.all(),
        dir.snapshot("churn").all()
    );
    eprintln!("figure: {CHANGES} changes followed with {busy:?}; idle {idle:?}: {asked} queries");
}

/// Back-off and stale-not-empty: a paused agent (requests hang) makes the view stale with every
/// instance kept, the retries come further and further apart, and the view is fresh again, and
/// followed again, once the agent answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_leaves_a_stale_view_retried_with_growing_pauses() {
    let Some(c) = agent(ConsulOptions::default()).await else {
        return;
    };
    let ep = c.endpoint.clone();
    for (id, port) in [("a1", 81), ("a2", 82)] {
        agent_register(&ep, "web", id, port, json!({})).await;
    }
    let dir = Directory::new();
    let src = CatalogSource::builder(consul(&ep, Duration::from_secs(1)))
        .service("web")
        .backoff(Duration::from_millis(100), Duration::from_secs(3))
        .start(&dir, SOURCE, -10)
        .await
        .unwrap();
    until(&dir, "web", Duration::from_secs(5), "both", |s| {
        online(s) == ["a1", "a2"]
    })
    .await;
    assert!(!dir.is_stale("web"));

    docker(&["pause", c.container.id()]);
    let paused = Instant::now();
    let noticed = until(
        &dir,
        "web",
        Duration::from_secs(10),
        "stale, not empty",
        |s| s.is_stale() && online(s) == ["a1", "a2"],
    )
    .await;
    eprintln!("figure: agent paused -> view stale in {noticed:?}");
    // The errors: their times, to see the pauses between them grow.
    let mut at = Vec::new();
    let mut seen = src.counts().errors;
    let watched = timeout(Duration::from_secs(30), async {
        while at.len() < 5 {
            let n = src.counts().errors;
            if n > seen {
                seen = n;
                at.push(Instant::now());
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let counts = src.counts();
    docker(&["unpause", c.container.id()]);
    assert!(watched.is_ok(), "5 more errors in 30 s: {counts:?}");
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("figure: gaps between failed requests while paused {gaps:?}; {counts:?}");
    // Each retry waits for the request timeout (1 s) plus a pause that doubles (jittered).
    assert!(
        gaps[3] > gaps[0] + Duration::from_millis(150),
        "the pauses grow: {gaps:?}"
    );
    assert!(counts.failing_streak >= 5, "{counts:?}");
    assert!(counts.last_retry_delay_ms >= 400, "{counts:?}");
    assert!(
        dir.is_stale("web") && dir.get("web").len() == 2,
        "still stale, still both"
    );

    until(&dir, "web", Duration::from_secs(10), "fresh again", |s| {
        !s.is_stale() && online(s) == ["a1", "a2"]
    })
    .await;
    eprintln!(
        "figure: paused {:?} in all; fresh again after unpause",
        paused.elapsed()
    );
    let after = src.counts();
    assert!(after.resumes >= 1, "{after:?}");
    assert_eq!(after.failing_streak, 0, "{after:?}");
    // Followed again from there.
    agent_register(&ep, "web", "a3", 83, json!({})).await;
    until(&dir, "web", Duration::from_secs(5), "a3 too", |s| {
        online(s) == ["a1", "a2", "a3"]
    })
    .await;
}

/// An index that goes backwards is Consul's reset: after a snapshot restore (no error at all)
/// and after a restart without data, the answer is taken as a fresh listing and the directory
/// shows exactly what Consul has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_goes_backwards_re_lists() {
    let port = testbed::free_port();
    let Some(c) = agent(ConsulOptions {
        host_port: Some(port),
        ..ConsulOptions::default()
    })
    .await
    else {
        return;
    };
    let ep = c.endpoint.clone();
    // Registered in the catalog for an external node, so the agent's anti-entropy does not
    // put anything back after the restore.
    let ext = |id: &str, port: u16| {
        json!({"Node": "ext", "Address": "10.4.0.1",
               "Service": {"Service": "ext", "ID": id, "Port": port}})
    };
    put(&ep, "/v1/catalog/register", ext("e1", 81)).await;
    let dir = Directory::new();
    let src = CatalogSource::builder(consul(&ep, Duration::from_secs(2)))
        .service("ext")
        .start(&dir, SOURCE, -10)
        .await
        .unwrap();
    until(&dir, "ext", Duration::from_secs(5), "e1", |s| {
        online(s) == ["e1"]
    })
    .await;
    let out = cli(&c, &["snapshot", "save", "/before.snap"]);
    assert!(out.contains("Saved"), "{out}");
    // Move the index well past the snapshot's.
    for i in 0..20 {
        put(&ep, &format!("/v1/kv/bump/{i}"), json!(i)).await;
    }
    put(&ep, "/v1/catalog/register", ext("e2", 82)).await;
    until(&dir, "ext", Duration::from_secs(5), "e1, e2", |s| {
        online(s) == ["e1", "e2"]
    })
    .await;
    let out = cli(&c, &["snapshot", "restore", "/before.snap"]);
    assert!(out.contains("Restored"), "{out}");
    let took = until(&dir, "ext", Duration::from_secs(10), "e1 only", |s| {
        listed(s) == ["e1"]
    })
    .await;
    assert_eq!(truth(&ep, "ext").await.keys().collect::<Vec<_>>(), ["e1"]);
    let n = src.counts();
    eprintln!("figure: snapshot restored -> directory re-listed in {took:?}; {n:?}");
    assert!(n.resets >= 1, "{n:?}");
    assert_eq!(n.errors, 0, "a restore is no error: {n:?}");

    // A restart without data: the index starts again near 0. First move this service's index
    // well past where a fresh agent's will be once it has e3.
    for i in 0..30 {
        let mut e = ext("e1", 81);
        e["Service"]["Meta"] = json!({"gen": i.to_string()});
        put(&ep, "/v1/catalog/register", e).await;
    }
    until(&dir, "ext", Duration::from_secs(5), "the last e1", |s| {
        s.all()
            .get("e1")
            .is_some_and(|i| i.metadata.get("gen").map(String::as_str) == Some("29"))
    })
    .await;
    c.container.stop().await.expect("stop consul");
    until(
        &dir,
        "ext",
        Duration::from_secs(10),
        "stale, not empty",
        |s| s.is_stale() && listed(s) == ["e1"],
    )
    .await;
    c.container.start().await.expect("start consul");
    timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(Ok(mut s)) =
                timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&ep)).await
            {
                let req = "PUT /v1/catalog/register HTTP/1.0\r\nContent-Length: ";
                let body = ext("e3", 83).to_string();
                let req = format!("{req}{}\r\n\r\n{body}", body.len());
                let mut out = String::new();
                if s.write_all(req.as_bytes()).await.is_ok()
                    && s.read_to_string(&mut out).await.is_ok()
                    && out.starts_with("HTTP/1.0 200")
                {
                    return;
                }
            }
            sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the restarted agent takes a registration within 30 s");
    let took = until(
        &dir,
        "ext",
        Duration::from_secs(15),
        "e3 only, fresh",
        |s| listed(s) == ["e3"] && !s.is_stale(),
    )
    .await;
    assert_eq!(truth(&ep, "ext").await.keys().collect::<Vec<_>>(), ["e3"]);
    let n = src.counts();
    eprintln!("figure: restarted agent answering -> directory re-listed in {took:?}; {n:?}");
    assert!(n.resets >= 2, "{n:?}");
}

/// Malformed entries (an id our validation refuses, a missing port) are skipped and counted,
/// the others shown; a service name our validation refuses is skipped and counted once when
/// every service is followed; a service that leaves the catalog is emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_and_names_are_skipped_and_counted_the_others_shown() {
    let Some(c) = agent(ConsulOptions::default()).await else {
        return;
    };
    let ep = c.endpoint.clone();
    agent_register(&ep, "mixed", "ok-1", 80, json!({})).await;
    for (id, port) in [("bad id", 81), ("no/slash", 82)] {
        agent_register(&ep, "mixed", id, port, json!({})).await;
    }
    put(
        &ep,
        "/v1/agent/service/register",
        json!({"Name": "mixed", "ID": "no-port", "Address": "10.3.0.1"}),
    )
    .await;
    agent_register(&ep, "bad name!", "x1", 80, json!({})).await;
    agent_register(&ep, "other", "o1", 80, json!({})).await;
    assert_eq!(truth(&ep, "mixed").await.len(), 4, "Consul lists all four");

    let dir = Directory::new();
    let one = CatalogSource::builder(consul(&ep, Duration::from_secs(2)))
        .service("mixed")
        .start(&dir, SOURCE, -10)
        .await
        .unwrap();
    assert_eq!(
        online(&dir.snapshot("mixed")),
        ["ok-1"],
        "start waits for the first answer"
    );
    assert_eq!(one.counts().skipped, 3, "{:?}", one.counts());
    // Counted per answer that carries them: a change to the service counts them again.
    agent_register(&ep, "mixed", "ok-1", 80, json!({"changed": "yes"})).await;
    until(&dir, "mixed", Duration::from_secs(5), "the change", |s| {
        s.all()
            .get("ok-1")
            .is_some_and(|i| i.metadata.contains_key("changed"))
    })
    .await;
    assert_eq!(one.counts().skipped, 6, "{:?}", one.counts());
    assert_eq!(online(&dir.snapshot("mixed")), ["ok-1"]);

    // Every service: the refused name is skipped, once, the others followed.
    let all_dir = Directory::new();
    let every = CatalogSource::builder(consul(&ep, Duration::from_secs(2)))
        .exclude("consul")
        .start(&all_dir, SOURCE, -10)
        .await
        .unwrap();
    assert_eq!(all_dir.services(), ["mixed", "other"]);
    assert_eq!(online(&all_dir.snapshot("other")), ["o1"]);
    let n = every.counts();
    assert_eq!(
        (n.skipped_services, n.followed, n.skipped),
        (1, 2, 3),
        "{n:?}"
    );
    // A new service is followed; one that leaves the catalog is emptied.
    agent_register(&ep, "late", "l1", 80, json!({})).await;
    until(&all_dir, "late", Duration::from_secs(5), "followed", |s| {
        online(s) == ["l1"]
    })
    .await;
    put(&ep, "/v1/agent/service/deregister/o1", json!(null)).await;
    until(&all_dir, "other", Duration::from_secs(5), "emptied", |s| {
        s.all().is_empty()
    })
    .await;
    timeout(Duration::from_secs(5), async {
        while every.counts().followed != 2 {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("`other` no longer followed");
    assert_eq!(every.counts().skipped_services, 1, "counted once");
    every.stop_and_withdraw().await;
    assert!(all_dir.get("mixed").is_empty() && all_dir.get("late").is_empty());
}

/// One directory fed by our backend's discovery (instances in Consul's KV store) and by the
/// catalog source (services others registered in the catalog): both shown, each marked with its
/// source, keys routed over the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_kv_registrations_and_catalog_services_share_one_directory() {
    let Some(ep) = testbed::shared_consul() else {
        return;
    };
    let backend = ConsulBuilder::new()
        .address(ep.clone())
        .namespace(testbed::fresh_namespace("catalog"))
        .connect()
        .await
        .unwrap();
    let registry = Registry::builder(Arc::new(backend))
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let service = format!("mig-{}", std::process::id());
    let _ours = registry
        .register(Instance::new(service.as_str(), "kv-1").addr("10.5.0.1:80"))
        .await
        .unwrap();
    let discovery = registry.discover(&service).await.unwrap();
    let dir = discovery.directory();
    let catalog = CatalogSource::builder(consul(&ep, Duration::from_secs(5)))
        .service(service.as_str())
        .start(dir, SOURCE, -10)
        .await
        .unwrap();
    agent_register(&ep, &service, "cat-1", 80, json!({})).await;
    until(dir, &service, Duration::from_secs(5), "both", |s| {
        online(s) == ["cat-1", "kv-1"]
    })
    .await;
    let snap = dir.snapshot(&service);
    assert_eq!(snap.source_of("kv-1"), Some(BACKEND_SOURCE));
    assert_eq!(snap.source_of("cat-1"), Some(SOURCE));
    let mut owners = std::collections::BTreeSet::new();
    for k in 0..500 {
        owners.insert(dir.find(&service, format!("k{k}")).unwrap().id.clone());
    }
    assert_eq!(owners.len(), 2, "{owners:?}");
    put(&ep, "/v1/agent/service/deregister/cat-1", json!(null)).await;
    until(dir, &service, Duration::from_secs(5), "ours only", |s| {
        online(s) == ["kv-1"]
    })
    .await;
    // Dropped: the source stops following (what it published stays: here, nothing).
    drop(catalog);
    agent_register(&ep, &service, "cat-2", 80, json!({})).await;
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        online(&dir.snapshot(&service)),
        ["kv-1"],
        "no longer followed"
    );
    put(&ep, "/v1/agent/service/deregister/cat-2", json!(null)).await;
}

/// The ACL token is sent (the source reads what the token may read) and never printed. Consul
/// 1.8 filters what a token may not read instead of refusing it: without a token the service is
/// simply empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_token_is_used_and_never_printed() {
    const ROOT: &str = "9f2c1e6a-0000-4000-8000-00000000beef";
    let Some(c) = agent(ConsulOptions {
        extra_args: vec![
            "-hcl".into(),
            format!(
                r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{ROOT}" agent = "{ROOT}" }} }}"#
            ),
        ],
        ..ConsulOptions::default()
    })
    .await
    else {
        return;
    };
    let ep = c.endpoint.clone();
    let body = json!({"Name": "secured", "ID": "s1", "Address": "10.6.0.1", "Port": 80});
    timeout(Duration::from_secs(20), async {
        loop {
            let (status, _) = consul_api::http(
                &ep,
                "PUT",
                &format!("/v1/agent/service/register?token={ROOT}"),
                &body.to_string(),
            )
            .await;
            if status == 200 {
                return;
            }
            sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the agent bootstraps its ACLs");
    let dir = Directory::new();
    // A token the agent does not know is refused at start, and the name stays free.
    let e = CatalogSource::builder(
        consul(&ep, Duration::from_secs(2)).token("00000000-1111-2222-3333-444444444444"),
    )
    .service("secured")
    .start(&dir, SOURCE, -10)
    .await
    .unwrap_err();
    assert_eq!(e.kind(), registry_core::ErrorKind::PermissionDenied, "{e}");
    assert!(!e.to_string().contains(ROOT), "{e}");
    let src = CatalogSource::builder(consul(&ep, Duration::from_secs(2)).token(ROOT))
        .service("secured")
        .start(&dir, SOURCE, -10)
        .await
        .unwrap();
    until(&dir, "secured", Duration::from_secs(5), "s1", |s| {
        online(s) == ["s1"]
    })
    .await;
    let shown = format!("{src:?}");
    assert!(!shown.contains(ROOT), "{shown}");
    let anon_dir = Directory::new();
    let _anon = CatalogSource::builder(consul(&ep, Duration::from_secs(2)))
        .service("secured")
        .start(&anon_dir, SOURCE, -10)
        .await
        .unwrap();
    assert!(anon_dir.snapshot("secured").all().is_empty());
}

/// How fast a catalog change reaches the directory: instances registered one by one through the
/// agent API, each timed from the API's answer to its appearance in the directory, then each
/// deregistration to its departure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_change_reaches_the_directory_within_milliseconds() {
    let Some(ep) = testbed::shared_consul() else {
        return;
    };
    let service = format!("lat-{}", std::process::id());
    let dir = Directory::new();
    let _src = CatalogSource::builder(consul(&ep, Duration::from_secs(10)))
        .service(service.as_str())
        .start(&dir, SOURCE, -10)
        .await
        .unwrap();
    let mut took = Vec::new();
    for i in 0..20u16 {
        let id = format!("i{i:02}");
        agent_register(&ep, &service, &id, 1000 + i, json!({})).await;
        let at = Instant::now();
        until(&dir, &service, Duration::from_secs(5), "the new one", |s| {
            s.all().contains_key(&id)
        })
        .await;
        took.push(at.elapsed());
    }
    for i in 0..20u16 {
        let id = format!("i{i:02}");
        put(
            &ep,
            &format!("/v1/agent/service/deregister/{id}"),
            json!(null),
        )
        .await;
        let at = Instant::now();
        until(&dir, &service, Duration::from_secs(5), "it gone", |s| {
            !s.all().contains_key(&id)
        })
        .await;
        took.push(at.elapsed());
    }
    took.sort();
    let (median, max) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("figure: a catalog change -> the directory: median {median:?}, max {max:?} over 40");
    assert!(max < Duration::from_secs(1), "{took:?}");
}
