//! Lease scenarios: grant, keep-alive, expiry, revoke, and how keys follow their lease.

use std::time::Duration;

use futures::future::join_all;
use registry_core::{ErrorKind, EventKind, LeaseId};
use tokio::time::{Instant, sleep};

use crate::Fixture;
use crate::support::*;

/// A granted lease reports the TTL actually granted: at least the request, rounded up to the
/// declared granularity at most.
pub async fn lease_grant_reports_granted_ttl(f: Fixture) {
    let caps = f.backend.capabilities();
    let ttl = test_ttl(&caps);
    let lease = ok(f.backend.grant(ttl).await, "grant");
    assert!(
        lease.ttl >= ttl,
        "granted {:?} < requested {ttl:?}",
        lease.ttl
    );
    assert!(
        lease.ttl <= ttl + caps.ttl_granularity,
        "granted {:?} is more than one granularity ({:?}) above {ttl:?}",
        lease.ttl,
        caps.ttl_granularity
    );
    let other = ok(f.backend.grant(ttl).await, "second grant");
    assert_ne!(lease.id, other.id, "two grants returned the same lease id");
    ok(f.backend.revoke(&lease.id).await, "revoke");
    ok(f.backend.revoke(&other.id).await, "revoke");
}

/// A zero TTL and one above the maximum are invalid; one below the minimum is raised to it or
/// rejected, never granted shorter.
pub async fn lease_grant_out_of_range(f: Fixture) {
    let caps = f.backend.capabilities();
    assert_kind(
        f.backend.grant(Duration::ZERO).await,
        ErrorKind::InvalidInput,
        "grant(0)",
    );
    assert_kind(
        f.backend.grant(caps.max_ttl + Duration::from_secs(1)).await,
        ErrorKind::InvalidInput,
        "grant above max_ttl",
    );
    let short = (caps.min_ttl / 2).max(Duration::from_millis(1));
    match f.backend.grant(short).await {
        Ok(lease) => {
            assert!(
                lease.ttl >= caps.min_ttl,
                "grant({short:?}) granted {:?}, below the declared minimum {:?}",
                lease.ttl,
                caps.min_ttl
            );
            // Clean up; a lease of the minimum TTL (10 ms on memory) may have ended already.
            match f.backend.revoke(&lease.id).await {
                Ok(()) => {}
                Err(e) => assert_eq!(e.kind(), ErrorKind::LeaseNotFound, "revoke: {e}"),
            }
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "grant({short:?}): {e}"),
    }
}

/// Keep-alives at a third of the TTL keep a lease's key for several TTLs.
pub async fn lease_keep_alive_keeps_keys(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(test_ttl(&caps)).await, "grant");
    ok(f.backend.put("k", b("v"), Some(&lease.id)).await, "put");
    let until = Instant::now() + lease.ttl * 2 + caps.expiry_slack_for(lease.ttl) + lease.ttl / 2;
    while Instant::now() < until {
        sleep(lease.ttl / 3).await;
        ok(f.backend.keep_alive(&lease.id).await, "keep_alive");
    }
    let kv = ok(f.backend.get("k").await, "get").expect("key vanished despite keep-alives");
    assert_eq!(kv.lease.as_ref(), Some(&lease.id));
    ok(f.backend.revoke(&lease.id).await, "revoke");
}

/// Keep-alive returns the remaining TTL: positive and at most the granted TTL.
pub async fn lease_keep_alive_reports_remaining_ttl(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(test_ttl(&caps)).await, "grant");
    let remaining = ok(f.backend.keep_alive(&lease.id).await, "keep_alive");
    assert!(!remaining.is_zero(), "keep-alive reported zero remaining");
    assert!(
        remaining <= lease.ttl,
        "remaining {remaining:?} exceeds granted {:?}",
        lease.ttl
    );
    ok(f.backend.revoke(&lease.id).await, "revoke");
}

