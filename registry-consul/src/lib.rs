#![doc = include_str!("../README.md")]

mod agent;
mod backend;
mod config;
mod http;
mod keys;

pub use agent::{AgentAnswer, ConsulAgent};
pub use backend::ConsulBackend;
pub use config::{ConsulBuilder, catalog_option};
