//! Lease identifiers and grants.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// An opaque lease identifier, as issued by one backend.
///
/// Its text form is backend-specific (a number for etcd and memory, a session UUID for Consul) and
/// only meaningful to the backend that issued it. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(Arc<str>);

impl LeaseId {
    /// Wraps a backend's own lease identifier.
    pub fn new(id: impl AsRef<str>) -> Self {
        LeaseId(Arc::from(id.as_ref()))
    }

    /// The backend's text form of the identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({})", self.0)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A granted lease: its identifier and the TTL the backend actually granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The identifier to pass to keep-alive, revoke and put.
    pub id: LeaseId,
    /// The TTL the backend granted. It is at least the backend's minimum TTL and may be longer than
    /// requested (rounded up to the backend's granularity or raised to its minimum).
    pub ttl: Duration,
}
