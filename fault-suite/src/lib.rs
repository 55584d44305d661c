//! A fault suite against the real servers (issue 13, part 5).
//!
//! A scene is a server from the test bed, registering and discovering `fault-node` processes
//! (real OS processes), and an independent truth reader ([`truth::Truth`]) that reads the server
//! through the backend's own client crate. For each fault ([`faults::Fault`]) the scene is brought
//! to a converged state, the fault is injected and healed, and within the fault's bound:
//!
//! - every registration whose process's latest line says `registered` is in the truth (and, since
//!   every process is alive and the fault healed, every registration is back to `registered`);
//! - every instance in every discoverer's directory is in the truth, the directory is synced and
//!   not stale (and shows everything the truth holds);
//! - the truth holds nothing that no live process registered.
//!
//! [`run_one`] runs one fault on a fresh scene (the tests in `tests/short.rs`), [`seeded`] chains
//! random faults on one long-lived scene (`scripts/faults.sh --seed N --minutes M`).

pub mod faults;
pub mod proxy;
pub mod scene;
pub mod server;
pub mod truth;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use conformance_tests::testbed;
use faults::{Fault, inject};
use scene::{Convergence, Scene, SceneConfig};
use server::{Backend, Server, Setup};

/// The outcome of one fault on one backend.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Backend.
    pub backend: Backend,
    /// Fault.
    pub fault: Fault,
    /// The bound it had.
    pub bound: Duration,
    /// The convergence check.
    pub conv: Convergence,
    /// Violations while the fault lasted.
    pub during: Vec<String>,
    /// Violations found by the fault's own check after the scene converged.
    pub after: Vec<String>,
}

impl Outcome {
    /// Whether it passed: converged within the bound and nothing was wrong during the fault.
    pub fn passed(&self) -> bool {
        self.conv.converged.is_some() && self.during.is_empty() && self.after.is_empty()
    }

    /// One line for humans.
    pub fn line(&self) -> String {
        let conv = match self.conv.converged {
            Some(d) => format!("converged in {:.1} s", d.as_secs_f64()),
            None => format!("NOT converged within {} s", self.bound.as_secs()),
        };
        let mut s = format!(
            "fault {:<24} on {:<6}: {} {conv} (bound {} s), lost {} ({} silently), phantoms {}",
            self.fault.name(),
            self.backend.name(),
            if self.passed() { "PASS" } else { "FAIL" },
            self.bound.as_secs(),
            self.conv.lost,
            self.conv.silent_lost,
            self.conv.phantoms
        );
        if !self.conv.why.is_empty() {
            s.push_str(&format!("\n    at the bound: {}", self.conv.why));
        }
        for d in &self.during {
            s.push_str(&format!("\n    during the fault: {d}"));
        }
        for d in &self.after {
            s.push_str(&format!("\n    after converging: {d}"));
        }
        s
    }

    fn record(&self) {
        eprintln!("{}", self.line());
        if let Ok(path) = std::env::var("FAULT_REPORT")
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            let _ = writeln!(
                f,
                "{}\t{}\t{}\t{}\t{}\t{}",
                self.backend.name(),
                self.fault.name(),
                if self.passed() { "pass" } else { "FAIL" },
                self.conv
                    .converged
                    .map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64())),
                self.conv.lost,
                self.conv.phantoms
            );
        }
    }
}

/// TTL and heartbeat of a scene on `b` (Consul's sessions live 10 s at least).
pub fn timing(b: Backend) -> (Duration, Duration) {
    match b {
        Backend::Consul => (Duration::from_secs(10), Duration::from_secs(2)),
        _ => (Duration::from_secs(3), Duration::from_secs(1)),
    }
}

/// Fails (under `REGISTRY_TEST_REQUIRED=1`) or skips with the reason; `None` means skip.
fn need<T>(what: &str, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(reason) => testbed::unavailable(what, &reason),
    }
}

async fn start_scene(
    backend: Backend,
    setup: Setup,
    ids_each: usize,
    op_timeout: Option<Duration>,
    node_bin: &Path,
) -> Option<(Server, Scene)> {
    let server = need(
        &format!("{} ({setup:?})", backend.name()),
        Server::start(backend, setup).await,
    )?;
    let (ttl, heartbeat) = timing(backend);
    let cfg = SceneConfig {
        node_bin: node_bin.to_owned(),
        url: server.url(),
        namespace: testbed::fresh_namespace("faults"),
        service: "web".into(),
        ttl,
        heartbeat,
        op_timeout,
    };
    let scene = Scene::start(cfg, 3, ids_each, 2)
        .await
        .unwrap_or_else(|e| panic!("starting the scene: {e}"));
    // The scene must be whole before any fault: otherwise nothing below means anything.
    let c = scene
        .converge(
            &server.truth(),
            tokio::time::Instant::now(),
            Duration::from_secs(30),
        )
        .await;
    assert!(
        c.converged.is_some(),
        "the {} scene did not converge before any fault: {}",
        backend.name(),
        c.why
    );
    Some((server, scene))
}

