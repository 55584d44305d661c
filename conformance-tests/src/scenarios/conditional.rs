//! Conditional write scenarios: `put_if` and `delete_if` under each [`Condition`], applied and
//! failed; applied ones indistinguishable from unconditional writes, failed ones changing nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use registry_core::{
    Backend, Bytes, CondOutcome, Condition, ErrorKind, Event, EventKind, KeyValue, LeaseId,
    Revision, WatchStream,
};
use tokio::time::Instant;

use crate::Fixture;
use crate::support::*;

/// `put_if`, panicking with context on error.
async fn cput(
    backend: &dyn Backend,
    key: &str,
    value: &str,
    lease: Option<&LeaseId>,
    cond: Condition,
) -> CondOutcome {
    let what = format!("put_if {key} {cond:?}");
    ok(backend.put_if(key, b(value), lease, cond).await, &what)
}

/// `delete_if`, panicking with context on error.
async fn cdel(backend: &dyn Backend, key: &str, cond: Condition) -> CondOutcome {
    let what = format!("delete_if {key} {cond:?}");
    ok(backend.delete_if(key, cond).await, &what)
}

/// The revision of an applied outcome.
#[track_caller]
fn applied(outcome: CondOutcome, what: &str) -> Revision {
    match outcome {
        CondOutcome::Applied(r) => r,
        other => panic!("{what}: expected the write to be applied, got {other:?}"),
    }
}

/// What a failed outcome says the key holds.
#[track_caller]
fn failed(outcome: CondOutcome, what: &str) -> Option<KeyValue> {
    match outcome {
        CondOutcome::Failed(current) => current,
        other => panic!("{what}: expected the condition to fail, got {other:?}"),
    }
}

async fn get(backend: &dyn Backend, key: &str) -> Option<KeyValue> {
    ok(backend.get(key).await, &format!("get {key}"))
}

/// Asserts that the next event of `stream` is `marker` (a put made after the operations that must
/// not have produced any event): nothing came before it.
async fn expect_marker_first(stream: &mut WatchStream, f: &Fixture, marker: &str) {
    let caps = f.backend.capabilities();
    let rev = put(&*f.backend, marker, "marker").await;
    let ev = next_event(stream, &caps).await;
    assert_eq!(
        (ev.kind, ev.key.as_str(), ev.value.clone()),
        (EventKind::Put, marker, b("marker")),
        "a failed (or empty) conditional write produced a watch event: {ev:?}"
    );
    if caps.exact_history {
        assert_eq!(ev.revision, rev, "marker revision");
    }
}

/// `Absent` creates a key once; the second attempt fails and shows the key as it is. The created
/// key carries the lease it was given; once deleted, the key can be created again.
pub async fn cond_put_absent_creates_once(f: Fixture) {
    let caps = f.backend.capabilities();
    let r1 = applied(
        cput(&*f.backend, "ab/k", "first", None, Condition::Absent).await,
        "create",
    );
    assert!(r1 > 0, "create returned revision 0");
    let kv = get(&*f.backend, "ab/k").await.expect("created key");
    assert_eq!(
        (kv.value.clone(), kv.revision, kv.lease.clone()),
        (b("first"), r1, None)
    );
    let current = failed(
        cput(&*f.backend, "ab/k", "second", None, Condition::Absent).await,
        "second create",
    );
    assert_eq!(
        current,
        Some(kv.clone()),
        "the failure shows the key as it is"
    );
    assert_eq!(
        get(&*f.backend, "ab/k").await,
        Some(kv),
        "second create wrote"
    );

    // With a lease: attached exactly as put attaches it.
    let lease = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant");
    let rl = applied(
        cput(
            &*f.backend,
            "ab/l",
            "leased",
            Some(&lease.id),
            Condition::Absent,
        )
        .await,
        "create with lease",
    );
    let kv = get(&*f.backend, "ab/l").await.expect("created leased key");
    assert_eq!((kv.revision, kv.lease), (rl, Some(lease.id.clone())));

    // Deleted, it is absent again.
    let d = ok(f.backend.delete("ab/k").await, "delete").expect("ab/k existed");
    let r2 = applied(
        cput(&*f.backend, "ab/k", "again", None, Condition::Absent).await,
        "create after delete",
    );
    assert!(r2 > d, "re-create revision {r2} not after the delete {d}");
    assert_eq!(
        get(&*f.backend, "ab/k").await.expect("key").value,
        b("again")
    );
    ok(f.backend.revoke(&lease.id).await, "revoke");
    assert_eq!(get(&*f.backend, "ab/l").await, None, "revoke left the key");
}

