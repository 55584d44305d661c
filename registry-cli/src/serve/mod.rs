//! `registry serve`: the directory of a namespace over HTTP, for programs in any language,
//! Prometheus and people.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /v1/services` | every service: counts, staleness, revision |
//! | `GET /v1/services/{service}` | a service's instances |
//! | `GET /v1/services/{service}/instances/{id}` | one instance |
//! | `GET /v1/services/{service}/owners?key=K&n=N` | the owner(s) of a key on the ring |
//! | `GET /v1/services/{service}/ring[?key=K]` | each routable instance's share of the key space, arcs to draw |
//! | `GET /v1/events[?service=S]` | the change stream, as Server-Sent Events, resumable |
//! | `GET /v1/prometheus/sd[?all=true]` | Prometheus HTTP service discovery |
//! | `GET /metrics` | the server's own metrics, Prometheus text format |
//! | `GET /healthz` | alive: answers while the process serves (no token asked) |
//! | `GET /readyz` | ready: 200 once the directory has been listed from the backend, 503 before (no token asked) |
//!
//! While the backend cannot be reached at start ([`connecting`]), the port already answers:
//! `/healthz` 200, `/readyz` and everything else 503.
//! | `GET /` (and `/dashboard.js`, `/dashboard.css`, `/favicon.svg`) | the live dashboard, for people |
//!
//! The server only reads the [`Directory`] a [`Discovery`] fills: it never writes to the backend
//! and never shows the backend URL. See `docs/openapi.yaml` for the documents it returns.
//!
//! No client can hold it up: connections are limited below the file limit (the excess told 503
//! and closed), a request's head must arrive within the header timeout (which is also how long a
//! connection may idle), a write that makes no progress fails (see the `listen` and `conn`
//! modules). Beyond loopback it asks for a token and speaks TLS when told to; a `Host` that is
//! neither an IP literal nor an allowed name is refused (see the `guard` module).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use registry::engine::{Directory, Discovery};
use tokio::net::TcpListener;

mod api;
mod cache;
mod conn;
mod dashboard;
mod events;
mod guard;
mod listen;
mod metrics;
mod sd;
mod tls;

pub use guard::Token;
pub use listen::{ACCEPT_BACKLOG, bind, connection_limit, raise_file_limit};
pub use metrics::Metrics;
pub use tls::TlsFiles;

/// The address `registry serve` listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9797";

/// What a server may be tuned with.
#[derive(Clone, Debug)]
pub struct Options {
    /// How often an idle change stream gets a keep-alive comment.
    pub keep_alive: Duration,
    /// How many change streams may be open at once; one more gets a 503.
    pub max_event_clients: usize,
    /// How long a write to a client may make no progress before the connection is closed: what
    /// drops an event-stream client that stopped reading.
    pub write_timeout: Duration,
    /// How long a request's head may take to arrive, counted from when the connection waits
    /// for one: a new connection, or a kept-alive one after its last answer. So it is also how
    /// long a connection may idle. A TLS handshake gets as long.
    pub header_timeout: Duration,
    /// How many connections may be open at once; one more is told 503 and closed. `None`: from
    /// the open-file limit (raised to its hard limit when the server starts), leaving room for
    /// the rest of the process ([`connection_limit`]). Event streams get at most three quarters
    /// of the connections, whatever `max_event_clients` says.
    pub max_connections: Option<usize>,
    /// Host names a request's `Host` may carry besides IP literals; `*` allows any.
    pub allowed_hosts: Vec<String>,
    /// The token every route but the health checks asks for, if any.
    pub token: Option<Token>,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// How long a service may show no instance before the server forgets it (its entry in
    /// `/v1/services`, resyncs and `/metrics`): names that come and go must not grow the server.
    pub forget_empty_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keep_alive: Duration::from_secs(15),
            max_event_clients: 4096,
            write_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: None,
            allowed_hosts: vec!["localhost".to_owned()],
            token: None,
            tls: None,
            forget_empty_after: Duration::from_secs(300),
        }
    }
}

/// Each source's name and whether it has listed once.
type SourcesReady = Box<dyn Fn() -> Vec<(String, bool)> + Send + Sync>;

