#![doc = include_str!("../README.md")]

pub mod backend;
pub mod config;
pub mod counters;
pub mod error;
pub mod key;
pub mod lease;
mod percent;
pub mod redact;
mod revision;
#[cfg(feature = "rustls")]
pub mod tls;
pub mod url;
pub mod watch;

pub use backend::{Backend, Capabilities, CondOutcome, CondPut, Condition, Revision};
pub use error::{Error, ErrorKind, Result};
pub use lease::{Lease, LeaseId};
pub use watch::{Event, EventKind, KeyValue, Listing, WatchStream};

/// Re-exported so that backends and users name the same `Bytes` type.
pub use bytes::Bytes;
