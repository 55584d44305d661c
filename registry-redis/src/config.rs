//! [`RedisBuilder`]: address, credentials, TLS, namespace and the reaper, from code, a URL or the
//! environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use registry_core::config::try_parse_duration;
use registry_core::url::BackendUrl;
use registry_core::{Error, Result};

const URL_HELP: &str = "expected redis://[user:password@]host:port[/db][?namespace=NAME&user=U&password=P&ca=PATH&cert=PATH&key=PATH] (rediss:// for TLS)";

/// Configures and connects a [`RedisBackend`](crate::RedisBackend).
///
/// ```no_run
/// # async fn demo() -> registry_core::Result<()> {
/// let backend = registry_redis::RedisBuilder::from_url("redis://registry:s3cret@10.0.0.5:6379/0")?
///     .namespace("prod")
///     .connect()
///     .await?;
/// # drop(backend); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBuilder {
    host: String,
    port: u16,
    db: i64,
    user: Option<String>,
    password: Option<String>,
    tls: bool,
    ca: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    pub(crate) namespace: String,
    pub(crate) stream_max_len: usize,
    pub(crate) reap_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_value_len: usize,
}

impl fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBuilder")
            .field("address", &format!("{}:{}", self.host, self.port))
            .field("db", &self.db)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("client_cert", &self.client_cert.as_ref().map(|(c, _)| c))
            .field("namespace", &self.namespace)
            .field("stream_max_len", &self.stream_max_len)
            .field("reap_interval", &self.reap_interval)
            .finish()
    }
}

impl Default for RedisBuilder {
    fn default() -> Self {
        RedisBuilder::new()
    }
}

fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 128
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
}

impl RedisBuilder {
    /// Defaults: `127.0.0.1:6379`, db 0, namespace `registry`, a stream of about 100,000 events, a
    /// reap every 100 ms, 5 s connect and request timeouts, 1 MiB values.
    pub fn new() -> Self {
        RedisBuilder {
            host: "127.0.0.1".into(),
            port: 6379,
            db: 0,
            user: None,
            password: None,
            tls: false,
            ca: None,
            client_cert: None,
            namespace: "registry".into(),
            stream_max_len: 100_000,
            reap_interval: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_value_len: 1024 * 1024,
        }
    }

    /// Reads `redis://[user:password@]host:port[/db][?namespace=NAME&user=U&password=P&ca=PATH&cert=PATH&key=PATH]`;
    /// `rediss://` for TLS. See [`from_backend_url`](Self::from_backend_url).
    pub fn from_url(url: &str) -> Result<Self> {
        RedisBuilder::from_backend_url(&BackendUrl::parse_expecting(url, URL_HELP)?)
    }

