//! What both kinds of ADS stream share: the resources they build, the stream's connection to the
//! client (its answers, their nonces, ACKs and NACKs, the write timeout) and the loop that serves
//! it, waiting for the client's next request or the directory's next change.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::{FutureExt, StreamExt};
use registry_engine::{AllChanges, Directory, ServiceSnapshot};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::resources::{self, Kind};
use crate::{Stats, XdsOptions};

/// Builds a stream's resources, keeping each service's ClusterLoadAssignment with the snapshot it
/// was built from: rebuilt only when the snapshot changed.
pub(crate) struct Builder {
    dir: Directory,
    balancing: crate::Balancing,
    stats: Arc<Stats>,
    built: HashMap<String, (Arc<ServiceSnapshot>, Any)>,
}

impl Builder {
    pub(crate) fn new(dir: Directory, options: &XdsOptions, stats: Arc<Stats>) -> Builder {
        Builder {
            dir,
            balancing: options.balancing,
            stats,
            built: HashMap::new(),
        }
    }

    /// `kind`'s resource named `name` (a servable name).
    pub(crate) fn resource(&mut self, kind: Kind, name: &str) -> Any {
        match kind {
            Kind::Listener => resources::listener(name),
            Kind::Route => resources::route(name, self.balancing),
            Kind::Cluster => resources::cluster(name, self.balancing),
            Kind::Endpoints => self.endpoints(name),
        }
    }

    /// Forgets the endpoints of services `keep` says no longer matter.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.built.retain(|n, _| keep(n));
    }

    /// `service`'s ClusterLoadAssignment, rebuilt only if its snapshot changed.
    fn endpoints(&mut self, service: &str) -> Any {
        let snap = self.dir.snapshot(service);
        if let Some((built_from, any)) = self.built.get(service)
            && Arc::ptr_eq(built_from, &snap)
        {
            return any.clone();
        }
        let (any, skipped) = resources::endpoints(&snap);
        let left_out = skipped.no_ip_address + skipped.duplicate_address;
        if left_out > 0 {
            self.stats
                .skipped_endpoints
                .fetch_add(left_out as u64, Ordering::Relaxed);
            tracing::debug!(
                service,
                no_ip_address = skipped.no_ip_address,
                duplicate_address = skipped.duplicate_address,
                "xds: instances left out of the endpoints"
            );
        }
        self.built.insert(service.to_owned(), (snap, any.clone()));
        any
    }
}

/// What a stream has to do next.
enum Event<R> {
    /// A request from the client.
    Request(R),
    /// The directory changed (a burst of changes is one event).
    Changed,
    /// The client went, or the directory's feed ended.
    Closed,
}

/// Waits for the client's next request or the directory's next change.
async fn next_event<R: prost::Message + Default>(
    requests: &mut Streaming<R>,
    changes: &mut AllChanges,
) -> Event<R> {
    tokio::select! {
        req = requests.message() => match req {
            Ok(Some(req)) => Event::Request(req),
            Ok(None) => Event::Closed,
            Err(status) => {
                tracing::debug!(%status, "xds: stream broken");
                Event::Closed
            }
        },
        ev = changes.next() => {
            if ev.is_none() {
                return Event::Closed;
            }
            // A burst of changes is one update: take what is already there.
            for _ in 0..4096 {
                match changes.next().now_or_never() {
                    Some(Some(_)) => continue,
                    _ => break,
                }
            }
            Event::Changed
        }
    }
}

/// Why a stream ended on the server's side.
pub(crate) enum End {
    /// The client closed it, or the connection went.
    Closed,
    /// The client did not take an answer within the write timeout.
    Stalled,
    /// The client broke the protocol's bounds (told with this status).
    Refused(Status),
}

/// A stream's way to its client, and what it counts.
pub(crate) struct Conn<R> {
    pub(crate) dir: Directory,
    pub(crate) options: Arc<XdsOptions>,
    pub(crate) builder: Builder,
    stats: Arc<Stats>,
    nonces: u64,
    tx: mpsc::Sender<Result<R, Status>>,
}

impl<R> Conn<R> {
    pub(crate) fn new(
        dir: Directory,
        options: Arc<XdsOptions>,
        stats: Arc<Stats>,
        tx: mpsc::Sender<Result<R, Status>>,
    ) -> Conn<R> {
        Conn {
            builder: Builder::new(dir.clone(), &options, stats.clone()),
            dir,
            options,
            stats,
            nonces: 0,
            tx,
        }
    }

    /// The kind a request's type URL names; another type (a client may ask for secrets or
    /// runtime) is counted and gets nothing.
    pub(crate) fn kind_of(&self, type_url: &str) -> Option<Kind> {
        let kind = Kind::from_type_url(type_url);
        if kind.is_none() {
            tracing::debug!(type_url, "xds: a type this server does not serve");
            self.stats.unknown_types.fetch_add(1, Ordering::Relaxed);
        }
        kind
    }

    /// Refuses more than the limit of names a request may carry (`what`: which names).
    pub(crate) fn within_limit(&self, count: usize, what: &str) -> Result<(), End> {
        let max = self.options.max_names;
        if count > max {
            return Err(End::Refused(Status::invalid_argument(format!(
                "at most {max} {what}"
            ))));
        }
        Ok(())
    }

    /// The client answered our last `kind` answer (nonce `nonce`): an ACK, or with `error` a
    /// NACK (logged, with the version rejected and the one kept where the protocol has them).
    pub(crate) fn answered(
        &self,
        kind: Kind,
        nonce: &str,
        error: Option<&RpcStatus>,
        rejected: &str,
        kept: &str,
    ) {
        let Some(err) = error else {
            self.stats.acks[kind as usize].fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.stats.nacks[kind as usize].fetch_add(1, Ordering::Relaxed);
        let message: String = err.message.chars().take(512).collect();
        tracing::warn!(
            r#type = kind.short(),
            rejected,
            kept,
            nonce,
            error = %message,
            "xds: a client rejected an answer (NACK)"
        );
    }

    /// The next answer's nonce.
    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonces += 1;
        self.nonces.to_string()
    }

    /// Sends `answer` (of `kind`), waiting at most the write timeout for the client to take it.
    pub(crate) async fn deliver(&self, kind: Kind, answer: R) -> Result<(), End> {
        match tokio::time::timeout(self.options.write_timeout, self.tx.send(Ok(answer))).await {
            Ok(Ok(())) => {
                self.stats.responses[kind as usize].fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::Stalled),
        }
    }
}

/// One kind of ADS stream: what it does with a request, and when the directory changed.
pub(crate) trait Session: Send {
    type Request: prost::Message + Default + 'static;
    type Response: Send + 'static;

    fn conn(&self) -> &Conn<Self::Response>;

    fn request(&mut self, req: Self::Request) -> impl Future<Output = Result<(), End>> + Send;

    fn changed(&mut self) -> impl Future<Output = Result<(), End>> + Send;
}

/// Serves `session` until the client ends it or breaks its bounds.
pub(crate) async fn run<S: Session>(mut session: S, mut requests: Streaming<S::Request>) -> End {
    let mut changes = session.conn().dir.all_changes();
    let end = loop {
        let result = match next_event(&mut requests, &mut changes).await {
            Event::Request(req) => session.request(req).await,
            Event::Changed => session.changed().await,
            Event::Closed => Err(End::Closed),
        };
        if let Err(end) = result {
            break end;
        }
    };
    if let End::Refused(status) = &end {
        let _ = session.conn().tx.try_send(Err(status.clone()));
    }
    end
}
