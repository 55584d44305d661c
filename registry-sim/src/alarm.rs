//! The alarm: how anything that sees a violation while a schedule plays (a busy loop, a stall)
//! stops the driver at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Raised by anything that sees a violation while the schedule plays (a busy loop, a stall);
/// the driver stops at once.
#[derive(Debug, Default)]
pub struct Alarm {
    raised: Mutex<Option<String>>,
    pub(crate) wake: Notify,
    pub(crate) progress: AtomicU64,
}

impl Alarm {
    pub(crate) fn raise(&self, what: String) {
        let mut raised = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        if raised.is_none() {
            *raised = Some(what);
        }
        drop(raised);
        self.wake.notify_one();
    }

    pub(crate) fn progress(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn raised(&self) -> Option<String> {
        self.raised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
