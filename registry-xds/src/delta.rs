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

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use crate::resources::{Kind, servable};
use crate::session::{Conn, End, Session};

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
    conn: Conn<DeltaDiscoveryResponse>,
    subs: HashMap<Kind, Subscription>,
}

impl DeltaStream {
    pub(crate) fn new(conn: Conn<DeltaDiscoveryResponse>) -> DeltaStream {
        DeltaStream {
            conn,
            subs: HashMap::new(),
        }
    }

    /// Sends what changed of `kind` for the client, if anything (or an answer even with nothing
    /// in it if `always`: the client just subscribed).
    async fn send(&mut self, kind: Kind, always: bool) -> Result<(), End> {
        let sub = self.subs.get(&kind).expect("subscribed");
        let mut wanted: BTreeSet<String> =
            sub.names.iter().filter(|n| servable(n)).cloned().collect();
        if sub.wildcard {
            wanted.extend(self.conn.dir.services().into_iter().filter(|n| servable(n)));
        }
        let mut resources = Vec::new();
        for name in &wanted {
            let any = self.conn.builder.resource(kind, name);
            let version = version_of(&any);
            if sub.has.get(name) != Some(&version) {
                resources.push(Resource {
                    name: name.clone(),
                    version,
                    resource: Some(any),
                    ..Default::default()
                });
            }
        }
        // Gone: what the client has that is no longer served, and, answering a subscription,
        // the names it asked for that cannot be served.
        let mut removed: BTreeSet<&String> =
            sub.has.keys().filter(|n| !wanted.contains(*n)).collect();
        if always {
            removed.extend(sub.names.iter().filter(|n| !wanted.contains(*n)));
        }
        let removed: Vec<String> = removed.into_iter().cloned().collect();
        if kind == Kind::Endpoints {
            self.conn.builder.retain(|n| wanted.contains(n));
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        let nonce = self.conn.next_nonce();
        let sub = self.subs.get_mut(&kind).expect("subscribed");
        for r in &resources {
            sub.has.insert(r.name.clone(), r.version.clone());
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
        self.conn.deliver(kind, answer).await
    }
}

impl Session for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn conn(&self) -> &Conn<DeltaDiscoveryResponse> {
        &self.conn
    }

    async fn request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), End> {
        let Some(kind) = self.conn.kind_of(&req.type_url) else {
            return Ok(());
        };
        self.conn.within_limit(
            req.resource_names_subscribe
                .len()
                .max(req.initial_resource_versions.len()),
            "resource names a request",
        )?;
        let first = !self.subs.contains_key(&kind);
        let sub = self.subs.entry(kind).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce == sub.nonce {
            self.conn
                .answered(kind, &req.response_nonce, req.error_detail.as_ref(), "", "");
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
        self.conn
            .within_limit(sub.names.len(), "subscribed names a type")?;
        let asked = first || !req.resource_names_subscribe.is_empty();
        self.send(kind, asked).await
    }

    /// The directory changed: sends what changed of every subscribed type.
    async fn changed(&mut self) -> Result<(), End> {
        let kinds: Vec<Kind> = self.subs.keys().copied().collect();
        for kind in kinds {
            self.send(kind, false).await?;
        }
        Ok(())
    }
}

/// A resource's version: a digest of it.
fn version_of(any: &envoy_types::pb::google::protobuf::Any) -> String {
    let mut h = DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    format!("{:016x}", h.finish())
}
