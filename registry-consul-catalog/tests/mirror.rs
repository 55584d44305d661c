//! Instances registered through the library, as Consul's own interfaces show them: the catalog
//! and health HTTP API (read here with plain HTTP requests, not with our backend), the `consul`
//! CLI inside the agent's container, and the agent's DNS interface queried with `dig` (Debian's
//! bind9-dnsutils; `scripts/dns-tools.sh` installs it).
//!
//! Each test runs its own Consul 1.8 `-dev` agent. The SIGKILL test waits for Consul's reaper:
//! about 70 s to 100 s (TTL 10 s + `DeregisterCriticalServiceAfter` 1 min + a reaper run every
//! 30 s).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance_tests::consul_api;
use conformance_tests::testbed::{self, ConsulOptions};
use registry_consul::{ConsulBackend, ConsulBuilder};
use registry_consul_catalog::CatalogMirror;
use registry_core::Backend;
use registry_core::lease::LeaseId;
use registry_engine::{
    Instance, RegisterOptions, RegistrationEvent, RegistrationObserver, RegistrationState, Registry,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

const TTL: Duration = Duration::from_secs(10);

async fn agent() -> Option<testbed::Consul> {
    match testbed::start_consul(ConsulOptions::default()).await {
        Ok(c) => Some(c),
        Err(reason) => testbed::unavailable("consul", &reason),
    }
}

async fn backend(endpoint: &str) -> Arc<ConsulBackend> {
    Arc::new(
        ConsulBuilder::new()
            .address(endpoint)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to consul at {endpoint}: {e}")),
    )
}

fn registry(backend: Arc<dyn Backend>) -> Registry {
    Registry::builder(backend)
        .ttl(TTL)
        .heartbeat(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A registry on the agent `consul` names whose instances the catalog mirror follows (beating
/// every `heartbeat`), with the mirror and the backend.
async fn mirrored_with(
    consul: ConsulBuilder,
    heartbeat: Duration,
) -> (Registry, Arc<CatalogMirror>, Arc<ConsulBackend>) {
    let mirror = Arc::new(CatalogMirror::start(&consul).expect("start the catalog mirror"));
    let backend = Arc::new(
        consul
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to consul: {e}")),
    );
    let registry = Registry::builder(backend.clone())
        .ttl(TTL)
        .heartbeat(heartbeat)
        .observer(mirror.clone())
        .build()
        .unwrap();
    (registry, mirror, backend)
}

/// A registry on the agent at `endpoint`, mirrored into its catalog.
async fn mirrored(endpoint: &str) -> Registry {
    mirrored_with(
        ConsulBuilder::new().address(endpoint),
        Duration::from_secs(2),
    )
    .await
    .0
}

/// `GET path` on the agent (Consul's own API, plain HTTP): status and JSON body.
async fn get(endpoint: &str, path: &str) -> (u16, Value) {
    json(consul_api::http(endpoint, "GET", path, "").await)
}

/// `GET path` with an ACL token: status and JSON body.
async fn get_with_token(endpoint: &str, path: &str, token: &str) -> (u16, Value) {
    json(consul_api::http_as(token, endpoint, "GET", path, "").await)
}

fn json((status, body): (u16, String)) -> (u16, Value) {
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `/v1/health/service/NAME` (`?passing` when `passing`): service ID -> entry.
async fn health(endpoint: &str, name: &str, passing: bool) -> BTreeMap<String, Value> {
    let q = if passing { "?passing" } else { "" };
    let (status, v) = get(endpoint, &format!("/v1/health/service/{name}{q}")).await;
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|e| (e["Service"]["ID"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

async fn catalog_services(endpoint: &str) -> BTreeMap<String, Value> {
    let (status, v) = get(endpoint, "/v1/catalog/services").await;
    assert_eq!(status, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

/// Polls `probe` every 100 ms until it is true; how long that took, or a panic after `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if probe().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// The statuses of an entry's checks, by check ID.
fn checks(entry: &Value) -> BTreeMap<String, String> {
    entry["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["CheckID"].as_str().unwrap().to_owned(),
                c["Status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `consul catalog services` run inside the agent's container (Consul's own client).
fn consul_cli_services(consul: &testbed::Consul) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "exec",
            consul.container.id(),
            "consul",
            "catalog",
            "services",
        ])
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "consul catalog services: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Whether `dig` is here; under `REGISTRY_TEST_REQUIRED=1` its absence is a failure.
fn dig_available() -> bool {
    let ok = Command::new("dig")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || testbed::unavailable::<()>(
        "dig (Debian's bind9-dnsutils)",
        "it is not installed: `apt-get install bind9-dnsutils`, or `source scripts/dns-tools.sh && \
         dns_tools_up`",
    )
    .is_some()
}

/// One SRV answer with the address of its target (from the additional section).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Srv {
    port: u16,
    weight: u16,
    address: String,
}

/// `dig @server -p port NAME SRV` (over TCP when `tcp`): the SRV answers.
fn dig_srv(server: &str, name: &str, tcp: bool) -> BTreeSet<Srv> {
    let (host, port) = server.rsplit_once(':').unwrap();
    let mut cmd = Command::new("dig");
    cmd.args([
        &format!("@{host}"),
        "-p",
        port,
        name,
        "SRV",
        "+noall",
        "+answer",
        "+additional",
        "+time=2",
        "+tries=2",
    ]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = cmd.output().expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dig: {text}");
    let mut addresses = BTreeMap::new();
    let mut srvs = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.get(3) {
            Some(&"A") | Some(&"AAAA") if f.len() >= 5 => {
                addresses.insert(f[0].to_owned(), f[4].to_owned());
            }
            Some(&"SRV") if f.len() >= 8 => srvs.push((
                f[5].parse().unwrap(),
                f[6].parse().unwrap(),
                f[7].to_owned(),
            )),
            _ => {}
        }
    }
    srvs.into_iter()
        .map(|(weight, port, target)| Srv {
            port,
            weight,
            address: addresses.get(&target).cloned().unwrap_or(target),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_appear_in_the_catalog_health_api_consul_cli_and_dns() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let r = mirrored(&ep).await;
    let _w1 = r
        .register(
            Instance::new("catalog-web", "w1")
                .addr("10.1.2.3:8080")
                .meta("zone", "eu-1a")
                .meta("tags", "blue,canary")
                .version("1.4.2")
                .weight(7),
        )
        .await
        .unwrap();
    let _w2 = r
        .register(Instance::new("catalog-web", "w2").addr("http://10.1.2.4:9090/api"))
        .await
        .unwrap();
    let took = until("both passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-web", true).await.len() == 2
    })
    .await;
    println!("registered -> passing in /v1/health: {took:?}");

    let passing = health(&ep, "catalog-web", true).await;
    let w1 = &passing["registry/registry/catalog-web/w1"]["Service"];
    assert_eq!(w1["Service"], "catalog-web");
    assert_eq!(w1["Address"], "10.1.2.3");
    assert_eq!(w1["Port"], 8080);
    assert_eq!(w1["Meta"]["zone"], "eu-1a");
    assert_eq!(w1["Meta"]["version"], "1.4.2");
    assert_eq!(w1["Meta"]["weight"], "7");
    assert_eq!(w1["Weights"]["Passing"], 7);
    assert_eq!(w1["Tags"], serde_json::json!(["blue", "canary"]));
    let w2 = &passing["registry/registry/catalog-web/w2"]["Service"];
    assert_eq!(w2["Address"], "10.1.2.4");
    assert_eq!(w2["Port"], 9090);
    assert_eq!(w2["Meta"]["weight"], "100");

    let services = catalog_services(&ep).await;
    assert!(services.contains_key("catalog-web"), "{services:?}");
    let cli = consul_cli_services(&consul);
    assert!(cli.iter().any(|s| s == "catalog-web"), "{cli:?}");

    if !dig_available() {
        return;
    }
    let expected: BTreeSet<Srv> = [
        Srv {
            port: 8080,
            weight: 7,
            address: "10.1.2.3".into(),
        },
        Srv {
            port: 9090,
            weight: 100,
            address: "10.1.2.4".into(),
        },
    ]
    .into();
    let udp = consul.dns_udp.as_deref().expect("DNS port published");
    let tcp = consul.dns_tcp.as_deref().expect("DNS port published");
    assert_eq!(dig_srv(udp, "catalog-web.service.consul", false), expected);
    assert_eq!(dig_srv(tcp, "catalog-web.service.consul", true), expected);
    // Tags select instances in DNS too.
    assert_eq!(
        dig_srv(udp, "canary.catalog-web.service.consul", false)
            .into_iter()
            .map(|s| s.port)
            .collect::<Vec<_>>(),
        vec![8080]
    );
}

const CHILD_ENV: &str = "REGISTRY_CATALOG_TEST_CHILD";
/// `shutdown-and-exit`: the child registers, shuts its registry down and exits at once.
const CHILD_MODE_ENV: &str = "REGISTRY_CATALOG_TEST_CHILD_MODE";

/// The registering process of [`sigkill_of_the_registering_process_turns_its_checks_critical_then_removes_them`]:
/// that test runs this test binary again with only this test and `REGISTRY_CATALOG_TEST_CHILD`
/// set to the agent's address; it registers three instances, says `READY`, and heartbeats until
/// it is killed. Run alone (without that variable) it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the SIGKILL test, which starts it"]
async fn sigkill_child_registers_and_heartbeats_until_killed() {
    let Ok(endpoint) = std::env::var(CHILD_ENV) else {
        eprintln!("{CHILD_ENV} is not set: nothing to do (the SIGKILL test runs this)");
        return;
    };
    let r = mirrored(&endpoint).await;
    if std::env::var(CHILD_MODE_ENV).as_deref() == Ok("shutdown-and-exit") {
        for i in 0..2 {
            r.register(
                Instance::new("catalog-exit", format!("e{i}")).addr(format!("10.11.0.{i}:80")),
            )
            .await
            .unwrap()
            .registered()
            .await
            .unwrap();
        }
        r.shutdown().await.unwrap();
        println!("DONE");
        std::process::exit(0);
    }
    let mut regs = Vec::new();
    for i in 0..3 {
        let reg = r
            .register(
                Instance::new("catalog-crash", format!("c{i}")).addr(format!("10.9.0.{i}:7000")),
            )
            .await
            .unwrap();
        reg.registered().await.unwrap();
        regs.push(reg);
    }
    println!("READY");
    std::io::stdout().flush().unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_registering_process_turns_its_checks_critical_then_removes_them() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child_registers_and_heartbeats_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, &ep)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the registering child process");
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.trim_end().ends_with("READY"))
    });
    let ready = timeout(Duration::from_secs(60), ready).await;
    if !matches!(ready, Ok(Ok(true))) {
        let _ = child.kill();
        panic!("the child did not register: {ready:?}");
    }
    until("three passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-crash", true).await.len() == 3
    })
    .await;
    let lease_entries = health(&ep, "registry-lease", true).await;
    assert_eq!(lease_entries.len(), 1, "{lease_entries:?}");

    // SIGKILL: no deregistration, no revoke, no last words.
    child.kill().expect("SIGKILL the child");
    let killed = Instant::now();
    let _ = child.wait();

    // Its checks go critical within TTL + the declared slack of the last heartbeat (at most as
    // long after the kill).
    let slack = backend(&ep).await.capabilities().expiry_slack;
    until(
        "all three critical",
        TTL + slack + Duration::from_secs(5),
        || async {
            let all = health(&ep, "catalog-crash", false).await;
            all.len() == 3
                && all
                    .values()
                    .all(|e| checks(e).values().any(|s| s == "critical"))
        },
    )
    .await;
    let critical = killed.elapsed();
    println!("SIGKILL -> all three checks critical: {critical:?} (TTL {TTL:?}, slack {slack:?})");
    assert!(critical <= TTL + slack, "{critical:?} > {:?}", TTL + slack);
    assert!(health(&ep, "catalog-crash", true).await.is_empty());
    if dig_available() {
        let udp = consul.dns_udp.as_deref().expect("DNS port published");
        assert!(
            dig_srv(udp, "catalog-crash.service.consul", false).is_empty(),
            "DNS serves only passing instances"
        );
    }

    // Then the agent's reaper removes them (and the lease's own entry) from the catalog.
    let bound = CatalogMirror::removal_bound(TTL);
    until(
        "entries gone from the catalog",
        bound.saturating_sub(killed.elapsed()) + Duration::from_secs(1),
        || async {
            let s = catalog_services(&ep).await;
            !s.contains_key("catalog-crash") && !s.contains_key("registry-lease")
        },
    )
    .await;
    let gone = killed.elapsed();
    println!("SIGKILL -> gone from the catalog: {gone:?} (documented bound {bound:?})");
    assert!(gone <= bound, "{gone:?} > {bound:?}");
    let cli = consul_cli_services(&consul);
    assert!(!cli.iter().any(|s| s == "catalog-crash"), "{cli:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_is_maintenance_mode_and_online_passes_again() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let r = mirrored(&ep).await;
    let reg = r
        .register(Instance::new("catalog-maint", "m1").addr("10.2.0.1:80"))
        .await
        .unwrap();
    let _other = r
        .register(Instance::new("catalog-maint", "m2").addr("10.2.0.2:80"))
        .await
        .unwrap();
    until("both passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-maint", true).await.len() == 2
    })
    .await;

    reg.set_online(false).await.unwrap();
    let took = until("m1 out of ?passing", Duration::from_secs(5), || async {
        let p = health(&ep, "catalog-maint", true).await;
        p.len() == 1 && p.contains_key("registry/registry/catalog-maint/m2")
    })
    .await;
    println!("set_online(false) -> out of ?passing: {took:?}");
    // Still listed, with the agent's maintenance check critical and the lease alias passing.
    let all = health(&ep, "catalog-maint", false).await;
    let m1 = checks(&all["registry/registry/catalog-maint/m1"]);
    assert_eq!(
        m1.get("_service_maintenance:registry/registry/catalog-maint/m1")
            .map(String::as_str),
        Some("critical"),
        "{m1:?}"
    );
    assert_eq!(
        m1.get("service:registry/registry/catalog-maint/m1")
            .map(String::as_str),
        Some("passing"),
        "{m1:?}"
    );
    // It stays so across heartbeats (nothing re-registers it online).
    sleep(Duration::from_secs(5)).await;
    assert_eq!(health(&ep, "catalog-maint", true).await.len(), 1);

    reg.set_online(true).await.unwrap();
    until("m1 passing again", Duration::from_secs(5), || async {
        health(&ep, "catalog-maint", true).await.len() == 2
    })
    .await;
    let all = health(&ep, "catalog-maint", false).await;
    assert!(
        !checks(&all["registry/registry/catalog-maint/m1"])
            .keys()
            .any(|k| k.starts_with("_service_maintenance")),
        "maintenance mode is off"
    );
}

/// Maintenance mode belongs to the service ID at the agent and outlives a re-registration: an
/// instance that a crashed process left offline, registered again online by its successor before
/// the reaper removed it, must not stay in maintenance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_registering_online_clears_the_maintenance_a_crashed_run_left() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let first = mirrored(&ep).await;
    let reg = first
        .register(Instance::new("catalog-succ", "s1").addr("10.7.0.1:80"))
        .await
        .unwrap();
    reg.set_online(false).await.unwrap();
    until("in maintenance", Duration::from_secs(10), || async {
        health(&ep, "catalog-succ", false).await.values().any(|e| {
            checks(e)
                .keys()
                .any(|k| k.starts_with("_service_maintenance:"))
        })
    })
    .await;
    first.crash();

    let second = mirrored(&ep).await;
    let _reg2 = second
        .register_with(
            Instance::new("catalog-succ", "s1").addr("10.7.0.1:80"),
            RegisterOptions::new().takeover(true),
        )
        .await
        .unwrap();
    let took = until(
        "passing under the successor",
        Duration::from_secs(10),
        || async { health(&ep, "catalog-succ", true).await.len() == 1 },
    )
    .await;
    println!("successor registered -> passing, maintenance off: {took:?}");
    let all = health(&ep, "catalog-succ", false).await;
    assert!(
        !checks(&all["registry/registry/catalog-succ/s1"])
            .keys()
            .any(|k| k.starts_with("_service_maintenance")),
        "{all:?}"
    );
    drop(reg);
}

/// A process that shuts its registry down and exits at once (as `registry register` does on
/// Ctrl-C) leaves nothing in the catalog: the removal is done when `shutdown` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_exiting_right_after_shutdown_leaves_nothing_in_the_catalog() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let out = tokio::task::spawn_blocking({
        let ep = ep.clone();
        move || {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "sigkill_child_registers_and_heartbeats_until_killed",
                    "--ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ENV, &ep)
                .env(CHILD_MODE_ENV, "shutdown-and-exit")
                .output()
                .expect("run the child")
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("DONE"),
        "child: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The child is gone: whatever it left stays in the catalog until Consul's reaper, a minute
    // and a half later. (The agent syncs a removal to the catalog within moments.)
    let took = until("nothing left", Duration::from_secs(2), || async {
        let services = catalog_services(&ep).await;
        !services.contains_key("catalog-exit") && !services.contains_key("registry-lease")
    })
    .await;
    println!("child exited -> nothing of it in the catalog after {took:?}");
    let cli = consul_cli_services(&consul);
    assert_eq!(cli, vec!["consul"], "{cli:?}");
}

/// Another process on the same agent takes an instance id over: the service ID is now on its
/// lease, and the first process shutting down (revoking its own lease) must leave it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_leaves_alone_an_instance_another_process_took_over() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let first = mirrored(&ep).await;
    let _old = first
        .register(Instance::new("catalog-take", "t1").addr("10.10.0.1:80"))
        .await
        .unwrap();
    let _mine = first
        .register(Instance::new("catalog-take", "t2").addr("10.10.0.2:80"))
        .await
        .unwrap();
    until("both passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-take", true).await.len() == 2
    })
    .await;
    let second = mirrored(&ep).await;
    let _new = second
        .register_with(
            Instance::new("catalog-take", "t1").addr("10.10.0.9:80"),
            RegisterOptions::new().takeover(true),
        )
        .await
        .unwrap();
    until("t1 at its new address", Duration::from_secs(10), || async {
        health(&ep, "catalog-take", true)
            .await
            .get("registry/registry/catalog-take/t1")
            .is_some_and(|e| e["Service"]["Address"] == "10.10.0.9")
    })
    .await;

    first.shutdown().await.unwrap();
    until(
        "t2 gone with the first process",
        Duration::from_secs(2),
        || async {
            !health(&ep, "catalog-take", false)
                .await
                .contains_key("registry/registry/catalog-take/t2")
        },
    )
    .await;
    // A few heartbeats later t1 is still there, passing, on the second process's lease.
    sleep(Duration::from_secs(3)).await;
    let passing = health(&ep, "catalog-take", true).await;
    assert_eq!(
        passing.keys().collect::<Vec<_>>(),
        vec!["registry/registry/catalog-take/t1"],
        "{passing:?}"
    );
    assert_eq!(
        passing["registry/registry/catalog-take/t1"]["Service"]["Address"],
        "10.10.0.9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_drain_and_shutdown_remove_entries_at_once() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let r = mirrored(&ep).await;
    let mut regs = Vec::new();
    for i in 0..3 {
        regs.push(
            r.register(
                Instance::new("catalog-gone", format!("g{i}")).addr(format!("10.3.0.{i}:80")),
            )
            .await
            .unwrap(),
        );
    }
    until("three passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-gone", true).await.len() == 3
    })
    .await;
    let listed = |id: &'static str| {
        let ep = ep.clone();
        async move {
            health(&ep, "catalog-gone", false)
                .await
                .contains_key(&format!("registry/registry/catalog-gone/{id}"))
        }
    };

    let g2 = regs.pop().unwrap();
    g2.deregister().await.unwrap();
    let took = until("g2 gone", Duration::from_secs(2), || async {
        !listed("g2").await
    })
    .await;
    println!("deregister -> gone from the catalog: {took:?}");

    let g1 = regs.pop().unwrap();
    g1.drain(Duration::from_millis(500)).await.unwrap();
    let took = until("g1 gone", Duration::from_secs(2), || async {
        !listed("g1").await
    })
    .await;
    println!("drain returned -> gone from the catalog: {took:?}");
    assert!(listed("g0").await, "the others stay");

    // Shutdown revokes the lease: the last instance and the lease's own entry go.
    r.shutdown().await.unwrap();
    let took = until("all gone", Duration::from_secs(2), || async {
        let s = catalog_services(&ep).await;
        !s.contains_key("catalog-gone") && !s.contains_key("registry-lease")
    })
    .await;
    println!("shutdown -> everything gone from the catalog: {took:?}");
    drop(regs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_mirror_a_registry_registers_nothing_in_the_catalog() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let b = ConsulBuilder::from_url(&format!("consul://{ep}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let b: Arc<dyn Backend> = Arc::new(b);
    let r = registry(b.clone());
    let reg = r
        .register(Instance::new("catalog-off", "o1").addr("10.4.0.1:80"))
        .await
        .unwrap();
    reg.registered().await.unwrap();
    // Several heartbeats: nothing appears late either.
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        b.list("registry/catalog-off").await.unwrap().entries.len(),
        1
    );
    let services = catalog_services(&ep).await;
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        vec!["consul"],
        "only Consul itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_consul_refuses_is_left_out_and_counted_not_fatal() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let (r, mirror, _b) =
        mirrored_with(ConsulBuilder::new().address(&ep), Duration::from_secs(2)).await;
    let mut inst = Instance::new("catalog-meta", "x1")
        .addr("10.5.0.1:80")
        .meta("bad key", "spaces are not allowed")
        .meta("consul-owned", "reserved prefix")
        .meta("long", "v".repeat(600));
    for i in 0..70 {
        inst = inst.meta(format!("m{i:02}"), "x");
    }
    let _reg = r.register(inst).await.unwrap();
    until("passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-meta", true).await.len() == 1
    })
    .await;
    let e = &health(&ep, "catalog-meta", true).await["registry/registry/catalog-meta/x1"];
    let meta = e["Service"]["Meta"].as_object().unwrap();
    assert_eq!(meta.len(), 64, "Consul's maximum");
    assert!(!meta.contains_key("bad key") && !meta.contains_key("long"));
    // 3 refused + 70 - (64 - 2 of ours: registry_lease, weight) = 3 + 8.
    assert_eq!(mirror.counts().meta_skipped, 11);
}

