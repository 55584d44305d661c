//! Watch scenarios: ordering, resumption, prefixes, compaction, slow and concurrent readers.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use registry_core::{ErrorKind, Event, EventKind, Revision};
use tokio::time::{sleep, timeout};

use crate::Fixture;
use crate::support::*;

/// Puts and deletes arrive in order, with the values and revisions the writes returned.
pub async fn watch_delivers_puts_and_deletes_in_order(f: Fixture) {
    let caps = f.backend.capabilities();
    let start = ok(f.backend.list("w").await, "list").revision;
    let mut stream = watch(&*f.backend, "w", start).await;
    let r1 = put(&*f.backend, "w/a", "1").await;
    let r2 = put(&*f.backend, "w/b", "2").await;
    let r3 = put(&*f.backend, "w/a", "3").await;
    let r4 = ok(f.backend.delete("w/b").await, "delete").expect("w/b existed");
    let expected = [
        Event::put("w/a", b("1"), r1),
        Event::put("w/b", b("2"), r2),
        Event::put("w/a", b("3"), r3),
        Event::delete("w/b", r4),
    ];
    expect_events(&mut stream, &caps, &expected).await;
    assert_quiet(&mut stream, Duration::from_millis(200)).await;
}

/// Watching from revision 0 replays the retained history (with exact history), or at least the
/// current state (without it).
pub async fn watch_from_zero_replays_history(f: Fixture) {
    let caps = f.backend.capabilities();
    let r1 = put(&*f.backend, "h/a", "1").await;
    let r2 = put(&*f.backend, "h/b", "2").await;
    let r3 = ok(f.backend.delete("h/a").await, "delete").expect("h/a");
    let r4 = put(&*f.backend, "h/c", "3").await;
    let mut stream = watch(&*f.backend, "h", 0).await;
    let expected = [
        Event::put("h/a", b("1"), r1),
        Event::put("h/b", b("2"), r2),
        Event::delete("h/a", r3),
        Event::put("h/c", b("3"), r4),
    ];
    let got = if caps.exact_history {
        expect_events(&mut stream, &caps, &expected).await
    } else {
        // Without history the deleted h/a may never be mentioned.
        let current = [Event::put("h/b", b("2"), r2), Event::put("h/c", b("3"), r4)];
        expect_events(&mut stream, &caps, &current).await
    };
    assert!(got.iter().all(|e| e.revision <= r4));
    // And it continues live.
    let r5 = put(&*f.backend, "h/d", "4").await;
    let ev = next_event(&mut stream, &caps).await;
    assert_eq!((ev.key.as_str(), ev.revision), ("h/d", r5));
}

/// Watching from the current revision delivers only later changes.
pub async fn watch_from_current_revision_sees_only_new(f: Fixture) {
    let caps = f.backend.capabilities();
    put(&*f.backend, "cur/old1", "x").await;
    let r = put(&*f.backend, "cur/old2", "x").await;
    let mut stream = watch(&*f.backend, "cur", r).await;
    assert_quiet(&mut stream, Duration::from_millis(300)).await;
    let rn = put(&*f.backend, "cur/new", "y").await;
    expect_events(&mut stream, &caps, &[Event::put("cur/new", b("y"), rn)]).await;
}

/// A watch on `a/b` never sees `a/bc` or `a/b` itself.
pub async fn watch_prefix_does_not_match_sibling(f: Fixture) {
    let caps = f.backend.capabilities();
    let start = ok(f.backend.list("").await, "list").revision;
    let mut stream = watch(&*f.backend, "a/b", start).await;
    put(&*f.backend, "a/bc", "sibling").await;
    put(&*f.backend, "a/b", "self").await;
    put(&*f.backend, "a/bc/x", "nephew").await;
    let r = put(&*f.backend, "a/b/x", "child").await;
    expect_events(&mut stream, &caps, &[Event::put("a/b/x", b("child"), r)]).await;
    assert_quiet(&mut stream, Duration::from_millis(300)).await;
}

