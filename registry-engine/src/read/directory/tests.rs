use super::*;
use crate::collections::ring::{Ring, RingKind};
use crate::read::change::Change;

fn members(n: usize, skip: usize) -> BTreeMap<String, Arc<Instance>> {
    (skip..n)
        .map(|i| {
            let id = format!("m{i:05}");
            (id.clone(), Arc::new(Instance::new("svc", id).addr("x:1")))
        })
        .collect()
}

/// The hint the discovery gives with a change: `ids` with their entries before and after.
fn hint<'a>(
    before: &InstanceMap,
    after: &InstanceMap,
    ids: impl IntoIterator<Item = &'a str>,
) -> Touched {
    ids.into_iter()
        .map(|id| {
            (
                id.to_owned(),
                (before.get(id).cloned(), after.get(id).cloned()),
            )
        })
        .collect()
}

/// While every listed instance is online and visible, the online list is the map's own tree
/// (a change copies one path); it parts from it when one goes offline or is hidden, and
/// shares it again when all are back.
#[test]
fn the_online_list_is_the_map_while_every_instance_is_online() {
    let dir = Directory::new();
    let shared = |dir: &Directory| {
        let s = dir.snapshot("svc");
        s.all().is_shared_by(s.online())
    };
    let mut all: InstanceMap = members(1000, 0).into();
    dir.publish("svc", all.clone(), 1, true);
    assert!(shared(&dir), "loaded, all online");
    assert_eq!(dir.get("svc").len(), 1000);
    let before = all.clone();
    all.insert(Arc::new(Instance::new("svc", "m00500x").addr("x:1")));
    dir.publish_changed(
        "svc",
        all.clone(),
        2,
        &before,
        &hint(&before, &all, ["m00500x"]),
    );
    assert!(shared(&dir), "a join keeps it shared");
    let off = Instance::new("svc", "m00500")
        .addr("x:1")
        .state(crate::InstanceState::Offline);
    let before = all.clone();
    all.insert(Arc::new(off));
    dir.publish_changed(
        "svc",
        all.clone(),
        3,
        &before,
        &hint(&before, &all, ["m00500"]),
    );
    assert!(!shared(&dir), "one offline: the online list has fewer");
    assert_eq!(dir.get("svc").len(), 1000);
    assert!(!dir.get("svc").contains_id("m00500"));
    let before = all.clone();
    all.remove("m00500");
    dir.publish_changed(
        "svc",
        all.clone(),
        4,
        &before,
        &hint(&before, &all, ["m00500"]),
    );
    assert!(shared(&dir), "the offline one left: all online again");
    dir.set_hidden("svc", ["m00007".to_owned()].into());
    assert!(!shared(&dir), "hidden by a probe");
    assert!(!dir.get("svc").contains_id("m00007"));
    dir.set_hidden("svc", BTreeSet::new());
    assert!(shared(&dir));
    assert_eq!(dir.get("svc").len(), 1000);
}

