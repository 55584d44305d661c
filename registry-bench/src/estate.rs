//! Estate (issue 17): what one change to a service costs each discovering client, and how fast it
//! reaches all of them, as the number of clients (fan-out) and the size of the service grow.
//!
//! Everything runs in this one process: N discovery clients, each with its own `Registry` and its
//! own backend connection (on `memory://` they share the in-process store, which has no connection;
//! its work to deliver each watch event to each watcher then counts as the clients'), and one
//! registrar (its own `Registry`, its own lease) that makes the changes.
//!
//! For each service size S (ascending; the service is topped up to S by several registries at once,
//! each with its own lease, since one registry writes its registrations one after another):
//!
//! 1. **baseline**: the registrar makes M changes (M/2 register + deregister pairs of one more
//!    instance, whose id sorts among the service's, as real ids do, at a different place for each
//!    pair, so that a change does not find the tree path of the one before in cache) with no client
//!    attached, and the process CPU time (`CLOCK_PROCESS_CPUTIME_ID`) over that window is taken;
//!    once before the cells of this size and once after; the lower of the two counts (CPU noise only
//!    adds, and the process may still be freeing the last cell's clients).
//! 2. for each client count N (skipped when N × S is over the run's budget): N clients are started
//!    and loaded; resident memory growth over that, divided by N, is the memory per client. The
//!    process CPU over an idle second with them attached gives their idle cost.
//! 3. the same M changes, each one waited for until every client's directory shows it (a task per
//!    client wakes on `Directory::subscribe` and compares the snapshot's online count with the one
//!    expected: O(1) per wake, so detection does not weigh on the figure). CPU per client per
//!    change = (CPU of this window − CPU of the baseline window) / (N × M); with several windows
//!    (each at other places in the service), their median. The idle cost of the clients over the
//!    window's length is shown next to it, not subtracted.
//! 4. a burst: B registrations at once (spread over the populating registries), timed until every
//!    client shows all of them; then they are deregistered and the clients are stopped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use registry::Backend;
use registry::engine::{Discovery, Instance, Registration, Registry, ServiceSnapshot};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::harness::{registry as make_registry, rss_bytes, ttl_for};
use crate::report::Section;
use crate::size::Size;
use crate::stats::{self, json as sjson, median, ms, summarize};

const SERVICE: &str = "estate";

/// The sizes of a run.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    clients: Vec<usize>,
    sizes: Vec<usize>,
    /// Register + deregister pairs per measured window (each pair is two changes).
    pairs: usize,
    /// Pairs for the largest sizes (at or above 100,000 instances).
    pairs_large: usize,
    /// Measured windows per cell; the cell's CPU is their median (the shared machine's noise
    /// comes in bursts that one window of a few hundred milliseconds catches whole or not at all).
    windows: usize,
    /// Registrations of the burst.
    burst: usize,
    /// Cells with more than this many instances held in all (clients × size) are skipped.
    budget: usize,
    /// Bursts are run only where clients × size is at most this, with at most this many clients.
    burst_budget: usize,
    burst_clients: usize,
    /// Registries that fill the service (and make the burst) at once.
    populators: usize,
    /// Idle window with the clients attached.
    idle: Duration,
    /// The longest wait for the process to go nearly idle between windows (`settle`).
    settle: Duration,
    note: Option<String>,
}