    /// Reads a parsed `redis://` or `rediss://` URL (TLS): its host and port (6379 when it gives
    /// none), database (the path), user and password, and the options `namespace`, `user`,
    /// `password`, `ca`, `cert`, `key` and `timeout`.
    pub fn from_backend_url(url: &BackendUrl) -> Result<Self> {
        let Some(tls) = url.tls_variant_of("redis") else {
            return Err(Error::invalid(format!(
                "`{url}` is not a Redis URL; {URL_HELP}"
            )));
        };
        let mut hosts = url.hosts();
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            return Err(Error::invalid(format!(
                "`{url}` must name one Redis host; {URL_HELP}"
            )));
        };
        let mut b = RedisBuilder::new().address(host.host(), host.port().unwrap_or(6379));
        b.db = match url.path().trim_matches('/') {
            "" => 0,
            db => db.parse().map_err(|_| {
                Error::invalid(format!(
                    "`{url}`: the database `{db}` is not a number; {URL_HELP}"
                ))
            })?,
        };
        b.user = url.user().map(str::to_owned);
        b.password = url.password().map(str::to_owned);
        b.tls = tls;
        let mut cert = None;
        let mut key = None;
        for (k, v) in url.query_pairs() {
            match k {
                "namespace" => b = b.namespace(v),
                // Credentials as options too: for passwords with characters a URL's user
                // information cannot hold unencoded.
                "user" | "username" => b.user = Some(v.to_owned()),
                "password" => b.password = Some(v.to_owned()),
                "ca" => b.ca = Some(v.into()),
                "cert" => cert = Some(PathBuf::from(v)),
                "key" => key = Some(PathBuf::from(v)),
                "timeout" => {
                    b.request_timeout = try_parse_duration(v).map_err(|why| {
                        Error::invalid(format!("Redis URL option timeout: `{v}` {why}"))
                    })?
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown Redis URL option `{k}`; {URL_HELP}"
                    )));
                }
            }
        }
        match (cert, key) {
            (Some(c), Some(k)) => b.client_cert = Some((c, k)),
            (None, None) => {}
            _ => {
                return Err(Error::invalid(
                    "a client certificate needs both `cert` and `key`",
                ));
            }
        }
        Ok(b)
    }

    /// Reads `REGISTRY_REDIS_URL` (required), and `REGISTRY_REDIS_NAMESPACE`,
    /// `REGISTRY_REDIS_USER`, `REGISTRY_REDIS_PASSWORD` (kept out of the URL), `REGISTRY_REDIS_CA`.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = var("REGISTRY_REDIS_URL")
            .ok_or_else(|| Error::invalid("REGISTRY_REDIS_URL is not set (redis://host:port)"))?;
        let mut b = RedisBuilder::from_url(&url)?;
        if let Some(ns) = var("REGISTRY_REDIS_NAMESPACE") {
            b = b.namespace(ns);
        }
        if let Some(u) = var("REGISTRY_REDIS_USER") {
            b.user = Some(u);
        }
        if let Some(p) = var("REGISTRY_REDIS_PASSWORD") {
            b.password = Some(p);
        }
        if let Some(ca) = var("REGISTRY_REDIS_CA") {
            b = b.ca_file(ca);
        }
        Ok(b)
    }

    /// Host and port.
    pub fn address(mut self, host: impl Into<String>, port: u16) -> Self {
        self.host = host.into();
        self.port = port;
        self
    }

    /// The logical database.
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// `requirepass`-style password authentication.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// ACL user and password.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Enables TLS with the system's roots.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Enables TLS, trusting the CA in this PEM file.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls = true;
        self.ca = Some(path.into());
        self
    }

    /// A client certificate and key (PEM files) for mutual TLS.
    pub fn client_cert_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = true;
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The namespace: every key of this backend lives under the hash tag `{namespace}`, so one
    /// namespace is one Redis Cluster slot. Letters, digits and `. _ - : /`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// About how many events the stream keeps before old ones are trimmed (watches from before the
    /// oldest retained event fail with `Compacted`).
    pub fn stream_max_len(mut self, events: usize) -> Self {
        self.stream_max_len = events.max(16);
        self
    }

    /// How often this client reaps expired leases (the declared expiry slack follows from it).
    pub fn reap_interval(mut self, interval: Duration) -> Self {
        self.reap_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long connecting may take.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long each request may take.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// The largest value accepted (default 1 MiB).
    pub fn max_value_len(mut self, bytes: usize) -> Self {
        self.max_value_len = bytes;
        self
    }

    pub(crate) fn client(&self) -> Result<(Client, String)> {
        if !valid_namespace(&self.namespace) {
            return Err(Error::invalid(format!(
                "invalid Redis namespace {:?}: use letters, digits and . _ - : /",
                self.namespace
            )));
        }
        let address = format!("{}:{}", self.host, self.port);
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.user {
            redis = redis.set_username(u);
        }
        if let Some(p) = &self.password {
            redis = redis.set_password(p);
        }
        let info = addr
            .into_connection_info()
            .map_err(|e| Error::invalid(e.to_string()))?
            .set_redis_settings(redis);
        let client = if self.ca.is_some() || self.client_cert.is_some() {
            let read = |p: &PathBuf, what: &str| {
                std::fs::read(p).map_err(|e| {
                    Error::invalid(format!("cannot read the {what} file {}", p.display()))
                        .with_source(e)
                })
            };
            let root_cert = self
                .ca
                .as_ref()
                .map(|p| {
                    let pem = read(p, "CA certificate")?;
                    check_ca(&pem, p)?;
                    Ok::<_, Error>(pem)
                })
                .transpose()?;
            let client_tls = match &self.client_cert {
                Some((c, k)) => Some(redis::ClientTlsConfig {
                    client_cert: read(c, "client certificate")?,
                    client_key: read(k, "client key")?,
                }),
                None => None,
            };
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
        } else {
            Client::open(info)
        }
        .map_err(|e| Error::invalid(format!("Redis client configuration: {e}")))?;
        Ok((client, address))
    }

    /// What a TLS connection trusts, for the message of a failed handshake (`None` without TLS).
    pub(crate) fn trusted(&self) -> Option<String> {
        if !self.tls {
            return None;
        }
        Some(match &self.ca {
            Some(p) => format!("the CA file {}", p.display()),
            None => "the system's trust store (no CA file was given)".to_owned(),
        })
    }
}

/// Refuses a CA file that is not PEM or holds no certificate: it would trust nothing, and every
/// handshake would fail with a less telling error.
fn check_ca(pem: &[u8], path: &std::path::Path) -> Result<()> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| {
            Error::invalid(format!(
                "the CA file {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(Error::invalid(format!(
            "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_and_redaction() {
        let b = RedisBuilder::from_url("redis://alice:s3cret-pw@h:7000/2?namespace=prod").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.db), ("h", 7000, 2));
        assert_eq!(b.user.as_deref(), Some("alice"));
        assert_eq!(b.namespace, "prod");
        assert!(!format!("{b:?}").contains("s3cret"), "{b:?}");
        assert!(RedisBuilder::from_url("rediss://h:6380").unwrap().tls);
        for bad in ["http://h", "redis://h:1?colour=red"] {
            assert!(
                RedisBuilder::from_url(bad)
                    .unwrap_err()
                    .message()
                    .contains("redis://"),
                "{bad}"
            );
        }
        assert!(RedisBuilder::new().namespace("a{b}").client().is_err());
        for bad in [
            "redis://h:1/x",
            "redis://a:1,b:2",
            "redis://",
            "redis://h:x",
        ] {
            let e = RedisBuilder::from_url(bad).unwrap_err();
            assert!(
                e.message().contains("redis://[user:password@]"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_parsed_url_is_read_as_it_is() {
        let url: BackendUrl = "REDISS://u%40corp:p%26w@[::1]/3?password=pa%2Bss+&namespace=a%2Fb"
            .parse()
            .unwrap();
        let b = RedisBuilder::from_backend_url(&url).unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.db, b.tls),
            ("::1", 6379, 3, true)
        );
        assert_eq!(b.user.as_deref(), Some("u@corp"));
        assert_eq!(b.password.as_deref(), Some("pa+ss+"));
        assert_eq!(b.namespace, "a/b");
    }
}
