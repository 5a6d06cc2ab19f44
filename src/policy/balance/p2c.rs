//! Power of two choices on a latency cost, cost = latency × (in-flight + 1).
//!
//! - `p2c_ewma` (linkerd's): two candidates drawn uniformly, the cheaper wins.
//! - `adaptive`: two candidates drawn in proportion to their dynamic weights; the cheaper wins
//!   only when it is *decisively* cheaper (less than half the other's cost), otherwise the first
//!   drawn does. Measured on three equal loopback backends, strict p2c was winner-take-all at low
//!   concurrency (249 / 16 / 135 picks of 400: noise of a tenth of a millisecond decided every
//!   duel) and gave a recovered backend 6–12% of traffic two seconds after its return; the
//!   tolerance keeps shares proportional to weight among comparable backends while a slow,
//!   failing or hung one still loses every duel — which smooth weighted round robin over the
//!   same weights cannot do, since the weight floor would keep sending it its floor share.
//!
//! Counting what is in flight is what makes a hung backend look worse within milliseconds:
//! its requests never complete, so its in-flight count climbs while its EWMA cannot.
//!
//! **Exploring picks.** A backend that loses every duel gets no request, so nothing would ever
//! show that it became fast again: its estimate only decays, and one 30 ms slower than 0.3 ms
//! neighbours took some 50 s to be tried again. So one pick in [`EXPLORE_EVERY`] goes to the
//! backend that has gone longest without an answer, and a backend whose last answer was far
//! faster than its estimate is asked again at once (its next answer confirms the change: see
//! [`crate::policy::ewma`]'s trough), each only when nothing is in flight to it and its last
//! outcome was not a failure ([`super::Explore`]). A backend still slow then costs at most one
//! request in `EXPLORE_EVERY`, one at a time; one that became fast is back within a few hundred
//! requests.
//!
//! A backend in its slow-start ramp never wins a duel by being cheaper (its estimate restarted
//! at the pool's mean and decays while idle, so it would win them all and skip its ramp); it
//! wins as the first drawn unless the other is decisively cheaper. Under `adaptive` its draws
//! follow its ramped weight, so its share grows with the ramp from the first moment. (Dividing
//! its cost by the ramp instead starved it: at 10% of its weight its cost was ten times the
//! others', and it got nothing until a third of the ramp was over.)

use super::weighted::weighted_index;
use super::{Balancer, Candidate, Explore};
use rand::rngs::SmallRng;
use rand::Rng;

/// How much cheaper the second candidate of `adaptive` must be to beat the first drawn.
pub const DECISIVE: f64 = 2.0;

/// One pick in this many is an exploring pick (0.5%): few enough that a backend still slow
/// stays out of the p99, enough that at 200 requests a second one that recovered is asked
/// within a second.
pub const EXPLORE_EVERY: u32 = 200;

/// Power of two choices; see the module doc.
#[derive(Debug)]
pub struct PowerOfTwo {
    weighted: bool,
    decisive: f64,
    /// Picks until the next exploring one.
    until_explore: u32,
}

impl PowerOfTwo {
    /// `adaptive`: drawn by weight; the cheaper wins only when `DECISIVE`-ly cheaper.
    pub fn weighted() -> Self {
        PowerOfTwo {
            weighted: true,
            decisive: DECISIVE,
            until_explore: EXPLORE_EVERY,
        }
    }

    /// `p2c_ewma`: weights ignored, candidates drawn uniformly, the cheaper always wins.
    pub fn unweighted() -> Self {
        PowerOfTwo {
            weighted: false,
            decisive: 1.0,
            until_explore: EXPLORE_EVERY,
        }
    }

