//! A deterministic simulator for the registry's engine, in the spirit of FoundationDB's
//! simulation testing and TigerBeetle's VOPR: one seed is one reproducible run in virtual time.
//!
//! A run has [`PROCESSES`](schedule::PROCESSES) processes (each a [`Registry`] with its own
//! connection, and a discovery of everything into its directory) against one
//! [`MemoryBackend`](registry_memory::MemoryBackend), and plays a schedule generated from the seed:
//! registrations (with and without delay, with takeover), updates, offline/online, drains,
//! deregistrations, discoveries, shutdowns, crashes and restarts, and faults (latency and hung
//! calls per process, a process cut off, its lease revoked, keys deleted or overwritten by
//! someone else, history compacted, watches dropped).
//!
//! Checked while it plays: every command is answered within
//! [`COMMAND_BOUND`](world::COMMAND_BOUND) of virtual time; no process makes more than
//! [`MAX_CALLS_PER_SECOND`](faults::MAX_CALLS_PER_SECOND) backend calls in a virtual second, and
//! virtual time never stands still (both are busy loops). Checked after every fault healed and
//! [`SETTLE`](world::SETTLE) passed: every handle's state agrees with what the backend holds, every
//! directory equals it, the backend holds nothing no live process registered, and an id in
//! conflict is held by a live owner (else it went back to its handle).
//!
//! **Why tokio's paused time** rather than a simulation crate: the engine runs on tokio and the
//! memory backend already keeps its leases on tokio's clock, so a current-thread runtime with
//! paused time runs the real engine, unchanged, in virtual time (time jumps to the next timer
//! whenever every task waits). madsim would need the whole dependency tree built under its own
//! cfg; turmoil simulates sockets, which the memory backend does not use. The schedule, the
//! faults and the engine's jitter (the thread's `fastrand` generator) come from the seed; what is
//! not seeded is the order in which tokio's unbiased `select!` polls its branches (that needs
//! tokio's unstable cfg), so a failing seed is confirmed by running it again while shrinking.
//!
//! A failure prints a shortened schedule that still fails (see [`shrink`]) and how to replay it:
//! `SIM_REPLAY=SEED:I,J,K` (the indexes of the seed's steps kept).
//!
//! [`Registry`]: registry_engine::Registry

pub mod alarm;
pub mod faults;
pub mod schedule;
pub mod shrink;
pub mod world;

pub use schedule::Schedule;
pub use world::{Failure, Outcome, run};
