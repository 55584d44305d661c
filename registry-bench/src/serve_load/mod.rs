//! Serve load: the real `registry serve` binary, in its own process (so that its memory and CPU are
//! its own), over a backend shared with this process, under many Server-Sent Events clients and an
//! open-loop rate of JSON requests, while instances register and deregister at a steady pace.
//!
//! Phases, all in one run so that every figure has its baseline next to it:
//!
//! 1. **baseline**: the JSON request rate with no SSE client (changes driven all the same);
//! 2. **load**: N SSE clients connect (each gets its `resync`), then the same JSON rate; every client
//!    parses every event and checks it got each change once, with the delay from the change's
//!    `register`/`deregister` call to its receipt;
//! 3. **baseline again** (full mode): the JSON rate alone once more, to show the drift of the machine;
//! 4. **stalled**: N clients open the change stream and never read; the server's resident memory and
//!    open streams are sampled until the write timeout has dropped them.
//!
//! JSON latency is measured from each request's scheduled send time (a fixed rate, whatever the
//! answers do), so a slow server shows as latency rather than as a lower rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use registry::Backend;
use registry::engine::{Instance, RegistrationState};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::harness::{registry as make_registry, ttl_for};
use crate::report::Section;
use crate::size::Size;
use crate::stats::{json as sjson, ms, summarize_or_zero};

mod changes;
mod http;
mod json_load;
mod server;
mod sse;

use changes::{Changes, drive_changes};
use http::{client, get};
use json_load::{LoadResult, ROUTES, json_load};
use server::{cpu_seconds, open_files_limit, send_queues, start_server, status_bytes};
use sse::{open_streams, sse_client, stalled_client};

/// The sizes of a run.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// SSE clients held open in the load phase.
    pub(crate) sse: usize,
    /// JSON requests per second (open loop).
    pub(crate) rps: u32,
    /// Length of each measured phase.
    pub(crate) phase: Duration,
    /// Registrations plus deregistrations per second, in every phase.
    pub(crate) changes_per_s: u32,
    pub(crate) services: usize,
    pub(crate) per_service: usize,
    /// Clients that never read, in the stalled phase.
    pub(crate) stalled: usize,
    /// How long the stalled phase is watched.
    pub(crate) stall_watch: Duration,
    /// Waves of stalled clients, one after the other (the second shows whether memory is reused).
    pub(crate) stall_waves: usize,
    /// Whether the baseline is measured again after the load phase.
    pub(crate) baseline_after: bool,
    /// The pause after the SSE clients connect and after they leave, before the server is measured;
    /// the last changes of the load phase get twice that to arrive.
    pub(crate) settle: Duration,
}

