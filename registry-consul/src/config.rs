//! [`ConsulBuilder`]: agent address, ACL token, TLS, datacenter, namespace and polling, from code, a
//! URL or the environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use registry_core::url::BackendUrl;
use registry_core::{Error, Result};

use crate::http::Http;
use crate::keys;

const URL_HELP: &str = "expected consul://host:port[/namespace][?token=T&dc=DC&ns=NS&ca=PATH&min_poll=D&catalog=false] \
     (consuls:// for HTTPS)";

/// Configures and connects a [`ConsulBackend`](crate::ConsulBackend).
///
/// ```no_run
/// # async fn demo() -> registry_core::Result<()> {
/// let backend = registry_consul::ConsulBuilder::new()
///     .address("10.0.0.7:8500")
///     .token("acl-token")
///     .datacenter("eu-west")
///     .connect()
///     .await?;
/// # drop(backend); Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulBuilder {
    address: String,
    tls: bool,
    ca: Option<PathBuf>,
    pub(crate) token: Option<String>,
    datacenter: Option<String>,
    consul_namespace: Option<String>,
    pub(crate) namespace: String,
    pub(crate) request_timeout: Duration,
    pub(crate) watch_wait: Duration,
    pub(crate) min_poll_interval: Duration,
}

impl fmt::Debug for ConsulBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulBuilder")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("consul_namespace", &self.consul_namespace)
            .field("namespace", &self.namespace)
            .finish()
    }
}

use registry_core::config::try_parse_duration;