/// The empty prefix watches the whole namespace.
pub async fn watch_empty_prefix_sees_everything(f: Fixture) {
    let caps = f.backend.capabilities();
    let start = ok(f.backend.list("").await, "list").revision;
    let mut stream = watch(&*f.backend, "", start).await;
    let r1 = put(&*f.backend, "top", "1").await;
    let r2 = put(&*f.backend, "deep/er/key", "2").await;
    let r3 = ok(f.backend.delete("top").await, "delete").expect("top");
    expect_events(
        &mut stream,
        &caps,
        &[
            Event::put("top", b("1"), r1),
            Event::put("deep/er/key", b("2"), r2),
            Event::delete("top", r3),
        ],
    )
    .await;
}

/// Two watchers on nested prefixes each see exactly their own events.
pub async fn watch_overlapping_watchers(f: Fixture) {
    let caps = f.backend.capabilities();
    let start = ok(f.backend.list("").await, "list").revision;
    let mut outer = watch(&*f.backend, "o", start).await;
    let mut inner = watch(&*f.backend, "o/in", start).await;
    let r1 = put(&*f.backend, "o/x", "1").await;
    let r2 = put(&*f.backend, "o/in/y", "2").await;
    let r3 = put(&*f.backend, "o/in/z", "3").await;
    let r4 = ok(f.backend.delete("o/x").await, "delete").expect("o/x");
    expect_events(
        &mut outer,
        &caps,
        &[
            Event::put("o/x", b("1"), r1),
            Event::put("o/in/y", b("2"), r2),
            Event::put("o/in/z", b("3"), r3),
            Event::delete("o/x", r4),
        ],
    )
    .await;
    expect_events(
        &mut inner,
        &caps,
        &[
            Event::put("o/in/y", b("2"), r2),
            Event::put("o/in/z", b("3"), r3),
        ],
    )
    .await;
    assert_quiet(&mut inner, Duration::from_millis(200)).await;
}

/// A reader that pauses often while thousands of events arrive still gets every one of them, in
/// order (or, if the backend compacted past it, a `Compacted` error, never a silent gap).
pub async fn watch_slow_reader_gets_every_event(f: Fixture) {
    const N: usize = 3000;
    let caps = f.backend.capabilities();
    let start = ok(f.backend.list("").await, "list").revision;
    let mut stream = watch(&*f.backend, "slow", start).await;
    let writer = {
        let backend = f.backend.clone();
        tokio::spawn(async move {
            let mut revs = Vec::with_capacity(N);
            for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
                // Ordered batches: within one batch writes are sequential, so revisions are known.
                for &i in chunk {
                    revs.push(put(&*backend, &format!("slow/{}", i % 97), &i.to_string()).await);
                }
            }
            revs
        })
    };
    if !caps.exact_history {
        // Coalescing backends deliver at least the final value of every key.
        let revs = writer.await.expect("writer");
        let want: Vec<Event> = (0..N)
            .map(|i| Event::put(format!("slow/{}", i % 97), b(&i.to_string()), revs[i]))
            .collect();
        expect_events(&mut stream, &caps, &want).await;
        return;
    }
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        match timeout(event_timeout(&caps), stream.next()).await {
            Ok(Some(Ok(ev))) => got.push(ev),
            Ok(Some(Err(e))) if e.kind() == ErrorKind::Compacted => {
                let oldest = e
                    .compacted_revision()
                    .expect("Compacted carries the oldest revision");
                let last = got.last().map_or(start, |e: &Event| e.revision);
                assert!(
                    oldest > last + 1,
                    "Compacted although revision {} was still available",
                    last + 1
                );
                writer.await.expect("writer");
                return;
            }
            Ok(Some(Err(e))) => panic!("slow watch failed after {} events: {e}", got.len()),
            Ok(None) => panic!("slow watch ended after {} events", got.len()),
            Err(_) => panic!("slow watch stalled after {} events", got.len()),
        }
        if got.len() % 100 == 0 {
            sleep(Duration::from_millis(15)).await;
        }
    }
    let revs = writer.await.expect("writer");
    if caps.exact_history {
        let got_revs: Vec<Revision> = got.iter().map(|e| e.revision).collect();
        assert_eq!(
            got_revs, revs,
            "slow reader saw another sequence than was written"
        );
        for (i, ev) in got.iter().enumerate() {
            assert_eq!(ev.value, b(&i.to_string()), "event {i}");
        }
    }
    assert_revisions_ordered(&got);
}

