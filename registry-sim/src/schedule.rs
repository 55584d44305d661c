//! What a run does: a schedule of steps (operations of the processes, and faults), generated from
//! a seed. A step names processes and instance ids by index, so any subset of a schedule is a
//! schedule too (what shrinking needs).

use std::fmt;

/// How many processes a run has.
pub const PROCESSES: usize = 3;
/// The instance ids a run registers (few, so that processes contend for them).
pub const IDS: [(&str, &str); 5] = [
    ("web", "w0"),
    ("web", "w1"),
    ("web", "w2"),
    ("api", "a0"),
    ("api", "a1"),
];
/// The services of [`IDS`].
pub const SERVICES: [&str; 2] = ["web", "api"];

/// One thing that happens in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Process `proc` registers id `id` (waiting `delay_ms` before the first write when not 0),
    /// taking it over from another live owner when `takeover`.
    Register {
        /// The process.
        proc: usize,
        /// Index into [`IDS`].
        id: usize,
        /// The registration's delay.
        delay_ms: u32,
        /// Whether the first write may replace another live owner's.
        takeover: bool,
    },
    /// The process's handle for `id` changes its metadata.
    Update {
        /// The process.
        proc: usize,
        /// Index into [`IDS`].
        id: usize,
    },
    /// The process's handle for `id` goes offline or online.
    SetOnline {
        /// The process.
        proc: usize,
        /// Index into [`IDS`].
        id: usize,
        /// Online or offline.
        online: bool,
    },
    /// The process drains its handle for `id` (offline, wait, deregister).
    Drain {
        /// The process.
        proc: usize,
        /// Index into [`IDS`].
        id: usize,
    },
    /// The process deregisters its handle for `id`.
    Deregister {
        /// The process.
        proc: usize,
        /// Index into [`IDS`].
        id: usize,
    },
    /// The process reads a service from the backend (`Registry::get_service`).
    Discover {
        /// The process.
        proc: usize,
        /// Index into [`SERVICES`].
        service: usize,
    },
    /// The process shuts its registry down (deregisters everything) and stops.
    Shutdown {
        /// The process.
        proc: usize,
    },
    /// The process crashes: keep-alives stop, nothing is deregistered.
    Crash {
        /// The process.
        proc: usize,
    },
    /// A stopped process starts again (a new registry, its discovery, no registrations).
    Restart {
        /// The process.
        proc: usize,
    },
    /// Every backend call of the process takes `ms` longer (0: back to normal).
    Latency {
        /// The process.
        proc: usize,
        /// Added to each call.
        ms: u32,
    },
    /// The next `calls` backend calls of the process hang for 3 s before they reach the
    /// backend (past the process's operation timeout: a write may land after it gave up).
    Hang {
        /// The process.
        proc: usize,
        /// How many calls.
        calls: u32,
    },
    /// The process is cut off from the backend: every call fails, its watches end.
    Cut {
        /// The process.
        proc: usize,
    },
    /// The process reaches the backend again.
    Heal {
        /// The process.
        proc: usize,
    },
    /// Someone revokes the leases the process keeps alive (an operator, or a server that lost
    /// them: an outage longer than the TTL, a Redis restart).
    RevokeLease {
        /// The process.
        proc: usize,
    },
    /// Someone deletes the key of `id`.
    ExternalDelete {
        /// Index into [`IDS`].
        id: usize,
    },
    /// Someone writes another value to the key of `id`: a plain one, or one on a lease of their
    /// own (which ends after 3 s: a short-lived other owner).
    ExternalOverwrite {
        /// Index into [`IDS`].
        id: usize,
        /// Whether on a lease.
        leased: bool,
    },
    /// The backend discards its history (watches from before it must re-list).
    Compact,
    /// The backend ends every open watch (as a restart does).
    DropWatches,
    /// A backup of the backend is taken (the latest one is what a rollback restores).
    Checkpoint,
    /// The backend restarts from the latest backup (nothing without one): keys deleted since
    /// come back on their old leases, which get a whole TTL; what was written since is gone.
    Rollback,
}

/// One step: wait `after_ms` of virtual time, then do `action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Virtual milliseconds before the action.
    pub after_ms: u32,
    /// What happens.
    pub action: Action,
}

/// A run: the seed it came from and its steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The seed the steps were generated from.
    pub seed: u64,
    /// The indexes (into the seed's full schedule) of the steps kept: all of them unless shrunk.
    pub kept: Vec<usize>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// How many steps a generated schedule has.
pub const STEPS: usize = 40;

