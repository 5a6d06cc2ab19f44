//! The circuit breaker of one backend, fed by real request outcomes.
//!
//! - **Closed → open** after `consecutive_failures` failures in a row, after
//!   `consecutive_connect_failures` connections in a row that could not be made (by default the
//!   first: [`Breaker::record_unreachable`]), or when the failures in the sliding `window` reach
//!   `failure_rate` of at least `minimum_requests` requests.
//! - **Open** lasts `open_base × 2^(trips − 1)`, capped at `open_max`, where `trips` counts the
//!   consecutive trips without a clean close. Outcomes of requests that were already in flight
//!   when it opened are ignored.
//! - **Open → half-open** on time ([`Breaker::poll`], which the actor calls from a timer, so an
//!   all-open pool recovers without waiting for a request), or early when the active probes find
//!   the backend passing again ([`Breaker::probes_recovered`]) — unless it *relapsed*: it closed
//!   and tripped again while on probation (below). A backend that died once comes back as soon
//!   as the probes find it; a flapping one waits out each open period.
//! - **Half-open**: `half_open_requests` trial requests; all must pass to close; one failure
//!   reopens with the next, longer period.
//! - **A clean close** is one that lasts: `trips` starts over only when the breaker trips again
//!   after staying closed for as long as it had been out before that close (at least its last
//!   open period), the probation of a backend that was out. A flapping backend, which passes its
//!   trials while up and fails again soon after, *relapses*: it keeps doubling its open period,
//!   waits each one out, and gets ever less traffic (Envoy's outlier detection treats repeat
//!   offenders the same way).
//! - **The probes' fall** ([`Breaker::probes_failed`]) is a trip too: a backend the probes took
//!   out has been out, whether or not its requests reached `consecutive_failures` first (at low
//!   traffic `adaptive` stops sending to a failing backend after two failures).

use super::window::Window;
use crate::config::CircuitBreaker;
use std::time::Duration;
use tokio::time::Instant;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// No requests until `until`.
    Open {
        /// When it turns half-open.
        until: Instant,
    },
    /// Trial requests decide.
    HalfOpen,
}