/// `Revision(r)` writes only over the key's last change `r`: a stale revision fails with the
/// current key; an absent key and revision 0 never match.
pub async fn cond_put_revision_is_compare_and_swap(f: Fixture) {
    let r1 = put(&*f.backend, "cas/k", "1").await;
    let r2 = applied(
        cput(&*f.backend, "cas/k", "2", None, Condition::Revision(r1)).await,
        "swap at the current revision",
    );
    assert!(r2 > r1);
    let kv = get(&*f.backend, "cas/k").await.expect("key");
    assert_eq!((kv.value.clone(), kv.revision), (b("2"), r2));
    let current = failed(
        cput(&*f.backend, "cas/k", "3", None, Condition::Revision(r1)).await,
        "swap at a stale revision",
    );
    assert_eq!(current, Some(kv.clone()));
    assert_eq!(get(&*f.backend, "cas/k").await, Some(kv.clone()));
    assert_eq!(
        failed(
            cput(&*f.backend, "cas/k", "3", None, Condition::Revision(0)).await,
            "revision 0",
        ),
        Some(kv.clone())
    );
    // A revision of another key is not this key's.
    let other = put(&*f.backend, "cas/other", "x").await;
    assert_eq!(
        failed(
            cput(&*f.backend, "cas/k", "3", None, Condition::Revision(other)).await,
            "another key's revision",
        ),
        Some(kv)
    );
    // Absent keys have no revision to match, not even one they had before their delete.
    assert_eq!(
        failed(
            cput(&*f.backend, "cas/none", "x", None, Condition::Revision(r1)).await,
            "absent key",
        ),
        None
    );
    let d = ok(f.backend.delete("cas/other").await, "delete").expect("existed");
    for rev in [other, d, 0] {
        assert_eq!(
            failed(
                cput(
                    &*f.backend,
                    "cas/other",
                    "x",
                    None,
                    Condition::Revision(rev)
                )
                .await,
                "deleted key",
            ),
            None
        );
    }
    assert_eq!(get(&*f.backend, "cas/none").await, None);
    assert_eq!(get(&*f.backend, "cas/other").await, None);
}

/// `Lease(l)` writes only over a key attached to `l`. The write attaches the key to the lease it
/// is given, moves it to another lease, or detaches it, exactly as put does; a key without a lease,
/// one attached to another lease and an absent key fail.
pub async fn cond_put_lease_is_write_if_owner(f: Fixture) {
    let caps = f.backend.capabilities();
    let a = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant a").id;
    let bl = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant b").id;
    ok(f.backend.put("own/k", b("1"), Some(&a)).await, "put");
    put(&*f.backend, "own/plain", "p").await;

    // Owner writes, keeping the lease.
    let r = applied(
        cput(
            &*f.backend,
            "own/k",
            "2",
            Some(&a),
            Condition::Lease(a.clone()),
        )
        .await,
        "owner writes",
    );
    let kv = get(&*f.backend, "own/k").await.expect("key");
    assert_eq!(
        (kv.value.clone(), kv.revision, kv.lease.clone()),
        (b("2"), r, Some(a.clone()))
    );
    // Not the owner.
    let current = failed(
        cput(
            &*f.backend,
            "own/k",
            "x",
            Some(&bl),
            Condition::Lease(bl.clone()),
        )
        .await,
        "another lease",
    );
    assert_eq!(current, Some(kv.clone()));
    let plain = get(&*f.backend, "own/plain").await.expect("plain");
    assert_eq!(
        failed(
            cput(
                &*f.backend,
                "own/plain",
                "x",
                None,
                Condition::Lease(a.clone())
            )
            .await,
            "key without a lease",
        ),
        Some(plain.clone())
    );
    assert_eq!(
        failed(
            cput(
                &*f.backend,
                "own/none",
                "x",
                Some(&a),
                Condition::Lease(a.clone())
            )
            .await,
            "absent key",
        ),
        None
    );
    assert_eq!(get(&*f.backend, "own/k").await, Some(kv));
    assert_eq!(get(&*f.backend, "own/plain").await, Some(plain));
    assert_eq!(get(&*f.backend, "own/none").await, None);

    // The owner hands the key over to lease b: revoking a leaves it, b owns it now.
    applied(
        cput(
            &*f.backend,
            "own/k",
            "3",
            Some(&bl),
            Condition::Lease(a.clone()),
        )
        .await,
        "move to b",
    );
    assert_eq!(
        get(&*f.backend, "own/k").await.and_then(|kv| kv.lease),
        Some(bl.clone())
    );
    ok(f.backend.revoke(&a).await, "revoke a");
    assert!(
        get(&*f.backend, "own/k").await.is_some(),
        "revoking the old owner deleted the key"
    );
    // And b detaches it: revoking b leaves it too.
    let r = applied(
        cput(
            &*f.backend,
            "own/k",
            "4",
            None,
            Condition::Lease(bl.clone()),
        )
        .await,
        "detach",
    );
    let kv = get(&*f.backend, "own/k").await.expect("key");
    assert_eq!((kv.value.clone(), kv.revision, kv.lease), (b("4"), r, None));
    ok(f.backend.revoke(&bl).await, "revoke b");
    assert_eq!(
        get(&*f.backend, "own/k").await.map(|kv| kv.value),
        Some(b("4")),
        "revoking a lease deleted a key detached from it"
    );
}

