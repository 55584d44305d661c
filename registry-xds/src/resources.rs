//! The four resources a proxyless gRPC client asks for, built from the directory.
//!
//! For a target `xds:///NAME` a client asks for the Listener `NAME`, then the RouteConfiguration
//! its connection manager names, the Cluster its route names and the ClusterLoadAssignment of that
//! cluster. All four are named after the service: the listener routes every call (any authority,
//! any path) to the cluster of the same name, whose endpoints are the service's instances.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{
        ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy, RingHashLbConfig,
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, HealthStatus, Locality, SocketAddress, address,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    route::Action,
    route_action::{
        ClusterSpecifier, HashPolicy,
        hash_policy::{Header, PolicySpecifier},
    },
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
    http_filter::ConfigType,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use prost::Name;
use registry_engine::{Instance, ServiceSnapshot, ZONE_KEY, validate_service};

/// The four resource types, in the order a client asks for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoints,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Listener, Kind::Route, Kind::Cluster, Kind::Endpoints];

    /// The type URL of this kind's resources.
    pub fn type_url(self) -> String {
        match self {
            Kind::Listener => Listener::type_url(),
            Kind::Route => RouteConfiguration::type_url(),
            Kind::Cluster => Cluster::type_url(),
            Kind::Endpoints => ClusterLoadAssignment::type_url(),
        }
    }

    /// The kind of a type URL, if it is one of the four.
    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// A short name for logs and metric labels: `lds`, `rds`, `cds`, `eds`.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Listener => "lds",
            Kind::Route => "rds",
            Kind::Cluster => "cds",
            Kind::Endpoints => "eds",
        }
    }

    /// Whether a request naming no resource asks for all of them (LDS and CDS), as opposed to
    /// none (RDS and EDS are never wildcards).
    pub fn has_wildcard(self) -> bool {
        matches!(self, Kind::Listener | Kind::Cluster)
    }
}

/// How clients balance a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balancing {
    /// `ROUND_ROBIN`: gRPC's default (per locality, localities weighted by the sum of their
    /// endpoints' weights).
    #[default]
    RoundRobin,
    /// `RING_HASH` on the request header [`HASH_HEADER`]: a key goes to a stable endpoint.
    RingHash,
}

/// The request header a ring-hash route hashes on.
pub const HASH_HEADER: &str = "x-key";

/// The minimum ring size this server asks clients for (gRPC's default as well).
pub const MIN_RING_SIZE: u64 = 1024;
/// The maximum ring size this server asks clients for: gRPC clients cap rings at 4,096 entries
/// by default (the channel argument `grpc.lb.ring_hash.ring_size_cap`) whatever the cluster says,
/// so asking for that makes the size the same in every client.
pub const MAX_RING_SIZE: u64 = 4096;

/// Whether `name` can be served: a valid service name (a client may ask for anything, e.g. an
/// `xdstp://` name; those are left out of the answers, so the client sees them as absent).
pub fn servable(name: &str) -> bool {
    validate_service(name).is_ok()
}

/// An ADS config source: every resource comes on the stream that asked for the first one.
fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: 2, // V3
        ..Default::default()
    }
}

/// The Listener `name`: a connection manager (an API listener, as gRPC clients use) whose routes
/// come from the RouteConfiguration `name`, with the router filter gRPC requires last.
pub fn listener(name: &str) -> Any {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    pack_any(Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Default::default()
    })
}

/// The RouteConfiguration `name`: any authority, any path, to the cluster `name` (hashing on
/// [`HASH_HEADER`] with [`Balancing::RingHash`]).
pub fn route(name: &str, balancing: Balancing) -> Any {
    let hash_policy = match balancing {
        Balancing::RoundRobin => Vec::new(),
        Balancing::RingHash => vec![HashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header {
                header_name: HASH_HEADER.to_owned(),
                ..Default::default()
            })),
            terminal: false,
        }],
    };
    pack_any(RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(name.to_owned())),
                    hash_policy,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// The Cluster `name`: its endpoints by EDS over the same stream, balanced as `balancing` says.
pub fn cluster(name: &str, balancing: Balancing) -> Any {
    let (lb_policy, lb_config) = match balancing {
        Balancing::RoundRobin => (LbPolicy::RoundRobin, None),
        Balancing::RingHash => (
            LbPolicy::RingHash,
            Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value {
                    value: MIN_RING_SIZE,
                }),
                maximum_ring_size: Some(UInt64Value {
                    value: MAX_RING_SIZE,
                }),
                ..Default::default()
            })),
        ),
    };
    pack_any(Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        lb_policy: lb_policy as i32,
        lb_config,
        ..Default::default()
    })
}