/// Collects everything logged, to prove no token is.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A token that may write KV and sessions but not services: the KV registration works, the
/// catalog is refused (logged and counted, never a failed registration, no token in any log
/// line); once the operator grants `service:write`, the next keep-alive brings the catalog in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_service_write_keeps_kv_registrations_and_the_catalog_follows_the_grant() {
    const ROOT: &str = "5c1d7a0e-0000-4000-8000-00000000cafe";
    const TOKEN: &str = "5c1d7a0e-0000-4000-8000-000000000042";
    let logs = Captured::default();
    let sink = logs.clone();
    // The process-wide subscriber (no other test of this binary sets one): a thread-local one
    // missed events when other tests ran in parallel (tracing caches per-callsite interest).
    // It also sees the other tests' log lines: no token may be in those either.
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish(),
    )
    .expect("the only test that sets the global subscriber");
    let consul = match testbed::start_consul(ConsulOptions::with_acls(ROOT)).await {
        Ok(c) => c,
        Err(reason) => {
            return testbed::unavailable::<()>("consul with ACLs", &reason).unwrap_or(());
        }
    };
    let ep = consul.endpoint.clone();
    consul_api::until_token_accepted(&ep, ROOT).await;
    let kv_only = r#"key_prefix "" { policy = "write" } session_prefix "" { policy = "write" }"#;
    consul.acl_token(ROOT, TOKEN, "registry", kv_only);
    let (r, mirror, _b) = mirrored_with(
        ConsulBuilder::new().address(ep.clone()).token(TOKEN),
        Duration::from_secs(2),
    )
    .await;
    let mut regs = Vec::new();
    for i in 0..20 {
        let reg = r
            .register(Instance::new("catalog-acl", format!("a{i:02}")).addr("10.8.0.1:80"))
            .await
            .expect("the KV registration does not depend on the catalog");
        reg.registered().await.unwrap();
        regs.push(reg);
    }
    // The mirror works behind the KV writes: let it try (and fail) each of the 20 first.
    until(
        "the mirror tried all 20",
        Duration::from_secs(10),
        || async { mirror.counts().requests >= 20 },
    )
    .await;
    let keep_alives = r.stats().keep_alives;
    let after_registering = mirror.counts();
    // A few heartbeats: each retries the catalog and is refused, once (not once per instance).
    sleep(Duration::from_secs(5)).await;
    assert!(regs.iter().all(|r| r.state().is_registered()));
    let stats = mirror.counts();
    let heartbeats = r.stats().keep_alives - keep_alives;
    println!(
        "refused catalog: {after_registering:?} after registering 20, then {stats:?} after \
         {heartbeats} heartbeats"
    );
    assert!(stats.failures > after_registering.failures, "{stats:?}");
    assert!(
        stats.failures - after_registering.failures <= 2 * heartbeats,
        "{heartbeats} heartbeats: {stats:?}"
    );
    assert_eq!(stats.registered, 0, "{stats:?}");
    let root_view = ConsulBuilder::new()
        .address(ep.clone())
        .token(ROOT)
        .connect()
        .await
        .unwrap();
    assert_eq!(
        root_view
            .list("registry/catalog-acl")
            .await
            .unwrap()
            .entries
            .len(),
        20,
        "in KV"
    );

    // The operator grants service:write: the next keep-alive registers it, passing.
    let with_services = format!(r#"{kv_only} service_prefix "" {{ policy = "write" }}"#);
    consul.cli(
        ROOT,
        &[
            "acl",
            "policy",
            "update",
            "-name",
            "registry",
            "-rules",
            &with_services,
        ],
    );
    let took = until(
        "in the catalog after the grant",
        Duration::from_secs(15),
        || async {
            let (_, v) = get_with_token(&ep, "/v1/health/service/catalog-acl?passing", ROOT).await;
            v.as_array().is_some_and(|a| a.len() == 20)
        },
    )
    .await;
    println!("service:write granted -> passing in the catalog: {took:?}");
    assert!(mirror.counts().registered >= 20);

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("consul catalog mirror: request failed"),
        "the refusal is logged"
    );
    for secret in [ROOT, TOKEN] {
        assert!(!text.contains(secret), "a token in the logs:\n{text}");
    }
    drop(regs);
}