/// Random steps (joins, leaves, updates, going offline, probe hiding, staleness) over a
/// service of a few hundred instances: each step's incremental changes must be exactly what
/// comparing the whole views gives, the patched online list exactly the routable instances,
/// a lookup's base exactly "the earlier ring plus the members not on it", and a `Changes`
/// consumer must end up holding exactly the online instances.
#[test]
fn incremental_views_equal_views_rebuilt_from_scratch() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    #[derive(Clone, Debug)]
    enum Step {
        Put(u16, u32, bool),
        Remove(u16),
        Hide(u16),
        Show(u16),
        Stale(bool),
        BuildRing,
    }
    let step = prop_oneof![
        4 => (0u16..300, prop_oneof![Just(100u32), Just(50), Just(200)], any::<bool>())
            .prop_map(|(i, w, on)| Step::Put(i, w, on)),
        3 => (0u16..300).prop_map(Step::Remove),
        1 => (0u16..300).prop_map(Step::Hide),
        1 => (0u16..300).prop_map(Step::Show),
        1 => any::<bool>().prop_map(Step::Stale),
        1 => Just(Step::BuildRing),
    ];
    let batches = proptest::collection::vec(proptest::collection::vec(step, 1..6), 1..60);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(&batches, |batches| {
            let dir = Directory::new();
            let mut all = InstanceMap::new();
            let mut hidden = BTreeSet::new();
            for i in 0..200u16 {
                all.insert(Arc::new(
                    Instance::new("svc", format!("m{i:03}")).addr("10.0.0.1:1"),
                ));
            }
            dir.publish("svc", all.clone(), 1, true);
            let mut changes = dir.changes("svc");
            let mut held: BTreeMap<String, Arc<Instance>> = BTreeMap::new();
            for (n, batch) in batches.into_iter().enumerate() {
                let mut stale = None;
                let before = all.clone();
                let mut ids = BTreeSet::new();
                for step in batch {
                    if let Step::Put(i, ..) | Step::Remove(i) = step {
                        ids.insert(format!("m{i:03}"));
                    }
                    match step {
                        Step::Put(i, w, on) => {
                            let inst = Instance::new("svc", format!("m{i:03}"))
                                .addr("10.0.0.1:1")
                                .weight(w);
                            let inst = if on {
                                inst
                            } else {
                                inst.state(crate::InstanceState::Offline)
                            };
                            all.insert(Arc::new(inst));
                        }
                        Step::Remove(i) => {
                            all.remove(&format!("m{i:03}"));
                        }
                        Step::Hide(i) => {
                            hidden.insert(format!("m{i:03}"));
                        }
                        Step::Show(i) => {
                            hidden.remove(&format!("m{i:03}"));
                        }
                        Step::Stale(s) => stale = Some(s),
                        Step::BuildRing => {
                            dir.snapshot("svc").ring();
                        }
                    }
                }
                // Whole maps, maps with the ids that changed (as the discovery publishes
                // them; `next` checks the ids against a diff), and ids relative to a map the
                // directory does not hold (to be ignored).
                let rev = 2 + n as u64;
                match n % 3 {
                    0 => dir.publish("svc", all.clone(), rev, false),
                    1 => {
                        let ids = ids.iter().map(String::as_str);
                        dir.publish_changed(
                            "svc",
                            all.clone(),
                            rev,
                            &before,
                            &hint(&before, &all, ids),
                        )
                    }
                    _ => {
                        let mut other = before.clone();
                        other.insert(Arc::new(Instance::new("svc", "zz").addr("x:1")));
                        dir.publish_changed("svc", all.clone(), rev, &other, &Touched::new());
                    }
                }
                dir.set_hidden("svc", hidden.clone());
                if let Some(s) = stale {
                    dir.set_stale("svc", s);
                }
                // (Each update's changes were checked against a full diff in `update`.)
                let after = dir.snapshot("svc");
                let want: Vec<Arc<Instance>> = after
                    .all()
                    .values()
                    .filter(|i| i.is_online() && !after.is_hidden(&i.id))
                    .cloned()
                    .collect();
                prop_assert_eq!(after.online().to_vec(), want.clone());
                if let Some(base) = &after.base {
                    let ring = base.ring.get().expect("a base ring is built");
                    let on_ring = |m: &Arc<Instance>| {
                        ring.members()
                            .iter()
                            .any(|r| r.id == m.id && r.weight == m.weight)
                    };
                    let joined: Vec<&String> =
                        want.iter().filter(|m| !on_ring(m)).map(|m| &m.id).collect();
                    let got: Vec<&String> = base.joined.members().iter().map(|m| &m.id).collect();
                    prop_assert_eq!(got, joined);
                }
                while let Some(c) =
                    futures::FutureExt::now_or_never(futures::StreamExt::next(&mut changes))
                        .flatten()
                {
                    match c {
                        Change::Insert(id, inst) => {
                            held.insert(id, inst);
                        }
                        Change::Remove(id) => {
                            prop_assert!(held.remove(&id).is_some(), "removed {} unheld", id);
                        }
                    }
                }
                let held_now: Vec<Arc<Instance>> = held.values().cloned().collect();
                prop_assert_eq!(held_now, want);
            }
            Ok(())
        })
        .unwrap();
}

