//! Power of two choices on a latency cost, cost = peak EWMA × (in-flight + 1): `p2c_ewma`
//! (linkerd's: the two candidates drawn uniformly) and `adaptive` (drawn in proportion to
//! weight, so at equal cost each backend's share follows its weight). The cheaper of the two
//! wins: near the best choice, without the herd that "always the cheapest" causes when the
//! estimates are stale.
//!
//! Counting what is in flight is what makes a hung backend look worse within milliseconds:
//! its requests never complete, so its in-flight count climbs while its EWMA cannot.

use super::weighted::weighted_index;
use super::{Balancer, Candidate};
use rand::rngs::SmallRng;
use rand::Rng;

/// Power of two choices; see the module doc.
#[derive(Debug)]
pub struct PowerOfTwo {
    weighted: bool,
}

impl PowerOfTwo {
    /// `adaptive`: the two candidates are drawn by weight; equal costs keep the first drawn.
    pub fn weighted() -> Self {
        PowerOfTwo { weighted: true }
    }

    /// `p2c_ewma`: weights ignored, candidates drawn uniformly.
    pub fn unweighted() -> Self {
        PowerOfTwo { weighted: false }
    }

    fn cost(c: &Candidate) -> f64 {
        c.latency.max(1e-6) * f64::from(c.inflight + 1)
    }

    fn draw(&self, candidates: &[Candidate], rng: &mut SmallRng) -> usize {
        if self.weighted {
            weighted_index(candidates, rng).unwrap_or(0)
        } else {
            rng.random_range(0..candidates.len())
        }
    }
}

impl Balancer for PowerOfTwo {
    fn pick(&mut self, candidates: &[Candidate], _key: u64, rng: &mut SmallRng) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            n => {
                let a = self.draw(candidates, rng);
                let mut b = self.draw(candidates, rng);
                if b == a {
                    // A second distinct candidate, uniformly among the others.
                    b = (a + 1 + rng.random_range(0..n - 1)) % n;
                }
                let (ca, cb) = (Self::cost(&candidates[a]), Self::cost(&candidates[b]));
                Some(if cb < ca { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn the_slow_backend_gets_little() {
        let mut c = cands(&[1.0, 1.0, 1.0]);
        c[2].latency = 0.5; // 50x the others
        for mut b in [PowerOfTwo::weighted(), PowerOfTwo::unweighted()] {
            let n = counts(&mut b, &c, 3000);
            // p2c never picks the worst of three unless both draws hit it: it is never drawn
            // against itself, so it gets nothing while the others are cheaper.
            assert_eq!(n[2], 0, "{n:?}");
            assert!(n[0] > 1200 && n[1] > 1200, "{n:?}");
        }
    }

    #[test]
    fn inflight_makes_a_silent_backend_expensive() {
        let mut c = cands(&[1.0, 1.0]);
        c[0].latency = 0.001; // looked fastest...
        c[0].inflight = 100; // ...but nothing comes back
        c[1].latency = 0.02;
        let mut b = PowerOfTwo::unweighted();
        let n = counts(&mut b, &c, 100);
        assert_eq!(n, vec![0, 100]);
    }

    #[test]
    fn adaptive_honours_weights_at_equal_latency() {
        let c = cands(&[1.0, 3.0]);
        let n = counts(&mut PowerOfTwo::weighted(), &c, 10_000);
        // Equal cost: the first drawn wins, and it is drawn by weight: 2500 : 7500.
        assert!((2200..2800).contains(&n[0]), "{n:?}");
        let n = counts(&mut PowerOfTwo::unweighted(), &c, 10_000);
        assert!((4700..5300).contains(&n[0]), "{n:?}");
    }

    #[test]
    fn one_candidate_is_always_picked() {
        let c = cands(&[1.0]);
        assert_eq!(counts(&mut PowerOfTwo::weighted(), &c, 10), vec![10]);
    }
}