/// A TCP proxy in front of the agent that records the method and path of every HTTP request
/// passing through (HTTP/1.1, bodies with Content-Length, as our client sends them).
async fn counting_proxy(upstream: String) -> (String, Arc<Mutex<Vec<(Instant, String)>>>) {
    let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            let log = l.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut cr = BufReader::new(cr);
                loop {
                    let mut head = Vec::new();
                    let mut len = 0usize;
                    let mut first = String::new();
                    loop {
                        let mut line = String::new();
                        match cr.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        head.extend_from_slice(line.as_bytes());
                        if first.is_empty() {
                            first = line.trim().to_owned();
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        assert!(
                            !lower.starts_with("transfer-encoding"),
                            "the proxy reads Content-Length bodies only"
                        );
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    if cr.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let mut parts = first.split_whitespace();
                    let method = parts.next().unwrap_or_default();
                    let path = parts
                        .next()
                        .unwrap_or_default()
                        .split('?')
                        .next()
                        .unwrap_or_default();
                    log.lock()
                        .unwrap()
                        .push((Instant::now(), format!("{method} {path}")));
                    if sw.write_all(&head).await.is_err() || sw.write_all(&body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, log)
}

/// What kind of request: the method and the path without its variable part
/// (`PUT /v1/agent/check/pass`, `GET /v1/kv`, `PUT /v1/session/renew`, ...).
fn kind(req: &str) -> String {
    let (method, path) = req.split_once(' ').unwrap_or((req, ""));
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = match segs.get(1) {
        Some(&"agent") => 4,
        Some(&"session") => 3,
        _ => 2,
    };
    format!("{method} /{}", segs[..n.min(segs.len())].join("/"))
}

fn by_kind<'a>(reqs: impl Iterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in reqs {
        *counts.entry(kind(r)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_catalog_heartbeat_request_per_process_for_100_instances() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let (proxy, log) = counting_proxy(ep.clone()).await;
    let (r, _mirror, _b) =
        mirrored_with(ConsulBuilder::new().address(&proxy), Duration::from_secs(1)).await;
    let mut regs = Vec::new();
    for i in 0..100 {
        regs.push(
            r.register(
                Instance::new("catalog-many", format!("n{i:03}")).addr(format!("10.6.0.{i}:80")),
            )
            .await
            .unwrap(),
        );
    }
    for reg in &regs {
        reg.registered().await.unwrap();
    }
    until("100 passing", Duration::from_secs(30), || async {
        health(&ep, "catalog-many", true).await.len() == 100
    })
    .await;
    let registration = by_kind(log.lock().unwrap().iter().map(|(_, r)| r));
    println!("registering 100 instances, requests by kind: {registration:?}");
    // Steady state: count what ten seconds of heartbeats send.
    sleep(Duration::from_secs(2)).await;
    let from = Instant::now();
    let keep_alives = r.stats().keep_alives;
    sleep(Duration::from_secs(10)).await;
    let keep_alives = r.stats().keep_alives - keep_alives;
    let counts = by_kind(
        log.lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, r)| r),
    );
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    let renews = count("PUT /v1/session/renew");
    let passes = count("PUT /v1/agent/check/pass");
    let per = |n: usize| n as f64 / renews.max(1) as f64;
    println!(
        "100 instances, one lease, heartbeat 1 s, 10 s: {keep_alives} keep-alives, requests by \
         kind {counts:?}; per heartbeat: {:.2} catalog check pass, {:.2} session renew, {:.2} KV \
         reads (the keeper's read-back), {:.2} in all",
        per(passes),
        per(renews),
        per(count("GET /v1/kv")),
        per(counts.values().sum()),
    );
    assert!(renews >= 5, "{counts:?}");
    // One pass per keep-alive, whatever the number of instances (the window may cut one pair).
    assert!(passes.abs_diff(renews) <= 1, "{counts:?}");
    let other_agent: Vec<_> = counts
        .keys()
        .filter(|k| k.contains("/v1/agent/") && !k.ends_with("/check/pass"))
        .collect();
    assert!(other_agent.is_empty(), "{counts:?}");
    // And the agent agrees: every instance passing, from those passes alone.
    assert_eq!(health(&ep, "catalog-many", true).await.len(), 100);
}

/// The agent's own entry for a service ID (`GET /v1/agent/service/ID`), `None` when it has none.
async fn agent_service(endpoint: &str, id: &str) -> Option<Value> {
    let (status, v) = get(endpoint, &format!("/v1/agent/service/{id}")).await;
    match status {
        200 => Some(v),
        404 => None,
        s => panic!("GET /v1/agent/service/{id}: {s} {v}"),
    }
}

/// The lease a registration is written under.
fn lease_of(reg: &registry_engine::Registration) -> String {
    match reg.state() {
        RegistrationState::Registered { lease, .. } => lease.as_str().to_owned(),
        s => panic!("not registered: {s}"),
    }
}

/// Another owner takes an instance id over (here a process without the mirror: its own entry
/// would be on another agent): the first process yields the id (its registration goes to
/// `Conflict`) and takes its entry out of its agent, so that the catalog and DNS do not keep
/// serving the old address as passing beside the new owner. Once the other owner is gone, the
/// first process takes the id back, and the entry comes back with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yielded_instance_leaves_the_agent_and_comes_back_when_the_other_owner_is_gone() {
    const Y1: &str = "registry/registry/catalog-yield/y1";
    const Y2: &str = "registry/registry/catalog-yield/y2";
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let first = mirrored(&ep).await;
    let old = first
        .register(Instance::new("catalog-yield", "y1").addr("10.12.0.1:80"))
        .await
        .unwrap();
    let _mine = first
        .register(Instance::new("catalog-yield", "y2").addr("10.12.0.2:80"))
        .await
        .unwrap();
    until("both passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-yield", true).await.len() == 2
    })
    .await;

    let other = registry(backend(&ep).await);
    let taker = other
        .register_with(
            Instance::new("catalog-yield", "y1").addr("10.12.0.9:80"),
            RegisterOptions::new().takeover(true),
        )
        .await
        .unwrap();
    taker.registered().await.unwrap();
    let took = until(
        "the first process yields y1",
        Duration::from_secs(15),
        || async { matches!(old.state(), RegistrationState::Conflict { .. }) },
    )
    .await;
    println!("taken over -> conflict: {took:?}");
    let took = until(
        "y1's old entry gone from the agent",
        Duration::from_secs(5),
        || async { agent_service(&ep, Y1).await.is_none() },
    )
    .await;
    println!("conflict -> the old entry gone from the agent: {took:?}");
    let passing = health(&ep, "catalog-yield", true).await;
    assert_eq!(passing.keys().collect::<Vec<_>>(), vec![Y2], "{passing:?}");

    // The other owner goes: the first process writes y1 again, and the catalog follows.
    other.shutdown().await.unwrap();
    let took = until(
        "y1 back at the first process's address",
        Duration::from_secs(20),
        || async {
            health(&ep, "catalog-yield", true)
                .await
                .get(Y1)
                .is_some_and(|e| e["Service"]["Address"] == "10.12.0.1")
        },
    )
    .await;
    println!("other owner gone -> y1 back in the catalog: {took:?}");
    assert!(old.state().is_registered(), "{}", old.state());
    drop(taker);
}