/// Without keep-alives a lease's key stays for the TTL and is gone within TTL plus the declared
/// slack.
pub async fn lease_expiry_deletes_keys_within_slack(f: Fixture) {
    let caps = f.backend.capabilities();
    let started = Instant::now();
    let lease = ok(f.backend.grant(test_ttl(&caps)).await, "grant");
    ok(f.backend.put("k", b("v"), Some(&lease.id)).await, "put");
    sleep(lease.ttl / 2).await;
    assert!(
        ok(f.backend.get("k").await, "get").is_some(),
        "key gone at half its TTL"
    );
    let gone_after = wait_gone(&*f.backend, "k", started, expiry_deadline(&caps, lease.ttl)).await;
    let tolerance = Duration::from_millis(50);
    assert!(
        gone_after + tolerance >= lease.ttl,
        "key removed after {gone_after:?}, before its TTL {:?}",
        lease.ttl
    );
}

/// After expiry, keep-alive and put with the lease are `LeaseNotFound` and write nothing.
pub async fn lease_keep_alive_after_expiry_is_lease_not_found(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(test_ttl(&caps)).await, "grant");
    ok(f.backend.put("k", b("v"), Some(&lease.id)).await, "put");
    wait_gone(
        &*f.backend,
        "k",
        Instant::now(),
        expiry_deadline(&caps, lease.ttl),
    )
    .await;
    // The key being gone does not mean every replica knows the lease is; allow the slack.
    eventually(
        caps.expiry_slack + Duration::from_secs(2),
        "LeaseNotFound",
        || async {
            match f.backend.keep_alive(&lease.id).await {
                Err(e) if e.kind() == ErrorKind::LeaseNotFound => Some(()),
                Err(e) => panic!("keep_alive on expired lease: unexpected error {e}"),
                Ok(_) => None,
            }
        },
    )
    .await;
    assert_kind(
        f.backend.put("k2", b("v"), Some(&lease.id)).await,
        ErrorKind::LeaseNotFound,
        "put with expired lease",
    );
    assert!(ok(f.backend.get("k2").await, "get").is_none());
}

/// Keep-alives sent just before, at and just after the deadline either win (the key stays a full TTL
/// more) or lose (`LeaseNotFound`, and the key is gone): never a success with the key lost.
pub async fn lease_keep_alive_racing_expiry(f: Fixture) {
    let caps = f.backend.capabilities();
    let ttl = test_ttl(&caps);
    let offsets_ms: [i64; 5] = [-40, -10, 0, 10, 40];
    let runs = offsets_ms.iter().map(|&off| {
        let backend = f.backend.clone();
        let caps = caps.clone();
        async move {
            let key = format!("race{off}");
            let lease = ok(backend.grant(ttl).await, "grant");
            let granted_at = Instant::now();
            ok(backend.put(&key, b("v"), Some(&lease.id)).await, "put");
            let at = lease.ttl.as_millis() as i64 + off;
            sleep(Duration::from_millis(at.max(0) as u64)).await;
            match backend.keep_alive(&lease.id).await {
                Ok(_) => {
                    let renewed = Instant::now();
                    // Renewed: the key must be there now and for most of another TTL.
                    let kv = ok(backend.get(&key).await, "get");
                    assert!(
                        kv.is_some(),
                        "{key}: keep-alive succeeded but the key is gone"
                    );
                    sleep(lease.ttl / 2).await;
                    if renewed.elapsed() < lease.ttl {
                        assert!(
                            ok(backend.get(&key).await, "get").is_some(),
                            "{key}: renewed lease lost its key within half a TTL"
                        );
                    }
                    ok(backend.revoke(&lease.id).await, "revoke");
                }
                Err(e) if e.kind() == ErrorKind::LeaseNotFound => {
                    assert!(
                        granted_at.elapsed() + Duration::from_millis(50) >= lease.ttl,
                        "{key}: LeaseNotFound before the TTL ran out"
                    );
                    wait_gone(
                        &*backend,
                        &key,
                        Instant::now(),
                        caps.expiry_slack + Duration::from_secs(2),
                    )
                    .await;
                }
                Err(e) => panic!("{key}: keep_alive near expiry: {e}"),
            }
        }
    });
    join_all(runs).await;
}

