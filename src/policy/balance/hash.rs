//! `consistent_hash`: a hash ring (ketama-style, with virtual nodes in proportion to weight)
//! keyed by the request's affinity key, the client IP by default. Removing one of n backends
//! moves only the keys that were on it, about 1/n of them; the rest keep their backend.

use super::{mix64, BackendId, Balancer, Candidate};
use rand::rngs::SmallRng;

/// Virtual nodes per unit of weight: enough that shares stay within a few percent of the weights.
const POINTS_PER_WEIGHT: f64 = 160.0;
/// A cap on the ring size, so huge weights cannot make a rebuild expensive.
const MAX_POINTS: usize = 100_000;

/// A hash ring; rebuilt only when the set of candidates or their weights change.
#[derive(Debug, Default)]
pub struct ConsistentHash {
    /// (point, backend), sorted by point.
    ring: Vec<(u64, BackendId)>,
    /// The (id, weight) list the ring was built from.
    built_from: Vec<(BackendId, u64)>,
}

impl ConsistentHash {
    fn rebuild_if_changed(&mut self, candidates: &[Candidate]) {
        let members: Vec<(BackendId, u64)> = candidates
            .iter()
            .map(|c| (c.id, c.weight.to_bits()))
            .collect();
        if members == self.built_from {
            return;
        }
        let total: f64 = candidates.iter().map(|c| c.weight).sum();
        let scale = if total * POINTS_PER_WEIGHT > MAX_POINTS as f64 {
            MAX_POINTS as f64 / total
        } else {
            POINTS_PER_WEIGHT
        };
        self.ring.clear();
        for c in candidates {
            let points = ((c.weight * scale).round() as u64).max(1);
            for p in 0..points {
                self.ring.push((mix64(mix64(c.id) ^ p), c.id));
            }
        }
        self.ring.sort_unstable();
        self.built_from = members;
    }
}

impl Balancer for ConsistentHash {
    fn pick(&mut self, candidates: &[Candidate], key: u64, _rng: &mut SmallRng) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        self.rebuild_if_changed(candidates);
        let at = self.ring.partition_point(|(point, _)| *point < key);
        let (_, id) = self.ring.get(at).or_else(|| self.ring.first())?;
        candidates.iter().position(|c| c.id == *id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn owners(b: &mut ConsistentHash, c: &[Candidate], keys: &[u64]) -> Vec<BackendId> {
        let mut rng = rng();
        keys.iter()
            .map(|k| c[b.pick(c, *k, &mut rng).unwrap()].id)
            .collect()
    }

    #[test]
    fn same_key_same_backend() {
        let c = cands(&[1.0, 1.0, 1.0]);
        let mut b = ConsistentHash::default();
        let keys: Vec<u64> = (0..100).map(mix64).collect();
        assert_eq!(owners(&mut b, &c, &keys), owners(&mut b, &c, &keys));
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let keys: Vec<u64> = (0..10_000u64).map(|k| mix64(k + 1_000_000)).collect();
        for n in [3usize, 5, 10] {
            let all = cands(&vec![1.0; n]);
            let mut b = ConsistentHash::default();
            let before = owners(&mut b, &all, &keys);
            let removed = 1;
            let rest: Vec<Candidate> = all.iter().copied().filter(|c| c.id != removed).collect();
            let after = owners(&mut b, &rest, &keys);
            let moved: Vec<usize> = (0..keys.len())
                .filter(|i| before[*i] != after[*i])
                .collect();
            // Only the removed backend's keys move...
            assert!(moved.iter().all(|i| before[*i] == removed));
            // ...and they are about 1/n of all keys.
            let share = moved.len() as f64 / keys.len() as f64;
            assert!(share <= 1.3 / n as f64, "n={n}: moved {share}");
            assert!(share >= 0.7 / n as f64, "n={n}: moved {share}");
        }
    }

    #[test]
    fn shares_follow_weights() {
        let c = cands(&[1.0, 1.0, 2.0]);
        let n = counts(&mut ConsistentHash::default(), &c, 10_000);
        assert!((2000..3000).contains(&n[0]), "{n:?}");
        assert!((4300..5700).contains(&n[2]), "{n:?}");
    }
}
