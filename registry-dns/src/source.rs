//! [`DnsSource`]: the handle of a started source, which reads its counters and status and stops
//! it. [`DnsSource::builder`] stands with the builder, in `builder.rs`.

use std::fmt;
use std::sync::Arc;

#[cfg(doc)]
use registry_engine::Directory;
use registry_engine::SourceHandle;
use tokio::task::JoinSet;

use crate::status::{DnsCounts, DnsStatus, Shared, lock};

/// Follows SRV names and publishes what they list into a [`Directory`]. From
/// [`DnsSource::builder`].
///
/// Dropping it stops the polling; what it published stays in the directory (as when a
/// [`Discovery`](registry_engine::Discovery) is dropped) until
/// [`withdraw_all`](Self::withdraw_all).
pub struct DnsSource {
    /// One poller per followed name, aborted with the source.
    pub(crate) tasks: JoinSet<()>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) handle: Arc<SourceHandle>,
}

impl fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSource")
            .field("name", &self.handle.name())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl DnsSource {
    /// The source's name in the directory.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// What happened so far, over every name followed.
    pub fn counts(&self) -> DnsCounts {
        self.shared.counts.snapshot()
    }

    /// Where following `service` stands (`None` if this source does not follow it).
    pub fn status(&self, service: &str) -> Option<DnsStatus> {
        lock(&self.shared.status).get(service).cloned()
    }

    /// Stops polling and removes everything this source published.
    pub fn withdraw_all(mut self) {
        self.tasks.abort_all();
        self.handle.withdraw_all();
    }
}
