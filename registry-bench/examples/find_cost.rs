//! Where a `Directory::find` spends its time at 1,000 and 100,000 instances: the ring alone (no
//! clone), the ring with the owner's `Arc` cloned, and the directory's `find`. Random keys, median
//! of 7 runs of 2 million lookups each. `cargo run --release -p registry-bench --example find_cost`.

use std::sync::Arc;
use std::time::Instant;

use registry::engine::{Directory, Instance, Ring};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(mut f: impl FnMut(u64)) -> f64 {
    const N: u64 = 2_000_000;
    median(
        (0..7)
            .map(|_| {
                let t0 = Instant::now();
                for i in 0..N {
                    // A cheap scramble so that consecutive keys are unrelated.
                    f(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                }
                t0.elapsed().as_nanos() as f64 / N as f64
            })
            .collect(),
    )
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a size"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 100_000]
    } else {
        sizes
    };
    for n in sizes {
        let instances: Vec<Instance> = (0..n)
            .map(|i| {
                Instance::new("bench", format!("b{i:06}")).addr(format!(
                    "10.3.{}.{}:80",
                    i / 250 % 250,
                    i % 250
                ))
            })
            .collect();
        let ring = Ring::new(instances.iter().cloned().map(Arc::new));
        let dir = Directory::new();
        let source = dir.source("test", 10).expect("source");
        source.publish("bench", instances, 1);
        // Build the directory's ring before timing.
        while dir.find("bench", b"warm").is_none() {}
        std::thread::sleep(std::time::Duration::from_millis(200));
        let ring_alone = time(|k| {
            std::hint::black_box(ring.find(&k.to_le_bytes()).map(Arc::as_ptr));
        });
        let ring_clone = time(|k| {
            std::hint::black_box(ring.find(&k.to_le_bytes()).cloned());
        });
        let directory = time(|k| {
            std::hint::black_box(dir.find("bench", k.to_le_bytes()));
        });
        let get = time(|_| {
            std::hint::black_box(dir.get("bench"));
        });
        println!(
            "{n}: ring {ring_alone:.0} ns, ring+clone {ring_clone:.0} ns, directory find {directory:.0} ns, get {get:.0} ns"
        );
    }
}
