//! `Dispatcher` as a `tower` service and layer, over registrations on the memory backend:
//! routing by a key from the request, failover to the next ring member, per-attempt timeout,
//! and routing over a selector.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry::engine::{
    DispatchError, DispatchLayer, Dispatcher, Failover, Instance, Registration, Registry, Selector,
};
use registry::memory::MemoryBackend;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// How each fake instance answers, by id (absent: normally).
type Faults = Arc<Mutex<BTreeMap<String, Fault>>>;

#[derive(Clone, Copy)]
enum Fault {
    Error,
    Hang,
}

#[derive(Clone, Debug, PartialEq)]
struct Req {
    key: String,
}

/// A client for `inst`: answers with the instance's id unless `faults` says otherwise.
fn client(
    faults: Faults,
) -> impl Fn(&Instance) -> tower::util::BoxCloneSyncService<Req, String, &'static str> + Send + Sync
{
    move |inst: &Instance| {
        let (id, faults) = (inst.id.clone(), faults.clone());
        tower::util::BoxCloneSyncService::new(service_fn(move |_req: Req| {
            let fault = faults.lock().unwrap().get(&id).copied();
            let id = id.clone();
            async move {
                match fault {
                    None => Ok(id),
                    Some(Fault::Error) => Err("refused"),
                    Some(Fault::Hang) => std::future::pending().await,
                }
            }
        }))
    }
}

async fn three() -> (Registry, Vec<Registration>, registry::engine::Discovery) {
    let backend = Arc::new(MemoryBackend::new());
    let servers = Registry::new(backend.clone()).unwrap();
    let mut regs = Vec::new();
    for (i, zone) in [(1, "a"), (2, "b"), (3, "a")] {
        let inst = Instance::new("kv", format!("kv-{i}"))
            .addr(format!("10.0.0.{i}:1"))
            .meta("zone", zone)
            .version(format!("1.{i}.0"));
        regs.push(servers.register(inst).await.unwrap());
    }
    let client = Registry::new(backend).unwrap();
    let discovery = client.discover("kv").await.unwrap();
    let t0 = Instant::now();
    while discovery.directory().get("kv").len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (servers, regs, discovery)
}

fn key_owned_by(dir: &registry::Directory, owner: &str) -> String {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| dir.find("kv", k).unwrap().id == owner)
        .unwrap()
}

#[tokio::test]
async fn the_service_routes_by_the_key_of_each_request_and_fails_over() {
    let (_s, _regs, discovery) = three().await;
    let dir = discovery.directory();
    let faults = Faults::default();
    let svc = Dispatcher::new(dir.clone(), "kv", client(faults.clone()))
        .into_service(|r: &Req| r.key.clone())
        .failover(Failover::new().attempts(2));
    for i in 0..50 {
        let key = format!("user-{i}");
        let got = svc.clone().oneshot(Req { key: key.clone() }).await.unwrap();
        assert_eq!(got, dir.find("kv", &key).unwrap().id);
    }

    let key = key_owned_by(dir, "kv-2");
    let ring = dir.find_n(3, "kv", &key);
    faults.lock().unwrap().insert("kv-2".into(), Fault::Error);
    let got = svc.clone().oneshot(Req { key: key.clone() }).await.unwrap();
    assert_eq!(got, ring[1].id);
    // Both failing: the last attempt's error.
    faults
        .lock()
        .unwrap()
        .insert(ring[1].id.clone(), Fault::Error);
    let err = svc.clone().oneshot(Req { key: key.clone() }).await;
    assert!(matches!(err, Err(DispatchError::Service("refused"))));
    // Three attempts reach the third.
    let three = svc.clone().failover(Failover::new().attempts(3));
    assert_eq!(three.oneshot(Req { key }).await.unwrap(), ring[2].id);
}

