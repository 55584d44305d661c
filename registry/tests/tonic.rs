//! `registry::tonic` against real tonic servers on loopback, registered through the library on the
//! memory backend: the balanced channel follows registrations, removals and address changes; the
//! keyed transport sends a key's calls to its owner and fails over to the next ring member.
#![cfg(all(feature = "tonic", feature = "memory"))]

#[path = "../examples/tonic_routing.rs"]
#[allow(unreachable_pub)]
mod example;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use example::who::{self, Mode, Running};
use registry::engine::{Discovery, Instance, Registration, Registry, Selector};
use registry::memory::MemoryBackend;
use registry::tonic::{Channels, KEY_HEADER, OutlierPolicy, RetryPolicy};
use tonic::Code;

/// The example's walk-through is a test too.
#[test]
fn the_example_runs() {
    example::main().expect("the example runs");
}

struct Bed {
    servers: Registry,
    discovery: Discovery,
    running: BTreeMap<String, Running>,
    regs: BTreeMap<String, Registration>,
}

impl Bed {
    async fn new(ids: &[&str]) -> Bed {
        let backend = Arc::new(MemoryBackend::new());
        let servers = Registry::new(backend.clone()).unwrap();
        let client = Registry::new(backend).unwrap();
        let discovery = client.discover("who").await.unwrap();
        let mut bed = Bed {
            servers,
            discovery,
            running: BTreeMap::new(),
            regs: BTreeMap::new(),
        };
        for id in ids {
            bed.start(id).await;
        }
        bed.wait_for(|ids| ids.len() == bed.running.len()).await;
        bed
    }

    /// Starts server `id` and registers it.
    async fn start(&mut self, id: &str) {
        self.start_weighted(id, registry::engine::DEFAULT_WEIGHT)
            .await;
    }

    /// Starts server `id` and registers it with `weight`.
    async fn start_weighted(&mut self, id: &str, weight: u32) {
        let server = who::serve(id).await.unwrap();
        let inst = Instance::new("who", id)
            .addr(server.addr.to_string())
            .weight(weight);
        let reg = self.servers.register(inst).await.unwrap();
        self.running.insert(id.to_owned(), server);
        self.regs.insert(id.to_owned(), reg);
    }

    fn dir(&self) -> &registry::Directory {
        self.discovery.directory()
    }

