//! Consul restarted under live registrations, and ACLs.

use std::sync::Arc;
use std::time::Duration;

use conformance_tests::engine::{until_lost_and_back, until_online};
use conformance_tests::resilience::{Timings, register_web, until_fresh, web};
use conformance_tests::testbed::{self, ConsulOptions, start_or_skip};
use registry_consul::{ConsulBackend, ConsulBuilder};
use registry_core::{Backend, Bytes, ErrorKind};
use tokio::time::{sleep, timeout};

/// The registries' timings: Consul's sessions live at least 10 s.
const TIMINGS: Timings = Timings {
    ttl: Duration::from_secs(10),
    heartbeat: Duration::from_secs(2),
    op_timeout: Duration::from_secs(2),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_back_after_consul_restarts() {
    let options = ConsulOptions {
        host_port: Some(testbed::free_port()),
        ..ConsulOptions::default()
    };
    let Some(consul) = start_or_skip("consul", testbed::start_consul(options)).await else {
        return;
    };
    let backend = ConsulBuilder::new()
        .address(consul.endpoint.clone())
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let (a, b) = (TIMINGS.registry(&backend), TIMINGS.registry(&backend));
    let d = b.discover("web").await.unwrap();
    let regs = register_web(&a, d.directory(), &["w0", "w1", "w2"]).await;

    // A -dev agent keeps everything in memory: after the restart its KV store, sessions and
    // indexes start from nothing.
    let mut states: Vec<_> = regs.iter().map(|r| r.watch_state()).collect();
    let outage = tokio::time::Instant::now();
    consul.container.stop().await.expect("stop consul");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        d.directory().get("web").len(),
        3,
        "the last good view is kept"
    );
    consul.container.start().await.expect("start consul");

    for s in &mut states {
        until_lost_and_back(s, outage, Duration::from_secs(60)).await;
    }
    until_fresh(d.directory(), "web", 3, Duration::from_secs(30)).await;
    assert_eq!(backend.list("registry/web").await.unwrap().entries.len(), 3);
    assert!(a.stats().recoveries >= 1, "{:?}", a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_acl_token_is_permission_denied() {
    const ROOT: &str = "9f2c1e6a-0000-4000-8000-00000000cafe";
    const READ_ONLY: &str = "9f2c1e6a-0000-4000-8000-00000000a0a0";
    let Some(consul) = consul_with_acls(ROOT).await else {
        return;
    };
    let ep = consul.endpoint.clone();
    // The right token works, for KV and sessions.
    let ok = with_token(&ep, ROOT)
        .await
        .expect("the master token is accepted");
    ok.put("k", Bytes::from_static(b"v"), None).await.unwrap();
    let lease = ok.grant(Duration::from_secs(10)).await.unwrap();
    ok.put("leased", Bytes::new(), Some(&lease.id))
        .await
        .unwrap();
    ok.keep_alive(&lease.id).await.unwrap();
    // A wrong token, and none at all, are refused.
    let e = with_token(&ep, "00000000-1111-2222-3333-444444444444")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    // Without a token Consul filters recursive reads (the anonymous token sees nothing) rather
    // than refusing them. A filtered listing must not pass for an empty one (a directory would go
    // empty instead of stale), so connecting, which lists the namespace, is refused.
    let e = ConsulBuilder::new()
        .address(ep.clone())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::PermissionDenied,
        "a filtered listing: {e}"
    );
    // An empty namespace with the right token is still an empty listing, and an absent key's
    // delete still "nothing to delete".
    assert!(ok.list("empty-prefix").await.unwrap().entries.is_empty());
    assert_eq!(ok.delete("never-there").await.unwrap(), None);
    // A read-only token: it lists and reads, and every write, delete or session is refused
    // (a refused delete is not "no such key").
    consul.cli(
        ROOT,
        &[
            "acl",
            "policy",
            "create",
            "-name",
            "read-only",
            "-rules",
            r#"key_prefix "" { policy = "read" }"#,
        ],
    );
    consul.cli(
        ROOT,
        &[
            "acl",
            "token",
            "create",
            "-secret",
            READ_ONLY,
            "-policy-name",
            "read-only",
        ],
    );
    let ro = with_token(&ep, READ_ONLY)
        .await
        .expect("a read-only token connects");
    assert!(ro.get("k").await.unwrap().is_some());
    let e = ro.delete("k").await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::PermissionDenied,
        "a refused delete: {e}"
    );
    assert!(
        ok.get("k").await.unwrap().is_some(),
        "and nothing was deleted"
    );
    let e = ro.put("k", Bytes::new(), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = ro.grant(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let url = format!("consul://{ep}?token={ROOT}");
    assert!(!format!("{:?}", ConsulBuilder::from_url(&url).unwrap()).contains(ROOT));
}

/// Connects to the agent at `endpoint` with the ACL token `token`.
async fn with_token(endpoint: &str, token: &str) -> registry_core::Result<ConsulBackend> {
    ConsulBuilder::new()
        .address(endpoint.to_owned())
        .token(token)
        .connect()
        .await
}

/// Consul with ACLs on and the root token working (the agent bootstraps its ACLs a moment after
/// it starts).
async fn consul_with_acls(root: &str) -> Option<testbed::Consul> {
    let options = ConsulOptions::with_acls(root);
    let consul = start_or_skip("consul with ACLs", testbed::start_consul(options)).await?;
    conformance_tests::consul_api::until_token_accepted(&consul.endpoint, root).await;
    Some(consul)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_losing_read_permission_leaves_the_view_stale_not_empty() {
    const ROOT: &str = "9f2c1e6a-0000-4000-8000-00000000beef";
    const TOKEN: &str = "9f2c1e6a-0000-4000-8000-000000000001";
    let Some(consul) = consul_with_acls(ROOT).await else {
        return;
    };
    let ep = consul.endpoint.clone();
    let rules = |kv: &str| {
        format!(r#"key_prefix "" {{ policy = "{kv}" }} session_prefix "" {{ policy = "write" }}"#)
    };
    consul.acl_token(ROOT, TOKEN, "registry", &rules("write"));
    let backend = || async {
        let backend = with_token(&ep, TOKEN)
            .await
            .expect("connect with the registry token");
        Arc::new(backend) as Arc<dyn Backend>
    };
    let registrar = TIMINGS.registry(&backend().await);
    let _w1 = registrar.register(web("w1")).await.unwrap();
    let reader = TIMINGS.registry(&backend().await);
    let _d = reader.discover("web").await.unwrap();
    until_online(reader.directory(), "web", &["w1"], Duration::from_secs(15)).await;
    // An operator takes the token's KV permission away: Consul now filters every listing to
    // nothing. The directory keeps w1, marked stale.
    consul.cli(
        ROOT,
        &[
            "acl",
            "policy",
            "update",
            "-name",
            "registry",
            "-rules",
            &rules("deny"),
        ],
    );
    // Consul answers a blocking query when the prefix changes: another process writes there.
    let root = with_token(&ep, ROOT).await.unwrap();
    // The policy change takes a moment to apply to reads: write until a read after it happened.
    let dir = reader.directory();
    timeout(Duration::from_secs(30), async {
        let mut n = 0u32;
        while !dir.is_stale("web") {
            n += 1;
            root.put(
                "registry/web/not-an-instance",
                Bytes::from(format!("{{{n}")),
                None,
            )
            .await
            .unwrap();
            for _ in 0..5 {
                assert_eq!(
                    dir.get("web").len(),
                    1,
                    "the view went empty instead of stale"
                );
                sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await
    .expect("the view is marked stale");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        dir.get("web").len(),
        1,
        "the view went empty instead of stale"
    );
    // Permission back: fresh again, still w1.
    consul.cli(
        ROOT,
        &[
            "acl",
            "policy",
            "update",
            "-name",
            "registry",
            "-rules",
            &rules("write"),
        ],
    );
    timeout(Duration::from_secs(30), async {
        while dir.is_stale("web") {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the view is fresh again");
    assert_eq!(dir.get("web").len(), 1);
}

/// A GET against the agent's own API, read as JSON (an independent look at what Consul holds).
async fn consul_get(endpoint: &str, path: &str) -> serde_json::Value {
    let (_, body) = conformance_tests::consul_api::http(endpoint, "GET", path, "").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_depend_on_their_ttl_not_on_the_nodes_health() {
    let Some(ep) = testbed::shared_consul() else {
        return;
    };
    let backend = ConsulBuilder::new()
        .address(ep.clone())
        .connect()
        .await
        .unwrap();
    let lease = backend.grant(Duration::from_secs(10)).await.unwrap();
    let info = consul_get(&ep, &format!("/v1/session/info/{}", lease.id.as_str())).await;
    let session = &info[0];
    assert_eq!(session["Behavior"], "delete", "{info}");
    for field in ["Checks", "NodeChecks"] {
        let checks = session[field].as_array().map_or(0, Vec::len);
        assert_eq!(
            checks, 0,
            "{field}: the session follows a health check: {info}"
        );
    }
    backend.revoke(&lease.id).await.unwrap();
}

/// Consul keeps no history, so the backend diffs snapshots, and resuming a watch needs the state
/// at the revision it resumes from. A snapshot remembered under a revision that is not the
/// state at that index (a watcher's last put, taken from an answer whose index is later because
/// of a delete) would let a reader that listed at that revision resume from a state without a
/// key it holds, and the key's delete would never reach it: a phantom forever. Resuming from a
/// listing's revision must give a delete for every key deleted since, or `Compacted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_at_a_listing_never_misses_a_delete() {
    use futures::StreamExt;
    let Some(endpoint) = testbed::shared_consul() else {
        return;
    };
    let backend = ConsulBuilder::new()
        .address(endpoint)
        .namespace(testbed::fresh_namespace("resume"))
        .min_poll_interval(Duration::from_millis(10))
        .connect()
        .await
        .unwrap();
    let put = |k: &'static str| {
        let backend = backend.clone();
        async move {
            backend
                .put(k, Bytes::from_static(b"v"), None)
                .await
                .unwrap()
        }
    };
    put("web/a").await;
    let start = backend.list("web").await.unwrap().revision;
    // An early watcher that has not read anything yet.
    let mut early = backend.watch("web", start).await.unwrap();
    put("web/k").await;
    put("web/j").await;
    // A reader lists (it holds a, j and k) ...
    let listing = backend.list("web").await.unwrap();
    assert_eq!(listing.entries.len(), 3);
    // ... k is deleted, other readers come and go (the backend's memory of snapshots is not
    // infinite), and the early watcher reads the put of j and the state after the delete.
    backend.delete("web/k").await.unwrap();
    for i in 0..80 {
        backend.list(&format!("other{i}")).await.unwrap();
    }
    let ev = timeout(Duration::from_secs(10), early.next())
        .await
        .expect("early watcher")
        .expect("event")
        .expect("ok");
    assert_eq!(ev.key, "web/j");
    drop(early);
    // The reader now watches from its listing: it must learn that k is gone.
    let resumed = match backend.watch("web", listing.revision).await {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Compacted, "{e}");
            return;
        }
        Ok(s) => s,
    };
    put("web/z").await;
    let mut resumed = resumed;
    let mut seen = Vec::new();
    loop {
        match timeout(Duration::from_secs(10), resumed.next()).await {
            Ok(Some(Ok(ev))) => {
                let done = ev.key == "web/z";
                seen.push(ev);
                if done {
                    break;
                }
            }
            Ok(Some(Err(e))) => {
                assert_eq!(e.kind(), ErrorKind::Compacted, "{e}");
                return;
            }
            other => panic!("no put of z: {other:?} after {seen:?}"),
        }
    }
    assert!(
        seen.iter()
            .any(|e| e.key == "web/k" && e.kind == registry_core::EventKind::Delete),
        "the delete of k never reached a reader that listed it: {seen:?}"
    );
}

/// Consul keeps no history: a watch resuming from a revision this process holds no snapshot of
/// (another process listed it, or the snapshot was forgotten) cannot know what changed since, and
/// says so with `Compacted` when anything did; and a revision nothing changed after still resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_without_the_state_at_its_revision_is_compacted() {
    let Some(endpoint) = testbed::shared_consul() else {
        return;
    };
    let ns = testbed::fresh_namespace("nohistory");
    let connect = || {
        ConsulBuilder::new()
            .address(endpoint.clone())
            .namespace(ns.clone())
            .connect()
    };
    let lister = connect().await.unwrap();
    lister
        .put("svc/a", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    let listed = lister.list("svc").await.unwrap().revision;
    // Another process (no snapshots of its own) resumes from that listing: nothing changed yet.
    let other = connect().await.unwrap();
    drop(other.watch("svc", listed).await.expect("unchanged since"));
    lister.delete("svc/a").await.unwrap();
    let fresh = connect().await.unwrap();
    let e = match fresh.watch("svc", listed).await {
        Err(e) => e,
        Ok(_) => panic!("resumed across a change it cannot see"),
    };
    assert_eq!(e.kind(), ErrorKind::Compacted, "{e}");
}
