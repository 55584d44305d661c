use super::*;
use crate::ErrorKind;

fn parse(text: &str) -> BackendUrl {
    BackendUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn hosts(url: &BackendUrl) -> Vec<String> {
    url.hosts().map(|h| h.to_string()).collect()
}

#[test]
fn schemes_are_lower_case() {
    let url = parse("ETCDS://h:2379");
    assert_eq!(url.scheme(), "etcds");
    assert_eq!(url.as_unredacted_str(), "etcds://h:2379");
    assert_eq!(url.to_string(), "etcds://h:2379");
}

#[test]
fn one_host_or_a_list_or_none() {
    let url = parse("redis://10.0.0.5:6379/2");
    assert_eq!(hosts(&url), ["10.0.0.5:6379"]);
    assert_eq!(url.path(), "/2");
    let url = parse("etcd://h1:2379, h2:2380,,[::1]:2379/prod/eu");
    assert_eq!(hosts(&url), ["h1:2379", "h2:2380", "[::1]:2379"]);
    let v6 = url.hosts().nth(2).unwrap();
    assert_eq!((v6.host(), v6.port()), ("::1", Some(2379)));
    assert_eq!(url.path(), "/prod/eu");
    let url = parse("redis://h");
    assert_eq!(url.hosts().next().unwrap().port(), None);
    let url = parse("memory://");
    assert_eq!(url.hosts().len(), 0);
    assert_eq!((url.path(), url.query_pairs().count()), ("", 0));
    let url = parse("memory://demo-Share?history=5");
    assert_eq!(url.hosts().next().unwrap().host(), "demo-Share");
}

#[test]
fn user_and_password_are_decoded() {
    let url = parse("etcd://bob:p%40ss%2Fw@h:2379");
    assert_eq!(url.user(), Some("bob"));
    assert_eq!(url.password(), Some("p@ss/w"));
    let url = parse("redis://:s3cret@h");
    assert_eq!((url.user(), url.password()), (None, Some("s3cret")));
    let url = parse("rediss://alice@h:6380");
    assert_eq!((url.user(), url.password()), (Some("alice"), None));
    assert_eq!(url.to_string(), "rediss://alice@h:6380");
}

#[test]
fn query_options_are_decoded_in_order() {
    let url = parse("consul://h:8500/ns?token=a%2Bb+c&dc=eu&flag&ca=/x%20y.pem#frag");
    let pairs: Vec<_> = url.query_pairs().collect();
    assert_eq!(
        pairs,
        [
            ("token", "a+b+c"),
            ("dc", "eu"),
            ("flag", ""),
            ("ca", "/x y.pem")
        ]
    );
    assert_eq!(url.fragment(), Some("frag"));
    assert_eq!(
        url.to_string(),
        "consul://h:8500/ns?token=***&dc=eu&flag&ca=/x%20y.pem#frag"
    );
}

#[test]
fn secrets_never_show() {
    let text = "etcds://root:hunter2%21x@h:2379/ns?token=t0k3n-value&Password=pw-value&ca=/ca.pem";
    let url = parse(text);
    for shown in [url.to_string(), format!("{url:?}"), format!("{url:#?}")] {
        for secret in ["hunter2", "t0k3n", "pw-value"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("root:***@h:2379/ns?token=***"), "{shown}");
        assert!(shown.contains("ca=/ca.pem"), "{shown}");
    }
    let masked = url
        .secrets()
        .mask("auth hunter2%21x / hunter2!x failed; token t0k3n-value, pw-value");
    assert_eq!(masked, "auth *** / *** failed; token ***, ***");
    assert_eq!(url.as_unredacted_str(), text);
    // The same parse serves the text functions.
    assert_eq!(redact_url(text), url.to_string());
}

#[test]
fn malformed_urls_are_invalid_input_and_never_show_secrets() {
    for (text, why) in [
        ("localhost:2379", "SCHEME://"),
        ("1tcd://h:1", "scheme"),
        ("etcd://h:x", "port"),
        ("etcd://h:99999", "port"),
        ("etcd://h1:1,h2:x", "port"),
        ("memory://a b", "domain"),
        ("redis://:hunter22@", "host"),
        ("redis://u:hunter22/x@h:1/0", "percent-encode"),
        ("redis://u:hunter22?x@h:1/0", "percent-encode"),
        (
            "redis://u:hunter22?x@h:1?token=zzzz-secret",
            "percent-encode",
        ),
    ] {
        let e = BackendUrl::parse(text).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{text}");
        assert!(e.message().contains(why), "{text}: {e}");
        assert!(!e.message().contains("  "), "{text}: {e}");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hunter22"), "{shown}");
        assert!(!shown.contains("zzzz"), "{shown}");
    }
    assert!("etcd://h:1".parse::<BackendUrl>().is_ok());
    assert!(BackendUrl::try_from("etcd://h:x").is_err());
    let e = BackendUrl::parse_expecting("etcd://h:x", "expected etcd://host:port").unwrap_err();
    assert!(
        e.message()
            .ends_with("invalid port number; expected etcd://host:port"),
        "{e}"
    );
}

#[test]
fn tls_variants() {
    let url = parse("REDISS://h");
    assert_eq!(url.tls_variant_of("redis"), Some(true));
    assert_eq!(parse("redis://h").tls_variant_of("redis"), Some(false));
    assert_eq!(url.tls_variant_of("rediss"), Some(false));
    assert_eq!(url.tls_variant_of("etcd"), None);
    assert_eq!(parse("redisss://h").tls_variant_of("redis"), None);
}
