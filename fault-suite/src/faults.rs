//! The faults: how each is injected and healed, and the bound within which the scene must converge
//! after the heal.

use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::scene::Scene;
use crate::server::{Backend, Server, Setup};

/// A fault of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// One instance's key deleted through the truth client.
    DeleteKey,
    /// The whole namespace deleted through the truth client.
    DeleteNamespace,
    /// The server replaced by an empty one on the same host port.
    RestartEmpty,
    /// A snapshot taken, the scene changed (a registrar replaced), the snapshot restored.
    RestoreSnapshot,
    /// A registering process SIGSTOPped for longer than its TTL, then SIGCONT.
    StopRegistrar,
    /// The server's client port black-holed (iptables in its network namespace) for longer than
    /// the TTL.
    NetworkCut,
    /// Discoverers paused, a registrar replaced, history compacted (etcd) / the event stream
    /// trimmed (Redis), discoverers resumed.
    CompactUnderChurn,
    /// etcd: the leader of a 3-member cluster killed for longer than the TTL, then started again.
    KillLeader,
    /// Redis: a replica detached (promoted) while the primary kept changing, then the primary
    /// killed and the clients' address switched to the promoted replica.
    PromoteLaggingReplica,
    /// Consul: the processes' token loses key read (and write) permission for longer than the
    /// TTL, then gets it back.
    RevokeRead,
}

impl Fault {
    /// Every fault, in priority order.
    pub const ALL: [Fault; 10] = [
        Fault::DeleteKey,
        Fault::DeleteNamespace,
        Fault::RestartEmpty,
        Fault::RestoreSnapshot,
        Fault::StopRegistrar,
        Fault::NetworkCut,
        Fault::CompactUnderChurn,
        Fault::KillLeader,
        Fault::PromoteLaggingReplica,
        Fault::RevokeRead,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::DeleteKey => "delete-key",
            Fault::DeleteNamespace => "delete-namespace",
            Fault::RestartEmpty => "restart-empty",
            Fault::RestoreSnapshot => "restore-snapshot",
            Fault::StopRegistrar => "sigstop-registrar",
            Fault::NetworkCut => "network-cut",
            Fault::CompactUnderChurn => "compact-under-churn",
            Fault::KillLeader => "kill-leader",
            Fault::PromoteLaggingReplica => "promote-lagging-replica",
            Fault::RevokeRead => "revoke-read",
        }
    }

    /// Whether it applies to `b`.
    pub fn applies(self, b: Backend) -> bool {
        match self {
            Fault::CompactUnderChurn => b != Backend::Consul,
            Fault::KillLeader => b == Backend::Etcd,
            Fault::PromoteLaggingReplica => b == Backend::Redis,
            Fault::RevokeRead => b == Backend::Consul,
            _ => true,
        }
    }

    /// The server setup it needs.
    pub fn setup(self, b: Backend) -> Setup {
        match (self, b) {
            (Fault::KillLeader, Backend::Etcd) => Setup::EtcdCluster,
            (Fault::PromoteLaggingReplica, Backend::Redis) => Setup::RedisReplica,
            (Fault::RevokeRead, Backend::Consul) => Setup::ConsulAcl,
            _ => Setup::Single,
        }
    }

    /// Whether it works on a [`Setup::Single`] server (the seeded mode's long-lived scene).
    pub fn on_single(self) -> bool {
        matches!(
            self,
            Fault::DeleteKey
                | Fault::DeleteNamespace
                | Fault::RestartEmpty
                | Fault::RestoreSnapshot
                | Fault::StopRegistrar
                | Fault::NetworkCut
                | Fault::CompactUnderChurn
        )
    }

    /// The bound within which the scene must converge after the heal, for a scene with `ttl` and
    /// `heartbeat`.
    pub fn bound(self, ttl: Duration, heartbeat: Duration) -> Duration {
        let s = Duration::from_secs;
        match self {
            // The keeper rewrites its keys within a heartbeat; watchers follow.
            Fault::DeleteKey | Fault::DeleteNamespace => heartbeat * 2 + s(3),
            // Reconnect, new lease, rewrite.
            Fault::RestartEmpty => ttl + s(10),
            // Restored leases of processes that are gone must expire (Consul ends a session
            // after up to twice its TTL) and the rolled-back ones be noticed.
            Fault::RestoreSnapshot => ttl * 2 + s(10),
            Fault::StopRegistrar | Fault::NetworkCut => ttl + s(10),
            Fault::CompactUnderChurn => s(10),
            Fault::KillLeader => s(15),
            Fault::PromoteLaggingReplica => ttl * 2 + s(10),
            Fault::RevokeRead => ttl + s(10),
        }
    }
}

/// What the injection reports.
pub struct Injected {
    /// When the fault healed (the bound runs from here).
    pub healed: Instant,
    /// Invariant violations seen while the fault lasted (only those that must hold even then).
    pub during: Vec<String>,
}

