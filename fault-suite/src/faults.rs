//! The faults: how each is injected and healed, and the bound within which the scene must converge
//! after the heal.

use std::time::Duration;

use std::collections::BTreeSet;

use tokio::time::{Instant, sleep, sleep_until};

use crate::scene::{NodeView, Scene};
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
    /// A new process takes a registrar's ids over (`--takeover`); the old owner, in conflict, has
    /// its lease ended from outside (and must not spin); the new owner leaves and the old one must
    /// take its ids back, and leave cleanly at the end (issue 27 item 1).
    TakeoverLeaseLoss,
    /// The server answers every client about 1 s late (a delaying proxy) for longer than the TTL:
    /// no lease may run out (issue 27 item 2).
    SlowBackend,
    /// Redis under Sentinel (`redis+sentinel://`): `SENTINEL FAILOVER` (the master demoted,
    /// alive), a registrar replaced on the new master, then the new master SIGKILLed while
    /// another registrar starts; healed when the sentinels name the third master (issue 31).
    SentinelFailover,
}

impl Fault {
    /// Every fault, in priority order.
    pub const ALL: [Fault; 13] = [
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
        Fault::TakeoverLeaseLoss,
        Fault::SlowBackend,
        Fault::SentinelFailover,
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
            Fault::TakeoverLeaseLoss => "takeover-lease-loss",
            Fault::SlowBackend => "slow-backend",
            Fault::SentinelFailover => "sentinel-failover",
        }
    }

    /// Whether it applies to `b`.
    pub fn applies(self, b: Backend) -> bool {
        match self {
            Fault::CompactUnderChurn => b != Backend::Consul,
            Fault::KillLeader => b == Backend::Etcd,
            Fault::PromoteLaggingReplica | Fault::SentinelFailover => b == Backend::Redis,
            Fault::RevokeRead => b == Backend::Consul,
            _ => true,
        }
    }

    /// The server setup it needs.
    pub fn setup(self, b: Backend) -> Setup {
        match (self, b) {
            (Fault::KillLeader, Backend::Etcd) => Setup::EtcdCluster,
            (Fault::PromoteLaggingReplica, Backend::Redis) => Setup::RedisReplica,
            (Fault::SentinelFailover, Backend::Redis) => Setup::RedisSentinel,
            (Fault::RevokeRead, Backend::Consul) => Setup::ConsulAcl,
            (Fault::SlowBackend, _) => Setup::Delayed,
            _ => Setup::Single,
        }
    }

    /// How many ids each registrar of its scene registers: enough, for `slow-backend`, that the
    /// keeper's read-back after each keep-alive is real work (more reads than it keeps in flight,
    /// 16, each taking the delay).
    pub fn ids_each(self) -> usize {
        match self {
            Fault::SlowBackend => 20,
            _ => 2,
        }
    }

    /// The `--op-timeout` of its scene's processes (`None`: the library's default, the heartbeat).
    ///
    /// `slow-backend`: every answer comes [`SLOW_DELAY`] late, so a call needs more than that;
    /// the default (the heartbeat, 1 s on etcd and Redis) would time every call out and the lease
    /// would be lost for want of a timely keep-alive, which is not what the fault is about. With
    /// the delay plus 1 s a healthy keeper's calls all succeed. Its lease then holds: the server
    /// sees a keep-alive every heartbeat + delay (the next one is due a heartbeat after the
    /// previous answer), 2 s against a TTL of 3 s on etcd and Redis, 3 s against 10 s on Consul.
    pub fn op_timeout(self) -> Option<Duration> {
        match self {
            Fault::SlowBackend => Some(SLOW_DELAY + Duration::from_secs(1)),
            _ => None,
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
            // The returning owner is back (checked at 2 heartbeats + 1 s); watchers follow.
            Fault::TakeoverLeaseLoss => heartbeat * 2 + s(3),
            Fault::SlowBackend => ttl + s(10),
            // The new master is a new epoch: every lease ends, the keepers rewrite within a
            // heartbeat of their next failed call (the backend asks the sentinels at once),
            // watchers re-list; the TTL covers leases granted just before the kill.
            Fault::SentinelFailover => ttl + s(10),
        }
    }
}

/// How late the server's answers come during `slow-backend`.
pub const SLOW_DELAY: Duration = Duration::from_secs(1);

/// The window over which `takeover-lease-loss` measures the old owner's CPU.
const CPU_WINDOW: Duration = Duration::from_secs(5);
/// The most CPU (a fraction of one core) the old owner may use meanwhile: the bug this guards
/// against spun at 100 %.
const CPU_LIMIT: f64 = 0.05;

