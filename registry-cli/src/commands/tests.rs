use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use registry::engine::{AllChanges, Change, Directory, DirectoryEvent, Instance, Registry};
use registry::memory::MemoryBackend;

use super::Routable;

fn line(service: &str, change: Change) -> String {
    match change {
        Change::Insert(id, _) => format!("+ {service}/{id}"),
        Change::Remove(id) => format!("- {service}/{id}"),
    }
}

/// Reads the feed until `routable` turns it into `n` lines; what `only` (a `watch` of one
/// service) makes of the same events goes to `other`.
async fn lines(
    feed: &mut AllChanges,
    routable: &mut Routable,
    n: usize,
    only: &mut Routable,
    other: &mut Vec<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap_or_else(|_| panic!("only {out:?}"))
            .unwrap();
        for (service, change) in routable.apply(&event) {
            out.push(line(&service, change));
        }
        for (service, change) in only.apply(&event) {
            other.push(line(&service, change));
        }
    }
    out
}

/// `watch` sees a service that appears after it started, instances going offline and coming
/// back, changed details, departures, and after falling behind the journal, the net change.
#[tokio::test]
async fn watch_follows_every_service_through_the_feed() {
    let backend = Arc::new(MemoryBackend::new());
    let a = Registry::new(backend.clone()).unwrap();
    let dir = Directory::builder().journal_capacity(4).build();
    let b = Registry::builder(backend)
        .directory(dir.clone())
        .build()
        .unwrap();
    let _d = b.discover_all().await.unwrap();
    let mut feed = dir.all_changes();
    let mut all = Routable::new(None);
    let mut only_db = Routable::new(Some("db".into()));
    let mut db_lines = Vec::new();

    let w1 = a
        .register(Instance::new("web", "w1").addr("10.0.0.1:80"))
        .await
        .unwrap();
    assert_eq!(
        lines(&mut feed, &mut all, 1, &mut only_db, &mut db_lines).await,
        ["+ web/w1"]
    );
    let d1 = a
        .register(Instance::new("db", "d1").addr("10.0.0.2:5432"))
        .await
        .unwrap();
    assert_eq!(
        lines(&mut feed, &mut all, 1, &mut only_db, &mut db_lines).await,
        ["+ db/d1"]
    );
    w1.set_online(false).await.unwrap();
    assert_eq!(
        lines(&mut feed, &mut all, 1, &mut only_db, &mut db_lines).await,
        ["- web/w1"]
    );
    w1.set_online(true).await.unwrap();
    assert_eq!(
        lines(&mut feed, &mut all, 1, &mut only_db, &mut db_lines).await,
        ["+ web/w1"]
    );
    w1.set_metadata([("zone".to_string(), "b".to_string())].into())
        .await
        .unwrap();
    assert_eq!(
        lines(&mut feed, &mut all, 1, &mut only_db, &mut db_lines).await,
        ["+ web/w1"]
    );
    d1.deregister().await.unwrap();
    assert_eq!(
        lines(&mut feed, &mut all, 1, &mut only_db, &mut db_lines).await,
        ["- db/d1"]
    );
    assert_eq!(db_lines, ["+ db/d1", "- db/d1"]);

    // Not reading while more changes than the journal holds happen: resynced, net change.
    let mut more = Vec::new();
    for i in 2..8 {
        more.push(
            a.register(Instance::new("web", format!("w{i}")).addr("10.0.0.3:80"))
                .await
                .unwrap(),
        );
    }
    while dir.get("web").len() < 7 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Some(event @ DirectoryEvent::Resync(_)) = feed.next().await else {
        panic!("fell behind a journal of 4 without a resync");
    };
    let got: Vec<String> = all
        .apply(&event)
        .into_iter()
        .map(|(s, c)| line(&s, c))
        .collect();
    let want: Vec<String> = (2..8).map(|i| format!("+ web/w{i}")).collect();
    assert_eq!(got, want, "the net change, not a replay of the start");
    assert!(only_db.apply(&event).is_empty());
}