/// Injects `fault` into a converged scene and heals it.
pub async fn inject(
    fault: Fault,
    server: &mut Server,
    scene: &mut Scene,
) -> Result<Injected, String> {
    let truth = server.truth();
    let ns = scene.cfg.namespace.clone();
    let svc = scene.cfg.service.clone();
    let ttl = scene.cfg.ttl;
    // Longer than the TTL, and than twice the TTL: Consul ends a session only after up to 2 x TTL.
    let hold = ttl * 2 + Duration::from_secs(2);
    let mut during = Vec::new();
    match fault {
        Fault::DeleteKey => {
            let victim = scene
                .registrars
                .first()
                .and_then(|n| n.ids.first())
                .cloned()
                .ok_or("no registrar")?;
            truth.delete_key(&ns, &svc, &victim).await?;
        }
        Fault::DeleteNamespace => truth.delete_namespace(&ns).await?,
        Fault::RestartEmpty => {
            server.replace_fresh(0).await?;
        }
        Fault::RestoreSnapshot => {
            server.snapshot().await?;
            // The world moves on after the snapshot: a registrar leaves (deregistering) and a new
            // one comes, so the snapshot holds a phantom and lacks live registrations.
            let each = scene.registrars.first().map_or(2, |n| n.ids.len());
            scene.retire_registrar(0).await?;
            scene.add_registrar(each)?;
            wait_registered(scene, &truth, Duration::from_secs(20)).await?;
            server.restore().await?;
            // A process that starts right after the rollback is handed ids (lease, revision) the
            // server already handed out before it forgot them.
            scene.add_registrar(each)?;
        }
        Fault::StopRegistrar => {
            let n = scene.registrars.first().ok_or("no registrar")?;
            n.signal("STOP").await?;
            sleep(hold).await;
            // The fault must have bitten: the stopped process's leases expired on the server.
            let held = truth.ids(&ns, &svc).await;
            n.signal("CONT").await?;
            let held = held?;
            if n.ids.iter().any(|id| held.contains(id)) {
                return Err(format!(
                    "the fault did not bite: {:?} still on the server after {hold:?} stopped",
                    n.ids
                ));
            }
        }
        Fault::NetworkCut => {
            server.cut_network(0).await?;
            sleep(Duration::from_secs(1)).await;
            // The fault must have bitten: the server no longer answers on the clients' port.
            let answered = truth.ping().await;
            sleep(hold.saturating_sub(Duration::from_secs(1))).await;
            server.heal_network(0).await?;
            if answered {
                return Err(
                    "the network cut did not take effect (the server still answered)".into(),
                );
            }
        }
        Fault::CompactUnderChurn => {
            for d in &scene.discoverers {
                d.signal("STOP").await?;
            }
            let r = async {
                let each = scene.registrars.first().map_or(2, |n| n.ids.len());
                scene.retire_registrar(0).await?;
                scene.add_registrar(each)?;
                wait_registered(scene, &truth, Duration::from_secs(20)).await?;
                match server.backend {
                    Backend::Etcd => truth.etcd_compact().await.map(drop),
                    Backend::Redis => truth.redis_trim_stream().await.map(drop),
                    Backend::Consul => Err("no compaction on Consul".to_owned()),
                }
            }
            .await;
            for d in &scene.discoverers {
                d.signal("CONT").await?;
            }
            r?;
        }
        Fault::KillLeader => {
            let (leader, members) = truth.etcd_leader().await?;
            let ep = members
                .iter()
                .find(|(_, id)| *id == leader)
                .map(|(ep, _)| ep.clone())
                .ok_or("the leader is none of the endpoints")?;
            let i = server
                .members
                .iter()
                .position(|m| format!("127.0.0.1:{}", m.host_port) == ep)
                .ok_or("leader endpoint unknown")?;
            server.kill(i).await?;
            sleep(hold).await;
            server.start_again(i).await?;
        }
        Fault::PromoteLaggingReplica => {
            // Make sure the replica has the scene, then detach it: from now on it lags.
            sleep(Duration::from_secs(1)).await;
            let replica = server.member_truth(1);
            replica.redis_cmd(&["REPLICAOF", "NO", "ONE"]).await?;
            let each = scene.registrars.first().map_or(2, |n| n.ids.len());
            scene.retire_registrar(0).await?;
            scene.add_registrar(each)?;
            wait_registered(scene, &truth, Duration::from_secs(20)).await?;
            server.kill(0).await?;
            let to = format!("127.0.0.1:{}", server.members[1].host_port);
            server.proxy.as_ref().ok_or("no proxy")?.switch(to);
        }
        Fault::RevokeRead => {
            server.consul_set_key_policy("deny").await?;
            // The fault must have bitten: the processes' token sees nothing any more.
            sleep(Duration::from_millis(500)).await;
            let seen = server.node_truth().ids(&ns, &svc).await;
            if !matches!(&seen, Ok(s) if s.is_empty()) && seen.is_ok() {
                return Err(format!(
                    "revoking read did not take effect: the token still reads {seen:?}"
                ));
            }
            let until = Instant::now() + hold;
            while Instant::now() < until {
                // A directory must never pass an unreadable prefix off as an empty service.
                for (k, d) in scene.discoverers.iter().enumerate() {
                    if let Some(v) = d.view().view {
                        if v.synced && !v.stale && v.ids.is_empty() {
                            let m = format!(
                                "discoverer {k} shows an empty, fresh directory while the token cannot read"
                            );
                            if !during.contains(&m) {
                                during.push(m);
                            }
                        }
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
            server.consul_set_key_policy("write").await?;
        }
    }
    Ok(Injected {
        healed: Instant::now(),
        during,
    })
}

/// Waits until every live registrar says `registered` for all its ids and the truth holds them.
async fn wait_registered(
    scene: &Scene,
    truth: &crate::truth::Truth,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let held = truth
            .ids(&scene.cfg.namespace, &scene.cfg.service)
            .await
            .unwrap_or_default();
        let all = scene.registrars.iter().all(|n| {
            let v = n.view();
            n.ids
                .iter()
                .all(|id| held.contains(id) && v.states.get(id).is_some_and(|s| s == "registered"))
        });
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the scene's registrations were not all in place within {within:?} (setup step)"
            ));
        }
        sleep(Duration::from_millis(100)).await;
    }
}