/// A burst of membership changes must not start one ring build per change (at 100,000
/// instances a ring takes about a second and 150 MB), and lookups during the burst must give
/// the current view's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_builds_few_rings_and_lookups_never_return_departed_members() {
    // Rings of 2 points per member build in about a millisecond: with 512 per member (1.5
    // million points, what a large estate's ring costs) a build outlasts several changes.
    let vnodes = 512;
    let dir = Directory::with_vnodes(vnodes);
    let n = 3000;
    dir.publish("svc", members(n, 0), 1, true);
    dir.find("svc", b"routed from now on");
    let slot = dir.slot("svc").unwrap();
    while slot.current.load().ring.get().is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = slot.builds.load(Ordering::SeqCst);
    let changes = 40;
    let mut answers = Vec::new();
    for c in 1..=changes {
        // Each change removes the lowest remaining member.
        dir.publish("svc", members(n, c), 1 + c as u64, false);
        let snap = dir.snapshot("svc");
        answers.clear();
        for k in 0..200u32 {
            let owner = dir.find("svc", k.to_le_bytes()).expect("an owner");
            assert!(snap.routable(&owner.id).is_some(), "{} has left", owner.id);
            answers.push(owner.id.clone());
            for m in dir.find_n(3, "svc", k.to_le_bytes()) {
                assert!(snap.routable(&m.id).is_some(), "{} has left", m.id);
            }
        }
    }
    while slot.current.load().ring.get().is_none() || slot.building.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let builds = slot.builds.load(Ordering::SeqCst) - before;
    assert!(
        builds < changes / 2,
        "{builds} background builds for {changes} changes"
    );
    // Lookups answered from the earlier ring were the new ring's answers.
    let expected = Ring::with_vnodes(members(n, changes).into_values(), vnodes);
    for (k, owner) in answers.iter().enumerate() {
        assert_eq!(
            Some(owner),
            expected.find(&(k as u32).to_le_bytes()).map(|m| &m.id),
            "key {k}"
        );
    }
}

