use super::*;

fn inst(id: &str) -> Arc<Instance> {
    Arc::new(Instance::new("svc", id).addr("x:1"))
}

/// Skipping departed members on an old ring gives exactly the new ring's answer: a member's
/// points depend only on its id, so the ring without it is the old ring minus its points.
#[test]
fn walking_an_old_ring_past_departed_members_matches_the_new_ring() {
    let all: Vec<_> = (0..50).map(|i| inst(&format!("m{i}"))).collect();
    let old = Ring::new(all.iter().cloned());
    let gone = ["m3", "m17", "m18", "m40"];
    let new = Ring::new(
        all.iter()
            .filter(|m| !gone.contains(&m.id.as_str()))
            .cloned(),
    );
    for k in 0..2000u32 {
        let key = k.to_le_bytes();
        let walked = old
            .find_n_overlay(None, 3, &key, 8, |m| {
                (!gone.contains(&m.id.as_str())).then(|| m.clone())
            })
            .expect("few enough departed");
        let expected: Vec<_> = new.find_n(3, &key).into_iter().cloned().collect();
        assert_eq!(walked, expected, "key {k}");
    }
    // Too many departed members on the way: the caller is told to use a current ring.
    assert_eq!(old.find_n_overlay(None, 1, b"k", 3, |_| None), None);
    // All accepted: the same as find_n.
    let same = old
        .find_n_overlay(None, 5, b"k", 0, |m| Some(m.clone()))
        .unwrap();
    let expected: Vec<_> = old.find_n(5, b"k").into_iter().cloned().collect();
    assert_eq!(same, expected);
}

/// An old ring, minus departed members, plus a small ring of the joined ones (one of them a
/// member whose weight changed) answers exactly like a ring of the new membership.
#[test]
fn an_old_ring_plus_a_ring_of_joined_members_matches_the_new_ring() {
    let old_members: Vec<_> = (0..40).map(|i| inst(&format!("m{i}"))).collect();
    let old = Ring::new(old_members.iter().cloned());
    let gone = ["m5", "m6", "m31"];
    let heavier = Arc::new(Instance::new("svc", "m9").addr("x:1").weight(300));
    let mut joined: Vec<_> = (40..44).map(|i| inst(&format!("m{i}"))).collect();
    joined.push(heavier.clone());
    let extra = Ring::new(joined.iter().cloned());
    let current: Vec<_> = old_members
        .iter()
        .filter(|m| !gone.contains(&m.id.as_str()) && m.id != "m9")
        .cloned()
        .chain(joined.iter().cloned())
        .collect();
    let new = Ring::new(current.iter().cloned());
    for k in 0..3000u32 {
        let key = k.to_le_bytes();
        let walked = old
            .find_n_overlay(Some(&extra), 3, &key, 8, |m| {
                (!gone.contains(&m.id.as_str()) && m.id != "m9").then(|| m.clone())
            })
            .expect("few enough departed");
        let expected: Vec<_> = new.find_n(3, &key).into_iter().cloned().collect();
        assert_eq!(walked, expected, "key {k}");
    }
}

/// FNV-1a 64 of `user-42` through fmix64, computed independently.
const PINNED_USER_42: u64 = 11_787_383_432_861_261_453;
/// The last probe of `user-42`, computed once with this code.
const PINNED_PROBE_12: u64 = 13_654_788_065_468_930_458;

#[test]
fn hash_is_a_fixed_function() {
    // Pinned values: changing the hash would re-route every key in every deployment.
    assert_eq!(hash_key(b""), fmix64(0xcbf2_9ce4_8422_2325));
    assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
    assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
    assert_eq!(hash_key(b"user-42"), PINNED_USER_42);
}

/// Before the bounds, one instance of weight `u32::MAX` (which user code can build without
/// validation) or a directory with `u32::MAX` vnodes asked for about 4 billion points: tens of
/// gigabytes, and an allocation failure.
#[test]
fn absurd_vnodes_and_weights_are_bounded() {
    let heavy = Arc::new(Instance::new("svc", "h").addr("x:1").weight(u32::MAX));
    let r = Ring::with_vnodes([heavy.clone()], u32::MAX);
    assert_eq!(
        r.points(),
        (MAX_VNODES as usize) * (MAX_WEIGHT / DEFAULT_WEIGHT) as usize
    );
    assert_eq!(r.find(b"k").map(|m| m.id.as_str()), Some("h"));
    // Weight above the maximum counts as the maximum; zero vnodes as one.
    let capped = Arc::new(Instance::new("svc", "h").addr("x:1").weight(MAX_WEIGHT));
    assert_eq!(
        Ring::with_vnodes([heavy], 128).points(),
        Ring::with_vnodes([capped], 128).points()
    );
    assert_eq!(Ring::with_vnodes([inst("a")], 0).points(), 1);
}