/// Eight concurrent writers: the watcher sees every write exactly once, in one strictly increasing
/// revision order that matches the revisions the writers were given.
pub async fn watch_concurrent_writers_consistent_order(f: Fixture) {
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let caps = f.backend.capabilities();
    let start = ok(f.backend.list("").await, "list").revision;
    let mut stream = watch(&*f.backend, "cw", start).await;
    let writers = (0..WRITERS).map(|w| {
        let backend = f.backend.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..EACH {
                let key = format!("cw/{w}/{i}");
                let rev = put(&*backend, &key, &format!("{w}.{i}")).await;
                written.push((rev, key));
            }
            written
        })
    });
    let mut written: Vec<(Revision, String)> = join_all(writers)
        .await
        .into_iter()
        .flat_map(|r| r.expect("writer"))
        .collect();
    written.sort();
    for w in written.windows(2) {
        assert!(w[1].0 > w[0].0, "two writes got revision {}", w[0].0);
    }
    let expected: Vec<Event> = written
        .iter()
        .map(|(rev, key)| {
            let (w, i) = key["cw/".len()..].split_once('/').expect("key shape");
            Event::put(key.clone(), b(&format!("{w}.{i}")), *rev)
        })
        .collect();
    expect_events(&mut stream, &caps, &expected).await;
    let listing = ok(f.backend.list("cw").await, "list");
    assert_eq!(listing.entries.len(), WRITERS * EACH);
}

/// Dropping a watch and resuming from the last revision seen loses nothing and repeats nothing.
pub async fn watch_resume_has_no_gap_or_duplicate(f: Fixture) {
    let caps = f.backend.capabilities();
    let start = ok(f.backend.list("").await, "list").revision;
    let mut expected = Vec::new();
    for i in 0..20 {
        let key = format!("res/{}", i % 6);
        let rev = put(&*f.backend, &key, &i.to_string()).await;
        expected.push(Event::put(key, b(&i.to_string()), rev));
    }
    if !caps.exact_history {
        // Resumption is meaningful per revision; without history only the final state is promised.
        let mut stream = watch(&*f.backend, "res", start).await;
        expect_events(&mut stream, &caps, &expected).await;
        return;
    }
    let mut first = watch(&*f.backend, "res", start).await;
    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(next_event(&mut first, &caps).await);
    }
    drop(first);
    let resume_at = got.last().expect("7 events").revision;
    let mut second = watch(&*f.backend, "res", resume_at).await;
    // Writes made while no watch was open are also delivered.
    let rev = put(&*f.backend, "res/late", "late").await;
    expected.push(Event::put("res/late", b("late"), rev));
    while got.len() < expected.len() {
        got.push(next_event(&mut second, &caps).await);
    }
    assert_eq!(got, expected);
    assert_quiet(&mut second, Duration::from_millis(200)).await;
}

