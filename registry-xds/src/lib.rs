//! The directory over xDS: proxyless gRPC clients in any language (Go, Java, Python, Node, C++)
//! find a service's instances by themselves, with a target `xds:///SERVICE` and a bootstrap file
//! naming this server. No Envoy, no mesh.
//!
//! An aggregated discovery service (ADS, Envoy's v3 API) over tonic, state of the world (what
//! gRPC clients speak) and incremental (delta xDS: only what changed is sent). For every
//! service of the [`Directory`] it serves the four resources a gRPC client asks for (see
//! [`resources`]): the Listener and RouteConfiguration that send every call to the Cluster of the
//! same name, and that cluster's ClusterLoadAssignment: one endpoint per instance with an IP
//! address, its locality from the `zone` metadata, its weight from the instance's weight, offline
//! instances `DRAINING` and probe-hidden ones `UNHEALTHY`. A change in the directory reaches every
//! subscribed client as soon as it is published. ACKs and NACKs are counted (a NACK is logged with
//! the client's reason); see [`Stats`].
//!
//! Bounded: at most [`XdsOptions::max_streams`] streams (one more is told `RESOURCE_EXHAUSTED`), at
//! most [`XdsOptions::max_names`] names a request, one answer waiting per stream, and a stream whose
//! client does not take an answer within [`XdsOptions::write_timeout`] is closed.
//!
//! ```no_run
//! # async fn demo(dir: registry_engine::Directory) -> std::io::Result<()> {
//! use registry_xds::{XdsOptions, XdsServer};
//!
//! let server = XdsServer::new(dir, XdsOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:18000").await?;
//! server.serve(listener, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream as FuturesStream;
use registry_engine::Directory;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

mod delta;
pub mod resources;
mod session;
mod stream;

pub use resources::{Balancing, HASH_HEADER, Kind};

/// What an xDS server may be tuned with.
#[derive(Clone)]
pub struct XdsOptions {
    /// How clients balance a service's endpoints.
    pub balancing: Balancing,
    /// How many streams may be open at once; one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// How many resource names one request may carry.
    pub max_names: usize,
    /// How long an answer may wait for the client to take it before the stream is closed.
    pub write_timeout: Duration,
    /// The token every stream must carry as `authorization: Bearer TOKEN`, if any. Never shown.
    pub token: Option<Arc<str>>,
    /// Serve TLS with this certificate chain and key (PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for XdsOptions {
    fn default() -> Self {
        XdsOptions {
            balancing: Balancing::RoundRobin,
            max_streams: 4096,
            max_names: 10_000,
            write_timeout: Duration::from_secs(30),
            token: None,
            tls: None,
        }
    }
}

