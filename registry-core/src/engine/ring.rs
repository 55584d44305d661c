//! Consistent-hash ring (Dispatch's libring, done over the live directory).
//!
//! Each instance gets `vnodes × weight / 100` points on a 64-bit circle (128 at the default weight);
//! a key belongs to the instance owning the first point at or after the key's hash, wrapping around.
//! Hashes are a fixed function of the bytes (FNV-1a followed by a 64-bit finaliser), so every process,
//! on every platform and Rust version, routes a key to the same owner given the same membership.
//!
//! A ring is immutable and always built from the full membership, never patched from deltas.

use std::fmt;
use std::sync::Arc;

use super::instance::{DEFAULT_WEIGHT, Instance, MAX_WEIGHT};

/// Virtual nodes per instance at the default weight.
pub const DEFAULT_VNODES: u32 = 128;
/// The most virtual nodes per instance at the default weight that a ring uses: larger requests are
/// lowered to it, so that an instance at [`MAX_WEIGHT`] has at most 409,600 points and a ring's
/// size stays proportional to its membership instead of exhausting memory.
pub const MAX_VNODES: u32 = 4096;

/// A consistent-hash ring over a set of instances.
#[derive(Clone, Default)]
pub struct Ring {
    /// Sorted point hashes.
    points: Vec<u64>,
    /// `index[b]` is the first point whose top `bits` bits are at least `b`: a lookup reads one
    /// bucket of about one point instead of binary-searching millions (which is DRAM-bound).
    index: Vec<u32>,
    bits: u32,
    /// `owners[i]` is the index in `members` owning `points[i]`.
    owners: Vec<u32>,
    /// Members, sorted by id.
    members: Vec<Arc<Instance>>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members.len())
            .field("points", &self.points.len())
            .finish()
    }
}

/// The 64-bit hash of a key, as the ring uses it.
pub fn hash_key(key: &[u8]) -> u64 {
    fmix64(fnv(FNV_OFFSET, key))
}

/// MurmurHash3's 64-bit finaliser: spreads FNV's weak low-entropy output over all bits.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The hash of point `i` of member `id`: `hash_key(id ++ 0xff ++ i as big-endian u32)`, computed
/// from the member's prefix state so that building a ring hashes each id once. (0xff never occurs in
/// UTF-8, so (id, i) pairs cannot collide by concatenation.)
fn point_hash(prefix_state: u64, i: u32) -> u64 {
    fmix64(fnv(prefix_state, &i.to_be_bytes()))
}

fn prefix_state(id: &str) -> u64 {
    fnv(fnv(FNV_OFFSET, id.as_bytes()), &[0xff])
}

impl Ring {
    /// A ring with [`DEFAULT_VNODES`] per instance at the default weight.
    pub fn new(instances: impl IntoIterator<Item = Arc<Instance>>) -> Ring {
        Ring::with_vnodes(instances, DEFAULT_VNODES)
    }

    /// A ring with `vnodes` points per instance at the default weight (1 to [`MAX_VNODES`]; other
    /// values are raised or lowered to that range), scaled by each instance's weight (at least one
    /// point each; weights above [`MAX_WEIGHT`], which no stored instance has, count as it).
    pub fn with_vnodes(instances: impl IntoIterator<Item = Arc<Instance>>, vnodes: u32) -> Ring {
        let vnodes = vnodes.clamp(1, MAX_VNODES);
        let mut members: Vec<Arc<Instance>> = instances.into_iter().collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        let mut pairs: Vec<(u64, u32)> = Vec::new();
        for (idx, m) in members.iter().enumerate() {
            let weight = m.weight.min(MAX_WEIGHT);
            let n = (u64::from(vnodes) * u64::from(weight) + u64::from(DEFAULT_WEIGHT) / 2)
                / u64::from(DEFAULT_WEIGHT);
            let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
            let state = prefix_state(&m.id);
            pairs.extend((0..n).map(|i| (point_hash(state, i), idx as u32)));
        }
        // Ties (astronomically rare) are broken by member order, which is by id: deterministic.
        pairs.sort_unstable();
        let (points, owners): (Vec<u64>, Vec<u32>) = pairs.into_iter().unzip();
        // Two to four points per bucket (one cache line), at most 2^22 buckets (16 MiB of index).
        let bits = (usize::BITS - points.len().leading_zeros())
            .saturating_sub(2)
            .clamp(1, 22);
        let mut index = Vec::with_capacity((1usize << bits) + 1);
        let mut at = 0usize;
        for b in 0..(1u64 << bits) {
            while at < points.len() && (points[at] >> (64 - bits)) < b {
                at += 1;
            }
            index.push(at as u32);
        }
        index.push(points.len() as u32);
        Ring {
            points,
            index,
            bits,
            owners,
            members,
        }
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Arc<Instance>] {
        &self.members
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The number of points (virtual nodes) on the ring.
    pub fn points(&self) -> usize {
        self.points.len()
    }

    /// Every point of the ring in clockwise order (ascending hash), with the member owning it.
    ///
    /// A point owns the keys whose [`hash_key`] lies after the previous point, up to and including
    /// its own hash; the first point also owns the keys after the last point (wrapping around).
    /// This is what [`find`](Self::find) routes by, so a member's share of the key space, or a
    /// picture of the ring, can be computed from it.
    pub fn owned_points(&self) -> impl ExactSizeIterator<Item = (u64, &Arc<Instance>)> + '_ {
        self.points
            .iter()
            .zip(&self.owners)
            .map(|(&p, &o)| (p, &self.members[o as usize]))
    }

