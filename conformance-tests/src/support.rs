//! Helpers shared by the scenarios: timing read from capabilities, event collection, assertions.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use registry_core::{
    Backend, Bytes, Capabilities, Error, ErrorKind, Event, EventKind, Result, Revision, WatchStream,
};
use tokio::time::{Instant, timeout};

/// The TTL scenarios use: the backend's minimum, but never so short that scheduling noise on a busy
/// machine matters.
pub fn test_ttl(caps: &Capabilities) -> Duration {
    caps.min_ttl.max(Duration::from_millis(500))
}

/// The TTL of a lease that must outlive the scenario it serves (one that checks writes, revokes
/// or moves, not expiry): at least 30 s, the backend's maximum at most. With [`test_ttl`] such a
/// scenario passed only while its dozens of calls took less than the TTL (500 ms on Redis), which
/// a loaded machine does not promise.
pub fn lasting_ttl(caps: &Capabilities) -> Duration {
    test_ttl(caps).max(Duration::from_secs(30).min(caps.max_ttl))
}

/// How long to wait for a change to reach a watcher before declaring it lost.
pub fn event_timeout(caps: &Capabilities) -> Duration {
    caps.watch_delay * 4 + Duration::from_secs(5)
}

/// How long after `ttl` a lease's keys may still be seen, plus time for our own polling.
pub fn expiry_deadline(caps: &Capabilities, ttl: Duration) -> Duration {
    ttl + caps.expiry_slack_for(ttl) + caps.watch_delay + Duration::from_millis(500)
}

/// Asserts that `result` failed with `kind`.
#[track_caller]
pub fn assert_kind<T: std::fmt::Debug>(result: Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected an error of kind `{kind}`, got Ok({v:?})"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: wrong error kind: {e}"),
    }
}

/// The next event of `stream`, failing the test on error, end of stream or timeout.
pub async fn next_event(stream: &mut WatchStream, caps: &Capabilities) -> Event {
    match timeout(event_timeout(caps), stream.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch stream failed: {e}"),
        Ok(None) => panic!("watch stream ended"),
        Err(_) => panic!("no watch event within {:?}", event_timeout(caps)),
    }
}

/// Asserts that no event arrives within `window`.
pub async fn assert_quiet(stream: &mut WatchStream, window: Duration) {
    if let Ok(item) = timeout(window, stream.next()).await {
        panic!("expected no watch event, got {item:?}");
    }
}

/// The state a sequence of events leaves behind: key -> value (absent when deleted).
pub fn fold(events: &[Event]) -> BTreeMap<String, Option<Bytes>> {
    let mut m = BTreeMap::new();
    for ev in events {
        let v = match ev.kind {
            EventKind::Put => Some(ev.value.clone()),
            EventKind::Delete => None,
        };
        m.insert(ev.key.clone(), v);
    }
    m
}

/// Reads events until they account for `expected`, then checks them.
///
/// With exact history the received events must equal `expected` one for one (kind, key, value and,
/// where `expected` has a non-zero revision, revision). Without it (Consul) intermediate values may be
/// skipped: the received events must leave the same final state (a key that ends deleted may never
/// be mentioned at all) and their revisions must increase.
pub async fn expect_events(
    stream: &mut WatchStream,
    caps: &Capabilities,
    expected: &[Event],
) -> Vec<Event> {
    let mut got = Vec::new();
    if caps.exact_history {
        while got.len() < expected.len() {
            got.push(next_event(stream, caps).await);
        }
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert_eq!(
                (g.kind, &g.key, &g.value),
                (e.kind, &e.key, &e.value),
                "event #{i} differs"
            );
            if e.revision != 0 {
                assert_eq!(g.revision, e.revision, "event #{i} ({}) revision", g.key);
            }
        }
    } else {
        let want = fold(expected);
        let started = Instant::now();
        loop {
            let state = fold(&got);
            // A key created and deleted between two reads of the backend may never be mentioned:
            // its final state, absent, is then right without a delete event.
            let done = want.iter().all(|(k, v)| match (state.get(k), v) {
                (Some(got), want) => got == want,
                (None, None) => true,
                (None, Some(_)) => false,
            });
            if done {
                break;
            }
            assert!(
                started.elapsed() < event_timeout(caps),
                "watch did not converge: want {want:?}, got {state:?}"
            );
            got.push(next_event(stream, caps).await);
        }
    }
    assert_revisions_ordered(&got);
    got
}

/// Asserts that revisions never go backwards and that a key never appears twice in one revision.
#[track_caller]
pub fn assert_revisions_ordered(events: &[Event]) {
    for w in events.windows(2) {
        assert!(
            w[1].revision > w[0].revision
                || (w[1].revision == w[0].revision && w[1].key != w[0].key),
            "events out of order or duplicated: {:?} then {:?}",
            (&w[0].key, w[0].revision),
            (&w[1].key, w[1].revision)
        );
    }
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `key` is absent, returning how long after `since` it was first seen absent.
pub async fn wait_gone(
    backend: &dyn Backend,
    key: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    eventually(limit, &format!("key {key} to disappear"), || async {
        match backend.get(key).await {
            Ok(None) => Some(since.elapsed()),
            Ok(Some(_)) => None,
            Err(e) => panic!("get {key}: {e}"),
        }
    })
    .await
}

/// Bytes of a string, for terse scenario code.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Unwraps with the operation named in the panic message.
#[track_caller]
pub fn ok<T>(r: Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Puts `key` and returns the put's revision, panicking with context on failure.
pub async fn put(backend: &dyn Backend, key: &str, value: &str) -> Revision {
    ok(
        backend.put(key, b(value), None).await,
        &format!("put {key}"),
    )
}

/// Opens a watch, panicking with context on failure.
pub async fn watch(backend: &dyn Backend, prefix: &str, after: Revision) -> WatchStream {
    ok(
        backend.watch(prefix, after).await,
        &format!("watch {prefix} after {after}"),
    )
}

/// Reads from `stream` until it fails, returning the error (or panics if it does not fail in time).
pub async fn next_error(stream: &mut WatchStream, caps: &Capabilities) -> Error {
    let started = Instant::now();
    loop {
        match timeout(event_timeout(caps), stream.next()).await {
            Ok(Some(Err(e))) => return e,
            Ok(Some(Ok(_))) => {
                assert!(
                    started.elapsed() < event_timeout(caps),
                    "stream never failed"
                )
            }
            Ok(None) => panic!("watch stream ended without an error"),
            Err(_) => panic!("watch stream neither failed nor ended"),
        }
    }
}
