//! Consistent hashing with multiple probes (Dispatch's libring, done over the live directory).
//!
//! Each instance gets `vnodes × weight / 100` points on a 64-bit circle ([`DEFAULT_VNODES`], 2, at
//! the default weight; at least one). A key is hashed to [`PROBES`] positions on the circle (its
//! *probes*, see [`probes`]); its owner is the member with a point nearest clockwise to any probe.
//! Ties (equal distance, which needs two points with equal hashes or a 2^-64 coincidence) go to the
//! point with the smaller hash, then to the member with the smaller id.
//!
//! This is multi-probe consistent hashing (Appleton and O'Reilly, 2015). Compared with one probe and
//! many virtual nodes per member, it spreads load as evenly with far fewer points: with 100 members
//! the most loaded one gets about 1.09 times the mean (128 virtual nodes and one probe: 1.23),
//! and 100,000 members take 200,000 points (1.6 MB) instead of 12.8 million (150 MB), so a lookup's
//! [`PROBES`] independent reads stay in cache instead of missing it. What it costs: the least loaded
//! members get less (about 0.43 times the mean at 100 members, against 0.80), and a key's lookup
//! reads [`PROBES`] places instead of one.
//!
//! Each member has a *score* for a key: the clockwise distance from a probe to the nearest of its
//! points, over all probes. [`find`](Ring::find) is the member with the lowest score and
//! [`find_n`](Ring::find_n) lists members by increasing score. Because a member's score depends on
//! nothing but the key, its own id and its weight:
//! - the mapping is a pure function of the membership (ids and weights): hashes are a fixed function
//!   of the bytes (FNV-1a followed by a 64-bit finaliser), so every process, on every platform and
//!   Rust version, routes a key to the same owner given the same membership;
//! - disruption is minimal and exact: when a member leaves, only its keys move, and when one joins,
//!   only the keys it now owns move; in `find_n`'s lists a departed member just drops out.
//!
//! A ring is immutable and always built from the full membership, never patched from deltas.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use crate::model::instance::{DEFAULT_WEIGHT, Instance, MAX_WEIGHT};

/// Points per instance at the default weight.
pub const DEFAULT_VNODES: u32 = 2;
/// The most points per instance at the default weight that a ring uses: larger requests are
/// lowered to it, so that an instance at [`MAX_WEIGHT`] has at most 409,600 points and a ring's
/// size stays proportional to its membership instead of exhausting memory.
pub const MAX_VNODES: u32 = 4096;
/// How many positions on the circle a key is hashed to (see [`Ring`]).
///
/// Part of the mapping: changing it re-routes keys. 13 is the fewest that keeps the most loaded of
/// 100 members at 1.10 times the mean or less (11 probes: 1.10, 7: 1.17, 5: 1.25, with 2 points per
/// member, averaged over 20 random memberships).
pub const PROBES: usize = 13;

/// A consistent-hash ring over a set of instances.
///
/// Each instance has a few points on a 64-bit circle (`vnodes × weight / 100`, at least one). A key
/// is looked up at [`PROBES`] positions (its [`probes`]); a member's *score* for the key is the
/// clockwise distance from a probe to the nearest of its points, over all probes. The owner
/// ([`find`](Self::find)) is the member with the lowest score, [`find_n`](Self::find_n) lists
/// members by increasing score. A score depends only on the key and the member's id and weight, so
/// the mapping is a pure function of the membership, a member that leaves moves only its keys and
/// one that joins takes keys only for itself (multi-probe consistent hashing).
#[derive(Clone, Default)]
pub struct Ring {
    /// The points sorted by hash, each with its owner, then (on a non-empty ring) one slot with
    /// hash `u64::MAX` that is not a point: a probe's scan stops on it at the latest.
    ///
    /// A point and its owner share a cache line, and the owner is the member's `Arc` itself, not an
    /// index into `members`: at 100,000 members a lookup's last step is then one read instead of
    /// three dependent cache misses (the owner's index, the member's slot, the member).
    slots: Vec<Slot>,
    /// `index[b]` is the first point whose top `bits` bits are at least `b`: a probe reads a bucket
    /// of about one point instead of binary-searching them all.
    index: Vec<u32>,
    bits: u32,
    /// Members, sorted by id.
    members: Vec<Arc<Instance>>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members.len())
            .field("points", &self.points())
            .finish()
    }
}