impl fmt::Debug for XdsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsOptions")
            .field("balancing", &self.balancing)
            .field("max_streams", &self.max_streams)
            .field("max_names", &self.max_names)
            .field("write_timeout", &self.write_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The server's counters, live (read them with [`Stats::snapshot`] or one by one).
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams open now.
    pub streams: AtomicU64,
    /// Streams opened since start.
    pub streams_total: AtomicU64,
    /// Streams refused: over the limit, or without the token.
    pub streams_refused: AtomicU64,
    /// Streams closed because the client did not take an answer in time.
    pub streams_stalled: AtomicU64,
    /// Answers sent, per [`Kind`] (in [`Kind::ALL`]'s order).
    pub responses: [AtomicU64; 4],
    /// Answers a client accepted, per [`Kind`].
    pub acks: [AtomicU64; 4],
    /// Answers a client rejected, per [`Kind`].
    pub nacks: [AtomicU64; 4],
    /// Requests for a type this server does not serve.
    pub unknown_types: AtomicU64,
    /// Instances left out of an answer: no IP address, or one another instance has (counted per
    /// answer built).
    pub skipped_endpoints: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::streams`].
    pub streams: u64,
    /// See [`Stats::streams_total`].
    pub streams_total: u64,
    /// See [`Stats::streams_refused`].
    pub streams_refused: u64,
    /// See [`Stats::streams_stalled`].
    pub streams_stalled: u64,
    /// See [`Stats::responses`].
    pub responses: [u64; 4],
    /// See [`Stats::acks`].
    pub acks: [u64; 4],
    /// See [`Stats::nacks`].
    pub nacks: [u64; 4],
    /// See [`Stats::unknown_types`].
    pub unknown_types: u64,
    /// See [`Stats::skipped_endpoints`].
    pub skipped_endpoints: u64,
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let each = |a: &[AtomicU64; 4]| a.each_ref().map(|c| c.load(Ordering::Relaxed));
        StatsSnapshot {
            streams: self.streams.load(Ordering::Relaxed),
            streams_total: self.streams_total.load(Ordering::Relaxed),
            streams_refused: self.streams_refused.load(Ordering::Relaxed),
            streams_stalled: self.streams_stalled.load(Ordering::Relaxed),
            responses: each(&self.responses),
            acks: each(&self.acks),
            nacks: each(&self.nacks),
            unknown_types: self.unknown_types.load(Ordering::Relaxed),
            skipped_endpoints: self.skipped_endpoints.load(Ordering::Relaxed),
        }
    }
}

/// The xDS server over a directory.
#[derive(Clone)]
pub struct XdsServer {
    dir: Directory,
    options: Arc<XdsOptions>,
    stats: Arc<Stats>,
    streams: Arc<Semaphore>,
}

impl fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsServer")
            .field("options", &self.options)
            .field("stats", &self.stats.snapshot())
            .finish()
    }
}

/// A stream's answers, as tonic takes them.
type Answers<R> = Pin<Box<dyn FuturesStream<Item = Result<R, Status>> + Send>>;

impl XdsServer {
    /// A server of `dir`'s services (usually a directory of every service, which a `Discovery`
    /// fills; a service the directory does not know is served with no endpoint).
    pub fn new(dir: Directory, options: XdsOptions) -> XdsServer {
        let streams = Arc::new(Semaphore::new(options.max_streams));
        XdsServer {
            dir,
            options: Arc::new(options),
            stats: Arc::new(Stats::default()),
            streams,
        }
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The gRPC service, to add to a tonic server of one's own (its token checked).
    pub fn service(
        &self,
    ) -> InterceptedService<AggregatedDiscoveryServiceServer<XdsServer>, TokenCheck> {
        let server =
            AggregatedDiscoveryServiceServer::new(self.clone()).max_decoding_message_size(1 << 20);
        InterceptedService::new(
            server,
            TokenCheck {
                token: self.options.token.clone(),
                stats: self.stats.clone(),
            },
        )
    }

    /// Serves on `listener` until `shutdown` completes (TLS if the options say so).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true);
        if let Some((cert, key)) = &self.options.tls {
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .map_err(|e| std::io::Error::other(format!("xds TLS: {e}")))?;
        }
        builder
            .add_service(self.service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
            .map_err(|e| std::io::Error::other(format!("xds server: {e}")))
    }
}

/// Checks a stream's `authorization: Bearer TOKEN` when the server has a token.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
    stats: Arc<Stats>,
}

impl fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCheck")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same(given.as_bytes(), token.as_bytes()) {
            Ok(req)
        } else {
            self.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
            Err(Status::unauthenticated("a valid bearer token is required"))
        }
    }
}

impl XdsServer {
    /// A stream's place among the streams allowed, counted open; `RESOURCE_EXHAUSTED` beyond.
    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            self.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "at most {} xDS streams",
                self.options.max_streams
            )));
        };
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        self.stats.streams_total.fetch_add(1, Ordering::Relaxed);
        Ok(permit)
    }

    /// Opens a stream of the session `make` makes: served on a task of its own, answers through
    /// a channel of one (the client's pace), counted until it ends.
    fn open<S: session::Session + 'static>(
        &self,
        make: impl FnOnce(session::Conn<S::Response>) -> S,
        requests: Streaming<S::Request>,
    ) -> Result<Response<Answers<S::Response>>, Status> {
        let permit = self.permit()?;
        let (tx, rx) = mpsc::channel(1);
        let session = make(session::Conn::new(
            self.dir.clone(),
            self.options.clone(),
            self.stats.clone(),
            tx,
        ));
        let stats = self.stats.clone();
        tokio::spawn(async move {
            if let session::End::Stalled = session::run(session, requests).await {
                stats.streams_stalled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "xds: a client that took no answer for the write timeout was dropped"
                );
            }
            stats.streams.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Constant-time equality (a token compared byte by byte would tell its prefix by timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = Answers<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Answers<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Answers<DiscoveryResponse>>, Status> {
        self.open(stream::Stream::new, request.into_inner())
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Answers<DeltaDiscoveryResponse>>, Status> {
        self.open(delta::DeltaStream::new, request.into_inner())
    }
}
