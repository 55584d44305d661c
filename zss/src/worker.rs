//! Service workers: a configuration (sid, broker, heartbeat, verbs) that starts any number of
//! workers, each a DEALER connected to the broker's backend with its own identity `SID#uuid`.
//!
//! A worker announces itself (`SMI UP`), sends `SMI HEARTBEAT` every interval, answers requests
//! (handlers run concurrently; a handler that errs or panics yields 500 and the worker keeps
//! serving), and on [`Worker::stop`] sends `SMI DOWN` and waits for the broker's answer, within a
//! bound. If the broker stops answering heartbeats (it restarted, or dropped the worker), the worker
//! reconnects and announces itself again. Malformed frames are logged and dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::message::{Address, Kind, Message, error_body};
use crate::msgpack::Value;

/// The broker's default backend address.
pub const DEFAULT_BROKER: &str = "tcp://127.0.0.1:7776";
/// The default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(1000);

/// A successful answer: a payload (nil for none) and an optional 2xx status.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The payload; `Nil` makes the default status 204.
    pub payload: Value,
    /// An explicit status; must be 2xx (anything else is answered as 500).
    pub status: Option<u16>,
}

impl Reply {
    /// 200 with `payload` (204 if it is nil).
    pub fn ok(payload: impl Into<Value>) -> Self {
        Reply {
            payload: payload.into(),
            status: None,
        }
    }

    /// 204, no payload.
    pub fn empty() -> Self {
        Reply {
            payload: Value::Nil,
            status: None,
        }
    }

    /// An explicit 2xx status with `payload`.
    pub fn with_status(status: u16, payload: impl Into<Value>) -> Self {
        Reply {
            payload: payload.into(),
            status: Some(status),
        }
    }
}

/// A failed answer, sent with its code as the status and, as the payload, the error body ZSS clients
/// expect: `{code, userMessage, developerMessage}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceError {
    /// The status code (4xx or 5xx; default 500).
    pub code: u16,
    /// A message for end users.
    pub user_message: String,
    /// A message for developers.
    pub developer_message: String,
}

impl ServiceError {
    /// An error with `code` and the standard messages for it.
    pub fn new(code: u16) -> Self {
        let body = error_body(code);
        let text = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        ServiceError {
            code,
            user_message: text("userMessage"),
            developer_message: text("developerMessage"),
        }
    }

    /// An error with `code` and messages of its own.
    pub fn with_messages(code: u16, user: impl Into<String>, developer: impl Into<String>) -> Self {
        ServiceError {
            code,
            user_message: user.into(),
            developer_message: developer.into(),
        }
    }

    fn body(&self) -> Value {
        Value::map([
            ("code", Value::Int(i64::from(self.code))),
            ("userMessage", Value::from(self.user_message.as_str())),
            (
                "developerMessage",
                Value::from(self.developer_message.as_str()),
            ),
        ])
    }
}

impl Default for ServiceError {
    fn default() -> Self {
        ServiceError::new(500)
    }
}

/// What a handler returns.
pub type HandlerResult = Result<Reply, ServiceError>;
type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
type Handler = Arc<dyn Fn(Value, Message) -> BoxFuture + Send + Sync>;

/// A service's configuration: start as many workers from it as you like with [`run`](Self::run).
#[derive(Clone)]
pub struct ServiceConfig {
    sid: String,
    broker: String,
    heartbeat: Duration,
    stop_timeout: Duration,
    verbs: HashMap<String, Handler>,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut verbs: Vec<&String> = self.verbs.keys().collect();
        verbs.sort();
        f.debug_struct("ServiceConfig")
            .field("sid", &self.sid)
            .field("broker", &self.broker)
            .field("heartbeat", &self.heartbeat)
            .field("verbs", &verbs)
            .finish()
    }
}

impl ServiceConfig {
    /// A service `sid` (upper-cased), on the default broker with the default heartbeat.
    pub fn new(sid: &str) -> Self {
        ServiceConfig {
            sid: sid.to_uppercase(),
            broker: DEFAULT_BROKER.into(),
            heartbeat: DEFAULT_HEARTBEAT,
            stop_timeout: Duration::from_secs(3),
            verbs: HashMap::new(),
        }
    }

    /// The broker's backend address.
    pub fn broker(mut self, addr: impl Into<String>) -> Self {
        self.broker = addr.into();
        self
    }

