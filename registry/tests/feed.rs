//! The directory's namespace-wide change feed on the in-memory backend, under paused tokio time:
//! services that appear later, order and numbering, resuming, staleness.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use registry::engine::{
    AllChanges, ChangeKind, DirectoryChange, DirectoryEvent, Instance, Registry, ResyncReason,
};
use registry::memory::MemoryBackend;

fn registry(backend: &MemoryBackend) -> Registry {
    Registry::builder(Arc::new(backend.clone()))
        .ttl(Duration::from_secs(15))
        .heartbeat(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn next_change(feed: &mut AllChanges) -> DirectoryChange {
    match tokio::time::timeout(Duration::from_secs(120), feed.next()).await {
        Ok(Some(DirectoryEvent::Change(c))) => c,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// Changes until `done` says enough, checking they are numbered one after the other.
async fn until(
    feed: &mut AllChanges,
    last: &mut u64,
    mut done: impl FnMut(&[DirectoryChange]) -> bool,
) -> Vec<DirectoryChange> {
    let mut got = Vec::new();
    while !done(&got) {
        let c = next_change(feed).await;
        assert_eq!(c.seq, *last + 1, "numbered without gaps: {c:?}");
        *last = c.seq;
        got.push(c);
    }
    got
}

fn summary(changes: &[DirectoryChange]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c.instance() {
            Some(i) => format!("{} {}/{}", c.kind.name(), c.service, i.id),
            None => format!("{} {}", c.kind.name(), c.service),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_feed_follows_every_service_in_order_and_resumes_exactly() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover_all().await.unwrap();
    let dir = b.directory().clone();
    let mut feed = dir.all_changes();
    let Some(DirectoryEvent::Resync(start)) = feed.next().await else {
        panic!("a feed starts with a snapshot")
    };
    assert_eq!(start.reason, ResyncReason::Start);
    assert_eq!(start.inserts().count(), 0);
    let mut last = start.seq;

    let _w1 = a
        .register(Instance::new("web", "w1").addr("10.0.0.1:80"))
        .await
        .unwrap();
    let got = until(&mut feed, &mut last, |g| g.len() == 1).await;
    assert_eq!(summary(&got), ["insert web/w1"]);
    let mark = last;

    // A service nobody had heard of when the feed started.
    let d1 = a
        .register(Instance::new("db", "d1").addr("10.0.0.2:5432"))
        .await
        .unwrap();
    let w2 = a
        .register(Instance::new("web", "w2").addr("10.0.0.3:80"))
        .await
        .unwrap();
    w2.set_online(false).await.unwrap();
    d1.deregister().await.unwrap();
    let got = until(&mut feed, &mut last, |g| g.len() == 4).await;
    assert_eq!(
        summary(&got),
        [
            "insert db/d1",
            "insert web/w2",
            "update web/w2",
            "remove db/d1"
        ]
    );
    let update = &got[2];
    assert!(update.kind.routable().is_none(), "offline: not routed on");
    assert!(update.revision > got[1].revision);

    // Resuming after `mark` replays exactly what came after it, then follows live.
    let mut resumed = dir.all_changes_since(mark);
    let mut again = mark;
    let replay = until(&mut resumed, &mut again, |g| g.len() == 4).await;
    assert_eq!(replay, got);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), resumed.next())
            .await
            .is_err(),
        "nothing more than was missed"
    );
    w2.set_online(true).await.unwrap();
    let live = until(&mut feed, &mut last, |g| g.len() == 1).await;
    let resumed_live = until(&mut resumed, &mut again, |g| g.len() == 1).await;
    assert_eq!(summary(&live), ["update web/w2"]);
    assert_eq!(live, resumed_live);
}

#[tokio::test(start_paused = true)]
async fn staleness_comes_and_goes_in_the_feed() {
    let backend = MemoryBackend::new();
    let a = registry(&backend);
    let b = registry(&backend);
    let _d = b.discover_all().await.unwrap();
    let dir = b.directory().clone();
    let mut feed = dir.all_changes();
    let Some(DirectoryEvent::Resync(start)) = feed.next().await else {
        panic!("a feed starts with a snapshot")
    };
    let mut last = start.seq;
    let _w1 = a
        .register(Instance::new("web", "w1").addr("10.0.0.1:80"))
        .await
        .unwrap();
    until(&mut feed, &mut last, |g| g.len() == 1).await;

    backend.set_unavailable(true);
    let got = until(&mut feed, &mut last, |g| g.len() == 1).await;
    assert!(matches!(got[0].kind, ChangeKind::Stale), "{got:?}");
    assert_eq!(&*got[0].service, "web");
    let snap = dir.snapshot("web");
    assert!(snap.is_stale());
    assert!(snap.stale_since().is_some());
    assert_eq!(dir.get("web").len(), 1, "the last good view is kept");

    backend.set_unavailable(false);
    let got = until(&mut feed, &mut last, |g| {
        g.iter().any(|c| matches!(c.kind, ChangeKind::Fresh))
    })
    .await;
    assert_eq!(
        summary(&got),
        ["fresh web"],
        "nothing changed meanwhile but the staleness"
    );
    assert!(!dir.snapshot("web").is_stale());
    assert!(dir.snapshot("web").stale_since().is_none());
}
