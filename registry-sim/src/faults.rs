//! The faults of one process's connection: a [`Hook`] on a
//! [`Forward`](conformance_tests::forward::Forward) backend in front of the shared memory backend.
//! It also counts the process's calls per virtual second (the busy-loop check) and remembers the
//! leases the process keeps alive (so that a fault can revoke them).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use conformance_tests::forward::{Call, Hook};
use futures::StreamExt;
use registry_core::{Error, LeaseId, Result, WatchStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::alarm::Alarm;

/// How long a hung call waits before it reaches the backend.
pub const HANG: Duration = Duration::from_secs(3);

/// The most backend calls one process may make in one virtual second. A process with every id
/// of a run, verifying each at every heartbeat and registering as fast as the schedule asks, makes
/// far fewer; a busy loop makes thousands.
pub const MAX_CALLS_PER_SECOND: u64 = 300;

/// One process's connection faults (see the module docs).
#[derive(Debug)]
pub struct Faults {
    proc: usize,
    start: Instant,
    latency_ms: AtomicU32,
    hang: AtomicU32,
    cut: watch::Sender<bool>,
    /// (virtual second, calls in it).
    rate: Mutex<(u64, u64)>,
    calls: AtomicU64,
    leases: Mutex<BTreeSet<LeaseId>>,
    alarm: Arc<Alarm>,
}

impl Faults {
    pub(crate) fn new(proc: usize, alarm: Arc<Alarm>) -> Faults {
        Faults {
            proc,
            start: Instant::now(),
            latency_ms: AtomicU32::new(0),
            hang: AtomicU32::new(0),
            cut: watch::channel(false).0,
            rate: Mutex::new((0, 0)),
            calls: AtomicU64::new(0),
            leases: Mutex::new(BTreeSet::new()),
            alarm,
        }
    }

    pub(crate) fn set_latency(&self, ms: u32) {
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    pub(crate) fn hang(&self, calls: u32) {
        self.hang.store(calls, Ordering::SeqCst);
    }

    pub(crate) fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Heals every fault of this connection.
    pub(crate) fn heal(&self) {
        self.set_latency(0);
        self.hang(0);
        self.set_cut(false);
    }

    /// The leases this process kept alive so far.
    pub(crate) fn leases(&self) -> Vec<LeaseId> {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Every backend call this process made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.alarm.progress();
        let second = self.start.elapsed().as_secs();
        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        if rate.0 != second {
            *rate = (second, 0);
        }
        rate.1 += 1;
        if rate.1 == MAX_CALLS_PER_SECOND + 1 {
            self.alarm.raise(format!(
                "busy loop: p{} made more than {MAX_CALLS_PER_SECOND} backend calls in virtual second {second}",
                self.proc
            ));
        }
    }
}

#[async_trait]
impl Hook for Faults {
    async fn before(&self, call: &Call<'_>) -> Result<()> {
        self.count();
        if let Call::KeepAlive { lease } = call {
            self.leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((*lease).clone());
        }
        let latency = self.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency.into())).await;
        }
        let hung = self
            .hang
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hung {
            tokio::time::sleep(HANG).await;
        }
        if *self.cut.borrow() {
            return Err(Error::unavailable(format!(
                "p{} is cut off from the backend (simulated)",
                self.proc
            )));
        }
        Ok(())
    }

    fn stream(&self, stream: WatchStream) -> WatchStream {
        let mut cut = self.cut.subscribe();
        let proc = self.proc;
        let cut_off = async move {
            let _ = cut.wait_for(|c| *c).await;
        };
        Box::pin(
            stream
                .take_until(Box::pin(cut_off))
                .chain(futures::stream::once(async move {
                    Err(Error::unavailable(format!(
                        "p{proc}'s watch ended: cut off from the backend (simulated)"
                    )))
                })),
        )
    }
}