/// The value of the `catalog=` option of a Consul URL (and of `REGISTRY_CONSUL_CATALOG`): `true`,
/// `1`, `on` or `false`, `0`, `off`; `None` for anything else.
pub fn catalog_option(value: &str) -> Option<bool> {
    match value {
        "true" | "1" | "on" => Some(true),
        "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

impl Default for ConsulBuilder {
    fn default() -> Self {
        ConsulBuilder::new()
    }
}

impl ConsulBuilder {
    /// Defaults: `127.0.0.1:8500`, key namespace `registry`, 5 s requests, 10 s blocking queries,
    /// at most 10 polls a second per watch.
    pub fn new() -> Self {
        ConsulBuilder {
            address: "127.0.0.1:8500".into(),
            tls: false,
            ca: None,
            token: None,
            datacenter: None,
            consul_namespace: None,
            namespace: "registry".into(),
            request_timeout: Duration::from_secs(5),
            watch_wait: Duration::from_secs(10),
            min_poll_interval: Duration::from_millis(100),
        }
    }

    /// Reads `consul://host:port[/namespace][?token=T&dc=DC&ns=NS&ca=PATH&min_poll=D]`
    /// (`consuls://` for HTTPS); `min_poll` is the [minimum poll
    /// interval](Self::min_poll_interval). (The `catalog=` option of the `registry` tool is the
    /// tool's: it says whether to attach the catalog mirror, an add-on of the engine.)
    pub fn from_url(url: &str) -> Result<Self> {
        ConsulBuilder::from_backend_url(&BackendUrl::parse_expecting(url, URL_HELP)?)
    }

    /// Reads a parsed `consul://` or `consuls://` URL (HTTPS): its one `host:port`, the key
    /// namespace (the path) and the options `token`, `dc`, `ns`, `ca` and `min_poll`. The option
    /// `catalog=true|false` is the `registry` tool's (whether it attaches the catalog mirror, an
    /// add-on of the engine): the backend checks it is a boolean and otherwise leaves it alone,
    /// so that one URL serves the tool and the library.
    pub fn from_backend_url(url: &BackendUrl) -> Result<Self> {
        let Some(tls) = url.tls_variant_of("consul") else {
            return Err(Error::invalid(format!(
                "`{url}` is not a Consul URL; {URL_HELP}"
            )));
        };
        let mut hosts = url.hosts();
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            return Err(Error::invalid(format!(
                "`{url}` must name one Consul agent; {URL_HELP}"
            )));
        };
        if host.port().is_none() {
            return Err(Error::invalid(format!(
                "`{url}` needs host:port; {URL_HELP}"
            )));
        }
        let mut b = ConsulBuilder::new().address(host.to_string());
        b.tls = tls;
        let ns = url.path().trim_matches('/');
        if !ns.is_empty() {
            b = b.namespace(ns);
        }
        for (k, v) in url.query_pairs() {
            b = match k {
                "token" => b.token(v),
                "dc" => b.datacenter(v),
                "ns" => b.consul_namespace(v),
                "ca" => b.ca_file(v),
                "min_poll" => {
                    let d = try_parse_duration(v).map_err(|why| {
                        Error::invalid(format!("Consul URL option min_poll: `{v}` {why}"))
                    })?;
                    b.min_poll_interval(d)
                }
                "catalog" => match catalog_option(v) {
                    Some(_) => b,
                    None => {
                        return Err(Error::invalid(format!(
                            "Consul URL option catalog: `{v}` is not true or false"
                        )));
                    }
                },
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown Consul URL option `{k}`; {URL_HELP}"
                    )));
                }
            };
        }
        Ok(b)
    }

    /// Reads `CONSUL_HTTP_ADDR` (as the Consul CLI does; default `127.0.0.1:8500`, `https://` for
    /// TLS), `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT` and `REGISTRY_CONSUL_NAMESPACE`.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut b = ConsulBuilder::new();
        if let Some(addr) = var("CONSUL_HTTP_ADDR") {
            if let Some(a) = addr.strip_prefix("https://") {
                b = b.address(a);
                b.tls = true;
            } else {
                b = b.address(addr.trim_start_matches("http://"));
            }
        }
        if let Some(t) = var("CONSUL_HTTP_TOKEN") {
            b = b.token(t);
        }
        if let Some(ca) = var("CONSUL_CACERT") {
            b = b.ca_file(ca);
        }
        if let Some(ns) = var("REGISTRY_CONSUL_NAMESPACE") {
            b = b.namespace(ns);
        }
        Ok(b)
    }

    /// The agent's `host:port`.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// The ACL token sent with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// HTTPS, trusting the CA in this PEM file.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls = true;
        self.ca = Some(path.into());
        self
    }

    /// HTTPS with the webpki roots.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// The datacenter to use (default: the agent's).
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// The Consul Enterprise namespace to use.
    pub fn consul_namespace(mut self, ns: impl Into<String>) -> Self {
        self.consul_namespace = Some(ns.into());
        self
    }

    /// The KV prefix this backend's keys live under (default `registry`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long each request may take.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// How long a blocking query waits for a change before asking again (at least 1 s).
    pub fn watch_wait(mut self, t: Duration) -> Self {
        self.watch_wait = t.max(Duration::from_secs(1));
        self
    }

    /// The shortest time between two polls of one watch (rate limit; default 100 ms).
    pub fn min_poll_interval(mut self, t: Duration) -> Self {
        self.min_poll_interval = t;
        self
    }

    /// The Consul KV key under which the backend stores `key`: the namespace's prefix, then the
    /// key escaped segment by segment (see the crate documentation).
    pub fn kv_key(&self, key: &str) -> String {
        format!(
            "{}{}",
            keys::encode_prefix(&format!("{}/", self.namespace)),
            keys::encode(key)
        )
    }

    pub(crate) fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.address
        )
    }

    pub(crate) fn http(&self) -> Result<Http> {
        if self.namespace.is_empty() || self.namespace.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(format!(
                "invalid Consul key namespace {:?}",
                self.namespace
            )));
        }
        let ca = match &self.ca {
            Some(p) => Some((
                format!("the CA file {}", p.display()),
                std::fs::read(p).map_err(|e| {
                    Error::invalid(format!("cannot read the CA file {}", p.display()))
                        .with_source(e)
                })?,
            )),
            None => None,
        };
        Http::new(
            self.base_url(),
            self.token.clone(),
            self.datacenter.clone(),
            self.consul_namespace.clone(),
            ca,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms_and_redaction() {
        let b = ConsulBuilder::from_url("consul://h:8500/prod?token=s3cret-token&dc=eu").unwrap();
        assert_eq!(b.address, "h:8500");
        assert_eq!(b.namespace, "prod");
        assert_eq!(b.datacenter.as_deref(), Some("eu"));
        assert!(!format!("{b:?}").contains("s3cret"), "{b:?}");
        assert!(ConsulBuilder::from_url("consuls://h:8501").unwrap().tls);
        assert_eq!(b.kv_key("registry/web/w1"), "prod/registry/web/w1");
        // The registry tool's option: checked, left to the tool.
        assert!(ConsulBuilder::from_url("consul://h:8500?catalog=false").is_ok());
        assert!(ConsulBuilder::from_url("consul://h:8500?catalog=maybe").is_err());
        for bad in ["consul://h", "http://h:1", "consul://h:1?x=y"] {
            assert!(
                ConsulBuilder::from_url(bad)
                    .unwrap_err()
                    .message()
                    .contains("consul://"),
                "{bad}"
            );
        }
    }
}