/// Both processes on one agent, with the same service ID: the one that yielded the id must
/// neither remove the new owner's entry nor, when its own heartbeat's check is gone (an agent that
/// restarted without its state, or reaped the entry) and it registers its lease's instances
/// again, write its old address over the new owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yielded_instance_is_not_registered_again_over_the_new_owner() {
    const T1: &str = "registry/registry/catalog-over/t1";
    const T2: &str = "registry/registry/catalog-over/t2";
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let first = mirrored(&ep).await;
    let old = first
        .register(Instance::new("catalog-over", "t1").addr("10.13.0.1:80"))
        .await
        .unwrap();
    let mine = first
        .register(Instance::new("catalog-over", "t2").addr("10.13.0.2:80"))
        .await
        .unwrap();
    until("both passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-over", true).await.len() == 2
    })
    .await;
    let first_lease = lease_of(&mine);
    let second = mirrored(&ep).await;
    let new = second
        .register_with(
            Instance::new("catalog-over", "t1").addr("10.13.0.9:80"),
            RegisterOptions::new().takeover(true),
        )
        .await
        .unwrap();
    new.registered().await.unwrap();
    let second_lease = lease_of(&new);
    until(
        "the first process yields t1",
        Duration::from_secs(15),
        || async { matches!(old.state(), RegistrationState::Conflict { .. }) },
    )
    .await;
    let at_new_owner = |e: &Value| {
        e["Address"] == "10.13.0.9" && e["Meta"]["registry_lease"] == second_lease.as_str()
    };
    // Yielding leaves the new owner's entry alone.
    sleep(Duration::from_secs(3)).await;
    let t1 = agent_service(&ep, T1).await.expect("t1 at the agent");
    assert!(at_new_owner(&t1), "{t1}");

    // The first process's heartbeat check disappears from the agent: its next heartbeat
    // registers its lease's entries again.
    let lease_entry = format!("registry-lease-{first_lease}");
    let (status, body) = consul_api::http(
        &ep,
        "PUT",
        &format!("/v1/agent/service/deregister/{lease_entry}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let took = until(
        "the first process's lease entry back",
        Duration::from_secs(10),
        || async { agent_service(&ep, &lease_entry).await.is_some() },
    )
    .await;
    println!("lease entry gone -> registered again: {took:?}");
    sleep(Duration::from_secs(1)).await;
    let t1 = agent_service(&ep, T1).await.expect("t1 at the agent");
    assert!(
        at_new_owner(&t1),
        "the old owner wrote over the new one: {t1}"
    );
    let passing = health(&ep, "catalog-over", true).await;
    assert_eq!(
        passing.keys().collect::<Vec<_>>(),
        vec![T1, T2],
        "{passing:?}"
    );
}

