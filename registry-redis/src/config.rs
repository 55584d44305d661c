//! [`RedisBuilder`]: address, credentials, TLS, namespace and the reaper, from code, a URL or the
//! environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use registry_core::config::try_parse_duration;
use registry_core::url::BackendUrl;
use registry_core::{Error, Result};

const URL_HELP: &str = "expected redis://[user:password@]host:port[/db][?namespace=NAME&user=U&password=P&ca=PATH&cert=PATH&key=PATH] (rediss:// for TLS), or redis+sentinel://[user:password@]sentinel:port[,sentinel:port...]/MASTER[/db][?sentinel_user=U&sentinel_password=P&...] (rediss+sentinel:// for TLS)";

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
    /// Under Sentinel: the sentinels and the master's name (then `host`/`port` are unused).
    pub(crate) sentinel: Option<Sentinels>,
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
            .field("sentinel", &self.sentinel)
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

/// The sentinels of a Redis under Sentinel, and the master's name.
#[derive(Clone)]
pub(crate) struct Sentinels {
    pub(crate) addrs: Vec<(String, u16)>,
    pub(crate) master: String,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
}

impl fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinels")
            .field("addrs", &self.addrs)
            .field("master", &self.master)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
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
            sentinel: None,
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
    ///
    /// `redis+sentinel://` (`rediss+sentinel://` for TLS to the sentinels and the master) names
    /// the sentinels instead (26379 when a host gives no port) and, as the path's first segment,
    /// the master's name, then optionally the database; the user and password are the master's,
    /// `sentinel_user` and `sentinel_password` the sentinels' (if they ask for any). The backend
    /// asks the sentinels for the master and follows it when it changes (see
    /// [`RedisBuilder::sentinel`]).
    pub fn from_backend_url(url: &BackendUrl) -> Result<Self> {
        let (tls, sentinel) = match url.scheme() {
            "redis" => (false, false),
            "rediss" => (true, false),
            "redis+sentinel" => (false, true),
            "rediss+sentinel" => (true, true),
            _ => {
                return Err(Error::invalid(format!(
                    "`{url}` is not a Redis URL; {URL_HELP}"
                )));
            }
        };
        let mut b = RedisBuilder::new();
        let path = url.path().trim_matches('/');
        let db = if sentinel {
            let addrs: Vec<(String, u16)> = url
                .hosts()
                .map(|h| (h.host().to_owned(), h.port().unwrap_or(26379)))
                .collect();
            let (master, db) = path.split_once('/').unwrap_or((path, ""));
            if addrs.is_empty() || master.is_empty() {
                return Err(Error::invalid(format!(
                    "`{url}` must name the sentinels and, as its path, the master; {URL_HELP}"
                )));
            }
            b = b.sentinel(addrs, master);
            db
        } else {
            let mut hosts = url.hosts();
            let (Some(host), None) = (hosts.next(), hosts.next()) else {
                return Err(Error::invalid(format!(
                    "`{url}` must name one Redis host (several sentinels: redis+sentinel://); \
                     {URL_HELP}"
                )));
            };
            b = b.address(host.host(), host.port().unwrap_or(6379));
            path
        };
        b.db = match db {
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
                "sentinel_user" | "sentinel_username" if sentinel => {
                    if let Some(s) = b.sentinel.as_mut() {
                        s.user = Some(v.to_owned());
                    }
                }
                "sentinel_password" if sentinel => {
                    if let Some(s) = b.sentinel.as_mut() {
                        s.password = Some(v.to_owned());
                    }
                }
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

    /// Redis under Sentinel: `sentinels` (host and port of each) know which server is the master
    /// named `master`. The backend asks them at connect time, and again when the server it writes
    /// to fails or answers that it is a replica (`READONLY`) after a failover, at most every
    /// 250 ms: it then writes to the new master. The new master's data is a new epoch to the
    /// backend (its server id differs), so every lease ends and every registration is rewritten
    /// within a heartbeat, and directories re-list, as after any loss of the server's memory.
    /// The user, password and TLS settings are the master's; see
    /// [`sentinel_auth`](Self::sentinel_auth) for the sentinels'.
    pub fn sentinel(
        mut self,
        sentinels: impl IntoIterator<Item = (String, u16)>,
        master: impl Into<String>,
    ) -> Self {
        self.sentinel = Some(Sentinels {
            addrs: sentinels.into_iter().collect(),
            master: master.into(),
            user: None,
            password: None,
        });
        self
    }

    /// The sentinels' own user (if any) and password, when they ask for one
    /// (`requirepass` / `sentinel sentinel-pass`).
    pub fn sentinel_auth(mut self, user: Option<String>, password: impl Into<String>) -> Self {
        if let Some(s) = self.sentinel.as_mut() {
            s.user = user;
            s.password = Some(password.into());
        }
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

    fn check_namespace(&self) -> Result<()> {
        if !valid_namespace(&self.namespace) {
            return Err(Error::invalid(format!(
                "invalid Redis namespace {:?}: use letters, digits and . _ - : /",
                self.namespace
            )));
        }
        Ok(())
    }

    /// The database, user and password of the data server (the master under Sentinel).
    fn redis_settings(&self) -> RedisConnectionInfo {
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.user {
            redis = redis.set_username(u);
        }
        if let Some(p) = &self.password {
            redis = redis.set_password(p);
        }
        redis
    }

    /// The CA and client certificate, read from their files, if any was given.
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>> {
        if self.ca.is_none() && self.client_cert.is_none() {
            return Ok(None);
        }
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
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// How to reach `host:port`: over TLS (checking the server's name) or in plain text.
    fn connection_addr(&self, host: &str, port: u16) -> ConnectionAddr {
        if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        }
    }

    /// A client of the one server named (not under Sentinel), and its `host:port`.
    pub(crate) fn client(&self) -> Result<(Client, String)> {
        self.check_namespace()?;
        let address = format!("{}:{}", self.host, self.port);
        let info = self
            .connection_addr(&self.host, self.port)
            .into_connection_info()
            .map_err(|e| Error::invalid(e.to_string()))?
            .set_redis_settings(self.redis_settings());
        let client = match self.certificates()? {
            Some(certs) => Client::build_with_tls(info, certs),
            None => Client::open(info),
        }
        .map_err(|e| Error::invalid(format!("Redis client configuration: {e}")))?;
        Ok((client, address))
    }

    /// Under Sentinel: a client of the sentinels that finds the master (and checks that it is
    /// one), with the master's credentials and TLS settings.
    pub(crate) fn sentinel_client(&self, s: &Sentinels) -> Result<SentinelClient> {
        self.check_namespace()?;
        let addrs = s
            .addrs
            .iter()
            .map(|(host, port)| self.connection_addr(host, *port));
        let config = |e: redis::RedisError| {
            Error::invalid(format!("Redis Sentinel client configuration: {e}"))
        };
        let mut b = SentinelClientBuilder::new(addrs, &s.master, SentinelServerType::Master)
            .map_err(config)?
            .set_client_to_redis_db(self.db);
        if let Some(u) = &self.user {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &self.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(u) = &s.user {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &s.password {
            b = b.set_client_to_sentinel_password(p);
        }
        if self.tls {
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            if let Some(certs) = self.certificates()? {
                b = b
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        b.build().map_err(config)
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
    fn sentinel_urls_name_the_sentinels_the_master_and_the_database() {
        let b = RedisBuilder::from_url(
            "redis+sentinel://app:pw@s1:26380,s2,[::1]:26381/prod-master/3?namespace=n\
             &sentinel_password=sp",
        )
        .unwrap();
        let s = b.sentinel.as_ref().unwrap();
        assert_eq!(
            s.addrs,
            [
                ("s1".to_owned(), 26380),
                ("s2".to_owned(), 26379),
                ("::1".to_owned(), 26381)
            ]
        );
        assert_eq!(s.master, "prod-master");
        assert_eq!(s.password.as_deref(), Some("sp"));
        assert_eq!((b.db, b.user.as_deref(), b.tls), (3, Some("app"), false));
        assert_eq!(b.namespace, "n");
        // Secrets stay out of Debug.
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("sp\"") && !shown.contains("\"pw"),
            "{shown}"
        );
        assert!(
            RedisBuilder::from_url("rediss+sentinel://s1/m")
                .unwrap()
                .tls
        );
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1/m/x",
            "redis://h1,h2",
        ] {
            assert!(RedisBuilder::from_url(bad).is_err(), "{bad}");
        }
        // sentinel_password is a secret of the URL too.
        let url: BackendUrl = "redis+sentinel://s1/m?sentinel_password=hunter2"
            .parse()
            .unwrap();
        assert!(!url.to_string().contains("hunter2"), "{url}");
    }

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
