//! One incremental ADS stream (delta xDS): the client subscribes to and unsubscribes from names,
//! and the server sends only the resources that changed since the client last had them, and the
//! names of those that went away.
//!
//! Per type: the names subscribed to (LDS and CDS may subscribe to all: `*`, or an empty first
//! request), and the version of each resource the client has (from our answers, or told in
//! `initial_resource_versions` when it reconnects). An answer carries the resources whose version
//! differs from the client's, and `removed_resources`: subscribed names this server cannot serve,
//! and services a wildcard subscription had that are gone. A request's nonce only says which
//! answer it ACKs or NACKs; subscription changes apply whatever the nonce.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use registry_engine::Directory;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::resources::{Kind, servable};
use crate::stream::{Builder, End, Event, next_event};
use crate::{Stats, XdsOptions};

#[derive(Default)]
struct Subscription {
    /// The names subscribed to explicitly (servable or not).
    names: BTreeSet<String>,
    wildcard: bool,
    /// The version of each resource the client has.
    has: HashMap<String, String>,
    /// The nonce of the last answer.
    nonce: String,
}

pub(crate) struct DeltaStream {
    dir: Directory,
    options: Arc<XdsOptions>,
    stats: Arc<Stats>,
    subs: HashMap<Kind, Subscription>,
    builder: Builder,
    nonces: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl DeltaStream {
    pub(crate) fn new(
        dir: Directory,
        options: Arc<XdsOptions>,
        stats: Arc<Stats>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> DeltaStream {
        DeltaStream {
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
    pub(crate) async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) -> End {
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

    /// The directory changed: sends what changed of every subscribed type.
    async fn changed(&mut self) -> Result<(), End> {
        let kinds: Vec<Kind> = self.subs.keys().copied().collect();
        for kind in kinds {
            self.send(kind, false).await?;
        }
        Ok(())
    }

    async fn request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), End> {
        let Some(kind) = Kind::from_type_url(&req.type_url) else {
            tracing::debug!(type_url = %req.type_url, "xds: a type this server does not serve");
            self.stats.unknown_types.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let max = self.options.max_names;
        if req.resource_names_subscribe.len() > max || req.initial_resource_versions.len() > max {
            return Err(End::Refused(Status::invalid_argument(format!(
                "at most {max} resource names a request"
            ))));
        }
        let first = !self.subs.contains_key(&kind);
        let sub = self.subs.entry(kind).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce == sub.nonce {
            if let Some(err) = &req.error_detail {
                self.stats.nacks[kind as usize].fetch_add(1, Ordering::Relaxed);
                let message: String = err.message.chars().take(512).collect();
                tracing::warn!(
                    r#type = kind.short(),
                    nonce = %req.response_nonce,
                    error = %message,
                    "xds: a client rejected an answer (NACK, delta)"
                );
            } else {
                self.stats.acks[kind as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        if first {
            sub.has.extend(req.initial_resource_versions);
            if kind.has_wildcard() && req.resource_names_subscribe.is_empty() {
                sub.wildcard = true;
            }
        }
        for name in &req.resource_names_subscribe {
            if name == "*" && kind.has_wildcard() {
                sub.wildcard = true;
            } else {
                sub.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
                sub.has.remove(name);
            }
        }
        if sub.names.len() > max {
            return Err(End::Refused(Status::invalid_argument(format!(
                "at most {max} subscribed names a type"
            ))));
        }
        let asked = first || !req.resource_names_subscribe.is_empty();
        self.send(kind, asked).await
    }

    /// Sends what changed of `kind` for the client, if anything (or an empty answer if `always`).
    async fn send(&mut self, kind: Kind, always: bool) -> Result<(), End> {
        let sub = self.subs.get(&kind).expect("subscribed");
        let mut wanted: BTreeSet<String> =
            sub.names.iter().filter(|n| servable(n)).cloned().collect();
        if sub.wildcard {
            wanted.extend(self.dir.services().into_iter().filter(|n| servable(n)));
        }
        let mut resources = Vec::new();
        let mut versions = Vec::new();
        for name in &wanted {
            let any = self.builder.resource(kind, name);
            let version = version_of(&any);
            if sub.has.get(name) != Some(&version) {
                versions.push((name.clone(), version.clone()));
                resources.push(Resource {
                    name: name.clone(),
                    version,
                    resource: Some(any),
                    ..Default::default()
                });
            }
        }
        // Gone: what the client has (or asked for) that is no longer served.
        let removed: Vec<String> = sub
            .has
            .keys()
            .chain(sub.names.iter())
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|n| sub.has.contains_key(n) || (always && sub.names.contains(n)))
            .collect();
        if kind == Kind::Endpoints {
            self.builder.retain(|n| wanted.contains(n));
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let sub = self.subs.get_mut(&kind).expect("subscribed");
        for (name, version) in versions {
            sub.has.insert(name, version);
        }
        for name in &removed {
            sub.has.remove(name);
        }
        sub.nonce = nonce.clone();
        let answer = DeltaDiscoveryResponse {
            resources,
            type_url: kind.type_url(),
            removed_resources: removed,
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

/// A resource's version: a digest of it.
fn version_of(any: &envoy_types::pb::google::protobuf::Any) -> String {
    let mut h = DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    format!("{:016x}", h.finish())
}