    /// Waits until the client's directory lists ids that satisfy `ok`.
    async fn wait_for(&self, ok: impl Fn(&[String]) -> bool) {
        let t0 = Instant::now();
        loop {
            let ids: Vec<String> = self.dir().get("who").iter().map(|i| i.id.clone()).collect();
            if ok(&ids) {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "directory: {ids:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Calls `n` times through `transport`, counting answers by server.
async fn spread<T>(transport: &T, n: usize) -> BTreeMap<String, usize>
where
    T: Clone
        + tonic::client::GrpcService<
            tonic::body::Body,
            ResponseBody = tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
        >,
{
    let mut by = BTreeMap::new();
    for i in 0..n {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            who::call(transport.clone(), &format!("k{i}")),
        )
        .await
        .expect("answered in time")
        .expect("call");
        *by.entry(reply.server).or_default() += 1;
    }
    by
}

/// Calls through `transport` until `server` answers (or 5 s pass).
async fn until_reached<T>(transport: &T, server: &str) -> usize
where
    T: Clone
        + tonic::client::GrpcService<
            tonic::body::Body,
            ResponseBody = tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
        >,
{
    let t0 = Instant::now();
    let mut calls = 0;
    loop {
        calls += 1;
        let reply = who::call(transport.clone(), &format!("k{calls}"))
            .await
            .expect("call");
        if reply.server == server {
            return calls;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{server} never answered"
        );
    }
}

/// Waits until a change the directory shows has gone through the channel's feeding task to the
/// balancer (asynchronous, so not at once on a loaded machine): calls until 20 in a row are not
/// answered by `server` (5 s at most). The assertions that follow make many more calls.
async fn settle_away<T>(transport: &T, server: &str)
where
    T: Clone
        + tonic::client::GrpcService<
            tonic::body::Body,
            ResponseBody = tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
        >,
{
    let t0 = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 20 {
        let reply = who::call(transport.clone(), "settle").await.expect("call");
        in_a_row = if reply.server == server {
            0
        } else {
            in_a_row + 1
        };
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{server} still answers"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_a_removed_instance_gets_no_more_calls_and_a_new_one_starts_getting_them() {
    let mut bed = Bed::new(&["w1", "w2"]).await;
    let channel = Channels::new(bed.dir(), "who").balanced();
    let first = spread(&channel, 40).await;
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["w1", "w2"],
        "both serve: {first:?}"
    );

    bed.start("w3").await;
    bed.wait_for(|ids| ids.contains(&"w3".to_owned())).await;
    until_reached(&channel, "w3").await;

    bed.regs.remove("w1").unwrap().deregister().await.unwrap();
    bed.wait_for(|ids| !ids.contains(&"w1".to_owned())).await;
    settle_away(&channel, "w1").await;
    let after = spread(&channel, 60).await;
    assert!(!after.contains_key("w1"), "w1 left but answered: {after:?}");
    assert_eq!(after.values().sum::<usize>(), 60);
    // w1's server is still up: only the directory took it out.
    assert!(bed.running.contains_key("w1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_an_instance_taken_offline_gets_no_more_calls() {
    let bed = Bed::new(&["w1", "w2"]).await;
    let channel = Channels::new(bed.dir(), "who").balanced();
    until_reached(&channel, "w2").await;
    bed.regs["w2"].set_online(false).await.unwrap();
    bed.wait_for(|ids| ids == ["w1"]).await;
    settle_away(&channel, "w2").await;
    let after = spread(&channel, 40).await;
    assert_eq!(after.keys().collect::<Vec<_>>(), ["w1"], "{after:?}");
}

/// A change of an instance's details (here its address) replaces its endpoint: calls for that
/// instance go to the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_a_changed_address_is_followed() {
    let mut bed = Bed::new(&["w1", "w2"]).await;
    // A spare server, not registered: only reachable if an instance points at it.
    let spare = who::serve("spare").await.unwrap();
    let channel = Channels::new(bed.dir(), "who").balanced();
    until_reached(&channel, "w2").await;

    let to = spare.addr.to_string();
    bed.regs["w2"]
        .update(|i| i.addrs = vec![to.clone()])
        .await
        .unwrap();
    bed.wait_for(|_| bed.dir().get("who").iter().any(|i| i.addrs == [to.clone()]))
        .await;
    settle_away(&channel, "w2").await;
    let after = spread(&channel, 60).await;
    assert!(
        !after.contains_key("w2"),
        "old address still called: {after:?}"
    );
    assert!(
        after.contains_key("spare"),
        "new address not called: {after:?}"
    );
    bed.running.remove("w2").unwrap().stop().await;
}

/// Only the selected instances get calls, and the selection follows metadata changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_over_a_selection() {
    let bed = Bed::new(&["w1", "w2", "w3"]).await;
    for id in ["w1", "w3"] {
        bed.regs[id]
            .update(|i| {
                i.metadata.insert("track".into(), "canary".into());
            })
            .await
            .unwrap();
    }
    bed.wait_for(|_| {
        bed.dir()
            .get("who")
            .iter()
            .filter(|i| i.metadata.contains_key("track"))
            .count()
            == 2
    })
    .await;
    let canaries = Selector::new().meta("track", "canary").on(bed.dir(), "who");
    let channel = Channels::selected(canaries.clone()).balanced();
    let by = spread(&channel, 40).await;
    assert_eq!(by.keys().collect::<Vec<_>>(), ["w1", "w3"], "{by:?}");

    let keyed = Channels::selected(canaries).keyed_by_header(KEY_HEADER);
    for i in 0..20 {
        let key = format!("key-{i}");
        let reply = who::call(keyed.clone(), &key).await.unwrap();
        assert!(reply.server == "w1" || reply.server == "w3", "{reply:?}");
    }

    // w3 leaves the canary track: it stops getting calls.
    bed.regs["w3"]
        .update(|i| {
            i.metadata.remove("track");
        })
        .await
        .unwrap();
    bed.wait_for(|_| {
        bed.dir()
            .get("who")
            .iter()
            .filter(|i| i.metadata.contains_key("track"))
            .count()
            == 1
    })
    .await;
    settle_away(&channel, "w3").await;
    let by = spread(&channel, 40).await;
    assert_eq!(by.keys().collect::<Vec<_>>(), ["w1"], "{by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_a_keys_calls_all_reach_its_owner() {
    let mut bed = Bed::new(&["w1", "w2", "w3"]).await;
    let keyed = Channels::new(bed.dir(), "who").keyed_by_header(KEY_HEADER);
    let keys: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let mut owners = BTreeMap::new();
    for key in &keys {
        let owner = bed.dir().find("who", key).unwrap().id.clone();
        for _ in 0..4 {
            let reply = who::call(keyed.clone(), key).await.unwrap();
            assert_eq!(reply.server, owner, "{key}");
            assert_eq!(&reply.key, key);
        }
        owners.insert(key.clone(), owner);
    }
    let distinct: std::collections::BTreeSet<_> = owners.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "30 keys spread over the three: {owners:?}"
    );
    assert_eq!(keyed.channel_count(), 3);

    // A new instance takes the keys the ring now gives it, and only those.
    bed.start("w4").await;
    bed.wait_for(|ids| ids.len() == 4).await;
    let mut moved = 0;
    for key in &keys {
        let owner = bed.dir().find("who", key).unwrap().id.clone();
        if owner == "w4" {
            moved += 1;
        } else {
            assert_eq!(
                owner, owners[key],
                "{key} moved to {owner}, not to the new one"
            );
        }
        let reply = who::call(keyed.clone(), key).await.unwrap();
        assert_eq!(reply.server, owner, "{key}");
    }
    assert!(moved > 0, "w4 owns none of 30 keys");

    // A removed one gets no more calls; its channel is dropped.
    bed.regs.remove("w2").unwrap().deregister().await.unwrap();
    bed.wait_for(|ids| !ids.contains(&"w2".to_owned())).await;
    for key in &keys {
        let reply = who::call(keyed.clone(), key).await.unwrap();
        assert_ne!(reply.server, "w2", "{key}");
        assert_eq!(reply.server, bed.dir().find("who", key).unwrap().id);
    }
    let t0 = Instant::now();
    while keyed.channel_count() != 3 {
        assert!(t0.elapsed() < Duration::from_secs(5), "w2's channel kept");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A key whose owner is `owner` among `ids`.
fn key_owned_by(bed: &Bed, owner: &str) -> String {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| bed.dir().find("who", k).unwrap().id == owner)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_fails_over_to_the_next_ring_member_when_the_owner_is_down() {
    let mut bed = Bed::new(&["w1", "w2", "w3"]).await;
    let keyed = Channels::new(bed.dir(), "who").keyed_by_header(KEY_HEADER);
    let key = key_owned_by(&bed, "w1");
    let next = bed.dir().find_n(2, "who", &key)[1].id.clone();
    assert_eq!(who::call(keyed.clone(), &key).await.unwrap().server, "w1");

    // Stopped, registration kept: connection refused, then the next ring member.
    bed.running.remove("w1").unwrap().stop().await;
    assert!(bed.dir().get("who").iter().any(|i| i.id == "w1"));
    for _ in 0..3 {
        let reply = who::call(keyed.clone(), &key).await.unwrap();
        assert_eq!(reply.server, next);
    }
    // Three refusals in a row: w1 is ejected, and its keys go to the next member at once, even
    // with one attempt a call (clones share the outlier state).
    assert!(keyed.is_ejected("w1"));
    let reply = who::call(keyed.clone().attempts(1), &key).await.unwrap();
    assert_eq!(reply.server, next);
    // Without failover and without outlier detection the caller sees the owner's failure.
    let plain = Channels::new(bed.dir(), "who")
        .keyed_by_header(KEY_HEADER)
        .outliers(OutlierPolicy::off())
        .attempts(1);
    let once = who::call(plain, &key).await;
    assert_eq!(once.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_fails_over_on_unavailable_but_not_on_other_statuses() {
    let bed = Bed::new(&["w1", "w2", "w3"]).await;
    // Outlier detection off: this is about each call's failover alone.
    let keyed = Channels::new(bed.dir(), "who")
        .keyed_by_header(KEY_HEADER)
        .outliers(OutlierPolicy::off());
    let key = key_owned_by(&bed, "w2");
    let ring: Vec<String> = bed
        .dir()
        .find_n(3, "who", &key)
        .iter()
        .map(|i| i.id.clone())
        .collect();
    bed.running["w2"].set_mode(Mode::Unavailable);
    assert_eq!(
        who::call(keyed.clone(), &key).await.unwrap().server,
        ring[1]
    );

    // Two attempts by default: with the next one unavailable too, the caller gets the status.
    bed.running[&ring[1]].set_mode(Mode::Unavailable);
    let err = who::call(keyed.clone(), &key).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains(&ring[1]), "{err:?}");
    // Three attempts reach the third.
    let reply = who::call(keyed.clone().attempts(3), &key).await.unwrap();
    assert_eq!(reply.server, ring[2]);

    // UNAVAILABLE not in the retry codes: no failover.
    let strict = keyed.clone().retry_codes([Code::ResourceExhausted]);
    let err = who::call(strict, &key).await.unwrap_err();
    assert!(err.message().contains("w2"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_per_attempt_timeout() {
    let bed = Bed::new(&["w1", "w2", "w3"]).await;
    let keyed = Channels::new(bed.dir(), "who")
        .keyed_by_header(KEY_HEADER)
        .timeout(Duration::from_millis(300))
        // A timed-out attempt may have been received: failed over for idempotent calls only
        // (the default is tonic_resend.rs's).
        .retry_policy(RetryPolicy::Idempotent);
    let key = key_owned_by(&bed, "w3");
    let next = bed.dir().find_n(2, "who", &key)[1].id.clone();
    bed.running["w3"].set_mode(Mode::Slow(Duration::from_secs(30)));

    let t0 = Instant::now();
    let reply = who::call(keyed.clone(), &key).await.unwrap();
    assert_eq!(reply.server, next);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // The timed-out owner is ejected (clones share that): the next call goes to the next
    // member at once. Without outlier detection and failover, the caller sees the timeout.
    assert!(keyed.is_ejected("w3"));
    let reply = who::call(keyed.clone().attempts(1), &key).await.unwrap();
    assert_eq!(reply.server, next);
    let plain = Channels::new(bed.dir(), "who")
        .keyed_by_header(KEY_HEADER)
        .timeout(Duration::from_millis(300))
        .outliers(OutlierPolicy::off())
        .attempts(1);
    let t0 = Instant::now();
    let err = who::call(plain, &key).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_without_a_key_or_without_instances() {
    let bed = Bed::new(&["w1"]).await;
    let keyed = Channels::new(bed.dir(), "who").keyed_by_header("x-other-header");
    let err = who::call(keyed, "k").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let nobody = Channels::new(bed.dir(), "nobody").keyed_by_header(KEY_HEADER);
    let err = who::call(nobody, "k").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("nobody"), "{err:?}");
}

/// TLS per endpoint: each server has its own certificate name, which its registration carries in
/// its metadata; the endpoint closure reads it. A client that names the wrong server is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_and_keyed_over_tls_with_per_instance_names() {
    use conformance_tests::pki::TestCa;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

    let ca = TestCa::new("tonic test CA");
    let backend = Arc::new(MemoryBackend::new());
    let servers = Registry::new(backend.clone()).unwrap();
    let client = Registry::new(backend).unwrap();
    let discovery = client.discover("who").await.unwrap();
    let dir = discovery.directory();
    let mut running = Vec::new();
    let mut regs = Vec::new();
    for id in ["t1", "t2"] {
        let name = format!("{id}.who.test");
        let issued = ca.server_cert(&[&name]);
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(&issued.cert, &issued.key));
        let server = who::serve_with(id, Some(tls)).await.unwrap();
        let inst = Instance::new("who", id)
            .addr(format!("https://{}", server.addr))
            .meta("tls-name", name);
        regs.push(servers.register(inst).await.unwrap());
        running.push(server);
    }
    let t0 = Instant::now();
    while dir.get("who").len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let ca_cert = Certificate::from_pem(&ca.pem);
    let tls_for = move |name_of: fn(&Instance) -> String| {
        let ca_cert = ca_cert.clone();
        move |inst: &Instance| {
            let tls = ClientTlsConfig::new()
                .ca_certificate(ca_cert.clone())
                .domain_name(name_of(inst));
            Endpoint::from_shared(inst.addrs[0].clone())?.tls_config(tls)
        }
    };
    let right = |i: &Instance| i.metadata["tls-name"].clone();
    let channel = Channels::new(dir, "who")
        .endpoint(tls_for(right))
        .balanced();
    let by = spread(&channel, 30).await;
    assert_eq!(by.keys().collect::<Vec<_>>(), ["t1", "t2"], "{by:?}");

    let keyed = Channels::new(dir, "who")
        .endpoint(tls_for(right))
        .keyed_by_header(KEY_HEADER);
    for i in 0..10 {
        let key = format!("user-{i}");
        let reply = who::call(keyed.clone(), &key).await.unwrap();
        assert_eq!(reply.server, dir.find("who", &key).unwrap().id);
    }

    // The wrong name: the handshake fails on every instance.
    let wrong = |_: &Instance| "someone-else.test".to_owned();
    let refused = Channels::new(dir, "who")
        .endpoint(tls_for(wrong))
        .keyed_by_header(KEY_HEADER);
    let err = who::call(refused, "user-1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    for s in running {
        s.stop().await;
    }
    drop(regs);
}

/// The same balanced and keyed calls with the registrations in a real etcd (the test bed's).
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_and_keyed_over_etcd() {
    use conformance_tests::testbed;
    let Some(endpoint) = testbed::shared_etcd() else {
        return;
    };
    let ns = testbed::fresh_namespace("tonic");
    let url = format!("etcd://{endpoint}/{ns}");
    let servers = Registry::new(registry::connect(&url).await.unwrap()).unwrap();
    let client = Registry::new(registry::connect(&url).await.unwrap()).unwrap();
    let discovery = client.discover("who").await.unwrap();
    let mut bed = Bed {
        servers,
        discovery,
        running: BTreeMap::new(),
        regs: BTreeMap::new(),
    };
    for id in ["e1", "e2", "e3"] {
        bed.start(id).await;
    }
    bed.wait_for(|ids| ids.len() == 3).await;

    let channel = Channels::new(bed.dir(), "who").balanced();
    let keyed = Channels::new(bed.dir(), "who").keyed_by_header(KEY_HEADER);
    until_reached(&channel, "e3").await;
    for i in 0..20 {
        let key = format!("user-{i}");
        let reply = who::call(keyed.clone(), &key).await.unwrap();
        assert_eq!(reply.server, bed.dir().find("who", &key).unwrap().id);
    }

    bed.regs.remove("e3").unwrap().deregister().await.unwrap();
    bed.wait_for(|ids| !ids.contains(&"e3".to_owned())).await;
    settle_away(&channel, "e3").await;
    let after = spread(&channel, 40).await;
    assert!(!after.contains_key("e3"), "{after:?}");
    for i in 0..20 {
        let key = format!("user-{i}");
        let reply = who::call(keyed.clone(), &key).await.unwrap();
        assert_ne!(reply.server, "e3");
    }
}

/// A balanced channel runs no task of its own: nothing outlives it, and a channel of a service
/// with no instance costs nothing until called.
#[tokio::test(flavor = "current_thread")]
async fn a_balanced_channel_runs_no_task() {
    let dir = registry::Directory::new();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let channel = Channels::new(&dir, "nobody")
        .balanced()
        .timeout(Duration::from_millis(50));
    let clone = channel.clone();
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), before);
    // A call with no instance waits up to the per-attempt timeout, then fails UNAVAILABLE.
    let t0 = Instant::now();
    let err = who::call(clone.clone(), "k").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(t0.elapsed() >= Duration::from_millis(50));
    drop((channel, clone));
    assert_eq!(metrics.num_alive_tasks(), before);
}

/// Weights 1:3 give calls 1:3 (weighted round robin: exactly, over whole rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_honours_weights() {
    let mut bed = Bed::new(&["w1"]).await;
    bed.start_weighted("w3", 300).await;
    bed.wait_for(|ids| ids.len() == 2).await;
    let channel = Channels::new(bed.dir(), "who").balanced();
    let by = spread(&channel, 4000).await;
    let (one, three) = (by["w1"], by["w3"]);
    eprintln!("weights 100:300 -> calls {one}:{three}");
    let ratio = three as f64 / one as f64;
    assert!((2.7..=3.3).contains(&ratio), "{by:?}");
}

/// A crashed instance (connections refused, registration kept until its lease ends) is ejected
/// at its first refusal and tried again after 1 s, 2 s, ...: under a storm of calls (8 callers,
/// 2 s, the default policy) it costs at most 0.1 % of them; an instance answering UNAVAILABLE is
/// ejected too, and gets calls again within its ejection once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_ejects_a_crashed_instance_and_takes_it_back() {
    let mut bed = Bed::new(&["w1", "w2", "w3"]).await;
    let channel = Channels::new(bed.dir(), "who").balanced();
    spread(&channel, 30).await;
    bed.running.remove("w2").unwrap().stop().await;
    assert!(bed.dir().get("who").iter().any(|i| i.id == "w2"));
    let until = Instant::now() + Duration::from_secs(2);
    let mut storm = Vec::new();
    for c in 0..8 {
        let channel = channel.clone();
        storm.push(tokio::spawn(async move {
            let (mut failed, mut ok, mut i) = (0u64, 0u64, 0u64);
            while Instant::now() < until {
                i += 1;
                match who::call(channel.clone(), &format!("k{c}-{i}")).await {
                    Ok(reply) => {
                        assert_ne!(reply.server, "w2");
                        ok += 1;
                    }
                    Err(_) => failed += 1,
                }
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
        "w2 crashed: {failed} of {} calls failed in 2 s ({:.3} %)",
        failed + ok,
        rate * 100.0
    );
    assert!(rate <= 0.001, "{failed} of {} calls failed", failed + ok);
    let channel = channel.outliers(OutlierPolicy {
        consecutive_failures: 3,
        base_ejection: Duration::from_millis(300),
        max_ejection: Duration::from_secs(2),
    });

    // An instance that answers UNAVAILABLE (overloaded) is ejected too; once it serves again,
    // the first call after its ejection finds it answering and it is back.
    bed.running["w3"].set_mode(Mode::Unavailable);
    let t0 = Instant::now();
    while !channel.is_ejected("w3") {
        let _ = who::call(channel.clone(), "k").await;
        assert!(t0.elapsed() < Duration::from_secs(5), "w3 never ejected");
    }
    bed.running["w3"].set_mode(Mode::Serve);
    let t0 = Instant::now();
    until_reached(&channel, "w3").await;
    let back = t0.elapsed();
    eprintln!("w3 answering again: called {back:?} after (ejection 300 ms)");
    assert!(back <= Duration::from_millis(300) + Duration::from_secs(1));
    assert!(!channel.is_ejected("w3"));
}

/// A hung owner (it accepts calls and never answers): its keys reach the next ring member
/// within twice the per-attempt timeout, once it is ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_a_hung_owner_is_ejected_and_its_keys_move_on() {
    let bed = Bed::new(&["w1", "w2", "w3"]).await;
    let timeout = Duration::from_millis(400);
    let keyed = Channels::new(bed.dir(), "who")
        .keyed_by_header(KEY_HEADER)
        .timeout(timeout);
    let key = key_owned_by(&bed, "w1");
    let next = bed.dir().find_n(2, "who", &key)[1].id.clone();
    bed.running["w1"].set_mode(Mode::Slow(Duration::from_secs(3600)));
    // A storm of calls for w1's key: the first ones time out, then w1 is ejected.
    let t0 = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..20 {
        let keyed = keyed.clone();
        let key = key.clone();
        calls.push(tokio::spawn(async move {
            loop {
                if let Ok(reply) = who::call(keyed.clone(), &key).await {
                    return (reply.server, Instant::now());
                }
            }
        }));
    }
    for call in calls {
        let (server, at) = call.await.unwrap();
        assert_eq!(server, next);
        let took = at - t0;
        assert!(
            took <= timeout * 2,
            "a call for the hung owner's key reached {next} after {took:?}"
        );
    }
    assert!(keyed.is_ejected("w1"));
    bed.running["w1"].set_mode(Mode::Serve);
}