    /// The candidate to measure again, if this pick explores: one whose last answer was far
    /// faster than its estimate, else on every `EXPLORE_EVERY`-th pick the one that has gone
    /// longest without an answer.
    fn explore(&mut self, candidates: &[Candidate]) -> Option<usize> {
        if let Some(i) = candidates.iter().position(|c| c.explore == Explore::Now) {
            return Some(i);
        }
        self.until_explore -= 1;
        if self.until_explore > 0 {
            return None;
        }
        self.until_explore = EXPLORE_EVERY;
        candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.explore {
                Explore::Idle(idle) => Some((i, idle)),
                _ => None,
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
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
                if let Some(i) = self.explore(candidates) {
                    return Some(i);
                }
                let a = self.draw(candidates, rng);
                let mut b = self.draw(candidates, rng);
                if b == a {
                    // A second distinct candidate, uniformly among the others.
                    b = (a + 1 + rng.random_range(0..n - 1)) % n;
                }
                let (ca, cb) = (Self::cost(&candidates[a]), Self::cost(&candidates[b]));
                Some(if !candidates[b].ramping && cb * self.decisive < ca {
                    b
                } else {
                    a
                })
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
    fn adaptive_keeps_shares_proportional_among_comparable_backends() {
        let mut c = cands(&[1.0, 1.0, 1.0]);
        c[0].latency = 0.00050;
        c[1].latency = 0.00054;
        c[2].latency = 0.00064;
        let n = counts(&mut PowerOfTwo::weighted(), &c, 9000);
        assert!(n.iter().all(|k| (2700..3300).contains(k)), "{n:?}");
        // Strict p2c hands the slightly fastest every duel it is in: two thirds of the traffic.
        let strict = counts(&mut PowerOfTwo::unweighted(), &c, 9000);
        assert!(strict[0] > 5500 && strict[2] < 500, "{strict:?}");
    }

    #[test]
    fn adaptive_always_prefers_a_decisively_cheaper_backend() {
        let mut c = cands(&[1.0, 1.0]);
        c[1].latency = c[0].latency * 2.5;
        assert_eq!(counts(&mut PowerOfTwo::weighted(), &c, 1000), vec![1000, 0]);
        c[1].latency = c[0].latency;
        c[1].inflight = 3; // cost 4x: load counts as much as latency
        assert_eq!(counts(&mut PowerOfTwo::weighted(), &c, 1000), vec![1000, 0]);
    }

    #[test]
    fn a_ramping_backend_gets_its_ramped_share_from_the_start_never_more() {
        // At 10% of its weight, with an estimate decayed far below the others'.
        let mut c = cands(&[1.0, 1.0, 0.1]);
        c[2].latency = c[0].latency / 100.0;
        c[2].ramping = true;
        let n = counts(&mut PowerOfTwo::weighted(), &c, 10_000);
        // Drawn first about 0.1 / 2.1 of the time, and it wins then: some, not a flood.
        assert!((300..700).contains(&n[2]), "{n:?}");
        c[2].ramping = false;
        let flooded = counts(&mut PowerOfTwo::weighted(), &c, 10_000);
        assert!(
            flooded[2] > 2 * n[2],
            "its low estimate would win duels: {flooded:?}"
        );
    }

    #[test]
    fn one_pick_in_explore_every_measures_the_backend_longest_without_an_answer() {
        let mut c = cands(&[1.0, 1.0, 1.0]);
        c[2].latency = 0.5; // loses every duel
        c[0].explore = Explore::Idle(0.001);
        c[1].explore = Explore::Idle(0.002);
        c[2].explore = Explore::Idle(3.0);
        for mut b in [PowerOfTwo::weighted(), PowerOfTwo::unweighted()] {
            let n = counts(&mut b, &c, 10 * EXPLORE_EVERY as usize);
            assert_eq!(n[2], 10, "{n:?}");
        }
        // Not one with something in flight, or whose last outcome failed.
        c[2].explore = Explore::No;
        let n = counts(&mut PowerOfTwo::weighted(), &c, 10 * EXPLORE_EVERY as usize);
        assert_eq!(n[2], 0, "{n:?}");
    }

    #[test]
    fn a_backend_that_answered_far_faster_is_asked_again_at_once() {
        let mut c = cands(&[1.0, 1.0, 0.05]);
        c[2].latency = 0.5;
        c[2].explore = Explore::Now;
        assert_eq!(counts(&mut PowerOfTwo::weighted(), &c, 20), vec![0, 0, 20]);
    }

    #[test]
    fn one_candidate_is_always_picked() {
        let c = cands(&[1.0]);
        assert_eq!(counts(&mut PowerOfTwo::weighted(), &c, 10), vec![10]);
    }
}
