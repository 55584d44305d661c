//! The scenarios, one async function per promise of the backend contract. Each takes a fresh
//! [`Fixture`](crate::Fixture) and panics, with a message naming the broken promise, on failure.

mod conditional;
mod kv;
mod lease;
mod watch;

pub use conditional::*;
pub use kv::*;
pub use lease::*;
pub use watch::*;
