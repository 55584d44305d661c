//! tonic clients that follow the directory (feature `tonic`).
//!
//! Two ways to call a service's instances over gRPC, both built from [`Channels`]:
//!
//! - [`Channels::balanced`]: a [`BalancedChannel`] spreading calls over the service's online
//!   instances in proportion to their weights (weighted round robin), following the directory:
//!   an instance that registers starts getting calls, one that leaves, goes offline or is hidden
//!   by a failing probe stops getting them, one whose details change is reconnected with its new
//!   endpoint.
//! - [`Channels::keyed`]: a [`KeyedChannel`] that sends each call to the ring owner of a key
//!   taken from the request (Dispatch-style routing), failing over to the next distinct ring
//!   member ([`Directory::find_n`]) when the owner answers with a retryable status (by default
//!   `UNAVAILABLE`) or could not be sent the call (connection refused). A call that may have
//!   reached the owner (connection lost or stream reset afterwards, per-attempt timeout) is
//!   failed over only for calls declared idempotent ([`RetryPolicy`]).
//!
//! Both skip instances whose calls fail (connection refused, no answer within the per-attempt
//! timeout, `UNAVAILABLE`) before the directory drops them: passive outlier detection
//! ([`OutlierPolicy`]), and a per-attempt timeout by default ([`DEFAULT_ATTEMPT_TIMEOUT`]).
//!
//! Both are usable wherever tonic takes a transport: a generated client's `new(channel)`, or
//! [`tonic::client::Grpc::new`].
//!
//! Endpoints are made per instance by a closure (default [`endpoint`]: `http://` + the first
//! address), which is where TLS and connection settings go; see [`Channels::endpoint`].
//!
//! ```no_run
//! # async fn demo(discovery: registry::engine::Discovery) {
//! use registry::tonic::{Channels, KEY_HEADER};
//!
//! let dir = discovery.directory();
//! // Any instance of "greeter", balanced.
//! let channel = Channels::new(dir, "greeter").balanced();
//! // The owner of each call's `x-registry-key` metadata.
//! let keyed = Channels::new(dir, "greeter").keyed_by_header(KEY_HEADER);
//! // Give either to a generated client: GreeterClient::new(channel), GreeterClient::new(keyed).
//! # let _ = (channel, keyed); }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::tonic::body::Body;
use ::tonic::metadata::MetadataValue;
use ::tonic::transport::{Channel, Endpoint};

mod balanced;
mod outlier;

use ::tonic::{Code, Status};
pub use balanced::BalancedChannel;
use bytes::Bytes;
use http_body_util::BodyExt;
pub use outlier::OutlierPolicy;
use outlier::{Outcome, Outliers};
use registry_engine::{Directory, DispatchError, Dispatcher, Failover, Instance, Selection};
use tower::Service;

type BoxError = Box<dyn StdError + Send + Sync>;
type EndpointFn = Arc<dyn Fn(&Instance) -> Result<Endpoint, BoxError> + Send + Sync>;
type KeyFn = Arc<dyn Fn(&http::request::Parts) -> Option<Vec<u8>> + Send + Sync>;

/// The metadata header [`Channels::keyed_by_header`] is usually given, and [`set_key`] sets.
pub const KEY_HEADER: &str = "x-registry-key";

/// How long an attempt may wait for its response head unless told otherwise
/// ([`BalancedChannel::timeout`], [`KeyedChannel::timeout`]): then it fails with
/// `DEADLINE_EXCEEDED` and counts as a failure of its instance (see [`OutlierPolicy`]). Long
/// enough for ordinary calls; a streaming call's head comes when the server starts it.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default endpoint of an instance: its first address, with `http://` in front unless it
/// already has a scheme (`https://host:port` is kept as is).
///
/// ```
/// use registry::engine::Instance;
///
/// let ep = registry::tonic::endpoint(&Instance::new("api", "a1").addr("10.0.0.1:50051")).unwrap();
/// assert_eq!(ep.uri().to_string(), "http://10.0.0.1:50051/");
/// ```
pub fn endpoint(instance: &Instance) -> Result<Endpoint, ::tonic::transport::Error> {
    let addr = instance.addrs.first().map(String::as_str).unwrap_or("");
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri)
}

