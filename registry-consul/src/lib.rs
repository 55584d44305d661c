#![doc = include_str!("../README.md")]

mod backend;
mod catalog;
mod config;
mod http;
mod keys;

pub use backend::ConsulBackend;
pub use catalog::CatalogStats;
pub use config::ConsulBuilder;