/// With `Absent`, `delete_if` holds exactly when there is nothing to delete: applied, with no
/// change and no event. An existing key fails and stays.
pub async fn cond_delete_absent_changes_nothing(f: Fixture) {
    let p = put(&*f.backend, "da/k", "v").await;
    let d = ok(f.backend.delete("da/k").await, "delete").expect("existed");
    assert!(d > p);
    let start = ok(f.backend.list("").await, "list");
    let mut stream = watch(&*f.backend, "da", start.revision).await;
    for key in ["da/k", "da/never"] {
        let r = applied(
            cdel(&*f.backend, key, Condition::Absent).await,
            &format!("delete_if({key}, Absent)"),
        );
        assert!(r >= d, "{key}: revision {r} is before the key's delete {d}");
    }
    // Entries only: a listing's revision is the whole server's on etcd and Consul, which other
    // tests sharing the server move; that no event happened is checked on the watch.
    assert_eq!(
        ok(f.backend.list("").await, "list").entries,
        start.entries,
        "deleting nothing changed the namespace"
    );
    let kept = put(&*f.backend, "da/kept", "v").await;
    let kv = get(&*f.backend, "da/kept").await.expect("key");
    assert_eq!(
        failed(
            cdel(&*f.backend, "da/kept", Condition::Absent).await,
            "existing key",
        ),
        Some(kv.clone())
    );
    assert_eq!(get(&*f.backend, "da/kept").await, Some(kv));
    // The only events: the put of da/kept, then the marker.
    let ev = next_event(&mut stream, &f.backend.capabilities()).await;
    assert_eq!((ev.kind, ev.key.as_str()), (EventKind::Put, "da/kept"));
    if f.backend.capabilities().exact_history {
        assert_eq!(ev.revision, kept);
    }
    expect_marker_first(&mut stream, &f, "da/marker").await;
}

/// `Revision(r)` deletes only a key whose last change is `r`; afterwards the key is gone and the
/// same condition fails with nothing.
pub async fn cond_delete_revision_is_compare_and_delete(f: Fixture) {
    let r1 = put(&*f.backend, "cad/k", "1").await;
    let r2 = put(&*f.backend, "cad/k", "2").await;
    let kv = get(&*f.backend, "cad/k").await.expect("key");
    for stale in [r1, 0, r2 + 1000] {
        assert_eq!(
            failed(
                cdel(&*f.backend, "cad/k", Condition::Revision(stale)).await,
                &format!("delete at revision {stale}"),
            ),
            Some(kv.clone())
        );
    }
    assert_eq!(get(&*f.backend, "cad/k").await, Some(kv));
    let d = applied(
        cdel(&*f.backend, "cad/k", Condition::Revision(r2)).await,
        "delete at the current revision",
    );
    assert!(d > r2, "delete revision {d} not after {r2}");
    assert_eq!(get(&*f.backend, "cad/k").await, None);
    assert_eq!(
        failed(
            cdel(&*f.backend, "cad/k", Condition::Revision(r2)).await,
            "delete again",
        ),
        None
    );
    assert_eq!(
        failed(
            cdel(&*f.backend, "cad/never", Condition::Revision(r2)).await,
            "absent key",
        ),
        None
    );
}

/// `Lease(l)` deletes only a key attached to `l`. The lease lives on, and the key is no longer
/// its: written again without a lease, revoking `l` leaves it.
pub async fn cond_delete_lease_is_delete_if_owner(f: Fixture) {
    let caps = f.backend.capabilities();
    let a = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant a").id;
    let bl = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant b").id;
    let r = ok(f.backend.put("dl/k", b("v"), Some(&a)).await, "put");
    put(&*f.backend, "dl/plain", "p").await;
    let kv = get(&*f.backend, "dl/k").await.expect("key");
    let plain = get(&*f.backend, "dl/plain").await.expect("plain");
    assert_eq!(
        failed(
            cdel(&*f.backend, "dl/k", Condition::Lease(bl.clone())).await,
            "another lease",
        ),
        Some(kv.clone())
    );
    assert_eq!(
        failed(
            cdel(&*f.backend, "dl/plain", Condition::Lease(a.clone())).await,
            "key without a lease",
        ),
        Some(plain.clone())
    );
    assert_eq!(
        failed(
            cdel(&*f.backend, "dl/none", Condition::Lease(a.clone())).await,
            "absent key",
        ),
        None
    );
    assert_eq!(get(&*f.backend, "dl/k").await, Some(kv));
    assert_eq!(get(&*f.backend, "dl/plain").await, Some(plain));
    let d = applied(
        cdel(&*f.backend, "dl/k", Condition::Lease(a.clone())).await,
        "owner deletes",
    );
    assert!(d > r);
    assert_eq!(get(&*f.backend, "dl/k").await, None);
    ok(f.backend.keep_alive(&a).await, "the lease outlives its key");
    put(&*f.backend, "dl/k", "plain now").await;
    ok(f.backend.revoke(&a).await, "revoke a");
    assert_eq!(
        get(&*f.backend, "dl/k").await.map(|kv| kv.value),
        Some(b("plain now")),
        "revoking the lease deleted a key conditionally deleted from it and written again"
    );
    ok(f.backend.revoke(&bl).await, "revoke b");
}

