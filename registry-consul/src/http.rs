//! Plain HTTP calls to the Consul agent over rs-consul's HTTP stack (hyper with rustls), for what
//! rs-consul does not cover: sessions, transactions, and KV reads of binary values with their
//! indexes.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{Method, Request, StatusCode};
use registry_core::{Error, ErrorKind, Result};

/// One answer: status, `X-Consul-Index` (when sent) and body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) index: Option<u64>,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// It never reached the agent: sending it again is always safe.
    NeverSent,
    /// It may have had an effect: only a GET is sent again, and only on unavailability.
    IfIdempotent,
    /// Sending it again cannot help: a failed TLS handshake fails again.
    Never,
}

#[derive(Clone)]
pub(crate) struct Http {
    client: rs_consul::HttpsClient,
    base: String,
    token: Option<String>,
    /// `dc=...&ns=...` (may be empty), appended to every query.
    scope: String,
    pub(crate) address: String,
    /// What an HTTPS connection trusts, for the message of a failed handshake (`None` for HTTP).
    trusted: Option<String>,
}

impl Http {
    pub(crate) fn new(
        base: String,
        token: Option<String>,
        datacenter: Option<String>,
        namespace: Option<String>,
        ca: Option<(String, Vec<u8>)>,
    ) -> Result<Http> {
        let trusted = base.starts_with("https://").then(|| match &ca {
            Some((what, _)) => what.clone(),
            None => "the built-in Mozilla roots (no CA file was given)".to_owned(),
        });
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca {
            Some((what, pem)) => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert =
                        cert.map_err(|e| Error::invalid(format!("{what} is not valid PEM: {e}")))?;
                    roots.add(cert).map_err(|e| {
                        Error::invalid(format!("the certificate in {what} is not usable: {e}"))
                    })?;
                }
                if roots.is_empty() {
                    return Err(Error::invalid(format!(
                        "{what} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                    )));
                }
                let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::invalid(format!("TLS configuration: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                builder.with_tls_config(config)
            }
            None => builder.with_webpki_roots(),
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build::<_, BoxBody<Bytes, Infallible>>(connector);
        let mut scope = Vec::new();
        if let Some(dc) = datacenter {
            scope.push(format!("dc={dc}"));
        }
        if let Some(ns) = namespace {
            scope.push(format!("ns={ns}"));
        }
        let address = base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned();
        Ok(Http {
            client,
            base,
            token,
            scope: scope.join("&"),
            address,
            trusted,
        })
    }

    /// Calls `method path?query` with an optional JSON or binary body within `timeout`. Transport
    /// failures are `Unavailable` and timeouts `Timeout`; the status is left to the caller, except
    /// 403 (`PermissionDenied`) and 5xx (`Unavailable`).
    ///
    /// A request that never connected is retried (it had no effect); a GET also on any
    /// unavailability (a 500 "No cluster leader" during an election, a restart), until `timeout`.
    /// A failed TLS handshake is not retried: it would fail the same way.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer> {
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + registry_core::config::MAX_DURATION);
        let mut pause = Duration::from_millis(25);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .once(method.clone(), path, query, body.clone(), left)
                .await
            {
                Ok(a) => return Ok(a),
                Err((e, again)) => {
                    let retry = match again {
                        Retry::NeverSent => true,
                        Retry::IfIdempotent => {
                            method == Method::GET && e.kind() == ErrorKind::Unavailable
                        }
                        Retry::Never => false,
                    };
                    if !retry || tokio::time::Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "consul: retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> std::result::Result<Answer, (Error, Retry)> {
        let mut q = query.to_owned();
        if !self.scope.is_empty() {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(&self.scope);
        }
        let uri = if q.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{q}", self.base)
        };
        let body: BoxBody<Bytes, Infallible> = match body {
            Some(b) => Full::new(Bytes::from(b)).boxed(),
            None => Empty::new().boxed(),
        };
        let mut req = Request::builder().method(method.clone()).uri(&uri);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        let req = req.body(body).map_err(|e| {
            (
                Error::invalid(format!("bad Consul request {path}: {e}")),
                Retry::IfIdempotent,
            )
        })?;
        let what = format!("consul {method} {path}");
        let resp = match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // A failed TLS handshake says so, and is not retried: it would fail again.
                if let Some(t) = self
                    .trusted
                    .as_deref()
                    .and_then(|trusted| registry_core::tls::tls_failure(&e, trusted))
                {
                    return Err((
                        t.context(format!("{what} at {}", self.address))
                            .with_source(e),
                        Retry::Never,
                    ));
                }
                let again = if e.is_connect() {
                    Retry::NeverSent
                } else {
                    Retry::IfIdempotent
                };
                return Err((
                    Error::unavailable(format!(
                        "{what}: cannot reach the Consul agent at {} (check that it is running there and reachable)",
                        self.address
                    ))
                    .with_source(e),
                    again,
                ));
            }
            Err(_) => {
                return Err((
                    Error::new(
                        ErrorKind::Timeout,
                        format!("{what}: no answer from {} within {timeout:?}", self.address),
                    ),
                    Retry::IfIdempotent,
                ));
            }
        };
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = match tokio::time::timeout(timeout, resp.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(source)) => {
                let e = Error::unavailable(format!("{what}: reading the answer failed"))
                    .with_source(source);
                return Err((e, Retry::IfIdempotent));
            }
            Err(_) => {
                let e = Error::new(ErrorKind::Timeout, format!("{what}: answer too slow"));
                return Err((e, Retry::IfIdempotent));
            }
        };
        let answer = Answer {
            status,
            index,
            body,
        };
        // Go's HTTPS server answers a plain-HTTP request so.
        if status == StatusCode::BAD_REQUEST
            && self.trusted.is_none()
            && answer.text().contains("HTTP request to an HTTPS server")
        {
            let e = Error::unavailable(format!(
                "{what}: TLS: the agent at {} serves HTTPS on this port: use consuls:// (with \
                 ca=PATH for a private CA)",
                self.address
            ));
            return Err((e, Retry::Never));
        }
        if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            let e = Error::new(
                ErrorKind::PermissionDenied,
                format!("{what}: {} (check the ACL token)", answer.text()),
            );
            return Err((e, Retry::IfIdempotent));
        }
        if status.is_server_error() {
            let e = Error::unavailable(format!("{what}: {status} {}", answer.text()));
            return Err((e, Retry::IfIdempotent));
        }
        Ok(answer)
    }
}
