//! A small client, so Rust code can call ZSS services too: like the JavaScript client, each call
//! uses a DEALER of its own (identity `CLIENT#uuid`) on the broker's frontend, and a call that gets no
//! answer within its timeout is reported as status 599.

use std::time::Duration;

use bytes::Bytes;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::message::{Address, Message, error_body};
use crate::msgpack::Value;

/// The broker's default frontend address.
pub const DEFAULT_FRONTEND: &str = "tcp://127.0.0.1:7777";

/// An answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The status code (599 when the call timed out).
    pub status: u16,
    /// The reply's headers.
    pub headers: Value,
    /// The reply's payload (the error body for errors).
    pub payload: Value,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a call could not even be made.
#[derive(Debug)]
pub struct CallError(pub String);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "zss call: {}", self.0)
    }
}

impl std::error::Error for CallError {}

/// Calls ZSS services through a broker.
#[derive(Clone, Debug)]
pub struct Client {
    frontend: String,
    identity: String,
}

impl Default for Client {
    fn default() -> Self {
        Client::new(DEFAULT_FRONTEND)
    }
}

impl Client {
    /// A client of the broker whose frontend is `frontend`.
    pub fn new(frontend: impl Into<String>) -> Self {
        Client {
            frontend: frontend.into(),
            identity: "CLIENT".into(),
        }
    }

    /// The identity prefix (`CLIENT` by default; the JavaScript client's default is `client`).
    pub fn identity(mut self, prefix: impl Into<String>) -> Self {
        self.identity = prefix.into();
        self
    }

    /// Calls `sid`'s `verb` with `payload` and `headers`; a call unanswered within `timeout` (at
    /// most [`MAX_DURATION`](crate::MAX_DURATION); longer is lowered to it) is a [`Response`]
    /// with status 599.
    pub async fn call(
        &self,
        sid: &str,
        verb: &str,
        payload: impl Into<Value>,
        headers: Value,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let identity = format!("{}#{}", self.identity, uuid::Uuid::new_v4());
        let mut opts = SocketOptions::default();
        let peer = zeromq::util::PeerIdentity::try_from(identity.clone().into_bytes())
            .map_err(|e| CallError(format!("identity: {e}")))?;
        opts.peer_identity(peer);
        let mut socket = DealerSocket::with_options(opts);
        let headers = if headers.is_nil() {
            Value::Map(Vec::new())
        } else {
            headers
        };
        let request = Message::request(Address::new(sid, verb), headers, payload.into());
        let deadline = tokio::time::Instant::now() + timeout.min(crate::MAX_DURATION);
        let exchange = async {
            socket
                .connect(&self.frontend)
                .await
                .map_err(|e| CallError(format!("connect {}: {e}", self.frontend)))?;
            // The frontend ROUTER adds our identity as frame 0: send the other seven.
            let frames: Vec<Bytes> = request.to_frames().into_iter().skip(1).collect();
            let msg = ZmqMessage::try_from(frames).map_err(|e| CallError(format!("{e:?}")))?;
            socket
                .send(msg)
                .await
                .map_err(|e| CallError(format!("send: {e}")))?;
            loop {
                let reply = socket
                    .recv()
                    .await
                    .map_err(|e| CallError(format!("receive: {e}")))?;
                match Message::parse(&reply.into_vec()) {
                    Ok(m) if m.rid == request.rid => {
                        return Ok(Response {
                            status: m.status.unwrap_or(500),
                            headers: m.headers,
                            payload: m.payload,
                        });
                    }
                    Ok(m) => {
                        tracing::debug!(rid = %m.rid, "zss client: answer to another request ignored")
                    }
                    Err(e) => tracing::warn!(error = %e, "zss client: malformed answer ignored"),
                }
            }
        };
        let result = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => Ok(Response {
                status: 599,
                headers: Value::Map(Vec::new()),
                payload: error_body(599),
            }),
        };
        let _ = socket.close().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Instant::now() + timeout` panicked for `Duration::MAX` before the call even started.
    #[tokio::test]
    async fn a_huge_timeout_is_not_a_panic() {
        let r = Client::new("not-an-endpoint")
            .call("svc", "get", Value::Nil, Value::Nil, Duration::MAX)
            .await;
        assert!(r.is_err(), "{r:?}");
    }
}
