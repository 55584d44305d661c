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
//!
//! A ring can also be built the way gRPC's clients build theirs ([`RingKind::GrpcRingHash`],
//! [`Ring::grpc`]): one probe, points placed by the members' addresses, so that a Rust process and a
//! Go, Python, Node or C++ client with `ring_hash` over the same xDS answer send a key to the same
//! instance. The multi-probe ring stays the default, for the reasons in [`RingKind`].

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use std::net::SocketAddr;

use xxhash_rust::xxh64::xxh64;

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

/// The fewest entries of a gRPC ring ([`Ring::grpc`]): the `minimum_ring_size` the xDS server
/// announces (gRPC's default too).
pub const GRPC_MIN_RING_SIZE: u64 = 1024;
/// The most entries of a gRPC ring: the `maximum_ring_size` the xDS server announces, which is also
/// the cap both grpc C-core and grpc-js apply by default, so every client builds the same ring.
pub const GRPC_MAX_RING_SIZE: u64 = 4096;

/// How a [`Ring`] places its points and looks a key up
/// ([`DirectoryBuilder::ring_kind`](crate::DirectoryBuilder::ring_kind)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RingKind {
    /// Multi-probe consistent hashing over the members' ids (see [`Ring`]): the default.
    #[default]
    MultiProbe,
    /// gRPC's `ring_hash` (gRFC A42, as grpc C-core, grpc-go, grpc-java and grpc-js build it):
    /// each endpoint gets entries in proportion to its weight, the ring scaled so the lightest
    /// gets about [`GRPC_MIN_RING_SIZE`] × its share, at most [`GRPC_MAX_RING_SIZE`] in all;
    /// entry `i` of an endpoint is XXH64 (seed 0) of `"<ip:port>_<i>"`, a key's hash is XXH64 of
    /// the key (the `x-key` header's value), and its owner is the first entry at or after it,
    /// round the ring.
    ///
    /// Members are the instances the xDS server sends as `HEALTHY` endpoints: online, not hidden
    /// by a probe, with an IP address and a port ([`Instance::socket_addr`]), the first in id order
    /// keeping an address two instances share
    /// ([`ServiceSnapshot::endpoints`](crate::ServiceSnapshot::endpoints)).
    ///
    /// Why it is not the default: a member is known by its address (the clients hash addresses, not
    /// ids: gRFC A76's hash keys are not in grpc-js and off by default in C-core), so an instance
    /// that restarts on another port moves its keys, instances without an IP address are not on
    /// it, and it balances worse: with 1,024 to 4,096 entries the most loaded of 100 equal members
    /// gets 1.91 times the mean (1.15 of 10, 1.04 of 3), against 1.09 on the multi-probe ring with
    /// 200 points in all. Every membership change rebuilds it (a member's entries depend on
    /// everyone's weights), where the multi-probe ring is walked at once with the joined members.
    GrpcRingHash,
}

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
    kind: RingKind,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("kind", &self.kind)
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
        Ring::assemble(&pairs, members, RingKind::MultiProbe)
    }

    /// gRPC's ring ([`RingKind::GrpcRingHash`]) over `endpoints` (an instance and its address, in
    /// the order of the xDS answer, which is by id), each weighted by its instance's weight.
    pub fn grpc(endpoints: impl IntoIterator<Item = (Arc<Instance>, SocketAddr)>) -> Ring {
        Ring::grpc_sized(endpoints, GRPC_MIN_RING_SIZE, GRPC_MAX_RING_SIZE)
    }

    /// [`Ring::grpc`] with gRPC's sizing between `min_ring_size` and `max_ring_size` entries.
    pub fn grpc_sized(
        endpoints: impl IntoIterator<Item = (Arc<Instance>, SocketAddr)>,
        min_ring_size: u64,
        max_ring_size: u64,
    ) -> Ring {
        let endpoints: Vec<(Arc<Instance>, SocketAddr)> = endpoints.into_iter().collect();
        if endpoints.is_empty() {
            return Ring {
                kind: RingKind::GrpcRingHash,
                ..Ring::default()
            };
        }
        // As the clients compute it, in doubles (a weight of 0 is not sent: at least 1).
        let weight = |i: &Instance| f64::from(i.weight.max(1));
        let total: f64 = endpoints.iter().map(|(i, _)| weight(i)).sum();
        let min_normalized = endpoints
            .iter()
            .map(|(i, _)| weight(i) / total)
            .fold(f64::INFINITY, f64::min);
        let scale = ((min_normalized * min_ring_size as f64).ceil() / min_normalized)
            .min(max_ring_size as f64);
        let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut key = String::new();
        for (index, (inst, addr)) in endpoints.iter().enumerate() {
            target += scale * weight(inst) / total;
            let mut count = 0u64;
            while current < target {
                use std::fmt::Write;
                key.clear();
                let _ = write!(key, "{addr}_{count}");
                pairs.push((xxh64(key.as_bytes(), 0), index as u32));
                count += 1;
                current += 1.0;
            }
        }
        pairs.sort_unstable();
        let members = endpoints.into_iter().map(|(i, _)| i).collect();
        Ring::assemble(&pairs, members, RingKind::GrpcRingHash)
    }

    /// The ring of `pairs` (hash, index in `members`), sorted by hash.
    fn assemble(pairs: &[(u64, u32)], mut members: Vec<Arc<Instance>>, kind: RingKind) -> Ring {
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
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ring {
            slots,
            index,
            bits,
            members,
            kind,
        }
    }

    /// How this ring places points and looks keys up.
    pub fn kind(&self) -> RingKind {
        self.kind
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
    /// independent (the shares of a non-empty ring add up to 1). On a gRPC ring a key has one
    /// probe, and a member's share is the length of the arcs its entries end.
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
        let k = match self.kind {
            RingKind::MultiProbe => PROBES as i32,
            RingKind::GrpcRingHash => 1,
        };
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
        if self.kind == RingKind::GrpcRingHash {
            return (!self.slots.is_empty())
                .then(|| &self.slots[self.start_hash(xxh64(key, 0))].owner);
        }
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
        if self.kind == RingKind::GrpcRingHash {
            // Clockwise from the key's entry, as a gRPC client looks for the next endpoint when
            // the owner is not ready.
            let (n, mut i) = (self.points(), self.start_hash(xxh64(key, 0)));
            for _ in 0..n {
                let owner = &self.slots[i].owner;
                if !seen.contains(&Arc::as_ptr(owner)) {
                    seen.push(Arc::as_ptr(owner));
                    out.push(owner);
                    if out.len() == want {
                        break;
                    }
                }
                i = if i + 1 == n { 0 } else { i + 1 };
            }
            return out;
        }
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
        // A gRPC ring's entries depend on every member's weight: it cannot be walked with another.
        if self.kind != RingKind::MultiProbe {
            return None;
        }
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
mod tests;

#[cfg(test)]
mod properties;
