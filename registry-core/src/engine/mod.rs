//! The engine that runs unchanged over any [`Backend`](crate::Backend): register, discover,
//! directory, routing and dispatch.
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<dyn registry_core::Backend>) -> registry_core::Result<()> {
//! use registry_core::engine::{Instance, Registry};
//!
//! let registry = Registry::new(backend)?;
//! let _web1 = registry.register(Instance::new("web", "web-1").addr("10.0.0.1:8080")).await?;
//! let discovery = registry.discover("web").await?;
//! let owner = discovery.directory().find("web", "user-42");
//! # let _ = owner; Ok(()) }
//! ```

mod backoff;
mod chunked;
mod collections;
mod directory;
mod discover;
mod dispatch;
mod feed;
mod instance;
mod keeper;
mod probe;
mod register;
mod ring;
mod select;
mod source;
mod telemetry;

pub use backoff::Backoff;
pub use collections::{InstanceMap, Instances, InstancesIter};
pub use directory::{Change, Changes, Directory, DirectoryBuilder, ServiceSnapshot};
pub use discover::{
    APPLY_DELAY_BUCKETS, ApplyDelay, Discovery, DiscoveryCounts, DiscoveryOptions, Scope,
};
pub use dispatch::{DispatchError, DispatchLayer, DispatchService, Dispatcher, Failover};
pub use feed::{
    AllChanges, ChangeKind, DEFAULT_JOURNAL_CAPACITY, DirectoryChange, DirectoryEvent, Resync,
    ResyncReason,
};
pub use instance::{
    DEFAULT_WEIGHT, FORMAT_VERSION, Instance, InstanceState, MAX_ID_LEN, MAX_SERVICE_LEN,
    MAX_WEIGHT, validate_id, validate_namespace, validate_service,
};
pub use probe::{Probe, ProbeOptions, TcpProbe};
pub use register::{
    DEFAULT_HEARTBEAT, DEFAULT_NAMESPACE, DEFAULT_TTL, DEFAULT_WRITE_CONCURRENCY, LeaseOptions,
    RegisterOptions, Registration, RegistrationState, Registry, RegistryBuilder, RegistryCounts,
    RegistryStats,
};
pub use ring::{DEFAULT_VNODES, MAX_VNODES, PROBES, Ring, hash_key, probes};
pub use select::{SelectedChanges, Selection, Selector, ZONE_KEY};
pub use source::{BACKEND_PRECEDENCE, BACKEND_SOURCE, SourceHandle, StaticSource};
