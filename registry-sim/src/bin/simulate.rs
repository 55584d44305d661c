//! `simulate`: runs the simulator over a range of seeds (see the crate docs).
//!
//! ```text
//! simulate [--seeds N] [--from S] [--jobs J] [--minutes M] [--replay SEED:I,J,K]
//! ```
//!
//! `--minutes M` stops starting seeds after M minutes (a soak). Prints a line of figures at the end; on the first failing seed, its shortened schedule and how
//! to replay it, and exits with 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use registry_sim::{Schedule, run, shrink::shrink};

fn main() {
    let mut seeds = 1000u64;
    let mut from = 0u64;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut replay = None;
    let mut minutes: Option<f64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--seeds" => seeds = value().parse().unwrap_or_else(|_| usage("--seeds N")),
            "--from" => from = value().parse().unwrap_or_else(|_| usage("--from S")),
            "--jobs" => jobs = value().parse().unwrap_or_else(|_| usage("--jobs J")),
            "--replay" => replay = Some(value()),
            "--minutes" => minutes = Some(value().parse().unwrap_or_else(|_| usage("--minutes M"))),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if let Some(spec) = replay {
        // The engine's log lines, stamped with virtual time: `RUST_LOG=registry_engine=debug`.
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_timer(VirtualTime)
                .with_writer(std::io::stderr)
                .init();
        }
        let schedule =
            Schedule::parse_replay(&spec).unwrap_or_else(|| usage("--replay SEED:I,J,K"));
        println!("replaying {}:\n{schedule}", schedule.replay_spec());
        match run(&schedule) {
            Ok(o) => println!(
                "passed: {} ms virtual, {} backend calls",
                o.virtual_ms, o.calls
            ),
            Err(f) => {
                println!("FAILED {f}");
                std::process::exit(1);
            }
        }
        return;
    }
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(from));
    let failed = Arc::new(AtomicBool::new(false));
    let virtual_ms = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let ran = Arc::new(AtomicU64::new(0));
    let end = from + seeds;
    let deadline = minutes.map(|m| started + std::time::Duration::from_secs_f64(m * 60.0));
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (next, failed, virtual_ms, calls, ran) = (
                next.clone(),
                failed.clone(),
                virtual_ms.clone(),
                calls.clone(),
                ran.clone(),
            );
            std::thread::spawn(move || {
                while !failed.load(Ordering::SeqCst) {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        return;
                    }
                    let schedule = Schedule::generate(seed);
                    match run(&schedule) {
                        Ok(o) => {
                            virtual_ms.fetch_add(o.virtual_ms, Ordering::SeqCst);
                            calls.fetch_add(o.calls, Ordering::SeqCst);
                            ran.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(f) => {
                            if failed.swap(true, Ordering::SeqCst) {
                                return;
                            }
                            println!("seed {seed} FAILED {f}");
                            let (short, f) = shrink(&schedule, f);
                            println!(
                                "shortened to {} of {} steps, failing {f}:\n{short}replay: SIM_REPLAY={} (or simulate --replay {})",
                                short.steps.len(),
                                schedule.steps.len(),
                                short.replay_spec(),
                                short.replay_spec()
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let ran = ran.load(Ordering::SeqCst);
    println!(
        "simulate: {ran} seeds passed from {from} (to {}) in {:.1} s real, {:.0} s virtual, {} backend calls",
        next.load(Ordering::SeqCst).min(end) - 1,
        started.elapsed().as_secs_f64(),
        virtual_ms.load(Ordering::SeqCst) as f64 / 1000.0,
        calls.load(Ordering::SeqCst)
    );
    if failed.load(Ordering::SeqCst) {
        std::process::exit(1);
    }
}

fn usage(why: &str) -> ! {
    eprintln!(
        "simulate: {why}\nusage: simulate [--seeds N] [--from S] [--jobs J] [--minutes M] [--replay SEED:I,J,K]"
    );
    std::process::exit(2);
}

/// Log timestamps in the run's virtual time (tokio's paused clock), in milliseconds since the
/// first line: a replay's log lines line up with its schedule's `t=`.
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(tokio::time::Instant::now);
        write!(w, "t={:>6} ms", start.elapsed().as_millis())
    }
}