/// Once its lease is revoked a key is gone: `Lease(l)` fails with nothing for put and delete; a
/// write with the revoked lease whose condition holds is `LeaseNotFound` and writes nothing.
pub async fn cond_lease_condition_fails_once_revoked(f: Fixture) {
    let caps = f.backend.capabilities();
    let a = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant").id;
    applied(
        cput(&*f.backend, "rvk/k", "v", Some(&a), Condition::Absent).await,
        "create with lease",
    );
    ok(f.backend.revoke(&a).await, "revoke");
    assert_eq!(get(&*f.backend, "rvk/k").await, None, "revoke left the key");
    assert_eq!(
        failed(
            cput(&*f.backend, "rvk/k", "x", None, Condition::Lease(a.clone())).await,
            "put_if Lease(revoked)",
        ),
        None
    );
    assert_eq!(
        failed(
            cdel(&*f.backend, "rvk/k", Condition::Lease(a.clone())).await,
            "delete_if Lease(revoked)",
        ),
        None
    );
    assert_kind(
        f.backend
            .put_if("rvk/k", b("x"), Some(&a), Condition::Absent)
            .await,
        ErrorKind::LeaseNotFound,
        "put_if with a revoked lease, condition holding",
    );
    let plain = put(&*f.backend, "rvk/plain", "p").await;
    assert_kind(
        f.backend
            .put_if("rvk/plain", b("x"), Some(&a), Condition::Revision(plain))
            .await,
        ErrorKind::LeaseNotFound,
        "put_if with a revoked lease over a key, condition holding",
    );
    assert_eq!(get(&*f.backend, "rvk/k").await, None, "written anyway");
    let kv = get(&*f.backend, "rvk/plain").await.expect("plain");
    assert_eq!((kv.value, kv.revision, kv.lease), (b("p"), plain, None));
}

/// Once its lease has expired a key is gone: `Lease(l)` fails with nothing for put and delete.
pub async fn cond_lease_condition_fails_once_expired(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(test_ttl(&caps)).await, "grant");
    let a = lease.id.clone();
    applied(
        cput(&*f.backend, "exp/k", "v", Some(&a), Condition::Absent).await,
        "create with lease",
    );
    applied(
        cput(
            &*f.backend,
            "exp/k",
            "w",
            Some(&a),
            Condition::Lease(a.clone()),
        )
        .await,
        "owner writes before expiry",
    );
    wait_gone(
        &*f.backend,
        "exp/k",
        Instant::now(),
        expiry_deadline(&caps, lease.ttl),
    )
    .await;
    assert_eq!(
        failed(
            cput(&*f.backend, "exp/k", "x", None, Condition::Lease(a.clone())).await,
            "put_if Lease(expired)",
        ),
        None
    );
    assert_eq!(
        failed(
            cdel(&*f.backend, "exp/k", Condition::Lease(a.clone())).await,
            "delete_if Lease(expired)",
        ),
        None
    );
    assert_eq!(get(&*f.backend, "exp/k").await, None, "written anyway");
}

/// The condition is checked before the lease: with a revoked lease and a condition that does not
/// hold, the outcome is `Failed` with the key as it is, not `LeaseNotFound`.
pub async fn cond_condition_comes_before_the_lease(f: Fixture) {
    let caps = f.backend.capabilities();
    let a = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant").id;
    ok(f.backend.revoke(&a).await, "revoke");
    let r = put(&*f.backend, "first/k", "v").await;
    let kv = get(&*f.backend, "first/k").await.expect("key");
    for cond in [
        Condition::Absent,
        Condition::Revision(r + 1000),
        Condition::Lease(a.clone()),
    ] {
        assert_eq!(
            failed(
                cput(&*f.backend, "first/k", "x", Some(&a), cond.clone()).await,
                &format!("{cond:?} with a revoked lease"),
            ),
            Some(kv.clone())
        );
    }
    assert_eq!(
        failed(
            cput(
                &*f.backend,
                "first/none",
                "x",
                Some(&a),
                Condition::Revision(r)
            )
            .await,
            "absent key with a revoked lease",
        ),
        None
    );
    assert_eq!(get(&*f.backend, "first/k").await, Some(kv));
    assert_eq!(get(&*f.backend, "first/none").await, None);
}