/// A consumer that applies a listing and then the events of a watch, drops the watch in the middle
/// of puts and deletes, and resumes from the revision of the last event it applied (re-listing if
/// told `Compacted`), ends with exactly what the backend holds: no lost delete, no stale value.
/// This is the promise discovery relies on, coalescing backends included.
pub async fn watch_resume_converges_with_deletes(f: Fixture) {
    let caps = f.backend.capabilities();
    let prefix = "conv";
    for i in 0..8 {
        put(&*f.backend, &format!("{prefix}/{i}"), "0").await;
    }
    let listing = ok(f.backend.list(prefix).await, "list");
    let mut state: BTreeMap<String, Vec<u8>> = listing
        .entries
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.to_vec()))
        .collect();
    let mut at = listing.revision;
    // One round: some puts and deletes, part of them seen by a watch that is then dropped.
    let mut relists = 0;
    for round in 0..4 {
        let mut stream = match f.backend.watch(prefix, at).await {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::Compacted => {
                // History from `at` is gone: a consumer lists again.
                relists += 1;
                let l = ok(f.backend.list(prefix).await, "relist");
                state = l
                    .entries
                    .iter()
                    .map(|kv| (kv.key.clone(), kv.value.to_vec()))
                    .collect();
                at = l.revision;
                watch(&*f.backend, prefix, at).await
            }
            Err(e) => panic!("round {round}: watch from {at}: {e}"),
        };
        for i in 0..8 {
            let key = format!("{prefix}/{i}");
            if (i + round) % 3 == 0 {
                let _ = ok(f.backend.delete(&key).await, "delete");
            } else {
                put(&*f.backend, &key, &format!("{round}.{i}")).await;
            }
        }
        // Apply a few events only, then drop the watch mid-stream.
        for _ in 0..3 {
            match timeout(event_timeout(&caps), stream.next()).await {
                Ok(Some(Ok(ev))) => {
                    match ev.kind {
                        EventKind::Put => state.insert(ev.key.clone(), ev.value.to_vec()),
                        EventKind::Delete => state.remove(&ev.key),
                    };
                    at = ev.revision;
                }
                Ok(Some(Err(e))) if e.kind() == ErrorKind::Compacted => break,
                other => panic!("round {round}: watch failed: {other:?}"),
            }
        }
        drop(stream);
    }
    // Resume and follow until the state matches the backend's, re-listing on Compacted.
    let truth: BTreeMap<String, Vec<u8>> = ok(f.backend.list(prefix).await, "list")
        .entries
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.to_vec()))
        .collect();
    let deadline = tokio::time::Instant::now() + event_timeout(&caps) * 4;
    let mut stream = match f.backend.watch(prefix, at).await {
        Ok(s) => Some(s),
        Err(e) if e.kind() == ErrorKind::Compacted => None,
        Err(e) => panic!("resume: {e}"),
    };
    while state != truth {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after resuming from {at} the view is {state:?}, the backend holds {truth:?}"
        );
        let Some(s) = stream.as_mut() else {
            let l = ok(f.backend.list(prefix).await, "relist");
            state = l
                .entries
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.to_vec()))
                .collect();
            stream = Some(watch(&*f.backend, prefix, l.revision).await);
            continue;
        };
        match timeout(Duration::from_millis(200), s.next()).await {
            Ok(Some(Ok(ev))) => {
                match ev.kind {
                    EventKind::Put => state.insert(ev.key.clone(), ev.value.to_vec()),
                    EventKind::Delete => state.remove(&ev.key),
                };
            }
            Ok(Some(Err(e))) if e.kind() == ErrorKind::Compacted => stream = None,
            Ok(Some(Err(e))) => panic!("resumed watch failed: {e}"),
            Ok(None) => panic!("resumed watch ended"),
            Err(_) => {}
        }
    }
    // And nothing more arrives that would make it wrong again.
    if let Some(s) = stream.as_mut() {
        while let Ok(Some(item)) = timeout(Duration::from_millis(300), s.next()).await {
            let ev = item.expect("no error after converging");
            match ev.kind {
                EventKind::Put => state.insert(ev.key.clone(), ev.value.to_vec()),
                EventKind::Delete => state.remove(&ev.key),
            };
        }
    }
    assert_eq!(state, truth, "a late event made the view wrong");
    if caps.exact_history {
        assert_eq!(
            relists, 0,
            "a backend with exact history had to be listed again"
        );
    }
}

