//! Peak EWMA of latency, as linkerd and tower's `PeakEwma` keep it: a sample above the estimate
//! replaces it (a backend that got slower is believed at once); a sample below it pulls the
//! estimate down with weight `1 - exp(-elapsed / decay)` (a backend that got faster is believed
//! gradually). A failed request is recorded by the caller as a penalty latency, never as fast.
//!
//! Unlike tower's, a peak must be confirmed: it replaces the estimate only when the sample before
//! it was above the estimate too; a lone high sample is folded in like a low one. One request
//! delayed 10× by a pause of the backend or of the machine would otherwise cost a healthy backend
//! its traffic for `decay × ln(10)` (23 s at the default 10 s) — measured: a 24 ms sample against
//! 2.5 ms left one of three backends with 0.5% of the traffic for the rest of a run. A backend
//! that really got slower confirms it with its next answer, milliseconds later; a hung one shows
//! through the age of what it holds, not through samples.
//!
//! Read at a later instant ([`PeakEwma::get_at`], [`decayed`]), the estimate decays toward zero
//! with the same time constant, as tower's does: a backend that was slow once and then got no
//! traffic becomes worth trying again, so its estimate can be refreshed instead of shunning it
//! forever.

use std::time::Duration;
use tokio::time::Instant;

/// A peak-sensitive exponentially weighted moving average of latency.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    estimate: f64,
    stamp: Instant,
    decay: f64,
    /// The last sample was above the estimate of its time: the next one above confirms a peak.
    rising: bool,
}

impl PeakEwma {
    /// Starts at `initial` (seconds) at `now`; `decay` is the time constant.
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        PeakEwma {
            estimate: initial.as_secs_f64(),
            stamp: now,
            decay: decay.as_secs_f64().max(1e-9),
            rising: false,
        }
    }

    /// Takes the time constant of a reload, keeping the estimate.
    pub fn retune(&mut self, decay: Duration) {
        self.decay = decay.as_secs_f64().max(1e-9);
    }

    /// Folds in one sample observed at `now`.
    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.stamp = now;
        let above = sample > self.estimate;
        if above && self.rising {
            self.estimate = sample;
        } else {
            let w = (-elapsed / self.decay).exp();
            self.estimate = self.estimate * w + sample * (1.0 - w);
        }
        self.rising = above;
    }

    /// The estimate in seconds as of the last sample.
    pub fn get(&self) -> f64 {
        self.estimate
    }

    /// When the last sample was folded in.
    pub fn stamp(&self) -> Instant {
        self.stamp
    }

    /// The estimate read at `now`: decayed toward zero since the last sample.
    pub fn get_at(&self, now: Instant) -> f64 {
        decayed(
            self.estimate,
            now.saturating_duration_since(self.stamp),
            self.decay,
        )
    }
}

/// The sample a failed request counts as: what it took, but at least twice the current estimate
/// (so repeated failures grow the estimate exponentially and a backend failing fast never looks
/// fast), and no more than `cap` (the response timeout) unless it really took longer.
pub fn failure_sample(took: Duration, estimate: f64, cap: Duration) -> Duration {
    let doubled = Duration::from_secs_f64((estimate * 2.0).clamp(0.0, cap.as_secs_f64()));
    took.max(doubled)
}

/// An estimate `elapsed` after its last sample, decayed toward zero with time constant `decay`
/// (seconds).
pub fn decayed(estimate: f64, elapsed: Duration, decay: f64) -> f64 {
    estimate * (-elapsed.as_secs_f64() / decay.max(1e-9)).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_confirmed_peak_replaces_the_estimate() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(ms(10), Duration::from_secs(10), t0);
        e.observe(ms(400), t0 + ms(1));
        e.observe(ms(500), t0 + ms(2));
        assert!((e.get() - 0.5).abs() < 1e-9, "{}", e.get());
    }

    #[test]
    fn a_lone_high_sample_is_folded_in_not_believed() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(ms(10), Duration::from_secs(10), t0);
        // 15 ms after the last sample, a 24 ms outlier moves a 10 s average by a hair...
        e.observe(ms(24), t0 + ms(15));
        assert!(e.get() < 0.0101, "{}", e.get());
        // ...and a normal answer after it clears the way: the next outlier is lone again.
        e.observe(ms(10), t0 + ms(30));
        e.observe(ms(240), t0 + ms(45));
        assert!(e.get() < 0.011, "{}", e.get());
        // Two in a row are a backend that got slower.
        e.observe(ms(200), t0 + ms(60));
        assert!((e.get() - 0.2).abs() < 1e-9, "{}", e.get());
    }

    #[test]
    fn a_failure_never_counts_as_fast() {
        let cap = Duration::from_secs(15);
        // Failing in 1 ms while the estimate is 10 ms counts as 20 ms.
        assert_eq!(failure_sample(ms(1), 0.010, cap), ms(20));
        // A slow failure counts as what it took.
        assert_eq!(failure_sample(ms(900), 0.010, cap), ms(900));
        // Doubling stops at the cap; a timeout that overran it counts in full.
        assert_eq!(failure_sample(ms(1), 10.0, cap), cap);
        assert_eq!(
            failure_sample(Duration::from_secs(16), 10.0, cap),
            Duration::from_secs(16)
        );
        // Fed back, repeated failures grow the estimate exponentially from the second on (the
        // first is a lone peak; 1 ms later it has barely moved the estimate).
        let t0 = Instant::now();
        let mut e = PeakEwma::new(ms(10), Duration::from_secs(10), t0);
        for i in 1..=5 {
            e.observe(failure_sample(ms(1), e.get(), cap), t0 + ms(i));
        }
        assert!((e.get() - 0.16).abs() < 1e-4, "{}", e.get());
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero_when_read() {
        let t0 = Instant::now();
        let e = PeakEwma::new(ms(100), Duration::from_secs(10), t0);
        assert_eq!(e.get_at(t0), 0.1);
        let later = e.get_at(t0 + Duration::from_secs(10));
        assert!((later - 0.1 * (-1.0f64).exp()).abs() < 1e-9, "{later}");
        assert_eq!(e.get(), 0.1, "reading does not change the estimate");
    }

    #[test]
    fn lower_samples_decay_with_the_time_constant() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(ms(100), Duration::from_secs(10), t0);
        // One time constant later, a sample of 0 leaves e^-1 of the estimate.
        e.observe(Duration::ZERO, t0 + Duration::from_secs(10));
        assert!(
            (e.get() - 0.1 * (-1.0f64).exp()).abs() < 1e-9,
            "{}",
            e.get()
        );
        // A sample right after barely moves it.
        let before = e.get();
        e.observe(Duration::ZERO, t0 + Duration::from_secs(10) + ms(1));
        assert!(e.get() > before * 0.999);
    }
}