/// While the new ring is not built (the builder is held busy here), lookups walk the last built
/// ring with the departed members skipped and the joined ones added, over several publications,
/// and give exactly the answers of a ring of the current membership, without building one.
/// `count + MAX_SKIPPED` overflowed (a panic in debug builds) when a lookup asked for
/// `usize::MAX` owners while a new ring was not built yet.
#[test]
fn asking_for_usize_max_owners_during_a_rebuild_is_not_an_overflow() {
    let dir = Directory::new();
    dir.publish("svc", members(50, 0), 1, true);
    assert_eq!(dir.find_n(usize::MAX, "svc", b"k").len(), 50);
    let slot = dir.slot("svc").unwrap();
    // Outside a runtime the ring was built inline; hold the builder off for the next view.
    slot.building.store(true, Ordering::SeqCst);
    dir.publish("svc", members(60, 5), 2, false);
    assert!(slot.current.load().ring.get().is_none());
    assert!(slot.current.load().base.is_some());
    let all = dir.find_n(usize::MAX, "svc", b"k");
    assert_eq!(all.len(), 55);
    slot.building.store(false, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_before_the_new_ring_is_built_give_its_answers() {
    let dir = Directory::new();
    dir.publish("svc", members(2000, 0), 1, true);
    dir.find("svc", b"routed from now on");
    let slot = dir.slot("svc").unwrap();
    while slot.current.load().ring.get().is_none() || slot.building.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    slot.building.store(true, Ordering::SeqCst);
    // Three publications: ten leave, thirty join, then five more leave.
    let steps = [members(2000, 10), members(2030, 10), members(2030, 15)];
    for (i, view) in steps.into_iter().enumerate() {
        dir.publish("svc", view.clone(), 2 + i as u64, false);
        let expected = Ring::new(view.into_values());
        for k in 0..5000u32 {
            let key = k.to_le_bytes();
            let want: Vec<_> = expected.find_n(3, &key).into_iter().cloned().collect();
            assert_eq!(dir.find("svc", key).as_ref(), want.first(), "key {k}");
            assert_eq!(dir.find_n(3, "svc", key), want, "key {k}");
        }
        assert!(
            slot.current.load().ring.get().is_none(),
            "answered without building the new ring"
        );
    }
    slot.building.store(false, Ordering::SeqCst);
}

/// A service read only with `get` never has a ring built; the first lookup builds one, and
/// from then on the background builder keeps it current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rings_are_built_only_for_services_that_are_routed_on() {
    let dir = Directory::new();
    for c in 0..5 {
        dir.publish("svc", members(500, c), 1 + c as u64, true);
        assert_eq!(dir.get("svc").len(), 500 - c);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let slot = dir.slot("svc").unwrap();
    assert_eq!(slot.builds.load(Ordering::SeqCst), 0);
    assert!(slot.current.load().ring.get().is_none());

    assert!(dir.find("svc", b"k").is_some());
    assert!(
        slot.current.load().ring.get().is_some(),
        "built by the lookup"
    );
    dir.publish("svc", members(500, 5), 10, true);
    // The builder counts a build once it is done, just after the ring appears: wait for both.
    let t0 = std::time::Instant::now();
    while slot.current.load().ring.get().is_none() || slot.builds.load(Ordering::SeqCst) == 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "the background builder keeps a routed service's ring current"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(slot.builds.load(Ordering::SeqCst), 1, "one build, not more");
}

/// Services that show no instance for the grace and that nobody subscribes to are forgotten;
/// one that gets an instance again comes back; a publisher never writes into a forgotten slot.
#[test]
fn empty_services_are_forgotten_after_the_grace() {
    let dir = Directory::new();
    let one = |s: &str| -> InstanceMap {
        [(
            "i1".to_owned(),
            Arc::new(Instance::new(s, "i1").addr("x:1")),
        )]
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into()
    };
    for (i, s) in ["gone", "kept", "watched", "stale"].iter().enumerate() {
        dir.publish(s, one(s), i as u64 + 1, true);
    }
    let watch = dir.subscribe("watched");
    dir.publish("gone", InstanceMap::new(), 10, true);
    dir.publish("watched", InstanceMap::new(), 11, true);
    dir.publish("stale", InstanceMap::new(), 12, true);
    dir.set_stale("stale", true);
    assert_eq!(
        dir.forget_empty(Duration::from_secs(3600)),
        0,
        "within the grace"
    );
    assert_eq!(dir.forget_empty(Duration::ZERO), 1);
    assert_eq!(dir.services(), ["kept", "stale", "watched"]);
    assert!(
        !dir.snapshot("gone").is_synced(),
        "a forgotten service reads as unknown"
    );
    // Back with an instance: a new slot, seen by the feed and the services.
    dir.publish("gone", one("gone"), 20, true);
    assert_eq!(dir.services(), ["gone", "kept", "stale", "watched"]);
    assert_eq!(dir.get("gone").len(), 1);
    drop(watch);
    assert_eq!(dir.forget_empty(Duration::ZERO), 1, "no longer watched");
    assert_eq!(dir.services(), ["gone", "kept", "stale"]);
}

/// A slot forgotten while a writer holds it: the write goes to a new slot, never lost.
#[test]
fn a_write_racing_the_forgetting_is_not_lost() {
    let dir = Directory::new();
    for round in 0..200u64 {
        let service = format!("s{}", round % 3);
        let inst = Arc::new(Instance::new(&service, "i").addr("x:1"));
        dir.publish(&service, InstanceMap::new(), round * 2, true);
        let d = dir.clone();
        let forget = std::thread::spawn(move || d.forget_empty(Duration::ZERO));
        let map: InstanceMap = [("i".to_owned(), inst)]
            .into_iter()
            .collect::<BTreeMap<_, _>>()
            .into();
        dir.publish(&service, map, round * 2 + 1, true);
        forget.join().unwrap();
        assert_eq!(dir.get(&service).len(), 1, "round {round}");
        dir.publish(&service, InstanceMap::new(), round * 2 + 1, true);
    }
}

/// A directory of [`RingKind::GrpcRingHash`] routes as gRPC's ring over the endpoints an xDS
/// answer names as healthy: offline, hidden and address-less instances are not on it, an address
/// two instances share is the first's, and every change (a join, an address that moved, an
/// offline instance that takes an address) is routed on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_ring_directory_routes_as_grpc_clients_over_the_served_endpoints() {
    let dir = Directory::builder()
        .ring_kind(RingKind::GrpcRingHash)
        .build();
    let inst = |id: &str, addr: &str, w: u32| Instance::new("svc", id).addr(addr).weight(w);
    let mut all: BTreeMap<String, Arc<Instance>> = BTreeMap::new();
    let mut put = |i: Instance| {
        all.insert(i.id.clone(), Arc::new(i));
        all.clone()
    };
    for i in 0..20u32 {
        put(inst(
            &format!("m{i:02}"),
            &format!("10.0.0.{}:50051", i + 1),
            100 + i * 10,
        ));
    }
    put(inst("n-name", "db.internal:50051", 100));
    put(inst("o-dup", "10.0.0.1:50051", 100));
    let mut revision = 1;
    let mut check = |dir: &Directory, all: BTreeMap<String, Arc<Instance>>, what: &str| {
        revision += 1;
        dir.publish("svc", all, revision, true);
        let snap = dir.snapshot("svc");
        let healthy: Vec<(Arc<Instance>, std::net::SocketAddr)> = snap
            .endpoints()
            .0
            .into_iter()
            .filter(|e| e.health == crate::EndpointHealth::Healthy)
            .map(|e| (e.instance, e.addr))
            .collect();
        let expected = Ring::grpc(healthy);
        for k in 0..2000 {
            let key = format!("user-{k}");
            assert_eq!(
                dir.find("svc", &key).map(|i| i.id.clone()),
                expected.find(key.as_bytes()).map(|i| i.id.clone()),
                "{what}: key {key}"
            );
            let n: Vec<String> = dir
                .find_n(3, "svc", &key)
                .iter()
                .map(|i| i.id.clone())
                .collect();
            let want: Vec<String> = expected
                .find_n(3, key.as_bytes())
                .iter()
                .map(|i| i.id.clone())
                .collect();
            assert_eq!(n, want, "{what}: key {key}");
        }
        let members: Vec<&str> = expected.members().iter().map(|m| m.id.as_str()).collect();
        assert!(
            !members.contains(&"n-name") && !members.contains(&"o-dup"),
            "{what}"
        );
        members.len()
    };
    let first = put(inst("m00", "10.0.0.1:50051", 100));
    assert_eq!(check(&dir, first, "first listing"), 20);
    assert_eq!(
        check(&dir, put(inst("m20", "10.0.0.21:50051", 300)), "a join"),
        21
    );
    assert_eq!(
        check(&dir, put(inst("m05", "10.0.1.5:50051", 110)), "moved"),
        21
    );
    // An offline instance earlier by id takes a healthy one's address: the answer names it
    // (draining), so the healthy one is not on a client's ring.
    let off = inst("a-off", "10.0.0.3:50051", 100).state(crate::InstanceState::Offline);
    assert_eq!(check(&dir, put(off), "offline takes an address"), 20);
    dir.set_hidden("svc", ["m07".to_owned()].into());
    let snap = dir.snapshot("svc");
    assert!(
        (0..2000).all(|k| dir.find("svc", format!("user-{k}")).unwrap().id != "m07"),
        "a hidden instance is not routed to"
    );
    assert_eq!(snap.ring().len(), 19);
    assert_eq!(snap.ring().kind(), RingKind::GrpcRingHash);
}
