//! Exponential backoff with jitter for probing a backend out of rotation: `base × 2^n` for the
//! n-th consecutive failed probe, ±20% jitter, capped at `max`. A dead backend is not hammered,
//! and a recovered one is found within `max` (plus jitter's share of it).

use rand::Rng;
use std::time::Duration;

/// The share of jitter either side of the nominal delay.
pub const JITTER: f64 = 0.2;

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
