//! What a source tells of itself: its counters ([`DnsCounts`]) and where following each service
//! stands ([`DnsStatus`]), written by its pollers and read through its handle.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

registry_core::counters! {
    /// A source's counters, shared by its pollers.
    pub(crate) struct Counters =>
    /// Counters of a [`DnsSource`](crate::DnsSource), over every name it follows.
    pub struct DnsCounts {
        /// SRV queries sent.
        queries,
        /// Queries answered (records, NXDOMAIN or no records).
        answers,
        /// Queries that failed (timeout, SERVFAIL, REFUSED, unreachable, ...): the view went or
        /// stayed stale.
        errors,
        /// Answers that listed nothing (NXDOMAIN, no SRV records, or none usable).
        empty_answers,
        /// SRV records that could not become an instance (a target without an address, a duplicate
        /// target and port, an invalid instance, a target whose lookup failed and that was not shown
        /// before), counted in every answer that has them.
        skipped_records,
        /// Lookups of an SRV target's address that failed (timeout, SERVFAIL, ...) in an answer that
        /// did come: the target's records keep the instance shown before (or are skipped if there was
        /// none), the others are updated, and the name is queried again at the floor.
        target_errors,
        /// Answers that changed what the directory shows.
        changes,
    }
}

/// Where following one service stands. From [`DnsSource::status`](crate::DnsSource::status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsStatus {
    /// The SRV name followed.
    pub srv_name: String,
    /// The instances the last answer listed.
    pub instances: usize,
    /// The TTL of the last answer (the shortest of its records; `None` before the first or when
    /// the answer carried none).
    pub last_ttl: Option<Duration>,
    /// The wait chosen after the last query: from the TTL after an answer, from the back-off
    /// after a failure.
    pub next_query_in: Duration,
    /// Failed queries since the last answer.
    pub consecutive_errors: u32,
    /// Why the last query failed, if it did.
    pub last_error: Option<String>,
    /// The source's revision of the service: how many answers changed it.
    pub revision: u64,
}

pub(crate) struct Shared {
    pub(crate) counts: Counters,
    pub(crate) status: Mutex<HashMap<String, DnsStatus>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
