//! Connecting: an [`EtcdBuilder`]'s settings become a client, checked against the cluster, handed
//! to an [`EtcdBackend`]. Failures say what to check (credentials, TLS, reachability).

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use registry_core::config::check_duration;
use registry_core::{Error, ErrorKind, Result};

use crate::backend::EtcdBackend;
use crate::config::EtcdBuilder;
use crate::error::map;

impl EtcdBackend {
    /// A builder with defaults (`127.0.0.1:2379`).
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::new()
    }
}

impl EtcdBuilder {
    /// Connects (and authenticates). An unreachable cluster is `Unavailable` naming the endpoints;
    /// refused credentials are `PermissionDenied`.
    pub async fn connect(self) -> Result<EtcdBackend> {
        if self.endpoints.is_empty() {
            return Err(Error::invalid("no etcd endpoint given"));
        }
        // Positive and bounded, so that deadlines (and their sum below) cannot overflow.
        check_duration("etcd connect timeout", self.connect_timeout)?;
        check_duration("etcd request timeout", self.request_timeout)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let urls: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((user, password)) = &self.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        // What the client trusts, for the message of a failed handshake.
        let mut trusted = None;
        if let Some(tls) = &self.tls {
            let (t, roots) = crate::tls::options(tls, self.connect_timeout)?;
            opts = opts.with_tls(t);
            trusted = Some(roots.describe());
        }
        let where_ = self.endpoints.join(",");
        // A failed handshake says TLS and what to check, with what this client trusts.
        let tls_failure = |e: &etcd_client::Error| {
            let t = crate::tls::failure(e, trusted.as_deref()?)?;
            Some(t.context(format!("cannot connect to etcd at {where_}")))
        };
        let connecting = Client::connect(urls, Some(opts));
        let client = match tokio::time::timeout(
            self.connect_timeout + self.request_timeout,
            connecting,
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                if let Some(t) = tls_failure(&e) {
                    return Err(t.with_source(e));
                }
                let err = map(e, "connect");
                let hint = match err.kind() {
                    ErrorKind::PermissionDenied => "check the user name and password",
                    _ if trusted.is_none() => {
                        "check that etcd is running there and reachable, and whether it serves \
                         TLS (then use etcds://)"
                    }
                    _ => "check that etcd is running there and reachable (and TLS settings match)",
                };
                return Err(err.context(format!("cannot connect to etcd at {where_} ({hint})")));
            }
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "cannot connect to etcd at {where_}: no answer within {:?}",
                        self.connect_timeout
                    ),
                ));
            }
        };
        let backend = EtcdBackend::new(
            client,
            &self.namespace,
            self.endpoints,
            self.request_timeout,
            self.max_value_len,
        );
        // Fail now, not at the first operation, when nothing answers (the client connects lazily).
        backend.client().status().await.map_err(|e| {
            if let Some(t) = tls_failure(&e) {
                return t.with_source(e);
            }
            let err = map(e, "status");
            let hint = match err.kind() {
                ErrorKind::PermissionDenied => "check the user name and password",
                _ if trusted.is_none() => {
                    "check that etcd is running there and reachable, and whether it serves TLS \
                     (then use etcds://)"
                }
                _ => "check that etcd is running there and reachable",
            };
            err.context(format!("cannot reach etcd at {where_} ({hint})"))
        })?;
        Ok(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request timeout of `Duration::MAX` panicked in `connect_timeout + request_timeout`.
    #[tokio::test]
    async fn out_of_range_timeouts_are_refused_before_connecting() {
        for b in [
            EtcdBuilder::new().request_timeout(Duration::MAX),
            EtcdBuilder::new().connect_timeout(Duration::MAX),
            EtcdBuilder::new().request_timeout(Duration::ZERO),
            EtcdBuilder::new().connect_timeout(Duration::ZERO),
        ] {
            let e = b.connect().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.message().contains("timeout"), "{e}");
        }
    }
}
