//! The DNS source against a real Consul: it follows the SRV records Consul's DNS interface serves
//! for services registered through Consul's HTTP API (the independent writer here).
//!
//! Consul's DNS port (8600, UDP and TCP) is reached at the container's address on the Docker
//! bridge, which the machine (and a chroot sharing its network) reaches directly.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance_tests::consul_api::http;
use conformance_tests::engine::until_online;
use conformance_tests::testbed::{self, Consul, ConsulOptions};
use registry_dns::{DnsSource, DnsSourceBuilder, META_NAME, META_PRIORITY, instance_id};
use registry_engine::{BACKEND_SOURCE, DEFAULT_WEIGHT, Directory, Instance, Registry};
use registry_memory::MemoryBackend;
use tokio::time::sleep;

/// The source's name in the tests' directories.
const SOURCE: &str = "consul-dns";
/// The floor the tests poll at (Consul's DNS answers with TTL 0, so the floor applies).
const FLOOR: Duration = Duration::from_secs(1);
/// What a change may take on top of the floor: one query and the directory's update.
const SLACK: Duration = Duration::from_secs(2);
/// The tests' resolver timeout: one query, with the resolver's one retry, takes at most twice that.
const QUERY_TIMEOUT: Duration = Duration::from_millis(700);

/// A Consul agent of this test's own, and the address of its DNS interface.
async fn consul() -> Option<(Consul, SocketAddr)> {
    let consul = match testbed::start_consul(ConsulOptions::default()).await {
        Ok(c) => c,
        Err(reason) => return testbed::unavailable("consul", &reason),
    };
    match consul.bridge_dns() {
        Ok(dns) => Some((consul, dns)),
        Err(reason) => testbed::unavailable("consul's DNS interface", &reason),
    }
}

/// Registers a service instance with Consul's agent API.
async fn register(consul: &Consul, service: &str, id: &str, addr: &str, port: u16) {
    conformance_tests::consul_api::register_service(&consul.endpoint, service, id, addr, port)
        .await;
}

