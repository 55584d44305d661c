//! Shortening a failing schedule: delta debugging over its steps (drop halves, then quarters,
//! down to single steps) while the run still fails.

use crate::schedule::Schedule;
use crate::world::{Failure, run};

/// How many times a candidate is run before it counts as passing (see the crate docs on what is
/// not seeded).
const CONFIRM: usize = 2;

/// The shortest schedule found that still fails, with its failure.
pub fn shrink(schedule: &Schedule, failure: Failure) -> (Schedule, Failure) {
    let mut best = schedule.clone();
    let mut best_failure = failure;
    let mut chunk = best.steps.len().div_ceil(2).max(1);
    loop {
        let mut removed_any = false;
        let mut start = 0;
        while start < best.steps.len() {
            let keep: Vec<usize> = (0..best.steps.len())
                .filter(|&i| i < start || i >= start + chunk)
                .collect();
            let candidate = best.subset(&keep);
            if let Some(f) = fails(&candidate) {
                best = candidate;
                best_failure = f;
                removed_any = true;
            } else {
                start += chunk;
            }
        }
        if chunk == 1 && !removed_any {
            return (best, best_failure);
        }
        if !removed_any {
            chunk = (chunk / 2).max(1);
        }
    }
}

fn fails(schedule: &Schedule) -> Option<Failure> {
    (0..CONFIRM).find_map(|_| run(schedule).err())
}
