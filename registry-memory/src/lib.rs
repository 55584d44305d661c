#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod state;

pub use backend::{MemoryBackend, OperationCounts};
pub use config::{DEFAULT_HISTORY, MemoryBuilder};
pub use state::Checkpoint;