/// What the injection reports.
pub struct Injected {
    /// When the fault healed (the bound runs from here).
    pub healed: Instant,
    /// Invariant violations seen while the fault lasted (only those that must hold even then).
    pub during: Vec<String>,
    /// What [`after`] checks once the scene converged.
    pub then: Then,
}

/// A check of some faults after the scene converged.
pub enum Then {
    /// Nothing more.
    Nothing,
    /// No registrar (by pid) said `lost` after the given number of its state lines.
    NoLostSince(Vec<(u32, usize)>),
    /// Registrar 0 (the owner that took its ids back) is stopped: it must exit within 2 s and
    /// its keys be gone from the server.
    StopOwner,
}

/// The check `then` of [`Injected`], after the scene converged: what is wrong.
pub async fn after(then: Then, server: &Server, scene: &mut Scene) -> Vec<String> {
    let mut wrong = Vec::new();
    match then {
        Then::Nothing => {}
        Then::NoLostSince(marks) => {
            for (pid, mark) in marks {
                if let Some(n) = scene.registrars.iter().find(|n| n.pid == pid) {
                    let v = n.view();
                    let lost: BTreeSet<&String> = v
                        .history
                        .iter()
                        .skip(mark)
                        .filter(|(_, st)| st == "lost")
                        .map(|(id, _)| id)
                        .collect();
                    if !lost.is_empty() {
                        wrong.push(format!(
                            "registrar {pid}: {} of its {} ids said lost (their lease ran out), \
                             {:?} first",
                            lost.len(),
                            n.ids.len(),
                            lost.first()
                        ));
                    }
                }
            }
        }
        Then::StopOwner => {
            if scene.registrars.is_empty() {
                return vec!["no registrar to stop".into()];
            }
            let a = scene.registrars.remove(0);
            let ids = a.ids.clone();
            let pid = a.pid;
            let t = Instant::now();
            if let Err(e) = a.terminate(Duration::from_secs(2)).await {
                wrong.push(format!("the owner, stopped (SIGTERM): {e}"));
            }
            match server
                .truth()
                .ids(&scene.cfg.namespace, &scene.cfg.service)
                .await
            {
                Ok(held) => {
                    let left: Vec<&String> = ids.iter().filter(|i| held.contains(*i)).collect();
                    if !left.is_empty() {
                        wrong.push(format!(
                            "the owner {pid} exited after {:.1} s, the server still holds {left:?}",
                            t.elapsed().as_secs_f64()
                        ));
                    }
                }
                Err(e) => wrong.push(format!("truth unreadable after the owner left: {e}")),
            }
        }
    }
    wrong
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
    let mut then = Then::Nothing;
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
        Fault::SentinelFailover => {
            let first = server.sentinel_master().await?;
            // A failover asked for: the master is demoted and stays up as a replica.
            server.sentinel_failover().await?;
            let second = server
                .wait_new_master(&first, Duration::from_secs(30))
                .await?;
            // Churn on the new master: a registrar leaves, another comes, and both the old
            // registrations and the new ones must be on it.
            let each = scene.registrars.first().map_or(2, |n| n.ids.len());
            scene.retire_registrar(0).await?;
            scene.add_registrar(each)?;
            wait_registered(scene, &server.truth(), Duration::from_secs(30)).await?;
            // The new master SIGKILLed while a new registrar starts: the sentinels promote the
            // first master (its replica now).
            let i = server.member_at(&second).await?;
            server.kill(i).await?;
            scene.add_registrar(each)?;
            server
                .wait_new_master(&second, Duration::from_secs(30))
                .await?;
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
                    if let Some(v) = d.view().view
                        && v.synced
                        && !v.stale
                        && v.ids.is_empty()
                    {
                        let m = format!(
                            "discoverer {k} shows an empty, fresh directory while the token cannot read"
                        );
                        if !during.contains(&m) {
                            during.push(m);
                        }
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
            server.consul_set_key_policy("write").await?;
        }
        Fault::TakeoverLeaseLoss => {
            let healed = takeover_lease_loss(server, scene, &mut during).await?;
            return Ok(Injected {
                healed,
                during,
                then: Then::StopOwner,
            });
        }
        Fault::SlowBackend => {
            let proxy = server.proxy.as_ref().ok_or("no proxy")?;
            let marks = scene
                .registrars
                .iter()
                .map(|n| (n.pid, n.view().history.len()))
                .collect();
            proxy.set_delay(SLOW_DELAY);
            // The fault must have bit: an answer through the proxy takes the delay.
            let took = probe_latency(server.backend, &proxy.endpoint()).await;
            let r = async {
                let took = took?;
                if took < SLOW_DELAY.mul_f64(0.9) {
                    return Err(format!(
                        "the delay did not take effect: an answer through the proxy took {took:?}"
                    ));
                }
                let expected = scene.expected();
                let start = Instant::now();
                let (mut samples, mut short, mut most) = (0, 0, 0);
                let mut first: Option<String> = None;
                while start.elapsed() < hold {
                    // Every registration stays on the server the whole time: no lease ran out.
                    let t = Instant::now();
                    samples += 1;
                    match truth.ids(&ns, &svc).await {
                        Ok(held) => {
                            let missing: Vec<&String> = expected.difference(&held).collect();
                            if !missing.is_empty() {
                                short += 1;
                                most = most.max(missing.len());
                                first.get_or_insert_with(|| {
                                    format!(
                                        "{:.1} s into the delay, {} missing ({:?}, ...)",
                                        (t - start).as_secs_f64(),
                                        missing.len(),
                                        missing.first()
                                    )
                                });
                            }
                        }
                        Err(e) => return Err(format!("truth unreadable during the delay: {e}")),
                    }
                    for n in &scene.registrars {
                        let v = n.view();
                        if let Some((id, _)) = v.history.iter().find(|(_, s)| s == "lost") {
                            let m = format!("registrar {}: {id} lost during the delay", n.pid);
                            if !during.contains(&m) {
                                during.push(m);
                            }
                        }
                    }
                    sleep_until(t + Duration::from_millis(250)).await;
                }
                if let Some(first) = first {
                    during.push(format!(
                        "{short} of {samples} truth samples lacked registrations (of {}; at most \
                         {most} at once), first {first}",
                        expected.len()
                    ));
                }
                Ok(())
            }
            .await;
            proxy.set_delay(Duration::ZERO);
            r?;
            // A lease the delay made miss its keep-alives may end only after the heal.
            then = Then::NoLostSince(marks);
        }
    }
    Ok(Injected {
        healed: Instant::now(),
        during,
        then,
    })
}

