use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn member(id: String) -> Arc<Instance> {
    Arc::new(Instance::new("svc", id).addr("x:1"))
}

/// The share of the keys that `id` owns on `ring`: the keys that move to it.
fn share_of(ring: &Ring, id: &str) -> f64 {
    let at = ring
        .members
        .iter()
        .position(|m| m.id == id)
        .expect("a member");
    ring.shares()[at]
}

proptest! {
    // The share a new member takes with 2 points and 13 probes, relative to 1/(n+1), has a
    // standard deviation of about 0.14 and a long low tail (1st percentile about 0.55, 99th
    // about 1.3, simulated over 20,000 memberships per n): a correct ring falls outside
    // [0.4, 1.4] about once in 250 random memberships. The seed is fixed so the run is
    // reproducible; `mean_movement_is_unbiased` below checks the average tightly.
    #![proptest_config(Config { cases: 64, rng_seed: RngSeed::Fixed(0x5eed_0001), ..Config::default() })]

    #[test]
    fn adding_one_member_moves_about_one_over_n_plus_one(
        ids in prop::collection::btree_set("[a-z0-9]{1,12}", 1..40),
        newcomer in "[A-Z][a-z0-9]{0,11}",
    ) {
        let before = Ring::new(ids.iter().cloned().map(member));
        let mut all: Vec<Arc<Instance>> = ids.iter().cloned().map(member).collect();
        all.push(member(newcomer.clone()));
        let after = Ring::new(all);
        let n = ids.len() as f64;
        let expected = 1.0 / (n + 1.0);
        let moved = share_of(&after, &newcomer);
        prop_assert!(
            (0.4 * expected..=1.4 * expected).contains(&moved),
            "n = {}: moved {:.4}, expected {:.4}", ids.len(), moved, expected
        );
        // And only keys that now belong to the newcomer moved.
        for k in 0..2000u32 {
            let key = k.to_be_bytes();
            let (b, a) = (before.find(&key).unwrap(), after.find(&key).unwrap());
            prop_assert!(a.id == b.id || a.id == newcomer, "key {} moved between old members", k);
        }
    }
}

#[test]
fn mean_movement_is_unbiased() {
    // Over many random memberships the average share taken is 1/(n+1) within 3%.
    let mut rng = fastrand::Rng::with_seed(7);
    for n in [3usize, 10, 30] {
        let trials = 200;
        let mut ratio_sum = 0.0;
        for _ in 0..trials {
            let ids: Vec<Arc<Instance>> = (0..n)
                .map(|_| member(format!("m{:016x}", rng.u64(..))))
                .collect();
            let newcomer = format!("new{:016x}", rng.u64(..));
            let mut all = ids.clone();
            all.push(member(newcomer.clone()));
            ratio_sum += share_of(&Ring::new(all), &newcomer) * (n as f64 + 1.0);
        }
        let mean = ratio_sum / trials as f64;
        assert!(
            (mean - 1.0).abs() < 0.03,
            "n = {n}: mean movement ratio {mean:.4}"
        );
    }
}
