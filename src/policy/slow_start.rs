//! Slow start: after a backend returns to rotation its weight ramps linearly from 10% to 100%
//! over `slow_start`, so a recovering backend (cold caches, JIT, connection pools) is not hit by
//! its full share at once — no thundering herd, no error spike.

use std::time::Duration;
use tokio::time::Instant;

/// Where the ramp starts.
pub const START: f64 = 0.1;

/// A backend's slow-start ramp.
#[derive(Debug, Clone)]
pub struct SlowStart {
    duration: Duration,
    since: Option<Instant>,
}

impl SlowStart {
    /// No ramp in progress (a backend in the pool from the start takes its share at once).
    pub fn new(duration: Duration) -> SlowStart {
        SlowStart {
            duration,
            since: None,
        }
    }

    /// Takes the ramp length of a reload; a ramp in progress keeps its start.
    pub fn retune(&mut self, duration: Duration) {
        self.duration = duration;
    }

    /// The backend returned to rotation at `now`.
    pub fn begin(&mut self, now: Instant) {
        self.since = if self.duration.is_zero() {
            None
        } else {
            Some(now)
        };
    }

    /// When the ramp in progress began.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// The factor on the weight at `now`, in [0.1, 1].
    pub fn factor(&self, now: Instant) -> f64 {
        ramp(self.since, self.duration, now)
    }
}

/// The factor of a ramp begun at `since` (None: no ramp) lasting `duration`, at `now`.
pub fn ramp(since: Option<Instant>, duration: Duration, now: Instant) -> f64 {
    match since {
        None => 1.0,
        Some(_) if duration.is_zero() => 1.0,
        Some(t) => {
            let progress = now.saturating_duration_since(t).as_secs_f64() / duration.as_secs_f64();
            START + (1.0 - START) * progress.min(1.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_from_ten_percent_to_full_over_the_duration() {
        let t0 = Instant::now();
        let mut s = SlowStart::new(Duration::from_secs(10));
        assert_eq!(s.factor(t0), 1.0);
        s.begin(t0);
        assert!((s.factor(t0) - 0.1).abs() < 1e-9);
        assert!((s.factor(t0 + Duration::from_secs(5)) - 0.55).abs() < 1e-9);
        assert_eq!(s.factor(t0 + Duration::from_secs(10)), 1.0);
        assert_eq!(s.factor(t0 + Duration::from_secs(60)), 1.0);
    }

    #[test]
    fn zero_duration_means_no_ramp() {
        let t0 = Instant::now();
        let mut s = SlowStart::new(Duration::ZERO);
        s.begin(t0);
        assert_eq!(s.factor(t0), 1.0);
    }
}