/// Sets the routing key of a request for a [`KeyedChannel`] reading [`KEY_HEADER`]: the typed
/// way to route by a field of the message (the channel only sees the encoded body).
///
/// Fails if `key` is not a valid ASCII metadata value (visible ASCII and spaces).
///
/// ```
/// let mut request = tonic::Request::new(());
/// registry::tonic::set_key(&mut request, "user-42").unwrap();
/// assert_eq!(request.metadata().get(registry::tonic::KEY_HEADER).unwrap(), "user-42");
/// ```
pub fn set_key<M>(request: &mut ::tonic::Request<M>, key: &str) -> Result<(), Status> {
    let value = MetadataValue::try_from(key)
        .map_err(|_| Status::invalid_argument(format!("routing key {key:?} is not ASCII")))?;
    request.metadata_mut().insert(KEY_HEADER, value);
    Ok(())
}

/// Builds tonic transports for one service of a directory. Cheap to clone.
#[derive(Clone)]
pub struct Channels {
    directory: Directory,
    service: String,
    selection: Option<Selection>,
    endpoint: EndpointFn,
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channels")
            .field("service", &self.service)
            .field("selection", &self.selection)
            .finish_non_exhaustive()
    }
}

impl Channels {
    /// Transports for `service`'s online instances in `directory` (follow the service with
    /// [`Registry::discover`](registry_engine::Registry::discover) first, or they stay
    /// empty).
    pub fn new(directory: &Directory, service: impl Into<String>) -> Self {
        Channels {
            directory: directory.clone(),
            service: service.into(),
            selection: None,
            endpoint: Arc::new(|i| endpoint(i).map_err(Into::into)),
        }
    }

    /// Transports for the instances `selection` selects (by metadata, version, zone: see
    /// [`Selector`](registry_engine::Selector)).
    ///
    /// ```no_run
    /// # async fn demo(dir: registry::Directory) {
    /// use registry::engine::Selector;
    /// use registry::tonic::Channels;
    ///
    /// let v2_near_me = Selector::new().version_prefix("2").prefer_zone("eu-1").on(&dir, "api");
    /// let channel = Channels::selected(v2_near_me).balanced();
    /// # let _ = channel; }
    /// ```
    pub fn selected(selection: Selection) -> Self {
        let mut c = Channels::new(selection.directory(), selection.service());
        c.selection = Some(selection);
        c
    }

    /// How each instance's [`Endpoint`] is made: TLS ([`Endpoint::tls_config`], with tonic's
    /// `tls-ring` or `tls-aws-lc` feature), timeouts, keep-alive, per instance (its metadata
    /// can say which server name or CA to use). An instance whose endpoint fails is left out
    /// (logged) by a balanced channel; a keyed call routed to it fails with `UNAVAILABLE` and
    /// fails over.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use registry::engine::Instance;
    /// use registry::tonic::Channels;
    /// use tonic::transport::{Certificate, ClientTlsConfig};
    ///
    /// let dir = registry::Directory::new();
    /// let ca = Certificate::from_pem(std::fs::read("ca.pem").unwrap());
    /// let channel = Channels::new(&dir, "api")
    ///     .endpoint(move |inst: &Instance| {
    ///         // https://host:port, the server name from the instance's metadata.
    ///         let name = inst.metadata.get("tls-name").cloned().unwrap_or_else(|| inst.id.clone());
    ///         let ep = tonic::transport::Endpoint::from_shared(format!("https://{}", inst.addrs[0]))?
    ///             .connect_timeout(Duration::from_secs(2))
    ///             .tls_config(ClientTlsConfig::new().domain_name(name).ca_certificate(ca.clone()))?;
    ///         Ok::<_, tonic::transport::Error>(ep)
    ///     })
    ///     .balanced();
    /// # let _ = channel; }
    /// ```
    pub fn endpoint<E>(
        mut self,
        endpoint: impl Fn(&Instance) -> Result<Endpoint, E> + Send + Sync + 'static,
    ) -> Self
    where
        E: Into<BoxError>,
    {
        self.endpoint = Arc::new(move |i| endpoint(i).map_err(Into::into));
        self
    }

