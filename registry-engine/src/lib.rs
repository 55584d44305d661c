#![doc = include_str!("../README.md")]
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<dyn registry_core::Backend>) -> registry_core::Result<()> {
//! use registry_engine::{Instance, Registry};
//!
//! let registry = Registry::new(backend)?;
//! let _web1 = registry.register(Instance::new("web", "web-1").addr("10.0.0.1:8080")).await?;
//! let discovery = registry.discover("web").await?;
//! let owner = discovery.directory().find("web", "user-42");
//! # let _ = owner; Ok(()) }
//! ```

mod backoff;
mod collections;
mod model;
mod read;
mod registry;
mod route;
mod telemetry;
mod write;

pub use backoff::Backoff;
pub use collections::instances::{InstanceMap, Instances, InstancesIter};
pub use collections::ring::{
    DEFAULT_VNODES, GRPC_MAX_RING_SIZE, GRPC_MIN_RING_SIZE, MAX_VNODES, PROBES, Ring, RingKind,
    hash_key, probes,
};
pub use model::instance::{
    DEFAULT_WEIGHT, FORMAT_VERSION, Instance, InstanceState, MAX_WEIGHT, host_port,
};
pub use model::layout::DEFAULT_NAMESPACE;
pub use model::names::{
    MAX_ID_LEN, MAX_SERVICE_LEN, validate_id, validate_namespace, validate_service,
};
pub use read::change::{Change, ChangeKind};
pub use read::changes::Changes;
pub use read::directory::{Directory, DirectoryBuilder};
pub use read::discovery::{
    APPLY_DELAY_BUCKETS, ApplyDelay, Discovery, DiscoveryCounts, DiscoveryOptions, Scope,
};
pub use read::endpoint::{Endpoint, EndpointHealth, EndpointsSkipped};
pub use read::feed::AllChanges;
pub use read::journal::{
    DEFAULT_JOURNAL_CAPACITY, DirectoryChange, DirectoryEvent, Resync, ResyncReason,
};
pub use read::merge::{BACKEND_PRECEDENCE, BACKEND_SOURCE};
pub use read::probe::{Probe, ProbeOptions, TcpProbe};
pub use read::snapshot::ServiceSnapshot;
pub use read::source::{SourceHandle, StaticSource};
pub use registry::{Registry, RegistryBuilder};
pub use route::dispatch::{DispatchError, DispatchLayer, DispatchService, Dispatcher, Failover};
pub use route::select::{SelectedChanges, Selection, Selector, ZONE_KEY};
pub use write::observer::{RegistrationEvent, RegistrationObserver};
pub use write::options::{
    DEFAULT_HEARTBEAT, DEFAULT_TTL, DEFAULT_WRITE_CONCURRENCY, LeaseOptions, RegisterOptions,
};
pub use write::registration::Registration;
pub use write::state::RegistrationState;
pub use write::stats::{RegistryCounts, RegistryStats};
