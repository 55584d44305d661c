//! Consul restarted under live registrations, and ACLs.

use std::sync::Arc;
use std::time::Duration;

use conformance_tests::engine::{until_lost_and_back, until_online};
use conformance_tests::testbed::{self, ConsulOptions};
use registry_consul::ConsulBuilder;
use registry_core::engine::{Instance, Registry};
use registry_core::{Backend, Bytes, ErrorKind};
use tokio::time::{sleep, timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_back_after_consul_restarts() {
    let port = testbed::free_port();
    let consul = match testbed::start_consul(ConsulOptions {
        host_port: Some(port),
        ..ConsulOptions::default()
    })
    .await
    {
        Ok(c) => c,
        Err(reason) => return testbed::unavailable::<()>("consul", &reason).unwrap_or(()),
    };
    let backend = ConsulBuilder::new()
        .address(consul.endpoint.clone())
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let mk = || {
        Registry::builder(backend.clone())
            .ttl(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(2))
            .op_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, b) = (mk(), mk());
    let d = b.discover("web").await.unwrap();
    let mut regs = Vec::new();
    for i in 0..3 {
        regs.push(
            a.register(Instance::new("web", format!("w{i}")).addr(format!("10.0.0.{i}:80")))
                .await
                .unwrap(),
        );
    }
    until_online(
        d.directory(),
        "web",
        &["w0", "w1", "w2"],
        Duration::from_secs(5),
    )
    .await;

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
    let mut view = d.directory().subscribe("web");
    timeout(
        Duration::from_secs(30),
        view.wait_for(|s| !s.is_stale() && s.online().len() == 3),
    )
    .await
    .expect("the directory shows all three again, fresh")
    .unwrap();
    assert_eq!(backend.list("registry/web").await.unwrap().entries.len(), 3);
    assert!(a.stats().recoveries >= 1, "{:?}", a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_acl_token_is_permission_denied() {
    const ROOT: &str = "9f2c1e6a-0000-4000-8000-00000000cafe";
    let consul = match testbed::start_consul(ConsulOptions {
        extra_args: vec![
            "-hcl".into(),
            format!(
                r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{ROOT}" agent = "{ROOT}" }} }}"#
            ),
        ],
        ..ConsulOptions::default()
    })
    .await
    {
        Ok(c) => c,
        Err(reason) => return testbed::unavailable::<()>("consul with ACLs", &reason).unwrap_or(()),
    };
    let ep = consul.endpoint.clone();
    // The right token works, for KV and sessions.
    let ok = timeout(Duration::from_secs(20), async {
        loop {
            // ACL bootstrap of a fresh agent takes a moment.
            match ConsulBuilder::new()
                .address(ep.clone())
                .token(ROOT)
                .connect()
                .await
            {
                Ok(b) => return b,
                Err(_) => sleep(Duration::from_millis(250)).await,
            }
        }
    })
    .await
    .expect("the master token is accepted");
    ok.put("k", Bytes::from_static(b"v"), None).await.unwrap();
    let lease = ok.grant(Duration::from_secs(10)).await.unwrap();
    ok.put("leased", Bytes::new(), Some(&lease.id))
        .await
        .unwrap();
    ok.keep_alive(&lease.id).await.unwrap();
    // A wrong token, and none at all, are refused.
    let e = ConsulBuilder::new()
        .address(ep.clone())
        .token("00000000-1111-2222-3333-444444444444")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    // Without a token Consul filters recursive reads (the anonymous token sees nothing) rather than
    // refusing them, so connecting works; every single-key read, write or session is refused.
    let anonymous = ConsulBuilder::new()
        .address(ep.clone())
        .connect()
        .await
        .unwrap();
    assert!(
        anonymous.list("").await.unwrap().entries.is_empty(),
        "anonymous listings are filtered"
    );
    let e = anonymous.get("k").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = anonymous.put("k", Bytes::new(), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let e = anonymous.grant(Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let url = format!("consul://{ep}?token={ROOT}");
    assert!(!format!("{:?}", ConsulBuilder::from_url(&url).unwrap()).contains(ROOT));
}