impl Config {
    pub(crate) fn new(size: Size, scheme: &str) -> Config {
        let mut c = match size {
            Size::Quick => Config {
                clients: vec![1, 50],
                sizes: vec![10, 1000, 10_000],
                pairs: 5,
                pairs_large: 5,
                windows: 1,
                burst: 200,
                budget: 100_000,
                burst_budget: 10_000,
                burst_clients: 50,
                populators: 8,
                idle: Duration::from_millis(300),
                settle: Duration::from_secs(30),
                note: None,
            },
            // Two sizes (the second one topped up, and the flatness line), two client counts, a
            // cell over the budget, cells with and without a burst, two windows (their spread).
            Size::Smoke => Config {
                clients: vec![1, 2],
                sizes: vec![4, 8],
                pairs: 1,
                pairs_large: 1,
                windows: 2,
                burst: 3,
                budget: 8,
                burst_budget: 8,
                burst_clients: 2,
                populators: 2,
                idle: Duration::from_millis(100),
                // A debug build's backend clients do not go that idle (Redis's reapers).
                settle: Duration::from_millis(300),
                note: None,
            },
            Size::Full => Config {
                clients: vec![1, 50, 200, 1000],
                sizes: vec![10, 1000, 10_000, 100_000],
                // Enough changes that one stall (a heartbeat's read-back, an allocator pause) does
                // not make the average: with 5 pairs at 100,000, one 50 ms stall read as 5 ms a change.
                pairs: 50,
                pairs_large: 50,
                windows: 5,
                burst: 1000,
                budget: 5_000_000,
                burst_budget: 1_000_000,
                burst_clients: 50,
                populators: 16,
                idle: Duration::from_secs(1),
                settle: Duration::from_secs(30),
                note: None,
            },
        };
        // REGISTRY_BENCH_ESTATE_CLIENTS / _SIZES (comma-separated) narrow or widen the matrix.
        let list = |var: &str| -> Option<Vec<usize>> {
            let v = std::env::var(var).ok()?;
            v.split(',').map(|x| x.trim().parse().ok()).collect()
        };
        if let Some(v) = list("REGISTRY_BENCH_ESTATE_CLIENTS") {
            c.clients = v;
        }
        if let Some(v) = list("REGISTRY_BENCH_ESTATE_SIZES") {
            c.sizes = v;
        }
        // REGISTRY_BENCH_ESTATE_PAIRS: register + deregister pairs per window (at every size), for
        // steadier figures or a profile of the changes rather than of the initial load.
        if let Some(&[p]) = list("REGISTRY_BENCH_ESTATE_PAIRS").as_deref() {
            (c.pairs, c.pairs_large) = (p.max(1), p.max(1));
        }
        if let Some(&[w]) = list("REGISTRY_BENCH_ESTATE_WINDOWS").as_deref() {
            c.windows = w.max(1);
        }
        match scheme {
            "memory" | "etcd" => {}
            "consul" => {
                // Consul answers every watch with the whole prefix (a blocking query), and its
                // agent allows 200 connections per client address by default.
                c.sizes
                    .retain(|&s| s <= if size == Size::Quick { 1000 } else { 10_000 });
                c.clients.retain(|&n| n <= 200);
                if size == Size::Quick {
                    // 50 clients × 1,000 instances is 1 s a change on Consul, and removing a burst
                    // waits for the agent's catalog on each delete: not for a quick run.
                    c.budget = 10_000;
                    c.burst_budget = 0;
                }
                c.note = Some(format!(
                    "On Consul: at most {} instances and 200 clients (a watch answer is the whole prefix; the agent allows 200 connections per client address).",
                    c.sizes.last().copied().unwrap_or(0)
                ));
            }
            _ => {
                c.sizes.retain(|&s| s <= 10_000);
                if size == Size::Full {
                    c.note = Some(
                        "100,000 instances only on memory and etcd (pre-population time).".into(),
                    );
                }
            }
        }
        c
    }
}

/// Process CPU time (user + system, every thread), nanosecond resolution.
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What the clients are waiting for: a count of online instances, numbered so that each client
/// counts itself once per target.
struct Probe {
    /// `epoch << 32 | wanted online count`, in one word so that a client never reads half of it.
    target: AtomicU64,
    reached: AtomicUsize,
    clients: AtomicUsize,
    /// When the last client got there.
    done_at: Mutex<Option<Instant>>,
    notify: Notify,
}

impl Probe {
    fn new() -> Arc<Probe> {
        Arc::new(Probe {
            target: AtomicU64::new(u64::from(u32::MAX)),
            reached: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            done_at: Mutex::new(None),
            notify: Notify::new(),
        })
    }

