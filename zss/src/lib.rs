#![doc = include_str!("../README.md")]

pub mod client;
pub mod message;
pub mod msgpack;
pub mod worker;

pub use client::{Client, Response};
pub use message::{Address, Message};
pub use msgpack::Value;
pub use worker::{Reply, ServiceConfig, ServiceError, Worker};
