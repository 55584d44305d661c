//! A registry's observer is told what its keeper did, in order, and deregistrations and shutdowns
//! wait for it to settle: what add-ons such as the Consul catalog mirror rely on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use registry_core::Backend;
use registry_engine::{
    Instance, InstanceState, RegistrationEvent, RegistrationObserver, RegistrationState, Registry,
};
use registry_memory::MemoryBackend;

#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<RegistrationEvent>>,
    settled: AtomicUsize,
}

#[async_trait]
impl RegistrationObserver for Recorder {
    fn observe(&self, event: &RegistrationEvent) {
        self.events.lock().unwrap().push(event.clone());
    }

    async fn settle(&self) {
        self.settled.fetch_add(1, Ordering::SeqCst);
    }
}

impl Recorder {
    /// The events so far, each as a short line.
    fn lines(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                RegistrationEvent::LeaseGranted { ttl, .. } => format!("granted {ttl:?}"),
                RegistrationEvent::Written { key, instance, .. } => {
                    format!("written {key} {:?}", instance.state)
                }
                RegistrationEvent::Removed { key } => format!("removed {key}"),
                RegistrationEvent::KeptAlive { .. } => "kept alive".to_owned(),
                RegistrationEvent::LeaseEnded { .. } => "ended".to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// The leases the events name, in order, without repeats.
    fn leases(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.events.lock().unwrap().iter() {
            let lease = match e {
                RegistrationEvent::LeaseGranted { lease, .. }
                | RegistrationEvent::Written { lease, .. }
                | RegistrationEvent::KeptAlive { lease }
                | RegistrationEvent::LeaseEnded { lease } => lease.to_string(),
                _ => continue,
            };
            if out.last() != Some(&lease) && !out.contains(&lease) {
                out.push(lease);
            }
        }
        out
    }
}

fn registry(backend: Arc<dyn Backend>, recorder: &Arc<Recorder>) -> Registry {
    Registry::builder(backend)
        .ttl(Duration::from_secs(10))
        .heartbeat(Duration::from_secs(3))
        .observer(recorder.clone())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_observer_sees_each_step_of_the_keeper_in_order_and_removals_settle() {
    let recorder = Arc::new(Recorder::default());
    let r = registry(Arc::new(MemoryBackend::new()), &recorder);
    let a = r
        .register(Instance::new("web", "a").addr("10.0.0.1:80"))
        .await
        .unwrap();
    let b = r
        .register(Instance::new("web", "b").addr("10.0.0.2:80"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    b.set_online(false).await.unwrap();
    assert_eq!(recorder.settled.load(Ordering::SeqCst), 0);
    a.deregister().await.unwrap();
    assert_eq!(
        recorder.settled.load(Ordering::SeqCst),
        1,
        "a deregistration waits for the observer"
    );
    r.shutdown().await.unwrap();
    assert_eq!(
        recorder.settled.load(Ordering::SeqCst),
        2,
        "so does a shutdown"
    );
    assert_eq!(
        recorder.lines(),
        [
            "granted 10s",
            "written registry/web/a Online",
            "written registry/web/b Online",
            "kept alive",
            "written registry/web/b Offline",
            "removed registry/web/a",
            "ended",
        ]
    );
    assert_eq!(recorder.leases().len(), 1, "one shared lease");
    drop(b);
}

/// A lease the backend reports gone ends for the observer too, and the registrations come back
/// under a new lease, which the observer sees granted and written.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_ends_and_its_registrations_are_written_under_the_next() {
    let store = Arc::new(MemoryBackend::new());
    let recorder = Arc::new(Recorder::default());
    let r = registry(store.clone(), &recorder);
    let a = r
        .register(Instance::new("web", "a").addr("10.0.0.1:80"))
        .await
        .unwrap();
    let RegistrationState::Registered { lease, .. } = a.state() else {
        panic!("registered: {}", a.state());
    };
    // Someone revokes our lease (an operator, or a server that lost it).
    store.revoke(&lease).await.unwrap();
    let mut states = a.watch_state();
    tokio::time::timeout(
        Duration::from_secs(30),
        states.wait_for(
            |s| matches!(s, RegistrationState::Registered { lease: l, .. } if *l != lease),
        ),
    )
    .await
    .expect("registered again under a new lease")
    .unwrap();
    assert_eq!(
        recorder.lines(),
        [
            "granted 10s",
            "written registry/web/a Online",
            "ended",
            "granted 10s",
            "written registry/web/a Online",
        ]
    );
    assert_eq!(recorder.leases().len(), 2);
    assert_eq!(a.instance().state, InstanceState::Online);
}

/// Without an observer nothing changes, and a registry may be shared by handles that outlive it.
#[tokio::test(start_paused = true)]
async fn a_registry_without_observer_deregisters_as_before() {
    let r = Registry::new(Arc::new(MemoryBackend::new())).unwrap();
    let a = r
        .register(Instance::new("web", "a").addr("10.0.0.1:80"))
        .await
        .unwrap();
    drop(r);
    a.deregister().await.unwrap();
}
