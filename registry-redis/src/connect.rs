//! Connecting: a [`RedisBuilder`]'s settings become a client and a connection, handed to a
//! [`RedisBackend`]. Failures say what to check (credentials, TLS, reachability).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use registry_core::config::check_duration;
use registry_core::{Error, ErrorKind, Result};

use crate::backend::{Follow, Link, RedisBackend, Settings, ask_master};
use crate::config::RedisBuilder;
use crate::error::map;

/// How long connecting waits before asking the sentinels again for a master that answers.
const SENTINEL_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

impl RedisBackend {
    /// A builder with defaults (`redis://127.0.0.1:6379`).
    pub fn builder() -> RedisBuilder {
        RedisBuilder::new()
    }
}

impl RedisBuilder {
    /// Connects, authenticates and starts this client's expiry reaper (on the current tokio
    /// runtime). Refused credentials are `PermissionDenied`; an unreachable server is `Unavailable`.
    pub async fn connect(self) -> Result<RedisBackend> {
        // Positive and bounded, so that deadlines and the declared slack cannot overflow.
        check_duration("Redis connect timeout", self.connect_timeout)?;
        check_duration("Redis request timeout", self.request_timeout)?;
        check_duration("Redis reap interval", self.reap_interval)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.request_timeout))
            .set_number_of_retries(1);
        let (client, address, follow) = match &self.sentinel {
            None => {
                let (client, address) = self.client()?;
                (client, address, None)
            }
            Some(s) => {
                let mut sentinel = self.sentinel_client(s)?;
                let names = s
                    .addrs
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",");
                // While a failover is under way the sentinels still name the old master, which
                // does not answer: ask again until the connect timeout is spent.
                let deadline = std::time::Instant::now() + self.connect_timeout;
                let failed = |e: Error| {
                    e.context(format!(
                        "cannot find the master {:?} through the sentinels at {names} \
                         (check that they run there and know that name)",
                        s.master
                    ))
                };
                // The last error met, if any: what to report when the time runs out during the
                // next question (a bare timeout would hide a TLS or a password error).
                let mut last: Option<Error> = None;
                let (client, address) = loop {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    match ask_master(&mut sentinel, left).await {
                        Some(Ok(found)) => break found,
                        None => {
                            return Err(last.map(failed).unwrap_or_else(|| {
                                Error::new(
                                    ErrorKind::Timeout,
                                    format!(
                                        "cannot find the master {:?}: the sentinels at {names} \
                                         named none that answered within {:?}",
                                        s.master, self.connect_timeout
                                    ),
                                )
                            }));
                        }
                        Some(Err(e)) => {
                            let again = std::time::Instant::now() + SENTINEL_RETRY < deadline
                                && !e.kind().is_permanent();
                            if !again {
                                return Err(failed(e));
                            }
                            tracing::debug!(error = %e, "Redis Sentinel: no master yet; asking again");
                            last = Some(e);
                            tokio::time::sleep(SENTINEL_RETRY).await;
                        }
                    }
                };
                let follow = Follow {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    cfg: cfg.clone(),
                    timeout: self.connect_timeout,
                    asked: std::sync::Mutex::new(None),
                    asks: Default::default(),
                    moves: Default::default(),
                };
                (client, address, Some(follow))
            }
        };
        let conn = match tokio::time::timeout(
            self.connect_timeout + self.request_timeout,
            ConnectionManager::new_with_config(client.clone(), cfg),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // A failed handshake says TLS and what to check, with what this client trusts.
                let tls = self.trusted();
                if let Some(t) = tls
                    .as_deref()
                    .and_then(|trusted| registry_core::tls::tls_failure(&e, trusted))
                {
                    let t = t.context(format!("cannot connect to Redis at {address}"));
                    return Err(t.with_source(e));
                }
                let err = map(e, "connect");
                let hint = match err.kind() {
                    ErrorKind::PermissionDenied => "check the user name and password",
                    _ if tls.is_none() => {
                        "check that Redis is running there and reachable, and whether it serves \
                         TLS only (then use rediss://)"
                    }
                    _ => "check that Redis is running there and reachable (and TLS settings match)",
                };
                return Err(err.context(format!("cannot connect to Redis at {address} ({hint})")));
            }
            Err(_) => {
                // A server that does not speak TLS waits for more of the handshake, forever.
                let tls_hint = if self.trusted().is_some() {
                    "; TLS is on (rediss://): a server that does not speak TLS never answers the \
                     handshake, so check that this is its TLS port"
                } else {
                    ""
                };
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "cannot connect to Redis at {address}: no answer within {:?}{tls_hint}",
                        self.connect_timeout + self.request_timeout
                    ),
                ));
            }
        };
        let settings = Settings {
            namespace: self.namespace,
            stream_max_len: self.stream_max_len,
            reap_interval: self.reap_interval,
            request_timeout: self.request_timeout,
            max_value_len: self.max_value_len,
        };
        RedisBackend::start(
            Link {
                client,
                conn,
                address,
            },
            follow,
            settings,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A `Duration::MAX` timeout or reap interval panicked in `connect_timeout + request_timeout`
    /// or `reap_interval + 400 ms`.
    #[tokio::test]
    async fn out_of_range_durations_are_refused_before_connecting() {
        for (b, what) in [
            (
                RedisBuilder::new().request_timeout(Duration::MAX),
                "request timeout",
            ),
            (
                RedisBuilder::new().connect_timeout(Duration::MAX),
                "connect timeout",
            ),
            (
                RedisBuilder::new().request_timeout(Duration::ZERO),
                "request timeout",
            ),
            (
                RedisBuilder::new().reap_interval(Duration::MAX),
                "reap interval",
            ),
        ] {
            let e = b.connect().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert!(e.message().contains(what), "{what}: {e}");
        }
    }
}
