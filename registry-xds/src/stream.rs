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

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;

use crate::resources::{Kind, servable};
use crate::session::{Conn, End, Session};

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
    conn: Conn<DiscoveryResponse>,
    subs: HashMap<Kind, Subscription>,
}

impl Stream {
    pub(crate) fn new(conn: Conn<DiscoveryResponse>) -> Stream {
        Stream {
            conn,
            subs: HashMap::new(),
        }
    }

    /// Builds `kind`'s answer and sends it if it differs from the last one (or `always`).
    async fn send(&mut self, kind: Kind, always: bool) -> Result<(), End> {
        let names: Vec<String> = {
            let sub = &self.subs[&kind];
            if sub.wildcard {
                self.conn
                    .dir
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
            resources.push(self.conn.builder.resource(kind, name));
        }
        if kind == Kind::Endpoints {
            // Services no longer asked for are not kept.
            self.conn
                .builder
                .retain(|n| names.binary_search_by(|x| x.as_str().cmp(n)).is_ok());
        }
        let version = version(&names, &resources);
        let sub = self.subs.get_mut(&kind).expect("subscribed");
        if !always && sub.version.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let nonce = self.conn.next_nonce();
        sub.version = Some(version.clone());
        sub.nonce = nonce.clone();
        let answer = DiscoveryResponse {
            version_info: version,
            resources,
            type_url: kind.type_url(),
            nonce,
            ..Default::default()
        };
        self.conn.deliver(kind, answer).await
    }
}

impl Session for Stream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn conn(&self) -> &Conn<DiscoveryResponse> {
        &self.conn
    }

    /// One request from the client.
    async fn request(&mut self, req: DiscoveryRequest) -> Result<(), End> {
        let Some(kind) = self.conn.kind_of(&req.type_url) else {
            return Ok(());
        };
        self.conn
            .within_limit(req.resource_names.len(), "resource names a request")?;
        let sub = self.subs.entry(kind).or_default();
        let first = sub.version.is_none();
        if !first && req.response_nonce != sub.nonce {
            // Stale: it answers an older response; the client will answer the newest.
            return Ok(());
        }
        if req.error_detail.is_some() || !first {
            self.conn.answered(
                kind,
                &req.response_nonce,
                req.error_detail.as_ref(),
                sub.version.as_deref().unwrap_or(""),
                &req.version_info,
            );
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
