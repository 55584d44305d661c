//! [`connect`]: a backend chosen at run time by URL scheme.

use std::sync::Arc;

use registry_core::url::BackendUrl;
use registry_core::{Backend, Error, Result};

/// The URL schemes `connect` understands, with the cargo feature each needs.
pub const SCHEMES: &[(&str, &str)] = &[
    ("memory", "memory"),
    ("etcd", "etcd"),
    ("etcds", "etcd"),
    ("consul", "consul"),
    ("consuls", "consul"),
    ("redis", "redis"),
    ("rediss", "redis"),
    ("redis+sentinel", "redis"),
    ("rediss+sentinel", "redis"),
];

/// The general form of a backend URL, for messages about one that does not parse.
const URL_HELP: &str = "expected SCHEME://[user:password@]host:port[,host:port...][/path][?option=value&...], \
     for example memory:// or etcd://127.0.0.1:2379";

/// Connects to the backend named by `url`'s scheme: parses it once ([`BackendUrl`]) and
/// [`connect_url`]s.
///
/// - `memory://` a fresh in-process store; `memory://NAME` the store of that name, shared by every
///   `connect` in the process (so a demo's registrar and discoverer meet); options as in
///   [`MemoryBuilder::from_url`](registry_memory::MemoryBuilder::from_url).
/// - `etcd://host:port[,host:port][/namespace]` (`etcds://` for TLS), `redis://host:port`
///   (`rediss://` for TLS; `redis+sentinel://sentinel:port[,sentinel:port...]/MASTER` under
///   Sentinel), `consul://host:port`: the backends of those crates, each behind its
///   cargo feature; see their builders' `from_url` for the options.
///
/// A scheme whose feature is off is [`ErrorKind::Unsupported`](registry_core::ErrorKind::Unsupported), naming the feature to enable; an
/// unknown scheme or a malformed URL is [`ErrorKind::InvalidInput`](registry_core::ErrorKind::InvalidInput).
///
/// No message of the error shows a secret: passwords and tokens of the URL are masked (`***`),
/// in this crate's messages and in those of the client crates underneath.
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    // The parse error shows the URL redacted already.
    connect_url(&BackendUrl::parse_expecting(url, URL_HELP)?).await
}

/// Connects to the backend named by the scheme of a parsed URL, handing the URL as it is to that
/// backend's builder (`from_backend_url`). Errors as for [`connect`]: no message shows a secret of
/// the URL.
pub async fn connect_url(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    let secrets = url.secrets();
    dispatch(url).await.map_err(|e| {
        if secrets.is_empty() {
            e
        } else {
            e.masked(&secrets)
        }
    })
}

async fn dispatch(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    match url.scheme() {
        "memory" => memory(url),
        "etcd" | "etcds" => etcd(url).await,
        "redis" | "rediss" | "redis+sentinel" | "rediss+sentinel" => redis(url).await,
        "consul" | "consuls" => consul(url).await,
        scheme => Err(Error::invalid(format!(
            "unknown backend scheme `{scheme}` in `{url}`; known schemes: {}",
            SCHEMES
                .iter()
                .map(|(s, _)| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(not(all(
    feature = "memory",
    feature = "etcd",
    feature = "consul",
    feature = "redis"
)))]
fn feature_of(scheme: &str) -> &'static str {
    SCHEMES
        .iter()
        .find(|(s, _)| *s == scheme)
        .map_or("full", |(_, f)| f)
}

#[cfg(feature = "memory")]
fn memory(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use registry_memory::{MemoryBackend, MemoryBuilder};

    static NAMED: OnceLock<Mutex<HashMap<String, MemoryBackend>>> = OnceLock::new();

    let builder = MemoryBuilder::from_backend_url(url)?;
    let Some(name) = url.hosts().next().map(|h| h.host()) else {
        return Ok(Arc::new(builder.build()));
    };
    let mut named = NAMED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let backend = named
        .entry(name.to_owned())
        .or_insert_with(|| builder.build())
        .clone();
    Ok(Arc::new(backend))
}

#[cfg(feature = "etcd")]
async fn etcd(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    let b = registry_etcd::EtcdBuilder::from_backend_url(url)?;
    Ok(Arc::new(b.connect().await?))
}

#[cfg(not(feature = "etcd"))]
async fn etcd(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    not_yet("etcd", url)
}

#[cfg(feature = "consul")]
async fn consul(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    let b = registry_consul::ConsulBuilder::from_backend_url(url)?;
    Ok(Arc::new(b.connect().await?))
}

#[cfg(not(feature = "consul"))]
async fn consul(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    not_yet("consul", url)
}

#[cfg(feature = "redis")]
async fn redis(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    let b = registry_redis::RedisBuilder::from_backend_url(url)?;
    Ok(Arc::new(b.connect().await?))
}

#[cfg(not(feature = "redis"))]
async fn redis(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    not_yet("redis", url)
}

#[cfg(not(feature = "memory"))]
fn memory(url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    not_yet("memory", url)
}

#[cfg(not(all(
    feature = "memory",
    feature = "etcd",
    feature = "consul",
    feature = "redis"
)))]
fn not_yet(scheme: &str, url: &BackendUrl) -> Result<Arc<dyn Backend>> {
    let feature = feature_of(scheme);
    Err(Error::new(
        registry_core::ErrorKind::Unsupported,
        format!(
            "`{url}` needs the {scheme} backend, which this build does not include; enable the \
             `{feature}` feature of the `registry` crate (or `full`)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_core::ErrorKind;

    #[tokio::test]
    async fn scheme_errors_are_clear() {
        let e = connect("localhost:2379").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("memory://"), "{e}");
        let e = connect("zookeeper://x").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("etcd://"), "{e}");
    }

    #[tokio::test]
    async fn malformed_urls_say_the_right_form_and_hide_secrets() {
        for url in ["etcd://root:hunter22@h:x", "redis://u:hunter22?x@h:1/0"] {
            let e = connect(url).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.message().contains("SCHEME://"), "{e}");
            assert!(!e.message().contains("hunter22"), "{e}");
        }
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn a_parsed_url_connects_as_its_text_does() {
        let url: BackendUrl = "MEMORY://parsed-once?history=8".parse().unwrap();
        let a = connect_url(&url).await.unwrap();
        let b = connect("memory://parsed-once").await.unwrap();
        a.put("k", registry_core::Bytes::new(), None).await.unwrap();
        assert!(b.get("k").await.unwrap().is_some());
        let e = connect("memory://a:1").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }

    #[cfg(not(feature = "etcd"))]
    #[tokio::test]
    async fn disabled_feature_is_named() {
        let e = connect("etcd://127.0.0.1:2379").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("`etcd` feature"), "{e}");
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn named_memory_stores_are_shared_and_anonymous_ones_are_not() {
        use registry_core::Bytes;
        let a = connect("memory://demo-share").await.unwrap();
        let b = connect("memory://demo-share").await.unwrap();
        let c = connect("memory://").await.unwrap();
        a.put("k", Bytes::new(), None).await.unwrap();
        assert!(b.get("k").await.unwrap().is_some());
        assert!(c.get("k").await.unwrap().is_none());
    }
}
