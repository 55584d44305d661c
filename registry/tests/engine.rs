//! The engine on the in-memory backend, deterministic under paused tokio time: registration,
//! heartbeats, crashes, graceful exits, outages, compaction, malformed values, routing, dispatch.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use registry::engine::{
    Change, DiscoveryOptions, Instance, InstanceState, LeaseOptions, Probe, ProbeOptions,
    RegisterOptions, RegistrationState, Registry, Scope,
};
use registry::memory::MemoryBackend;
use registry::{Backend, Bytes, ErrorKind};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(15);
const HEARTBEAT: Duration = Duration::from_secs(5);

fn registry(backend: &MemoryBackend) -> Registry {
    Registry::builder(Arc::new(backend.clone()))
        .ttl(TTL)
        .heartbeat(HEARTBEAT)
        .build()
        .unwrap()
}

fn web(id: &str) -> Instance {
    Instance::new("web", id).addr(format!("10.0.0.{}:8080", id.len()))
}

fn ids<'a>(instances: impl IntoIterator<Item = &'a Arc<Instance>>) -> Vec<String> {
    instances.into_iter().map(|i| i.id.clone()).collect()
}

/// Waits (in paused time, so instantly) until `service` at `registry`'s directory has `want`.
async fn until_online(registry: &Registry, service: &str, want: &[&str]) {
    let mut rx = registry.directory().subscribe(service);
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if ids(rx.borrow_and_update().online()) == want {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{service} never became {want:?}; is {:?}",
            ids(&registry.directory().get(service))
        )
    });
}

#[tokio::test(start_paused = true)]
async fn registration_appears_at_a_second_registry() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    assert!(b.directory().get("web").is_empty());
    let reg = a.register(web("w1")).await.unwrap();
    assert!(reg.state().is_registered(), "{}", reg.state());
    until_online(&b, "web", &["w1"]).await;
    let got = b.directory().get("web");
    assert_eq!(
        *got[0],
        web("w1"),
        "the instance arrives with all its details"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_the_registration_for_many_ttls() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let _reg = a.register(web("w1")).await.unwrap();
    sleep(TTL * 10).await;
    assert!(
        backend.get("registry/web/w1").await.unwrap().is_some(),
        "registration expired despite heartbeats"
    );
    let ka = backend.operation_counts().keep_alive;
    assert!(
        (29..=31).contains(&ka),
        "{ka} keep-alives in 150 s at a 5 s heartbeat"
    );
}

#[tokio::test(start_paused = true)]
async fn crashed_process_disappears_after_ttl_plus_slack() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let reg = a.register(web("w1")).await.unwrap();
    until_online(&b, "web", &["w1"]).await;
    sleep(Duration::from_secs(3)).await;
    let crashed_at = Instant::now();
    a.crash();
    std::mem::forget(reg); // the process is gone: nobody deregisters
    let slack = backend.capabilities().expiry_slack;
    sleep(Duration::from_secs(8)).await;
    assert_eq!(
        ids(&b.directory().get("web")),
        ["w1"],
        "gone before its TTL"
    );
    until_online(&b, "web", &[]).await;
    let after = crashed_at.elapsed();
    // The last keep-alive was at most one heartbeat before the crash.
    assert!(after <= TTL + slack, "removed {after:?} after the crash");
    assert!(
        after >= TTL - HEARTBEAT,
        "removed {after:?} after the crash, before the TTL"
    );
}

#[tokio::test(start_paused = true)]
async fn graceful_deregister_disappears_at_once() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let r1 = a.register(web("w1")).await.unwrap();
    let _r2 = a.register(web("w2")).await.unwrap();
    until_online(&b, "web", &["w1", "w2"]).await;
    let t0 = Instant::now();
    r1.deregister().await.unwrap();
    until_online(&b, "web", &["w2"]).await;
    assert_eq!(t0.elapsed(), Duration::ZERO, "no timer was needed");
    assert!(backend.get("registry/web/w1").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_deregisters_in_the_background() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let reg = a.register(web("w1")).await.unwrap();
    until_online(&b, "web", &["w1"]).await;
    drop(reg);
    until_online(&b, "web", &[]).await;
    // The last registration gone, the shared lease is revoked: no more heartbeats.
    let before = backend.operation_counts().keep_alive;
    sleep(TTL * 3).await;
    assert_eq!(backend.operation_counts().keep_alive, before);
}