/// The points' owners are what `find` answers (the point nearest clockwise to any probe), and
/// the shares are the fractions of keys each member gets.
#[test]
fn owned_points_and_shares_agree_with_find() {
    let heavy = Arc::new(Instance::new("svc", "h").addr("x:1").weight(300));
    let r = Ring::new(vec![heavy, inst("a"), inst("b")]);
    let points: Vec<(u64, &Arc<Instance>)> = r.owned_points().collect();
    assert_eq!(points.len(), r.points());
    assert!(
        points.windows(2).all(|w| w[0].0 <= w[1].0),
        "clockwise order"
    );
    let mut counts = [0usize; 3];
    let keys = 60_000u32;
    for k in 0..keys {
        let key = k.to_le_bytes();
        let (_, owner) = probes(&key)
            .into_iter()
            .map(|q| {
                let at = points.partition_point(|&(p, _)| p < q);
                let (p, owner) = points[if at == points.len() { 0 } else { at }];
                (p.wrapping_sub(q), owner)
            })
            .min_by_key(|&(d, _)| d)
            .unwrap();
        let found = r.find(&key).unwrap();
        assert_eq!(owner.id, found.id, "key {k}");
        counts[r.members().iter().position(|m| m.id == found.id).unwrap()] += 1;
    }
    let shares = r.shares();
    assert!(
        (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{shares:?}"
    );
    for (share, count) in shares.iter().zip(counts) {
        let sampled = count as f64 / f64::from(keys);
        assert!(
            (share - sampled).abs() < 0.01,
            "{share} vs sampled {sampled}"
        );
    }
    // The member of weight 300 gets about three fifths.
    assert!((shares[r.members().iter().position(|m| m.id == "h").unwrap()] - 0.6).abs() < 0.1);
    assert_eq!(Ring::with_vnodes([inst("a")], 1).shares(), [1.0]);
    assert!(Ring::new(Vec::new()).shares().is_empty());
}

/// Issue 17: with 128 virtual nodes and one probe the most loaded of 100 members got 1.23 times
/// the mean (averaged over 20 memberships); the goal is 1.10.
#[test]
fn one_hundred_members_are_balanced() {
    let mut rng = fastrand::Rng::with_seed(17);
    let trials = 20;
    let mut sum = 0.0;
    for _ in 0..trials {
        let r = Ring::new((0..100).map(|_| inst(&format!("m{:016x}", rng.u64(..)))));
        sum += r.shares().into_iter().fold(0.0, f64::max) * 100.0;
    }
    let max_over_mean = sum / f64::from(trials);
    assert!(max_over_mean <= 1.10, "max/mean {max_over_mean:.3}");
}

/// A member's rank for a key depends only on the key and the member: removing any member
/// removes it from every `find_n` list and changes nothing else.
#[test]
fn find_n_lists_drop_a_departed_member_and_keep_their_order() {
    let all: Vec<_> = (0..30).map(|i| inst(&format!("m{i}"))).collect();
    let full = Ring::new(all.iter().cloned());
    for gone in ["m0", "m7", "m29"] {
        let without = Ring::new(all.iter().filter(|m| m.id != gone).cloned());
        for k in 0..500u32 {
            let key = k.to_le_bytes();
            let before: Vec<&str> = full
                .find_n(30, &key)
                .iter()
                .map(|m| m.id.as_str())
                .collect();
            let after: Vec<&str> = without
                .find_n(29, &key)
                .iter()
                .map(|m| m.id.as_str())
                .collect();
            let expected: Vec<&str> = before.into_iter().filter(|id| *id != gone).collect();
            assert_eq!(after, expected, "key {k} without {gone}");
        }
    }
}

/// The probes are part of the mapping: pinned like the hash.
#[test]
fn probes_are_a_fixed_function() {
    let p = probes(b"user-42");
    assert_eq!(p[0], PINNED_USER_42);
    assert_eq!(
        p[1],
        fmix64(PINNED_USER_42.wrapping_add(0x9e37_79b9_7f4a_7c15))
    );
    assert_eq!(p[PROBES - 1], PINNED_PROBE_12);
    let mut distinct = p.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), PROBES);
}