/// Waits for the event of one write and checks it against `want` (its revision too, with exact
/// history: without it, delete revisions are the backend's own). Returns it without `prefix`.
async fn expect_step(
    stream: &mut WatchStream,
    f: &Fixture,
    prefix: &str,
    want: Event,
) -> (EventKind, String, Bytes) {
    let caps = f.backend.capabilities();
    let got = next_event(stream, &caps).await;
    assert_eq!(
        (got.kind, &got.key, &got.value),
        (want.kind, &want.key, &want.value),
        "event of the write"
    );
    if caps.exact_history || want.kind == EventKind::Put {
        assert_eq!(got.revision, want.revision, "{}: revision", got.key);
    }
    let key = got.key.strip_prefix(prefix).unwrap_or(&got.key).to_owned();
    (got.kind, key, got.value)
}

/// One script of writes under `prefix`, conditional or not, each write's event awaited on
/// `stream` before the next write (so that no backend may coalesce two of them). Ends with a
/// revoke of the lease two keys were written with. Returns the events without the prefix.
async fn write_script(
    f: &Fixture,
    stream: &mut WatchStream,
    prefix: &str,
    conditional: bool,
) -> Vec<(EventKind, String, Bytes)> {
    let caps = f.backend.capabilities();
    let be = &*f.backend;
    let lease = ok(be.grant(lasting_ttl(&caps)).await, "grant").id;
    let (ka, kb, kc) = (
        format!("{prefix}/a"),
        format!("{prefix}/b"),
        format!("{prefix}/c"),
    );
    let mut got = Vec::new();
    let r1 = if conditional {
        applied(cput(be, &ka, "1", None, Condition::Absent).await, "a 1")
    } else {
        put(be, &ka, "1").await
    };
    got.push(expect_step(stream, f, prefix, Event::put(&ka, b("1"), r1)).await);
    let r2 = if conditional {
        applied(
            cput(be, &ka, "2", None, Condition::Revision(r1)).await,
            "a 2",
        )
    } else {
        put(be, &ka, "2").await
    };
    got.push(expect_step(stream, f, prefix, Event::put(&ka, b("2"), r2)).await);
    let r3 = if conditional {
        applied(
            cput(be, &kb, "3", Some(&lease), Condition::Absent).await,
            "b 3",
        )
    } else {
        ok(be.put(&kb, b("3"), Some(&lease)).await, "b 3")
    };
    got.push(expect_step(stream, f, prefix, Event::put(&kb, b("3"), r3)).await);
    let r4 = if conditional {
        applied(
            cput(be, &kb, "4", Some(&lease), Condition::Lease(lease.clone())).await,
            "b 4",
        )
    } else {
        ok(be.put(&kb, b("4"), Some(&lease)).await, "b 4")
    };
    got.push(expect_step(stream, f, prefix, Event::put(&kb, b("4"), r4)).await);
    let r5 = if conditional {
        applied(cdel(be, &ka, Condition::Revision(r2)).await, "delete a")
    } else {
        ok(be.delete(&ka).await, "delete a").expect("a existed")
    };
    got.push(expect_step(stream, f, prefix, Event::delete(&ka, r5)).await);
    let r6 = if conditional {
        applied(
            cput(be, &kc, "5", Some(&lease), Condition::Absent).await,
            "c 5",
        )
    } else {
        ok(be.put(&kc, b("5"), Some(&lease)).await, "c 5")
    };
    got.push(expect_step(stream, f, prefix, Event::put(&kc, b("5"), r6)).await);
    // The keys follow the lease they were written with: one delete each, in one revision.
    ok(be.revoke(&lease).await, "revoke");
    let d1 = next_event(stream, &caps).await;
    let d2 = next_event(stream, &caps).await;
    assert!(
        d1.kind == EventKind::Delete && d2.kind == EventKind::Delete,
        "revoke: {d1:?}, {d2:?}"
    );
    assert!(
        d1.revision == d2.revision && d1.revision > r6,
        "revoke deletes at {} and {}, after {r6}",
        d1.revision,
        d2.revision
    );
    let mut deletes = [d1, d2];
    deletes.sort_by(|x, y| x.key.cmp(&y.key));
    for d in deletes {
        let key = d.key.strip_prefix(prefix).unwrap_or(&d.key).to_owned();
        got.push((d.kind, key, d.value));
    }
    got
}