/// An agent answer the mirror cannot use (here the TTL of a session created without one: the
/// lease of an instance another handle wrote) is a failure, counted, not dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_mirror_cannot_use_is_counted_not_dropped() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    // No checks either: a session created with the default ones needs the node's serfHealth
    // check, which a just-started agent may not have registered yet (a 500 seen in CI).
    let (status, body) = consul_api::http(
        &ep,
        "PUT",
        "/v1/session/create",
        r#"{"Name":"no-ttl","Checks":[],"NodeChecks":[]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    let session = session["ID"].as_str().unwrap().to_owned();
    let (_, info) = get(&ep, &format!("/v1/session/info/{session}")).await;
    assert_eq!(info[0]["TTL"], "", "a session without a TTL: {info}");
    let mirror = CatalogMirror::start(&ConsulBuilder::new().address(&ep)).unwrap();
    mirror.observe(&RegistrationEvent::Written {
        lease: LeaseId::new(session),
        key: "registry/catalog-nottl/n1".into(),
        instance: Arc::new(Instance::new("catalog-nottl", "n1").addr("10.14.0.1:80")),
    });
    mirror.settle().await;
    until("the failure counted", Duration::from_secs(5), || async {
        mirror.counts().failures >= 1
    })
    .await;
    let counts = mirror.counts();
    assert_eq!(counts.registered, 0, "{counts:?}");
    assert_eq!(counts.unreadable, 1, "the TTL it could not use: {counts:?}");
    assert!(
        agent_service(&ep, "registry/registry/catalog-nottl/n1")
            .await
            .is_none()
    );
}

