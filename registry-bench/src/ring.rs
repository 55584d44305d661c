//! Ring quality (section 5): how many keys move when an instance joins or leaves, and how evenly
//! the ring spreads them.

use std::collections::BTreeMap;
use std::sync::Arc;

use registry::engine::{Instance, Ring};
use serde_json::json;

use crate::report::Section;
use crate::size::Size;

/// The ratio (to the ideal share of keys moved) farthest from 1, or 1 when there is none.
fn farthest_from_ideal(ratios: &[f64]) -> f64 {
    ratios.iter().copied().fold(1.0, |worst, r| {
        if (r - 1.0).abs() > (worst - 1.0).abs() {
            r
        } else {
            worst
        }
    })
}

/// Ring quality (5): keys moved when one instance joins or leaves, and load spread at 128 vnodes.
pub(crate) fn run(size: Size) -> Section {
    let inst = |id: String| Arc::new(Instance::new("ring", id).addr("x:1"));
    let (key_count, keys_label, memberships) = size.pick(
        (100_000, "100,000", 20),
        (100_000, "100,000", 20),
        (2_000, "2,000", 2),
    );
    let keys: Vec<String> = (0..key_count).map(|k| format!("key-{k}")).collect();
    let load_note = match size {
        Size::Smoke => {
            "Load is counted over the keys (far too few for a meaningful figure in a smoke run)"
        }
        _ => {
            "Load is counted over the 100,000 keys (at n = 100, 1,000 keys a member: sampling alone puts max/mean near 1.08)"
        }
    };
    let mut md = vec![
        format!(
            "### Ring quality ({} points per instance, {} probes per key, {keys_label} keys, {memberships} random memberships each)",
            registry::engine::DEFAULT_VNODES,
            registry::engine::PROBES,
        ),
        String::new(),
        format!(
            "{load_note}; share is the ring's own exact share of the key space (`Ring::shares`)."
        ),
        String::new(),
        "| n | moved on join (ideal 1/(n+1)) | moved on leave (ideal 1/n) | load max/mean | load min/mean | load CV | share max/mean | share min/mean |".into(),
        "|---|---|---|---|---|---|---|---|".into(),
    ];
    let mut j = json!({});
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for n in [3usize, 10, 100] {
        let (mut join, mut leave, mut maxr, mut minr, mut cv) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut share_max, mut share_min) = (vec![], vec![]);
        for _ in 0..memberships {
            let ids: Vec<String> = (0..n).map(|_| format!("m{:016x}", next())).collect();
            let ring = Ring::new(ids.iter().cloned().map(inst));
            let shares = ring.shares();
            share_max.push(shares.iter().cloned().fold(0.0, f64::max) * n as f64);
            share_min.push(shares.iter().cloned().fold(f64::MAX, f64::min) * n as f64);
            let owners: Vec<String> = keys
                .iter()
                .map(|k| ring.find(k.as_bytes()).expect("owner").id.clone())
                .collect();
            let mut plus = ids.clone();
            plus.push(format!("new{:016x}", next()));
            let joined = Ring::new(plus.into_iter().map(inst));
            let moved = keys
                .iter()
                .zip(&owners)
                .filter(|(k, o)| &joined.find(k.as_bytes()).expect("owner").id != *o)
                .count();
            join.push(moved as f64 / keys.len() as f64 * (n + 1) as f64);
            let left = Ring::new(ids[1..].iter().cloned().map(inst));
            if n > 1 {
                let moved = keys
                    .iter()
                    .zip(&owners)
                    .filter(|(k, o)| &left.find(k.as_bytes()).expect("owner").id != *o)
                    .count();
                leave.push(moved as f64 / keys.len() as f64 * n as f64);
            }
            let mut load: BTreeMap<&str, usize> = BTreeMap::new();
            for o in &owners {
                *load.entry(o.as_str()).or_default() += 1;
            }
            let mean = keys.len() as f64 / n as f64;
            let loads: Vec<f64> = ids
                .iter()
                .map(|i| *load.get(i.as_str()).unwrap_or(&0) as f64)
                .collect();
            maxr.push(loads.iter().cloned().fold(0.0, f64::max) / mean);
            minr.push(loads.iter().cloned().fold(f64::MAX, f64::min) / mean);
            let var = loads.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n as f64;
            cv.push(var.sqrt() / mean);
        }
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        md.push(format!(
            "| {n} | {:.3} × ideal (worst {:.3}) | {:.3} × ideal (worst {:.3}) | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            avg(&join),
            farthest_from_ideal(&join),
            avg(&leave),
            farthest_from_ideal(&leave),
            avg(&maxr),
            avg(&minr),
            avg(&cv),
            avg(&share_max),
            avg(&share_min)
        ));
        j[n.to_string()] = json!({"join_ratio": avg(&join), "leave_ratio": avg(&leave), "max_over_mean": avg(&maxr), "min_over_mean": avg(&minr), "cv": avg(&cv), "share_max_over_mean": avg(&share_max), "share_min_over_mean": avg(&share_min)});
    }
    Section { md, json: j }
}
