//! The four resources a proxyless gRPC client asks for, built from the directory.
//!
//! For a target `xds:///NAME` a client asks for the Listener `NAME`, then the RouteConfiguration
//! its connection manager names, the Cluster its route names and the ClusterLoadAssignment of that
//! cluster. All four are named after the service: the listener routes every call (any authority,
//! any path) to the cluster of the same name, whose endpoints are the service's instances.

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
use registry_engine::{
    EndpointHealth, EndpointsSkipped, ServiceSnapshot, ZONE_KEY, validate_service,
};

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
pub const MIN_RING_SIZE: u64 = registry_engine::GRPC_MIN_RING_SIZE;
/// The maximum ring size this server asks clients for: gRPC clients cap rings at 4,096 entries
/// by default (the channel argument `grpc.lb.ring_hash.ring_size_cap`) whatever the cluster says,
/// so asking for that makes the size the same in every client, and the same as
/// [`RingKind::GrpcRingHash`](registry_engine::RingKind::GrpcRingHash)'s.
pub const MAX_RING_SIZE: u64 = registry_engine::GRPC_MAX_RING_SIZE;

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

/// What [`endpoints`] left out (see [`ServiceSnapshot::endpoints`]).
pub type Skipped = EndpointsSkipped;

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
    let (served, skipped) = snap.endpoints();
    let mut localities = Vec::with_capacity(served.len());
    for registry_engine::Endpoint {
        instance: inst,
        addr,
        health,
    } in served
    {
        let health = match health {
            EndpointHealth::Healthy => HealthStatus::Healthy,
            EndpointHealth::Unhealthy => HealthStatus::Unhealthy,
            EndpointHealth::Draining => HealthStatus::Draining,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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
