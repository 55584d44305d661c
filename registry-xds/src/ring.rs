//! gRPC's ring hash, as its clients build it from this server's answers: so that a Rust service
//! routes a key to the instance a Go, Python, Node or C++ client with `--xds-balancing ring-hash`
//! sends a call with that key (header [`HASH_HEADER`](crate::HASH_HEADER)) to.
//!
//! The algorithm is gRPC's `ring_hash` (gRFC A42, the same in grpc C-core and grpc-js): each
//! endpoint gets entries in proportion to its weight, the ring's size scaled so the lightest endpoint
//! gets about `min_ring_size × its share` entries, at most `max_ring_size` in all; entry `i` of an
//! endpoint is XXH64 (seed 0) of `"<ip:port>_<i>"`; a request's hash is XXH64 of the header's
//! value; its owner is the first entry at or after that hash, round the ring. Endpoints are those
//! of the ClusterLoadAssignment this server sends that a client routes to (`HEALTHY` ones, in the
//! answer's order), each weighted by its instance's weight (the locality's weight × the endpoint's
//! weight of 1, as gRPC computes it).
//!
//! Why it is not the directory's own ring ([`registry_engine::Ring`]): an endpoint is known by
//! its address here (the clients in use hash addresses, not ids: A76's hash keys are not in
//! grpc-js, and off by default in C-core), so a restarted instance on a new port moves its keys,
//! and with 1,024 to 4,096 entries (11 per member at 100 equal members) the most loaded of 100
//! members gets 1.91 times the mean (1.15 of 10, 1.04 of 3; averaged over 20 address sets, test
//! `load_of_the_most_loaded_member`), against 1.09 for the directory's multi-probe ring with 200
//! points in all.

use std::sync::Arc;

use registry_engine::{Instance, ServiceSnapshot};
use xxhash_rust::xxh64::xxh64;

use crate::resources::served;

pub use crate::resources::{MAX_RING_SIZE, MIN_RING_SIZE};

/// A service's ring as a gRPC client with ring hash builds it from this server's answer.
#[derive(Clone, Debug, Default)]
pub struct GrpcRing {
    /// (hash, member index), sorted by hash.
    entries: Vec<(u64, u32)>,
    members: Vec<Arc<Instance>>,
}

impl GrpcRing {
    /// The ring of `snap`'s service, as a client receiving this server's answer for it builds it.
    pub fn new(snap: &ServiceSnapshot) -> GrpcRing {
        let (served, _) = served(snap);
        let endpoints = served
            .into_iter()
            .filter(|s| s.health == envoy_types::pb::envoy::config::core::v3::HealthStatus::Healthy)
            .map(|s| (s.inst, s.addr.to_string()));
        GrpcRing::build(endpoints, MIN_RING_SIZE, MAX_RING_SIZE)
    }