/// The server's shared state: the discovery it reads, its epoch, its metrics.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    discovery: Discovery,
    /// Chosen at start: event ids are `<epoch>-<seq>`, so an id from another process (whose
    /// sequence numbers mean nothing here) is recognised.
    epoch: u64,
    options: Options,
    metrics: Arc<Metrics>,
    /// How many event streams may be open: `max_event_clients`, and at most three quarters of
    /// the connections.
    max_event_clients: std::sync::atomic::AtomicUsize,
    /// The O(directory) answers, per state of the directory.
    answers: cache::AnswerCache,
    /// Recent change events, serialized once for every stream.
    frames: cache::ChangeFrames,
    /// The other sources' readiness (each name and whether it has listed once), if any.
    sources: std::sync::Mutex<Option<SourcesReady>>,
    /// Set when the server shuts down: ends the event streams, which would otherwise hold the
    /// graceful shutdown forever.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Server {
    /// A server over `discovery` (usually of every service: `Registry::discover_all`).
    pub fn new(discovery: Discovery, options: Options) -> Server {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // Time-based, mixed with the process id so two servers started in the same instant differ.
        let epoch = (now ^ (u64::from(std::process::id()) << 40)) & ((1 << 53) - 1);
        let metrics = Arc::new(Metrics::new(discovery.directory().clone()));
        let max_event_clients = options.max_event_clients.into();
        Server {
            inner: Arc::new(Inner {
                discovery,
                epoch,
                options,
                metrics,
                max_event_clients,
                answers: cache::AnswerCache::default(),
                frames: cache::ChangeFrames::default(),
                sources: std::sync::Mutex::new(None),
                stopping: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// Tells `/readyz` about the directory's other sources: `listed` gives each one's name and
    /// whether it has listed once.
    pub fn sources_ready(&self, listed: impl Fn() -> Vec<(String, bool)> + Send + Sync + 'static) {
        *self.inner.sources.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(listed));
    }

    /// Shows `stats` (an xDS server's over the same directory) in `/metrics`.
    pub fn xds_stats(&self, stats: Arc<registry_xds::Stats>) {
        self.inner.metrics.add_xds(stats);
    }

    /// The directory this server reads.
    pub fn directory(&self) -> &Directory {
        self.dir()
    }

    /// This server's epoch: the first half of every event id it sends.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    fn dir(&self) -> &Directory {
        self.inner.discovery.directory()
    }

    /// The routes, ready to serve.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(dashboard::index))
            .route("/dashboard.js", get(dashboard::script))
            .route("/dashboard.css", get(dashboard::style))
            .route("/favicon.svg", get(dashboard::icon))
            .route("/v1/services", get(api::services))
            .route("/v1/services/{service}", get(api::service))
            .route("/v1/services/{service}/instances/{id}", get(api::instance))
            .route("/v1/services/{service}/owners", get(api::owners))
            .route("/v1/services/{service}/ring", get(api::ring))
            .route("/v1/events", get(events::events))
            .route("/v1/prometheus/sd", get(sd::prometheus_sd))
            .route("/metrics", get(metrics::metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .fallback(|| async { ApiError::not_found("no such route") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "only GET is served")
            })
            .layer(middleware::from_fn(no_bodies))
            .layer(DefaultBodyLimit::max(0))
            .layer(middleware::from_fn_with_state(
                guard::Guard {
                    hosts: guard::Hosts::new(&self.inner.options.allowed_hosts),
                    token: self.inner.options.token.clone(),
                },
                guard::guard,
            ))
            .layer(middleware::from_fn_with_state(self.clone(), count_requests))
            .with_state(self.clone())
    }

    /// How many event streams may be open now.
    pub(crate) fn max_event_clients(&self) -> usize {
        self.inner
            .max_event_clients
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serves on `listener` until `shutdown` completes. Fails at once if the TLS files cannot
    /// be used.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let options = &self.inner.options;
        let tls = tls_acceptor(options)?;
        let max_connections = max_connections(options);
        self.inner.max_event_clients.store(
            options
                .max_event_clients
                .min((max_connections * 3 / 4).max(1)),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.inner.metrics.set_connection_limit(max_connections);
        let stopping = self.inner.stopping.clone();
        let forgetting = tokio::spawn(forget_empty(
            self.clone(),
            options.forget_empty_after,
            stopping.subscribe(),
        ));
        let accept = listen::Accept {
            listener: Arc::new(listener),
            router: self.router(),
            metrics: self.inner.metrics.clone(),
            max_connections,
            header_timeout: options.header_timeout,
            write_timeout: options.write_timeout,
            tls,
        };
        let served = accept
            .run(async move {
                shutdown.await;
                stopping.send_replace(true);
            })
            .await;
        forgetting.abort();
        served
    }
}

/// The TLS acceptor `options` ask for, if any (an error if its files cannot be used).
fn tls_acceptor(options: &Options) -> std::io::Result<Option<tokio_rustls::TlsAcceptor>> {
    match &options.tls {
        Some(files) => {
            Ok(Some(tls::acceptor(files).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
            })?))
        }
        None => Ok(None),
    }
}

