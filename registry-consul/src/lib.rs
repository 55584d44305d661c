#![doc = include_str!("../README.md")]

mod backend;
mod catalog;
mod catalog_source;
mod config;
mod http;
mod keys;

pub use backend::ConsulBackend;
pub use catalog::CatalogStats;
pub use catalog_source::{CatalogCounts, CatalogHealth, CatalogSource, CatalogSourceBuilder};
pub use config::ConsulBuilder;