    /// A channel spreading calls over the instances by their weights, following the directory,
    /// skipping instances whose calls fail: see [`BalancedChannel`]. Must be called inside a
    /// tokio runtime (instance channels connect lazily on it).
    ///
    /// While the service has no instance, a call waits for one, up to the per-attempt timeout.
    pub fn balanced(&self) -> BalancedChannel {
        BalancedChannel::new(
            self.directory.clone(),
            self.service.clone(),
            self.selection.clone(),
            self.endpoint.clone(),
        )
    }

    /// A transport that sends each call to the ring owner of the key `key` extracts from the
    /// request's head (`None`: the call fails with `INVALID_ARGUMENT`), with failover; see
    /// [`KeyedChannel`]. Must be called inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(dir: registry::Directory) {
    /// use registry::tonic::Channels;
    ///
    /// // Route by the method's path and a tenant header: one owner per (method, tenant).
    /// let keyed = Channels::new(&dir, "api").keyed(|head: &http::request::Parts| {
    ///     let tenant = head.headers.get("x-tenant")?.as_bytes();
    ///     Some([head.uri.path().as_bytes(), tenant].concat())
    /// });
    /// # let _ = keyed; }
    /// ```
    pub fn keyed<F>(&self, key: F) -> KeyedChannel
    where
        F: Fn(&http::request::Parts) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        let make = self.endpoint.clone();
        let factory = move |inst: &Instance| InstanceChannel {
            id: Arc::from(inst.id.as_str()),
            addr: Arc::from(balanced::addr_of(inst)),
            channel: lazy_channel(&make, inst),
        };
        let dispatcher = match &self.selection {
            Some(sel) => Dispatcher::with_selection(sel.clone(), factory),
            None => Dispatcher::new(self.directory.clone(), self.service.clone(), factory),
        };
        let mut keyed = KeyedChannel {
            dispatcher: Arc::new(dispatcher),
            key: Arc::new(key),
            failover: Failover::new(),
            retry_codes: Arc::from([Code::Unavailable]),
            retry_policy: RetryPolicy::default(),
            timeout: Some(DEFAULT_ATTEMPT_TIMEOUT),
            outliers: Outliers::new(OutlierPolicy::default()),
        };
        keyed.set_failover();
        keyed
    }

    /// [`keyed`](Self::keyed) by the value of metadata header `header` (e.g. [`KEY_HEADER`], set
    /// with [`set_key`]).
    pub fn keyed_by_header(&self, header: &'static str) -> KeyedChannel {
        self.keyed(move |head| head.headers.get(header).map(|v| v.as_bytes().to_vec()))
    }
}

/// One gRPC call, buffered so that it can be sent again to another instance.
#[derive(Clone)]
struct GrpcCall {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
    body: Bytes,
    /// Each attempt's timeout, up to the response head.
    timeout: Option<Duration>,
    /// Where each attempt's outcome is recorded.
    outliers: Outliers,
}

/// One instance's lazily connected channel, or why it has none.
type LazyChannel = Result<Channel, Arc<dyn StdError + Send + Sync>>;

/// `inst`'s channel from the endpoint `make` makes for it, connecting on first use.
fn lazy_channel(make: &EndpointFn, inst: &Instance) -> LazyChannel {
    make(inst).map(|ep| ep.connect_lazy()).map_err(Arc::from)
}

/// The client of one instance: its lazily connected channel, or why it has none.
#[derive(Clone)]
struct InstanceChannel {
    id: Arc<str>,
    addr: Arc<str>,
    channel: LazyChannel,
}

/// An attempt that got no response head within its timeout (it may have reached the instance).
#[derive(Debug)]
struct AttemptTimedOut;

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the instance did not answer within the per-attempt timeout")
    }
}

impl StdError for AttemptTimedOut {}

/// Why an instance's client failed: its endpoint could not be made, or the transport failed.
#[derive(Debug)]
struct EndpointUnusable(Arc<dyn StdError + Send + Sync>);

impl fmt::Display for EndpointUnusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no endpoint for the instance: {}", self.0)
    }
}

impl StdError for EndpointUnusable {}