/// Runs `fault` on a fresh `backend` scene and panics unless it converges within its bound.
/// Returns without a verdict only when the server or a capability is unavailable and not required
/// (the test bed's rule: it prints why).
pub async fn run_one(backend: Backend, fault: Fault, node_bin: &Path) {
    assert!(
        fault.applies(backend),
        "{fault:?} does not apply to {backend:?}"
    );
    if fault == Fault::NetworkCut
        && need(
            "a network cut (nsenter, iptables)",
            Server::can_cut_network().await,
        )
        .is_none()
    {
        return;
    }
    let Some((mut server, mut scene)) = start_scene(
        backend,
        fault.setup(backend),
        fault.ids_each(),
        fault.op_timeout(),
        node_bin,
    )
    .await
    else {
        return;
    };
    let out = one(fault, &mut server, &mut scene).await;
    scene.shutdown().await;
    drop(server);
    let out = out.unwrap_or_else(|e| panic!("fault {} on {}: {e}", fault.name(), backend.name()));
    out.record();
    assert!(out.passed(), "{}", out.line());
}

async fn one(fault: Fault, server: &mut Server, scene: &mut Scene) -> Result<Outcome, String> {
    let bound = fault.bound(scene.cfg.ttl, scene.cfg.heartbeat);
    let inj = inject(fault, server, scene).await?;
    let conv = scene.converge(&server.truth(), inj.healed, bound).await;
    let after = faults::after(inj.then, server, scene).await;
    Ok(Outcome {
        backend: server.backend,
        fault,
        bound,
        conv,
        during: inj.during,
        after,
    })
}

/// The seeded random mode: on one long-lived scene per backend, chains random faults (of those a
/// single server supports) for `minutes`, checking the invariants after each heals; prints a
/// summary table and returns whether every fault converged.
pub async fn seeded(seed: u64, minutes: f64, backends: &[Backend], node_bin: &Path) -> bool {
    eprintln!("fault-suite seeded mode: seed {seed}, {minutes} min, backends {backends:?}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let can_cut = Server::can_cut_network().await.is_ok();
    let mut runs = Vec::new();
    for &b in backends {
        let Some((server, scene)) = start_scene(b, Setup::Single, 2, None, node_bin).await else {
            continue;
        };
        let faults: Vec<Fault> = Fault::ALL
            .into_iter()
            .filter(|f| f.on_single() && f.applies(b) && (can_cut || *f != Fault::NetworkCut))
            .collect();
        // Each backend gets its own sequence from the one seed.
        let sub = rng.u64(..);
        runs.push(async move {
            let mut rng = fastrand::Rng::with_seed(sub);
            let (mut server, mut scene) = (server, scene);
            let end = tokio::time::Instant::now() + Duration::from_secs_f64(minutes * 60.0);
            let mut outs = Vec::new();
            while tokio::time::Instant::now() < end {
                let f = faults[rng.usize(..faults.len())];
                match one(f, &mut server, &mut scene).await {
                    Ok(o) => {
                        o.record();
                        let ok = o.passed();
                        outs.push(o);
                        if !ok {
                            // Give the scene a chance to recover before the next fault, so one
                            // failure does not cascade into all the others.
                            let _ = scene
                                .converge(
                                    &server.truth(),
                                    tokio::time::Instant::now(),
                                    Duration::from_secs(60),
                                )
                                .await;
                        }
                    }
                    Err(e) => {
                        // A fault that could not be injected (or did not bite) is a failure of
                        // the run, counted like one; the soak goes on once the scene recovers.
                        let o = Outcome {
                            backend: b,
                            fault: f,
                            bound: Duration::ZERO,
                            conv: Convergence {
                                converged: None,
                                lost: 0,
                                silent_lost: 0,
                                phantoms: 0,
                                why: String::new(),
                            },
                            during: vec![format!("could not inject: {e}")],
                            after: Vec::new(),
                        };
                        o.record();
                        outs.push(o);
                        let _ = scene
                            .converge(
                                &server.truth(),
                                tokio::time::Instant::now(),
                                Duration::from_secs(60),
                            )
                            .await;
                    }
                }
            }
            scene.shutdown().await;
            drop(server);
            outs
        });
    }
    let all: Vec<Outcome> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    print_summary(seed, &all);
    !all.is_empty() && all.iter().all(Outcome::passed)
}

/// Prints the table fault x backend -> runs, failures, max converge time, lost, phantoms.
pub fn print_summary(seed: u64, all: &[Outcome]) {
    #[derive(Default)]
    struct Row {
        n: usize,
        failed: usize,
        max: Option<Duration>,
        lost: usize,
        phantoms: usize,
    }
    let mut rows: BTreeMap<(Fault, Backend), Row> = BTreeMap::new();
    for o in all {
        let r = rows.entry((o.fault, o.backend)).or_default();
        r.n += 1;
        if !o.passed() {
            r.failed += 1;
        }
        if let Some(d) = o.conv.converged {
            r.max = Some(r.max.map_or(d, |m| m.max(d)));
        }
        r.lost += o.conv.lost;
        r.phantoms += o.conv.phantoms;
    }
    println!("\nseed {seed}");
    println!(
        "{:<24} {:<7} {:>5} {:>7} {:>13} {:>5} {:>9}",
        "fault", "backend", "runs", "failed", "max converge", "lost", "phantoms"
    );
    for ((f, b), r) in &rows {
        println!(
            "{:<24} {:<7} {:>5} {:>7} {:>13} {:>5} {:>9}",
            f.name(),
            b.name(),
            r.n,
            r.failed,
            r.max
                .map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            r.lost,
            r.phantoms
        );
    }
}
