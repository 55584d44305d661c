//! Schedules the simulator shortened from failing seeds, replayed as regression tests: each names
//! the defect it found. (`SIM_REPLAY=SEED:I,J,K`, or `simulate --replay`, replays one by hand.)

use registry_sim::{Schedule, run};

fn replay(spec: &str) {
    let schedule = Schedule::parse_replay(spec).expect("a replay spec");
    if let Err(f) = run(&schedule) {
        panic!("replay {spec} failed {f}\n{schedule}");
    }
}

/// Issue 27 item 1, found by seed 20 on the code before its fix: p2's delayed registration of an
/// id p0 holds is in conflict; p2 is cut off past its TTL and loses its lease; with every member
/// parked, the keeper wrote nothing, asked for no lease, and scheduled its next tick in the past:
/// a busy loop that served no command and never tried the id again.
#[test]
fn seed_20_conflict_then_lease_loss_is_not_a_busy_loop() {
    replay("20:11,14,16,17,18");
}
