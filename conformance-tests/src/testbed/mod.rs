//! The containerized test bed shared by every backend's tests (feature `testbed`).
//!
//! Servers run in containers started with `testcontainers`. Image and tag per backend come from one
//! place ([`ServerKind::spec`]): the upstream images a user with Docker and internet would expect, or
//! the local images `scripts/testbed.sh` builds from Debian's packages, through
//! `REGISTRY_TEST_<BACKEND>_IMAGE` / `REGISTRY_TEST_<BACKEND>_TAG`. An external server can replace the
//! container with `REGISTRY_TEST_<BACKEND>_ENDPOINTS`.
//!
//! With `REGISTRY_TEST_REQUIRED=1` a server that cannot be started fails the test with the reason;
//! otherwise the test prints why it skips.

mod consul;
mod container;
mod etcd;
mod prometheus;
mod redis;

pub use consul::{Consul, ConsulOptions, shared_consul, start_consul};
pub use container::{
    Container, LABEL, PID_LABEL, ServerKind, ServerSpec, ServerTls, container_ip, free_port,
    fresh_namespace, start_or_skip, unavailable,
};
pub use etcd::{Etcd, EtcdOptions, shared_etcd, start_etcd};
pub use prometheus::{Prometheus, PrometheusOptions, start_prometheus};
pub use redis::{
    Redis, RedisOptions, SentinelOptions, shared_redis, start_redis, start_redis_sentinel,
};
