use registry_engine::Instance;

use super::service::*;

#[test]
fn addresses() {
    for (a, host, port) in [
        ("10.0.0.1:8080", "10.0.0.1", 8080),
        ("web.local:80", "web.local", 80),
        ("[::1]:9000", "::1", 9000),
        ("http://10.0.0.2:8081/path?x=1", "10.0.0.2", 8081),
        ("https://user:pw@api.example:8443", "api.example", 8443),
        ("http://10.0.0.3/", "10.0.0.3", 80),
        ("https://[fe80::1]/x", "fe80::1", 443),
        ("grpc://10.0.0.4:50051", "10.0.0.4", 50051),
        ("fe80::1", "fe80::1", 0),
        ("just-a-host", "just-a-host", 0),
        ("host:notaport", "host:notaport", 0),
    ] {
        assert_eq!(split_address(a), (host.to_owned(), port), "{a}");
    }
}

#[test]
fn meta_keeps_what_consul_accepts_and_says_what_it_left_out() {
    let mut inst = Instance::new("web", "w1")
        .addr("10.0.0.1:80")
        .version("1.2.3")
        .weight(7)
        .meta("app", "a")
        .meta("bad key", "x")
        .meta("consul-reserved", "x")
        .meta("long", "v".repeat(513))
        .meta("k".repeat(129), "x")
        .meta("weight", "mine");
    for i in 0..70 {
        inst = inst.meta(format!("m{i:02}"), "x");
    }
    let (meta, skipped) = service_meta(&inst, "s-1");
    assert_eq!(meta.len(), META_MAX_PAIRS);
    assert_eq!(meta["registry_lease"], "s-1");
    assert_eq!(meta["weight"], "7");
    assert_eq!(meta["version"], "1.2.3");
    assert_eq!(meta["app"], "a");
    let left: Vec<&str> = skipped.iter().map(|(k, _)| k.as_str()).collect();
    for k in ["bad key", "consul-reserved", "long", "weight"] {
        assert!(left.contains(&k), "{k} in {left:?}");
    }
    // 64 = 3 of ours + app + 60 of the 70 others (in key order).
    assert_eq!(skipped.len(), 5 + 10, "{left:?}");
}

#[test]
fn tags_come_from_the_tags_entry() {
    let inst = Instance::new("web", "w1")
        .addr("x:1")
        .meta("tags", "blue, canary,,");
    assert_eq!(service_tags(&inst), vec!["blue", "canary"]);
    assert!(service_tags(&Instance::new("web", "w1").addr("x:1")).is_empty());
}

mod queue {
    use std::sync::Arc;
    use std::time::Duration;

    use registry_engine::Instance;

    use super::super::queue::{Change, Job, Pushed, Queue};

    fn put(id: &str, session: &str, version: usize) -> Job {
        Job::Instance {
            service_id: id.to_owned(),
            change: Change::Put {
                instance: Arc::new(Instance::new("web", id).version(format!("v{version}"))),
                session: session.to_owned(),
            },
        }
    }

    fn removal(id: &str) -> Job {
        Job::Instance {
            service_id: id.to_owned(),
            change: Change::Delete,
        }
    }

    fn heartbeat(session: &str) -> Job {
        Job::Heartbeat {
            session: session.to_owned(),
        }
    }

    /// What the task would do next, as text.
    async fn next(q: &Queue) -> String {
        match q.next().await.expect("a job") {
            Job::Granted { session, .. } => format!("granted {session}"),
            Job::LeaseEnded { session } => format!("ended {session}"),
            Job::Heartbeat { session } => format!("heartbeat {session}"),
            Job::Instance { service_id, change } => match change {
                Change::Put { instance, session } => format!(
                    "put {service_id} {session} {}",
                    instance.version.as_deref().unwrap_or("")
                ),
                Change::Delete => format!("delete {service_id}"),
                Change::Yield { holder } => format!("yield {service_id} to {holder}"),
            },
        }
    }

    #[tokio::test]
    async fn the_queue_holds_one_entry_per_service_id_and_per_lease_whatever_the_events() {
        let q = Queue::default();
        let mut coalesced = 0;
        for v in 0..10_000 {
            for s in ["s1", "s2"] {
                if q.push(heartbeat(s)) == Pushed::Coalesced {
                    coalesced += 1;
                }
            }
            for i in 0..10 {
                let id = format!("web/{i}");
                if q.push(put(&id, if i < 5 { "s1" } else { "s2" }, v)) == Pushed::Coalesced {
                    coalesced += 1;
                }
                if v % 7 == 0 && q.push(removal(&id)) == Pushed::Coalesced {
                    coalesced += 1;
                }
            }
        }
        assert_eq!(
            q.len(),
            2 + 10,
            "two heartbeats and one entry per service ID"
        );
        assert_eq!(coalesced, 10_000 * 12 + 10 * 1429 - 12);
        // Removals first, then heartbeats, then registrations, each at its latest state.
        q.push(removal("web/3"));
        q.push(Job::Instance {
            service_id: "web/4".into(),
            change: Change::Yield {
                holder: "s9".into(),
            },
        });
        // A delete after a yield stays a yield (removed only if still ours).
        q.push(removal("web/4"));
        assert_eq!(next(&q).await, "delete web/3");
        assert_eq!(next(&q).await, "yield web/4 to s9");
        assert_eq!(next(&q).await, "heartbeat s1");
        assert_eq!(next(&q).await, "heartbeat s2");
        assert_eq!(next(&q).await, "put web/0 s1 v9999");
        // The end of a lease drops what waits for it and goes first.
        q.push(Job::LeaseEnded {
            session: "s2".into(),
        });
        assert_eq!(next(&q).await, "ended s2");
        for i in [1, 2] {
            assert_eq!(next(&q).await, format!("put web/{i} s1 v9999"));
        }
        assert_eq!(q.len(), 0, "web/5..9 ended with s2");
    }

    #[tokio::test]
    async fn a_flush_waits_for_what_was_pushed_before_it_only() {
        let q = Arc::new(Queue::default());
        q.push(Job::Granted {
            session: "s1".into(),
            ttl: Duration::from_secs(10),
        });
        q.push(put("web/1", "s1", 1));
        let mut before = q.flush();
        assert_eq!(next(&q).await, "granted s1");
        assert_eq!(next(&q).await, "put web/1 s1 v1");
        assert!(before.try_recv().is_err(), "the put is still being done");
        // Later events do not hold it up.
        q.push(heartbeat("s1"));
        assert_eq!(next(&q).await, "heartbeat s1");
        before.try_recv().expect("answered once the put was done");
        // With nothing waiting and nothing being done, at once.
        let _ = tokio::time::timeout(Duration::from_millis(10), q.next()).await;
        let mut idle = q.flush();
        idle.try_recv().expect("answered at once");
        // The task gone: events are refused, flushes let go.
        let guard = q.task_guard();
        drop(guard);
        assert_eq!(q.push(heartbeat("s1")), Pushed::Gone);
        assert!(q.flush().try_recv().is_err());
    }
}
