//! What the backends' resilience tests share (feature `testbed`): registries with short timings,
//! registrations to carry through an outage, the server's container driven with the `docker`
//! command, and waiting for things to come back. Starting a server that may be missing is
//! [`testbed::start_or_skip`](crate::testbed::start_or_skip); waiting for a registration to be
//! written again, [`until_lost_and_back`](crate::engine::until_lost_and_back).

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use registry_core::Backend;
use registry_engine::{Directory, Instance, Registration, Registry};
use tokio::time::{sleep, timeout};

use crate::engine::until_online;
use crate::testbed::Container;

/// How a test's registries keep their registrations: short enough that an outage outlives the
/// TTL within seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// The lease TTL.
    pub ttl: Duration,
    /// The keep-alive interval.
    pub heartbeat: Duration,
    /// The deadline of each backend call.
    pub op_timeout: Duration,
}

impl Timings {
    /// A TTL of 2 s, a heartbeat of 600 ms and an operation timeout of 1 s.
    pub const SHORT: Timings = Timings {
        ttl: Duration::from_secs(2),
        heartbeat: Duration::from_millis(600),
        op_timeout: Duration::from_secs(1),
    };

    /// A registry over `backend` with these timings.
    pub fn registry(&self, backend: &Arc<dyn Backend>) -> Registry {
        Registry::builder(backend.clone())
            .ttl(self.ttl)
            .heartbeat(self.heartbeat)
            .op_timeout(self.op_timeout)
            .build()
            .expect("registry timings are valid for the backend")
    }
}

/// Instance `id` of service `web`, at `10.0.0.1:80`.
pub fn web(id: &str) -> Instance {
    Instance::new("web", id).addr("10.0.0.1:80")
}

/// Registers the `web` instances `ids` with `registry` and waits until `dir` (another registry's,
/// watching `web`) shows exactly them online, within 5 s.
pub async fn register_web(registry: &Registry, dir: &Directory, ids: &[&str]) -> Vec<Registration> {
    let mut regs = Vec::new();
    for id in ids {
        let reg = registry
            .register(web(id))
            .await
            .unwrap_or_else(|e| panic!("register {id}: {e}"));
        regs.push(reg);
    }
    until_online(dir, "web", ids, Duration::from_secs(5)).await;
    regs
}

/// Waits until `dir` shows `service` fresh (not stale) with `online` instances online.
pub async fn until_fresh(dir: &Directory, service: &str, online: usize, limit: Duration) {
    let mut view = dir.subscribe(service);
    timeout(
        limit,
        view.wait_for(|s| !s.is_stale() && s.online().len() == online),
    )
    .await
    .unwrap_or_else(|_| {
        let (stale, now) = (dir.is_stale(service), dir.get(service).len());
        panic!("{service}: not fresh with {online} online within {limit:?} (stale: {stale}, {now} held)")
    })
    .expect("the directory is open");
}

/// Runs `docker args`, asserting it succeeds.
pub fn docker(args: &[&str]) {
    let ok = std::process::Command::new("docker")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "docker {args:?}");
}

/// Kills the container's server with SIGKILL: a crash, where `docker stop` (SIGTERM) would let
/// it shut down gracefully.
pub fn kill(container: &Container) {
    docker(&["kill", "--signal", "KILL", container.id()]);
}

/// Calls `attempt` until it succeeds, printing each failure as `what`, and `pause` between
/// attempts; panics when it still fails after `retries` retries.
pub async fn retry<T, E, Fut>(
    what: &str,
    retries: u32,
    pause: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> T
where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failed = 0;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) if failed < retries => {
                failed += 1;
                eprintln!("{what}: {e}");
            }
            Err(e) => panic!("{what}: {e} (after {retries} retries)"),
        }
        sleep(pause).await;
    }
}