/// After an agent outage, what piled up for the agent is one operation per service ID and one
/// heartbeat per lease, removals first: a deregistration made during the outage reaches the
/// agent at once, not behind every heartbeat and update made meanwhile, and each instance ends
/// at its latest state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_agent_outage_removals_go_first_and_the_backlog_is_one_per_service() {
    let Some(consul) = agent().await else { return };
    let ep = consul.endpoint.clone();
    let builder = ConsulBuilder::new()
        .address(&ep)
        .request_timeout(Duration::from_secs(1));
    let mirror = CatalogMirror::start(&builder).unwrap();
    let lease = builder
        .clone()
        .connect()
        .await
        .unwrap()
        .grant(TTL)
        .await
        .unwrap();
    let key = |i: usize| format!("registry/catalog-backlog/b{i}");
    let id = |i: usize| format!("registry/registry/catalog-backlog/b{i}");
    let written = |i: usize, v: usize| RegistrationEvent::Written {
        lease: lease.id.clone(),
        key: key(i),
        instance: Arc::new(
            Instance::new("catalog-backlog", format!("b{i}"))
                .addr(format!("10.15.0.{i}:80"))
                .version(format!("v{v}")),
        ),
    };
    mirror.observe(&RegistrationEvent::LeaseGranted {
        lease: lease.id.clone(),
        ttl: lease.ttl,
    });
    for i in 0..5 {
        mirror.observe(&written(i, 0));
    }
    mirror.settle().await;
    until("five passing", Duration::from_secs(10), || async {
        health(&ep, "catalog-backlog", true).await.len() == 5
    })
    .await;

    // The agent stops answering; meanwhile the registry beats, updates, deregisters.
    docker(&["pause", consul.container.id()]);
    let kept_alive = RegistrationEvent::KeptAlive {
        lease: lease.id.clone(),
    };
    for _ in 0..50_000 {
        mirror.observe(&kept_alive);
    }
    for v in 1..=1000 {
        for i in 0..5 {
            mirror.observe(&written(i, v));
        }
    }
    mirror.observe(&RegistrationEvent::Removed { key: key(0) });
    sleep(Duration::from_millis(500)).await;
    docker(&["unpause", consul.container.id()]);

    let took = until("b0 gone from the agent", Duration::from_secs(5), || async {
        agent_service(&ep, &id(0)).await.is_none()
    })
    .await;
    println!("agent back -> the deregistration made during the outage done: {took:?}");
    until(
        "the others at their latest version",
        Duration::from_secs(10),
        || async {
            let all = health(&ep, "catalog-backlog", true).await;
            all.len() == 4
                && (1..5).all(|i| {
                    all.get(&id(i))
                        .is_some_and(|e| e["Service"]["Meta"]["version"] == "v1000")
                })
        },
    )
    .await;
    let counts = mirror.counts();
    println!("counts: {counts:?}");
    // What waited was one heartbeat and one entry per service ID: every other event merged.
    assert!(counts.coalesced >= 50_000 + 5 * 1000 - 10, "{counts:?}");
    assert!(counts.requests < 100, "{counts:?}");
}

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
