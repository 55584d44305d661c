//! A service's instances as network endpoints: what an xDS server sends to gRPC clients and what
//! the gRPC ring ([`RingKind::GrpcRingHash`](crate::RingKind::GrpcRingHash)) is built over, in one
//! place so that the two cannot disagree.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::instance::Instance;
use crate::read::snapshot::ServiceSnapshot;

/// An instance as an endpoint: its IP address and port, and whether calls may go to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// The instance.
    pub instance: Arc<Instance>,
    /// Its first address that is an IP address and a port ([`Instance::socket_addr`]).
    pub addr: SocketAddr,
    /// Whether it takes new calls.
    pub health: EndpointHealth,
}

/// Whether an [`Endpoint`] takes new calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointHealth {
    /// Online and not hidden by a probe: routed to.
    Healthy,
    /// Online, but a liveness probe hides it: no call.
    Unhealthy,
    /// Offline: no new call.
    Draining,
}

/// What [`ServiceSnapshot::endpoints`] left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointsSkipped {
    /// Instances with no address that is an IP address and a port.
    pub no_ip_address: usize,
    /// Instances whose address another instance of the service already has (gRPC clients reject
    /// an answer that names an address twice; the first instance in id order keeps it).
    pub duplicate_address: usize,
}

impl ServiceSnapshot {
    /// Every listed instance as an endpoint, by id, with what was left out: instances without an
    /// IP address and port, and those whose address an earlier one has.
    pub fn endpoints(&self) -> (Vec<Endpoint>, EndpointsSkipped) {
        let mut skipped = EndpointsSkipped::default();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for inst in self.all().values() {
            let Some(addr) = inst.socket_addr() else {
                skipped.no_ip_address += 1;
                continue;
            };
            if !seen.insert(addr) {
                skipped.duplicate_address += 1;
                continue;
            }
            let health = if !inst.is_online() {
                EndpointHealth::Draining
            } else if self.is_hidden(&inst.id) {
                EndpointHealth::Unhealthy
            } else {
                EndpointHealth::Healthy
            };
            out.push(Endpoint {
                instance: inst.clone(),
                addr,
                health,
            });
        }
        (out, skipped)
    }

    /// The members of this view's gRPC ring: the healthy endpoints, each with its address.
    pub(crate) fn grpc_members(&self) -> impl Iterator<Item = (Arc<Instance>, SocketAddr)> {
        self.endpoints()
            .0
            .into_iter()
            .filter(|e| e.health == EndpointHealth::Healthy)
            .map(|e| (e.instance, e.addr))
    }
}

/// `members` with an IP address, each address kept by the first member (by id) that has it: the
/// members of a gRPC ring over a chosen set of online instances (a selection).
pub(crate) fn addressed(
    members: impl IntoIterator<Item = Arc<Instance>>,
) -> Vec<(Arc<Instance>, SocketAddr)> {
    let mut seen = HashSet::new();
    members
        .into_iter()
        .filter_map(|m| {
            let addr = m.socket_addr()?;
            seen.insert(addr).then_some((m, addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::Directory;

    #[test]
    fn endpoints_keep_the_first_of_an_address_and_mark_health() {
        let dir = Directory::new();
        let inst = |id: &str, addr: &str| Instance::new("s", id).addr(addr);
        let all: BTreeMap<String, Arc<Instance>> = [
            inst("a", "10.0.0.1:80"),
            inst("b", "10.0.0.1:80"),
            inst("c", "db.internal:80"),
            inst("d", "grpc://u:p@10.0.0.4:81/x").state(crate::InstanceState::Offline),
            inst("e", "[::1]:82"),
        ]
        .into_iter()
        .map(|i| (i.id.clone(), Arc::new(i)))
        .collect();
        dir.publish("s", all, 1, true);
        let (eps, skipped) = dir.snapshot("s").endpoints();
        let got: Vec<(&str, String, EndpointHealth)> = eps
            .iter()
            .map(|e| (e.instance.id.as_str(), e.addr.to_string(), e.health))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "10.0.0.1:80".to_owned(), EndpointHealth::Healthy),
                ("d", "10.0.0.4:81".to_owned(), EndpointHealth::Draining),
                ("e", "[::1]:82".to_owned(), EndpointHealth::Healthy),
            ]
        );
        assert_eq!(
            skipped,
            EndpointsSkipped {
                no_ip_address: 1,
                duplicate_address: 1
            }
        );
    }
}