    /// Each member's share of the key space, in [`members`](Self::members) order: the fraction
    /// of all 2^64 key hashes that [`find`](Self::find) routes to it (the shares of a non-empty
    /// ring add up to 1).
    pub fn shares(&self) -> Vec<f64> {
        let mut owned = vec![0u128; self.members.len()];
        let n = self.points.len();
        for i in 0..n {
            let prev = self.points[if i == 0 { n - 1 } else { i - 1 }];
            // One point alone owns the whole circle (the distance to itself is 0, read as 2^64).
            let arc = match self.points[i].wrapping_sub(prev) {
                0 if n == 1 => 1u128 << 64,
                d => u128::from(d),
            };
            owned[self.owners[i] as usize] += arc;
        }
        owned
            .into_iter()
            .map(|o| o as f64 / 2f64.powi(64))
            .collect()
    }

    /// The first point at or after the key's hash, wrapping around.
    fn start(&self, key: &[u8]) -> usize {
        self.start_hash(hash_key(key))
    }

    /// The first point at or after `h`, wrapping around.
    fn start_hash(&self, h: u64) -> usize {
        let b = (h >> (64 - self.bits)) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        // Points in this bucket are the only candidates; if all are below h, the answer is the first
        // point of a later bucket, which is `hi`.
        let i = lo + self.points[lo..hi].partition_point(|&p| p < h);
        if i == self.points.len() { 0 } else { i }
    }