    /// The heartbeat interval: 10 ms to [`MAX_DURATION`](crate::MAX_DURATION), other values
    /// being raised or lowered to that range.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval.clamp(Duration::from_millis(10), crate::MAX_DURATION);
        self
    }

    /// How long [`Worker::stop`] waits for the broker to acknowledge `DOWN` (at most
    /// [`MAX_DURATION`](crate::MAX_DURATION)).
    pub fn stop_timeout(mut self, t: Duration) -> Self {
        self.stop_timeout = t.min(crate::MAX_DURATION);
        self
    }

    /// The service id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// Adds a route: `verb` (upper-cased) answered by `handler(payload, message)`.
    pub fn verb<F, Fut>(mut self, verb: &str, handler: F) -> Self
    where
        F: Fn(Value, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let h: Handler = Arc::new(move |p, m| Box::pin(handler(p, m)));
        self.verbs.insert(verb.to_uppercase(), h);
        self
    }

    /// Starts one worker with a fresh identity `SID#uuid`.
    pub fn run(&self) -> Worker {
        let identity = format!("{}#{}", self.sid, uuid::Uuid::new_v4());
        let (stop_tx, stop_rx) = oneshot::channel();
        let mut task = tokio::task::JoinSet::new();
        task.spawn(WorkerTask::new(self.clone(), identity.clone()).run(stop_rx));
        Worker {
            identity,
            stop: Some(stop_tx),
            _task: task,
        }
    }
}

/// A running worker. Dropping it stops it without `DOWN` (as a crash would); use
/// [`stop`](Self::stop) to leave properly.
#[derive(Debug)]
pub struct Worker {
    identity: String,
    stop: Option<oneshot::Sender<oneshot::Sender<bool>>>,
    /// The worker's task, aborted when the worker is dropped (a `JoinSet` aborts its tasks).
    _task: tokio::task::JoinSet<()>,
}

impl Worker {
    /// The worker's identity, `SID#uuid`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Sends `DOWN` and waits (within the configured bound) for the broker's answer. Returns whether
    /// the broker acknowledged it.
    pub async fn stop(mut self) -> bool {
        let (ack_tx, ack_rx) = oneshot::channel();
        let Some(tx) = self.stop.take() else {
            return false;
        };
        if tx.send(ack_tx).is_err() {
            return false;
        }
        ack_rx.await.unwrap_or(false)
    }

    /// Stops abruptly, as if the process died: no `DOWN`.
    pub fn kill(self) {}
}

struct WorkerTask {
    config: ServiceConfig,
    identity: String,
}

enum Exit {
    Stopped,
    Reconnect,
}

impl WorkerTask {
    fn new(config: ServiceConfig, identity: String) -> Self {
        WorkerTask { config, identity }
    }

    fn smi(&self, verb: &str) -> ZmqMessage {
        let mut m = Message::request(
            Address::new("SMI", verb),
            Value::map::<&str>([]),
            Value::from(self.config.sid.as_str()),
        );
        m.identity = Some(self.identity.clone());
        frames(m)
    }

