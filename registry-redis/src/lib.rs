#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod connect;
mod error;
mod scripts;

pub use backend::RedisBackend;
pub use config::RedisBuilder;