#[tokio::test(start_paused = true)]
async fn drain_goes_offline_then_deregisters_after_the_grace() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let reg = a.register(web("w1")).await.unwrap();
    let mut state = reg.watch_state();
    until_online(&b, "web", &["w1"]).await;
    let t0 = Instant::now();
    let drain = tokio::spawn(reg.drain(Duration::from_secs(10)));
    until_online(&b, "web", &[]).await;
    assert_eq!(
        b.directory().all("web")[0].state,
        InstanceState::Offline,
        "listed but offline while draining"
    );
    drain.await.unwrap().unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
    assert!(b.directory().all("web").is_empty(), "gone after the grace");
    state
        .wait_for(|s| matches!(s, RegistrationState::Deregistered))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn outage_longer_than_the_ttl_ends_with_the_registration_back() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let reg = a.register(web("w1")).await.unwrap();
    until_online(&b, "web", &["w1"]).await;
    let mut states = reg.watch_state();
    let seen = tokio::spawn(async move {
        let mut names = vec![states.borrow_and_update().name()];
        while states.changed().await.is_ok() {
            let n = states.borrow_and_update().name();
            names.push(n);
            if n == "registered" && names.contains(&"lost") {
                break;
            }
        }
        names
    });
    backend.set_unavailable(true);
    sleep(TTL * 2).await;
    // Meanwhile the other side keeps its last good view, marked stale, never empty.
    assert_eq!(ids(&b.directory().get("web")), ["w1"]);
    assert!(b.directory().is_stale("web"));
    assert!(
        matches!(reg.state(), RegistrationState::Lost { .. }),
        "{}",
        reg.state()
    );
    backend.set_unavailable(false);
    reg.registered().await.unwrap();
    let names = seen.await.unwrap();
    assert!(
        names.windows(2).any(|w| w == ["registered", "lost"]),
        "states went {names:?}"
    );
    assert_eq!(names.last(), Some(&"registered"));
    // The stale view already showed w1; wait for the watch to be back, then check its truth.
    let mut view = b.directory().subscribe("web");
    view.wait_for(|s| !s.is_stale()).await.unwrap();
    until_online(&b, "web", &["w1"]).await;
    assert!(backend.get("registry/web/w1").await.unwrap().is_some());
    assert!(a.stats().recoveries >= 1);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_lease_not_found_grants_a_new_lease_and_writes_again() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let reg = a.register(web("w1")).await.unwrap();
    let RegistrationState::Registered { lease, .. } = reg.state() else {
        panic!("not registered")
    };
    // Someone revokes our lease behind our back (an operator, a server-side expiry).
    backend.revoke(&lease).await.unwrap();
    assert!(backend.get("registry/web/w1").await.unwrap().is_none());
    sleep(HEARTBEAT + Duration::from_millis(1)).await;
    reg.registered().await.unwrap();
    let RegistrationState::Registered { lease: new, .. } = reg.state() else {
        panic!()
    };
    assert_ne!(new, lease);
    assert!(backend.get("registry/web/w1").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn compaction_during_a_watch_ends_equal_to_the_backends_truth() {
    let backend = MemoryBackend::builder().history_limit(8).build();
    let a = registry(&backend);
    let b = registry(&backend);
    let d = b.discover("web").await.unwrap();
    let mut regs = Vec::new();
    for i in 0..4 {
        regs.push(a.register(web(&format!("w{i}"))).await.unwrap());
    }
    until_online(&b, "web", &["w0", "w1", "w2", "w3"]).await;
    // Break B's watch, then make many changes so history is compacted past B's revision.
    backend.drop_watches();
    regs.remove(1).deregister().await.unwrap();
    for i in 4..20 {
        regs.push(a.register(web(&format!("w{i}"))).await.unwrap());
    }
    regs.remove(0).deregister().await.unwrap();
    sleep(Duration::from_secs(10)).await;
    let truth: Vec<String> = backend
        .list("registry/web")
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|kv| kv.key.rsplit('/').next().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = truth.clone();
    want.sort();
    let got = ids(&b.directory().get("web"));
    assert_eq!(got, want);
    assert_eq!(got.len(), 18);
    assert!(
        d.counts().lists >= 2,
        "expected a re-list after compaction: {:?}",
        d.counts()
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_values_are_skipped_and_counted() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    backend
        .put(
            "registry/web/garbage",
            Bytes::from_static(b"{not json"),
            None,
        )
        .await
        .unwrap();
    backend
        .put(
            "registry/web/future",
            Bytes::from_static(br#"{"v":9,"service":"web","id":"future","addrs":["x:1"]}"#),
            None,
        )
        .await
        .unwrap();
    let _r = a.register(web("w1")).await.unwrap();
    let d = b.discover("web").await.unwrap();
    assert_eq!(ids(&b.directory().get("web")), ["w1"]);
    assert_eq!(d.counts().malformed, 2);
    // A live bad write is skipped too, and the discovery keeps going.
    backend
        .put("registry/web/w1", Bytes::from_static(b"\xff\xfe"), None)
        .await
        .unwrap();
    let _r2 = a.register(web("w2")).await.unwrap();
    until_online(&b, "web", &["w2"]).await;
    assert_eq!(d.counts().malformed, 3);
}

#[tokio::test(start_paused = true)]
async fn offline_instances_never_receive_routed_keys() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let _r1 = a.register(web("w1")).await.unwrap();
    let r2 = a.register(web("w2")).await.unwrap();
    let _r3 = a.register(web("w3")).await.unwrap();
    until_online(&b, "web", &["w1", "w2", "w3"]).await;
    let owned_by_w2 = (0..1000)
        .filter(|k| b.directory().find("web", k.to_string()).unwrap().id == "w2")
        .count();
    assert!(
        owned_by_w2 > 100,
        "w2 should own a share before going offline"
    );
    r2.set_online(false).await.unwrap();
    until_online(&b, "web", &["w1", "w3"]).await;
    for k in 0..1000 {
        let key = k.to_string();
        assert_ne!(b.directory().find("web", &key).unwrap().id, "w2");
        assert!(
            b.directory()
                .find_n(3, "web", &key)
                .iter()
                .all(|i| i.id != "w2")
        );
    }
    let all = b.directory().all("web");
    assert_eq!(all.len(), 3, "offline instances stay listed");
    assert_eq!(all[1].state, InstanceState::Offline);
    r2.set_online(true).await.unwrap();
    until_online(&b, "web", &["w1", "w2", "w3"]).await;
}

#[tokio::test(start_paused = true)]
async fn ten_services_cost_one_keep_alive_per_heartbeat() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let mut regs = Vec::new();
    for s in 0..10 {
        regs.push(
            a.register(Instance::new(format!("svc{s}"), "node-1").addr("10.0.0.1:1"))
                .await
                .unwrap(),
        );
    }
    let before = backend.operation_counts();
    sleep(HEARTBEAT * 10 + Duration::from_millis(1)).await;
    let after = backend.operation_counts();
    assert_eq!(
        after.keep_alive - before.keep_alive,
        10,
        "one keep-alive per heartbeat"
    );
    assert_eq!(after.grant, 1, "one lease for the whole process");
    assert_eq!(after.put - before.put, 0, "no rewrites while healthy");
}

#[tokio::test(start_paused = true)]
async fn a_dedicated_lease_has_its_own_ttl_and_keep_alives() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let _shared = a.register(web("w1")).await.unwrap();
    let own = a
        .register_with(
            web("w2"),
            RegisterOptions::new().dedicated_lease(LeaseOptions {
                ttl: Duration::from_secs(6),
                heartbeat: Duration::from_secs(2),
            }),
        )
        .await
        .unwrap();
    assert_eq!(backend.operation_counts().grant, 2);
    let shared_lease = backend.get("registry/web/w1").await.unwrap().unwrap().lease;
    let own_lease = backend.get("registry/web/w2").await.unwrap().unwrap().lease;
    assert_ne!(shared_lease, own_lease);
    own.deregister().await.unwrap();
    assert_eq!(
        backend.operation_counts().revoke,
        1,
        "its lease was revoked"
    );
    assert!(backend.get("registry/web/w1").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn delay_postpones_the_first_write() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let reg = a
        .register_with(
            web("w1"),
            RegisterOptions::new().delay(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(reg.state().name(), "registering");
    sleep(Duration::from_secs(4)).await;
    assert!(backend.get("registry/web/w1").await.unwrap().is_none());
    reg.registered().await.unwrap();
    assert!(backend.get("registry/web/w1").await.unwrap().is_some());
}

#[tokio::test]
async fn options_are_validated_against_the_backend() {
    let backend: Arc<dyn Backend> = Arc::new(
        MemoryBackend::builder()
            .min_ttl(Duration::from_secs(10))
            .build(),
    );
    let e = Registry::builder(backend.clone())
        .ttl(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.message().contains("5s") && e.message().contains("10s"),
        "{e}"
    );
    let e = Registry::builder(backend.clone())
        .ttl(Duration::from_secs(15))
        .heartbeat(Duration::from_secs(15))
        .build()
        .unwrap_err();
    assert!(e.message().contains("heartbeat"), "{e}");
    assert!(
        Registry::builder(backend.clone())
            .namespace("../x")
            .build()
            .is_err()
    );
    let r = Registry::new(backend).unwrap();
    for bad in [
        Instance::new("web/../../etc", "a").addr("x:1"),
        Instance::new("web", "a/b").addr("x:1"),
        Instance::new("web", "a"),
        Instance::new("", "a").addr("x:1"),
    ] {
        let e = r.register(bad.clone()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    let _ok = r.register(web("dup")).await.unwrap();
    let e = r.register(web("dup")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[tokio::test(start_paused = true)]
async fn registering_while_the_backend_is_down_retries_until_it_is_up() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    backend.set_unavailable(true);
    let reg = a.register(web("w1")).await.unwrap();
    assert!(
        matches!(
            reg.state(),
            RegistrationState::Registering {
                last_error: Some(_)
            }
        ),
        "{}",
        reg.state()
    );
    sleep(Duration::from_secs(30)).await;
    backend.set_unavailable(false);
    reg.registered().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn metadata_updates_in_place() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let reg = a.register(web("w1").meta("zone", "a")).await.unwrap();
    until_online(&b, "web", &["w1"]).await;
    reg.update(|i| {
        i.metadata.insert("zone".into(), "b".into());
    })
    .await
    .unwrap();
    let mut rx = b.directory().subscribe("web");
    rx.wait_for(|s| {
        s.online()
            .first()
            .is_some_and(|i| i.metadata["zone"] == "b")
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn poll_mode_discovers_without_watching() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let d = b
        .discover_with(
            Scope::Service("web".into()),
            DiscoveryOptions::new().poll(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let _r = a.register(web("w1")).await.unwrap();
    sleep(Duration::from_secs(6)).await;
    assert_eq!(ids(&b.directory().get("web")), ["w1"]);
    assert_eq!(backend.operation_counts().watch, 0);
    assert!(d.counts().lists >= 2);
    // Errors keep the last view, stale.
    backend.set_unavailable(true);
    sleep(Duration::from_secs(6)).await;
    assert_eq!(ids(&b.directory().get("web")), ["w1"]);
    assert!(b.directory().is_stale("web"));
}

#[tokio::test(start_paused = true)]
async fn discover_all_follows_every_service() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover_all().await.unwrap();
    let _r1 = a.register(web("w1")).await.unwrap();
    let _r2 = a
        .register(Instance::new("db", "d1").addr("10.0.0.9:5432"))
        .await
        .unwrap();
    until_online(&b, "db", &["d1"]).await;
    until_online(&b, "web", &["w1"]).await;
    assert_eq!(b.directory().services(), ["db", "web"]);
}

struct Switch(Arc<AtomicBool>);

#[async_trait::async_trait]
impl Probe for Switch {
    async fn probe(&self, instance: &Instance) -> bool {
        instance.id != "w2" || self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn failing_probe_hides_an_instance_until_it_recovers() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let up = Arc::new(AtomicBool::new(true));
    let _d = b
        .discover_with(
            Scope::Service("web".into()),
            DiscoveryOptions::new().probe(ProbeOptions::new(
                Switch(up.clone()),
                Duration::from_secs(1),
            )),
        )
        .await
        .unwrap();
    let _r1 = a.register(web("w1")).await.unwrap();
    let _r2 = a.register(web("w2")).await.unwrap();
    until_online(&b, "web", &["w1", "w2"]).await;
    up.store(false, Ordering::SeqCst);
    let t0 = Instant::now();
    until_online(&b, "web", &["w1"]).await;
    assert!(
        t0.elapsed() <= Duration::from_secs(2),
        "hidden without waiting for the TTL"
    );
    assert!(b.directory().snapshot("web").is_hidden("w2"));
    up.store(true, Ordering::SeqCst);
    until_online(&b, "web", &["w1", "w2"]).await;
}

#[tokio::test(start_paused = true)]
async fn change_stream_reports_inserts_and_removes() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let r1 = a.register(web("w1")).await.unwrap();
    until_online(&b, "web", &["w1"]).await;
    let mut changes = b.directory().changes("web");
    assert!(matches!(changes.next().await, Some(Change::Insert(id, _)) if id == "w1"));
    let _r2 = a.register(web("w2")).await.unwrap();
    assert!(matches!(changes.next().await, Some(Change::Insert(id, _)) if id == "w2"));
    r1.set_online(false).await.unwrap();
    assert_eq!(changes.next().await, Some(Change::Remove("w1".into())));
}

#[tokio::test(start_paused = true)]
async fn dispatch_routes_by_key_and_drops_clients_of_departed_instances() {
    use registry::engine::{DispatchError, Dispatcher};
    use std::convert::Infallible;

    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let dispatcher = Dispatcher::new(b.directory().clone(), "web", |inst: &Instance| {
        let id = inst.id.clone();
        tower::service_fn(move |req: String| {
            let id = id.clone();
            async move {
                if req == "slow" {
                    sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, Infallible>(format!("{id}:{req}"))
            }
        })
    });
    match dispatcher.call("k", "hi".to_owned()).await {
        Err(DispatchError::ServiceUnavailable { service }) => assert_eq!(service, "web"),
        other => panic!("{other:?}"),
    }
    let _r1 = a.register(web("w1")).await.unwrap();
    let r2 = a.register(web("w2")).await.unwrap();
    let _r3 = a.register(web("w3")).await.unwrap();
    until_online(&b, "web", &["w1", "w2", "w3"]).await;
    for k in 0..50 {
        let key = format!("user-{k}");
        let owner = b.directory().find("web", &key).unwrap().id.clone();
        let reply = dispatcher.call(&key, "hi".to_owned()).await.unwrap();
        assert_eq!(reply, format!("{owner}:hi"));
    }
    let results = dispatcher
        .multi_call(2, "user-7", "x".to_owned(), Duration::from_secs(1))
        .await;
    let ring_order: Vec<String> = b
        .directory()
        .find_n(2, "web", "user-7")
        .iter()
        .map(|i| i.id.clone())
        .collect();
    let got: Vec<String> = results.iter().map(|(i, _)| i.id.clone()).collect();
    assert_eq!(got, ring_order, "results in ring order");
    for (inst, r) in &results {
        assert_eq!(r.as_ref().unwrap(), &format!("{}:x", inst.id));
    }
    let timed = dispatcher
        .multi_call(3, "user-7", "slow".to_owned(), Duration::from_secs(1))
        .await;
    assert_eq!(timed.len(), 3);
    assert!(
        timed
            .iter()
            .all(|(_, r)| matches!(r, Err(DispatchError::Timeout)))
    );
    assert_eq!(dispatcher.multi_cast(5, "user-7", "c".to_owned()), 3);
    assert_eq!(dispatcher.client_count(), 3, "one client per instance");
    r2.deregister().await.unwrap();
    until_online(&b, "web", &["w1", "w3"]).await;
    tokio::task::yield_now().await;
    assert_eq!(
        dispatcher.client_count(),
        2,
        "the departed instance's client was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn ring_moves_only_the_keys_of_an_instance_that_goes_offline() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let mut regs = Vec::new();
    for i in 0..5 {
        regs.push(a.register(web(&format!("w{i}"))).await.unwrap());
    }
    until_online(&b, "web", &["w0", "w1", "w2", "w3", "w4"]).await;
    let before: Vec<String> = (0..2000)
        .map(|k| b.directory().find("web", k.to_string()).unwrap().id.clone())
        .collect();
    regs[2].set_online(false).await.unwrap();
    until_online(&b, "web", &["w0", "w1", "w3", "w4"]).await;
    for (k, old) in before.iter().enumerate() {
        let now = b.directory().find("web", k.to_string()).unwrap().id.clone();
        if old != "w2" {
            assert_eq!(&now, old, "key {k} moved although its owner stayed");
        }
    }
    let moved: BTreeSet<_> = before.iter().filter(|o| *o == "w2").collect();
    assert!(!moved.is_empty());
}

#[tokio::test(start_paused = true)]
async fn deregister_during_a_short_outage_completes_when_the_backend_returns() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let _keep = a.register(web("w1")).await.unwrap();
    let gone = a.register(web("w2")).await.unwrap();
    backend.set_unavailable(true);
    let e = gone.deregister().await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    sleep(Duration::from_secs(2)).await;
    backend.set_unavailable(false);
    // The shared lease is still alive (w1 keeps it), so the key would live forever if the delete
    // were not retried.
    sleep(HEARTBEAT * 2).await;
    assert!(backend.get("registry/web/w2").await.unwrap().is_none());
    assert!(backend.get("registry/web/w1").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn offline_set_during_an_outage_is_written_when_the_backend_returns() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover("web").await.unwrap();
    let reg = a.register(web("w1")).await.unwrap();
    until_online(&b, "web", &["w1"]).await;
    backend.set_unavailable(true);
    assert!(reg.set_online(false).await.is_err());
    backend.set_unavailable(false);
    until_online(&b, "web", &[]).await;
    assert_eq!(b.directory().all("web")[0].state, InstanceState::Offline);
}

#[tokio::test(start_paused = true)]
async fn registrations_faster_than_the_heartbeat_do_not_starve_keep_alives() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let mut regs = Vec::new();
    // One new registration every 100 ms for a minute: four TTLs, far faster than the heartbeat.
    for i in 0..600 {
        regs.push(a.register(web(&format!("w{i}"))).await.unwrap());
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        a.stats().lost,
        0,
        "the lease expired under a stream of registrations: {:?}",
        a.stats()
    );
    assert_eq!(a.stats().grants, 1);
    let ka = backend.operation_counts().keep_alive;
    assert!(
        (11..=13).contains(&ka),
        "{ka} keep-alives in 60 s at a 5 s heartbeat"
    );
    assert_eq!(
        backend.list("registry/web").await.unwrap().entries.len(),
        600
    );
}

/// `discover` of a service (and `discover_all`) while one runs shares it: one listing, one watch;
/// the discovery stops only when its last handle goes, and the next call starts a new one.
/// `discover_with` always starts its own.
#[tokio::test(start_paused = true)]
async fn repeated_discover_shares_one_watch() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let d1 = b.discover("web").await.unwrap();
    let _w1 = a.register(web("w1")).await.unwrap();
    until_online(&b, "web", &["w1"]).await;
    assert_eq!(d1.counts().events, 1);
    // A second discovery would list (and have seen no event yet): this one is the first.
    let d2 = b.discover("web").await.unwrap();
    assert_eq!((d2.counts().lists, d2.counts().events), (1, 1));
    drop(d1);
    // Still running for d2.
    let _w2 = a.register(web("w2")).await.unwrap();
    until_online(&b, "web", &["w1", "w2"]).await;
    assert_eq!(d2.counts().lists, 1);
    let own = b
        .discover_with(Scope::Service("web".into()), DiscoveryOptions::new())
        .await
        .unwrap();
    assert_eq!(own.counts().lists, 1);
    assert_eq!(
        d2.counts().lists,
        1,
        "discover_with did not use the shared one"
    );
    let all1 = b.discover_all().await.unwrap();
    let _api = a
        .register(Instance::new("api", "a1").addr("10.0.0.9:80"))
        .await
        .unwrap();
    until_online(&b, "api", &["a1"]).await;
    let all2 = b.discover_all().await.unwrap();
    assert_eq!(all2.counts().events, 1);
    assert_eq!(all2.counts(), all1.counts());
    drop(d2);
    drop(own);
    // Both handles of the service gone: the next discover starts afresh (its own counters).
    let _w3 = a.register(web("w3")).await.unwrap();
    sleep(Duration::from_millis(50)).await;
    let d3 = b.discover("web").await.unwrap();
    assert_eq!(d3.counts().lists, 1);
    assert_eq!(d3.counts().events, 0, "a new discovery, not the old one");
}

/// `get_service` reads the service once, without a watch: every instance (offline included),
/// sorted, malformed values skipped; an invalid name is refused.
#[tokio::test(start_paused = true)]
async fn get_service_is_a_one_shot_read() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let _w2 = a.register(web("w2")).await.unwrap();
    let _w1 = a
        .register(web("w1").state(InstanceState::Offline))
        .await
        .unwrap();
    let _api = a
        .register(Instance::new("api", "a1").addr("10.0.0.9:80"))
        .await
        .unwrap();
    backend
        .put("registry/web/junk", Bytes::from_static(b"not json"), None)
        .await
        .unwrap();
    let got = a.get_service("web").await.unwrap();
    assert_eq!(
        got.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["w1", "w2"]
    );
    assert!(!got[0].is_online());
    assert!(a.directory().services().is_empty(), "no discovery started");
    assert_eq!(
        a.get_service("bad name").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert!(a.get_service("nosuch").await.unwrap().is_empty());
}