/// Applied conditional writes reach watchers exactly as unconditional ones do: the same script run
/// both ways produces the same events, with the revisions the writes returned, and keys written
/// conditionally with a lease are deleted with it.
pub async fn cond_applied_writes_watch_like_unconditional(f: Fixture) {
    let start = ok(f.backend.list("").await, "list").revision;
    let mut plain_stream = watch(&*f.backend, "wu", start).await;
    let mut cond_stream = watch(&*f.backend, "wc", start).await;
    let plain = write_script(&f, &mut plain_stream, "wu", false).await;
    let cond = write_script(&f, &mut cond_stream, "wc", true).await;
    assert_eq!(
        cond, plain,
        "conditional writes produced other events than the same unconditional writes"
    );
    assert!(ok(f.backend.list("wc").await, "list").entries.is_empty());
    assert_quiet(&mut cond_stream, Duration::from_millis(200)).await;
    assert_quiet(&mut plain_stream, Duration::from_millis(10)).await;
}

/// A failed conditional write, of every kind, changes nothing: no value, revision or lease moves,
/// the namespace's revision stays, and no watcher sees an event.
pub async fn cond_failed_writes_change_nothing(f: Fixture) {
    let caps = f.backend.capabilities();
    let a = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant a").id;
    let bl = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant b").id;
    let rp = put(&*f.backend, "fl/plain", "p").await;
    let rl = ok(f.backend.put("fl/leased", b("l"), Some(&a)).await, "put");
    let before = ok(f.backend.list("").await, "list");
    let mut stream = watch(&*f.backend, "fl", before.revision).await;
    let plain = get(&*f.backend, "fl/plain").await;
    let leased = get(&*f.backend, "fl/leased").await;
    let puts = [
        ("fl/plain", Condition::Absent, &plain),
        ("fl/leased", Condition::Absent, &leased),
        ("fl/plain", Condition::Revision(rl), &plain),
        ("fl/plain", Condition::Revision(0), &plain),
        ("fl/leased", Condition::Revision(rp), &leased),
        ("fl/none", Condition::Revision(rp), &None),
        ("fl/plain", Condition::Lease(a.clone()), &plain),
        ("fl/leased", Condition::Lease(bl.clone()), &leased),
        ("fl/none", Condition::Lease(a.clone()), &None),
    ];
    for (key, cond, current) in &puts {
        for lease in [None, Some(&a), Some(&bl)] {
            let what = format!("put_if({key}, {cond:?}) with lease {lease:?}");
            let got = failed(
                cput(&*f.backend, key, "x", lease, cond.clone()).await,
                &what,
            );
            assert_eq!(&got, *current, "{what}");
        }
    }
    let deletes = [
        ("fl/plain", Condition::Absent, &plain),
        ("fl/leased", Condition::Revision(rp), &leased),
        ("fl/plain", Condition::Revision(0), &plain),
        ("fl/none", Condition::Revision(rl), &None),
        ("fl/plain", Condition::Lease(a.clone()), &plain),
        ("fl/leased", Condition::Lease(bl.clone()), &leased),
        ("fl/none", Condition::Lease(bl.clone()), &None),
    ];
    for (key, cond, current) in &deletes {
        let what = format!("delete_if({key}, {cond:?})");
        let got = failed(cdel(&*f.backend, key, cond.clone()).await, &what);
        assert_eq!(&got, *current, "{what}");
    }
    // Entries only (see cond_delete_absent_changes_nothing); the watch below proves that no
    // event, hence no revision of this namespace, came of the failed writes.
    assert_eq!(
        ok(f.backend.list("").await, "list").entries,
        before.entries,
        "failed conditional writes changed the namespace"
    );
    expect_marker_first(&mut stream, &f, "fl/marker").await;
    ok(f.backend.revoke(&a).await, "revoke a");
    ok(f.backend.revoke(&bl).await, "revoke b");
}

