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