#[tokio::test]
async fn a_hanging_owner_times_out_and_the_call_moves_on() {
    let (_s, _regs, discovery) = three().await;
    let dir = discovery.directory();
    let faults = Faults::default();
    let svc = ServiceBuilder::new()
        .layer(
            DispatchLayer::new(dir, "kv", |r: &Req| r.key.clone())
                .attempts(2)
                .timeout(Duration::from_millis(200)),
        )
        .service(client(faults.clone()));
    let key = key_owned_by(dir, "kv-1");
    let next = dir.find_n(2, "kv", &key)[1].id.clone();
    faults.lock().unwrap().insert("kv-1".into(), Fault::Hang);
    let t0 = Instant::now();
    let got = svc.clone().oneshot(Req { key: key.clone() }).await.unwrap();
    assert_eq!(got, next);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // One attempt: the timeout is the answer.
    let once = svc.clone().failover(
        Failover::new()
            .attempts(1)
            .timeout(Duration::from_millis(100)),
    );
    let err = once.oneshot(Req { key }).await;
    assert!(matches!(err, Err(DispatchError::Timeout)));
}

#[tokio::test]
async fn retry_if_decides_which_outcomes_fail_over() {
    let (_s, _regs, discovery) = three().await;
    let dir = discovery.directory();
    let faults = Faults::default();
    let d = Dispatcher::new(dir.clone(), "kv", client(faults.clone()));
    let key = key_owned_by(dir, "kv-3");
    let next = dir.find_n(2, "kv", &key)[1].id.clone();
    // Retry a response: "kv-3" answering is treated as a failure (e.g. a status in a header).
    let not_kv3 =
        Failover::new().retry_if(|o: &Result<String, _>| matches!(o, Ok(id) if id == "kv-3"));
    assert_eq!(
        d.call_with(&key, Req { key: key.clone() }, &not_kv3)
            .await
            .unwrap(),
        next
    );
    // Errors not retried.
    faults.lock().unwrap().insert("kv-3".into(), Fault::Error);
    let only_timeouts =
        Failover::new().retry_if(|o: &Result<String, _>| matches!(o, Err(DispatchError::Timeout)));
    let err = d
        .call_with(&key, Req { key: key.clone() }, &only_timeouts)
        .await;
    assert!(matches!(err, Err(DispatchError::Service("refused"))));
}

#[tokio::test]
async fn a_dispatcher_over_a_selection_routes_on_the_selected_ring_only() {
    let (_s, regs, discovery) = three().await;
    let dir = discovery.directory();
    let zone_a = Selector::new().zone("a").on(dir, "kv");
    let svc = Dispatcher::with_selection(zone_a.clone(), client(Faults::default()))
        .into_service(|r: &Req| r.key.clone());
    for i in 0..50 {
        let key = format!("user-{i}");
        let got = svc.clone().oneshot(Req { key: key.clone() }).await.unwrap();
        assert!(got == "kv-1" || got == "kv-3", "{got}");
        assert_eq!(got, zone_a.find(&key).unwrap().id);
    }
    // Preferring zone b, with b gone: every zone.
    let prefer_b = Selector::new().prefer_zone("b").on(dir, "kv");
    assert_eq!(prefer_b.get().len(), 1);
    regs[1].set_online(false).await.unwrap();
    let t0 = Instant::now();
    while prefer_b.get().len() != 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{:?}",
            prefer_b.get()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Semver range over the registered versions 1.1.0, 1.2.0 (offline now), 1.3.0.
    let recent = Selector::new().version_req(">=1.2").unwrap().on(dir, "kv");
    let ids: Vec<_> = recent.get().iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids, ["kv-3"]);
}

#[tokio::test]
async fn no_instance_is_service_unavailable() {
    let backend = Arc::new(MemoryBackend::new());
    let client = Registry::new(backend).unwrap();
    let discovery = client.discover("kv").await.unwrap();
    let svc = Dispatcher::new(discovery.directory().clone(), "kv", client_fn())
        .into_service(|r: &Req| r.key.clone());
    let err = svc.oneshot(Req { key: "k".into() }).await;
    assert!(matches!(err, Err(DispatchError::ServiceUnavailable { service }) if service == "kv"));
}

fn client_fn()
-> impl Fn(&Instance) -> tower::util::BoxCloneSyncService<Req, String, &'static str> + Send + Sync {
    client(Faults::default())
}
