//! End-to-end scenarios of the engine (register, discover, directory, routing) over a real backend,
//! in real time, with timings read from the backend's capabilities. [`engine_suite!`] expands them
//! into one test each, like the conformance suite.
//!
//! [`engine_suite!`]: crate::engine_suite

use std::sync::Arc;
use std::time::Duration;

use registry_core::{Backend, Bytes};
use registry_engine::{BACKEND_SOURCE, Directory, Instance, InstanceState, Registry, StaticSource};
use tokio::time::{Instant, sleep, timeout};

use crate::Fixture;

/// The TTL the engine scenarios register with: the backend's minimum, at least 2 s.
pub fn engine_ttl(backend: &dyn Backend) -> Duration {
    let caps = backend.capabilities();
    caps.grant_ttl(caps.min_ttl.max(Duration::from_secs(2)))
        .unwrap_or(caps.min_ttl)
}

/// A registry over the fixture's backend with [`engine_ttl`] and a heartbeat of a third of it.
pub fn registry(backend: &Arc<dyn Backend>) -> Registry {
    let ttl = engine_ttl(&**backend);
    Registry::builder(backend.clone())
        .ttl(ttl)
        .heartbeat(ttl / 3)
        .build()
        .expect("registry options are valid for the backend")
}

fn web(id: &str) -> Instance {
    Instance::new("web", id).addr(format!("10.1.0.{}:8080", id.len()))
}

