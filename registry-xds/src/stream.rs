//! One ADS stream, state of the world: what the client subscribed to per type, what was last sent
//! and whether the client took it.
//!
//! The protocol, as a client sees it: it asks for a type's resources by name (LDS and CDS may ask
//! for all with no name); the server answers with every resource of that type the client asked for,
//! a `version_info` and a `nonce`; the client sends the same request back with that nonce (and the
//! version, an ACK; or the previous version and an `error_detail`, a NACK). A request whose nonce
//! is not the last one sent is stale (it crossed a newer answer) and is ignored. The server sends
//! again when what it would send changes: here, when an instance of a subscribed service changes,
//! or a service appears or goes for a wildcard subscription.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use futures::{FutureExt, StreamExt};
use registry_engine::{AllChanges, Directory, ServiceSnapshot};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::resources::{self, Kind, servable};
use crate::{Stats, XdsOptions};

/// What one type's subscription holds.
#[derive(Default)]
struct Subscription {
    /// The names asked for (the servable ones); empty with `wildcard`.
    names: BTreeSet<String>,
    /// All of this type's resources (LDS and CDS asked with no name).
    wildcard: bool,
    /// The version and nonce of the last answer sent.
    version: Option<String>,
    nonce: String,
}

/// The stream's state.
pub(crate) struct Stream {
    dir: Directory,
    options: Arc<XdsOptions>,
    stats: Arc<Stats>,
    subs: HashMap<Kind, Subscription>,
    builder: Builder,
    nonces: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

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
pub(crate) enum Event<R> {
    /// A request from the client.
    Request(R),
    /// The directory changed (a burst of changes is one event).
    Changed,
    /// The client went, or the directory's feed ended.
    Closed,
}

/// Waits for the client's next request or the directory's next change.
pub(crate) async fn next_event<R: prost::Message + Default>(
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

impl Stream {
    pub(crate) fn new(
        dir: Directory,
        options: Arc<XdsOptions>,
        stats: Arc<Stats>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Stream {
        Stream {
            builder: Builder::new(dir.clone(), &options, stats.clone()),
            dir,
            options,
            stats,
            subs: HashMap::new(),
            nonces: 0,
            tx,
        }
    }

    /// Serves the stream until the client ends it or breaks its bounds.
    pub(crate) async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) -> End {
        let mut changes = self.dir.all_changes();
        let end = loop {
            let result = match next_event(&mut requests, &mut changes).await {
                Event::Request(req) => self.request(req).await,
                Event::Changed => self.changed().await,
                Event::Closed => Err(End::Closed),
            };
            if let Err(end) = result {
                break end;
            }
        };
        if let End::Refused(status) = &end {
            let _ = self.tx.try_send(Err(status.clone()));
        }
        end
    }

    /// One request from the client.
    async fn request(&mut self, req: DiscoveryRequest) -> Result<(), End> {
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            // Another type (a client may ask for secrets or runtime): nothing of it is served,
            // the empty answer says so.
            tracing::debug!(type_url = %req.type_url, "xds: a type this server does not serve");
            self.stats.unknown_types.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        if req.resource_names.len() > self.options.max_names {
            return Err(End::Refused(Status::invalid_argument(format!(
                "at most {} resource names a request",
                self.options.max_names
            ))));
        }
        let sub = self.subs.entry(kind).or_default();
        let first = sub.version.is_none();
        if !first && req.response_nonce != sub.nonce {
            // Stale: it answers an older response; the client will answer the newest.
            return Ok(());
        }
        if let Some(err) = &req.error_detail {
            self.stats.nacks[kind as usize].fetch_add(1, Ordering::Relaxed);
            let message: String = err.message.chars().take(512).collect();
            tracing::warn!(
                r#type = kind.short(),
                rejected = %sub.version.as_deref().unwrap_or(""),
                kept = %req.version_info,
                nonce = %req.response_nonce,
                error = %message,
                "xds: a client rejected an answer (NACK)"
            );
        } else if !first {
            self.stats.acks[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        let wildcard = kind.has_wildcard()
            && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"));
        let names: BTreeSet<String> = if wildcard {
            BTreeSet::new()
        } else {
            req.resource_names
                .iter()
                .filter(|n| servable(n))
                .cloned()
                .collect()
        };
        let changed = names != sub.names || wildcard != sub.wildcard;
        sub.names = names;
        sub.wildcard = wildcard;
        if first || changed {
            self.send(kind, first).await?;
        }
        Ok(())
    }

    /// The directory changed: sends every subscribed type whose answer is now different.
    async fn changed(&mut self) -> Result<(), End> {
        for kind in Kind::ALL {
            let Some(sub) = self.subs.get(&kind) else {
                continue;
            };
            if kind == Kind::Endpoints || sub.wildcard {
                self.send(kind, false).await?;
            }
        }
        Ok(())
    }

    /// Builds `kind`'s answer and sends it if it differs from the last one (or `always`).
    async fn send(&mut self, kind: Kind, always: bool) -> Result<(), End> {
        let names: Vec<String> = {
            let sub = &self.subs[&kind];
            if sub.wildcard {
                self.dir
                    .services()
                    .into_iter()
                    .filter(|n| servable(n))
                    .collect()
            } else {
                sub.names.iter().cloned().collect()
            }
        };
        let mut resources = Vec::with_capacity(names.len());
        for name in &names {
            resources.push(self.builder.resource(kind, name));
        }
        if kind == Kind::Endpoints {
            // Services no longer asked for are not kept.
            self.builder
                .retain(|n| names.binary_search_by(|x| x.as_str().cmp(n)).is_ok());
        }
        let version = version(&names, &resources);
        let sub = self.subs.get_mut(&kind).expect("subscribed");
        if !always && sub.version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        sub.version = Some(version.clone());
        sub.nonce = nonce.clone();
        let answer = DiscoveryResponse {
            version_info: version,
            resources,
            type_url: kind.type_url(),
            nonce,
            ..Default::default()
        };
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

/// A version for an answer: a digest of its resources (the same answer gets the same version, so
/// a change elsewhere in the directory sends nothing).
fn version(names: &[String], resources: &[Any]) -> String {
    let mut h = DefaultHasher::new();
    names.hash(&mut h);
    for r in resources {
        r.type_url.hash(&mut h);
        r.value.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}
