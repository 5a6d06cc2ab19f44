//! Peak EWMA of latency, after linkerd and tower's `PeakEwma`: a sample below the estimate pulls
//! it down with weight `1 - exp(-elapsed / decay)`; read at a later instant the estimate decays
//! toward zero with the same time constant, so a backend that was slow once and then got no
//! traffic becomes worth trying again.
//!
//! Two rules make it follow a change of regime in either direction within two answers while
//! ignoring a lone odd one, which at sub-millisecond latencies is mostly the machine's noise:
//!
//! - **A confirmed peak**: two successes in a row above the estimate replace it with the lower
//!   of the two. A backend that got slower is believed at its second answer; one answer delayed
//!   by a pause of the backend or of the machine is folded in as at most `TROUGH` times the
//!   estimate, and an outlier that follows an answer just above the estimate lifts it only to
//!   that answer. (Tower believes every higher sample at once: one 24 ms answer among 2.5 ms
//!   ones cost a healthy backend its traffic for 20 s; replacing the estimate with the second
//!   sample of the pair did the same whenever that one was the outlier; folding the lone one in
//!   whole did it too when it came after a quiet spell, since a sample weighs
//!   `1 - exp(-elapsed / decay)`: 40 ms after 100 ms of quiet doubled a 0.4 ms estimate.)
//! - **A confirmed trough**: two successes in a row below half the estimate replace it with the
//!   higher of the two. A backend that became fast again is believed at its second answer
//!   instead of over `decay × ln(slow / fast)` (50 s from 30 ms to 0.3 ms at the default 10 s).
//!
//! A failure is recorded as a penalty ([`PeakEwma::observe_failure`]): what it took, but at
//! least twice the estimate, so repeated failures grow the estimate exponentially and a backend
//! that fails fast never looks fast.

use std::time::Duration;
use tokio::time::Instant;

/// How far below the estimate an answer must be to count toward a trough: under `1 / TROUGH` of
/// it. The same factor as `adaptive`'s decisive duel, so a backend whose estimate a trough
/// lowers is one that would have lost its duels on the old estimate.
pub const TROUGH: f64 = 2.0;

/// Where the last sample stood against the estimate of its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trend {
    /// Neither above nor far below it.
    #[default]
    Level,
    /// Above it: the next answer above confirms a peak.
    Above,
    /// Below `1 / TROUGH` of it: the next answer as low confirms a trough.
    FarBelow,
}

/// A peak-sensitive exponentially weighted moving average of latency.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    estimate: f64,
    stamp: Instant,
    decay: f64,
    /// No sample yet: the estimate is a presumption, which the first answer replaces.
    presumed: bool,
    /// The last sample, seconds, and where it stood.
    last: f64,
    trend: Trend,
}