/// Revoke deletes every key of the lease at once, and nothing else.
pub async fn lease_revoke_deletes_keys_at_once(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant");
    for k in ["r/a", "r/b", "r/c"] {
        ok(f.backend.put(k, b("v"), Some(&lease.id)).await, "put");
    }
    put(&*f.backend, "r/plain", "v").await;
    ok(f.backend.revoke(&lease.id).await, "revoke");
    let keys: Vec<_> = ok(f.backend.list("r").await, "list")
        .entries
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, vec!["r/plain".to_owned()], "after revoke");
}

/// Revoking twice, or a lease id the backend never issued, is `LeaseNotFound`; so is keep-alive of
/// a revoked lease.
pub async fn lease_revoke_unknown_is_lease_not_found(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant");
    ok(f.backend.revoke(&lease.id).await, "revoke");
    assert_kind(
        f.backend.revoke(&lease.id).await,
        ErrorKind::LeaseNotFound,
        "second revoke",
    );
    assert_kind(
        f.backend.keep_alive(&lease.id).await,
        ErrorKind::LeaseNotFound,
        "keep_alive after revoke",
    );
    // A syntactically plausible id that was never issued (and one that is not even plausible).
    for fake in [
        "7311986012345678",
        "not-a-lease",
        "00000000-0000-0000-0000-000000000000",
    ] {
        assert_kind(
            f.backend.revoke(&LeaseId::new(fake)).await,
            ErrorKind::LeaseNotFound,
            &format!("revoke of never-issued lease {fake}"),
        );
    }
}

/// A put attached to a revoked lease fails with `LeaseNotFound` and writes nothing.
pub async fn lease_put_with_revoked_lease_fails(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant");
    ok(f.backend.revoke(&lease.id).await, "revoke");
    assert_kind(
        f.backend.put("k", b("v"), Some(&lease.id)).await,
        ErrorKind::LeaseNotFound,
        "put with revoked lease",
    );
    assert!(
        ok(f.backend.get("k").await, "get").is_none(),
        "key was written"
    );
}

/// A lease with 100 keys expiring produces exactly 100 delete events, one per key.
pub async fn lease_expiry_of_100_keys_produces_100_deletes(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(test_ttl(&caps)).await, "grant");
    let keys: Vec<String> = (0..100).map(|i| format!("many/{i:03}")).collect();
    join_all(keys.iter().map(|k| {
        let backend = f.backend.clone();
        let id = lease.id.clone();
        async move { ok(backend.put(k, b("v"), Some(&id)).await, "put") }
    }))
    .await;
    let listing = ok(f.backend.list("many").await, "list");
    assert_eq!(listing.entries.len(), 100);
    let mut stream = watch(&*f.backend, "many", listing.revision).await;
    let mut deleted = Vec::new();
    let deadline = Instant::now() + expiry_deadline(&caps, lease.ttl) + event_timeout(&caps);
    while deleted.len() < 100 {
        let ev =
            match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut stream)).await {
                Ok(Some(Ok(ev))) => ev,
                Ok(other) => panic!(
                    "watch ended or failed after {} deletes: {other:?}",
                    deleted.len()
                ),
                Err(_) => panic!("only {} deletes by the expiry deadline", deleted.len()),
            };
        assert_eq!(ev.kind, EventKind::Delete, "unexpected event {ev:?}");
        assert!(ev.revision > listing.revision);
        deleted.push(ev);
    }
    assert_revisions_ordered(&deleted);
    let mut got: Vec<String> = deleted.into_iter().map(|e| e.key).collect();
    got.sort();
    assert_eq!(got, keys, "each key deleted exactly once");
    assert_quiet(&mut stream, Duration::from_millis(300)).await;
    assert!(ok(f.backend.list("many").await, "list").entries.is_empty());
}