/// An attempt's error that proves the request did not leave: the instance's channel failed
/// before it was handed the request, or failed to connect. Safe to send to another instance.
#[derive(Debug)]
struct NotSent(BoxError);

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request was not sent: {}", self.0)
    }
}

impl StdError for NotSent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// Whether a tonic channel's error proves that the request was not sent, looking through the
/// error's source chain for:
///
/// - tonic's [`ConnectError`](::tonic::ConnectError): the connection could not be made (TCP
///   connect, TLS handshake, `Endpoint::connect_timeout`); a lazily connected channel connects
///   for a request it has not sent yet.
/// - hyper's cancellation of a request it never wrote: the connection was found closed (or not
///   ready) when the request reached it, e.g. the server closed an idle connection just before.
fn is_not_sent(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<::tonic::ConnectError>() || is_unwritten_by_hyper(e) {
            return true;
        }
        next = e.source();
    }
    false
}

/// hyper's error for a request its client handed back unwritten: canceled before it was
/// dispatched, because the connection was found closed (or not ready) when the request reached it.
/// (A request that was written and then lost its connection fails with the I/O error instead.)
fn is_unwritten_by_hyper(e: &(dyn StdError + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_canceled)
}

impl Service<GrpcCall> for InstanceChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.channel {
            // Not ready: the request is not handed over.
            Ok(ch) => ch.poll_ready(cx).map_err(|e| NotSent(e.into()).into()),
            Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, call: GrpcCall) -> Self::Future {
        let (id, addr) = (self.id.clone(), self.addr.clone());
        let (outliers, timeout) = (call.outliers.clone(), call.timeout);
        let ch = match &mut self.channel {
            Ok(ch) => ch,
            Err(e) => {
                outliers.record(&id, &addr, Outcome::Down);
                let e = NotSent(EndpointUnusable(e.clone()).into());
                return Box::pin(async move { Err(e.into()) });
            }
        };
        let mut req = http::Request::new(Body::new(http_body_util::Full::new(call.body)));
        *req.method_mut() = call.method;
        *req.uri_mut() = call.uri;
        *req.version_mut() = call.version;
        *req.headers_mut() = call.headers;
        *req.extensions_mut() = call.extensions;
        let fut = ch.call(req);
        Box::pin(async move {
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        outliers.record(&id, &addr, Outcome::Down);
                        return Err(AttemptTimedOut.into());
                    }
                },
                None => fut.await,
            };
            match result {
                Ok(resp) => {
                    outliers.record(&id, &addr, balanced::outcome_of(&resp));
                    Ok(resp)
                }
                Err(e) => {
                    let not_sent = is_not_sent(&e);
                    outliers.record(
                        &id,
                        &addr,
                        if not_sent {
                            Outcome::Down
                        } else {
                            Outcome::Failed
                        },
                    );
                    Err(if not_sent {
                        NotSent(e.into()).into()
                    } else {
                        // Handed to a connection: the instance may have received it.
                        e.into()
                    })
                }
            }
        })
    }
}

/// A tonic transport (a `tower` [`Service`] over HTTP requests) that sends each gRPC call to the
/// ring owner of a key taken from the call's head, with failover and a per-attempt timeout.
/// From [`Channels::keyed`]; cheap to clone (clones share one channel per instance).
///
/// - **Routing**: the key's owner among the online instances ([`Directory::find`]), through a
///   channel kept per instance and dropped when the instance leaves (or reconnected when its
///   details change).
/// - **Failover**: the call goes to the next distinct instance on the ring, up to
///   [`attempts`](Self::attempts) instances (default 2), when an attempt
///   - could not send the request: the connection was refused or failed to be made (TCP, TLS,
///     tonic's `Endpoint::connect_timeout`), was found closed before the request was written,
///     or the instance has no usable endpoint; or
///   - was answered with a `grpc-status` among [`retry_codes`](Self::retry_codes)
///     (`UNAVAILABLE` by default), read from the response head, where a server puts it when it
///     fails a call without sending a message (what tonic servers do for an `Err` from a
///     handler); or
///   - with [`RetryPolicy::Idempotent`] only: failed after the request was handed to a
///     connection (connection lost, stream reset) or timed out
///     ([`timeout`](Self::timeout)). By default ([`RetryPolicy::NotSent`]) those errors are
///     returned to the caller, because the instance may have run the call; see
///     [`retry_policy`](Self::retry_policy).
/// - **Buffering**: to send a call again, its request body is read whole before the first
///   attempt. Fine for unary and server-streaming calls (one request message); a client
///   stream is collected until it ends, so do not use a keyed channel for long-lived
///   client-streaming or bidirectional calls.
/// - **Errors** are [`Status`]es, which tonic clients return as they are: no instance is
///   `UNAVAILABLE`, a timed-out last attempt `DEADLINE_EXCEEDED`, a missing key
///   `INVALID_ARGUMENT`; transport errors are converted as tonic does.
#[derive(Clone)]
pub struct KeyedChannel {
    dispatcher: Arc<Dispatcher<InstanceChannel>>,
    key: KeyFn,
    failover: Failover<http::Response<Body>, BoxError>,
    retry_codes: Arc<[Code]>,
    retry_policy: RetryPolicy,
    timeout: Option<Duration>,
    outliers: Outliers,
}

