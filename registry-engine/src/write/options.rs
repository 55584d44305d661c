//! Options of the write side: lease timing, per-registration options and their defaults.

use std::time::Duration;

use registry_core::backend::Backend;
use registry_core::config::check_duration;
use registry_core::error::{Error, Result};

/// The default TTL, 15 s (Pulse's baseline; see the crate documentation).
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// The default heartbeat, 5 s (Pulse's baseline).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How many registration writes a lease's keeper has in flight at once by default (see
/// [`RegistryBuilder::write_concurrency`](crate::RegistryBuilder::write_concurrency)).
pub const DEFAULT_WRITE_CONCURRENCY: usize = 64;

/// Lease timing: how long a registration outlives its last heartbeat, and how often to beat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// The lease TTL.
    pub ttl: Duration,
    /// The keep-alive period; must be shorter than the TTL.
    pub heartbeat: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: DEFAULT_TTL,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

impl LeaseOptions {
    /// Checks the options against the backend's declared limits (and
    /// [`MAX_DURATION`](registry_core::config::MAX_DURATION), whatever the backend declares, so that no
    /// deadline computed from them can overflow).
    pub(crate) fn validate(&self, backend: &dyn Backend) -> Result<()> {
        check_duration("TTL", self.ttl)?;
        check_duration("heartbeat", self.heartbeat)?;
        let caps = backend.capabilities();
        if self.ttl < caps.min_ttl {
            return Err(Error::invalid(format!(
                "TTL {:?} is below the backend's minimum TTL {:?}",
                self.ttl, caps.min_ttl
            )));
        }
        if self.ttl > caps.max_ttl {
            return Err(Error::invalid(format!(
                "TTL {:?} is above the backend's maximum TTL {:?}",
                self.ttl, caps.max_ttl
            )));
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.ttl {
            return Err(Error::invalid(format!(
                "heartbeat {:?} must be positive and shorter than the TTL {:?}",
                self.heartbeat, self.ttl
            )));
        }
        Ok(())
    }
}

/// Per-registration options.
#[derive(Clone, Debug, Default)]
pub struct RegisterOptions {
    pub(crate) delay: Option<Duration>,
    pub(crate) dedicated: Option<LeaseOptions>,
    pub(crate) takeover: bool,
}

impl RegisterOptions {
    /// Default options: the registry's delay and its shared lease.
    pub fn new() -> Self {
        RegisterOptions::default()
    }

    /// Waits this long before the first write (as Pulse's `delay` does), overriding the registry's.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Gives this registration a lease of its own, with its own TTL and heartbeat, instead of the
    /// registry's shared lease.
    pub fn dedicated_lease(mut self, lease: LeaseOptions) -> Self {
        self.dedicated = Some(lease);
        self
    }

    /// Whether the first write may replace the same instance id held by another live owner.
    ///
    /// By default registering an id that another process's live lease holds is refused with
    /// [`ErrorKind::Conflict`](registry_core::ErrorKind::Conflict) (unless the stored value is byte for byte the one being registered:
    /// that is the same instance restarted before its old lease ran out, and it is taken over).
    /// With `takeover`, the first write replaces it; the other owner's handle then reports
    /// [`RegistrationState::Conflict`](crate::RegistrationState::Conflict) and does not write the id back. Only the first write takes
    /// over: after that, whoever holds the id keeps it, so two processes never fight over it.
    pub fn takeover(mut self, takeover: bool) -> Self {
        self.takeover = takeover;
        self
    }
}