/// Revoke produces one delete event per key of the lease.
pub async fn lease_revoke_emits_delete_events(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant");
    let mut last = 0;
    for k in ["rv/a", "rv/b", "rv/c"] {
        last = ok(f.backend.put(k, b("v"), Some(&lease.id)).await, "put");
    }
    let mut stream = watch(&*f.backend, "rv", last).await;
    ok(f.backend.revoke(&lease.id).await, "revoke");
    let mut keys = Vec::new();
    for _ in 0..3 {
        let ev = next_event(&mut stream, &caps).await;
        assert_eq!(ev.kind, EventKind::Delete);
        assert!(ev.revision > last);
        keys.push(ev.key);
    }
    keys.sort();
    assert_eq!(keys, ["rv/a", "rv/b", "rv/c"]);
}

/// One lease expiring leaves the keys of another, kept-alive lease and keys without a lease alone.
pub async fn lease_expiry_is_per_lease(f: Fixture) {
    let caps = f.backend.capabilities();
    let short = ok(f.backend.grant(test_ttl(&caps)).await, "grant short");
    let kept = ok(f.backend.grant(test_ttl(&caps)).await, "grant kept");
    ok(
        f.backend.put("p/short", b("v"), Some(&short.id)).await,
        "put",
    );
    ok(f.backend.put("p/kept", b("v"), Some(&kept.id)).await, "put");
    put(&*f.backend, "p/plain", "v").await;
    let started = Instant::now();
    let limit = expiry_deadline(&caps, short.ttl);
    loop {
        sleep(kept.ttl / 4).await;
        ok(f.backend.keep_alive(&kept.id).await, "keep_alive");
        if ok(f.backend.get("p/short").await, "get").is_none() {
            break;
        }
        assert!(started.elapsed() < limit, "short lease never expired");
    }
    let keys: Vec<_> = ok(f.backend.list("p").await, "list")
        .entries
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["p/kept", "p/plain"]);
    ok(f.backend.revoke(&kept.id).await, "revoke");
}

/// A put without a lease detaches the key from its previous lease: revoking that lease leaves it.
pub async fn lease_put_without_lease_detaches_key(f: Fixture) {
    let caps = f.backend.capabilities();
    let lease = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant");
    ok(
        f.backend.put("d", b("leased"), Some(&lease.id)).await,
        "put",
    );
    put(&*f.backend, "d", "plain").await;
    let kv = ok(f.backend.get("d").await, "get").expect("key");
    assert_eq!(kv.lease, None, "key still reports a lease");
    ok(f.backend.revoke(&lease.id).await, "revoke");
    let kv = ok(f.backend.get("d").await, "get").expect("key deleted by revoke of its old lease");
    assert_eq!(kv.value, b("plain"));
}

/// A key put under lease A and then under lease B follows B only.
pub async fn lease_put_moves_key_between_leases(f: Fixture) {
    let caps = f.backend.capabilities();
    let a = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant a");
    let b_lease = ok(f.backend.grant(lasting_ttl(&caps)).await, "grant b");
    ok(f.backend.put("m", b("1"), Some(&a.id)).await, "put a");
    ok(f.backend.put("m", b("2"), Some(&b_lease.id)).await, "put b");
    assert_eq!(
        ok(f.backend.get("m").await, "get").and_then(|kv| kv.lease),
        Some(b_lease.id.clone())
    );
    ok(f.backend.revoke(&a.id).await, "revoke a");
    assert!(
        ok(f.backend.get("m").await, "get").is_some(),
        "revoking the old lease deleted the key"
    );
    ok(f.backend.revoke(&b_lease.id).await, "revoke b");
    assert!(
        ok(f.backend.get("m").await, "get").is_none(),
        "revoking the current lease left the key"
    );
}
