//! `GET /metrics`: the server's own metrics in Prometheus' text format, encoded by
//! `prometheus-client`.
//!
//! Counted as they happen: HTTP requests by route and status, open event streams. Read from the
//! directory and the discovery at each scrape: instances per service and state, stale services,
//! the feed's sequence number, and the discovery's counters.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use registry::engine::{APPLY_DELAY_BUCKETS, ApplyDelay, Directory, DiscoveryCounts};

use super::Server;

type Labels = Vec<(String, String)>;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    sse_clients: Gauge,
    sse_count: Arc<AtomicI64>,
    counts: Arc<Mutex<DiscoveryCounts>>,
    connections: Gauge,
    connection_limit: Gauge,
    refused: Counter,
    accept_failures: Counter,
    header_timeouts: Counter,
    tls_failures: Counter,
    xds: XdsSlot,
}

/// The xDS server's counters, once one serves beside this one.
type XdsSlot = Arc<Mutex<Option<Arc<registry_xds::Stats>>>>;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(dir: Directory) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "registry_http_requests",
            "HTTP requests served, by route pattern and status",
            requests.clone(),
        );
        let sse_clients = Gauge::default();
        registry.register(
            "registry_sse_clients",
            "Change streams (GET /v1/events) open now",
            sse_clients.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "registry_http_connections",
            "Client connections open now",
            connections.clone(),
        );
        let connection_limit = Gauge::default();
        registry.register(
            "registry_http_connection_limit",
            "How many client connections may be open at once",
            connection_limit.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "registry_http_connections_refused",
            "Connections told 503 and closed because the connection limit was reached",
            refused.clone(),
        );
        let accept_failures = Counter::default();
        registry.register(
            "registry_http_accept_failures",
            "Times accepting a connection failed (out of descriptors, usually)",
            accept_failures.clone(),
        );
        let header_timeouts = Counter::default();
        registry.register(
            "registry_http_header_timeouts",
            "Connections closed because a request's head did not arrive within the header timeout (idle connections included)",
            header_timeouts.clone(),
        );
        let tls_failures = Counter::default();
        registry.register(
            "registry_http_tls_handshake_failures",
            "TLS handshakes that failed or did not finish within the header timeout",
            tls_failures.clone(),
        );
        let counts = Arc::new(Mutex::new(DiscoveryCounts::default()));
        let xds = XdsSlot::default();
        registry.register_collector(Box::new(DirectoryCollector {
            dir,
            counts: counts.clone(),
            xds: xds.clone(),
        }));
        Metrics {
            registry,
            requests,
            sse_clients,
            sse_count: Arc::new(AtomicI64::new(0)),
            counts,
            connections,
            connection_limit,
            refused,
            accept_failures,
            header_timeouts,
            tls_failures,
            xds,
        }
    }

    /// Shows an xDS server's counters too.
    pub(crate) fn add_xds(&self, stats: Arc<registry_xds::Stats>) {
        *self.xds.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
    }

    /// One more open connection, counted until the guard drops.
    pub(crate) fn connection_opened(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    pub(crate) fn set_connection_limit(&self, limit: usize) {
        self.connection_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    pub(crate) fn connection_refused(&self) {
        self.refused.inc();
    }

    pub(crate) fn accept_failed(&self) {
        self.accept_failures.inc();
    }

    pub(crate) fn header_timed_out(&self) {
        self.header_timeouts.inc();
    }

    pub(crate) fn tls_failed(&self) {
        self.tls_failures.inc();
    }

    pub(crate) fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route".to_owned(), route.to_owned()),
                ("status".to_owned(), status.to_string()),
            ])
            .inc();
    }

    /// One more open event stream, unless `max` are open; counted until the guard drops.
    pub(crate) fn sse_client(&self, max: usize) -> Option<SseGuard> {
        let n = self.sse_count.fetch_add(1, Ordering::AcqRel);
        if n >= max as i64 {
            self.sse_count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.sse_clients.inc();
        Some(SseGuard {
            gauge: self.sse_clients.clone(),
            count: self.sse_count.clone(),
        })
    }

    fn encode(&self, counts: DiscoveryCounts) -> Result<String, std::fmt::Error> {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = counts;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Held by an open connection.
pub(crate) struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Held by an open event stream.
pub(crate) struct SseGuard {
    gauge: Gauge,
    count: Arc<AtomicI64>,
}

impl Drop for SseGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The directory's state and the discovery's counters, read at each scrape.
#[derive(Debug)]
struct DirectoryCollector {
    dir: Directory,
    counts: Arc<Mutex<DiscoveryCounts>>,
    xds: XdsSlot,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, v) in values {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge1(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// The discovery's apply-delay buckets, encoded as a Prometheus histogram.
#[derive(Debug)]
struct DelayHistogram(ApplyDelay);

impl EncodeMetric for DelayHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per-bucket counts (the encoder accumulates them); `f64::MAX` is its `+Inf`.
        let buckets: Vec<(f64, u64)> = APPLY_DELAY_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.0.buckets)
            .collect();
        let sum = self.0.sum_micros as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for DirectoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut instances = Vec::new();
        let mut stale = Vec::new();
        for service in self.dir.services() {
            let snap = self.dir.snapshot(&service);
            let (mut online, mut offline, mut hidden) = (0, 0, 0);
            for i in snap.all().values() {
                match (i.is_online(), snap.is_hidden(&i.id)) {
                    (_, true) => hidden += 1,
                    (true, false) => online += 1,
                    (false, false) => offline += 1,
                }
            }
            for (state, n) in [("online", online), ("offline", offline), ("hidden", hidden)] {
                let labels = vec![
                    ("service".to_owned(), service.clone()),
                    ("state".to_owned(), state.to_owned()),
                ];
                instances.push((labels, n));
            }
            stale.push((
                vec![("service".to_owned(), service.clone())],
                i64::from(snap.is_stale()),
            ));
        }
        let stale_total = stale.iter().map(|(_, v)| v).sum::<i64>();
        gauge(
            &mut encoder,
            "registry_instances",
            "Listed instances by service and state (online, offline, hidden by a probe)",
            &instances,
        )?;
        gauge(
            &mut encoder,
            "registry_service_stale",
            "1 if the service's view is stale (backend unreachable), else 0",
            &stale,
        )?;
        gauge1(
            &mut encoder,
            "registry_stale_services",
            "How many services have a stale view",
            stale_total,
        )?;
        gauge1(
            &mut encoder,
            "registry_feed_seq",
            "The sequence number of the directory's newest change",
            self.dir.last_seq() as i64,
        )?;
        let c = *self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (name, help, v) in [
            (
                "registry_discovery_lists",
                "Full listings made (first one and re-lists)",
                c.lists,
            ),
            (
                "registry_discovery_watches",
                "Watch streams opened (first one and resumptions)",
                c.watches,
            ),
            (
                "registry_discovery_events",
                "Watch events applied",
                c.events,
            ),
            (
                "registry_discovery_malformed",
                "Values that did not decode and were skipped",
                c.malformed,
            ),
            (
                "registry_discovery_errors",
                "Backend errors met (each followed by a retry)",
                c.errors,
            ),
        ] {
            counter(&mut encoder, name, help, v)?;
        }
        let xds = self.xds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(xds) = xds {
            encode_xds(&mut encoder, xds.snapshot())?;
        }
        let delay = DelayHistogram(c.apply_delay);
        delay.encode(encoder.encode_descriptor(
            "registry_discovery_apply_delay_seconds",
            "Propagation inside this process: from a batch of watch events reaching the discovery \
             to its changes being published in the directory (the backend's own delay is not \
             included: its events carry no time)",
            None,
            delay.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The xDS server's counters: streams, and answers sent, accepted and rejected per type.
fn encode_xds(
    encoder: &mut DescriptorEncoder,
    x: registry_xds::StatsSnapshot,
) -> Result<(), std::fmt::Error> {
    gauge1(
        encoder,
        "registry_xds_streams",
        "xDS streams open now",
        i64::try_from(x.streams).unwrap_or(i64::MAX),
    )?;
    for (name, help, v) in [
        (
            "registry_xds_streams_opened",
            "xDS streams opened",
            x.streams_total,
        ),
        (
            "registry_xds_streams_refused",
            "xDS streams refused: over the limit, or without the token",
            x.streams_refused,
        ),
        (
            "registry_xds_streams_stalled",
            "xDS streams closed because the client took no answer within the write timeout",
            x.streams_stalled,
        ),
        (
            "registry_xds_endpoints_skipped",
            "Instances left out of an xDS answer (no IP address, or an address another has)",
            x.skipped_endpoints,
        ),
    ] {
        counter(encoder, name, help, v)?;
    }
    for (name, help, values) in [
        (
            "registry_xds_responses",
            "xDS answers sent, by type (lds, rds, cds, eds)",
            x.responses,
        ),
        (
            "registry_xds_acks",
            "xDS answers a client accepted, by type",
            x.acks,
        ),
        (
            "registry_xds_nacks",
            "xDS answers a client rejected (NACK), by type; the reason is logged",
            x.nacks,
        ),
    ] {
        let c = ConstCounter::new(0u64);
        let mut m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
        for (kind, v) in registry_xds::Kind::ALL.iter().zip(values) {
            let labels: Labels = vec![("type".to_owned(), kind.short().to_owned())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(server): State<Server>) -> Response {
    match server.inner.metrics.encode(server.inner.discovery.counts()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
