//! Two counts over a sliding window, kept in ten buckets so old events fall out a tenth of the
//! window at a time: the breaker's (requests, failures) and the retry budget's (requests,
//! retries).

use std::time::Duration;
use tokio::time::Instant;

/// Buckets in a window.
const BUCKETS: usize = 10;

/// Two counters summed over the last `window`.
#[derive(Debug, Clone)]
pub struct Window {
    epoch: Instant,
    bucket: Duration,
    /// (bucket number, first count, second count)
    buckets: [(u64, u32, u32); BUCKETS],
}

impl Window {
    /// An empty window of length `window`, starting at `now`.
    pub fn new(window: Duration, now: Instant) -> Window {
        Window {
            epoch: now,
            bucket: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    /// The window's length.
    pub fn length(&self) -> Duration {
        self.bucket * BUCKETS as u32
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.bucket.as_nanos()) as u64
    }

    /// Adds `a` and `b` to the two counts at `now`.
    pub fn add(&mut self, a: u32, b: u32, now: Instant) {
        let i = self.index(now);
        let slot = &mut self.buckets[(i % BUCKETS as u64) as usize];
        if slot.0 != i {
            *slot = (i, 0, 0);
        }
        slot.1 = slot.1.saturating_add(a);
        slot.2 = slot.2.saturating_add(b);
    }

    /// The two counts over the window ending at `now`.
    pub fn totals(&self, now: Instant) -> (u32, u32) {
        let i = self.index(now);
        self.buckets
            .iter()
            .filter(|(b, _, _)| *b != u64::MAX && *b + BUCKETS as u64 > i && *b <= i)
            .fold((0, 0), |(a, b), (_, ba, bb)| (a + ba, b + bb))
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.buckets = [(u64::MAX, 0, 0); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_a_tenth_of_the_window_at_a_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Window::new(s(10), t0);
        w.add(1, 0, t0);
        w.add(1, 1, t0 + s(5));
        assert_eq!(w.totals(t0 + s(5)), (2, 1));
        assert_eq!(w.totals(t0 + s(9)), (2, 1));
        assert_eq!(w.totals(t0 + s(10)), (1, 1), "the first bucket left");
        assert_eq!(w.totals(t0 + s(15)), (0, 0));
        w.add(3, 2, t0 + s(30));
        assert_eq!(
            w.totals(t0 + s(30)),
            (3, 2),
            "a reused slot starts from zero"
        );
        w.clear();
        assert_eq!(w.totals(t0 + s(30)), (0, 0));
    }
}
