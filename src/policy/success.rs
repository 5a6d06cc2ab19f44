//! A decaying estimate of a backend's success ratio: each outcome pulls the estimate toward 1
//! (success) or 0 (failure) with weight `1 − exp(−elapsed / decay)`, the same time constant as
//! the latency EWMA, so both forget at the same pace. A burst of outcomes at one instant still
//! moves it: each counts at least as a sample one millisecond apart.

use std::time::Duration;
use tokio::time::Instant;

/// The shortest gap an outcome is counted at: without it, many outcomes in the same instant
/// would weigh nothing at all.
const MIN_STEP: Duration = Duration::from_millis(1);

/// A decaying success ratio in [0, 1].
#[derive(Debug, Clone)]
pub struct SuccessRate {
    rate: f64,
    stamp: Instant,
    decay: f64,
}

impl SuccessRate {
    /// Starts at 1 (a backend is presumed good) at `now`.
    pub fn new(decay: Duration, now: Instant) -> SuccessRate {
        SuccessRate {
            rate: 1.0,
            stamp: now,
            decay: decay.as_secs_f64().max(1e-9),
        }
    }

    /// Takes the time constant of a reload, keeping the ratio.
    pub fn retune(&mut self, decay: Duration) {
        self.decay = decay.as_secs_f64().max(1e-9);
    }

    /// Folds in one outcome at `now`.
    pub fn observe(&mut self, success: bool, now: Instant) {
        let elapsed = now.saturating_duration_since(self.stamp).max(MIN_STEP);
        self.stamp = now;
        let w = (-elapsed.as_secs_f64() / self.decay).exp();
        let x = if success { 1.0 } else { 0.0 };
        self.rate = self.rate * w + x * (1.0 - w);
    }

    /// The estimate.
    pub fn get(&self) -> f64 {
        self.rate
    }

    /// Starts over at 1 (a backend that returns to rotation).
    pub fn reset(&mut self, now: Instant) {
        self.rate = 1.0;
        self.stamp = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tends_to_the_true_ratio() {
        let t0 = Instant::now();
        let mut s = SuccessRate::new(Duration::from_secs(10), t0);
        for i in 0..10_000u64 {
            s.observe(i % 2 == 0, t0 + Duration::from_millis(10 * i));
        }
        assert!((s.get() - 0.5).abs() < 0.05, "{}", s.get());
    }

    #[test]
    fn one_failure_after_a_long_calm_counts_by_elapsed_time() {
        let t0 = Instant::now();
        let mut s = SuccessRate::new(Duration::from_secs(10), t0);
        s.observe(false, t0 + Duration::from_secs(10));
        assert!((s.get() - (-1.0f64).exp()).abs() < 1e-9);
    }

    #[test]
    fn a_burst_at_one_instant_still_moves_it() {
        let t0 = Instant::now();
        let mut s = SuccessRate::new(Duration::from_secs(1), t0);
        for _ in 0..100 {
            s.observe(false, t0);
        }
        assert!(s.get() < 0.95, "{}", s.get());
    }
}