    /// A ring of `endpoints` (an instance and its `ip:port`, `[ip]:port` for IPv6, weighted by the
    /// instance's weight) with gRPC's sizing between `min_ring_size` and `max_ring_size`.
    pub fn build(
        endpoints: impl IntoIterator<Item = (Arc<Instance>, String)>,
        min_ring_size: u64,
        max_ring_size: u64,
    ) -> GrpcRing {
        let endpoints: Vec<(Arc<Instance>, String)> = endpoints.into_iter().collect();
        if endpoints.is_empty() {
            return GrpcRing::default();
        }
        let total: f64 = endpoints
            .iter()
            .map(|(i, _)| f64::from(i.weight.max(1)))
            .sum();
        let normalized: Vec<f64> = endpoints
            .iter()
            .map(|(i, _)| f64::from(i.weight.max(1)) / total)
            .collect();
        let min_normalized = normalized.iter().copied().fold(f64::INFINITY, f64::min);
        // As the clients compute it, in doubles.
        let scale = ((min_normalized * min_ring_size as f64).ceil() / min_normalized)
            .min(max_ring_size as f64);
        let mut entries = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0f64, 0.0f64);
        let mut key = String::new();
        for (index, ((_, addr), weight)) in endpoints.iter().zip(&normalized).enumerate() {
            target += scale * weight;
            let mut count = 0u64;
            while current < target {
                key.clear();
                key.push_str(addr);
                key.push('_');
                key.push_str(&count.to_string());
                entries.push((xxh64(key.as_bytes(), 0), index as u32));
                count += 1;
                current += 1.0;
            }
        }
        entries.sort_by_key(|e| e.0);
        GrpcRing {
            entries,
            members: endpoints.into_iter().map(|(i, _)| i).collect(),
        }
    }

    /// The instance a gRPC client sends a call whose [`HASH_HEADER`](crate::HASH_HEADER) is `key`
    /// to (when every endpoint is ready).
    pub fn find(&self, key: &[u8]) -> Option<&Arc<Instance>> {
        if self.entries.is_empty() {
            return None;
        }
        let h = xxh64(key, 0);
        let i = self.entries.partition_point(|e| e.0 < h);
        let (_, member) = self.entries[if i == self.entries.len() { 0 } else { i }];
        self.members.get(member as usize)
    }

    /// How many entries the ring has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the ring has no entry (no routable endpoint).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, weight: u32) -> Arc<Instance> {
        Arc::new(Instance::new("s", id).weight(weight))
    }

    #[test]
    fn entries_follow_the_weights_within_the_size_bounds() {
        let ring = GrpcRing::build(
            [
                (inst("a", 100), "10.0.0.1:80".to_owned()),
                (inst("b", 300), "10.0.0.2:80".to_owned()),
            ],
            1024,
            4096,
        );
        // The lightest gets ceil(0.25 × 1024) = 256 entries; the scale is 1024.
        let count = |id: &str| {
            ring.entries
                .iter()
                .filter(|(_, m)| ring.members[*m as usize].id == id)
                .count()
        };
        assert_eq!((count("a"), count("b")), (256, 768));
        // At most the maximum: 1 to 9,999 would scale to 10,000; capped at 4,096.
        let ring = GrpcRing::build(
            [
                (inst("a", 1), "10.0.0.1:80".to_owned()),
                (inst("b", 9999), "10.0.0.2:80".to_owned()),
            ],
            1024,
            4096,
        );
        assert_eq!(ring.len(), 4096);
        assert!(ring.entries.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn a_key_goes_to_the_first_entry_at_or_after_its_hash() {
        let ring = GrpcRing::build(
            [
                (inst("a", 100), "10.0.0.1:80".to_owned()),
                (inst("b", 100), "10.0.0.2:80".to_owned()),
            ],
            4,
            4,
        );
        for key in ["k1", "k2", "user-42", ""] {
            let h = xxh64(key.as_bytes(), 0);
            let want = ring
                .entries
                .iter()
                .find(|e| e.0 >= h)
                .unwrap_or(&ring.entries[0]);
            assert_eq!(
                ring.find(key.as_bytes()).unwrap().id,
                ring.members[want.1 as usize].id
            );
        }
        assert!(GrpcRing::default().find(b"k").is_none());
    }

    #[test]
    fn xxh64_is_the_reference_one() {
        // Reference values of XXH64 with seed 0.
        assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
        assert_eq!(xxh64(b"a", 0), 0xd24e_c4f1_a98c_6e5b);
    }
}

#[cfg(test)]
mod balance {
    use super::*;

    /// The most loaded member's share of the hash space over the mean, for `n` equal members.
    fn max_over_mean(n: u32, offset: u32) -> f64 {
        let ring = GrpcRing::build(
            (0..n).map(|i| {
                let id = format!("m{i}");
                let addr = format!("10.{}.{}.{}:50051", offset, i / 250, i % 250 + 1);
                (Arc::new(Instance::new("s", id).weight(100)), addr)
            }),
            MIN_RING_SIZE,
            MAX_RING_SIZE,
        );
        let mut share = vec![0f64; n as usize];
        let e = &ring.entries;
        for (k, (h, m)) in e.iter().enumerate() {
            let prev = if k == 0 { e[e.len() - 1].0 } else { e[k - 1].0 };
            share[*m as usize] += h.wrapping_sub(prev) as f64;
        }
        let mean = share.iter().sum::<f64>() / f64::from(n);
        share.iter().copied().fold(0.0, f64::max) / mean
    }

    #[test]
    #[ignore = "a measurement: cargo test -p registry-xds --lib balance -- --ignored --nocapture"]
    fn load_of_the_most_loaded_member() {
        for n in [3, 10, 100] {
            let runs: Vec<f64> = (0..20).map(|o| max_over_mean(n, o)).collect();
            let avg = runs.iter().sum::<f64>() / runs.len() as f64;
            println!("{n} members: max/mean {avg:.3} averaged over 20 address sets");
        }
    }
}