/// Not a check: the cost of a lookup at 1,000 members while the new ring is not built (one
/// member left, one joined), through `find_n_overlay` with a map like the directory's, next to
/// `find` on the built ring. `cargo test --release -p service-registry-core --lib overlay_lookup_cost
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn overlay_lookup_cost() {
    use std::collections::BTreeMap;
    use std::time::Instant;
    let all: Vec<_> = (0..1000).map(|i| inst(&format!("b{i:06}"))).collect();
    let old = Ring::new(all.iter().cloned());
    let joined = Ring::new([inst("churn")]);
    let now: BTreeMap<String, Arc<Instance>> = all[1..]
        .iter()
        .chain(joined.members())
        .map(|m| (m.id.clone(), m.clone()))
        .collect();
    let new = Ring::new(now.values().cloned());
    let iters = 200_000u64;
    let median = |f: &dyn Fn(u64)| {
        let mut runs: Vec<f64> = (0..5)
            .map(|_| {
                let t0 = Instant::now();
                for i in 0..iters {
                    f(i);
                }
                t0.elapsed().as_nanos() as f64 / iters as f64
            })
            .collect();
        runs.sort_by(|a, b| a.total_cmp(b));
        runs[2]
    };
    let overlay = median(&|i| {
        std::hint::black_box(
            old.find_n_overlay(Some(&joined), 1, &i.to_le_bytes(), 9, |m| {
                now.get(&m.id).filter(|n| n.weight == m.weight).cloned()
            }),
        );
    });
    let overlay3 = median(&|i| {
        std::hint::black_box(
            old.find_n_overlay(Some(&joined), 3, &i.to_le_bytes(), 11, |m| {
                now.get(&m.id).filter(|n| n.weight == m.weight).cloned()
            }),
        );
    });
    let built = median(&|i| {
        std::hint::black_box(new.find(&i.to_le_bytes()));
    });
    let built3 = median(&|i| {
        std::hint::black_box(new.find_n(3, &i.to_le_bytes()));
    });
    println!(
        "1000 members: overlay find {overlay:.0} ns, overlay find_n(3) {overlay3:.0} ns, built find {built:.0} ns, built find_n(3) {built3:.0} ns"
    );
    let big = Ring::new((0..100_000).map(|i| inst(&format!("b{i:06}"))));
    let big_find = median(&|i| {
        std::hint::black_box(big.find(&i.to_le_bytes()));
    });
    println!("100,000 members: built find {big_find:.0} ns");
}

#[test]
fn empty_ring_has_no_owner() {
    let r = Ring::new(Vec::new());
    assert!(r.find(b"k").is_none());
    assert!(r.find_n(3, b"k").is_empty());
}

#[test]
fn find_n_is_distinct_wraps_and_starts_at_owner() {
    let r = Ring::new(["a", "b", "c", "d"].map(inst));
    for k in 0..200 {
        let key = format!("key-{k}");
        let owners = r.find_n(10, key.as_bytes());
        assert_eq!(owners.len(), 4, "all members, walking around the ring");
        let mut ids: Vec<_> = owners.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids[0], r.find(key.as_bytes()).unwrap().id);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4);
    }
}

#[test]
fn weight_scales_points() {
    let heavy = Arc::new(Instance::new("svc", "h").addr("x:1").weight(300));
    let r = Ring::new(vec![heavy, inst("l")]);
    assert_eq!(r.points(), 4 * DEFAULT_VNODES as usize);
}

#[test]
fn bucket_index_agrees_with_a_plain_search() {
    for n in [1usize, 2, 7, 300] {
        let r = Ring::new((0..n).map(|i| inst(&format!("m{i}"))));
        let points: Vec<u64> = r.owned_points().map(|(p, _)| p).collect();
        for k in 0..5000u32 {
            let key = k.to_le_bytes();
            let h = hash_key(&key);
            let plain = points.partition_point(|&p| p < h);
            let plain = if plain == points.len() { 0 } else { plain };
            assert_eq!(r.start_hash(h), plain, "n={n} key={k}");
        }
    }
}

