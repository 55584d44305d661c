#![doc = include_str!("../README.md")]

pub mod client;
pub mod message;
pub mod msgpack;
pub mod worker;

pub use client::{Client, Response};
pub use message::{Address, Message};
pub use msgpack::Value;
pub use worker::{Reply, ServiceConfig, ServiceError, Worker};

/// The longest heartbeat, stop timeout or call timeout used (ten years of 365 days): longer values
/// are lowered to it, so that no deadline computed from them (`Instant::now() + d`, four
/// heartbeats of silence) can overflow.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);