/// `takeover-lease-loss` (issue 27 item 1). Registrar 0 (A) holds its ids; a new process B
/// registers the same ids with takeover, so A's handles report `conflict` (every id of A: its
/// keeper then has nothing to write, the case that spun); A's lease is ended from outside; A must
/// then use (almost) no CPU; B leaves (SIGTERM: it deregisters) and A must take its ids back under
/// a new lease within 2 heartbeats + 1 s. Returns when B left (the bound runs from there); what
/// went wrong goes to `during`, what made the fault not bite is an `Err`.
async fn takeover_lease_loss(
    server: &Server,
    scene: &Scene,
    during: &mut Vec<String>,
) -> Result<Instant, String> {
    let truth = server.truth();
    let (ns, svc, hb) = (
        scene.cfg.namespace.clone(),
        scene.cfg.service.clone(),
        scene.cfg.heartbeat,
    );
    let a = scene.registrars.first().ok_or("no registrar")?;
    let ids = a.ids.clone();
    let va = a.view();
    let old_lease = ids
        .iter()
        .map(|id| va.leases.get(id).cloned())
        .collect::<Option<BTreeSet<String>>>()
        .filter(|l| l.len() == 1)
        .and_then(|l| l.into_iter().next())
        .ok_or_else(|| format!("registrar {}: no one lease for {ids:?}: {va:?}", a.pid))?;
    let b = scene.spawn_registrar(ids.clone(), &["--takeover"])?;
    let r = async {
        // B holds the ids and A reports the conflict, within 2 heartbeats of B's write.
        let t = Instant::now();
        let mut b_at = None;
        let conflict_at = loop {
            let (vb, va) = (b.view(), a.view());
            if b_at.is_none() && all_say(&vb, &ids, "registered") {
                b_at = Some(Instant::now());
            }
            if b_at.is_some() && all_say(&va, &ids, "conflict") {
                break va.history.len();
            }
            if vb.exited || vb.error.is_some() {
                return Err(format!("the taking-over process failed: {:?}", vb.error));
            }
            let limit = match b_at {
                Some(at) => at + hb * 2 + Duration::from_secs(1),
                None => t + Duration::from_secs(20),
            };
            if Instant::now() >= limit {
                if b_at.is_none() {
                    return Err(format!(
                        "the taking-over process did not register {ids:?}: {vb:?}"
                    ));
                }
                during.push(format!(
                    "registrar {}: not all of {ids:?} in conflict 2 heartbeats + 1 s after \
                     the takeover: {:?}",
                    a.pid, va.states
                ));
                break va.history.len();
            }
            sleep(Duration::from_millis(50)).await;
        };
        // The fault must have bitten: the ids are on B's lease, not A's.
        for id in &ids {
            match truth.key_lease(&ns, &svc, id).await? {
                Some(l) if !truth.same_lease(&old_lease, &l) => {}
                other => {
                    return Err(format!(
                        "the takeover did not take effect: {id} on lease {other:?} \
                         (the old owner's: {old_lease})"
                    ));
                }
            }
        }
        // A's lease ended from outside; it must be gone on the server.
        truth.end_lease(&old_lease).await?;
        let t = Instant::now();
        while truth.lease_alive(&old_lease).await? {
            if t.elapsed() > Duration::from_secs(5) {
                return Err(format!(
                    "lease {old_lease} still alive 5 s after it was ended"
                ));
            }
            sleep(Duration::from_millis(100)).await;
        }
        // A meets the loss at its next keep-alive; then, with every id in conflict, it has nothing
        // to write: it must wait, not spin.
        sleep(hb * 2 + Duration::from_millis(500)).await;
        let c0 = a.cpu_time()?;
        let t0 = Instant::now();
        sleep(CPU_WINDOW).await;
        let used = a.cpu_time()?.saturating_sub(c0).as_secs_f64() / t0.elapsed().as_secs_f64();
        if used >= CPU_LIMIT {
            during.push(format!(
                "registrar {}, in conflict without a lease, used {:.0} % of a core over \
                 {CPU_WINDOW:?}",
                a.pid,
                used * 100.0
            ));
        }
        eprintln!(
            "takeover-lease-loss: the old owner used {:.1} % of a core over {CPU_WINDOW:?}",
            used * 100.0
        );
        // It did not fight B meanwhile.
        let va = a.view();
        if let Some((id, st)) = va
            .history
            .iter()
            .skip(conflict_at)
            .find(|(_, s)| s != "conflict")
        {
            during.push(format!(
                "registrar {}: {id} went {st} while the other owner held it",
                a.pid
            ));
        }
        Ok(())
    }
    .await;
    // B leaves (deregistering) whatever happened.
    let stopped = b.terminate(Duration::from_secs(15)).await;
    let healed = Instant::now();
    r?;
    stopped.map_err(|e| format!("the taking-over process: {e}"))?;
    // A takes its ids back, under a new lease, within 2 heartbeats + 1 s.
    let within = hb * 2 + Duration::from_secs(1);
    loop {
        let va = a.view();
        let mut ok = true;
        let mut why = Vec::new();
        for id in &ids {
            let st = va.states.get(id).map_or("(nothing)", String::as_str);
            let lease = va.leases.get(id);
            let stored = truth.key_lease(&ns, &svc, id).await.unwrap_or(None);
            let back = st == "registered"
                && lease.is_some_and(|l| *l != old_lease)
                && stored
                    .as_deref()
                    .zip(lease)
                    .is_some_and(|(s, l)| truth.same_lease(l, s));
            if !back {
                ok = false;
                why.push(format!(
                    "{id}: says {st} (lease {lease:?}), stored on lease {stored:?}"
                ));
            }
        }
        if ok {
            eprintln!(
                "takeover-lease-loss: the old owner took its ids back {:.1} s after the other left",
                healed.elapsed().as_secs_f64()
            );
            break;
        }
        if healed.elapsed() >= within {
            during.push(format!(
                "registrar {} did not take its ids back within {within:?} of the other \
                 owner leaving: {}",
                a.pid,
                why.join("; ")
            ));
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(healed)
}

/// Whether `v` says `state` for every one of `ids`.
fn all_say(v: &NodeView, ids: &[String], state: &str) -> bool {
    ids.iter()
        .all(|i| v.states.get(i).is_some_and(|s| s == state))
}

/// The time to the first byte of an answer through `endpoint` (a proxy in front of a `backend`
/// server): a Redis `PING`, an HTTP/2 preface and empty SETTINGS frame (etcd's gRPC server answers
/// with its SETTINGS), an HTTP/1.0 `GET /v1/status/leader` (Consul).
async fn probe_latency(backend: Backend, endpoint: &str) -> Result<Duration, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hello: &[u8] = match backend {
        Backend::Redis => b"PING\r\n",
        Backend::Etcd => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        Backend::Consul => b"GET /v1/status/leader HTTP/1.0\r\n\r\n",
    };
    let probe = async {
        let mut c = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| format!("probe connect: {e}"))?;
        let t = Instant::now();
        c.write_all(hello)
            .await
            .map_err(|e| format!("probe write: {e}"))?;
        let mut b = [0u8; 1];
        match c.read(&mut b).await {
            Ok(1) => Ok(t.elapsed()),
            Ok(_) => Err("probe: the server closed without answering".to_owned()),
            Err(e) => Err(format!("probe read: {e}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), probe)
        .await
        .map_err(|_| "probe: no answer within 10 s".to_owned())?
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
