//! The retry budget of an upstream, as Envoy's `retry_budget` and linkerd's / tower's `Budget`:
//! over a sliding window, retries may add at most `budget_ratio` of the requests, plus a floor of
//! `budget_min_per_sec` retries a second so a quiet upstream can still retry. A sick pool thus
//! cannot multiply its own load: with every backend failing, tries stay within
//! (1 + ratio) × requests + floor × seconds.

use super::window::Window;
use crate::config::Retry;
use std::time::Duration;
use tokio::time::Instant;

/// The window the budget is counted over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Requests and retries of one upstream over the last [`WINDOW`].
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    window: Window,
}

impl RetryBudget {
    /// The budget of `[upstreams.retry]`, empty at `now`.
    pub fn new(cfg: &Retry, now: Instant) -> RetryBudget {
        RetryBudget {
            ratio: cfg.budget_ratio,
            min_per_sec: cfg.budget_min_per_sec,
            window: Window::new(WINDOW, now),
        }
    }

    /// Counts a first try.
    pub fn deposit(&mut self, now: Instant) {
        self.window.add(1, 0, now);
    }

    /// Counts `n` first tries.
    pub fn deposit_many(&mut self, n: u32, now: Instant) {
        self.window.add(n, 0, now);
    }

    /// Takes one retry from the budget if there is room; false when exhausted.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.window.totals(now);
        let floor = f64::from(self.min_per_sec) * self.window.length().as_secs_f64();
        let allowed = self.ratio * f64::from(requests) + floor;
        if f64::from(retries) + 1.0 <= allowed {
            self.window.add(0, 1, now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_sec: u32) -> (RetryBudget, Instant) {
        let now = Instant::now();
        let cfg = Retry {
            budget_ratio: ratio,
            budget_min_per_sec: min_per_sec,
            ..Retry::default()
        };
        (RetryBudget::new(&cfg, now), now)
    }

    #[test]
    fn retries_add_at_most_the_ratio_of_requests() {
        let (mut b, t0) = budget(0.2, 0);
        for _ in 0..100 {
            b.deposit(t0);
        }
        let granted = (0..100).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_allows_retries_on_a_quiet_upstream() {
        let (mut b, t0) = budget(0.2, 1);
        // 1 a second over a 10 s window: 10 retries with no requests at all.
        let granted = (0..50).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn the_budget_refills_as_the_window_slides() {
        let (mut b, t0) = budget(0.5, 0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!((0..10).filter(|_| b.try_withdraw(t0)).count(), 5);
        let later = t0 + WINDOW + Duration::from_secs(1);
        for _ in 0..4 {
            b.deposit(later);
        }
        assert_eq!((0..10).filter(|_| b.try_withdraw(later)).count(), 2);
    }
}
