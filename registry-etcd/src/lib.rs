#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod error;

pub use backend::EtcdBackend;
pub use config::EtcdBuilder;