impl Schedule {
    /// The schedule of `seed`.
    pub fn generate(seed: u64) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(seed);
        let steps: Vec<Step> = (0..STEPS).map(|_| step(&mut rng)).collect();
        Schedule {
            seed,
            kept: (0..steps.len()).collect(),
            steps,
        }
    }

    /// The steps of `seed`'s schedule at `kept` (a shortened schedule, as shrinking prints it).
    pub fn replay(seed: u64, kept: &[usize]) -> Schedule {
        let full = Schedule::generate(seed);
        Schedule {
            seed,
            kept: kept.to_vec(),
            steps: kept
                .iter()
                .filter_map(|&i| full.steps.get(i).cloned())
                .collect(),
        }
    }

    /// This schedule with only the steps at `positions` (indexes into `self.steps`).
    pub fn subset(&self, positions: &[usize]) -> Schedule {
        Schedule {
            seed: self.seed,
            kept: positions.iter().map(|&p| self.kept[p]).collect(),
            steps: positions.iter().map(|&p| self.steps[p].clone()).collect(),
        }
    }

    /// How to run this schedule again: `SIM_REPLAY=<this>` (see the crate's docs).
    pub fn replay_spec(&self) -> String {
        let kept: Vec<String> = self.kept.iter().map(|i| i.to_string()).collect();
        format!("{}:{}", self.seed, kept.join(","))
    }

    /// Parses [`replay_spec`](Self::replay_spec)'s form: `SEED` or `SEED:I,J,K`.
    pub fn parse_replay(spec: &str) -> Option<Schedule> {
        match spec.split_once(':') {
            None => spec.trim().parse().ok().map(Schedule::generate),
            Some((seed, kept)) => {
                let seed = seed.trim().parse().ok()?;
                let kept: Option<Vec<usize>> = kept
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse().ok())
                    .collect();
                Some(Schedule::replay(seed, &kept?))
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut at = 0u64;
        for (step, index) in self.steps.iter().zip(&self.kept) {
            at += u64::from(step.after_ms);
            writeln!(
                f,
                "  t={:>6} ms  #{index:<3} {}",
                at,
                describe(&step.action)
            )?;
        }
        Ok(())
    }
}

fn describe(action: &Action) -> String {
    let id = |i: &usize| {
        let (s, id) = IDS[*i];
        format!("{s}/{id}")
    };
    match action {
        Action::Register {
            proc,
            id: i,
            delay_ms,
            takeover,
        } => format!(
            "p{proc} register {}{}{}",
            id(i),
            if *delay_ms > 0 {
                format!(" delay {delay_ms} ms")
            } else {
                String::new()
            },
            if *takeover { " takeover" } else { "" }
        ),
        Action::Update { proc, id: i } => format!("p{proc} update {}", id(i)),
        Action::SetOnline {
            proc,
            id: i,
            online,
        } => format!(
            "p{proc} set {} {}",
            id(i),
            if *online { "online" } else { "offline" }
        ),
        Action::Drain { proc, id: i } => format!("p{proc} drain {}", id(i)),
        Action::Deregister { proc, id: i } => format!("p{proc} deregister {}", id(i)),
        Action::Discover { proc, service } => format!("p{proc} discover {}", SERVICES[*service]),
        Action::Shutdown { proc } => format!("p{proc} shutdown"),
        Action::Crash { proc } => format!("p{proc} crash"),
        Action::Restart { proc } => format!("p{proc} restart"),
        Action::Latency { proc, ms } => format!("fault: p{proc} latency {ms} ms"),
        Action::Hang { proc, calls } => format!("fault: p{proc} next {calls} calls hang 3 s"),
        Action::Cut { proc } => format!("fault: p{proc} cut off"),
        Action::Heal { proc } => format!("fault: p{proc} reaches the backend again"),
        Action::RevokeLease { proc } => format!("fault: p{proc}'s lease revoked"),
        Action::ExternalDelete { id: i } => format!("fault: {} deleted by someone else", id(i)),
        Action::ExternalOverwrite { id: i, leased } => format!(
            "fault: {} overwritten by someone else{}",
            id(i),
            if *leased { " on a 3 s lease" } else { "" }
        ),
        Action::Compact => "fault: history compacted".to_owned(),
        Action::DropWatches => "fault: every watch dropped".to_owned(),
        Action::Checkpoint => "backup of the backend taken".to_owned(),
        Action::Rollback => "fault: the backend restarts from its last backup".to_owned(),
    }
}

fn step(rng: &mut fastrand::Rng) -> Step {
    // Mostly short gaps (several things at once), sometimes a few heartbeats.
    let after_ms = match rng.u32(0..10) {
        0..=3 => rng.u32(0..50),
        4..=7 => rng.u32(50..1_500),
        _ => rng.u32(1_500..6_000),
    };
    let proc = rng.usize(0..PROCESSES);
    let id = rng.usize(0..IDS.len());
    let action = match rng.u32(0..100) {
        0..=21 => Action::Register {
            proc,
            id,
            delay_ms: if rng.bool() { 0 } else { rng.u32(1..800) },
            takeover: rng.u32(0..4) == 0,
        },
        22..=27 => Action::Update { proc, id },
        28..=32 => Action::SetOnline {
            proc,
            id,
            online: rng.bool(),
        },
        33..=35 => Action::Drain { proc, id },
        36..=45 => Action::Deregister { proc, id },
        46..=49 => Action::Discover {
            proc,
            service: rng.usize(0..SERVICES.len()),
        },
        50..=52 => Action::Shutdown { proc },
        53..=55 => Action::Crash { proc },
        56..=61 => Action::Restart { proc },
        62..=65 => Action::Latency {
            proc,
            ms: if rng.bool() { 0 } else { rng.u32(1..400) },
        },
        66..=69 => Action::Hang {
            proc,
            calls: rng.u32(1..6),
        },
        70..=73 => Action::Cut { proc },
        74..=79 => Action::Heal { proc },
        80..=85 => Action::RevokeLease { proc },
        86..=89 => Action::ExternalDelete { id },
        90..=94 => Action::ExternalOverwrite {
            id,
            leased: rng.bool(),
        },
        95 => Action::Compact,
        96 => Action::DropWatches,
        97 => Action::Checkpoint,
        _ => Action::Rollback,
    };
    Step { after_ms, action }
}
