//! Property: after any sequence of membership changes, outages, dropped watches and compactions,
//! once things settle the directory equals the set of registered online instances.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use registry::engine::{Instance, Registration, Registry};
use registry::memory::MemoryBackend;
use registry::{Backend, ErrorKind};

const TTL: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
enum Op {
    /// Process `p` registers instance `id`.
    Register { p: usize, id: u8 },
    /// The handle of `id` is deregistered (awaited).
    Deregister { id: u8 },
    /// The handle of `id` is dropped (background deregistration).
    Drop { id: u8 },
    /// `id` goes online or offline.
    SetOnline { id: u8, online: bool },
    /// The backend becomes unreachable (until `Up`): the operations in between meet the outage.
    Down,
    /// The backend is reachable again.
    Up,
    /// Every open watch stream breaks.
    DropWatches,
    /// History up to now is compacted away.
    Compact,
    /// Time passes.
    Sleep { secs: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..8u8).prop_map(|(p, id)| Op::Register { p, id }),
        2 => (0..8u8).prop_map(|id| Op::Deregister { id }),
        1 => (0..8u8).prop_map(|id| Op::Drop { id }),
        2 => (0..8u8, any::<bool>()).prop_map(|(id, online)| Op::SetOnline { id, online }),
        1 => Just(Op::Down),
        1 => Just(Op::Up),
        1 => Just(Op::DropWatches),
        1 => Just(Op::Compact),
        2 => (0..25u8).prop_map(|secs| Op::Sleep { secs }),
    ]
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let backend = MemoryBackend::builder().history_limit(16).build();
    let mk = || {
        Registry::builder(Arc::new(backend.clone()))
            .ttl(TTL)
            .heartbeat(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let processes = [mk(), mk(), mk()];
    let observer = mk();
    let _discovery = observer.discover("web").await.unwrap();
    // id -> (handle, online)
    let mut live: BTreeMap<u8, (Registration, bool)> = BTreeMap::new();
    // Ids let go without a confirmed delete (see `Op::Register`).
    let mut unconfirmed: BTreeSet<u8> = BTreeSet::new();
    for op in ops {
        match op {
            Op::Register { p, id } => {
                if live.contains_key(&id) {
                    continue;
                }
                let inst = Instance::new("web", format!("i{id}")).addr(format!("10.0.0.{id}:80"));
                match processes[p].register(inst).await {
                    Ok(reg) => {
                        unconfirmed.remove(&id);
                        live.insert(id, (reg, true));
                    }
                    // Its previous owner let it go without a confirmed delete (dropped, or a
                    // deregistration that met an outage): until that delete lands, the key is
                    // held by the owner's live lease, and another process may not take it.
                    Err(e) if e.kind() == ErrorKind::Conflict && unconfirmed.contains(&id) => {}
                    Err(e) => return Err(TestCaseError::fail(format!("register i{id}: {e}"))),
                }
            }
            Op::Deregister { id } => {
                if let Some((reg, _)) = live.remove(&id) {
                    // May fail during an outage; it is then retried in the background.
                    if reg.deregister().await.is_err() {
                        unconfirmed.insert(id);
                    }
                }
            }
            Op::Drop { id } => {
                if live.remove(&id).is_some() {
                    unconfirmed.insert(id);
                }
            }
            Op::SetOnline { id, online } => {
                if let Some((reg, state)) = live.get_mut(&id) {
                    // A failed write is retried in the background until it lands.
                    let _ = reg.set_online(online).await;
                    *state = online;
                }
            }
            Op::Down => backend.set_unavailable(true),
            Op::Up => backend.set_unavailable(false),
            Op::DropWatches => backend.drop_watches(),
            Op::Compact => backend.compact(backend.revision()),
            Op::Sleep { secs } => tokio::time::sleep(Duration::from_secs(secs.into())).await,
        }
    }
    backend.set_unavailable(false);
    // Quiescence: long enough for recovery after the longest outage, retries and re-lists.
    tokio::time::sleep(TTL * 4).await;
    let want: BTreeSet<String> = live
        .iter()
        .filter(|(_, (_, online))| *online)
        .map(|(id, _)| format!("i{id}"))
        .collect();
    let got: BTreeSet<String> = observer
        .directory()
        .get("web")
        .iter()
        .map(|i| i.id.clone())
        .collect();
    prop_assert_eq!(
        &got,
        &want,
        "directory differs from the registered online set"
    );
    // The directory also agrees with the backend's own listing.
    let listed: BTreeSet<String> = backend
        .list("registry/web")
        .await
        .unwrap()
        .entries
        .iter()
        .map(|kv| kv.key.rsplit('/').next().unwrap().to_owned())
        .collect();
    let registered: BTreeSet<String> = live.keys().map(|id| format!("i{id}")).collect();
    prop_assert_eq!(
        listed,
        registered,
        "backend holds other instances than are registered"
    );
    prop_assert!(!observer.directory().is_stale("web"));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn directory_converges_to_the_registered_online_set(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(ops))?;
    }
}
