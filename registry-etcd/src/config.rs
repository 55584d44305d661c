//! [`EtcdBuilder`]: endpoints, namespace, credentials, TLS and timeouts, from code, a URL or the
//! environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use registry_core::config::try_parse_duration;
use registry_core::url::BackendUrl;
use registry_core::{Error, Result};

use crate::tls::{Pem, Tls};

/// Configures and connects an [`EtcdBackend`](crate::EtcdBackend).
///
/// ```no_run
/// # async fn demo() -> registry_core::Result<()> {
/// use registry_etcd::EtcdBuilder;
/// use std::time::Duration;
///
/// let backend = EtcdBuilder::new()
///     .endpoints(["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"])
///     .namespace("prod")
///     .auth("registry", "s3cret")
///     .ca_file("/etc/etcd/ca.pem")
///     .request_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # drop(backend); Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdBuilder {
    pub(crate) endpoints: Vec<String>,
    pub(crate) namespace: String,
    pub(crate) user: Option<(String, String)>,
    pub(crate) tls: Option<Tls>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_value_len: usize,
}

impl fmt::Debug for EtcdBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBuilder")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("password", &self.user.as_ref().map(|_| "<redacted>"))
            .field(
                "tls",
                &self.tls.as_ref().map(|t| {
                    format!(
                        "ca: {:?}, cert: {:?}, key: {}",
                        t.ca,
                        t.cert,
                        if t.key.is_some() {
                            "<redacted>"
                        } else {
                            "none"
                        }
                    )
                }),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl Default for EtcdBuilder {
    fn default() -> Self {
        EtcdBuilder::new()
    }
}

const URL_HELP: &str = "expected etcd://[user:password@]host:port[,host:port...][/namespace][?ca=PATH&cert=PATH&key=PATH&timeout=10s&connect_timeout=5s] (etcds:// for TLS)";

impl EtcdBuilder {
    /// Defaults: `127.0.0.1:2379`, no namespace, no auth, no TLS, 5 s connect timeout, 10 s request
    /// timeout, 1 MiB values.
    pub fn new() -> Self {
        EtcdBuilder {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            namespace: String::new(),
            user: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_value_len: 1024 * 1024,
        }
    }

    /// Reads an `etcd://` or `etcds://` URL:
    /// `etcd://[user:password@]host:port[,host:port...][/namespace][?ca=PATH&cert=PATH&key=PATH&timeout=10s&connect_timeout=5s]`.
    /// See [`from_backend_url`](Self::from_backend_url).
    pub fn from_url(url: &str) -> Result<Self> {
        EtcdBuilder::from_backend_url(&BackendUrl::parse_expecting(url, URL_HELP)?)
    }

    /// Reads a parsed `etcd://` or `etcds://` URL (TLS): its endpoints, namespace (the path), user
    /// and password, and the options `ca`, `cert`, `key`, `domain`, `timeout` and
    /// `connect_timeout`.
    pub fn from_backend_url(url: &BackendUrl) -> Result<Self> {
        let Some(tls) = url.tls_variant_of("etcd") else {
            return Err(Error::invalid(format!(
                "`{url}` is not an etcd URL; {URL_HELP}"
            )));
        };
        if url.hosts().len() == 0 {
            return Err(Error::invalid(format!(
                "`{url}` names no etcd endpoint; {URL_HELP}"
            )));
        }
        if let Some(e) = url.hosts().find(|h| h.port().is_none()) {
            return Err(Error::invalid(format!(
                "etcd endpoint `{e}` in `{url}` needs host:port; {URL_HELP}"
            )));
        }
        let mut b = EtcdBuilder::new();
        b.endpoints = url.hosts().map(|h| h.to_string()).collect();
        b.namespace = url.path().trim_matches('/').to_owned();
        if url.user().is_some() || url.password().is_some() {
            let user = url.user().unwrap_or_default();
            b.user = Some((
                user.to_owned(),
                url.password().unwrap_or_default().to_owned(),
            ));
        }
        if tls {
            b.tls = Some(Tls::default());
        }
        for (k, v) in url.query_pairs() {
            let v = v.to_owned();
            b = match k {
                "ca" => b.ca_file(v),
                "cert" => {
                    b.tls.get_or_insert_with(Tls::default).cert = Some(Pem::File(v.into()));
                    b
                }
                "key" => {
                    b.tls.get_or_insert_with(Tls::default).key = Some(Pem::File(v.into()));
                    b
                }
                "domain" => {
                    b.tls.get_or_insert_with(Tls::default).domain = Some(v);
                    b
                }
                "timeout" | "connect_timeout" => {
                    let d = try_parse_duration(&v).map_err(|why| {
                        Error::invalid(format!("etcd URL option `{k}`: `{v}` {why}"))
                    })?;
                    if k == "timeout" {
                        b.request_timeout(d)
                    } else {
                        b.connect_timeout(d)
                    }
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown etcd URL option `{k}`; {URL_HELP}"
                    )));
                }
            };
        }
        Ok(b)
    }

    /// Reads `REGISTRY_ETCD_ENDPOINTS` (comma-separated `host:port`, required),
    /// `REGISTRY_ETCD_NAMESPACE`, `REGISTRY_ETCD_USER`, `REGISTRY_ETCD_PASSWORD`, `REGISTRY_ETCD_CA`,
    /// `REGISTRY_ETCD_CERT`, `REGISTRY_ETCD_KEY`, `REGISTRY_ETCD_TLS` (`1` for TLS with the system
    /// roots), `REGISTRY_ETCD_TIMEOUT` and `REGISTRY_ETCD_CONNECT_TIMEOUT`.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoints = var("REGISTRY_ETCD_ENDPOINTS").ok_or_else(|| {
            Error::invalid("REGISTRY_ETCD_ENDPOINTS is not set (comma-separated host:port list)")
        })?;
        let mut b = EtcdBuilder::new().endpoints(endpoints.split(','));
        if let Some(ns) = var("REGISTRY_ETCD_NAMESPACE") {
            b = b.namespace(ns);
        }
        if let Some(user) = var("REGISTRY_ETCD_USER") {
            b = b.auth(user, var("REGISTRY_ETCD_PASSWORD").unwrap_or_default());
        }
        if let Some(ca) = var("REGISTRY_ETCD_CA") {
            b = b.ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (var("REGISTRY_ETCD_CERT"), var("REGISTRY_ETCD_KEY")) {
            b = b.client_cert_files(cert, key);
        }
        if var("REGISTRY_ETCD_TLS").is_some_and(|v| v == "1" || v == "true") {
            b.tls.get_or_insert_with(Tls::default);
        }
        for (k, conn) in [
            ("REGISTRY_ETCD_TIMEOUT", false),
            ("REGISTRY_ETCD_CONNECT_TIMEOUT", true),
        ] {
            if let Some(v) = var(k) {
                let d = try_parse_duration(&v)
                    .map_err(|why| Error::invalid(format!("{k}: `{v}` {why}")))?;
                b = if conn {
                    b.connect_timeout(d)
                } else {
                    b.request_timeout(d)
                };
            }
        }
        Ok(b)
    }

    /// The `host:port` endpoints; the client fails over among them.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints
            .into_iter()
            .map(Into::into)
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        self
    }

    /// A key prefix isolating this backend's keys (and revisions' meaning) from other users of the
    /// cluster: every key is stored as `namespace/key`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into().trim_matches('/').to_owned();
        self
    }

    /// User and password authentication.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Enables TLS, trusting the CA in this PEM file.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.get_or_insert_with(Tls::default).ca = Some(Pem::File(path.into()));
        self
    }

    /// Enables TLS, trusting this PEM CA certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(Tls::default).ca = Some(Pem::Bytes(pem.into()));
        self
    }

    /// A client certificate and key (PEM files) for mutual TLS.
    pub fn client_cert_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        let tls = self.tls.get_or_insert_with(Tls::default);
        tls.cert = Some(Pem::File(cert.into()));
        tls.key = Some(Pem::File(key.into()));
        self
    }

    /// A client certificate and key (PEM bytes) for mutual TLS.
    pub fn client_cert_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        let tls = self.tls.get_or_insert_with(Tls::default);
        tls.cert = Some(Pem::Bytes(cert.into()));
        tls.key = Some(Pem::Bytes(key.into()));
        self
    }

    /// The name the server certificate must carry (default: the endpoint's host).
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls.get_or_insert_with(Tls::default).domain = Some(domain.into());
        self
    }

    /// How long connecting (and authenticating) may take.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long each request may take before it fails with `Timeout`.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// The largest value accepted (default 1 MiB; etcd's own request limit is 1.5 MiB).
    pub fn max_value_len(mut self, bytes: usize) -> Self {
        self.max_value_len = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let b = EtcdBuilder::from_url("etcd://h1:2379,h2:2380/prod/eu?timeout=3s").unwrap();
        assert_eq!(b.endpoints, ["h1:2379", "h2:2380"]);
        assert_eq!(b.namespace, "prod/eu");
        assert_eq!(b.request_timeout, Duration::from_secs(3));
        assert!(b.tls.is_none());
        let b = EtcdBuilder::from_url("etcds://bob:p%40ss@h:2379?ca=/x/ca.pem").unwrap();
        assert_eq!(b.user, Some(("bob".into(), "p@ss".into())));
        assert!(b.tls.as_ref().unwrap().ca.is_some());
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://h:x",
            "http://h:1",
            "etcd://h:1?colour=red",
        ] {
            let e = EtcdBuilder::from_url(bad).unwrap_err();
            assert!(e.message().contains("etcd://"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_parsed_url_is_read_as_it_is() {
        let url: BackendUrl = "ETCDS://:pw@[::1]:2379,h:2380/a%20b?domain=etcd.local"
            .parse()
            .unwrap();
        let b = EtcdBuilder::from_backend_url(&url).unwrap();
        assert_eq!(b.endpoints, ["[::1]:2379", "h:2380"]);
        assert_eq!(b.namespace, "a b");
        assert_eq!(b.user, Some((String::new(), "pw".into())));
        assert_eq!(b.tls.unwrap().domain.as_deref(), Some("etcd.local"));
        let e = EtcdBuilder::from_url("etcd://root:hunter22@h").unwrap_err();
        assert!(e.message().contains("host:port"), "{e}");
        assert!(!e.message().contains("hunter22"), "{e}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let b = EtcdBuilder::new()
            .auth("alice", "hunter2-password")
            .client_cert_pem("CERT", "PRIVATE KEY MATERIAL");
        let d = format!("{b:?}");
        assert!(d.contains("alice"));
        assert!(!d.contains("hunter2"), "{d}");
        assert!(!d.contains("PRIVATE KEY"), "{d}");
    }
}