async fn deregister(consul: &Consul, id: &str) {
    let (status, text) = http(
        &consul.endpoint,
        "PUT",
        &format!("/v1/agent/service/deregister/{id}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "deregister {id}: {text}");
}

/// `ip:port` of every instance of `service` in Consul's catalog (the truth).
async fn catalog(consul: &Consul, service: &str) -> BTreeSet<String> {
    let (status, text) = http(
        &consul.endpoint,
        "GET",
        &format!("/v1/catalog/service/{service}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "catalog: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("catalog JSON");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["ServiceAddress"].as_str().unwrap(),
                e["ServicePort"]
            )
        })
        .collect()
}

/// `ip:port` of every instance the directory shows.
fn shown(dir: &Directory, service: &str) -> BTreeSet<String> {
    dir.all(service)
        .iter()
        .flat_map(|i| i.addrs.clone())
        .collect()
}

fn source(ns: SocketAddr) -> DnsSourceBuilder {
    DnsSource::builder()
        .nameserver(ns)
        .ttl_floor(FLOOR)
        .query_timeout(QUERY_TIMEOUT)
        .attempts(1)
        .backoff(Duration::from_millis(200), Duration::from_secs(2))
}

/// The id of an instance Consul serves under a service address: its target is
/// `<hex of the IPv4 address>.addr.dc1.consul.`.
fn consul_id(ip: [u8; 4], port: u16) -> String {
    let hex: String = ip.iter().map(|b| format!("{b:02x}")).collect();
    instance_id(&format!("{hex}.addr.dc1.consul."), port)
}

/// Waits until `cond` holds, polling; returns how long that took.
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// What `dig` says (ports of the SRV records), when it is installed: a second opinion.
fn dig_ports(ns: SocketAddr, name: &str) -> Option<BTreeSet<u16>> {
    let out = std::process::Command::new("dig")
        .args([
            &format!("@{}", ns.ip()),
            "-p",
            &ns.port().to_string(),
            name,
            "SRV",
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_srv_records_of_consuls_dns() {
    let Some((consul, ns)) = consul().await else {
        return;
    };
    register(&consul, "web", "web-1", "10.1.0.1", 8080).await;
    register(&consul, "web", "web-2", "10.1.0.2", 8081).await;
    let dir = Directory::new();
    let dns = source(ns)
        .follow("web", "web.service.consul.")
        .follow("ghost", "ghost.service.consul.")
        .start(&dir, SOURCE, -5)
        .expect("start the DNS source");

    let (w1, w2) = (
        consul_id([10, 1, 0, 1], 8080),
        consul_id([10, 1, 0, 2], 8081),
    );
    let first = until_online(&dir, "web", &[&w1, &w2], Duration::from_secs(10)).await;
    eprintln!("both instances shown {first:?} after the source started");

    // What the catalog says is what the directory shows; dig agrees on the ports.
    let truth = catalog(&consul, "web").await;
    assert_eq!(
        truth,
        BTreeSet::from(["10.1.0.1:8080".to_owned(), "10.1.0.2:8081".to_owned()])
    );
    assert_eq!(shown(&dir, "web"), truth);
    if let Some(ports) = dig_ports(ns, "web.service.consul") {
        assert_eq!(ports, BTreeSet::from([8080, 8081]), "dig's SRV ports");
    }
    let snap = dir.snapshot("web");
    for id in [&w1, &w2] {
        assert_eq!(snap.source_of(id), Some(SOURCE));
        let inst = &snap.all()[id];
        assert_eq!(inst.metadata[META_NAME], "web.service.consul.");
        assert_eq!(inst.metadata[META_PRIORITY], "1");
        // Consul's SRV weight is 1: our default weight.
        assert_eq!(inst.weight, DEFAULT_WEIGHT);
    }
    assert_eq!(snap.all()[&w1].addrs, ["10.1.0.1:8080"]);
    assert!(!snap.is_stale());

    // Routing covers both.
    let owners: BTreeSet<String> = (0..2000)
        .map(|k| {
            dir.find("web", format!("k{k}"))
                .expect("an owner")
                .id
                .clone()
        })
        .collect();
    assert_eq!(owners, BTreeSet::from([w1.clone(), w2.clone()]));

    // A name DNS does not know: empty, synced, and not stale.
    let ghost = dir.snapshot("ghost");
    assert!(ghost.is_synced(), "the negative answer was published");
    assert!(ghost.all().is_empty());
    assert!(!ghost.is_stale(), "NXDOMAIN is an answer, not a failure");
    let status = dns.status("ghost").expect("ghost is followed");
    assert_eq!(status.consecutive_errors, 0, "{status:?}");
    assert_eq!(status.next_query_in, FLOOR, "TTL 0: the floor");
    assert!(dns.counts().empty_answers >= 1);

    // Deregistered in Consul: gone from the directory within the floor and a query.
    deregister(&consul, "web-2").await;
    let gone = until_online(&dir, "web", &[&w1], FLOOR + SLACK).await;
    eprintln!("deregistered in consul -> gone from the directory in {gone:?}");
    // Registered: shown within the same bound.
    register(&consul, "web", "web-3", "10.1.0.3", 9090).await;
    let w3 = consul_id([10, 1, 0, 3], 9090);
    let came = until_online(&dir, "web", &[&w1, &w3], FLOOR + SLACK).await;
    eprintln!("registered in consul -> shown in the directory in {came:?}");
    assert_eq!(shown(&dir, "web"), catalog(&consul, "web").await);

    let c = dns.counts();
    assert_eq!(c.errors, 0, "{c:?}");
    assert!(
        c.changes >= 4,
        "web: first, -web-2, +web-3; ghost: first: {c:?}"
    );
    assert_eq!(c.skipped_records, 0, "{c:?}");
    // Polling at the floor, not faster: two names, some seconds.
    let status = dns.status("web").unwrap();
    assert_eq!(
        status.last_ttl,
        Some(Duration::ZERO),
        "Consul's default TTL"
    );
    assert_eq!(status.instances, 2);
    assert!(status.revision >= 3, "{status:?}");

    // Dropped: polling stops, what was published stays.
    drop(dns);
    deregister(&consul, "web-1").await;
    sleep(FLOOR + SLACK).await;
    assert_eq!(dir.get("web").len(), 2, "nobody follows the name any more");
}

/// Unpauses the container if the test ends while it is paused.
struct Unpause(String);

impl Drop for Unpause {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["unpause", &self.0])
            .output();
    }
}

fn docker(args: &[&str]) {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_makes_the_view_stale_not_empty() {
    let Some((consul, ns)) = consul().await else {
        return;
    };
    register(&consul, "web", "web-1", "10.1.0.1", 8080).await;
    let dir = Directory::new();
    let dns = source(ns)
        .follow("web", "web.service.consul.")
        .start(&dir, SOURCE, -5)
        .expect("start the DNS source");
    let w1 = consul_id([10, 1, 0, 1], 8080);
    until_online(&dir, "web", &[&w1], Duration::from_secs(10)).await;

    // Paused: queries time out.
    let id = consul.container.id().to_owned();
    docker(&["pause", &id]);
    let _unpause = Unpause(id.clone());
    // Within the floor, a query that times out (the resolver's retry included), and the slack.
    let went = until(
        FLOOR + QUERY_TIMEOUT * 2 + SLACK,
        "the view goes stale",
        || dir.is_stale("web"),
    )
    .await;
    eprintln!("server paused -> view stale in {went:?}");
    assert_eq!(dir.get("web").len(), 1, "the last instances are kept");
    assert_eq!(dir.find("web", "k").map(|i| i.id.clone()), Some(w1.clone()));

    // Retried with a growing delay: 200 ms, 400, 800, 1.6 s, then at most 2 s (each less up to
    // half, at random), each after a query that times out.
    let mut delays = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        let s = dns.status("web").unwrap();
        if s.consecutive_errors > 0 && delays.last().map(|(n, _)| *n) != Some(s.consecutive_errors)
        {
            delays.push((s.consecutive_errors, s.next_query_in));
        }
        sleep(Duration::from_millis(20)).await;
    }
    eprintln!("retry delays while paused: {delays:?}");
    assert!(delays.len() >= 3, "{delays:?}");
    for (n, d) in &delays {
        let ceiling =
            Duration::from_millis(200 * (1 << (n - 1).min(4))).min(Duration::from_secs(2));
        assert!(*d <= ceiling && *d >= ceiling / 2, "retry {n}: {d:?}");
    }
    assert!(delays.last().unwrap().1 > delays[0].1 * 2, "{delays:?}");
    let s = dns.status("web").unwrap();
    assert!(s.last_error.is_some(), "{s:?}");
    let c = dns.counts();
    assert!(c.errors >= 3, "{c:?}");
    assert!(
        c.errors < 15,
        "backed off: not one query per timeout ({c:?})"
    );
    assert_eq!(dir.get("web").len(), 1, "still kept");
    assert!(dir.is_stale("web"));

    // Back: fresh again within the longest retry delay, a timed-out query and a poll.
    let t1 = Instant::now();
    docker(&["unpause", &id]);
    let back = until(
        Duration::from_secs(2) + QUERY_TIMEOUT * 2 + SLACK,
        "fresh again",
        || !dir.is_stale("web"),
    )
    .await;
    eprintln!(
        "server unpaused -> view fresh in {back:?} ({:?} since unpause)",
        t1.elapsed()
    );
    assert_eq!(dir.get("web").len(), 1);
    assert_eq!(dns.status("web").unwrap().consecutive_errors, 0);
    // And follows changes again.
    register(&consul, "web", "web-2", "10.1.0.2", 8081).await;
    let w2 = consul_id([10, 1, 0, 2], 8081);
    until_online(&dir, "web", &[&w1, &w2], FLOOR + SLACK).await;
}

/// The engine with the memory backend: one directory fed by our Discovery and by the DNS source
/// shows the union, each instance marked with its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_fed_by_our_backend_and_by_dns_shows_the_union() {
    let Some((consul, ns)) = consul().await else {
        return;
    };
    register(&consul, "web", "legacy-1", "10.1.0.1", 8080).await;
    let registry = Registry::new(Arc::new(MemoryBackend::new())).expect("registry");
    let discovery = registry.discover("web").await.expect("discover web");
    let dir = discovery.directory();
    let ours = registry
        .register(Instance::new("web", "ours-1").addr("10.2.0.1:80"))
        .await
        .expect("register ours-1");
    let _dns = source(ns)
        .follow("web", "web.service.consul.")
        .start(dir, SOURCE, -5)
        .expect("start the DNS source");
    let legacy = consul_id([10, 1, 0, 1], 8080);
    until_online(dir, "web", &[&legacy, "ours-1"], Duration::from_secs(10)).await;
    let snap = dir.snapshot("web");
    assert_eq!(snap.source_of("ours-1"), Some(BACKEND_SOURCE));
    assert_eq!(snap.source_of(&legacy), Some(SOURCE));
    assert_eq!(snap.collisions(), 0);
    let owners: BTreeSet<String> = (0..2000)
        .map(|k| {
            dir.find("web", format!("k{k}"))
                .expect("an owner")
                .id
                .clone()
        })
        .collect();
    assert_eq!(
        owners,
        BTreeSet::from([legacy.clone(), "ours-1".to_owned()])
    );

    // The migration: the instance registers with us, the old registration goes.
    ours.deregister().await.expect("deregister ours-1");
    until_online(dir, "web", &[&legacy], Duration::from_secs(5)).await;
    deregister(&consul, "legacy-1").await;
    until_online(dir, "web", &[], FLOOR + SLACK).await;
    assert!(!dir.is_stale("web"));
}

/// Records whose target has no address, or whose address lookup fails, do not hold up the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_cannot_become_instances_are_skipped_and_counted() {
    let Some((consul, ns)) = consul().await else {
        return;
    };
    register(&consul, "web", "web-1", "10.1.0.1", 8080).await;
    // Service addresses that are host names: Consul's SRV target is the name itself. `.invalid`
    // never resolves (NXDOMAIN); `example.org` goes to Consul's recursors, of which a -dev agent
    // has none, so the lookup fails.
    register(&consul, "web", "odd-nx", "nowhere.invalid", 9000).await;
    register(&consul, "web", "odd-fail", "db.example.org", 9001).await;
    let dir = Directory::new();
    let dns = source(ns)
        .follow("web", "web.service.consul.")
        .start(&dir, SOURCE, -5)
        .expect("start the DNS source");
    let w1 = consul_id([10, 1, 0, 1], 8080);
    until_online(&dir, "web", &[&w1], Duration::from_secs(10)).await;
    // Consul lists three records; two cannot become instances, in every answer.
    if let Some(ports) = dig_ports(ns, "web.service.consul") {
        assert_eq!(ports, BTreeSet::from([8080, 9000, 9001]), "dig's SRV ports");
    }
    sleep(FLOOR * 3).await;
    let c = dns.counts();
    eprintln!("{c:?}");
    assert!(c.answers >= 3, "{c:?}");
    assert!(c.skipped_records >= 2 * (c.answers - 1), "{c:?}");
    assert!(c.target_errors >= c.answers - 1, "{c:?}");
    assert_eq!(c.errors, 0, "the SRV answers came: {c:?}");
    assert_eq!(dir.get("web").len(), 1);
    assert!(!dir.is_stale("web"), "a target's failure is not the name's");
    // Changes to the other records still come through.
    register(&consul, "web", "web-2", "10.1.0.2", 8081).await;
    let w2 = consul_id([10, 1, 0, 2], 8081);
    until_online(&dir, "web", &[&w1, &w2], FLOOR + SLACK).await;
}