impl CircuitState {
    /// The metrics encoding: 0 closed, 1 open, 2 half-open.
    pub fn code(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open { .. } => 1,
            CircuitState::HalfOpen => 2,
        }
    }

    /// Its name in logs and /status.
    pub fn name(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open { .. } => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// One backend's circuit breaker. See the module doc.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: CircuitBreaker,
    state: CircuitState,
    consecutive: u32,
    /// Connections in a row that could not be made.
    unreachable: u32,
    window: Window,
    trips: u32,
    trial_passes: u32,
    /// The length of the last open period.
    last_open: Duration,
    /// When it last closed after being open, and how long it had been out before that.
    closed_at: Option<Instant>,
    out_for: Duration,
    /// When it last left closed.
    opened_at: Option<Instant>,
    /// It tripped again while on probation after its last close (see the module doc): passing
    /// probes do not cut its open period short.
    relapsed: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: &CircuitBreaker, now: Instant) -> Breaker {
        Breaker {
            cfg: cfg.clone(),
            state: CircuitState::Closed,
            consecutive: 0,
            unreachable: 0,
            window: Window::new(cfg.window, now),
            trips: 0,
            trial_passes: 0,
            last_open: Duration::ZERO,
            closed_at: None,
            out_for: Duration::ZERO,
            opened_at: None,
            relapsed: false,
        }
    }

    /// Takes the settings of a reload, keeping the state, the trips and the failure streak. The
    /// failure-rate window starts over only if its length changed.
    pub fn retune(&mut self, cfg: &CircuitBreaker, now: Instant) {
        if cfg.window != self.cfg.window {
            self.window = Window::new(cfg.window, now);
        }
        self.cfg = cfg.clone();
    }

    /// The state now (call [`Breaker::poll`] first for an up-to-date answer).
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Consecutive trips without a clean close (one that lasted a full open period).
    pub fn trips(&self) -> u32 {
        self.trips
    }

    /// How long the last open period was (zero if it never opened).
    pub fn last_open_period(&self) -> Duration {
        self.last_open
    }

    /// Trial requests allowed while half-open.
    pub fn half_open_requests(&self) -> u32 {
        self.cfg.half_open_requests
    }

    /// Folds in one request outcome; returns the new state if it changed.
    pub fn record(&mut self, failure: bool, now: Instant) -> Option<CircuitState> {
        self.fold(failure, false, now)
    }

    /// Folds in a request whose connection could not be made: a failure that also counts toward
    /// `consecutive_connect_failures`. Nothing takes connections there, so by default it trips at
    /// once: at low traffic `adaptive` stops sending to a failing backend after its second
    /// failure, so five in a row would never come, and a backend that dies and returns again
    /// and again would never be counted a repeat offender.
    pub fn record_unreachable(&mut self, now: Instant) -> Option<CircuitState> {
        self.fold(true, true, now)
    }

    fn fold(&mut self, failure: bool, unreachable: bool, now: Instant) -> Option<CircuitState> {
        let polled = self.poll(now);
        let changed = match self.state {
            CircuitState::Closed => {
                self.window.add(1, u32::from(failure), now);
                self.consecutive = if failure { self.consecutive + 1 } else { 0 };
                self.unreachable = if unreachable { self.unreachable + 1 } else { 0 };
                let (requests, failures) = self.window.totals(now);
                let by_rate = requests >= self.cfg.minimum_requests
                    && f64::from(failures) >= self.cfg.failure_rate * f64::from(requests);
                if self.consecutive >= self.cfg.consecutive_failures
                    || self.unreachable >= self.cfg.consecutive_connect_failures
                    || by_rate
                {
                    Some(self.trip(now))
                } else {
                    None
                }
            }
            CircuitState::Open { .. } => None,
            CircuitState::HalfOpen if failure => Some(self.trip(now)),
            CircuitState::HalfOpen => {
                self.trial_passes += 1;
                if self.trial_passes >= self.cfg.half_open_requests {
                    self.closed_at = Some(now);
                    self.out_for = self
                        .opened_at
                        .map_or(Duration::ZERO, |o| now.saturating_duration_since(o));
                    self.consecutive = 0;
                    self.unreachable = 0;
                    self.window.clear();
                    self.state = CircuitState::Closed;
                    Some(self.state)
                } else {
                    None
                }
            }
        };
        changed.or(polled)
    }

    /// Moves open → half-open once the open period is over; returns the new state if it changed.
    pub fn poll(&mut self, now: Instant) -> Option<CircuitState> {
        match self.state {
            CircuitState::Open { until } if now >= until => Some(self.half_open()),
            _ => None,
        }
    }

    /// The active probes found the backend passing: an open breaker need not wait out its
    /// period, unless it relapsed.
    pub fn probes_recovered(&mut self) -> Option<CircuitState> {
        match self.state {
            CircuitState::Open { .. } if !self.relapsed => Some(self.half_open()),
            _ => None,
        }
    }

    /// Whether it relapsed: closed, then tripped again before its probation was over.
    pub fn relapsed(&self) -> bool {
        self.relapsed
    }

    /// The active probes took the backend out: a trip, unless it is open already.
    pub fn probes_failed(&mut self, now: Instant) -> Option<CircuitState> {
        match self.state {
            CircuitState::Open { .. } => None,
            _ => Some(self.trip(now)),
        }
    }

    fn half_open(&mut self) -> CircuitState {
        self.trial_passes = 0;
        self.state = CircuitState::HalfOpen;
        self.state
    }

    fn trip(&mut self, now: Instant) -> CircuitState {
        if let Some(closed) = self.closed_at {
            let probation = self.last_open.max(self.out_for);
            let lasted = now.saturating_duration_since(closed) >= probation;
            if lasted {
                self.trips = 0;
            }
            self.relapsed = !lasted;
        }
        if self.state == CircuitState::Closed {
            self.opened_at = Some(now);
        }
        self.closed_at = None;
        self.trips += 1;
        let doublings = (self.trips - 1).min(30);
        let period = self
            .cfg
            .open_base
            .checked_mul(1 << doublings)
            .unwrap_or(self.cfg.open_max)
            .min(self.cfg.open_max);
        self.last_open = period;
        self.consecutive = 0;
        self.unreachable = 0;
        self.state = CircuitState::Open {
            until: now + period,
        };
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented defaults: 5 in a row, 50% of 20 in 10 s, open 1 s doubling to 60 s, 3 trials.
    fn cfg() -> CircuitBreaker {
        CircuitBreaker::default()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn trips_on_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        for i in 0..4 {
            assert_eq!(b.record(true, t0 + ms(i)), None);
        }
        assert_eq!(
            b.record(false, t0 + ms(5)),
            None,
            "a success resets the streak"
        );
        for i in 0..4 {
            assert_eq!(b.record(true, t0 + ms(10 + i)), None);
        }
        let opened = b.record(true, t0 + ms(20));
        assert_eq!(
            opened,
            Some(CircuitState::Open {
                until: t0 + ms(20) + Duration::from_secs(1)
            })
        );
        assert_eq!(b.trips(), 1);
    }

    #[test]
    fn a_retune_keeps_the_streak_and_applies_the_new_threshold() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        for i in 0..3 {
            assert_eq!(b.record(true, t0 + ms(i)), None);
        }
        let tighter = CircuitBreaker {
            consecutive_failures: 4,
            ..cfg()
        };
        b.retune(&tighter, t0 + ms(5));
        // The three failures before the reload count: the fourth trips at the new threshold.
        assert!(matches!(
            b.record(true, t0 + ms(6)),
            Some(CircuitState::Open { .. })
        ));
        let open = b.state();
        b.retune(&cfg(), t0 + ms(7));
        assert_eq!(b.state(), open, "a reload does not close a breaker");
        assert_eq!(b.trips(), 1);
    }

    #[test]
    fn a_connection_that_cannot_be_made_trips_at_once() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        assert_eq!(
            b.record_unreachable(t0),
            Some(CircuitState::Open {
                until: t0 + Duration::from_secs(1)
            })
        );
        assert_eq!(b.record_unreachable(t0 + ms(10)), None, "open already");
        // Half-open on time, and its trial cannot connect either: open for longer.
        assert!(matches!(
            b.record_unreachable(t0 + ms(1000)),
            Some(CircuitState::Open { .. })
        ));
        assert_eq!(b.last_open_period().as_secs(), 2);
        // Set higher, connects are counted in a row like other failures.
        let patient = CircuitBreaker {
            consecutive_connect_failures: 3,
            ..cfg()
        };
        let mut b = Breaker::new(&patient, t0);
        assert_eq!(b.record_unreachable(t0), None);
        assert_eq!(b.record(false, t0), None, "a success ends the streak");
        assert_eq!(b.record_unreachable(t0), None);
        assert_eq!(b.record_unreachable(t0), None);
        assert!(b.record_unreachable(t0).is_some());
    }

    #[test]
    fn trips_on_failure_rate_with_enough_volume() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        // Alternating failure and success: never 5 in a row, but a 50% rate.
        let mut opened = None;
        for i in 0..20u64 {
            let r = b.record(i % 2 == 0, t0 + ms(i * 100));
            if r.is_some() {
                opened = Some(i);
                break;
            }
        }
        assert_eq!(
            opened,
            Some(19),
            "trips on the 20th request, the minimum volume"
        );
    }

    #[test]
    fn a_rate_below_the_minimum_volume_does_not_trip() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        for i in 0..19u64 {
            assert_eq!(b.record(i % 2 == 0, t0 + ms(i * 100)), None);
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        // 19 requests, 10 of them failures (never 5 in a row): one short of the minimum volume.
        for i in 0..19u64 {
            assert_eq!(b.record(i % 2 == 0, t0 + ms(i)), None);
        }
        // Had they stayed in the window, this 20th failure would trip at 11 of 20.
        assert_eq!(b.record(true, t0 + Duration::from_secs(11)), None);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn opens_then_half_opens_on_time_and_closes_after_all_trials_pass() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        for _ in 0..5 {
            b.record(true, t0);
        }
        assert_eq!(b.poll(t0 + ms(999)), None);
        // Outcomes of requests already in flight do not move an open breaker.
        assert_eq!(b.record(false, t0 + ms(500)), None);
        assert_eq!(b.poll(t0 + ms(1000)), Some(CircuitState::HalfOpen));
        assert_eq!(b.record(false, t0 + ms(1001)), None);
        assert_eq!(b.record(false, t0 + ms(1002)), None);
        assert_eq!(b.record(false, t0 + ms(1003)), Some(CircuitState::Closed));
    }

    fn trip_now(b: &mut Breaker, now: Instant) {
        for _ in 0..5 {
            b.record(true, now);
        }
        assert!(matches!(b.state(), CircuitState::Open { .. }));
    }

    fn close_now(b: &mut Breaker, now: Instant) {
        if let CircuitState::Open { until } = b.state() {
            assert_eq!(b.poll(until.max(now)), Some(CircuitState::HalfOpen));
        }
        for _ in 0..3 {
            b.record(false, now);
        }
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn a_flapping_backend_keeps_doubling_its_open_period() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        trip_now(&mut b, t0);
        // Up long enough to pass its trials, down again before a full open period has passed.
        let mut now = t0;
        for expected in [2, 4, 8] {
            now += Duration::from_secs(1);
            close_now(&mut b, now);
            now += ms(500);
            trip_now(&mut b, now);
            assert_eq!(b.last_open_period().as_secs(), expected);
        }
        assert_eq!(b.trips(), 4);
    }

    #[test]
    fn a_close_that_lasts_starts_the_count_over() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        trip_now(&mut b, t0);
        close_now(&mut b, t0 + ms(1000));
        trip_now(&mut b, t0 + ms(1500));
        assert_eq!(b.last_open_period().as_secs(), 2);
        close_now(&mut b, t0 + ms(4000));
        // Out for 2.5 s before that close (from 1.5 s to 4 s), then closed as long: clean.
        trip_now(&mut b, t0 + ms(6500));
        assert_eq!(b.trips(), 1);
        assert_eq!(b.last_open_period().as_secs(), 1);
    }

    #[test]
    fn a_half_open_failure_reopens_for_longer_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        for _ in 0..5 {
            b.record(true, t0);
        }
        let mut periods = vec![b.last_open_period()];
        for _ in 0..8 {
            let CircuitState::Open { until } = b.state() else {
                panic!()
            };
            assert_eq!(b.poll(until), Some(CircuitState::HalfOpen));
            let reopened = b.record(true, until);
            assert!(matches!(reopened, Some(CircuitState::Open { .. })));
            periods.push(b.last_open_period());
        }
        let secs: Vec<u64> = periods.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.trips(), 9);
    }

    #[test]
    fn passing_probes_do_not_cut_a_relapsed_backend_s_open_period() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        trip_now(&mut b, t0);
        // Dead, then found passing: back at once.
        assert_eq!(b.probes_recovered(), Some(CircuitState::HalfOpen));
        close_now(&mut b, t0 + ms(100));
        // Down again half a second after its close, within its 1 s open period: a relapse.
        trip_now(&mut b, t0 + ms(600));
        assert!(b.relapsed());
        assert_eq!(b.probes_recovered(), None, "it waits out its 2 s");
        assert_eq!(b.poll(t0 + ms(2600)), Some(CircuitState::HalfOpen));
        // A close that lasts its open period forgives it.
        close_now(&mut b, t0 + ms(2600));
        trip_now(&mut b, t0 + ms(4700));
        assert!(!b.relapsed());
        assert_eq!(b.probes_recovered(), Some(CircuitState::HalfOpen));
    }

    #[test]
    fn a_backend_long_out_must_stay_up_as_long_to_be_forgiven() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        // Out by its probes for 10 s (its open period is long over when they find it back).
        assert!(b.probes_failed(t0).is_some());
        assert_eq!(b.probes_failed(t0 + ms(10)), None, "open already");
        assert_eq!(b.poll(t0 + ms(1000)), Some(CircuitState::HalfOpen));
        close_now(&mut b, t0 + Duration::from_secs(10));
        // Down again 6 s later: within its 10 s of probation.
        assert!(b.probes_failed(t0 + Duration::from_secs(16)).is_some());
        assert!(b.relapsed());
        assert_eq!(b.probes_recovered(), None);
    }

    #[test]
    fn passing_probes_half_open_an_open_breaker_early() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        for _ in 0..5 {
            b.record(true, t0);
        }
        assert_eq!(b.probes_recovered(), Some(CircuitState::HalfOpen));
        assert_eq!(b.probes_recovered(), None);
    }
}