#[test]
fn order_of_construction_does_not_matter() {
    let a = Ring::new(["x", "y", "z"].map(inst));
    let b = Ring::new(["z", "x", "y"].map(inst));
    for k in 0..100 {
        let key = k.to_string();
        assert_eq!(
            a.find(key.as_bytes()).unwrap().id,
            b.find(key.as_bytes()).unwrap().id
        );
    }
}

/// gRPC's ring ([`Ring::grpc`]): an endpoint at `10.{net}.{i / 250}.{i % 250 + 1}:50051`.
fn endpoint(id: &str, weight: u32, net: u32, i: u32) -> (Arc<Instance>, SocketAddr) {
    let addr = format!("10.{net}.{}.{}:50051", i / 250, i % 250 + 1);
    (
        Arc::new(Instance::new("svc", id).weight(weight)),
        addr.parse().unwrap(),
    )
}

/// How many of a gRPC ring's entries each member has, by id.
fn entries_of(ring: &Ring) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (_, m) in ring.owned_points() {
        *out.entry(m.id.clone()).or_default() += 1;
    }
    out
}

#[test]
fn grpc_entries_follow_the_weights_within_the_size_bounds() {
    let ring = Ring::grpc_sized(
        [endpoint("a", 100, 0, 0), endpoint("b", 300, 0, 1)],
        1024,
        4096,
    );
    assert_eq!(ring.kind(), RingKind::GrpcRingHash);
    // The lightest gets ceil(0.25 × 1024) = 256 entries; the scale is 1024.
    let n = entries_of(&ring);
    assert_eq!((n["a"], n["b"]), (256, 768));
    // At most the maximum: 1 to 9,999 would scale to 10,000; capped at 4,096.
    let ring = Ring::grpc_sized(
        [endpoint("a", 1, 0, 0), endpoint("b", 9999, 0, 1)],
        1024,
        4096,
    );
    assert_eq!(ring.points(), 4096);
    let hashes: Vec<u64> = ring.owned_points().map(|(h, _)| h).collect();
    assert!(hashes.windows(2).all(|w| w[0] <= w[1]));
    let shares = ring.shares();
    assert!(
        (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
        "{shares:?}"
    );
}

#[test]
fn a_grpc_key_goes_to_the_first_entry_at_or_after_its_xxh64() {
    let ring = Ring::grpc_sized([endpoint("a", 100, 0, 0), endpoint("b", 100, 0, 1)], 4, 4);
    let points: Vec<(u64, &Arc<Instance>)> = ring.owned_points().collect();
    assert_eq!(points.len(), 4);
    // Entry i of an endpoint is XXH64 of "ip:port_i".
    let a0 = xxh64(b"10.0.0.1:50051_0", 0);
    assert!(points.iter().any(|(h, m)| *h == a0 && m.id == "a"));
    for key in ["k1", "k2", "user-42", ""] {
        let h = xxh64(key.as_bytes(), 0);
        let want = points.iter().find(|p| p.0 >= h).unwrap_or(&points[0]);
        assert_eq!(ring.find(key.as_bytes()).unwrap().id, want.1.id, "{key}");
        // find_n starts with the owner and walks on clockwise to the other member.
        let two: Vec<&str> = ring
            .find_n(5, key.as_bytes())
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0], want.1.id);
    }
    assert!(Ring::grpc([]).find(b"k").is_none());
    assert!(Ring::grpc([]).find_n(3, b"k").is_empty());
}

#[test]
fn xxh64_is_the_reference_one() {
    // Reference values of XXH64 with seed 0.
    assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
    assert_eq!(xxh64(b"a", 0), 0xd24e_c4f1_a98c_6e5b);
}

/// The most loaded member's share of the keys over the mean, for `n` equal members of a gRPC ring
/// (its entries' arcs; one probe).
fn grpc_max_over_mean(n: u32, net: u32) -> f64 {
    let ring = Ring::grpc((0..n).map(|i| endpoint(&format!("m{i}"), 100, net, i)));
    let shares = ring.shares();
    shares.iter().copied().fold(0.0, f64::max) * f64::from(n)
}

/// A measurement: `cargo test -p service-registry-engine --lib grpc_ring_balance -- --ignored --nocapture`.
#[test]
#[ignore]
fn grpc_ring_balance() {
    for n in [3, 10, 100] {
        let runs: Vec<f64> = (0..20).map(|o| grpc_max_over_mean(n, o)).collect();
        let avg = runs.iter().sum::<f64>() / runs.len() as f64;
        println!("{n} members: max/mean {avg:.3} averaged over 20 address sets");
    }
}
