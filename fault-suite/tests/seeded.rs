//! The seeded random mode (run by `scripts/faults.sh --seed N --minutes M`): random faults chained
//! on one long-lived scene per backend. Ignored by `cargo test`; configured by `FAULT_SEED`,
//! `FAULT_MINUTES` and `FAULT_BACKENDS` (comma separated).

use std::path::Path;

use fault_suite::server::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak: run through scripts/faults.sh --seed N --minutes M"]
async fn seeded() {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let minutes: f64 = std::env::var("FAULT_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let backends: Vec<Backend> = match std::env::var("FAULT_BACKENDS") {
        Ok(s) if !s.is_empty() => s
            .split(',')
            .map(|b| Backend::parse(b.trim()).unwrap_or_else(|| panic!("unknown backend `{b}`")))
            .collect(),
        _ => Backend::ALL.to_vec(),
    };
    let ok = fault_suite::seeded(
        seed,
        minutes,
        &backends,
        Path::new(env!("CARGO_BIN_EXE_fault-node")),
    )
    .await;
    assert!(
        ok,
        "seed {seed}: some fault did not converge (see the table above)"
    );
}