/// Waits until `service`'s online ids in `dir` are `want`, returning how long it took.
pub async fn until_online(
    dir: &Directory,
    service: &str,
    want: &[&str],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut rx = dir.subscribe(service);
    let ok = timeout(limit, async {
        loop {
            let ids: Vec<String> = rx
                .borrow_and_update()
                .online()
                .iter()
                .map(|i| i.id.clone())
                .collect();
            if ids == want {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    let now: Vec<String> = dir.get(service).iter().map(|i| i.id.clone()).collect();
    assert!(
        ok.is_ok() && now == want,
        "{service}: wanted {want:?} within {limit:?}, have {now:?}"
    );
    started.elapsed()
}

fn watch_limit(backend: &dyn Backend) -> Duration {
    backend.capabilities().watch_delay * 3 + Duration::from_secs(2)
}

/// A registration made at one registry appears, with all its details, at another's directory.
pub async fn engine_registration_visible_at_another_registry(f: Fixture) {
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    let d = b.discover("web").await.expect("discover");
    let inst = web("w1").meta("zone", "eu").version("1.2.3");
    let _r = a.register(inst.clone()).await.expect("register");
    until_online(d.directory(), "web", &["w1"], watch_limit(&*f.backend)).await;
    assert_eq!(*d.directory().get("web")[0], inst);
}

/// Heartbeats keep a registration for several TTLs.
pub async fn engine_heartbeat_keeps_registration(f: Fixture) {
    let ttl = engine_ttl(&*f.backend);
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    let d = b.discover("web").await.expect("discover");
    let r = a.register(web("w1")).await.expect("register");
    until_online(d.directory(), "web", &["w1"], watch_limit(&*f.backend)).await;
    let slack = f.backend.capabilities().expiry_slack_for(ttl);
    let until = Instant::now() + ttl * 2 + slack;
    while Instant::now() < until {
        assert_eq!(
            d.directory().get("web").len(),
            1,
            "registration dropped despite heartbeats"
        );
        sleep(Duration::from_millis(200)).await;
    }
    assert!(r.state().is_registered(), "{}", r.state());
}

/// When keep-alives stop (the process "crashes"), the instance is gone from the other directory
/// after its TTL plus the backend's slack, and not before its TTL less one heartbeat.
pub async fn engine_keep_alive_stopped_disappears_after_ttl(f: Fixture) {
    let ttl = engine_ttl(&*f.backend);
    let caps = f.backend.capabilities();
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    let d = b.discover("web").await.expect("discover");
    let r = a.register(web("w1")).await.expect("register");
    until_online(d.directory(), "web", &["w1"], watch_limit(&*f.backend)).await;
    let crashed = Instant::now();
    a.crash();
    std::mem::forget(r);
    let limit = ttl + caps.expiry_slack_for(ttl) + caps.watch_delay + Duration::from_secs(2);
    let took = crashed.elapsed() + until_online(d.directory(), "web", &[], limit).await;
    assert!(
        took + ttl / 3 + Duration::from_millis(100) >= ttl,
        "gone {took:?} after the crash, before the TTL {ttl:?} could have run out"
    );
}

/// A graceful deregistration disappears from the other directory at once, not after a TTL.
pub async fn engine_deregister_disappears_at_once(f: Fixture) {
    let ttl = engine_ttl(&*f.backend);
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    let d = b.discover("web").await.expect("discover");
    let r1 = a.register(web("w1")).await.expect("register");
    let _r2 = a.register(web("w2")).await.expect("register");
    until_online(
        d.directory(),
        "web",
        &["w1", "w2"],
        watch_limit(&*f.backend),
    )
    .await;
    let t0 = Instant::now();
    r1.deregister().await.expect("deregister");
    let took =
        t0.elapsed() + until_online(d.directory(), "web", &["w2"], watch_limit(&*f.backend)).await;
    assert!(
        took < ttl,
        "deregistration took {took:?}, as long as a TTL ({ttl:?})"
    );
}

/// An offline instance stays listed but receives no routed key; online again, it is routed again.
pub async fn engine_offline_is_listed_but_not_routed(f: Fixture) {
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    let d = b.discover("web").await.expect("discover");
    let _r1 = a.register(web("w1")).await.expect("register");
    let r2 = a.register(web("w2")).await.expect("register");
    let limit = watch_limit(&*f.backend);
    until_online(d.directory(), "web", &["w1", "w2"], limit).await;
    r2.set_online(false).await.expect("set_online(false)");
    until_online(d.directory(), "web", &["w1"], limit).await;
    let all = d.directory().all("web");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].state, InstanceState::Offline);
    for k in 0..500 {
        assert_eq!(
            d.directory().find("web", k.to_string()).expect("owner").id,
            "w1"
        );
    }
    r2.set_online(true).await.expect("set_online(true)");
    until_online(d.directory(), "web", &["w1", "w2"], limit).await;
}

/// A value under the namespace that is not an instance document is skipped and counted; the rest of
/// the service is unaffected.
pub async fn engine_malformed_value_is_skipped(f: Fixture) {
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    f.backend
        .put(
            "registry/web/bogus",
            Bytes::from_static(b"{\"v\":1,\"garbage\":true}"),
            None,
        )
        .await
        .expect("raw put");
    let _r = a.register(web("w1")).await.expect("register");
    let d = b.discover("web").await.expect("discover");
    until_online(d.directory(), "web", &["w1"], watch_limit(&*f.backend)).await;
    assert_eq!(d.counts().malformed, 1, "{:?}", d.counts());
}

/// Drain takes the instance out of routing at once and deregisters it after the grace period.
pub async fn engine_drain_then_deregister(f: Fixture) {
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    let d = b.discover("web").await.expect("discover");
    let r = a.register(web("w1")).await.expect("register");
    let limit = watch_limit(&*f.backend);
    until_online(d.directory(), "web", &["w1"], limit).await;
    let grace = Duration::from_secs(2);
    let drain = tokio::spawn(r.drain(grace));
    until_online(d.directory(), "web", &[], limit).await;
    assert_eq!(d.directory().all("web").len(), 1, "listed while draining");
    drain.await.expect("join").expect("drain");
    let mut rx = d.directory().subscribe("web");
    timeout(limit, rx.wait_for(|s| s.all().is_empty()))
        .await
        .expect("gone after the grace")
        .expect("directory");
}

/// How long a keeper takes to notice a change to its own key and write it again: its next
/// heartbeat (plus one for a heartbeat in flight) and a request.
fn heal_limit(backend: &dyn Backend) -> Duration {
    engine_ttl(backend) / 3 * 2 + Duration::from_secs(2)
}

async fn until_state(reg: &registry_engine::Registration, name: &str, limit: Duration) {
    let mut rx = reg.watch_state();
    let ok = timeout(limit, rx.wait_for(|s| s.name() == name)).await;
    assert!(
        matches!(ok, Ok(Ok(_))),
        "{}: wanted state {name} within {limit:?}, have {}",
        reg.key(),
        reg.state()
    );
}

/// Someone deletes a live registration's key (by hand, a script, a clean-up gone wrong): the
/// keeper writes it again within a heartbeat, counts the repair, and other directories see the
/// instance again.
pub async fn engine_external_delete_is_repaired(f: Fixture) {
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    let d = b.discover("web").await.expect("discover");
    let r = a.register(web("w1")).await.expect("register");
    let limit = watch_limit(&*f.backend);
    until_online(d.directory(), "web", &["w1"], limit).await;
    f.backend.delete(r.key()).await.expect("external delete");
    until_online(d.directory(), "web", &[], limit).await;
    until_online(
        d.directory(),
        "web",
        &["w1"],
        heal_limit(&*f.backend) + limit,
    )
    .await;
    let kv = f
        .backend
        .get(r.key())
        .await
        .expect("get")
        .expect("written again");
    assert_eq!(kv.value, r.instance().encode());
    assert!(r.state().is_registered(), "{}", r.state());
    assert_eq!(
        kv.lease.as_ref(),
        match &r.state() {
            registry_engine::RegistrationState::Registered { lease, .. } => Some(lease),
            _ => None,
        }
    );
    assert!(a.stats().repairs >= 1, "{:?}", a.stats());
}

/// Someone overwrites a live registration's key with a plain value of their own: the keeper
/// writes its own value back (attached to its lease) within a heartbeat.
pub async fn engine_external_overwrite_is_repaired(f: Fixture) {
    let a = registry(&f.backend);
    let r = a.register(web("w1")).await.expect("register");
    f.backend
        .put(r.key(), Bytes::from_static(b"not an instance"), None)
        .await
        .expect("external overwrite");
    let limit = heal_limit(&*f.backend);
    let started = Instant::now();
    loop {
        let kv = f.backend.get(r.key()).await.expect("get");
        if let Some(kv) = kv
            && kv.value == r.instance().encode()
            && kv.lease.is_some()
        {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "the overwritten registration was not written back within {limit:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
    assert!(a.stats().repairs >= 1, "{:?}", a.stats());
}

/// An instance id another live process holds is not taken by a second registration (a clear
/// `Conflict` error), unless it asks to take over; then the first owner's handle says
/// `conflict` and does not write back (no fight), and gets the id back once the other owner
/// deregisters.
pub async fn engine_live_owner_conflict_and_takeover(f: Fixture) {
    use registry_engine::RegisterOptions;
    let a = registry(&f.backend);
    let c = registry(&f.backend);
    let first = a
        .register(web("w1").meta("owner", "a"))
        .await
        .expect("register");
    let e = c
        .register(web("w1").meta("owner", "c"))
        .await
        .expect_err("a second live owner is refused");
    assert_eq!(e.kind(), registry_core::ErrorKind::Conflict, "{e}");
    let kv = f
        .backend
        .get(first.key())
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(kv.value, first.instance().encode(), "the refused one wrote");

    let second = c
        .register_with(
            web("w1").meta("owner", "c"),
            RegisterOptions::new().takeover(true),
        )
        .await
        .expect("takeover");
    assert!(second.state().is_registered(), "{}", second.state());
    let limit = heal_limit(&*f.backend);
    until_state(&first, "conflict", limit).await;
    // Several heartbeats later nobody has written over anybody.
    sleep(limit).await;
    assert_eq!(first.state().name(), "conflict", "{}", first.state());
    assert!(second.state().is_registered(), "{}", second.state());
    let kv = f
        .backend
        .get(first.key())
        .await
        .expect("get")
        .expect("held");
    assert_eq!(
        kv.value,
        second.instance().encode(),
        "the first owner fought back"
    );
    assert!(a.stats().conflicts >= 1, "{:?}", a.stats());

    second.deregister().await.expect("deregister");
    until_state(&first, "registered", limit).await;
    let kv = f
        .backend
        .get(first.key())
        .await
        .expect("get")
        .expect("back");
    assert_eq!(kv.value, first.instance().encode());
}

/// The same instance restarted before its old lease ran out (the old process crashed): the new
/// registration of the identical value takes the id over instead of failing for a TTL.
pub async fn engine_restarted_instance_takes_over_its_id(f: Fixture) {
    let old = registry(&f.backend);
    let r = old.register(web("w1")).await.expect("register");
    old.crash();
    std::mem::forget(r);
    let new = registry(&f.backend);
    let r = new.register(web("w1")).await.expect("restarted instance");
    assert!(r.state().is_registered(), "{}", r.state());
    // After the old lease has run out the registration is still there, on the new lease.
    let ttl = engine_ttl(&*f.backend);
    sleep(ttl + f.backend.capabilities().expiry_slack_for(ttl)).await;
    let kv = f
        .backend
        .get(r.key())
        .await
        .expect("get")
        .expect("still registered");
    assert_eq!(kv.value, r.instance().encode());
    assert!(r.state().is_registered(), "{}", r.state());
}

/// A directory fed by the backend and by a static list (a service being moved between
/// registries): it shows and routes over the union, says where each instance comes from, lets the
/// source with the higher precedence win an id collision, and keeps the static instances while the
/// backend's instances come and go.
pub async fn engine_static_source_beside_the_backend(f: Fixture) {
    let a = registry(&f.backend);
    let b = registry(&f.backend);
    let d = b.discover("web").await.expect("discover");
    let dir = d.directory();
    let limit = watch_limit(&*f.backend);
    let ours = a.register(web("w1")).await.expect("register w1");
    let _dup = a.register(web("dup")).await.expect("register dup");
    until_online(dir, "web", &["dup", "w1"], limit).await;
    // Below the backend: the backend's `dup` wins; `legacy-1` is added.
    let legacy = StaticSource::new([
        Instance::new("web", "legacy-1").addr("10.9.0.1:80"),
        Instance::new("web", "dup")
            .addr("10.9.0.2:80")
            .meta("from", "static"),
    ])
    .install(dir, "legacy", -1)
    .expect("install the static source");
    until_online(dir, "web", &["dup", "legacy-1", "w1"], limit).await;
    let snap = dir.snapshot("web");
    assert_eq!(snap.source_of("w1"), Some(BACKEND_SOURCE));
    assert_eq!(snap.source_of("legacy-1"), Some("legacy"));
    assert_eq!(snap.source_of("dup"), Some(BACKEND_SOURCE));
    assert_eq!(snap.collisions(), 1);
    assert!(
        snap.all()["dup"].metadata.is_empty(),
        "the backend's dup is shown"
    );
    // Routing covers the union: every member owns some keys.
    let mut owners = std::collections::BTreeSet::new();
    for k in 0..2000 {
        owners.insert(
            dir.find("web", format!("k{k}"))
                .expect("an owner")
                .id
                .clone(),
        );
    }
    assert_eq!(owners.len(), 3, "{owners:?}");
    // Above the backend: the static `dup` wins.
    let pinned = StaticSource::new([Instance::new("web", "dup")
        .addr("10.9.0.3:80")
        .meta("from", "pinned")])
    .install(dir, "pinned", 1)
    .expect("install a second source");
    assert_eq!(dir.snapshot("web").all()["dup"].metadata["from"], "pinned");
    assert_eq!(dir.snapshot("web").source_of("dup"), Some("pinned"));
    assert_eq!(dir.snapshot("web").collisions(), 2);
    // A name or precedence already taken is refused.
    assert!(dir.source("legacy", 7).is_err());
    assert!(dir.source("other", -1).is_err());
    assert!(dir.source(BACKEND_SOURCE, 7).is_err());
    // The backend's instances come and go; the static ones stay.
    ours.deregister().await.expect("deregister w1");
    until_online(dir, "web", &["dup", "legacy-1"], limit).await;
    // Withdrawn: the backend's dup is back, the legacy instance gone.
    pinned.withdraw_all();
    legacy.withdraw("web");
    until_online(dir, "web", &["dup"], limit).await;
    let snap = dir.snapshot("web");
    assert_eq!(snap.source_of("dup"), Some(BACKEND_SOURCE));
    assert!(snap.all()["dup"].metadata.is_empty());
    assert_eq!(snap.collisions(), 0);
}

/// Many registrations at once (issue 17): `register_many` and concurrent `register` calls all
/// land, each with its own outcome (an id another live owner holds fails alone with `Conflict`, a
/// duplicate id in the same batch is refused, the others register), all on the one shared lease;
/// a registration deregistered right after it was made, while hundreds of others are still being
/// written, ends deregistered. Read back with a listing of the backend, not through the registry.
pub async fn engine_register_many_each_with_its_own_outcome(f: Fixture) {
    use registry_core::ErrorKind;
    const N: usize = 300;
    let a = registry(&f.backend);
    let other = registry(&f.backend);
    // A different value: the same value would be taken over (a restarted instance).
    let held = other
        .register(web("m0150").meta("owner", "other"))
        .await
        .expect("register");
    let mut batch: Vec<Instance> = (0..N).map(|i| web(&format!("m{i:04}"))).collect();
    // The same id twice in one batch: the first registers, the second is refused.
    batch.push(web("m0007").meta("dup", "yes"));
    let outcomes = a.register_many(batch).await;
    assert_eq!(outcomes.len(), N + 1);
    let mut handles = Vec::new();
    for (i, o) in outcomes.into_iter().enumerate() {
        match (i, o) {
            (150, Err(e)) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
            (150, Ok(r)) => panic!("{} registered over another live owner", r.key()),
            (N, Err(e)) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}"),
            (N, Ok(r)) => panic!("{} registered twice", r.key()),
            (_, Ok(r)) => {
                assert!(r.state().is_registered(), "{}: {}", r.key(), r.state());
                handles.push(r);
            }
            (i, Err(e)) => panic!("m{i:04} failed: {e}"),
        }
    }
    // Concurrent `register` calls are written together too, and a registration deregistered at
    // once (its removal queued right behind its first write) stays deregistered.
    let more = futures::future::join_all((0..100).map(|i| {
        let a = a.clone();
        async move {
            let r = a
                .register(web(&format!("c{i:04}")))
                .await
                .expect("register");
            if i % 10 == 0 {
                r.deregister().await.expect("deregister");
                None
            } else {
                Some(r)
            }
        }
    }))
    .await;
    handles.extend(more.into_iter().flatten());
    assert_eq!(handles.len(), N - 1 + 90);

    let listing = f.backend.list("").await.expect("list");
    let mut ours: Vec<_> = listing
        .entries
        .iter()
        .filter(|kv| !kv.key.ends_with("/m0150"))
        .collect();
    ours.sort_by(|x, y| x.key.cmp(&y.key));
    let mut want: Vec<&str> = handles.iter().map(|r| r.key()).collect();
    want.sort();
    let have: Vec<&str> = ours.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        have, want,
        "the backend holds exactly the live registrations"
    );
    let leases: std::collections::BTreeSet<_> = ours.iter().map(|kv| kv.lease.clone()).collect();
    assert_eq!(leases.len(), 1, "one shared lease: {leases:?}");
    assert!(leases.iter().all(Option::is_some), "{leases:?}");
    for (kv, r) in ours.iter().zip({
        let mut h: Vec<_> = handles.iter().collect();
        h.sort_by(|x, y| x.key().cmp(y.key()));
        h
    }) {
        assert_eq!(kv.value, r.instance().encode(), "{}", kv.key);
    }
    let held_kv = f.backend.get(held.key()).await.expect("get").expect("held");
    assert_eq!(
        held_kv.value,
        held.instance().encode(),
        "the other owner's value was overwritten"
    );
    assert_eq!(a.stats().grants, 1, "{:?}", a.stats());
    assert_eq!(a.stats().conflicts, 1, "{:?}", a.stats());
}

/// Expands the engine scenarios into one test each over `$factory(scenario_name)`, like
/// [`conformance_suite!`](crate::conformance_suite).
#[macro_export]
macro_rules! engine_suite {
    ($factory:path) => {
        $crate::__engine_tests!($factory;
            engine_registration_visible_at_another_registry,
            engine_heartbeat_keeps_registration,
            engine_keep_alive_stopped_disappears_after_ttl,
            engine_deregister_disappears_at_once,
            engine_offline_is_listed_but_not_routed,
            engine_malformed_value_is_skipped,
            engine_drain_then_deregister,
            engine_external_delete_is_repaired,
            engine_external_overwrite_is_repaired,
            engine_live_owner_conflict_and_takeover,
            engine_restarted_instance_takes_over_its_id,
            engine_static_source_beside_the_backend,
            engine_register_many_each_with_its_own_outcome,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __engine_tests {
    ($factory:path ; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                match $factory(stringify!($name)).await {
                    Some(fixture) => $crate::engine::$name(fixture).await,
                    None => eprintln!("skipped {}: backend unavailable (see above)", stringify!($name)),
                }
            }
        )*
    };
}

/// Waits until a registration has been written again after `outage` (the moment the server was
/// killed or stopped). A registration still shows `registered` until its next keep-alive finds the
/// lease gone; then it goes `lost` and comes back `registered` with a newer `since`. The state is
/// a watch channel, which keeps only the latest value, so a quick lost -> registered flip may never
/// be seen as `lost`: the proof of recovery is a `since` after the outage, not the flip itself.
pub async fn until_lost_and_back(
    states: &mut tokio::sync::watch::Receiver<registry_engine::RegistrationState>,
    outage: Instant,
    limit: Duration,
) {
    use registry_engine::RegistrationState;
    let ok = timeout(limit, async {
        loop {
            if let RegistrationState::Registered { since, .. } = &*states.borrow_and_update()
                && *since > outage
            {
                return true;
            }
            if states.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    assert!(
        matches!(ok, Ok(true)),
        "registration was not written again within {limit:?} of the outage (now {})",
        states.borrow().name()
    );
}
