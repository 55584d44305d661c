//! One run: the processes, the shared backend, the schedule played in virtual time, and the
//! invariants checked after every step and once the faults have healed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use conformance_tests::forward::Forward;
use registry_core::{Backend, ErrorKind, LeaseId};
use registry_engine::{
    Discovery, Instance, RegisterOptions, Registration, RegistrationState, Registry,
};
use registry_memory::MemoryBackend;
use tokio::time::{Instant, timeout};

use crate::alarm::Alarm;
use crate::faults::Faults;
use crate::schedule::{Action, IDS, PROCESSES, SERVICES, Schedule};

/// The processes' lease TTL.
pub const TTL: Duration = Duration::from_secs(3);
/// Their heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Their deadline for one backend call.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a drain waits between offline and deregistering.
pub const DRAIN_GRACE: Duration = Duration::from_millis(300);
/// The most virtual time any command may take to be answered: a heartbeat's work (keep-alive,
/// deletes, read-backs, writes: each bounded by the operation timeout) ahead of it in the queue,
/// then its own calls.
pub const COMMAND_BOUND: Duration = Duration::from_secs(5);
/// After the last step every fault heals; then this much virtual time passes before the final
/// checks: leases of crashed processes expire, lost registrations are written again, conflicted
/// ids go back to their owners, directories catch up.
pub const SETTLE: Duration = Duration::from_secs(12);
/// Real time without any progress (no step, no backend call) after which a run is a busy loop:
/// virtual time only stands still while some task is always ready to run.
pub const STALL: Duration = Duration::from_secs(5);

/// A run's failure: what was violated, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Virtual milliseconds since the start.
    pub at_ms: u64,
    /// The step being played (its index in the schedule played), if any.
    pub step: Option<usize>,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Some(s) => write!(f, "at t={} ms (step {s}): {}", self.at_ms, self.what),
            None => write!(f, "at t={} ms (after healing): {}", self.at_ms, self.what),
        }
    }
}

/// What a passing run did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Virtual time the run covered.
    pub virtual_ms: u64,
    /// Backend calls of all processes.
    pub calls: u64,
    /// Commands answered.
    pub commands: u64,
}

struct Proc {
    faults: Arc<Faults>,
    backend: Arc<dyn Backend>,
    /// `None` while stopped.
    running: Option<Running>,
    /// How many times it started (each start writes different addresses).
    generation: u32,
}

struct Running {
    registry: Registry,
    _discovery: Discovery,
    handles: BTreeMap<usize, Registration>,
}

/// Plays `schedule` on a fresh runtime in virtual time and checks the invariants.
pub fn run(schedule: &Schedule) -> Result<Outcome, Failure> {
    let alarm = Arc::new(Alarm::default());
    // The busy-loop watchdog: real time, outside the runtime (whose time is virtual).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let alarm = alarm.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut last = alarm.progress.load(Ordering::Relaxed);
            let mut since = std::time::Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                let now = alarm.progress.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = std::time::Instant::now();
                } else if since.elapsed() > STALL {
                    alarm.raise(format!(
                        "busy loop: virtual time stood still for {STALL:?} of real time with no \
                         backend call and no step (a task that is always ready to run)"
                    ));
                    since = std::time::Instant::now();
                }
            }
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let result = runtime.block_on(async {
        // The engine's jitter comes from this thread's generator: seed it, so a run repeats.
        fastrand::seed(schedule.seed);
        let start = Instant::now();
        let mut world = World::new(alarm.clone());
        let play = world.play(schedule, start);
        tokio::select! {
            biased;
            _ = alarm.wake.notified() => Err(Failure {
                at_ms: start.elapsed().as_millis() as u64,
                step: world_step(),
                what: alarm.raised().unwrap_or_default(),
            }),
            r = play => r,
        }
    });
    done.store(true, Ordering::Relaxed);
    // Dropping the runtime drops every task (a spinning one included).
    drop(runtime);
    let _ = watchdog.join();
    result
}

