//! `round_robin` and `least_connections`: the two algorithms that walk the backends in id order.

use super::{BackendId, Balancer, Candidate};
use rand::rngs::SmallRng;

/// Each backend in turn, weights ignored. The cursor is the last id picked, so the walk
/// continues in order when a backend leaves or returns.
#[derive(Debug, Default)]
pub struct RoundRobin {
    last: Option<BackendId>,
}

/// The first candidate whose id comes after `last`, wrapping around.
fn after(candidates: &[Candidate], last: Option<BackendId>) -> usize {
    match last {
        None => 0,
        Some(last) => candidates.iter().position(|c| c.id > last).unwrap_or(0),
    }
}

impl Balancer for RoundRobin {
    fn pick(&mut self, candidates: &[Candidate], _key: u64, _rng: &mut SmallRng) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let i = after(candidates, self.last);
        self.last = Some(candidates[i].id);
        Some(i)
    }
}

/// Fewest requests in flight relative to weight (nginx's `least_conn`); ties go round robin,
/// starting after the last pick, so an idle pool still spreads evenly.
#[derive(Debug, Default)]
pub struct LeastConnections {
    last: Option<BackendId>,
}

impl Balancer for LeastConnections {
    fn pick(&mut self, candidates: &[Candidate], _key: u64, _rng: &mut SmallRng) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = after(candidates, self.last);
        let load = |c: &Candidate| f64::from(c.inflight) / c.weight;
        let mut best = start;
        for step in 1..n {
            let i = (start + step) % n;
            if load(&candidates[i]) < load(&candidates[best]) {
                best = i;
            }
        }
        self.last = Some(candidates[best].id);
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn round_robin_is_even_and_in_order() {
        let c = cands(&[1.0, 5.0, 1.0]);
        let mut rr = RoundRobin::default();
        let mut rng = rng();
        let seq: Vec<usize> = (0..6).map(|_| rr.pick(&c, 0, &mut rng).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(
            counts(&mut RoundRobin::default(), &c, 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn round_robin_continues_in_order_when_a_backend_leaves() {
        let all = cands(&[1.0, 1.0, 1.0, 1.0]);
        let mut rr = RoundRobin::default();
        let mut rng = rng();
        assert_eq!(rr.pick(&all, 0, &mut rng), Some(0));
        assert_eq!(rr.pick(&all, 0, &mut rng), Some(1));
        // Backend 2 leaves: the walk goes on to 3, then wraps to 0.
        let without: Vec<Candidate> = all.iter().copied().filter(|c| c.id != 2).collect();
        assert_eq!(without[rr.pick(&without, 0, &mut rng).unwrap()].id, 3);
        assert_eq!(without[rr.pick(&without, 0, &mut rng).unwrap()].id, 0);
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let mut rng = rng();
        assert_eq!(RoundRobin::default().pick(&[], 0, &mut rng), None);
        assert_eq!(LeastConnections::default().pick(&[], 0, &mut rng), None);
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_relative_to_weight() {
        let mut c = cands(&[1.0, 1.0, 2.0]);
        c[0].inflight = 3;
        c[1].inflight = 1;
        c[2].inflight = 3; // 1.5 per weight unit
        let mut lc = LeastConnections::default();
        let mut rng = rng();
        assert_eq!(lc.pick(&c, 0, &mut rng), Some(1));
        c[1].inflight = 2;
        assert_eq!(lc.pick(&c, 0, &mut rng), Some(2));
    }

    #[test]
    fn least_connections_breaks_ties_round_robin() {
        let c = cands(&[1.0, 1.0, 1.0]);
        assert_eq!(
            counts(&mut LeastConnections::default(), &c, 300),
            vec![100, 100, 100]
        );
    }
}