    /// The owner of `key`, or `None` on an empty ring.
    pub fn find(&self, key: &[u8]) -> Option<&Arc<Instance>> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.start(key);
        Some(&self.members[self.owners[i] as usize])
    }

    /// Up to `count` distinct members, walking the ring from `key`'s position and wrapping around;
    /// the first is [`find`](Self::find)'s owner.
    pub fn find_n(&self, count: usize, key: &[u8]) -> Vec<&Arc<Instance>> {
        let want = count.min(self.members.len());
        let mut out: Vec<&Arc<Instance>> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let mut seen: Vec<u32> = Vec::with_capacity(want);
        let start = self.start(key);
        let n = self.points.len();
        for step in 0..n {
            let owner = self.owners[(start + step) % n];
            if !seen.contains(&owner) {
                seen.push(owner);
                out.push(&self.members[owner as usize]);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }
}

impl Ring {
    /// [`find_n`](Self::find_n) over this ring's points and `joined`'s together, as if they were
    /// one ring. Each of this ring's members passes through `map`, which may refuse it (it has
    /// left) or give back a newer version of it; `joined`'s members are taken as they are. `None`
    /// once more than `max_skipped` distinct members have been refused: the caller should build a
    /// ring of the current membership instead.
    ///
    /// A member's points depend only on its id and weight, so with `map` refusing exactly the
    /// departed members (and those whose weight changed) and `joined` holding exactly the new ones,
    /// the answer is the one a ring of the current membership gives.
    pub(crate) fn find_n_overlay(
        &self,
        joined: Option<&Ring>,
        count: usize,
        key: &[u8],
        max_skipped: usize,
        mut map: impl FnMut(&Arc<Instance>) -> Option<Arc<Instance>>,
    ) -> Option<Vec<Arc<Instance>>> {
        let empty = Ring::default();
        let joined = joined.unwrap_or(&empty);
        let h = hash_key(key);
        let mut out: Vec<Arc<Instance>> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        let (mut a, mut b) = (self.cursor(h), joined.cursor(h));
        let mut refused: Vec<&str> = Vec::new();
        while out.len() < count {
            let next_a = a.peek(self);
            let next_b = b.peek(joined);
            let from_self = match (next_a, next_b) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((da, ma)), Some((db, mb))) => (da, &ma.id) <= (db, &mb.id),
            };
            let (_, m) = if from_self { next_a } else { next_b }.expect("one side has a point");
            if from_self {
                a.advance();
            } else {
                b.advance();
            }
            // A refused member of this ring may be on `joined` (its weight changed): only the
            // taken ones count as seen.
            if seen.contains(&m.id.as_str()) || (from_self && refused.contains(&m.id.as_str())) {
                continue;
            }
            if !from_self {
                seen.push(&m.id);
                out.push(m.clone());
            } else if let Some(now) = map(m) {
                seen.push(&m.id);
                out.push(now);
            } else {
                refused.push(&m.id);
                if refused.len() > max_skipped {
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A walk over every point clockwise from hash `h`.
    fn cursor(&self, h: u64) -> Cursor {
        Cursor {
            at: if self.points.is_empty() {
                0
            } else {
                self.start_hash(h)
            },
            left: self.points.len(),
            len: self.points.len(),
            h,
        }
    }
}

/// A position on a ring's points, walking clockwise (see [`Ring::find_n_overlay`]).
struct Cursor {
    at: usize,
    left: usize,
    len: usize,
    h: u64,
}

impl Cursor {
    /// The next point's clockwise distance from the start hash, and its owner.
    fn peek<'r>(&self, ring: &'r Ring) -> Option<(u64, &'r Arc<Instance>)> {
        (self.left > 0).then(|| {
            (
                ring.points[self.at].wrapping_sub(self.h),
                &ring.members[ring.owners[self.at] as usize],
            )
        })
    }

    fn advance(&mut self) {
        self.left -= 1;
        self.at += 1;
        if self.at == self.len {
            self.at = 0;
        }
    }
}

#[cfg(test)]
mod tests {
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

    /// The points' owners are what `find` answers, and the shares are the fractions of keys each
    /// member gets.
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
            let h = hash_key(&key);
            let at = points.partition_point(|&(p, _)| p < h);
            let (_, owner) = points[if at == points.len() { 0 } else { at }];
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
        assert_eq!(r.points(), 384 + 128);
    }

    #[test]
    fn bucket_index_agrees_with_a_plain_search() {
        for n in [1usize, 2, 7, 300] {
            let r = Ring::new((0..n).map(|i| inst(&format!("m{i}"))));
            for k in 0..5000u32 {
                let key = k.to_le_bytes();
                let h = hash_key(&key);
                let plain = r.points.partition_point(|&p| p < h);
                let plain = if plain == r.points.len() { 0 } else { plain };
                assert_eq!(r.start(&key), plain, "n={n} key={k}");
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
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn member(id: String) -> Arc<Instance> {
        Arc::new(Instance::new("svc", id).addr("x:1"))
    }

    /// The exact share of the hash circle that `id` owns on `ring`: the keys that move to it.
    fn share_of(ring: &Ring, id: &str) -> f64 {
        let n = ring.points.len();
        let mut owned: u128 = 0;
        for i in 0..n {
            if ring.members[ring.owners[i] as usize].id == id {
                // Keys in (previous point, this point] belong to this point.
                let prev = if i == 0 {
                    ring.points[n - 1]
                } else {
                    ring.points[i - 1]
                };
                owned += u128::from(ring.points[i].wrapping_sub(prev));
            }
        }
        owned as f64 / 2f64.powi(64)
    }

    proptest! {
        // The share a new member takes with 128 virtual nodes has a relative standard deviation of
        // about 1/sqrt(128) = 8.8%, so the 25% bound is 2.8 sigma: a correct ring still misses it
        // about once in 200 random memberships. The seed is fixed so the run is reproducible;
        // `mean_movement_is_unbiased` below checks the average tightly.
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
                (moved - expected).abs() <= 0.25 * expected,
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
}
