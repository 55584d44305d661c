//! Properties of the backend URL parsers (`BackendUrl`, and `from_url` of every builder) and of
//! `registry::connect`'s scheme dispatch: random and near-valid URLs never panic, and every refusal
//! is an `InvalidInput` error (or `Unsupported` for a backend this build leaves out); a parsed URL
//! reads the same in every builder as its text does, shows as it parsed, and never shows its
//! secrets. Nothing here opens a connection: URLs that would reach a network backend go to
//! `from_url` only.

use proptest::prelude::*;
use registry::url::BackendUrl;
use registry::{ErrorKind, Result};

/// Parses `url` with every builder compiled in, returning the name of each that accepted it.
fn parse_everywhere(url: &str) -> std::result::Result<Vec<&'static str>, TestCaseError> {
    let mut accepted = Vec::new();
    let mut check = |name: &'static str, r: Result<()>| -> std::result::Result<(), TestCaseError> {
        match r {
            Ok(()) => accepted.push(name),
            Err(e) => {
                prop_assert_eq!(
                    e.kind(),
                    ErrorKind::InvalidInput,
                    "{} {:?}: {}",
                    name,
                    url,
                    e
                );
                prop_assert!(!e.message().is_empty());
            }
        }
        Ok(())
    };
    #[cfg(feature = "memory")]
    check(
        "memory",
        registry::memory::MemoryBuilder::from_url(url).map(drop),
    )?;
    #[cfg(feature = "etcd")]
    check("etcd", registry::etcd::EtcdBuilder::from_url(url).map(drop))?;
    #[cfg(feature = "consul")]
    check(
        "consul",
        registry::consul::ConsulBuilder::from_url(url).map(drop),
    )?;
    #[cfg(feature = "redis")]
    check(
        "redis",
        registry::redis::RedisBuilder::from_url(url).map(drop),
    )?;
    // A URL names one backend: no two parsers accept the same one.
    prop_assert!(accepted.len() <= 1, "{url:?} accepted by {accepted:?}");
    for name in &accepted {
        let scheme = url.split("://").next().unwrap_or_default();
        prop_assert!(
            scheme.to_ascii_lowercase().starts_with(name),
            "{name} accepted {url:?} of scheme {scheme:?}"
        );
    }
    // Text a builder accepts parses, and the parsed URL reads alike in every builder.
    let readers = accepted.clone();
    match BackendUrl::parse(url) {
        Ok(parsed) => prop_assert_eq!(&readers, &parse_parsed_everywhere(&parsed), "{}", url),
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidInput, "{:?}: {}", url, e);
            prop_assert!(readers.is_empty(), "{url:?} accepted by {readers:?}: {e}");
        }
    }
    Ok(accepted)
}

/// The names of the builders that accept the parsed `url` (`from_backend_url`).
fn parse_parsed_everywhere(url: &BackendUrl) -> Vec<&'static str> {
    let mut accepted = Vec::new();
    #[cfg(feature = "memory")]
    if registry::memory::MemoryBuilder::from_backend_url(url).is_ok() {
        accepted.push("memory");
    }
    #[cfg(feature = "etcd")]
    if registry::etcd::EtcdBuilder::from_backend_url(url).is_ok() {
        accepted.push("etcd");
    }
    #[cfg(feature = "consul")]
    if registry::consul::ConsulBuilder::from_backend_url(url).is_ok() {
        accepted.push("consul");
    }
    #[cfg(feature = "redis")]
    if registry::redis::RedisBuilder::from_backend_url(url).is_ok() {
        accepted.push("redis");
    }
    accepted
}

fn scheme() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "memory", "etcd", "etcds", "consul", "consuls", "redis", "rediss",
        ])
        .prop_map(str::to_owned),
        1 => prop::sample::select(vec!["ETCD", "Redis", "http", "unix", "", "memory:", "etcd+tls"])
            .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9+.-]{0,8}",
    ]
}

fn host_port() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        Just("127.0.0.1".to_owned()),
        Just("h".to_owned()),
        Just("[::1]".to_owned()),
        Just("::1".to_owned()),
        Just(String::new()),
        "[a-z0-9.-]{1,12}",
        "[^/?#@:,]{0,8}",
    ];
    let port = prop_oneof![
        any::<u16>().prop_map(|p| p.to_string()),
        any::<u32>().prop_map(|p| p.to_string()),
        any::<i64>().prop_map(|p| p.to_string()),
        Just(String::new()),
        "[0-9a-z%+-]{0,6}",
    ];
    (host, prop::option::of(port)).prop_map(|(h, p)| match p {
        Some(p) => format!("{h}:{p}"),
        None => h,
    })
}

