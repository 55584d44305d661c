//! Every public path of the facade as of 0.2.0 (before the contract and the engine became two
//! crates) still names an item, so that users' `use` lines compile unchanged. `cargo
//! semver-checks` does not see items the facade re-exports from other crates, so this file is the
//! check: it fails to compile when a path goes.
//!
//! Paths that did change are listed in docs/API.md: the Consul catalog mirror moved from the
//! Consul backend to `registry::consul::CatalogMirror` (an engine add-on), so
//! `ConsulBuilder::catalog` and `ConsulBackend::catalog_stats` are gone; `CatalogStats` stays as
//! a deprecated alias of `MirrorCounts`.

#![allow(unused_imports)]

use std::any::type_name;

// The crate root: the contract and the engine's most used types.
use registry::{
    Backend, Bytes, Capabilities, CondOutcome, Condition, Directory, Error, ErrorKind, Event,
    EventKind, Instance, InstanceState, KeyValue, Lease, LeaseId, Listing, Registration,
    RegistrationState, Registry, Result, Revision, SCHEMES, WatchStream, connect,
};
// The contract's modules.
use registry::backend::{Backend as _, Capabilities as _, CondOutcome as _, Condition as _};
use registry::config::{
    DurationError, MAX_DURATION, check_duration, check_max_duration, clamp_duration,
    parse_duration, percent_decode, try_parse_duration,
};
use registry::error::{Error as _, ErrorKind as _, Result as _};
use registry::key::{
    key_matches, normalize_prefix, prefix_range_end, validate_key, validate_prefix, validate_value,
};
use registry::lease::{Lease as _, LeaseId as _};
use registry::redact::{MASK, Secrets, redact_url, secrets_in_url};
use registry::watch::{Event as _, EventKind as _, KeyValue as _, Listing as _, WatchStream as _};
// The engine.
use registry::engine::{
    APPLY_DELAY_BUCKETS, AllChanges, ApplyDelay, BACKEND_PRECEDENCE, BACKEND_SOURCE, Backoff,
    Change, ChangeKind, Changes, DEFAULT_HEARTBEAT, DEFAULT_JOURNAL_CAPACITY, DEFAULT_NAMESPACE,
    DEFAULT_TTL, DEFAULT_VNODES, DEFAULT_WEIGHT, DEFAULT_WRITE_CONCURRENCY, DirectoryBuilder,
    DirectoryChange, DirectoryEvent, Discovery, DiscoveryCounts, DiscoveryOptions, DispatchError,
    DispatchLayer, DispatchService, Dispatcher, FORMAT_VERSION, Failover, InstanceMap, Instances,
    InstancesIter, LeaseOptions, MAX_ID_LEN, MAX_SERVICE_LEN, MAX_VNODES, MAX_WEIGHT, PROBES,
    Probe, ProbeOptions, RegisterOptions, RegistryBuilder, RegistryCounts, RegistryStats, Resync,
    ResyncReason, Ring, Scope, SelectedChanges, Selection, Selector, ServiceSnapshot, SourceHandle,
    StaticSource, TcpProbe, ZONE_KEY, hash_key, probes, validate_id, validate_namespace,
    validate_service,
};
use registry::engine::{
    Directory as _, Instance as _, InstanceState as _, Registration as _, RegistrationState as _,
    Registry as _,
};
// The backends, each behind its feature.
#[cfg(feature = "consul")]
use registry::consul::{
    CatalogCounts, CatalogHealth, CatalogSource, CatalogSourceBuilder, ConsulBackend, ConsulBuilder,
};
#[cfg(feature = "etcd")]
use registry::etcd::{EtcdBackend, EtcdBuilder};
#[cfg(feature = "memory")]
use registry::memory::{DEFAULT_HISTORY, MemoryBackend, MemoryBuilder, OperationCounts};
#[cfg(feature = "redis")]
use registry::redis::{RedisBackend, RedisBuilder};
#[cfg(any(feature = "etcd", feature = "consul", feature = "redis"))]
use registry::tls::tls_failure;
#[cfg(feature = "tonic")]
use registry::tonic::{Channels, KeyedChannel, endpoint, set_key};

/// The root's engine types are the engine's own (one type under two paths, not two types).
#[test]
fn root_types_are_the_engines() {
    assert_eq!(
        type_name::<Instance>(),
        type_name::<registry::engine::Instance>()
    );
    assert_eq!(
        type_name::<Registry>(),
        type_name::<registry::engine::Registry>()
    );
    assert_eq!(
        type_name::<Directory>(),
        type_name::<registry::engine::Directory>()
    );
    assert_eq!(
        type_name::<RegistrationState>(),
        type_name::<registry::engine::RegistrationState>()
    );
    assert_eq!(registry::engine::DEFAULT_NAMESPACE, "registry");
}

/// The deprecated name of the mirror's counts is the same type.
#[cfg(feature = "consul")]
#[test]
#[allow(deprecated)]
fn catalog_stats_is_mirror_counts() {
    assert_eq!(
        type_name::<registry::consul::CatalogStats>(),
        type_name::<registry::consul::MirrorCounts>()
    );
}
