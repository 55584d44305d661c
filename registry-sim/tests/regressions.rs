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

/// Found by seed 268 once the simulator could restart the backend from a backup: p0 deregistered
/// web/w2 after the backup; the restored store brought the key back on p0's lease, which p0 keeps
/// alive, so the deregistered instance stayed visible for as long as p0 ran. The keeper now reads
/// its last deregistered keys again in turns and deletes those back on its lease.
#[test]
fn seed_268_a_key_restored_from_a_backup_on_a_live_lease_is_deleted_again() {
    replay("268:22,24,32,34,37");
}

/// Found by the first soak (seed 111661) after the fix of issue 27 item 2: with every call 345 ms
/// slower, a heartbeat's work (keep-alive, read-back, re-check, the retry of an id in conflict)
/// filled the whole heartbeat, so the next tick was always due, and the keeper, which preferred a
/// due tick over commands, never served p0's shutdown. Ticks and commands now take turns.
#[test]
fn seed_111661_a_slow_backend_does_not_starve_commands() {
    replay("111661:0,7,11,22,29,30,37");
}

/// Found by the soak of issue 27 (seed 2056746): p2 drained api/a1 after a backup, then asked
/// for it again while p0 held it; the refused registration was dropped, and with it the
/// keeper's memory that it had deregistered the key. The backend restarted from the backup
/// brought a1 back on p2's lease, which p2 keeps alive for w1: a registration no live process
/// made, for as long as p2 ran. A deregistered key now stays remembered while it is registered
/// again (the re-reads skip the keys of live members).
#[test]
fn seed_2056746_a_refused_registration_keeps_the_key_remembered() {
    replay("2056746:0,2,15,17,19,25,26,35");
}