/// Durations as URL options write them, including hostile ones.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("5s".to_owned()),
        Just("0".to_owned()),
        Just("1e300s".to_owned()),
        Just("18446744073709551615m".to_owned()),
        Just("NaN".to_owned()),
        Just("-1s".to_owned()),
        Just("inf".to_owned()),
        any::<u64>().prop_map(|n| format!("{n}ms")),
        any::<f64>().prop_map(|x| format!("{x}s")),
        "[0-9.e+-]{0,8}(ms|s|m|h)?",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "timeout", "connect_timeout", "min_poll", "history", "max_value", "namespace",
            "token", "dc", "ns", "ca", "cert", "key", "domain",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_%=&]{0,8}",
    ];
    let value = prop_oneof![
        duration_text(),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z0-9%/.{}]{0,10}",
        ".{0,8}",
    ];
    prop::collection::vec((key, prop::option::of(value)), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// URLs shaped like backend URLs, with every part sometimes wrong.
fn near_valid_url() -> impl Strategy<Value = String> {
    (
        scheme(),
        prop::sample::select(vec!["://", "://", "://", ":/", ":", ""]),
        prop::option::of("[a-z0-9%:@]{0,10}"),
        prop::collection::vec(host_port(), 0..3),
        prop::option::of("[a-z0-9/%.{}~-]{0,12}"),
        prop::option::of(query()),
    )
        .prop_map(|(scheme, sep, user, hosts, path, query)| {
            let mut url = format!("{scheme}{sep}");
            if let Some(u) = user {
                url.push_str(&u);
                url.push('@');
            }
            url.push_str(&hosts.join(","));
            if let Some(p) = path {
                url.push('/');
                url.push_str(&p);
            }
            if let Some(q) = query {
                url.push('?');
                url.push_str(&q);
            }
            url
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn backend_url_parsers_never_panic_on_arbitrary_text(url in any::<String>()) {
        parse_everywhere(&url)?;
    }

    #[test]
    fn backend_url_parsers_never_panic_on_arbitrary_text_after_a_scheme(
        scheme in scheme(),
        rest in any::<String>(),
    ) {
        parse_everywhere(&format!("{scheme}://{rest}"))?;
    }

    #[test]
    fn backend_url_parsers_never_panic_on_near_valid_urls(url in near_valid_url()) {
        parse_everywhere(&url)?;
    }

    /// Well-formed URLs with any duration option: accepted exactly when the duration parses.
    #[test]
    fn duration_options_are_accepted_exactly_when_they_parse(
        backend in prop::sample::select(vec![
            ("etcd://h:2379", "timeout"),
            ("etcd://h:2379/ns", "connect_timeout"),
            ("consul://h:8500", "min_poll"),
            ("redis://h:6379", "timeout"),
        ]),
        d in duration_text(),
    ) {
        let (base, option) = backend;
        let url = format!("{base}?{option}={d}");
        let accepted = parse_everywhere(&url)?;
        let compiled_in = match base.split(':').next().unwrap_or_default() {
            "etcd" => cfg!(feature = "etcd"),
            "consul" => cfg!(feature = "consul"),
            "redis" => cfg!(feature = "redis"),
            _ => true,
        };
        // (No generated duration holds `%`, `&` or `#`, which etcd would percent-decode or a
        // query would split on.)
        let parses = registry::config::parse_duration(&d).is_some();
        if compiled_in {
            prop_assert_eq!(accepted.len() == 1, parses, "{}: {:?}", url, accepted);
        }
    }
}

/// These panicked in the shared duration parser before it was bounded.
#[test]
fn huge_durations_in_urls_are_invalid_input_that_says_why() {
    let mut urls = vec!["memory://?history=18446744073709551616"];
    if cfg!(feature = "etcd") {
        urls.extend([
            "etcd://h:2379?timeout=1e300s",
            "etcds://h:2379?connect_timeout=18446744073709551615m",
        ]);
    }
    if cfg!(feature = "consul") {
        urls.push("consul://h:8500?min_poll=1e300s");
    }
    if cfg!(feature = "redis") {
        urls.push("redis://h:6379?timeout=307445734561825861m");
    }
    for url in urls {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(registry::connect(url)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{url}: {e}");
        if url.contains('=') && !url.starts_with("memory") {
            assert!(e.message().contains("too large"), "{url}: {e}");
        }
    }
}

/// `connect`'s dispatch on anything but a network backend's scheme (in any case): never a panic,
/// `Ok` only for `memory://`, and otherwise InvalidInput (or Unsupported for a backend left out).
fn local_or_unknown_url() -> impl Strategy<Value = String> {
    let network = ["etcd", "etcds", "consul", "consuls", "redis", "rediss"];
    prop_oneof![
        any::<String>().prop_filter("no scheme separator", |s| !s.contains("://")),
        (scheme(), any::<String>())
            .prop_filter("never a network backend's scheme", move |(s, _)| {
                !network.contains(&s.to_ascii_lowercase().as_str())
            })
            .prop_map(|(s, rest)| format!("{s}://{rest}")),
        near_valid_url().prop_filter("never a network backend's scheme", move |u| {
            let u = u.to_ascii_lowercase();
            !network.iter().any(|n| u.starts_with(&format!("{n}://")))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn connect_dispatch_never_panics(url in local_or_unknown_url()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        match rt.block_on(registry::connect(&url)) {
            Ok(_) => prop_assert!(url.to_ascii_lowercase().starts_with("memory://"), "{url:?} connected"),
            Err(e) => prop_assert!(
                matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Unsupported),
                "{:?}: {}", url, e
            ),
        }
    }
}

/// A secret with a marker at each end, so that no other part of a generated URL holds it by chance:
/// printable ASCII inside, percent-encoded where a URL needs it.
fn secret() -> impl Strategy<Value = String> {
    "[ -~]{1,10}".prop_map(|s| format!("Qx{s}zQ"))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every text a parsed URL or its refusal can show.
fn shown(url: &str) -> Vec<String> {
    let mut texts = Vec::new();
    match BackendUrl::parse(url) {
        Ok(parsed) => {
            texts.push(parsed.to_string());
            texts.push(format!("{parsed:?}"));
            texts.push(parsed.hosts().map(|h| h.to_string()).collect());
            texts.push(parsed.path().to_owned());
            #[cfg(feature = "memory")]
            texts.extend(
                registry::memory::MemoryBuilder::from_backend_url(&parsed)
                    .err()
                    .map(|e| e.to_string()),
            );
            #[cfg(feature = "etcd")]
            texts.extend(
                registry::etcd::EtcdBuilder::from_backend_url(&parsed)
                    .err()
                    .map(|e| e.to_string()),
            );
            #[cfg(feature = "redis")]
            texts.extend(
                registry::redis::RedisBuilder::from_backend_url(&parsed)
                    .err()
                    .map(|e| e.to_string()),
            );
        }
        Err(e) => texts.push(format!("{e} {e:?}")),
    }
    texts.push(registry::redact::redact_url(url));
    texts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Shown, a URL is what it parsed to: its redacted text parses to the same parts.
    #[test]
    fn a_parsed_url_shows_as_it_parsed(url in near_valid_url()) {
        if let Ok(parsed) = BackendUrl::parse(&url) {
            prop_assume!(parsed.password().is_none());
            prop_assume!(parsed.query_pairs().all(|(k, _)| !registry::redact::secrets_in_url(&format!("x://h?{k}=v")).contains(&"v".to_owned())));
            let again = BackendUrl::parse(&parsed.to_string())
                .map_err(|e| TestCaseError::fail(format!("{url:?} shows as {parsed}, which does not parse: {e}")))?;
            prop_assert_eq!(again.scheme(), parsed.scheme());
            prop_assert_eq!(again.user(), parsed.user());
            prop_assert_eq!(again.hosts().collect::<Vec<_>>(), parsed.hosts().collect::<Vec<_>>());
            prop_assert_eq!(again.path(), parsed.path());
            prop_assert_eq!(again.query_pairs().collect::<Vec<_>>(), parsed.query_pairs().collect::<Vec<_>>());
            prop_assert_eq!(again.secrets().is_empty(), true);
        }
    }

    /// A password or token never shows: not in `Display` or `Debug`, nor in any error, whether the
    /// URL parses or not.
    #[test]
    fn secrets_never_show(
        url in near_valid_url(),
        password in secret(),
        token in secret(),
        in_userinfo in any::<bool>(),
    ) {
        let (scheme, rest) = url.split_once("://").unwrap_or(("redis", &url));
        let with_secrets = if in_userinfo {
            format!("{scheme}://u:{}@{}", encode(&password), rest.rsplit_once('@').map_or(rest, |(_, r)| r))
        } else {
            // A query option, not part of a fragment.
            let (rest, fragment) = rest.split_once('#').map_or((rest, String::new()), |(r, f)| (r, format!("#{f}")));
            let sep = if rest.contains('?') { '&' } else { '?' };
            format!("{scheme}://{rest}{sep}token={}{fragment}", encode(&token))
        };
        let secret = if in_userinfo { &password } else { &token };
        for text in shown(&with_secrets) {
            prop_assert!(!text.contains(secret.as_str()), "{:?} shows {:?}: {}", with_secrets, secret, text);
            prop_assert!(!text.contains(&encode(secret)), "{:?} shows {:?}: {}", with_secrets, secret, text);
        }
        if let Ok(parsed) = BackendUrl::parse(&with_secrets) {
            let masked = parsed.secrets().mask(&format!("refused {secret} ({})", encode(secret)));
            prop_assert!(!masked.contains(secret.as_str()), "{}", masked);
        }
    }
}