/// An instance as an endpoint: its address and health.
pub(crate) struct Served {
    pub(crate) inst: Arc<Instance>,
    pub(crate) addr: SocketAddr,
    pub(crate) health: HealthStatus,
}

/// The instances of `snap` as endpoints, in the answer's order (by id), with what was left out:
/// those without an IP address, and those whose address an earlier one has.
pub(crate) fn served(snap: &ServiceSnapshot) -> (Vec<Served>, Skipped) {
    let mut skipped = Skipped::default();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for inst in snap.all().values() {
        let Some(addr) = ip_address(inst) else {
            skipped.no_ip_address += 1;
            continue;
        };
        if !seen.insert(addr) {
            skipped.duplicate_address += 1;
            continue;
        }
        let health = if !inst.is_online() {
            HealthStatus::Draining
        } else if snap.is_hidden(&inst.id) {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Healthy
        };
        out.push(Served {
            inst: inst.clone(),
            addr,
            health,
        });
    }
    (out, skipped)
}

/// What [`endpoints`] left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Instances with no address that is an IP address and a port (gRPC clients take only those).
    pub no_ip_address: usize,
    /// Instances whose address another instance of the service already has (a client rejects an
    /// answer that names an address twice; the first instance in id order keeps it).
    pub duplicate_address: usize,
}

/// The ClusterLoadAssignment of `snap`'s service: one endpoint per instance (its first address
/// that is `IP:port`, or a URL's `IP:port`).
///
/// **Each instance is a locality of its own** (`zone` from its [`ZONE_KEY`] metadata, `sub_zone`
/// its id) whose `load_balancing_weight` is the instance's weight, and its endpoint's weight is 1.
/// gRPC's round robin (`xds_wrr_locality`) honours locality weights but not endpoint weights, and
/// its ring hash multiplies the two: so both balance by the instance weights. Online instances
/// are `HEALTHY`, those a probe hides `UNHEALTHY` (gRPC clients leave them out), offline ones
/// `DRAINING` (no new calls).
pub fn endpoints(snap: &ServiceSnapshot) -> (Any, Skipped) {
    let (served, skipped) = served(snap);
    let mut localities = Vec::with_capacity(served.len());
    for Served { inst, addr, health } in served {
        let endpoint = LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: addr.ip().to_string(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
                        ..Default::default()
                    })),
                }),
                hostname: inst.id.clone(),
                ..Default::default()
            })),
            health_status: health as i32,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        };
        localities.push(LocalityLbEndpoints {
            locality: Some(Locality {
                zone: inst.metadata.get(ZONE_KEY).cloned().unwrap_or_default(),
                sub_zone: inst.id.clone(),
                ..Default::default()
            }),
            lb_endpoints: vec![endpoint],
            // gRPC drops a locality without a weight, and rejects a weight of 0.
            load_balancing_weight: Some(UInt32Value {
                value: inst.weight.max(1),
            }),
            ..Default::default()
        });
    }
    let cla = ClusterLoadAssignment {
        cluster_name: snap.service().to_owned(),
        endpoints: localities,
        ..Default::default()
    };
    (pack_any(cla), skipped)
}

/// An instance's first address that is an IP address and a port: `IP:port`, `[IPv6]:port`, or
/// either inside a URL (`grpc://10.0.0.1:50051/`, credentials and path ignored).
pub fn ip_address(inst: &Instance) -> Option<SocketAddr> {
    inst.addrs
        .iter()
        .find_map(|a| registry_engine::host_port(a)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_address_is_found_in_any_form() {
        let inst = |addrs: &[&str]| {
            let mut i = Instance::new("s", "i");
            for a in addrs {
                i = i.addr(*a);
            }
            i
        };
        let ip = |addrs: &[&str]| ip_address(&inst(addrs)).map(|a| a.to_string());
        assert_eq!(ip(&["10.0.0.1:80"]).as_deref(), Some("10.0.0.1:80"));
        assert_eq!(ip(&["[::1]:50051"]).as_deref(), Some("[::1]:50051"));
        assert_eq!(
            ip(&["grpc://u:p@10.0.0.2:9000/x?y"]).as_deref(),
            Some("10.0.0.2:9000")
        );
        assert_eq!(
            ip(&["db.internal:5432", "10.0.0.3:5432"]).as_deref(),
            Some("10.0.0.3:5432")
        );
        assert_eq!(ip(&["db.internal:5432"]), None);
        assert_eq!(ip(&[]), None);
    }

    #[test]
    fn type_urls_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_type_url(&kind.type_url()), Some(kind));
        }
        assert_eq!(
            Kind::Endpoints.type_url(),
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        );
        assert_eq!(Kind::from_type_url("type.googleapis.com/x"), None);
    }
}
