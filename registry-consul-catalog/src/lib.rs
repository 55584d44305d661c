#![doc = include_str!("../README.md")]

mod mirror;
mod source;

pub use mirror::{
    CatalogMirror, DEREGISTER_AFTER, LEASE_SERVICE, MirrorCounts, REAP_INTERVAL, REMOVAL_WAIT,
};
pub use source::{CatalogCounts, CatalogHealth, CatalogSource, CatalogSourceBuilder};