/// One point of a ring: its hash and the member owning it.
#[derive(Clone)]
struct Slot {
    hash: u64,
    owner: Arc<Instance>,
}

/// The 64-bit hash of a key, as the ring uses it: its first probe (see [`probes`]).
pub fn hash_key(key: &[u8]) -> u64 {
    fmix64(fnv(FNV_OFFSET, key))
}

/// The [`PROBES`] positions on the circle that a key is looked up at: [`hash_key`] first, then
/// `fmix64(hash_key + i × 0x9e37_79b9_7f4a_7c15)` for i = 1, 2, ...
pub fn probes(key: &[u8]) -> [u64; PROBES] {
    probes_of(hash_key(key))
}

fn probes_of(h: u64) -> [u64; PROBES] {
    let mut out = [h; PROBES];
    for (i, p) in out.iter_mut().enumerate().skip(1) {
        *p = fmix64(h.wrapping_add((i as u64).wrapping_mul(GOLDEN)));
    }
    out
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

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
    /// values are raised or lowered to that range), scaled by each instance's weight, rounded to
    /// the nearest whole point (at least one point each; weights above [`MAX_WEIGHT`], which no
    /// stored instance has, count as it). A member's expected share is proportional to its points,
    /// so at the default 2 points weights count in steps of 50.
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
        // Equal hashes (astronomically rare) are ordered by member, which is by id: deterministic.
        pairs.sort_unstable();
        let count = pairs.len();
        // Half a point to one point per bucket, at most 2^22 buckets (16 MiB of index).
        let bits = (usize::BITS - count.leading_zeros()).clamp(1, 22);
        let mut index = Vec::with_capacity((1usize << bits) + 1);
        let mut at = 0usize;
        for b in 0..(1u64 << bits) {
            while at < count && (pairs[at].0 >> (64 - bits)) < b {
                at += 1;
            }
            index.push(at as u32);
        }
        index.push(count as u32);
        let mut slots: Vec<Slot> = Vec::with_capacity(count + 1);
        slots.extend(pairs.iter().map(|&(hash, idx)| Slot {
            hash,
            owner: members[idx as usize].clone(),
        }));
        if let Some(first) = members.first() {
            slots.push(Slot {
                hash: u64::MAX,
                owner: first.clone(),
            });
        }
        Ring {
            slots,
            index,
            bits,
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

    /// The number of points on the ring.
    pub fn points(&self) -> usize {
        // Without the end marker.
        self.slots.len().saturating_sub(1)
    }

    /// Every point of the ring in clockwise order (ascending hash), with the member owning it.
    ///
    /// A key goes to the point nearest clockwise (at or after) to any of its [`probes`], wrapping
    /// around: this is what [`find`](Self::find) routes by, so a picture of the ring, or the owner
    /// of a key, can be computed from it. A point is no longer the sole owner of the arc before it:
    /// a key hashing into that arc may be taken by a point nearer to another of its probes.
    pub fn owned_points(&self) -> impl ExactSizeIterator<Item = (u64, &Arc<Instance>)> + '_ {
        self.slots[..self.points()]
            .iter()
            .map(|s| (s.hash, &s.owner))
    }

    /// Each member's share of the keys, in [`members`](Self::members) order: the probability that
    /// [`find`](Self::find) routes a key to it when the key's [`probes`] are uniform and
    /// independent (the shares of a non-empty ring add up to 1).
    ///
    /// Computed exactly from the arcs between points, up to `f64` rounding (about 1e-12): with the
    /// arcs' lengths `L` as fractions of the circle and `S(x) = Σ max(L - x, 0)` the chance that one
    /// probe is farther than `x` from the next point, the point ending an arc of length `L` wins
    /// `PROBES × ∫₀^L S(x)^(PROBES-1) dx`. Real keys' probes are hashes, not random draws: over
    /// `k` keys the fraction a member gets differs from its share by sampling noise, about
    /// `sqrt(share / k)`.
    pub fn shares(&self) -> Vec<f64> {
        let mut owned = vec![0f64; self.members.len()];
        let n = self.points();
        // Members are sorted by id, each a distinct id.
        let member_index = |m: &Arc<Instance>| {
            self.members
                .binary_search_by(|x| x.id.as_str().cmp(&m.id))
                .expect("every owner is a member")
        };
        let circle = 2f64.powi(64);
        let mut arcs: Vec<(f64, usize)> = (0..n)
            .map(|i| {
                let prev = self.slots[if i == 0 { n - 1 } else { i - 1 }].hash;
                // One point alone owns the whole circle (the distance to itself is 0, read as 2^64).
                let arc = match self.slots[i].hash.wrapping_sub(prev) {
                    0 if n == 1 => 1.0,
                    d => d as f64 / circle,
                };
                (arc, member_index(&self.slots[i].owner))
            })
            .collect();
        arcs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Walk the arcs from the shortest: between two consecutive lengths, S is linear,
        // S(x) = rest - alive × x, and the integral of k S^(k-1) over it is (S(a)^k - S(b)^k) / alive
        // for each arc still longer than x. `won` accumulates it from 0.
        let k = PROBES as i32;
        let (mut x, mut s, mut won) = (0f64, 1f64, 0f64);
        let mut alive = n as f64;
        let mut rest: f64 = arcs.iter().map(|a| a.0).sum();
        for (len, owner) in arcs {
            if len > x {
                let s_end = (rest - alive * len).max(0.0);
                won += (s.powi(k) - s_end.powi(k)) / alive;
                (x, s) = (len, s_end);
            }
            owned[owner] += won;
            alive -= 1.0;
            rest -= len;
        }
        owned
    }

    /// The first point at or after `h`, wrapping around (on a non-empty ring).
    #[inline]
    fn start_hash(&self, h: u64) -> usize {
        let b = (h >> (64 - self.bits)) as usize;
        // The answer is in this bucket or is the first point after it, at most a few points on: the
        // first two steps are taken without branching (a mispredicted branch costs more than a
        // probe), the rest (rare: a bucket holds about one point) in a loop. The sentinel after the
        // last point ends the scan.
        let slots = &self.slots[..];
        let mut i = self.index[b] as usize;
        i += usize::from(slots[i].hash < h);
        i += usize::from(slots[i].hash < h);
        while slots[i].hash < h {
            i += 1;
        }
        if i == self.points() { 0 } else { i }
    }

    /// The owner of `key`, or `None` on an empty ring.
    pub fn find(&self, key: &[u8]) -> Option<&Arc<Instance>> {
        let (_, i) = self.nearest(&probes_of(hash_key(key)))?;
        Some(&self.slots[i].owner)
    }

    /// The point nearest clockwise to any of `probes` (its distance and index), or `None` on an
    /// empty ring.
    #[inline]
    fn nearest(&self, probes: &[u64; PROBES]) -> Option<(u64, usize)> {
        if self.slots.is_empty() {
            return None;
        }
        // The probes are independent: the processor overlaps their reads.
        let (mut best_d, mut best_i) = (u64::MAX, usize::MAX);
        for &q in probes {
            let i = self.start_hash(q);
            let d = self.slots[i].hash.wrapping_sub(q);
            // Nearer wins; at equal distance, the earlier point (smaller hash, then smaller id).
            let better = (d < best_d) | ((d == best_d) & (i < best_i));
            best_d = if better { d } else { best_d };
            best_i = if better { i } else { best_i };
        }
        Some((best_d, best_i))
    }

    /// Point `i`, `distance` from a probe.
    fn point(&self, i: usize, distance: u64) -> Point<'_> {
        Point {
            distance,
            hash: self.slots[i].hash,
            member: &self.slots[i].owner,
        }
    }

    /// Up to `count` distinct members by increasing score for `key` (see [`Ring`]): the first is [`find`](Self::find)'s owner, the second the owner if the first
    /// left, and so on.
    pub fn find_n(&self, count: usize, key: &[u8]) -> Vec<&Arc<Instance>> {
        let want = count.min(self.members.len());
        let mut out: Vec<&Arc<Instance>> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let mut seen: Vec<*const Instance> = Vec::with_capacity(want);
        let mut walk = Walk::new(self, &probes_of(hash_key(key)));
        while out.len() < want {
            let Some(c) = walk.min() else { break };
            let owner = &self.slots[walk.cursors[c].at].owner;
            walk.advance(self, c);
            // One `Arc` per member: the pointer names it.
            if !seen.contains(&Arc::as_ptr(owner)) {
                seen.push(Arc::as_ptr(owner));
                out.push(owner);
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
        let probes = probes_of(h);
        if count == 1 {
            // The usual case, without walks: the nearest point of either ring, if its member is
            // taken, is the answer (the walks below would start with it).
            let a = self.nearest(&probes).map(|(d, i)| self.point(i, d));
            let b = joined.nearest(&probes).map(|(d, i)| joined.point(i, d));
            match (a, b) {
                (None, None) => return Some(Vec::new()),
                (Some(a), b) if b.is_none_or(|b| a.cmp_with(&b) != Ordering::Greater) => {
                    if let Some(now) = map(a.member) {
                        return Some(vec![now]);
                    }
                }
                (_, Some(b)) => return Some(vec![b.member.clone()]),
                _ => {}
            }
        }
        let (mut a, mut b) = (Walk::new(self, &probes), Walk::new(joined, &probes));
        let mut refused: Vec<&str> = Vec::new();
        while out.len() < count {
            let next_a = a.min().map(|c| (c, a.peek(self, c)));
            let next_b = b.min().map(|c| (c, b.peek(joined, c)));
            let from_self = match (next_a, next_b) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((_, pa)), Some((_, pb))) => pa.cmp_with(&pb) != Ordering::Greater,
            };
            let (c, p) = if from_self { next_a } else { next_b }.expect("one side has a point");
            let m = p.member;
            if from_self {
                a.advance(self, c);
            } else {
                b.advance(joined, c);
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
}

/// One walk clockwise per probe of a key over a ring's points, merged by distance from the probe:
/// each member is met first at its score (see [`Ring::find_n`] and [`Ring::find_n_overlay`]).
struct Walk {
    cursors: [Cursor; PROBES],
}

/// The next point of one probe's walk.
#[derive(Clone, Copy)]
struct Point<'r> {
    distance: u64,
    hash: u64,
    member: &'r Arc<Instance>,
}

impl Point<'_> {
    /// Nearer first; at equal distance, smaller hash, then smaller id (as [`Ring::find`]).
    fn cmp_with(&self, other: &Point<'_>) -> Ordering {
        (self.distance, self.hash)
            .cmp(&(other.distance, other.hash))
            .then_with(|| self.member.id.cmp(&other.member.id))
    }
}