thread_local! {
    static STEP: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

fn world_step() -> Option<usize> {
    STEP.with(|s| s.get())
}

struct World {
    memory: MemoryBackend,
    procs: Vec<Proc>,
    alarm: Arc<Alarm>,
    commands: std::cell::Cell<u64>,
    /// The latest backup of the backend.
    backup: Option<registry_memory::Checkpoint>,
    /// Every handle ever made, with its process, for the final check of the truth.
    overwrite_count: u32,
}

fn instance(proc: usize, generation: u32, id: usize) -> Instance {
    let (service, name) = IDS[id];
    Instance::new(service, name).addr(format!("10.{proc}.{generation}.{id}:80"))
}

impl World {
    fn new(alarm: Arc<Alarm>) -> World {
        let memory = MemoryBackend::builder()
            .min_ttl(Duration::from_secs(1))
            .build();
        let procs = (0..PROCESSES)
            .map(|p| {
                let faults = Arc::new(Faults::new(p, alarm.clone()));
                let backend: Arc<dyn Backend> = Arc::new(Forward::new(
                    Arc::new(memory.clone()) as Arc<dyn Backend>,
                    faults.clone(),
                ));
                Proc {
                    faults,
                    backend,
                    running: None,
                    generation: 0,
                }
            })
            .collect();
        World {
            memory,
            procs,
            alarm,
            commands: std::cell::Cell::new(0),
            backup: None,
            overwrite_count: 0,
        }
    }

    async fn start(&mut self, p: usize) -> Result<(), String> {
        let proc = &mut self.procs[p];
        if proc.running.is_some() {
            return Ok(());
        }
        proc.generation += 1;
        let registry = Registry::builder(proc.backend.clone())
            .ttl(TTL)
            .heartbeat(HEARTBEAT)
            .op_timeout(OP_TIMEOUT)
            .build()
            .map_err(|e| format!("p{p}: registry: {e}"))?;
        // A cut-off process cannot open its discovery: it starts it once it is healed (here,
        // the start is retried by later restarts, and the final check heals everything first).
        let discovery = match timeout(COMMAND_BOUND, registry.discover_all()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                if e.kind() == ErrorKind::Unavailable || e.kind() == ErrorKind::Timeout {
                    return Ok(());
                }
                return Err(format!("p{p}: discover_all: {e}"));
            }
            Err(_) => {
                return Err(format!(
                    "p{p}: discover_all not answered within {COMMAND_BOUND:?}"
                ));
            }
        };
        self.procs[p].running = Some(Running {
            registry,
            _discovery: discovery,
            handles: BTreeMap::new(),
        });
        Ok(())
    }

    async fn play(&mut self, schedule: &Schedule, start: Instant) -> Result<Outcome, Failure> {
        let fail = |step: Option<usize>, what: String| Failure {
            at_ms: start.elapsed().as_millis() as u64,
            step,
            what,
        };
        for p in 0..PROCESSES {
            self.start(p).await.map_err(|e| fail(None, e))?;
        }
        for (i, step) in schedule.steps.iter().enumerate() {
            STEP.with(|s| s.set(Some(i)));
            tokio::time::sleep(Duration::from_millis(step.after_ms.into())).await;
            self.alarm.progress();
            self.act(&step.action).await.map_err(|e| fail(Some(i), e))?;
            self.alarm.progress();
        }
        STEP.with(|s| s.set(None));
        // Heal, restart every process that cannot discover yet, let everything settle.
        for proc in &self.procs {
            proc.faults.heal();
        }
        for p in 0..PROCESSES {
            if self.procs[p].running.is_none() && self.procs[p].generation > 0 {
                continue; // Stopped on purpose: stays stopped.
            }
            self.start(p).await.map_err(|e| fail(None, e))?;
        }
        // Sleep in heartbeat steps, so the watchdog sees progress.
        let until = Instant::now() + SETTLE;
        while Instant::now() < until {
            tokio::time::sleep(HEARTBEAT).await;
            self.alarm.progress();
        }
        self.check().await.map_err(|e| fail(None, e))?;
        Ok(Outcome {
            virtual_ms: start.elapsed().as_millis() as u64,
            calls: self.procs.iter().map(|p| p.faults.calls()).sum(),
            commands: self.commands.get(),
        })
    }

    /// Runs one command of a process, which must be answered within the bound.
    async fn command<T>(
        &self,
        what: String,
        bound: Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, String> {
        self.commands.set(self.commands.get() + 1);
        let t = timeout(bound, fut).await;
        self.alarm.progress();
        t.map_err(|_| format!("{what}: not answered within {bound:?} of virtual time"))
    }

    async fn act(&mut self, action: &Action) -> Result<(), String> {
        match *action {
            Action::Register {
                proc,
                id,
                delay_ms,
                takeover,
            } => {
                let generation = self.procs[proc].generation;
                let Some(running) = &self.procs[proc].running else {
                    return Ok(());
                };
                if running.handles.contains_key(&id) {
                    return Ok(());
                }
                let mut opts = RegisterOptions::new().takeover(takeover);
                if delay_ms > 0 {
                    opts = opts.delay(Duration::from_millis(delay_ms.into()));
                }
                let fut = running
                    .registry
                    .register_with(instance(proc, generation, id), opts);
                let answer = self
                    .command(format!("p{proc} register"), COMMAND_BOUND, fut)
                    .await?;
                match answer {
                    Ok(handle) => {
                        if let Some(r) = &mut self.procs[proc].running {
                            r.handles.insert(id, handle);
                        }
                    }
                    // Held by another live owner, or the backend unreachable: a fair answer.
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::Conflict | ErrorKind::Unavailable | ErrorKind::Timeout
                        ) => {}
                    Err(e) => return Err(format!("p{proc} register: unexpected error: {e}")),
                }
            }
            Action::Update { proc, id } => {
                self.overwrite_count += 1;
                let n = self.overwrite_count;
                let Some(handle) = self.handle(proc, id) else {
                    return Ok(());
                };
                let fut = handle.update(move |i| {
                    i.metadata.insert("v".into(), n.to_string());
                });
                let _ = self
                    .command(format!("p{proc} update"), COMMAND_BOUND, fut)
                    .await?;
            }
            Action::SetOnline { proc, id, online } => {
                let Some(handle) = self.handle(proc, id) else {
                    return Ok(());
                };
                let fut = handle.set_online(online);
                let _ = self
                    .command(format!("p{proc} set_online"), COMMAND_BOUND, fut)
                    .await?;
            }
            Action::Drain { proc, id } | Action::Deregister { proc, id } => {
                let Some(handle) = self.procs[proc]
                    .running
                    .as_mut()
                    .and_then(|r| r.handles.remove(&id))
                else {
                    return Ok(());
                };
                if matches!(action, Action::Drain { .. }) {
                    let _ = self
                        .command(
                            format!("p{proc} drain"),
                            COMMAND_BOUND * 2 + DRAIN_GRACE,
                            handle.drain(DRAIN_GRACE),
                        )
                        .await?;
                } else {
                    let _ = self
                        .command(
                            format!("p{proc} deregister"),
                            COMMAND_BOUND,
                            handle.deregister(),
                        )
                        .await?;
                }
            }
            Action::Discover { proc, service } => {
                let Some(running) = &self.procs[proc].running else {
                    return Ok(());
                };
                let fut = running.registry.get_service(SERVICES[service]);
                let _ = self
                    .command(format!("p{proc} discover"), COMMAND_BOUND, fut)
                    .await?;
            }
            Action::Shutdown { proc } => {
                let Some(running) = self.procs[proc].running.take() else {
                    return Ok(());
                };
                let _ = self
                    .command(
                        format!("p{proc} shutdown"),
                        COMMAND_BOUND * 2,
                        running.registry.shutdown(),
                    )
                    .await?;
                drop(running);
            }
            Action::Crash { proc } => {
                if let Some(running) = self.procs[proc].running.take() {
                    running.registry.crash();
                    // Handles dropped after a crash do nothing: the process is gone.
                    drop(running);
                }
            }
            Action::Restart { proc } => self.start(proc).await?,
            Action::Latency { proc, ms } => self.procs[proc].faults.set_latency(ms),
            Action::Hang { proc, calls } => self.procs[proc].faults.hang(calls),
            Action::Cut { proc } => self.procs[proc].faults.set_cut(true),
            Action::Heal { proc } => self.procs[proc].faults.set_cut(false),
            Action::RevokeLease { proc } => {
                for lease in self.procs[proc].faults.leases() {
                    let _ = self.memory.revoke(&lease).await;
                }
            }
            Action::ExternalDelete { id } => {
                let _ = self.memory.delete(&key(id)).await;
            }
            Action::ExternalOverwrite { id, leased } => {
                // Only a live registration is overwritten (someone else's junk under an id no one
                // registers proves nothing).
                if !matches!(self.memory.get(&key(id)).await, Ok(Some(kv)) if kv.lease.is_some()) {
                    return Ok(());
                }
                self.overwrite_count += 1;
                let value = Instance::new(IDS[id].0, IDS[id].1)
                    .addr(format!("{BY_HAND}{}:80", self.overwrite_count % 250))
                    .encode();
                let lease = if leased {
                    self.memory.grant(TTL).await.ok().map(|l| l.id)
                } else {
                    None
                };
                let _ = self.memory.put(&key(id), value, lease.as_ref()).await;
            }
            Action::Compact => {
                let at = self.memory.revision();
                self.memory.compact(at);
            }
            Action::DropWatches => self.memory.drop_watches(),
            Action::Checkpoint => self.backup = Some(self.memory.checkpoint()),
            Action::Rollback => {
                if let Some(backup) = &self.backup {
                    self.memory.restore(backup);
                }
            }
        }
        Ok(())
    }

    fn handle(&self, proc: usize, id: usize) -> Option<&Registration> {
        self.procs[proc].running.as_ref()?.handles.get(&id)
    }

    /// After healing: every handle agrees with the backend's truth, every directory equals it,
    /// the truth holds nothing no live process registered, and a conflicted id is held by a live
    /// owner (else it went back to the conflicted handle).
    async fn check(&self) -> Result<(), String> {
        let listing = self
            .memory
            .list("registry/")
            .await
            .map_err(|e| format!("reading the truth: {e}"))?;
        let truth: HashMap<String, (Bytes, Option<LeaseId>)> = listing
            .entries
            .into_iter()
            .map(|kv| (kv.key, (kv.value, kv.lease)))
            .collect();
        // Which live handle holds each key, by its lease.
        let mut holders: HashMap<String, Vec<(usize, LeaseId)>> = HashMap::new();
        for (p, proc) in self.procs.iter().enumerate() {
            let Some(running) = &proc.running else {
                continue;
            };
            for (&id, handle) in &running.handles {
                let key = handle.key().to_owned();
                match handle.state() {
                    RegistrationState::Registered { lease, .. } => {
                        let Some((value, held)) = truth.get(&key) else {
                            return Err(format!(
                                "p{p}'s handle for {key} says registered (lease {lease}) but the key is not in the backend"
                            ));
                        };
                        if held.as_ref() != Some(&lease) {
                            return Err(format!(
                                "p{p}'s handle for {key} says registered on lease {lease}, the backend holds it on {held:?}"
                            ));
                        }
                        if *value != handle.instance().encode() {
                            return Err(format!(
                                "p{p}'s handle for {key}: the backend holds another value than the handle's"
                            ));
                        }
                        holders.entry(key).or_default().push((p, lease));
                    }
                    RegistrationState::Conflict { holder, .. } => {
                        let held = truth.get(&key).and_then(|(_, l)| l.clone());
                        if held.as_ref() != Some(&holder) {
                            return Err(format!(
                                "p{p}'s handle for {key} is in conflict with lease {holder}, which no longer holds it \
                                 (the backend: {held:?}): the id did not go back to its owner"
                            ));
                        }
                        let _ = id;
                    }
                    other => {
                        return Err(format!(
                            "p{p}'s handle for {key} is {} {SETTLE:?} after every fault healed",
                            other.name()
                        ));
                    }
                }
            }
        }
        for (key, (value, lease)) in &truth {
            if lease.is_none() && is_by_hand(value) {
                // Written by hand, on no lease, and its registration's owner stopped before it
                // repaired it: the backend keeps it, as it should.
                continue;
            }
            match holders.get(key) {
                Some(h) if h.len() == 1 => {}
                Some(h) => {
                    return Err(format!("{key} is claimed by several handles: {h:?}"));
                }
                None => {
                    return Err(format!(
                        "the backend holds {key} (lease {lease:?}) that no live process registered"
                    ));
                }
            }
        }
        // Directories.
        for (p, proc) in self.procs.iter().enumerate() {
            let Some(running) = &proc.running else {
                continue;
            };
            let directory = running.registry.directory();
            for service in SERVICES {
                let mut seen: Vec<(String, Instance)> = directory
                    .all(service)
                    .iter()
                    .map(|i| (i.id.clone(), (**i).clone()))
                    .collect();
                seen.sort_by(|a, b| a.0.cmp(&b.0));
                let mut want: Vec<(String, Instance)> = truth
                    .iter()
                    .filter_map(|(k, (v, _))| {
                        let (s, id) = k.strip_prefix("registry/")?.split_once('/')?;
                        (s == service)
                            .then(|| Instance::decode(s, id, v).ok().map(|i| (id.to_owned(), i)))
                            .flatten()
                    })
                    .collect();
                want.sort_by(|a, b| a.0.cmp(&b.0));
                if seen != want {
                    let ids = |v: &[(String, Instance)]| {
                        v.iter()
                            .map(|(i, x)| format!("{i}@{}", x.addrs.join(",")))
                            .collect::<Vec<_>>()
                    };
                    return Err(format!(
                        "p{p}'s directory of {service} differs from the backend: directory {:?}, backend {:?}",
                        ids(&seen),
                        ids(&want)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The sim's writes by hand ("someone else") use addresses of 192.0.2.0/24.
fn is_by_hand(value: &Bytes) -> bool {
    std::str::from_utf8(value).is_ok_and(|v| v.contains(BY_HAND))
}

const BY_HAND: &str = "192.0.2.";

fn key(id: usize) -> String {
    format!("registry/{}/{}", IDS[id].0, IDS[id].1)
}