/// Which failed attempts of a [`KeyedChannel`] call are sent again to the next ring member
/// (set with [`KeyedChannel::retry_policy`]). Responses whose status is among
/// [`KeyedChannel::retry_codes`] fail over under either policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryPolicy {
    /// The default: only attempts that prove the request was not sent (connection refused or
    /// otherwise not made, found closed before the request was written, no usable endpoint for
    /// the instance). An error after the request was handed to a connection, and a per-attempt
    /// timeout, are returned to the caller: the instance may have received the call, and a call
    /// must not run twice unasked.
    #[default]
    NotSent,
    /// The calls are idempotent: also send again a call whose attempt failed after the request
    /// was handed to a connection (connection lost, stream reset) or timed out. The instance
    /// that failed may have run the call, and the next one runs it again, so only choose this
    /// for calls that are safe to repeat (reads, idempotent writes).
    Idempotent,
}

impl fmt::Debug for KeyedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedChannel")
            .field("service", &self.dispatcher.service())
            .field("failover", &self.failover)
            .field("retry_codes", &self.retry_codes)
            .field("retry_policy", &self.retry_policy)
            .field("timeout", &self.timeout)
            .field("outliers", &self.outliers.policy())
            .finish()
    }
}

impl KeyedChannel {
    fn set_failover(&mut self) {
        let codes = self.retry_codes.clone();
        let maybe_sent = self.retry_policy == RetryPolicy::Idempotent;
        self.failover = self
            .failover
            .clone()
            .retry_if(move |outcome| match outcome {
                Ok(resp) => Status::from_header_map(resp.headers())
                    .is_some_and(|s| codes.contains(&s.code())),
                // A timed-out attempt (AttemptTimedOut) may have been received.
                Err(DispatchError::Service(e)) => e.is::<NotSent>() || maybe_sent,
                // A timed-out attempt may have been received.
                Err(_) => maybe_sent,
            });
    }

