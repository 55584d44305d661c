//! [`ConsulAgent`]: plain HTTP calls to the Consul agent a [`ConsulBuilder`] names, with its
//! token, TLS, datacenter and namespace, for add-ons that talk to the same agent as the backend
//! (the catalog mirror and the catalog source of `registry-consul-catalog`).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use registry_core::{Error, Result};

use crate::config::ConsulBuilder;
use crate::http::Http;

/// A client of one Consul agent's HTTP API. Cheap to clone. `Debug` never shows the token.
///
/// Requests that never reached the agent are sent again (and GETs on any unavailability) until
/// their timeout; transport failures are [`Unavailable`](registry_core::ErrorKind::Unavailable),
/// timeouts [`Timeout`](registry_core::ErrorKind::Timeout), 401/403
/// [`PermissionDenied`](registry_core::ErrorKind::PermissionDenied), 5xx `Unavailable`; any other
/// status is the caller's to read in the [`AgentAnswer`].
#[derive(Clone)]
pub struct ConsulAgent {
    http: Http,
    request_timeout: Duration,
    watch_wait: Duration,
    min_poll_interval: Duration,
}

impl fmt::Debug for ConsulAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulAgent")
            .field("address", &self.http.address)
            .finish()
    }
}

/// One answer of the agent: status, `X-Consul-Index` (when sent) and body.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AgentAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The `X-Consul-Index` header, for blocking queries.
    pub index: Option<u64>,
    /// The body.
    pub body: Bytes,
}

impl AgentAnswer {
    /// The body as text, trimmed (for messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl ConsulBuilder {
    /// A client of the agent this builder names (same address, token, TLS, datacenter and
    /// namespace), for add-ons that talk to it beside the backend.
    pub fn agent(&self) -> Result<ConsulAgent> {
        ConsulAgent::new(self)
    }
}

impl ConsulAgent {
    fn new(b: &ConsulBuilder) -> Result<ConsulAgent> {
        Ok(ConsulAgent {
            http: b.http()?,
            request_timeout: b.request_timeout,
            watch_wait: b.watch_wait,
            min_poll_interval: b.min_poll_interval,
        })
    }

    /// The agent's `host:port`.
    pub fn address(&self) -> &str {
        &self.http.address
    }

    /// How long each request may take (the builder's request timeout).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// How long a blocking query waits for a change (the builder's watch wait).
    pub fn watch_wait(&self) -> Duration {
        self.watch_wait
    }

    /// The shortest time between two polls of one blocking query (the builder's rate limit).
    pub fn min_poll_interval(&self) -> Duration {
        self.min_poll_interval
    }

    /// `method path?query` with an optional JSON body, answered within `timeout`. `method` is an
    /// HTTP method's name (`GET`, `PUT`, ...); `query` is already encoded (the datacenter and
    /// namespace are added).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<AgentAnswer> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::invalid(format!("`{method}` is not an HTTP method")))?;
        let a = self.http.call(method, path, query, body, timeout).await?;
        Ok(AgentAnswer {
            status: a.status.as_u16(),
            index: a.index,
            body: a.body,
        })
    }
}