/// The connection limit of `options`, else one below the raised file limit.
fn max_connections(options: &Options) -> usize {
    options
        .max_connections
        .unwrap_or_else(|| connection_limit(raise_file_limit()))
        .max(1)
}

/// Serves `listener` while the backend cannot be reached yet, until `until` completes: `/healthz`
/// answers 200 (the process is alive), `/readyz` 503 with the backend not listed, every other
/// route 503 with nothing from the directory (there is none yet). With the same connection
/// limit, header timeout and TLS as the server; the listener is then handed to
/// [`Server::serve`] (connections already open finish within a second).
pub async fn connecting(
    listener: Arc<TcpListener>,
    options: &Options,
    until: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|| async {
                let body = serde_json::json!({
                    "ready": false,
                    "sources": [{ "source": "backend", "listed": false }],
                });
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the backend cannot be reached yet; retrying",
            )
            .into_response()
        });
    let accept = listen::Accept {
        listener,
        router,
        metrics: Arc::new(Metrics::new(Directory::new())),
        max_connections: max_connections(options),
        header_timeout: options.header_timeout,
        write_timeout: options.write_timeout,
        tls: tls_acceptor(options)?,
    };
    accept.run(until).await
}

/// Forgets the services empty for `grace`, checking four times a grace (at most once a
/// second), until the server stops.
async fn forget_empty(
    server: Server,
    grace: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let every = (grace / 4).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let n = server.dir().forget_empty(grace);
        if n > 0 {
            // Forgetting changes the answers without a new sequence number.
            server.inner.answers.clear();
            tracing::debug!(services = n, "forgot services without instances");
        }
    }
}

/// `GET /healthz`: the process is alive and serving.
async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "alive" })).into_response()
}

/// `GET /readyz`: 200 once the directory has been listed from the backend and every other source
/// has listed once, 503 until then.
async fn readyz(State(server): State<Server>) -> Response {
    let mut listed = vec![("backend".to_owned(), server.inner.discovery.is_synced())];
    if let Some(others) = &*server
        .inner
        .sources
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    {
        listed.extend(others());
    }
    let ready = listed.iter().all(|(_, l)| *l);
    let sources: Vec<serde_json::Value> = listed
        .iter()
        .map(|(s, l)| serde_json::json!({ "source": s, "listed": l }))
        .collect();
    let body = axum::Json(serde_json::json!({ "ready": ready, "sources": sources }));
    if ready {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// A 4xx or 5xx answer with a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// Every route is a GET: a request that comes with a body is refused before any handler runs
/// (the body is never read, so its size does not matter).
async fn no_bodies(req: Request, next: Next) -> Response {
    let h = req.headers();
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are not accepted",
        )
        .into_response();
    }
    next.run(req).await
}

/// Counts each request by route (the pattern, not the path: bounded) and status.
async fn count_requests(State(server): State<Server>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(req).await;
    server
        .inner
        .metrics
        .request(&route, response.status().as_u16());
    response
}

/// `secs` since the Unix epoch as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // a leap day
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
    }
}
