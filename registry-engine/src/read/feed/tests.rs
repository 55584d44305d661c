use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt, StreamExt};

use std::sync::Arc;

use registry_core::backend::Revision;

use super::*;
use crate::read::journal::{DirectoryChange, Resync};
use crate::{ChangeKind, Instance, InstanceState};

fn inst(service: &str, id: &str) -> Arc<Instance> {
    Arc::new(Instance::new(service, id).addr("10.0.0.1:80"))
}

fn view(service: &str, ids: &[&str]) -> BTreeMap<String, Arc<Instance>> {
    ids.iter()
        .map(|id| (id.to_string(), inst(service, id)))
        .collect()
}

/// The next event if one is ready now.
fn ready(feed: &mut AllChanges) -> Option<DirectoryEvent> {
    feed.next()
        .now_or_never()
        .map(|e| e.expect("the feed never ends"))
}

fn change(feed: &mut AllChanges) -> DirectoryChange {
    match ready(feed) {
        Some(DirectoryEvent::Change(c)) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn resync(feed: &mut AllChanges) -> Resync {
    match ready(feed) {
        Some(DirectoryEvent::Resync(r)) => r,
        other => panic!("expected a resync, got {other:?}"),
    }
}

/// (seq, service, kind, id, revision) of every change ready now.
fn drain(feed: &mut AllChanges) -> Vec<(u64, String, &'static str, String, Revision)> {
    let mut out = Vec::new();
    while let Some(ev) = ready(feed) {
        let DirectoryEvent::Change(c) = ev else {
            panic!("unexpected {ev:?}")
        };
        let id = c.instance().map(|i| i.id.clone()).unwrap_or_default();
        out.push((c.seq, c.service.to_string(), c.kind.name(), id, c.revision));
    }
    out
}

fn row(
    seq: u64,
    service: &str,
    kind: &'static str,
    id: &str,
    revision: Revision,
) -> (u64, String, &'static str, String, Revision) {
    (seq, service.into(), kind, id.into(), revision)
}

/// Publishes a fixed history over two services (`b` appears only later) and returns it as
/// the rows the feed must yield.
fn history(dir: &Directory) -> Vec<(u64, String, &'static str, String, Revision)> {
    dir.publish("a", view("a", &["a1", "a2"]), 1, true);
    dir.publish("b", view("b", &["b1"]), 2, true);
    let mut a = view("a", &["a1", "a3"]);
    a.insert(
        "a1".into(),
        Arc::new(
            Instance::new("a", "a1")
                .addr("10.0.0.1:80")
                .state(InstanceState::Offline),
        ),
    );
    dir.publish("a", a, 3, false);
    dir.set_stale("b", true);
    // Same instances, new allocations: nothing changes but the staleness.
    dir.publish("b", view("b", &["b1"]), 4, true);
    dir.set_hidden("a", BTreeSet::from(["a3".to_string()]));
    // Older than the view: ignored, no change.
    dir.publish("a", view("a", &[]), 2, false);
    vec![
        row(1, "a", "insert", "a1", 1),
        row(2, "a", "insert", "a2", 1),
        row(3, "b", "insert", "b1", 2),
        row(4, "a", "update", "a1", 3),
        row(5, "a", "remove", "a2", 3),
        row(6, "a", "insert", "a3", 3),
        row(7, "b", "stale", "", 2),
        row(8, "b", "fresh", "", 4),
        row(9, "a", "update", "a3", 3),
    ]
}

#[test]
fn every_change_of_every_service_arrives_in_order_with_consecutive_numbers() {
    let dir = Directory::new();
    let mut feed = dir.all_changes();
    let start = resync(&mut feed);
    assert_eq!((start.seq, start.reason), (0, ResyncReason::Start));
    assert!(start.services.is_empty());
    assert!(ready(&mut feed).is_none());

    let want = history(&dir);
    assert_eq!(drain(&mut feed), want);
    assert_eq!(dir.last_seq(), 9);

    // The details: what an update carries, hidden flags, staleness in snapshots.
    let mut again = dir.all_changes_since(3);
    let c = change(&mut again);
    assert_eq!(c.kind.name(), "update");
    assert_eq!(c.instance().unwrap().state, InstanceState::Offline);
    assert!(c.kind.routable().is_none(), "offline is not routed on");
    let last = drain(&mut again).pop().unwrap();
    assert_eq!(last.0, 9);
    let mut at9 = dir.all_changes_since(8);
    match change(&mut at9).kind {
        ChangeKind::Update { instance, hidden } => {
            assert!(hidden);
            assert_eq!(instance.id, "a3");
        }
        other => panic!("{other:?}"),
    }
    dir.set_stale("a", true);
    let stale = change(&mut feed);
    assert_eq!((stale.seq, stale.kind.name()), (10, "stale"));
    assert!(dir.snapshot("a").stale_since().is_some());
    assert!(dir.snapshot("b").stale_since().is_none());

    // A late starter's snapshot is exactly as of the newest number.
    let mut late = dir.all_changes();
    let r = resync(&mut late);
    assert_eq!((r.seq, r.reason), (10, ResyncReason::Start));
    let names: Vec<_> = r.services.iter().map(|s| s.service()).collect();
    assert_eq!(names, ["a", "b"]);
    let inserts: Vec<_> = r
        .inserts()
        .map(|(s, k)| (s.to_string(), k.instance().unwrap().id.clone()))
        .collect();
    assert_eq!(
        inserts,
        [("a", "a1"), ("a", "a3"), ("b", "b1")].map(|(s, i)| (s.to_string(), i.to_string()))
    );
    assert!(ready(&mut late).is_none());
}

#[test]
fn resuming_from_the_middle_replays_exactly_the_missed_changes() {
    let dir = Directory::new();
    let want = history(&dir);
    for after in 0..=9 {
        let mut feed = dir.all_changes_since(after);
        assert_eq!(drain(&mut feed), want[after as usize..], "after {after}");
    }
    // And then follows live.
    let mut feed = dir.all_changes_since(5);
    assert_eq!(drain(&mut feed).len(), 4);
    dir.publish("c", view("c", &["c1"]), 5, true);
    assert_eq!(drain(&mut feed), [row(10, "c", "insert", "c1", 5)]);
}

#[test]
fn resuming_from_a_number_the_journal_no_longer_holds_is_an_explicit_resync() {
    let dir = Directory::builder().journal_capacity(4).build();
    history(&dir);
    // Holds 6..=9.
    let mut feed = dir.all_changes_since(5);
    assert_eq!(
        drain(&mut feed).iter().map(|r| r.0).collect::<Vec<_>>(),
        [6, 7, 8, 9]
    );
    let mut feed = dir.all_changes_since(4);
    let r = resync(&mut feed);
    assert_eq!(
        r.reason,
        ResyncReason::Lagged {
            after: 4,
            oldest: 6
        }
    );
    assert_eq!(r.seq, 9);
    let held: Vec<_> = r
        .inserts()
        .map(|(s, k)| format!("{s}/{}", k.instance().unwrap().id))
        .collect();
    assert_eq!(held, ["a/a1", "a/a3", "b/b1"]);
    assert!(ready(&mut feed).is_none());
    dir.publish("c", view("c", &["c1"]), 5, true);
    assert_eq!(drain(&mut feed), [row(10, "c", "insert", "c1", 5)]);

    // A number never issued (from a previous process, say) is not silently taken as "now".
    let mut feed = dir.all_changes_since(1000);
    let r = resync(&mut feed);
    assert_eq!(
        (r.seq, r.reason),
        (10, ResyncReason::Unknown { after: 1000 })
    );
}

#[test]
fn a_consumer_that_never_reads_holds_nobody_up_and_is_resynced() {
    let capacity = 16;
    let dir = Directory::builder().journal_capacity(capacity).build();
    let mut stuck = dir.all_changes();
    let mut live = dir.all_changes();
    assert_eq!(resync(&mut live).reason, ResyncReason::Start);
    let mut seen = 0;
    // At most 9 changes per publication: a reader that keeps up never lags.
    for n in 1..=1999u64 {
        let ids: Vec<String> = (0..n % 10).map(|i| format!("i{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        dir.publish("svc", view("svc", &ids), n, true);
        for (seq, ..) in drain(&mut live) {
            seen += 1;
            assert_eq!(seq, seen, "in order, no gap");
        }
        assert!(dir.journal().len() <= capacity);
    }
    assert_eq!(seen, dir.last_seq());
    // The stuck consumer buffered nothing meanwhile, and is told it missed changes.
    assert_eq!(stuck.pending.len(), 1, "only its start snapshot");
    assert_eq!(resync(&mut stuck).reason, ResyncReason::Start);
    let r = resync(&mut stuck);
    assert!(
        matches!(r.reason, ResyncReason::Lagged { after: 0, .. }),
        "{r:?}"
    );
    assert_eq!(r.seq, dir.last_seq());
    assert_eq!(r.services[0].all().len(), 9);
    assert!(ready(&mut stuck).is_none());
}

/// A publication bigger than the journal reaches a consumer that was up to date as a resync,
/// not as a partial batch.
#[test]
fn a_batch_bigger_than_the_journal_becomes_a_resync() {
    let dir = Directory::builder().journal_capacity(4).build();
    let mut feed = dir.all_changes();
    resync(&mut feed);
    dir.publish("svc", view("svc", &["1", "2", "3", "4", "5", "6"]), 1, true);
    let r = resync(&mut feed);
    assert_eq!(
        r.reason,
        ResyncReason::Lagged {
            after: 0,
            oldest: 3
        }
    );
    assert_eq!(r.services[0].all().len(), 6);
}

/// Concurrent publishers on several services and a slow reader on a small journal: applying
/// what the feed yields (resyncs included) always rebuilds exactly the directory's state as of
/// the last number seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_the_feed_rebuilds_the_directory() {
    let dir = Directory::builder().journal_capacity(64).build();
    let mut feed = dir.all_changes();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let dir = dir.clone();
            tokio::spawn(async move {
                let service = format!("s{w}");
                for n in 0..300u64 {
                    let ids: Vec<String> = (0..(n * 7 + w) % 13)
                        .map(|i| format!("i{}", (i * n) % 17))
                        .collect();
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    dir.publish(&service, view(&service, &ids), n + 1, true);
                    if n % 10 == 0 {
                        dir.set_stale(&service, n % 20 == 0);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut model: BTreeMap<String, (BTreeMap<String, Arc<Instance>>, bool)> = BTreeMap::new();
    let mut last = 0;
    let done = async {
        for w in writers {
            w.await.unwrap();
        }
    };
    tokio::pin!(done);
    let mut finished = false;
    loop {
        let ev = if finished {
            match ready(&mut feed) {
                Some(ev) => ev,
                None => break,
            }
        } else {
            tokio::select! {
                _ = &mut done => { finished = true; continue; }
                ev = feed.next() => ev.unwrap(),
            }
        };
        match ev {
            DirectoryEvent::Resync(r) => {
                assert!(r.seq >= last);
                last = r.seq;
                model = r
                    .services
                    .iter()
                    .map(|s| {
                        let all = s.all().iter().map(|(k, v)| (k.to_owned(), v.clone()));
                        (s.service().to_string(), (all.collect(), s.is_stale()))
                    })
                    .collect();
            }
            DirectoryEvent::Change(c) => {
                assert_eq!(c.seq, last + 1, "no gap, no repeat");
                last = c.seq;
                let (held, stale) = model.entry(c.service.to_string()).or_default();
                match c.kind {
                    ChangeKind::Insert { instance, .. } => {
                        assert!(held.insert(instance.id.clone(), instance).is_none());
                    }
                    ChangeKind::Update { instance, .. } => {
                        assert!(held.insert(instance.id.clone(), instance).is_some());
                    }
                    ChangeKind::Remove { instance } => {
                        assert!(held.remove(&instance.id).is_some());
                    }
                    ChangeKind::Stale => *stale = true,
                    ChangeKind::Fresh => *stale = false,
                }
            }
        }
    }
    assert_eq!(last, dir.last_seq());
    for snap in dir.snapshots() {
        let (held, stale) = &model[snap.service()];
        let all: BTreeMap<String, Arc<Instance>> = snap
            .all()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        assert_eq!(held, &all, "{}", snap.service());
        assert_eq!(*stale, snap.is_stale(), "{}", snap.service());
    }
}