    /// Sets the next target; call before making the change.
    fn expect(&self, online: usize) {
        self.reached.store(0, Ordering::SeqCst);
        *self.done_at.lock().unwrap() = None;
        let epoch = (self.target.load(Ordering::SeqCst) >> 32) + 1;
        self.target
            .store(epoch << 32 | online as u64, Ordering::SeqCst);
    }

    fn check(&self, online: usize, counted: &mut u64) {
        let t = self.target.load(Ordering::SeqCst);
        if t >> 32 != *counted && (t & u64::from(u32::MAX)) as usize == online {
            *counted = t >> 32;
            let n = self.reached.fetch_add(1, Ordering::SeqCst) + 1;
            if n == self.clients.load(Ordering::SeqCst) {
                *self.done_at.lock().unwrap() = Some(Instant::now());
                self.notify.notify_one();
            }
        }
    }

    /// Waits until every client reached the target; the instant the last one did.
    async fn wait(&self, what: &str) -> Instant {
        self.try_wait(what).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`wait`](Self::wait), or how far the clients got after 300 s.
    async fn try_wait(&self, what: &str) -> Result<Instant, String> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(at) = *self.done_at.lock().unwrap() {
                return Ok(at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "estate: {what}: {} of {} clients after 300 s",
                    self.reached.load(Ordering::SeqCst),
                    self.clients.load(Ordering::SeqCst)
                ));
            }
            let _ = tokio::time::timeout(left, self.notify.notified()).await;
        }
    }
}

