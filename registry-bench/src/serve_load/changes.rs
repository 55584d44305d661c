//! The changes made during a run: registrations and deregistrations at a steady rate, each noted
//! with the time of the call, so that the SSE clients can tell how long each took to reach them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use registry::engine::{Instance, Registration, Registry};
use tokio::sync::watch;

/// Every change the driver made: `"insert/<service>/<id>"` or `"remove/<service>/<id>"` -> its index
/// and when the call that made it started.
#[derive(Default)]
pub(super) struct Changes {
    table: RwLock<HashMap<String, (u32, Instant)>>,
    next: AtomicUsize,
}

impl Changes {
    fn note(&self, key: String) {
        let mut t = self.table.write().unwrap();
        let idx = self.next.load(Ordering::SeqCst) as u32;
        t.insert(key, (idx, Instant::now()));
        self.next.store(idx as usize + 1, Ordering::SeqCst);
    }

    pub(super) fn lookup(&self, key: &str) -> Option<(u32, Instant)> {
        self.table.read().unwrap().get(key).copied()
    }

    pub(super) fn count(&self) -> usize {
        self.next.load(Ordering::SeqCst)
    }
}

/// Alternates registrations of new instances (kept 10 at a time) and deregistrations of the oldest,
/// `per_s` changes a second, until `stop`.
pub(super) async fn drive_changes(
    reg: Registry,
    services: usize,
    per_s: u32,
    changes: Arc<Changes>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_s);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alive: std::collections::VecDeque<(String, String, Registration)> = Default::default();
    let (mut n, mut failed) = (0usize, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if alive.len() >= 10 {
            let (svc, id, r) = alive.pop_front().unwrap();
            changes.note(format!("remove/{svc}/{id}"));
            if r.deregister().await.is_err() {
                failed += 1;
            }
        } else {
            let svc = format!("svc-{:02}", n % services);
            let id = format!("churn-{n:06}");
            n += 1;
            changes.note(format!("insert/{svc}/{id}"));
            let inst = Instance::new(&svc, &id)
                .addr(format!("10.200.{}.{}:8080", n / 250 % 250, n % 250))
                .meta("zone", "churn")
                .version("2.0.0");
            match reg.register(inst).await {
                Ok(r) => alive.push_back((svc, id, r)),
                Err(_) => failed += 1,
            }
        }
    }
    for (_, _, r) in alive {
        let _ = r.deregister().await;
    }
    failed
}
