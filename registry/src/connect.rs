//! [`connect`]: a backend chosen at run time by URL scheme.

use std::sync::Arc;

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
];

/// Connects to the backend named by `url`'s scheme.
///
/// - `memory://` a fresh in-process store; `memory://NAME` the store of that name, shared by every
///   `connect` in the process (so a demo's registrar and discoverer meet); options as in
///   [`MemoryBuilder::from_url`](registry_memory::MemoryBuilder::from_url).
/// - `etcd://host:port[,host:port][/namespace]` (`etcds://` for TLS), `redis://host:port`
///   (`rediss://` for TLS), `consul://host:port`: the backends of those crates, each behind its
///   cargo feature; see their builders' `from_url` for the options.
///
/// A scheme whose feature is off is [`ErrorKind::Unsupported`](registry_core::ErrorKind::Unsupported), naming the feature to enable; an
/// unknown scheme or a malformed URL is [`ErrorKind::InvalidInput`](registry_core::ErrorKind::InvalidInput).
///
/// No message of the error shows a secret: passwords and tokens of the URL are masked (`***`),
/// in this crate's messages and in those of the client crates underneath.
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    let secrets = registry_core::redact::Secrets::from_url(url);
    connect_inner(url).await.map_err(|e| {
        if secrets.is_empty() {
            e
        } else {
            e.masked(&secrets)
        }
    })
}

async fn connect_inner(url: &str) -> Result<Arc<dyn Backend>> {
    let shown = registry_core::redact::redact_url(url);
    let Some((scheme, _rest)) = url.split_once("://") else {
        return Err(Error::invalid(format!(
            "`{shown}` is not a backend URL; expected SCHEME://..., for example memory:// or \
             etcd://127.0.0.1:2379"
        )));
    };
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "memory" => memory(url),
        "etcd" | "etcds" => etcd(url).await,
        "redis" | "rediss" => redis(url).await,
        "consul" | "consuls" => consul(url).await,
        _ => Err(Error::invalid(format!(
            "unknown backend scheme `{scheme}` in `{shown}`; known schemes: {}",
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
fn memory(url: &str) -> Result<Arc<dyn Backend>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use registry_memory::{MemoryBackend, MemoryBuilder};

    static NAMED: OnceLock<Mutex<HashMap<String, MemoryBackend>>> = OnceLock::new();

    let builder = MemoryBuilder::from_url(url)?;
    let rest = &url["memory://".len()..];
    let name = rest.split(['?', '/']).next().unwrap_or("");
    if name.is_empty() {
        return Ok(Arc::new(builder.build()));
    }
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
async fn etcd(url: &str) -> Result<Arc<dyn Backend>> {
    let b = registry_etcd::EtcdBuilder::from_url(url)?;
    Ok(Arc::new(b.connect().await?))
}

#[cfg(not(feature = "etcd"))]
async fn etcd(url: &str) -> Result<Arc<dyn Backend>> {
    not_yet("etcd", url)
}

#[cfg(feature = "consul")]
async fn consul(url: &str) -> Result<Arc<dyn Backend>> {
    let b = registry_consul::ConsulBuilder::from_url(url)?;
    Ok(Arc::new(b.connect().await?))
}

#[cfg(not(feature = "consul"))]
async fn consul(url: &str) -> Result<Arc<dyn Backend>> {
    not_yet("consul", url)
}

#[cfg(feature = "redis")]
async fn redis(url: &str) -> Result<Arc<dyn Backend>> {
    let b = registry_redis::RedisBuilder::from_url(url)?;
    Ok(Arc::new(b.connect().await?))
}

#[cfg(not(feature = "redis"))]
async fn redis(url: &str) -> Result<Arc<dyn Backend>> {
    not_yet("redis", url)
}

#[cfg(not(feature = "memory"))]
fn memory(url: &str) -> Result<Arc<dyn Backend>> {
    not_yet("memory", url)
}

#[cfg(not(all(
    feature = "memory",
    feature = "etcd",
    feature = "consul",
    feature = "redis"
)))]
fn not_yet(scheme: &str, url: &str) -> Result<Arc<dyn Backend>> {
    let feature = feature_of(scheme);
    Err(Error::new(
        registry_core::ErrorKind::Unsupported,
        format!(
            "`{}` needs the {scheme} backend, which this build does not include; enable the \
             `{feature}` feature of the `registry` crate (or `full`)",
            registry_core::redact::redact_url(url)
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
