//! The short run: every fault once on every backend where it applies, each on a fresh scene (a
//! server of its own, three registering and two discovering `fault-node` processes).
//!
//! A fault whose server or capability is missing fails under `REGISTRY_TEST_REQUIRED=1`.

use std::path::Path;

use fault_suite::faults::Fault;
use fault_suite::run_one;
use fault_suite::server::Backend;

fn node() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_fault-node"))
}

macro_rules! faults {
    ($($name:ident: $backend:ident, $fault:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_one(Backend::$backend, Fault::$fault, node()).await;
            }
        )*
    };
}

faults! {
    etcd_delete_key: Etcd, DeleteKey;
    redis_delete_key: Redis, DeleteKey;
    consul_delete_key: Consul, DeleteKey;
    etcd_delete_namespace: Etcd, DeleteNamespace;
    redis_delete_namespace: Redis, DeleteNamespace;
    consul_delete_namespace: Consul, DeleteNamespace;
    etcd_restart_empty: Etcd, RestartEmpty;
    redis_restart_empty: Redis, RestartEmpty;
    consul_restart_empty: Consul, RestartEmpty;
    etcd_restore_snapshot: Etcd, RestoreSnapshot;
    redis_restore_snapshot: Redis, RestoreSnapshot;
    consul_restore_snapshot: Consul, RestoreSnapshot;
    etcd_sigstop_registrar: Etcd, StopRegistrar;
    redis_sigstop_registrar: Redis, StopRegistrar;
    consul_sigstop_registrar: Consul, StopRegistrar;
    etcd_network_cut: Etcd, NetworkCut;
    redis_network_cut: Redis, NetworkCut;
    consul_network_cut: Consul, NetworkCut;
    etcd_compact_under_churn: Etcd, CompactUnderChurn;
    redis_trim_under_churn: Redis, CompactUnderChurn;
    etcd_kill_leader: Etcd, KillLeader;
    redis_promote_lagging_replica: Redis, PromoteLaggingReplica;
    consul_revoke_read: Consul, RevokeRead;
    etcd_takeover_lease_loss: Etcd, TakeoverLeaseLoss;
    redis_takeover_lease_loss: Redis, TakeoverLeaseLoss;
    consul_takeover_lease_loss: Consul, TakeoverLeaseLoss;
    etcd_slow_backend: Etcd, SlowBackend;
    redis_slow_backend: Redis, SlowBackend;
    consul_slow_backend: Consul, SlowBackend;
    redis_sentinel_failover: Redis, SentinelFailover;
}

/// Every applicable (fault, backend) pair has a test above.
#[test]
fn every_fault_is_covered() {
    let src = include_str!("short.rs");
    for f in Fault::ALL {
        for b in Backend::ALL {
            if f.applies(b) {
                let needle = format!("{:?}, {:?};", b, f);
                assert!(src.contains(&needle), "no short test for {needle}");
            }
        }
    }
}