/// Conditional writes check keys and values as put and delete do: invalid keys and oversized
/// values are `InvalidInput` whatever the condition, and write nothing; a value of the maximum
/// size is accepted.
pub async fn cond_writes_validate_like_put(f: Fixture) {
    let caps = f.backend.capabilities();
    for k in ["", "a\0b", "a\nb"] {
        assert_kind(
            f.backend.put_if(k, b("v"), None, Condition::Absent).await,
            ErrorKind::InvalidInput,
            &format!("put_if {k:?}"),
        );
        assert_kind(
            f.backend.delete_if(k, Condition::Absent).await,
            ErrorKind::InvalidInput,
            &format!("delete_if {k:?}"),
        );
    }
    let long = "k".repeat(caps.max_key_len + 1);
    assert_kind(
        f.backend
            .put_if(&long, b("v"), None, Condition::Absent)
            .await,
        ErrorKind::InvalidInput,
        "put_if over-long key",
    );
    assert_kind(
        f.backend.delete_if(&long, Condition::Absent).await,
        ErrorKind::InvalidInput,
        "delete_if over-long key",
    );
    let r = put(&*f.backend, "val/k", "v").await;
    let over: Bytes = vec![7u8; caps.max_value_len + 1].into();
    for cond in [Condition::Absent, Condition::Revision(r)] {
        assert_kind(
            f.backend
                .put_if("val/k", over.clone(), None, cond.clone())
                .await,
            ErrorKind::InvalidInput,
            &format!("put_if one byte over, {cond:?}"),
        );
    }
    let kv = get(&*f.backend, "val/k").await.expect("key");
    assert_eq!(
        (kv.value, kv.revision),
        (b("v"), r),
        "oversized value written"
    );
    let max: Bytes = (0..caps.max_value_len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    applied(
        ok(
            f.backend
                .put_if("val/k", max.clone(), None, Condition::Revision(r))
                .await,
            "put_if at max size",
        ),
        "put_if at max size",
    );
    assert!(
        get(&*f.backend, "val/k").await.expect("key").value == max,
        "big value corrupted"
    );
}

/// Racing conditional writes: of eight concurrent creates exactly one wins and the others see
/// its value; of eight concurrent deletes at one revision exactly one wins; four writers
/// incrementing one counter with compare-and-swap lose no increment.
pub async fn cond_concurrent_writers_have_one_winner(f: Fixture) {
    const RACERS: usize = 8;
    let outcomes = join_all((0..RACERS).map(|i| {
        let backend = f.backend.clone();
        async move { cput(&*backend, "race/k", &i.to_string(), None, Condition::Absent).await }
    }))
    .await;
    let winners: Vec<usize> = (0..RACERS).filter(|i| outcomes[*i].is_applied()).collect();
    assert_eq!(winners.len(), 1, "creates applied: {outcomes:?}");
    let winner = b(&winners[0].to_string());
    let kv = get(&*f.backend, "race/k").await.expect("key");
    assert_eq!(kv.value, winner);
    for o in outcomes.iter().filter(|o| !o.is_applied()) {
        match o {
            CondOutcome::Failed(Some(current)) => assert_eq!(current.value, winner),
            other => panic!("a losing create: {other:?}"),
        }
    }

    let outcomes = join_all((0..RACERS).map(|_| {
        let backend = f.backend.clone();
        let rev = kv.revision;
        async move { cdel(&*backend, "race/k", Condition::Revision(rev)).await }
    }))
    .await;
    assert_eq!(
        outcomes.iter().filter(|o| o.is_applied()).count(),
        1,
        "deletes applied: {outcomes:?}"
    );
    assert_eq!(get(&*f.backend, "race/k").await, None);

    const WRITERS: usize = 4;
    const EACH: usize = 5;
    put(&*f.backend, "race/counter", "0").await;
    let revs = join_all((0..WRITERS).map(|_| {
        let backend = f.backend.clone();
        async move {
            let mut revs = Vec::new();
            while revs.len() < EACH {
                let kv = get(&*backend, "race/counter").await.expect("counter");
                let n: usize = std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .expect("a number");
                let next = (n + 1).to_string();
                match cput(
                    &*backend,
                    "race/counter",
                    &next,
                    None,
                    Condition::Revision(kv.revision),
                )
                .await
                {
                    CondOutcome::Applied(r) => revs.push(r),
                    CondOutcome::Failed(Some(now)) => assert_ne!(
                        now.revision, kv.revision,
                        "failed although the revision had not moved"
                    ),
                    other => panic!("increment: {other:?}"),
                }
            }
            revs
        }
    }))
    .await;
    let all: BTreeSet<Revision> = revs.into_iter().flatten().collect();
    assert_eq!(
        all.len(),
        WRITERS * EACH,
        "two increments got the same revision"
    );
    assert_eq!(
        get(&*f.backend, "race/counter")
            .await
            .expect("counter")
            .value,
        b(&(WRITERS * EACH).to_string()),
        "an increment was lost"
    );
}

/// `put_if_many`: each write is checked and applied alone, with its own outcome in the order
/// given: applied creates and compare-and-swaps, failed conditions showing the key, a key or value
/// refused, a lease that has ended, side by side in one call. Each applied write is one watch
/// event at the revision it returned, the failed ones none; a call larger than the backend's
/// batch is split and loses no write; keys written on a lease go with it.
pub async fn cond_put_many_each_write_alone(f: Fixture) {
    use registry_core::CondPut;
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant").id;
    let gone = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant").id;
    ok(f.backend.revoke(&gone).await, "revoke");
    let r_taken = put(&*f.backend, "pm/taken", "theirs").await;
    let r_mine = put(&*f.backend, "pm/mine", "old").await;
    let taken = get(&*f.backend, "pm/taken").await;
    let start = ok(f.backend.list("").await, "list").revision;
    let mut stream = watch(&*f.backend, "pm", start).await;
    assert!(
        f.backend.put_if_many(Vec::new()).await.is_empty(),
        "an empty batch has no outcomes"
    );

    let over: Bytes = vec![7u8; caps.max_value_len + 1].into();
    let l = Some(lease.clone());
    let writes = vec![
        CondPut::new("pm/new", b("n"), l.clone(), Condition::Absent),
        CondPut::new("pm/taken", b("x"), l.clone(), Condition::Absent),
        CondPut::new("pm/mine", b("m"), l.clone(), Condition::Revision(r_mine)),
        CondPut::new("pm/stale", b("x"), None, Condition::Revision(r_taken)),
        CondPut::new("a\0b", b("x"), None, Condition::Absent),
        CondPut::new("pm/big", over, None, Condition::Absent),
        CondPut::new("pm/gone", b("x"), Some(gone.clone()), Condition::Absent),
        CondPut::new("pm/plain", b("p"), None, Condition::Absent),
    ];
    let outcomes = f.backend.put_if_many(writes).await;
    assert_eq!(outcomes.len(), 8, "one outcome per write: {outcomes:?}");
    let mut it = outcomes.into_iter();
    let mut next = |what: &str| (it.next().expect("an outcome"), what.to_owned());
    let (o, w) = next("create pm/new");
    let r_new = applied(ok(o, &w), &w);
    let (o, w) = next("create over pm/taken");
    assert_eq!(failed(ok(o, &w), &w), taken, "{w}: what the key holds");
    let (o, w) = next("compare-and-swap pm/mine");
    let r_cas = applied(ok(o, &w), &w);
    let (o, w) = next("compare-and-swap of an absent key");
    assert_eq!(failed(ok(o, &w), &w), None, "{w}");
    let (o, w) = next("invalid key");
    assert_kind(o, ErrorKind::InvalidInput, &w);
    let (o, w) = next("oversized value");
    assert_kind(o, ErrorKind::InvalidInput, &w);
    let (o, w) = next("revoked lease");
    assert_kind(o, ErrorKind::LeaseNotFound, &w);
    let (o, w) = next("create pm/plain");
    let r_plain = applied(ok(o, &w), &w);

    // Exactly the applied writes reach a watcher, each once, at its revision, and nothing else.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = next_event(&mut stream, &caps).await;
        seen.push((ev.key.clone(), ev.value.clone(), ev.revision));
    }
    seen.sort_by_key(|(_, _, r)| *r);
    let mut want = vec![
        ("pm/new".to_owned(), b("n"), r_new),
        ("pm/mine".to_owned(), b("m"), r_cas),
        ("pm/plain".to_owned(), b("p"), r_plain),
    ];
    want.sort_by_key(|(_, _, r)| *r);
    assert_eq!(seen, want, "the batch's watch events");
    expect_marker_first(&mut stream, &f, "pm/marker").await;
    for (key, value, lease_of) in [
        ("pm/new", "n", Some(&lease)),
        ("pm/mine", "m", Some(&lease)),
        ("pm/plain", "p", None),
        ("pm/taken", "theirs", None),
    ] {
        let kv = get(&*f.backend, key).await.expect(key);
        assert_eq!((kv.value, kv.lease.as_ref()), (b(value), lease_of), "{key}");
    }
    for key in ["pm/stale", "pm/big", "pm/gone"] {
        assert_eq!(get(&*f.backend, key).await, None, "{key} was written");
    }

    // More writes than one batch of the backend's carries: split, none lost, all in order.
    let n = caps.batch_writes.min(2048) * 2 + 3;
    let writes = (0..n)
        .map(|i| {
            CondPut::new(
                format!("pm/many/{i:05}"),
                b(&i.to_string()),
                l.clone(),
                Condition::Absent,
            )
        })
        .collect();
    let outcomes = f.backend.put_if_many(writes).await;
    assert_eq!(outcomes.len(), n);
    let revs: Vec<Revision> = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, o)| applied(ok(o, &format!("write {i}")), &format!("write {i}")))
        .collect();
    let listed = ok(f.backend.list("pm/many").await, "list").entries;
    assert_eq!(listed.len(), n, "keys written by the split batch");
    for (i, kv) in listed.iter().enumerate() {
        assert_eq!(
            (kv.key.as_str(), kv.value.clone(), kv.revision),
            (
                format!("pm/many/{i:05}").as_str(),
                b(&i.to_string()),
                revs[i]
            ),
            "key {i} as listed against its outcome"
        );
    }
    ok(f.backend.revoke(&lease).await, "revoke");
    let left: Vec<String> = ok(f.backend.list("pm").await, "list")
        .entries
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        left,
        ["pm/marker", "pm/plain", "pm/taken"],
        "keys left after the batch's lease was revoked"
    );
}
