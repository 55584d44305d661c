#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod connect;
mod error;
mod tls;

pub use backend::EtcdBackend;
pub use config::EtcdBuilder;
