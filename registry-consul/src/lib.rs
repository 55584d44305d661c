#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod http;
mod keys;

pub use backend::ConsulBackend;
pub use config::ConsulBuilder;
