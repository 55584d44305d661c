//! Redis replaced under live registrations, the stream trimmed under a watcher, and authentication.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use conformance_tests::engine::{until_lost_and_back, until_online};
use conformance_tests::forward::{Call, Forward, Hook};
use conformance_tests::resilience::{self, Timings, docker, register_web, retry, until_fresh, web};
use conformance_tests::testbed::{self, RedisOptions, start_or_skip};
use futures::StreamExt;
use registry_core::{Backend, Bytes, ErrorKind};
use registry_redis::RedisBuilder;
use tokio::time::{sleep, timeout};

fn builder(endpoint: &str) -> RedisBuilder {
    let (host, port) = endpoint.rsplit_once(':').expect("host:port");
    RedisBuilder::new()
        .address(host, port.parse().expect("port"))
        .request_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
}

/// A Redis of this test's own, started with `options`.
async fn own_redis(options: RedisOptions) -> Option<testbed::Redis> {
    start_or_skip("redis", testbed::start_redis(options)).await
}

/// The server's own data: the keys of the hash that holds the default namespace's keys.
async fn held_keys(con: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("HKEYS")
        .arg("{registry}:kv")
        .query_async(con)
        .await
        .unwrap()
}

/// Waits until a client of the server sits in a blocking `XREAD` (a watcher's read).
async fn until_blocked_in_xread(con: &mut redis::aio::MultiplexedConnection) {
    let mut blocked = false;
    let mut clients = String::new();
    for _ in 0..200 {
        clients = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(con)
            .await
            .unwrap();
        blocked = clients
            .lines()
            .any(|l| l.contains("cmd=xread") && l.contains("flags=b"));
        if blocked {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    assert!(blocked, "the watcher never blocked in XREAD: {clients}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_back_after_redis_is_replaced() {
    let port = testbed::free_port();
    let Some(first) = own_redis(RedisOptions {
        host_port: Some(port),
        ..RedisOptions::default()
    })
    .await
    else {
        return;
    };
    let endpoint = first.endpoint.clone();
    let backend: Arc<dyn Backend> = Arc::new(builder(&endpoint).connect().await.unwrap());
    let a = Timings::SHORT.registry(&backend);
    let b = Timings::SHORT.registry(&backend);
    let d = b.discover("web").await.unwrap();
    let regs = register_web(&a, d.directory(), &["w0", "w1", "w2"]).await;

    // Kill it (no persistence: every key, lease and event is gone) and start a new, empty one on
    // the same address.
    let mut states: Vec<_> = regs.iter().map(|r| r.watch_state()).collect();
    let outage = tokio::time::Instant::now();
    resilience::kill(&first.container);
    sleep(Duration::from_secs(1)).await;
    let second = testbed::start_redis(RedisOptions {
        host_port: Some(port),
        ..RedisOptions::default()
    })
    .await
    .expect("start the replacement redis");
    assert_eq!(second.endpoint, endpoint);

    // Keep-alives find the leases gone (a new epoch), grant new ones and write everything again;
    // the watcher sees its history gone and re-lists.
    for s in &mut states {
        until_lost_and_back(s, outage, Duration::from_secs(60)).await;
    }
    until_fresh(d.directory(), "web", 3, Duration::from_secs(20)).await;
    let listed = backend.list("registry/web").await.unwrap();
    assert_eq!(listed.entries.len(), 3);
    assert!(a.stats().recoveries >= 1, "{:?}", a.stats());
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_its_data_is_never_taken_for_the_same_history() {
    let Some(endpoint) = testbed::shared_redis() else {
        return;
    };
    let ns = testbed::fresh_namespace("epoch");
    let backend = builder(&endpoint)
        .namespace(ns.clone())
        .connect()
        .await
        .unwrap();
    for i in 0..5 {
        backend
            .put(&format!("k/{i}"), Bytes::from_static(b"v"), None)
            .await
            .unwrap();
    }
    let old = backend.list("k").await.unwrap().revision;
    let lease = backend.grant(Duration::from_secs(30)).await.unwrap();
    // Wipe the namespace, as a restart without persistence would.
    let client = redis::Client::open(format!("redis://{endpoint}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{ns}}}:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .unwrap();
    sleep(Duration::from_millis(200)).await; // epochs count tenths of a second
    backend.put("k/new", Bytes::new(), None).await.unwrap();
    let new = backend.list("k").await.unwrap().revision;
    assert!(new > old, "revisions went backwards: {old} -> {new}");
    let e = match backend.watch("k", old).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
    };
    assert_eq!(e.kind(), ErrorKind::Compacted, "{e}");
    assert_eq!(
        backend.keep_alive(&lease.id).await.unwrap_err().kind(),
        ErrorKind::LeaseNotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_permission_denied() {
    const PASSWORD: &str = "requirepass-secret";
    let Some(redis) = own_redis(RedisOptions {
        extra_args: vec![
            "--requirepass".into(),
            PASSWORD.into(),
            "--user".into(),
            "alice".into(),
            "on".into(),
            ">alice-secret".into(),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
            "--user".into(),
            "reader".into(),
            "on".into(),
            ">reader-secret".into(),
            "~*".into(),
            "+@read".into(),
        ],
        ..RedisOptions::default()
    })
    .await
    else {
        return;
    };
    let ep = redis.endpoint.clone();
    // requirepass: right and wrong password.
    let ok = builder(&ep)
        .password(PASSWORD)
        .connect()
        .await
        .expect("right password");
    ok.put("k", Bytes::from_static(b"v"), None).await.unwrap();
    let e = builder(&ep).password("wrong").connect().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = builder(&ep).connect().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "no password: {e}");
    // ACL users: right, wrong, and one without the permission to run scripts.
    let alice = builder(&ep)
        .auth("alice", "alice-secret")
        .connect()
        .await
        .expect("ACL user");
    assert!(alice.get("k").await.unwrap().is_some());
    let e = builder(&ep)
        .auth("alice", "nope")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(!e.to_string().contains("alice-secret"));
    let e = builder(&ep)
        .auth("reader", "reader-secret")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::PermissionDenied,
        "user without script permission: {e}"
    );
    let url = format!("redis://alice:alice-secret@{ep}");
    assert!(!format!("{:?}", RedisBuilder::from_url(&url).unwrap()).contains("alice-secret"));
    assert!(!format!("{alice:?}").contains("alice-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_local_revisions_starts_a_new_epoch_cleanly() {
    let Some(endpoint) = testbed::shared_redis() else {
        return;
    };
    let ns = testbed::fresh_namespace("rollover");
    let backend = builder(&endpoint)
        .namespace(ns.clone())
        .connect()
        .await
        .unwrap();
    let lease = backend.grant(Duration::from_secs(30)).await.unwrap();
    backend
        .put("k/leased", Bytes::from_static(b"1"), Some(&lease.id))
        .await
        .unwrap();
    backend
        .put("k/plain", Bytes::from_static(b"2"), None)
        .await
        .unwrap();
    let before = backend.list("k").await.unwrap().revision;
    // Jump the local revision counter to the edge of its 30 bits.
    let client = redis::Client::open(format!("redis://{endpoint}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{{{ns}}}:rev"))
        .arg(1_073_741_000u64)
        .query_async(&mut con)
        .await
        .unwrap();
    let listing = backend.list("k").await.unwrap();
    assert!(
        listing.revision > before,
        "revision went backwards across the rollover"
    );
    // Keys without a lease survive the rollover; the old epoch's leases end with their keys.
    let keys: Vec<&str> = listing.entries.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["k/plain"], "what survives the rollover");
    for kv in &listing.entries {
        assert!(
            kv.revision <= listing.revision,
            "{} newer than its listing",
            kv.key
        );
    }
    let e = match backend.watch("k", before).await {
        Err(e) => e,
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
    };
    assert_eq!(e.kind(), ErrorKind::Compacted, "{e}");
    assert_eq!(
        backend.keep_alive(&lease.id).await.unwrap_err().kind(),
        ErrorKind::LeaseNotFound,
        "leases of the old epoch end"
    );
    let mut w = backend.watch("k", listing.revision).await.unwrap();
    let r = backend.put("k/after", Bytes::new(), None).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_watch_connection_ends_the_stream_instead_of_hanging() {
    let Some(redis) = own_redis(RedisOptions::default()).await else {
        return;
    };
    let backend = builder(&redis.endpoint).connect().await.unwrap();
    let rev = backend
        .put("web/a", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    let mut stream = backend.watch("web", rev).await.unwrap();
    // The server stops answering but keeps the connection open (a paused container: what a
    // network that drops packets looks like to the client).
    let id = redis.container.id();
    docker(&["pause", id]);
    let started = std::time::Instant::now();
    let ended = timeout(Duration::from_secs(15), stream.next()).await;
    docker(&["unpause", id]);
    let item = ended.expect("the watch hung on a connection that never answers");
    match item {
        Some(Err(e)) => assert!(e.is_temporary(), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    // Blocking read (2 s) + request timeout (1 s) + a margin.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_broken_inside_a_large_revision_resumes_without_losing_its_events() {
    let Some(redis) = own_redis(RedisOptions::default()).await else {
        return;
    };
    let backend = builder(&redis.endpoint).connect().await.unwrap();
    // 600 keys on one lease: revoking it deletes them all in one revision, more events than one
    // read of the stream returns.
    let lease = backend.grant(Duration::from_secs(30)).await.unwrap();
    for i in 0..600 {
        backend
            .put(
                &format!("big/k{i:03}"),
                Bytes::from_static(b"v"),
                Some(&lease.id),
            )
            .await
            .unwrap();
    }
    let before = backend.list("big").await.unwrap().revision;
    backend.revoke(&lease.id).await.unwrap();
    let mut stream = backend.watch("big", before).await.unwrap();
    let mut deleted = std::collections::BTreeSet::new();
    let mut last = before;
    // Take 100 events, then cut every client connection but the killer's own: the watch breaks.
    for _ in 0..100 {
        let ev = stream.next().await.unwrap().unwrap();
        deleted.insert(ev.key.clone());
        last = ev.revision;
    }
    let client = redis::Client::open(format!("redis://{}", redis.endpoint)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: redis::Value = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut conn)
        .await
        .unwrap();
    // Drain what the stream still yields until it breaks, then resume from the last revision
    // seen, as a consumer does.
    loop {
        match timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(ev))) => {
                deleted.insert(ev.key.clone());
                last = ev.revision;
            }
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => break,
        }
    }
    let backend = builder(&redis.endpoint).connect().await.unwrap();
    let mut resumed = backend.watch("big", last).await.unwrap();
    while let Ok(Some(Ok(ev))) = timeout(Duration::from_secs(3), resumed.next()).await {
        deleted.insert(ev.key.clone());
    }
    assert_eq!(
        deleted.len(),
        600,
        "deletes lost across a resume inside one revision"
    );
}

/// Redis restarted from a snapshot older than what clients saw (an RDB file, as the default
/// configuration writes): the revision counter, the lease id counter and the event stream all went
/// back in time, inside the same epoch. The backend must not hand out a lease id a live process
/// still holds, a watcher must not wait for revisions that now mean something else, and every
/// registration must be back, as the server's own data (read with plain Redis commands) shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_an_older_snapshot_is_a_new_epoch() {
    use registry_engine::RegistrationState;
    let Some(server) = own_redis(RedisOptions {
        host_port: Some(testbed::free_port()),
        extra_args: vec!["--dir".into(), "/data".into()],
        ..RedisOptions::default()
    })
    .await
    else {
        return;
    };
    let endpoint = server.endpoint.clone();
    let truth = redis::Client::open(format!("redis://{endpoint}")).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(builder(&endpoint).connect().await.unwrap());
    let a = Timings::SHORT.registry(&backend);
    let c = Timings::SHORT.registry(&backend);
    let b = Timings::SHORT.registry(&backend);
    let d = b.discover("web").await.unwrap();
    let _w0 = register_web(&a, d.directory(), &["w0"]).await;

    // The snapshot: w0 only. Then another process's lease and registration, and more history.
    let mut con = truth.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SAVE").query_async(&mut con).await.unwrap();
    let w1 = c.register(web("w1")).await.unwrap();
    let RegistrationState::Registered { lease: c_lease, .. } = w1.state() else {
        panic!("{}", w1.state())
    };
    for i in 0..5 {
        backend
            .put(&format!("other/{i}"), Bytes::from_static(b"x"), None)
            .await
            .unwrap();
    }
    until_online(d.directory(), "web", &["w0", "w1"], Duration::from_secs(5)).await;

    // Restart the server process: it loads the older snapshot (nothing is saved at shutdown).
    docker(&["stop", server.container.id()]);
    docker(&["start", server.container.id()]);
    let mut con = retry(
        "redis to come back",
        300,
        Duration::from_millis(100),
        || async {
            let mut con = truth.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut con).await?;
            Ok::<_, redis::RedisError>(con)
        },
    )
    .await;
    let restored = held_keys(&mut con).await;
    assert!(
        !restored.iter().any(|k| k.ends_with("/w1")),
        "the snapshot is older than w1: {restored:?}"
    );

    // A lease granted now is never one a live process still holds.
    // (The backend's connection reconnects first: retry what times out meanwhile.)
    let fresh = retry(
        "grant after the restart",
        20,
        Duration::from_millis(250),
        || async {
            let granted = backend.grant(Duration::from_secs(5)).await;
            if let Err(e) = &granted {
                assert!(e.is_temporary(), "grant after the restart: {e}");
            }
            granted
        },
    )
    .await;
    assert_ne!(fresh.id, c_lease, "a lease id was handed out twice");

    // A registration made after the restart reaches the watcher, and everything registered is
    // back in the server's own data.
    let _w2 = c.register(web("w2")).await.unwrap();
    until_online(
        d.directory(),
        "web",
        &["w0", "w1", "w2"],
        Duration::from_secs(10),
    )
    .await;
    let held = held_keys(&mut con).await;
    for id in ["w0", "w1", "w2"] {
        assert!(
            held.contains(&format!("registry/web/{id}")),
            "{id} missing from the server: {held:?}"
        );
    }
    assert!(w1.state().is_registered(), "{}", w1.state());
}

/// The event stream trimmed past a paused watcher, and then nothing more written: the watcher's
/// blocking read finds nothing after its position, yet changes happened that it never saw. It
/// must report the lost history (the revision counter is ahead of the stream), not stay quiet
/// with a view that misses them until the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_past_a_quiet_watcher_is_compacted() {
    let Some(endpoint) = testbed::shared_redis() else {
        return;
    };
    let ns = testbed::fresh_namespace("trim");
    let backend = builder(&endpoint)
        .namespace(ns.clone())
        .connect()
        .await
        .unwrap();
    let at = backend
        .put("k/a", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    let mut stream = backend.watch("k", at).await.unwrap();
    backend
        .put("k/b", Bytes::from_static(b"2"), None)
        .await
        .unwrap();
    backend.delete("k/a").await.unwrap();
    let client = redis::Client::open(format!("redis://{endpoint}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg(format!("{{{ns}}}:events"))
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut con)
        .await
        .unwrap();
    match timeout(Duration::from_secs(8), stream.next()).await {
        Ok(Some(Err(e))) => assert_eq!(e.kind(), ErrorKind::Compacted, "{e}"),
        other => panic!("the watcher did not report the trimmed history: {other:?}"),
    }
}

/// The server flushed (FLUSHALL) while a watcher's blocking read waits, then written again: the
/// new epoch numbers its revisions from 1, and once they pass the watcher's position its blocked
/// read returns them. They must not be read as a continuation of the old history (the old keys'
/// removals would be missed: phantoms in every view built on the watch); the watcher must report
/// its history lost (`Compacted`) before it hands out anything of the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_under_a_blocked_watcher_is_compacted_not_continued() {
    let Some(redis) = own_redis(RedisOptions::default()).await else {
        return;
    };
    let backend = builder(&redis.endpoint).connect().await.unwrap();
    for i in 0..3 {
        backend
            .put(&format!("k/old{i}"), Bytes::from_static(b"1"), None)
            .await
            .unwrap();
    }
    let at = backend.list("k").await.unwrap().revision;
    let mut stream = backend.watch("k", at).await.unwrap();
    // A consumer polls the watch all along (it reads only when polled).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    // Wait until the watcher's own connection sits in its blocking XREAD.
    let client = redis::Client::open(format!("redis://{}", redis.endpoint)).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    sleep(Duration::from_millis(200)).await; // epochs count tenths of a second
    until_blocked_in_xread(&mut con).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    // More new revisions than the watcher's position, at once (within its 2 s block).
    for i in 0..6 {
        backend
            .put(&format!("k/new{i}"), Bytes::from_static(b"2"), None)
            .await
            .unwrap();
    }
    let mut continued = Vec::new();
    loop {
        match timeout(Duration::from_secs(8), rx.recv()).await {
            Ok(Some(Ok(ev))) => continued.push((ev.key, ev.revision)),
            Ok(Some(Err(e))) => {
                assert_eq!(e.kind(), ErrorKind::Compacted, "{e}");
                break;
            }
            other => panic!("the watch neither failed nor went on: {other:?}"),
        }
    }
    assert!(
        continued.is_empty(),
        "the new epoch's events were read as a continuation of the old history \
         (after revision {at}): {continued:?}"
    );
}

/// The 30-bit local revision counter runs out: the new epoch must end the old epoch's leases
/// with their keys, as the scripts' comment says. A key must never stay behind labelled with a
/// lease id its writer does not hold (the new epoch's number on the old lease's counter): its owner
/// would take it for another process's registration, and the old lease would stay alive in the
/// server until its deadline, unreachable with the id its owner has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_rollover_ends_the_old_leases_with_their_keys() {
    let Some(endpoint) = testbed::shared_redis() else {
        return;
    };
    let ns = testbed::fresh_namespace("rollover-lease");
    let backend = builder(&endpoint)
        .namespace(ns.clone())
        .connect()
        .await
        .unwrap();
    let lease = backend.grant(Duration::from_secs(60)).await.unwrap();
    backend
        .put("k/leased", Bytes::from_static(b"1"), Some(&lease.id))
        .await
        .unwrap();
    let client = redis::Client::open(format!("redis://{endpoint}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{{{ns}}}:rev"))
        .arg(1_073_741_000u64)
        .query_async(&mut con)
        .await
        .unwrap();
    sleep(Duration::from_millis(200)).await; // epochs count tenths of a second
    // Any script rolls over; a read does.
    let after = backend.get("k/leased").await.unwrap();
    let live: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{{{ns}}}:leases"))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        after
            .as_ref()
            .is_none_or(|kv| kv.lease.as_ref() == Some(&lease.id)),
        "after the rollover k/leased is labelled {:?}; its writer holds {}",
        after.as_ref().map(|kv| &kv.lease),
        lease.id
    );
    assert!(
        live.is_empty(),
        "leases of the old epoch still alive after the rollover: {live:?}"
    );
    assert!(
        after.is_none(),
        "a key of an ended lease survived: {after:?}"
    );
    assert_eq!(
        backend.keep_alive(&lease.id).await.unwrap_err().kind(),
        ErrorKind::LeaseNotFound
    );
    // A lease of the new epoch labels its keys with its own id.
    let fresh = backend.grant(Duration::from_secs(60)).await.unwrap();
    backend
        .put("k/leased", Bytes::from_static(b"2"), Some(&fresh.id))
        .await
        .unwrap();
    let kv = backend.get("k/leased").await.unwrap().unwrap();
    assert_eq!(kv.lease.as_ref(), Some(&fresh.id));
}

/// As above, with the new epoch written by an older version of this crate, whose stream entries do
/// not carry their epoch: the watcher asks the server for it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_seen_through_entries_without_an_epoch_is_compacted_too() {
    let Some(redis) = own_redis(RedisOptions::default()).await else {
        return;
    };
    let backend = builder(&redis.endpoint).connect().await.unwrap();
    let at = backend
        .put("k/old", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    let mut stream = backend.watch("k", at).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    let client = redis::Client::open(format!("redis://{}", redis.endpoint)).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    until_blocked_in_xread(&mut con).await;
    // The old writer's new epoch, and its revisions 1 and 2 (past the watcher's position, 1).
    let _: () = redis::pipe()
        .atomic()
        .cmd("FLUSHALL")
        .ignore()
        .cmd("SET")
        .arg("{registry}:epoch")
        .arg((at >> 30) + 5)
        .ignore()
        .cmd("XADD")
        .arg("{registry}:events")
        .arg("1-0")
        .arg(&["k", "k/new1", "t", "p", "v", "2"])
        .ignore()
        .cmd("XADD")
        .arg("{registry}:events")
        .arg("2-0")
        .arg(&["k", "k/new2", "t", "p", "v", "2"])
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    match timeout(Duration::from_secs(8), rx.recv()).await {
        Ok(Some(Err(e))) => assert_eq!(e.kind(), ErrorKind::Compacted, "{e}"),
        other => panic!("expected Compacted, got {other:?}"),
    }
}

/// A Redis Cluster node (a real `redis-server` with `cluster-enabled yes`) is refused at connect
/// with an error that says so and what to use instead, before anything is written to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_node_is_refused_with_a_clear_error() {
    let Some(redis) = own_redis(RedisOptions {
        extra_args: vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            "/tmp/nodes.conf".into(),
        ],
        ..RedisOptions::default()
    })
    .await
    else {
        return;
    };
    let e = builder(&redis.endpoint).connect().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let text = e.to_string();
    assert!(text.contains("Redis Cluster"), "{text}");
    assert!(text.contains("redis+sentinel://"), "{text}");
    // Nothing was written: the server has no key.
    let client = redis::Client::open(format!("redis://{}", redis.endpoint)).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// Counts conditional puts, alone and in batches.
#[derive(Default)]
struct CountWrites {
    single: AtomicUsize,
    batches: AtomicUsize,
}

#[async_trait::async_trait]
impl Hook for CountWrites {
    async fn before(&self, call: &Call<'_>) -> registry_core::Result<()> {
        match call {
            Call::PutIf { .. } => self.single.fetch_add(1, SeqCst),
            Call::PutIfMany { .. } => self.batches.fetch_add(1, SeqCst),
            _ => 0,
        };
        Ok(())
    }
}

/// Issue 30: `register_many` on Redis goes as a few batch scripts, each write with its own
/// outcome; what the server holds, read with the redis crate past our backend, is exactly the
/// registrations the handles claim: every value, its lease, the lease's key set and one stream
/// event each; the one refused (too large) is nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_many_in_batches_is_what_the_server_holds() {
    let Some(endpoint) = testbed::shared_redis() else {
        return;
    };
    let ns = testbed::fresh_namespace("batch");
    let redis: Arc<dyn Backend> = Arc::new(
        builder(&endpoint)
            .namespace(ns.clone())
            .max_value_len(4096)
            .connect()
            .await
            .unwrap(),
    );
    assert_eq!(redis.capabilities().batch_writes, 128);
    let calls = Arc::new(CountWrites::default());
    let backend: Arc<dyn Backend> = Arc::new(Forward::new(redis, calls.clone()));
    let registry = Timings::SHORT.registry(&backend);
    let mut many: Vec<_> = (0..300).map(|i| web(&format!("b{i:03}"))).collect();
    many[42] = web("b042").meta("huge", "x".repeat(10_000));
    let outcomes = registry.register_many(many).await;
    let mut handles = Vec::new();
    for (i, o) in outcomes.into_iter().enumerate() {
        match o {
            Ok(h) if i != 42 => handles.push(h),
            Err(e) if i == 42 => assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}"),
            other => panic!("b{i:03}: {other:?}"),
        }
    }
    let lease = match handles[0].state() {
        registry_engine::RegistrationState::Registered { lease, .. } => lease,
        other => panic!("{other}"),
    };
    let (_, lease_local) = lease.as_str().split_once('-').expect("epoch-id");
    // 300 writes in batches of 128 at most: three calls when the keeper takes them all off its
    // queue at once, a few more when it wakes while they are still being queued; 300 without
    // batches.
    let (batches, single) = (calls.batches.load(SeqCst), calls.single.load(SeqCst));
    assert!(
        batches >= 3 && batches + single <= 16,
        "{batches} batch calls, {single} single conditional puts"
    );

    let client = redis::Client::open(format!("redis://{endpoint}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let base = format!("{{{ns}}}:");
    let kv: std::collections::BTreeMap<String, Vec<u8>> = redis::cmd("HGETALL")
        .arg(format!("{base}kv"))
        .query_async(&mut con)
        .await
        .unwrap();
    let meta: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{base}meta"))
        .query_async(&mut con)
        .await
        .unwrap();
    let mut on_lease: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{base}lk:{lease_local}"))
        .query_async(&mut con)
        .await
        .unwrap();
    on_lease.sort();
    let events: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(format!("{base}events"))
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .unwrap();
    let want: Vec<String> = handles
        .iter()
        .map(|h| format!("registry/web/{}", h.instance().id))
        .collect();
    assert_eq!(kv.keys().cloned().collect::<Vec<_>>(), want, "keys held");
    assert_eq!(on_lease, want, "the lease's key set");
    assert_eq!(
        events.len(),
        want.len(),
        "one stream event per registration"
    );
    for h in &handles {
        let key = format!("registry/web/{}", h.instance().id);
        assert_eq!(kv[&key], h.instance().encode().to_vec(), "{key}: value");
        let (_, held_lease) = meta[&key].split_once(':').expect("rev:lease");
        assert_eq!(held_lease, lease_local, "{key}: lease");
        assert!(h.state().is_registered(), "{key}: {}", h.state());
    }
    registry.crash();
}
