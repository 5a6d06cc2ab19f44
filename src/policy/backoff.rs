//! Exponential backoff with jitter for probing a backend out of rotation: `base × 2^n` for the
//! n-th consecutive failed probe, ±20% jitter, never above `max`. A dead backend is not
//! hammered, and a recovered one is found within `max`. While fewer than half of an upstream's
//! backends serve, a backend out is probed far more often ([`out_of_rotation`]).

use rand::Rng;
use std::time::Duration;

/// The share of jitter either side of the nominal delay.
pub const JITTER: f64 = 0.2;

/// How often a backend out of rotation is probed at most while its upstream is short-handed.
pub const SHORT_HANDED: Duration = Duration::from_millis(100);

/// Whether an upstream with `serving` of its `active` backends in rotation is short-handed:
/// fewer than half of them serve (Envoy's panic threshold is also half the pool). Every backend
/// that can serve again is needed then, and waiting out a backoff protects nothing.
pub fn short_handed(serving: usize, active: usize) -> bool {
    serving * 2 < active
}

/// The delay before the next probe of a backend out of rotation: `delay`, its backoff, but at
/// most [`SHORT_HANDED`] while its upstream is short-handed. With every backend of an upstream
/// down, the first one back then serves within about a tenth of a second.
pub fn out_of_rotation(delay: Duration, serving: usize, active: usize) -> Duration {
    if short_handed(serving, active) {
        delay.min(SHORT_HANDED)
    } else {
        delay
    }
}

/// Backoff state of one backend's probes.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// No failures yet.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// Consecutive failed probes counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next probe after one more failed probe.
    pub fn fail<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let delay = self.delay(rng);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The nominal delay now, without jitter: `base × 2^failures`, capped.
    pub fn nominal(&self) -> Duration {
        self.base
            .checked_mul(1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// A probe passed: start again from `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn delay<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        let jitter = 1.0 + rng.random_range(-JITTER..=JITTER);
        self.nominal().mul_f64(jitter).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn doubles_per_failure_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let nominal: Vec<u64> = (0..10)
            .map(|_| {
                let n = b.nominal().as_millis() as u64;
                b.failures += 1;
                n
            })
            .collect();
        assert_eq!(
            nominal,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_under_the_cap() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(4));
        for _ in 0..200 {
            let nominal = b.nominal();
            let d = b.fail(&mut rng);
            assert!(
                d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2),
                "{d:?} vs {nominal:?}"
            );
            assert!(d <= Duration::from_secs(4));
        }
        // The jitter is real: not every delay at the cap is the same.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(b.fail(&mut rng).as_micros());
        }
        assert!(seen.len() > 10);
    }

    #[test]
    fn a_short_handed_upstream_probes_its_backends_out_at_once() {
        let slow = Duration::from_millis(750);
        assert!(short_handed(0, 3) && short_handed(1, 3) && short_handed(0, 1));
        assert!(!short_handed(2, 3) && !short_handed(1, 2) && !short_handed(5, 10));
        assert_eq!(out_of_rotation(slow, 1, 3), SHORT_HANDED);
        assert_eq!(out_of_rotation(slow, 2, 3), slow);
        let quick = Duration::from_millis(50);
        assert_eq!(
            out_of_rotation(quick, 0, 3),
            quick,
            "never later than its backoff"
        );
    }

    #[test]
    fn a_pass_resets_to_base() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            b.fail(&mut rng);
        }
        b.reset();
        assert_eq!(b.nominal(), Duration::from_millis(100));
    }
}