impl PeakEwma {
    /// Presumes `initial` (seconds) at `now`, until the first answer replaces it; `decay` is
    /// the time constant.
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        PeakEwma {
            estimate: initial.as_secs_f64(),
            stamp: now,
            decay: decay.as_secs_f64().max(1e-9),
            presumed: true,
            last: initial.as_secs_f64(),
            trend: Trend::Level,
        }
    }

    /// Takes the time constant of a reload, keeping the estimate.
    pub fn retune(&mut self, decay: Duration) {
        self.decay = decay.as_secs_f64().max(1e-9);
    }

    /// Folds in the latency of one successful answer observed at `now`. The first replaces the
    /// presumed estimate: a backend's first answer says more of it than any guess, and a
    /// presumption left to decay would keep one backend at its guess while its neighbours'
    /// answers brought theirs down.
    pub fn observe(&mut self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        let before = self.estimate;
        let (current, w) = self.advance(now);
        if std::mem::take(&mut self.presumed) {
            self.estimate = sample;
            self.last = sample;
            self.trend = Trend::Level;
            return;
        }
        let trend = if sample > current {
            Trend::Above
        } else if sample * TROUGH < current {
            Trend::FarBelow
        } else {
            Trend::Level
        };
        // A confirmed pair is spent: the next answer is judged against the estimate it set.
        self.trend = match (self.trend, trend) {
            (Trend::Above, Trend::Above) => {
                self.estimate = self.last.min(sample);
                if sample > self.estimate {
                    Trend::Above
                } else {
                    Trend::Level
                }
            }
            (Trend::FarBelow, Trend::FarBelow) => {
                self.estimate = self.last.max(sample);
                Trend::Level
            }
            (_, Trend::Above) => {
                // Unconfirmed: it may be the backend's or the machine's pause.
                self.estimate = current + sample.min(TROUGH * before) * (1.0 - w);
                trend
            }
            _ => {
                self.estimate = current + sample * (1.0 - w);
                trend
            }
        };
        self.last = sample;
    }

    /// Folds in a failed request that took `took`, observed at `now`, as a penalty sample: at
    /// least twice the estimate, and no more than `cap` (the response timeout) unless it really
    /// took longer. The first failure after a success is folded in; a second in a row replaces
    /// the estimate, so repeated failures double it.
    pub fn observe_failure(&mut self, took: Duration, cap: Duration, now: Instant) {
        let sample = failure_sample(took, self.estimate, cap).as_secs_f64();
        let (current, w) = self.advance(now);
        self.presumed = false;
        self.estimate = if self.trend == Trend::Above && sample > current {
            sample
        } else {
            current + sample * (1.0 - w)
        };
        self.last = sample;
        self.trend = Trend::Above;
    }

    /// The estimate decayed to `now`, with the weight that decay left, and `now` stamped.
    fn advance(&mut self, now: Instant) -> (f64, f64) {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.stamp = now;
        let w = (-elapsed / self.decay).exp();
        (self.estimate * w, w)
    }

    /// The estimate in seconds as of the last sample.
    pub fn get(&self) -> f64 {
        self.estimate
    }

    /// Where the last sample stood: [`Trend::FarBelow`] is a backend that may have become fast
    /// again, whose next answer would confirm it.
    pub fn trend(&self) -> Trend {
        self.trend
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

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A first answer, as the tests below start from: the estimate is then a measured one.
    fn measured(estimate: Duration, t0: Instant) -> PeakEwma {
        let mut e = PeakEwma::new(ms(10), Duration::from_secs(10), t0);
        e.observe(estimate, t0);
        e
    }

    #[test]
    fn the_first_answer_replaces_the_presumed_estimate() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(ms(10), Duration::from_secs(10), t0);
        e.observe(us(300), t0 + ms(1));
        assert!((e.get() - 0.0003).abs() < 1e-12, "{}", e.get());
        assert_eq!(e.trend(), Trend::Level);
        // A first failure is a penalty on the presumption.
        let mut e = PeakEwma::new(ms(10), Duration::from_secs(10), t0);
        e.observe_failure(ms(1), Duration::from_secs(15), t0 + ms(1));
        assert!(e.get() > 0.010, "{}", e.get());
    }

    #[test]
    fn a_confirmed_peak_replaces_the_estimate_with_the_lower_of_the_pair() {
        let t0 = Instant::now();
        let mut e = measured(ms(10), t0);
        e.observe(ms(500), t0 + ms(1));
        e.observe(ms(400), t0 + ms(2));
        assert!((e.get() - 0.4).abs() < 1e-9, "{}", e.get());
    }

    #[test]
    fn a_lone_high_sample_is_folded_in_not_believed() {
        let t0 = Instant::now();
        let mut e = measured(ms(10), t0);
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
    fn a_lone_high_sample_after_a_quiet_spell_weighs_no_more_than_twice_the_estimate() {
        let t0 = Instant::now();
        let mut e = measured(us(400), t0);
        // A second of quiet gives the next sample a tenth of the weight: 40 ms in whole would
        // make the estimate ten times what it was.
        e.observe(ms(40), t0 + Duration::from_secs(1));
        assert!(e.get() < 0.00044, "{}", e.get());
        assert_eq!(e.trend(), Trend::Above);
        // The next answer above confirms a peak at the lower of the pair, as always.
        e.observe(ms(30), t0 + Duration::from_secs(1) + ms(5));
        assert!((e.get() - 0.030).abs() < 1e-9, "{}", e.get());
    }

    #[test]
    fn an_outlier_after_an_answer_just_above_lifts_the_estimate_only_to_that_answer() {
        // Sub-millisecond answers: half of them are above the estimate, so a pause of the
        // machine often lands right after one. The pair is believed at its lower answer.
        let t0 = Instant::now();
        let mut e = measured(us(400), t0);
        e.observe(us(450), t0 + ms(1));
        e.observe(us(4300), t0 + ms(2));
        assert!((e.get() - 0.00045).abs() < 1e-9, "{}", e.get());
    }

    #[test]
    fn a_confirmed_trough_brings_a_backend_that_became_fast_back_at_its_second_answer() {
        let t0 = Instant::now();
        let mut e = measured(ms(30), t0);
        // A second without answers, then a fast one: folded in, and remembered as far below.
        e.observe(us(300), t0 + Duration::from_secs(1));
        assert!(e.get() > 0.02, "one answer is not believed: {}", e.get());
        assert_eq!(e.trend(), Trend::FarBelow);
        e.observe(us(350), t0 + Duration::from_secs(1) + ms(20));
        assert!((e.get() - 0.00035).abs() < 1e-9, "{}", e.get());
        assert_eq!(e.trend(), Trend::Level, "the pair is spent");
        // An answer that is merely lower moves the average, as before.
        e.observe(us(250), t0 + Duration::from_secs(1) + ms(21));
        assert_eq!(e.trend(), Trend::Level);
        assert!(e.get() > 0.00034, "{}", e.get());
    }

    #[test]
    fn a_fast_answer_between_slow_ones_is_no_trough() {
        let t0 = Instant::now();
        let mut e = measured(ms(30), t0);
        e.observe(us(300), t0 + ms(10));
        e.observe(ms(30), t0 + ms(20));
        e.observe(us(300), t0 + ms(30));
        assert!(e.get() > 0.029, "{}", e.get());
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
        // Repeated failures grow the estimate exponentially from the second on (the first is
        // folded in; 1 ms later it has barely moved the estimate).
        let t0 = Instant::now();
        let mut e = measured(ms(10), t0);
        for i in 1..=5 {
            e.observe_failure(ms(1), cap, t0 + ms(i));
        }
        assert!((e.get() - 0.16).abs() < 1e-4, "{}", e.get());
    }

    #[test]
    fn a_failure_after_a_slow_answer_confirms_a_peak_at_the_penalty() {
        let cap = Duration::from_secs(15);
        let t0 = Instant::now();
        let mut e = measured(ms(10), t0);
        e.observe(ms(12), t0 + ms(1));
        e.observe_failure(ms(1), cap, t0 + ms(2));
        assert!((e.get() - 0.02).abs() < 1e-4, "{}", e.get());
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
        let mut e = measured(ms(100), t0);
        // One time constant later, a sample of 0 leaves e^-1 of the estimate.
        e.observe(Duration::ZERO, t0 + Duration::from_secs(10));
        assert!(
            (e.get() - 0.1 * (-1.0f64).exp()).abs() < 1e-9,
            "{}",
            e.get()
        );
        // A sample right after, neither above nor far below, barely moves it.
        let before = e.get();
        e.observe(ms(30), t0 + Duration::from_secs(10) + ms(1));
        assert!(e.get() > before * 0.999 && e.get() < before, "{}", e.get());
    }
}