impl Walk {
    fn new(ring: &Ring, probes: &[u64; PROBES]) -> Walk {
        let len = ring.points();
        let none = Cursor {
            at: usize::MAX,
            left: 0,
            probe: 0,
            distance: u64::MAX,
        };
        let mut walk = Walk {
            cursors: [none; PROBES],
        };
        if len > 0 {
            for (cur, &q) in walk.cursors.iter_mut().zip(probes) {
                cur.at = ring.start_hash(q);
                cur.left = len;
                cur.probe = q;
                cur.update(ring);
            }
        }
        walk
    }

    /// The cursor whose next point comes first, if any has one left.
    #[inline]
    fn min(&self) -> Option<usize> {
        let mut best = 0;
        for c in 1..PROBES {
            // Within one ring, point order is (hash, member id) order.
            let (cur, b) = (&self.cursors[c], &self.cursors[best]);
            if (cur.distance, cur.at) < (b.distance, b.at) {
                best = c;
            }
        }
        (self.cursors[best].left > 0).then_some(best)
    }

    fn advance(&mut self, ring: &Ring, c: usize) {
        let cur = &mut self.cursors[c];
        cur.left -= 1;
        cur.at += 1;
        if cur.at == ring.points() {
            cur.at = 0;
        }
        cur.update(ring);
    }

    fn peek<'r>(&self, ring: &'r Ring, c: usize) -> Point<'r> {
        let cur = &self.cursors[c];
        ring.point(cur.at, cur.distance)
    }
}

/// A position on a ring's points, walking clockwise from a probe.
#[derive(Clone, Copy)]
struct Cursor {
    /// The next point; `usize::MAX` once none is left.
    at: usize,
    left: usize,
    probe: u64,
    /// The next point's clockwise distance from the probe; `u64::MAX` once none is left.
    distance: u64,
}

impl Cursor {
    fn update(&mut self, ring: &Ring) {
        if self.left == 0 {
            (self.at, self.distance) = (usize::MAX, u64::MAX);
        } else {
            self.distance = ring.slots[self.at].hash.wrapping_sub(self.probe);
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
    /// `find` on the built ring. `cargo test --release -p registry-core --lib overlay_lookup_cost
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
}

#[cfg(test)]
mod properties {
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
}