impl Config {
    pub(crate) fn new(size: Size) -> Config {
        match size {
            Size::Quick => Config {
                sse: 200,
                rps: 200,
                phase: Duration::from_secs(5),
                changes_per_s: 20,
                services: 20,
                per_service: 50,
                stalled: 200,
                stall_watch: Duration::from_secs(4),
                stall_waves: 1,
                baseline_after: false,
                settle: Duration::from_secs(1),
            },
            // A few clients of each kind for a second: every phase, both kinds of change.
            Size::Smoke => Config {
                sse: 3,
                rps: 20,
                phase: Duration::from_secs(1),
                changes_per_s: 20,
                services: 3,
                per_service: 4,
                stalled: 3,
                stall_watch: Duration::from_secs(1),
                stall_waves: 1,
                baseline_after: true,
                settle: Duration::from_millis(200),
            },
            Size::Full => Config {
                sse: 1000,
                rps: 1000,
                phase: Duration::from_secs(60),
                changes_per_s: 20,
                services: 20,
                per_service: 50,
                stalled: 1000,
                // The server's write timeout (30 s) and room to see memory come back.
                stall_watch: Duration::from_secs(45),
                stall_waves: 2,
                baseline_after: true,
                settle: Duration::from_secs(1),
            },
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

struct Phase {
    name: &'static str,
    sse: usize,
    load: LoadResult,
    cpu: f64,
    bench_cpu: f64,
    rss_end: u64,
}

pub(crate) async fn run(
    url: &str,
    backend: Arc<dyn Backend>,
    ns: &str,
    bin: &str,
    cfg: &Config,
) -> Result<Section, String> {
    let fd_limit = open_files_limit();
    let needed = (cfg.sse.max(cfg.stalled) + 400) as u64;
    let mut notes = Vec::new();
    if fd_limit.is_some_and(|l| l < needed) {
        notes.push(format!(
            "The open-files limit ({}) is below the {needed} descriptors this run needs: raise it (`ulimit -n`); expect connection errors.",
            fd_limit.unwrap_or(0)
        ));
    }

    // The directory: services x instances, registered from this process through one shared lease.
    let ttl = ttl_for(&*backend, Duration::from_secs(10));
    let reg = make_registry(backend.clone(), ns, ttl);
    let mut population = Vec::with_capacity(cfg.services * cfg.per_service);
    for s in 0..cfg.services {
        for i in 0..cfg.per_service {
            let n = s * cfg.per_service + i;
            let inst = Instance::new(format!("svc-{s:02}"), format!("i-{i:03}"))
                .addr(format!("10.{}.{}.{}:8080", s, i / 250, i % 250))
                .addr(format!("[fd00::{s:x}:{i:x}]:8080"))
                .meta("zone", ["eu-west-1a", "eu-west-1b", "us-east-1a"][n % 3])
                .meta("team", format!("team-{}", s % 5))
                .version(format!("1.{}.{}", n % 4, n % 10))
                .weight(100);
            population.push(reg.register(inst).await.map_err(|e| e.to_string())?);
        }
    }
    let total = cfg.services * cfg.per_service;

    let server = start_server(bin, url, ns).await?;
    let (pid, addr) = (server.pid, server.addr);
    let c = client();
    // Until the server's directory holds the whole population.
    let t0 = Instant::now();
    loop {
        if let Ok((200, body)) = get(&c, &format!("http://{addr}/v1/services")).await {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let n: u64 = v["services"]
                .as_array()
                .map(|a| a.iter().map(|s| s["instances"].as_u64().unwrap_or(0)).sum())
                .unwrap_or(0);
            if n >= total as u64 {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("the server did not show the population within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_start = status_bytes(pid, "VmRSS").unwrap_or(0);

    let changes = Arc::new(Changes::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let driver = tokio::spawn(drive_changes(
        reg.clone(),
        cfg.services,
        cfg.changes_per_s,
        changes.clone(),
        stop_rx.clone(),
    ));

    let mut phases = Vec::new();
    let measure = |name: &'static str, sse: usize| {
        let c = c.clone();
        async move {
            let (cpu0, b0) = (cpu_seconds(pid), cpu_seconds(std::process::id()));
            let load = json_load(&c, addr, cfg.rps, cfg.phase, cfg.services).await;
            let cpu = cpu_seconds(pid).zip(cpu0).map_or(0.0, |(a, b)| a - b);
            let bench_cpu = cpu_seconds(std::process::id())
                .zip(b0)
                .map_or(0.0, |(a, b)| a - b);
            Phase {
                name,
                sse,
                load,
                cpu,
                bench_cpu,
                rss_end: status_bytes(pid, "VmRSS").unwrap_or(0),
            }
        }
    };

    eprintln!("  baseline: {} JSON requests/s, no SSE client ...", cfg.rps);
    phases.push(measure("baseline (no SSE client)", 0).await);

    // SSE clients: connect them all (64 connecting at a time), each until its start resync.
    eprintln!("  connecting {} SSE clients ...", cfg.sse);
    let rss_before_sse = status_bytes(pid, "VmRSS").unwrap_or(0);
    let started = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(Semaphore::new(64));
    let (sse_stop_tx, sse_stop_rx) = watch::channel(false);
    let t_connect = Instant::now();
    let clients: Vec<_> = (0..cfg.sse)
        .map(|_| {
            tokio::spawn(sse_client(
                addr,
                changes.clone(),
                started.clone(),
                slots.clone(),
                sse_stop_rx.clone(),
            ))
        })
        .collect();
    while started.load(Ordering::SeqCst) < cfg.sse && t_connect.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_took = t_connect.elapsed();
    let connected = started.load(Ordering::SeqCst);
    tokio::time::sleep(cfg.settle).await;
    let rss_after_connect = status_bytes(pid, "VmRSS").unwrap_or(0);
    let streams_open = open_streams(&c, addr).await;
    let (queued_connected, _) = send_queues(addr.port());
    let first_expected = changes.count();

    eprintln!(
        "  {connected} SSE clients connected in {connect_took:.1?}; load: {} JSON requests/s ...",
        cfg.rps
    );
    phases.push(measure("with SSE clients", connected).await);
    let last_expected = changes.count();
    // Let the last changes arrive.
    tokio::time::sleep(cfg.settle * 2).await;
    let _ = sse_stop_tx.send(true);
    let mut stats = Vec::with_capacity(clients.len());
    for t in clients {
        if let Ok(s) = t.await {
            stats.push(s);
        }
    }
    tokio::time::sleep(cfg.settle).await;
    let rss_after_close = status_bytes(pid, "VmRSS").unwrap_or(0);

    if cfg.baseline_after {
        eprintln!("  baseline again ...");
        phases.push(measure("baseline again (no SSE client)", 0).await);
    }

    // Delivery: every client must have each change made while it was connected, once.
    let expected = last_expected - first_expected;
    let (mut missing, mut dups, mut delays) = (0u64, 0u64, Vec::new());
    let (mut unknown, mut ooo, mut later, mut other, mut failed) = (0, 0, 0, 0, 0);
    let mut first_failure = None;
    let mut resync_bytes = 0;
    for s in &stats {
        let mut seen = vec![0u32; expected];
        for &(idx, us) in &s.got {
            let idx = idx as usize;
            if (first_expected..last_expected).contains(&idx) {
                seen[idx - first_expected] += 1;
                delays.push(Duration::from_micros(u64::from(us)));
            }
        }
        missing += seen.iter().filter(|&&n| n == 0).count() as u64;
        dups += seen
            .iter()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum::<u64>();
        unknown += s.unknown;
        ooo += s.out_of_order;
        later += s.later_resyncs;
        other += s.other;
        resync_bytes = resync_bytes.max(s.resync_bytes);
        if let Some(f) = &s.failed {
            failed += 1;
            first_failure.get_or_insert_with(|| f.clone());
        }
    }
    let delivery = summarize_or_zero(delays);

    // Stalled clients: they send their request and never read; a 2 KiB receive buffer makes the
    // server's first write (the resync) stall at once.
    eprintln!(
        "  {} stalled SSE clients, watched for {:?} ...",
        cfg.stalled, cfg.stall_watch
    );
    let rss_before_stalled = status_bytes(pid, "VmRSS").unwrap_or(0);
    let mut stall_errors = 0;
    let mut stall_connects = Vec::new();
    let mut timeline = Vec::new();
    let mut open_at_end = None;
    for wave in 1..=cfg.stall_waves {
        let t_stall = Instant::now();
        let mut stalled = Vec::with_capacity(cfg.stalled);
        for _ in 0..cfg.stalled {
            match stalled_client(addr).await {
                Ok(s) => stalled.push(s),
                Err(_) => stall_errors += 1,
            }
        }
        let stall_connect = t_stall.elapsed();
        stall_connects.push(stall_connect);
        let mut next_sample = stall_connect;
        while t_stall.elapsed() < stall_connect + cfg.stall_watch {
            if t_stall.elapsed() >= next_sample {
                let rss = status_bytes(pid, "VmRSS").unwrap_or(0);
                let open = open_streams(&c, addr).await;
                let (queued, _) = send_queues(addr.port());
                timeline.push((wave, t_stall.elapsed(), rss, open, queued));
                next_sample += if cfg.stall_watch > Duration::from_secs(10) {
                    Duration::from_secs(3)
                } else {
                    Duration::from_secs(1)
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        open_at_end = open_streams(&c, addr).await;
        drop(stalled);
    }

    let _ = stop_tx.send(true);
    let failed_changes = driver.await.unwrap_or(0);
    let hwm = status_bytes(pid, "VmHWM").unwrap_or(0);
    let rss_end = status_bytes(pid, "VmRSS").unwrap_or(0);
    let total_cpu = cpu_seconds(pid).unwrap_or(0.0);
    let shutdown = server.stop().await;
    // Clean up at once: revoke the shared lease (deletes the population), stop the keeper.
    if let Some(RegistrationState::Registered { lease, .. }) = population.first().map(|r| r.state())
    {
        let _ = backend.revoke(&lease).await;
    }
    reg.crash();
    for r in population {
        std::mem::forget(r);
    }

    // The report.
    let base = &phases[0];
    let load = &phases[1];
    let per_client =
        rss_after_connect.saturating_sub(rss_before_sse) as f64 / connected.max(1) as f64;
    let mut md = vec![
        format!(
            "### Serve load: `registry serve` under {} SSE clients and {} JSON requests/s ({} services × {} instances, {} changes/s, {:?} per phase)",
            cfg.sse, cfg.rps, cfg.services, cfg.per_service, cfg.changes_per_s, cfg.phase
        ),
        String::new(),
        format!(
            "The release `registry serve` in its own process (pid {pid}) over this backend; this process drives it on loopback and shares the machine's cores with it. JSON latency is from each request's scheduled time (open loop, at most 256 in flight). Requests: 1/5 `/v1/services`, 2/5 `/v1/services/{{s}}` ({} instances), 2/5 `/v1/services/{{s}}/owners?key=..&n=2`.",
            cfg.per_service
        ),
        String::new(),
        "| phase | SSE clients | requests (rate reached) | errors | p50 | p90 | p99 | max | server CPU | bench CPU | server RSS at end |".into(),
        "|---|---|---|---|---|---|---|---|---|---|---|".into(),
    ];
    let mut jphases = Vec::new();
    for p in &phases {
        let l = &p.load;
        let secs = l.took.as_secs_f64();
        md.push(format!(
            "| {} | {} | {} ({:.0}/s) | {} | {} | {} | {} | {} | {:.2} cores | {:.2} cores | {} |",
            p.name,
            p.sse,
            l.sent,
            l.sent as f64 / secs,
            l.errors,
            ms(l.all.p50),
            ms(l.all.p90),
            ms(l.all.p99),
            ms(l.all.max),
            p.cpu / secs,
            p.bench_cpu / secs,
            mib(p.rss_end)
        ));
        let routes: serde_json::Map<String, Value> = ROUTES
            .iter()
            .zip(&l.by_route)
            .map(|(r, s)| ((*r).to_owned(), sjson(s)))
            .collect();
        jphases.push(json!({
            "name": p.name, "sse_clients": p.sse, "requests": l.sent, "seconds": secs,
            "errors": l.errors, "first_error": l.first_error, "latency": sjson(&l.all),
            "by_route": routes, "server_cpu_s": p.cpu, "bench_cpu_s": p.bench_cpu,
            "server_rss_end": p.rss_end, "response_bytes": l.bytes,
        }));
    }
    for p in &phases {
        if let Some(e) = &p.load.first_error {
            md.push(String::new());
            md.push(format!("First error ({}): {e}", p.name));
        }
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    md.push(String::new());
    md.push(format!(
        "With {connected} SSE clients against the baseline just before: JSON p50 **{:.2}×**, p90 {:.2}×, p99 **{:.2}×**; server CPU {:.2}×.",
        ratio(load.load.all.p50, base.load.all.p50),
        ratio(load.load.all.p90, base.load.all.p90),
        ratio(load.load.all.p99, base.load.all.p99),
        load.cpu / base.cpu.max(1e-9),
    ));
    md.push(String::new());
    md.push("| route (phase with SSE clients) | p50 | p99 | baseline p50 | baseline p99 |".into());
    md.push("|---|---|---|---|---|".into());
    for (i, r) in ROUTES.iter().enumerate() {
        md.push(format!(
            "| {r} | {} | {} | {} | {} |",
            ms(load.load.by_route[i].p50),
            ms(load.load.by_route[i].p99),
            ms(base.load.by_route[i].p50),
            ms(base.load.by_route[i].p99)
        ));
    }
    md.push(String::new());
    md.push(format!(
        "**SSE**: {connected} of {} clients connected and got their start `resync` ({:.0} KiB each) in {:.2} s (64 connecting at a time); the server counted {} open streams. While connected, {expected} changes were made ({:.1}/s); {} of the {} expected deliveries arrived: **{missing} missing, {dups} duplicated**, {unknown} unknown, {ooo} out of order, {later} later resyncs (lagged), {other} other events; {failed} streams failed{}. Delivery delay (the `register`/`deregister` call in this process -> the event parsed by a client): p50 {}, p90 {}, p99 {}, max {}.",
        cfg.sse,
        resync_bytes as f64 / 1024.0,
        connect_took.as_secs_f64(),
        streams_open.map_or("?".into(), |n| n.to_string()),
        expected as f64 / load.load.took.as_secs_f64(),
        (expected * connected) as u64 - missing.min((expected * connected) as u64),
        expected * connected,
        first_failure.as_ref().map_or(String::new(), |f| format!(" (first: {f})")),
        ms(delivery.p50),
        ms(delivery.p90),
        ms(delivery.p99),
        ms(delivery.max),
    ));
    md.push(String::new());
    md.push(format!(
        "**Memory** (server VmRSS): {} with the directory loaded; {} before the SSE clients; {} with {connected} connected (**{:.1} KiB per client**); {} at the end of the load phase; {} after they disconnected; peak (VmHWM) over the whole run {}. Kernel send queues to the {connected} reading clients once connected: {} in all. Server CPU over the whole run: {:.1} s.",
        mib(rss_start),
        mib(rss_before_sse),
        mib(rss_after_connect),
        per_client / 1024.0,
        mib(load.rss_end),
        mib(rss_after_close),
        mib(hwm),
        mib(queued_connected),
        total_cpu,
    ));
    md.push(String::new());
    md.push(format!(
        "**Stalled clients**: {} wave(s) of {} clients open the change stream with a 2 KiB receive buffer and never read ({} could not connect; connecting a wave one client after another took {} s; times below are from a wave's first connection). Server RSS before: {}.",
        cfg.stall_waves,
        cfg.stalled,
        stall_errors,
        stall_connects
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / "),
        mib(rss_before_stalled)
    ));
    md.push(String::new());
    md.push(
        "| wave | time | server RSS | open streams | kernel send queues to the clients (total) |"
            .into(),
    );
    md.push("|---|---|---|---|---|".into());
    for (wave, t, rss, open, queued) in &timeline {
        md.push(format!(
            "| {wave} | {:.1} s | {} | {} | {} |",
            t.as_secs_f64(),
            mib(*rss),
            open.map_or("?".into(), |n| n.to_string()),
            mib(*queued)
        ));
    }
    md.push(String::new());
    md.push(format!(
        "Open streams at the end of the last watch: {}. Server RSS at the end {}; graceful shutdown (SIGTERM) took {}; {failed_changes} driven changes failed.",
        open_at_end.map_or("?".into(), |n| n.to_string()),
        mib(rss_end),
        shutdown.map_or("over 10 s (killed)".into(), ms),
    ));
    for n in notes {
        md.push(String::new());
        md.push(n);
    }
    let j = json!({
        "sse_clients": cfg.sse, "rps": cfg.rps, "phase_s": cfg.phase.as_secs_f64(),
        "services": cfg.services, "per_service": cfg.per_service, "changes_per_s": cfg.changes_per_s,
        "phases": jphases,
        "sse": {
            "connected": connected, "connect_s": connect_took.as_secs_f64(), "resync_bytes": resync_bytes,
            "changes": expected, "missing": missing, "duplicated": dups, "unknown": unknown,
            "out_of_order": ooo, "later_resyncs": later, "other": other, "failed": failed,
            "first_failure": first_failure, "delivery": sjson(&delivery),
        },
        "memory": {
            "rss_start": rss_start, "rss_before_sse": rss_before_sse, "rss_after_connect": rss_after_connect,
            "per_sse_client": per_client, "rss_after_close": rss_after_close, "hwm": hwm, "rss_end": rss_end,
        },
        "stalled": {
            "clients": cfg.stalled, "connect_errors": stall_errors, "rss_before": rss_before_stalled,
            "timeline": timeline.iter().map(|(w, t, r, o, q)| json!({"wave": w, "t_s": t.as_secs_f64(), "rss": r, "open": o, "send_queues": q})).collect::<Vec<_>>(),
            "open_at_end": open_at_end,
        },
        "server_cpu_s": total_cpu,
        "shutdown_ms": shutdown.map(|d| d.as_secs_f64() * 1000.0),
        "failed_changes": failed_changes,
        "fd_limit": fd_limit,
    });
    Ok(Section { md, json: j })
}
