//! The simulator over many seeds, as the README's test command runs it: `SIM_SEEDS` seeds (default
//! 3,000) from `SIM_FROM` (default 0), `SIM_JOBS` at a time (default: every core). A soak is the same with more seeds (see
//! `scripts/simulate`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use registry_sim::{Schedule, run, shrink::shrink};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn seeds_pass() {
    let seeds = env("SIM_SEEDS", 3_000);
    let from = env("SIM_FROM", 0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = env("SIM_JOBS", cores as u64).max(1);
    let next = Arc::new(AtomicU64::new(from));
    let failure = Arc::new(Mutex::new(None::<String>));
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, failure) = (next.clone(), failure.clone());
            std::thread::spawn(move || {
                loop {
                    if failure.lock().unwrap().is_some() {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= from + seeds {
                        return;
                    }
                    let schedule = Schedule::generate(seed);
                    if let Err(f) = run(&schedule) {
                        let (short, sf) = shrink(&schedule, f.clone());
                        let mut slot = failure.lock().unwrap();
                        if slot.is_none() {
                            *slot = Some(format!(
                                "seed {seed} failed {f}\nshortened to {} steps, failing {sf}:\n{short}\
                                 replay with SIM_REPLAY={} (simulate --replay), and add it to tests/regressions.rs",
                                short.steps.len(),
                                short.replay_spec()
                            ));
                        }
                        return;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a simulator worker");
    }
    if let Some(f) = failure.lock().unwrap().take() {
        panic!("{f}");
    }
}

/// `SIM_REPLAY=SEED:I,J,K` replays one (shortened) schedule; without it, nothing runs.
#[test]
fn replay_from_environment() {
    let Ok(spec) = std::env::var("SIM_REPLAY") else {
        return;
    };
    let schedule = Schedule::parse_replay(&spec).expect("SIM_REPLAY=SEED or SEED:I,J,K");
    if let Err(f) = run(&schedule) {
        panic!("replay {spec} failed {f}\n{schedule}");
    }
}
