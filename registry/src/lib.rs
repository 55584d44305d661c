#![doc = include_str!("../README.md")]

mod connect;

pub use connect::{SCHEMES, connect};
pub use registry_core::*;

/// The in-process backend (feature `memory`).
#[cfg(feature = "memory")]
pub use registry_memory as memory;