    /// How many distinct instances a call may try, the owner included (default 2; 1 turns
    /// failover off).
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.failover = self.failover.attempts(attempts);
        self
    }

    /// Each attempt's timeout, up to the response head (default [`DEFAULT_ATTEMPT_TIMEOUT`]). A
    /// timed-out attempt counts as a failure of its instance ([`outliers`](Self::outliers)) and
    /// fails the call with `DEADLINE_EXCEEDED`; it is failed over only with
    /// [`RetryPolicy::Idempotent`] (it may have reached the instance). To fail over from an
    /// unreachable instance at once, give its endpoint a shorter `Endpoint::connect_timeout` (see
    /// [`Channels::endpoint`]): a connection not made in time is a request not sent.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No per-attempt timeout: an attempt waits as long as its instance takes (put a deadline on
    /// the calls instead, or a hung owner holds every call for its keys).
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// When instances are ejected (default [`OutlierPolicy::default`]; [`OutlierPolicy::off`]
    /// turns it off): a call whose owner is ejected goes to the next ring member, as if the
    /// owner had left, until the owner answers again.
    pub fn outliers(mut self, policy: OutlierPolicy) -> Self {
        self.outliers = Outliers::new(policy);
        self
    }

    /// Whether the instance `id` is ejected now.
    pub fn is_ejected(&self, id: &str) -> bool {
        self.outliers
            .is_ejected(id, None, std::time::Instant::now())
    }

    /// The gRPC status codes that move a call on to the next instance (default `UNAVAILABLE`).
    /// Only add codes for which a call is safe to repeat.
    pub fn retry_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retry_codes = codes.into_iter().collect();
        self.set_failover();
        self
    }

    /// Which failed attempts are sent again to the next instance (default
    /// [`RetryPolicy::NotSent`]: only those that prove the request was not sent).
    /// [`RetryPolicy::Idempotent`] also retries errors after the request was handed to a
    /// connection and per-attempt timeouts, which can run a call twice: **only opt in for
    /// idempotent calls** (use a separate `KeyedChannel` for them if others are not).
    ///
    /// ```no_run
    /// # async fn demo(dir: registry::Directory) {
    /// use std::time::Duration;
    /// use registry::tonic::{Channels, KEY_HEADER, RetryPolicy};
    ///
    /// // Reads only: a lost connection or a slow owner moves the call on to the next member.
    /// let reads = Channels::new(&dir, "kv")
    ///     .keyed_by_header(KEY_HEADER)
    ///     .timeout(Duration::from_millis(300))
    ///     .retry_policy(RetryPolicy::Idempotent);
    /// # let _ = reads; }
    /// ```
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = policy;
        self.set_failover();
        self
    }

    /// The instance that owns `key` now.
    pub fn owner(&self, key: impl AsRef<[u8]>) -> Option<Arc<Instance>> {
        self.dispatcher.owner(key)
    }

    /// How many instance channels are held (one per instance called and still online).
    pub fn channel_count(&self) -> usize {
        self.dispatcher.client_count()
    }
}

fn to_status(e: DispatchError<BoxError>) -> Status {
    match e {
        DispatchError::ServiceUnavailable { service } => {
            Status::unavailable(format!("no online instance of service {service}"))
        }
        DispatchError::Timeout => Status::deadline_exceeded("the instance did not answer in time"),
        DispatchError::Service(e) if e.is::<AttemptTimedOut>() => {
            Status::deadline_exceeded(e.to_string())
        }
        DispatchError::Service(e) => {
            let e = match e.downcast::<NotSent>() {
                Ok(not_sent) => not_sent.0,
                Err(e) => e,
            };
            match e.downcast::<EndpointUnusable>() {
                Ok(e) => Status::unavailable(e.to_string()),
                Err(e) => Status::from_error(e),
            }
        }
        // A kind of dispatch error added later.
        other => Status::unknown(other.to_string()),
    }
}

impl<B> Service<http::Request<B>> for KeyedChannel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (head, body) = request.into_parts();
        let key = (self.key)(&head);
        let dispatcher = self.dispatcher.clone();
        let failover = self.failover.clone();
        let (timeout, outliers) = (self.timeout, self.outliers.clone());
        Box::pin(async move {
            let Some(key) = key else {
                return Err(Status::invalid_argument(
                    "no routing key in the request for a keyed channel",
                ));
            };
            let body = body
                .collect()
                .await
                .map_err(|e| Status::from_error(e.into()))?
                .to_bytes();
            let call = GrpcCall {
                method: head.method,
                uri: head.uri,
                version: head.version,
                headers: head.headers,
                extensions: head.extensions,
                body,
                timeout,
                outliers: outliers.clone(),
            };
            // The key's owners on the ring, ejected ones skipped (the ring's next members take
            // their keys); all of them if every candidate is ejected.
            let attempts = failover.max_attempts();
            let candidates = dispatcher.owners(attempts * 2 + 2, &key);
            let now = std::time::Instant::now();
            let mut targets: Vec<Arc<Instance>> = candidates
                .iter()
                .filter(|i| !outliers.is_ejected(&i.id, Some(balanced::addr_of(i)), now))
                .take(attempts)
                .cloned()
                .collect();
            if targets.is_empty() {
                targets = candidates.into_iter().take(attempts).collect();
            }
            dispatcher
                .call_instances(&targets, call, &failover)
                .await
                .map_err(to_status)
        })
    }
}
