use std::net::SocketAddr;
use std::time::Duration;

use registry_engine::{Directory, MAX_ID_LEN, validate_id};

use crate::follow::Schedule;
use crate::{DnsSource, DnsSourceBuilder, instance_id};

#[test]
fn the_schedule_honours_the_ttl_within_floor_and_ceiling() {
    let s = Schedule {
        floor: Duration::from_secs(1),
        ceiling: Duration::from_secs(300),
        jitter: 0.0,
    };
    let secs = |n| Some(Duration::from_secs(n));
    // Consul's default TTL 0, no TTL known, and a short TTL: the floor.
    assert_eq!(s.next(secs(0), 0.5), Duration::from_secs(1));
    assert_eq!(s.next(None, 0.5), Duration::from_secs(1));
    assert_eq!(
        s.next(Some(Duration::from_millis(300)), 0.5),
        Duration::from_secs(1)
    );
    // Within bounds: the TTL itself.
    assert_eq!(s.next(secs(30), 0.5), Duration::from_secs(30));
    // A day: the ceiling.
    assert_eq!(s.next(secs(86_400), 0.5), Duration::from_secs(300));
}

#[test]
fn jitter_comes_early_and_never_below_the_floor() {
    let s = Schedule {
        floor: Duration::from_secs(1),
        ceiling: Duration::from_secs(300),
        jitter: 0.2,
    };
    let ttl = Some(Duration::from_secs(60));
    assert_eq!(s.next(ttl, 0.0), Duration::from_secs(60));
    assert_eq!(s.next(ttl, 0.5), Duration::from_secs(54));
    let earliest = s.next(ttl, 1.0);
    assert_eq!(earliest, Duration::from_secs(48));
    for i in 0..100 {
        let d = s.next(ttl, f64::from(i) / 100.0);
        assert!(d <= Duration::from_secs(60) && d >= earliest, "{d:?}");
    }
    // At the floor there is no room to come early.
    assert_eq!(s.next(Some(Duration::ZERO), 0.99), Duration::from_secs(1));
    assert_eq!(
        s.next(Some(Duration::from_millis(1100)), 1.0),
        Duration::from_secs(1)
    );
    // At the ceiling, early from the ceiling.
    assert_eq!(
        s.next(Some(Duration::from_secs(10_000)), 1.0),
        Duration::from_secs(240)
    );
}

#[test]
fn ids_come_from_target_and_port() {
    assert_eq!(
        instance_id("0a000001.addr.dc1.consul.", 8080),
        "0a000001.addr.dc1.consul:8080"
    );
    assert_eq!(
        instance_id("Web-1.Example.COM", 443),
        "web-1.example.com:443"
    );
    // Stable: the same record gives the same id; a different port another.
    assert_eq!(instance_id("a.example.", 80), instance_id("A.EXAMPLE.", 80));
    assert_ne!(instance_id("a.example.", 80), instance_id("a.example.", 81));
    for id in [
        instance_id("0a000001.addr.dc1.consul.", 8080),
        instance_id("_sip._udp.example.", 5060),
        instance_id("weird*name\\032x.example.", 1),
        instance_id(&"x".repeat(300), 65535),
        instance_id(".", 1),
        instance_id("***", 1),
    ] {
        validate_id(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(id.len() <= MAX_ID_LEN);
    }
    // Altered names carry a hash, so that they stay apart.
    let a = instance_id("a*b.example.", 80);
    let b = instance_id("a-b.example.", 80);
    assert_ne!(a, b);
    assert_eq!(b, "a-b.example:80");
    assert!(a.starts_with("a-b.example-") && a.ends_with(":80"), "{a}");
    assert_eq!(
        instance_id("_sip._udp.example.", 5060),
        instance_id("_sip._udp.example.", 5060)
    );
    let long1 = instance_id(&format!("{}1", "x".repeat(200)), 80);
    let long2 = instance_id(&format!("{}2", "x".repeat(200)), 80);
    assert_ne!(long1, long2);
}

/// Without a name server, the system's configuration is used. `.invalid` names never
/// resolve (RFC 6761: the resolver answers NXDOMAIN itself, no query leaves the machine):
/// an answer, so the service is published empty and fresh.
#[tokio::test]
async fn the_systems_resolver_is_used_without_a_nameserver() {
    if !std::path::Path::new("/etc/resolv.conf").exists() {
        eprintln!("skipping: no /etc/resolv.conf");
        return;
    }
    let dir = Directory::new();
    let dns = DnsSource::builder()
        .follow("ghost", "ghost.invalid.")
        .start(&dir, "dns", 5)
        .expect("the system's configuration is read");
    let mut rx = dir.subscribe("ghost");
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.is_synced()))
        .await
        .expect("an answer within 5 s")
        .expect("the directory lives");
    let snap = dir.snapshot("ghost");
    assert!(snap.all().is_empty());
    assert!(!snap.is_stale());
    let c = dns.counts();
    assert_eq!((c.answers, c.empty_answers, c.errors), (1, 1, 0), "{c:?}");
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let dir = Directory::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let ns: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let base = || DnsSource::builder().nameserver(ns);
    let err = |b: DnsSourceBuilder| b.start(&dir, "dns", 5).unwrap_err().to_string();
    assert!(err(base()).contains("at least one"));
    assert!(err(base().follow("bad name", "x.example.")).contains("invalid service name"));
    assert!(
        err(base()
            .follow("web", "a.example.")
            .follow("web", "b.example."))
        .contains("two SRV")
    );
    assert!(err(base().follow("web", "a..b")).contains("not a DNS name"));
    assert!(
        err(base()
            .follow("web", "a.example.")
            .ttl_floor(Duration::from_secs(10))
            .ttl_ceiling(Duration::from_secs(5)))
        .contains("below its floor")
    );
    assert!(err(base().follow("web", "a.example.").jitter(2.0)).contains("jitter"));
    // Outside a runtime.
    drop(_guard);
    let e = base()
        .follow("web", "a.example.")
        .start(&dir, "dns", 5)
        .unwrap_err();
    assert!(e.to_string().contains("tokio runtime"), "{e}");
}
