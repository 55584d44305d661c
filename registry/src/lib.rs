#![doc = include_str!("../README.md")]

mod connect;

/// The workspace README's snippets (its guide), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub use connect::{SCHEMES, connect, connect_url};
pub use registry_core::*;

/// The engine that runs unchanged over any [`Backend`]: register, discover, directory, routing and
/// dispatch (the `registry-engine` crate).
pub use registry_engine as engine;
pub use registry_engine::{
    Directory, Instance, InstanceState, Registration, RegistrationState, Registry,
};

/// The in-process backend (feature `memory`).
#[cfg(feature = "memory")]
pub use registry_memory as memory;

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub use registry_etcd as etcd;

/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub use registry_redis as redis;

/// Directory sources from DNS SRV records (feature `dns`): the `registry-dns` crate.
#[cfg(feature = "dns")]
pub use registry_dns as dns;

#[cfg(feature = "tonic")]
pub mod tonic;

/// The Consul backend, and Consul's catalog both ways (feature `consul`): the `registry-consul`
/// and `registry-consul-catalog` crates.
#[cfg(feature = "consul")]
pub mod consul {
    pub use registry_consul::*;
    pub use registry_consul_catalog::*;

    /// The former name of [`MirrorCounts`], from when the mirror was part of the backend.
    #[deprecated(note = "renamed MirrorCounts; the mirror is now CatalogMirror, an engine add-on")]
    pub type CatalogStats = MirrorCounts;
}