    async fn connect(&self) -> DealerSocket {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut opts = SocketOptions::default();
            match zeromq::util::PeerIdentity::try_from(self.identity.clone().into_bytes()) {
                Ok(id) => {
                    opts.peer_identity(id);
                }
                Err(e) => {
                    tracing::error!(identity = %self.identity, error = %e, "zss: identity rejected")
                }
            }
            let mut socket = DealerSocket::with_options(opts);
            match socket.connect(&self.config.broker).await {
                Ok(()) => return socket,
                Err(e) => {
                    tracing::warn!(broker = %self.config.broker, error = %e, "zss: cannot connect to the broker; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn run(self, mut stop_rx: oneshot::Receiver<oneshot::Sender<bool>>) {
        loop {
            match self.session(&mut stop_rx).await {
                Exit::Stopped => return,
                Exit::Reconnect => {
                    tracing::warn!(identity = %self.identity, "zss: broker silent; reconnecting and announcing again");
                }
            }
        }
    }

    /// One connection: UP, serve, heartbeat; ends on stop or when the broker falls silent.
    async fn session(&self, stop_rx: &mut oneshot::Receiver<oneshot::Sender<bool>>) -> Exit {
        let mut socket = self.connect().await;
        if let Err(e) = socket.send(self.smi("UP")).await {
            tracing::warn!(error = %e, "zss: UP not sent");
        }
        tracing::info!(identity = %self.identity, broker = %self.config.broker, "zss: worker up");
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Message>();
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_heard = Instant::now();
        let silent_after = self.config.heartbeat * 4;
        let mut stopping: Option<(oneshot::Sender<bool>, Instant)> = None;
        loop {
            let deadline = stopping.as_ref().map(|(_, d)| *d);
            tokio::select! {
                received = socket.recv() => match received {
                    Ok(msg) => {
                        let frames = msg.into_vec();
                        match Message::parse(&frames) {
                            Ok(m) if m.kind == Kind::Reply => {
                                last_heard = Instant::now();
                                if m.address.sid == "SMI" && m.address.verb == "DOWN"
                                    && let Some((ack, _)) = stopping.take() {
                                        let _ = ack.send(m.status == Some(200));
                                        return Exit::Stopped;
                                    }
                                if m.status != Some(200) && m.address.sid == "SMI" {
                                    tracing::debug!(verb = %m.address.verb, status = ?m.status, "zss: SMI answer");
                                }
                            }
                            Ok(m) => {
                                last_heard = Instant::now();
                                self.dispatch(m, reply_tx.clone());
                            }
                            Err(e) => tracing::warn!(error = %e, frames = frames.len(), "zss: dropping a malformed message"),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "zss: receive failed");
                        return Exit::Reconnect;
                    }
                },
                Some(reply) = reply_rx.recv() => {
                    if let Err(e) = socket.send(frames(reply)).await {
                        tracing::warn!(error = %e, "zss: reply not sent");
                    }
                }
                _ = tick.tick() => {
                    if stopping.is_none() {
                        if last_heard.elapsed() > silent_after {
                            return Exit::Reconnect;
                        }
                        if let Err(e) = socket.send(self.smi("HEARTBEAT")).await {
                            tracing::debug!(error = %e, "zss: heartbeat not sent");
                        }
                    }
                }
                ack = &mut *stop_rx, if stopping.is_none() => {
                    let Ok(ack) = ack else {
                        return Exit::Stopped;
                    };
                    let _ = socket.send(self.smi("DOWN")).await;
                    stopping = Some((ack, Instant::now() + self.config.stop_timeout));
                }
                _ = tokio::time::sleep_until(deadline.map_or_else(far, tokio::time::Instant::from_std)), if deadline.is_some() => {
                    if let Some((ack, _)) = stopping.take() {
                        tracing::warn!(identity = %self.identity, "zss: broker did not acknowledge DOWN in time");
                        let _ = ack.send(false);
                    }
                    return Exit::Stopped;
                }
            }
        }
    }

    /// Runs the verb's handler concurrently and sends its answer back through `out`.
    fn dispatch(&self, request: Message, out: mpsc::UnboundedSender<Message>) {
        let started = Instant::now();
        let handler = (request.address.sid == self.config.sid)
            .then(|| {
                self.config
                    .verbs
                    .get(&request.address.verb.to_uppercase())
                    .cloned()
            })
            .flatten();
        tokio::spawn(async move {
            let result = match handler {
                None => {
                    tracing::warn!(sid = %request.address.sid, verb = %request.address.verb, "zss: no such verb: 404");
                    Err(ServiceError::new(404))
                }
                Some(h) => {
                    let fut = h(request.payload.clone(), request.clone());
                    match tokio::spawn(fut).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(verb = %request.address.verb, error = %e, "zss: handler panicked: 500");
                            Err(ServiceError::new(500))
                        }
                    }
                }
            };
            let mut reply = request;
            reply.kind = Kind::Reply;
            match result {
                Ok(Reply { payload, status }) => match status {
                    Some(s) if !(200..300).contains(&s) => {
                        tracing::warn!(
                            status = s,
                            "zss: handler returned a non-2xx success status: 500"
                        );
                        reply.status = Some(500);
                        reply.payload = error_body(500);
                    }
                    s => {
                        reply.status = Some(s.unwrap_or(if payload.is_nil() { 204 } else { 200 }));
                        reply.payload = payload;
                    }
                },
                Err(e) => {
                    reply.status = Some(e.code);
                    reply.payload = e.body();
                }
            }
            let ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
            let mut headers = match std::mem::replace(&mut reply.headers, Value::Nil) {
                Value::Map(m) => m,
                _ => Vec::new(),
            };
            headers.retain(|(k, _)| k.as_str() != Some("response-time"));
            headers.push((Value::from("response-time"), Value::Float(ms)));
            reply.headers = Value::Map(headers);
            let _ = out.send(reply);
        });
    }
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// The frames of `m` as a ZeroMQ multipart message.
pub(crate) fn frames(m: Message) -> ZmqMessage {
    let f: Vec<Bytes> = m.to_frames();
    // Eight frames are never empty.
    ZmqMessage::try_from(f).unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat of `Duration::MAX` overflowed `heartbeat * 4` and the heartbeat interval's next
    /// tick; a stop timeout of `Duration::MAX` overflowed `Instant::now() + stop_timeout`. Both
    /// happened inside the worker task.
    #[test]
    fn huge_heartbeat_and_stop_timeout_are_lowered_to_the_bound() {
        let c = ServiceConfig::new("svc")
            .heartbeat(Duration::MAX)
            .stop_timeout(Duration::MAX);
        assert_eq!(c.heartbeat, crate::MAX_DURATION);
        assert_eq!(c.stop_timeout, crate::MAX_DURATION);
        let silent_after = c.heartbeat * 4;
        assert!(Instant::now().checked_add(silent_after).is_some());
        assert!(Instant::now().checked_add(c.stop_timeout).is_some());
        let zero = ServiceConfig::new("svc").heartbeat(Duration::ZERO);
        assert_eq!(zero.heartbeat, Duration::from_millis(10));
    }
}