/// One client's watcher: wakes on each new snapshot and compares its online count.
async fn follow(mut rx: watch::Receiver<Arc<ServiceSnapshot>>, probe: Arc<Probe>) {
    let mut counted = 0u64;
    loop {
        let online = rx.borrow_and_update().online().len();
        probe.check(online, &mut counted);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

struct Client {
    _registry: Registry,
    _discovery: Discovery,
    task: tokio::task::JoinHandle<()>,
}

async fn start_clients(
    n: usize,
    url: &str,
    shared: &Arc<dyn Backend>,
    ns: &str,
    ttl: Duration,
    probe: &Arc<Probe>,
) -> Result<Vec<Client>, String> {
    let memory = url.starts_with("memory:");
    let started: Vec<Result<Client, String>> = futures::stream::iter(0..n)
        .map(|_| async move {
            let backend = if memory {
                shared.clone()
            } else {
                registry::connect(url)
                    .await
                    .map_err(|e| format!("client connect: {e}"))?
            };
            let r = make_registry(backend, ns, ttl);
            let d = r
                .discover(SERVICE)
                .await
                .map_err(|e| format!("client discover: {e}"))?;
            let rx = d.directory().subscribe(SERVICE);
            let task = tokio::spawn(follow(rx, probe.clone()));
            Ok(Client {
                _registry: r,
                _discovery: d,
                task,
            })
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let failed = started.iter().filter(|c| c.is_err()).count();
    let first = started.iter().find_map(|c| c.as_ref().err().cloned());
    let clients: Vec<Client> = started.into_iter().flatten().collect();
    match first {
        None => Ok(clients),
        Some(e) => {
            stop_clients(clients);
            Err(format!(
                "{failed} of {n} clients could not start; the first: {e}"
            ))
        }
    }
}

/// Ends the clients' follow tasks and drops their registries and discoveries.
fn stop_clients(clients: Vec<Client>) {
    for c in &clients {
        c.task.abort();
    }
}

fn instance(id: String, i: usize) -> Instance {
    Instance::new(SERVICE, id)
        .addr(format!(
            "10.{}.{}.{}:8080",
            i / 62_500 % 250,
            i / 250 % 250,
            i % 250
        ))
        .meta("zone", format!("z{}", i % 3))
}

/// Registers `ids` spread over the populating registries, all at once; the handles.
async fn register_all(
    pops: &[Registry],
    ids: std::ops::Range<usize>,
    prefix: &str,
) -> Vec<Registration> {
    let per = ids.len().div_ceil(pops.len()).max(1);
    let ids: Vec<usize> = ids.collect();
    let chunks = ids.chunks(per).zip(pops).map(|(chunk, r)| async move {
        let mut out = Vec::with_capacity(chunk.len());
        for &i in chunk {
            out.push(
                r.register(instance(format!("{prefix}{i:06}"), i))
                    .await
                    .expect("register"),
            );
        }
        out
    });
    futures::future::join_all(chunks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Waits (at most `limit`, 30 s in a full run) until the process is nearly idle: what stopped
/// clients leave to free must not be counted in the next window (50 clients' copies of 100,000
/// instances took over 2 s).
async fn settle(limit: Duration) {
    for _ in 0..limit.as_millis().div_ceil(100) {
        let c0 = cpu_now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if cpu_now() - c0 < Duration::from_millis(1) {
            return;
        }
    }
}

/// Where the `k`-th pair of a window lands among `size` ids: a stride of about 0.618 × `size`
/// (coprime with it), so that consecutive pairs are far apart and a window of `size` pairs visits
/// every place once.
fn spot(k: usize, size: usize) -> usize {
    let mut stride = (size as f64 * 0.618_034) as usize | 1;
    while gcd(stride, size) != 1 {
        stride += 2;
    }
    (size / 2 + k * stride) % size.max(1)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// M changes (register + deregister pairs of one instance) by `w`, each waited for at every client
/// when `probe` has clients. The latencies of registrations and of deregistrations.
async fn window(
    w: &Registry,
    size: usize,
    pairs: std::ops::Range<usize>,
    probe: &Probe,
    clients: usize,
    tag: &str,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut reg, mut dereg) = (Vec::new(), Vec::new());
    for k in pairs {
        // Among the service's ids (they are `e000000`, `e000001`, ...), as a real instance's id
        // lands: not appended after all of them, and at a different place each time (a fleet
        // restarting touches ids all over the service), so that no change finds the path of the
        // one before in the processor's caches.
        let id = format!("e{:06}-w-{tag}-{k}", spot(k, size));
        if clients > 0 {
            probe.expect(size + 1);
        }
        let t0 = Instant::now();
        let h = w.register(instance(id, size + k)).await.expect("register");
        if clients > 0 {
            reg.push(probe.wait("register -> visible").await - t0);
            probe.expect(size);
        }
        let t0 = Instant::now();
        h.deregister().await.expect("deregister");
        if clients > 0 {
            dereg.push(probe.wait("deregister -> gone").await - t0);
        }
    }
    (reg, dereg)
}

fn us(d: f64) -> String {
    if d.abs() >= 1000.0 {
        format!("{:.2} ms", d / 1000.0)
    } else {
        format!("{d:.1} µs")
    }
}

fn mib(b: f64) -> String {
    format!("{:.2} MiB", b / (1024.0 * 1024.0))
}

/// One measured cell: N clients over a service of S instances.
struct Cell {
    size: usize,
    clients: usize,
    changes: usize,
    reg: stats::Summary,
    dereg: stats::Summary,
    /// Process CPU over each change window, and a window's mean length.
    cpus: Vec<Duration>,
    wall: Duration,
    /// Process CPU seconds per second with the clients attached and nothing changing.
    idle: f64,
    /// Time to start the clients and load the service into each.
    load: Duration,
    rss: (Option<u64>, Option<u64>),
    /// The burst: until the last registration returned, until every client had all.
    burst: Option<(Duration, Duration)>,
}

/// N clients over the service as it is now (`size` instances): load, memory, idle cost, the change
/// window, the burst.
#[allow(clippy::too_many_arguments)]
async fn cell(
    url: &str,
    backend: &Arc<dyn Backend>,
    ns: &str,
    ttl: Duration,
    cfg: &Config,
    w: &Registry,
    pops: &[Registry],
    size: usize,
    n: usize,
    pairs: usize,
) -> Result<Cell, String> {
    let probe = Probe::new();
    probe.clients.store(n, Ordering::SeqCst);
    probe.expect(size);
    settle(cfg.settle).await;
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    let clients = start_clients(n, url, backend, ns, ttl, &probe).await?;
    if let Err(e) = probe.try_wait("initial load").await {
        // A cell the backend cannot load in time (50 clients listing 100,000 instances from
        // one etcd on two cores) is a figure too, not the end of the run.
        stop_clients(clients);
        settle(cfg.settle).await;
        return Err(e);
    }
    let load = t0.elapsed();
    settle(cfg.settle).await;
    let rss1 = rss_bytes();
    let c0 = cpu_now();
    tokio::time::sleep(cfg.idle).await;
    let idle = (cpu_now() - c0).as_secs_f64() / cfg.idle.as_secs_f64();
    let (mut reg, mut dereg, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    let t0 = Instant::now();
    for r in 0..cfg.windows {
        let c0 = cpu_now();
        let ks = r * pairs..(r + 1) * pairs;
        let (rg, dr) = window(w, size, ks, &probe, n, &format!("{size}-{n}")).await;
        cpus.push(cpu_now() - c0);
        reg.extend(rg);
        dereg.extend(dr);
    }
    let wall = t0.elapsed() / cfg.windows as u32;
    let burst = if n * size <= cfg.burst_budget && n <= cfg.burst_clients {
        probe.expect(size + cfg.burst);
        let t0 = Instant::now();
        let regs = register_all(pops, 0..cfg.burst, &format!("b{size}-{n}-")).await;
        let returned = t0.elapsed();
        let all = probe.wait("burst").await - t0;
        probe.expect(size);
        futures::future::join_all(regs.into_iter().map(|r| r.deregister())).await;
        probe.wait("burst removed").await;
        Some((returned, all))
    } else {
        None
    };
    stop_clients(clients);
    settle(cfg.settle).await;
    Ok(Cell {
        size,
        clients: n,
        changes: 2 * pairs,
        reg: summarize(reg),
        dereg: summarize(dereg),
        cpus,
        wall,
        idle,
        load,
        rss: (rss0, rss1),
        burst,
    })
}

pub(crate) async fn run(url: &str, backend: Arc<dyn Backend>, ns: &str, cfg: &Config) -> Section {
    let ttl = ttl_for(&*backend, Duration::from_secs(30));
    let pops: Vec<Registry> = (0..cfg.populators)
        .map(|_| make_registry(backend.clone(), ns, ttl))
        .collect();
    let w = make_registry(backend.clone(), ns, ttl);
    let no_clients = Probe::new();
    let mut held: Vec<Registration> = Vec::new();
    let mut rows = Vec::new();
    let mut j_sizes = Vec::new();
    // (size, clients, µs per client per change), for the flatness line.
    let mut per_change: Vec<(usize, usize, f64)> = Vec::new();
    let mut skipped = Vec::new();
    for &size in &cfg.sizes {
        let t0 = Instant::now();
        let have = held.len();
        held.extend(register_all(&pops, have..size, "e").await);
        let filled = t0.elapsed();
        eprintln!(
            "  estate: {size} instances (+{} in {:.1} s)",
            size - have,
            filled.as_secs_f64()
        );
        let pairs = if size >= 100_000 {
            cfg.pairs_large
        } else {
            cfg.pairs
        };
        let changes = 2 * pairs;
        settle(cfg.settle).await;
        let c0 = cpu_now();
        window(&w, size, 0..pairs, &no_clients, 0, &format!("{size}-b0")).await;
        let base_before = cpu_now() - c0;
        let mut measured = Vec::new();
        let mut unloaded = Vec::new();
        for &n in &cfg.clients {
            if n * size > cfg.budget {
                skipped.push(format!("{n} × {size}"));
                continue;
            }
            eprintln!("  estate: {n} clients × {size} instances ...");
            match cell(url, &backend, ns, ttl, cfg, &w, &pops, size, n, pairs).await {
                Ok(c) => measured.push(c),
                Err(e) => {
                    eprintln!("  {e}");
                    unloaded.push((n, e));
                    // More clients would not load either.
                    break;
                }
            }
        }
        settle(cfg.settle).await;
        let c0 = cpu_now();
        window(&w, size, 0..pairs, &no_clients, 0, &format!("{size}-b1")).await;
        let base_after = cpu_now() - c0;
        // The lower window: noise only adds CPU, and freeing 50 clients' copies of 100,000
        // instances can outlast `settle` and land in the window after.
        let base = base_before.min(base_after);
        let base_per = base.as_secs_f64() * 1e6 / changes as f64;
        let size_rows = rows.len();
        rows.push(format!(
            "| {size} | 0 | registrar alone: {} per change (windows before/after: {} / {}) | | | | | | |",
            us(base_per),
            us(base_before.as_secs_f64() * 1e6 / changes as f64),
            us(base_after.as_secs_f64() * 1e6 / changes as f64),
        ));
        let mut j_cells = Vec::new();
        for c in &measured {
            let nm = (c.clients * c.changes) as f64;
            let per_window: Vec<f64> = c
                .cpus
                .iter()
                .map(|cpu| (cpu.as_secs_f64() - base.as_secs_f64()) * 1e6 / nm)
                .collect();
            let per = median(&per_window);
            let spread = if per_window.len() > 1 {
                let lo = per_window.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = per_window.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!(", median of {}: {}–{}", per_window.len(), us(lo), us(hi))
            } else {
                String::new()
            };
            let idle_per = c.idle * c.wall.as_secs_f64() * 1e6 / nm;
            let mem = match c.rss {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / c.clients as f64),
                _ => None,
            };
            per_change.push((c.size, c.clients, per));
            rows.push(format!(
                "| {} | {} | **{}** (idle {}{}) | {} | {} | {} / {} | {} | {} | {:.2} s |",
                c.size,
                c.clients,
                us(per),
                us(idle_per),
                spread,
                ms(c.reg.p50),
                ms(c.reg.p99),
                ms(c.dereg.p50),
                ms(c.dereg.p99),
                c.burst
                    .map_or("—".into(), |(r, a)| format!("{} / {}", ms(r), ms(a))),
                mem.map_or("—".into(), mib),
                c.load.as_secs_f64(),
            ));
            let mut jc = json!({
                "clients": c.clients,
                "changes": c.changes,
                "cpu_windows_ms": c.cpus.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                "cpu_per_client_per_change_us_windows": per_window,
                "window_s": c.wall.as_secs_f64(),
                "cpu_per_client_per_change_us": per,
                "idle_cpu_s_per_s": c.idle,
                "idle_per_client_per_change_us": idle_per,
                "register_to_visible_at_all": sjson(&c.reg),
                "deregister_to_gone_at_all": sjson(&c.dereg),
                "load_s": c.load.as_secs_f64(),
                "rss_before_bytes": c.rss.0,
                "rss_after_bytes": c.rss.1,
                "memory_per_client_bytes": mem,
            });
            if let Some((r, a)) = c.burst {
                jc["burst"] = json!({
                    "registrations": cfg.burst,
                    "returned_ms": r.as_secs_f64() * 1e3,
                    "all_clients_have_all_ms": a.as_secs_f64() * 1e3,
                });
            }
            j_cells.push(jc);
        }
        for (n, e) in &unloaded {
            rows.push(format!(
                "| {size} | {n} | not measured: {} | | | | | | |",
                e.trim_start_matches("estate: ")
            ));
        }
        for row in &rows[size_rows..] {
            eprintln!("  {row}");
        }
        j_sizes.push(json!({
            "instances": size,
            "fill_s": filled.as_secs_f64(),
            "changes": changes,
            "baseline_cpu_ms": [base_before.as_secs_f64() * 1e3, base_after.as_secs_f64() * 1e3],
            "baseline_per_change_us": base_per,
            "cells": j_cells,
            "not_loaded": unloaded.iter().map(|(n, e)| json!({"clients": n, "error": e})).collect::<Vec<_>>(),
        }));
    }
    for r in &pops {
        let _ = r.shutdown().await;
    }
    drop(held);
    let _ = w.shutdown().await;
    report(cfg, rows, j_sizes, &per_change, skipped)
}

fn report(
    cfg: &Config,
    rows: Vec<String>,
    j_sizes: Vec<Value>,
    per_change: &[(usize, usize, f64)],
    skipped: Vec<String>,
) -> Section {
    let mut md = vec![
        format!(
            "### Estate: fan-out and service size (clients {:?}, instances {:?}; all in this process)",
            cfg.clients, cfg.sizes
        ),
        String::new(),
        "N discovery clients, each with its own `Registry` and backend connection (on memory:// the shared in-process store), and one registrar, all in this process. \
         Per service size, the registrar makes M changes (register + deregister pairs) with no client attached, before and after the cells (baseline); then, per client count, \
         the same M changes, each waited for until every client's directory shows it. **CPU per client per change** = (process CPU of that window − the lower baseline window) / (clients × M), \
         from `CLOCK_PROCESS_CPUTIME_ID` (with several windows per cell: their median, and their range); it includes the backend client's work (decoding, the memory store's delivery to each watcher) and one O(1) wake per client per change for the detection. \
         *idle* is what the clients cost with nothing changing, over the same window, per client per change (not subtracted). Latencies are from the register/deregister call until the last client shows it. \
         Burst: registrations at once over several registries; until the last returned / until every client has all. Memory per client: resident memory growth while the clients start and load, / N.".into(),
        String::new(),
        "| instances | clients | CPU per client per change | register -> visible at all p50 | p99 | deregister -> gone at all p50 / p99 | burst of 1,000: registered / all clients have all | memory per client | start + load |".into(),
        "|---|---|---|---|---|---|---|---|---|".into(),
    ];
    if cfg.burst != 1000 {
        md[4] = md[4].replace("burst of 1,000", &format!("burst of {}", cfg.burst));
    }
    md.extend(rows);
    md.push(String::new());
    let mut flat = json!({});
    for &n in &cfg.clients {
        let mine: Vec<&(usize, usize, f64)> = per_change.iter().filter(|c| c.1 == n).collect();
        if let (Some(first), Some(last)) = (mine.first(), mine.last())
            && last.0 > first.0
        {
            let ratio = last.2 / first.2;
            md.push(format!(
                "Per-change cost, {n} client(s): {} at {} instances, {} at {}: **{ratio:.2}×**.",
                us(first.2),
                first.0,
                us(last.2),
                last.0
            ));
            flat[n.to_string()] = json!({"from": first.0, "to": last.0, "ratio": ratio});
        }
    }
    if !skipped.is_empty() {
        md.push(format!(
            "Not run (clients × instances over {}): {}.",
            cfg.budget,
            skipped.join(", ")
        ));
    }
    if let Some(note) = &cfg.note {
        md.push(note.clone());
    }
    Section {
        md,
        json: json!({
            "clients": cfg.clients, "sizes": cfg.sizes, "burst": cfg.burst,
            "budget": cfg.budget, "burst_budget": cfg.burst_budget,
            "sizes_measured": j_sizes, "flatness": flat, "skipped": skipped,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::spot;

    #[test]
    fn a_window_of_size_pairs_lands_once_at_every_place_and_never_next_to_the_last() {
        for size in [1usize, 2, 10, 1000, 10_000, 100_000] {
            let mut seen = vec![false; size];
            for k in 0..size {
                let at = spot(k, size);
                assert!(!seen[at], "size {size}: place {at} twice");
                seen[at] = true;
                if size >= 10 && k > 0 {
                    let step = at.abs_diff(spot(k - 1, size));
                    assert!(
                        step.min(size - step) > size / 10,
                        "size {size}: pairs close"
                    );
                }
            }
        }
    }
}