/// After compaction, a watch from before the compacted revision fails with `Compacted` carrying the
/// oldest available revision, and a watch from there works. A backend that cannot compact must
/// declare that it keeps no history.
pub async fn watch_reports_compacted(f: Fixture) {
    let caps = f.backend.capabilities();
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(put(&*f.backend, &format!("cmp/{i}"), "v").await);
    }
    let Some(compacted) = f.compact(revs[5]).await else {
        assert!(
            !caps.exact_history,
            "the fixture cannot compact, yet the backend claims exact history: a Compacted error \
             would never be tested"
        );
        return;
    };
    ok(compacted, "compact");
    let err = match f.backend.watch("cmp", revs[1]).await {
        Err(e) => e,
        Ok(mut stream) => next_error(&mut stream, &caps).await,
    };
    assert_eq!(
        err.kind(),
        ErrorKind::Compacted,
        "watch before compaction: {err}"
    );
    let oldest = err
        .compacted_revision()
        .expect("Compacted error must carry the oldest available revision");
    assert!(
        oldest > revs[1] && oldest <= revs[5] + 1,
        "oldest available revision {oldest} not in ({}, {}]",
        revs[1],
        revs[5] + 1
    );
    // Resuming from the compaction point works and yields the rest.
    let mut stream = watch(&*f.backend, "cmp", revs[5]).await;
    let expected: Vec<Event> = (6..10)
        .map(|i| Event::put(format!("cmp/{i}"), b("v"), revs[i]))
        .collect();
    expect_events(&mut stream, &caps, &expected).await;
}

/// A listing taken while writes go on, followed by a watch from its revision, reconstructs exactly
/// the final state: nothing missed between list and watch.
pub async fn watch_list_then_watch_misses_nothing(f: Fixture) {
    let caps = f.backend.capabilities();
    let writer = {
        let backend = f.backend.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let key = format!("lw/{}", i % 23);
                if i % 7 == 3 {
                    let _ = ok(backend.delete(&key).await, "delete");
                } else {
                    put(&*backend, &key, &i.to_string()).await;
                }
            }
        })
    };
    sleep(Duration::from_millis(5)).await;
    let listing = ok(f.backend.list("lw").await, "list");
    let mut view: BTreeMap<String, registry_core::Bytes> = listing
        .entries
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    let mut stream = watch(&*f.backend, "lw", listing.revision).await;
    writer.await.expect("writer");
    // A sentinel written last tells the reader it has seen everything.
    put(&*f.backend, "lw/~end", "end").await;
    let truth = ok(f.backend.list("lw").await, "list");
    let mut events = Vec::new();
    loop {
        let ev = next_event(&mut stream, &caps).await;
        assert!(
            ev.revision > listing.revision,
            "event {ev:?} predates the listing"
        );
        let end = ev.key == "lw/~end";
        events.push(ev.clone());
        match ev.kind {
            EventKind::Put => view.insert(ev.key, ev.value),
            EventKind::Delete => view.remove(&ev.key),
        };
        if end {
            break;
        }
    }
    assert_revisions_ordered(&events);
    let want: BTreeMap<String, registry_core::Bytes> = truth
        .entries
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    assert_eq!(view, want, "list + watch diverged from the backend's state");
}

/// Sixteen watchers of one prefix all receive the same sequence.
pub async fn watch_many_watchers_see_the_same_events(f: Fixture) {
    let caps = f.backend.capabilities();
    let start = ok(f.backend.list("").await, "list").revision;
    let mut streams = Vec::new();
    for _ in 0..16 {
        streams.push(watch(&*f.backend, "mw", start).await);
    }
    let mut expected = Vec::new();
    for i in 0..20 {
        let key = format!("mw/{}", i % 4);
        let rev = put(&*f.backend, &key, &i.to_string()).await;
        expected.push(Event::put(key, b(&i.to_string()), rev));
    }
    let caps = &caps;
    let expected = &expected;
    let results = join_all(
        streams
            .iter_mut()
            .map(|s| async move { fold(&expect_events(s, caps, expected).await) }),
    )
    .await;
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
}
