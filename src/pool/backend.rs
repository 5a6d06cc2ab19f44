//! BackendActor: one per backend, spawned linked to its pool. It folds every request outcome
//! (queued by the frontend, a batch per message: [`super::batch`]) and every probe result
//! (forwarded by the pool) into its policies — the circuit breaker, the peak EWMA of latency,
//! the success rate, rise/fall of probes, the slow-start ramp — and tells the pool its
//! [`BackendView`] when that changes. A timer turns an
//! open breaker half-open on time, so recovery never waits for a request to arrive.

use super::actor::PoolMsg;
use super::batch::Outcomes;
use crate::config::Upstream;
use crate::policy::balance::BackendId;
use crate::policy::breaker::{Breaker, CircuitState};
use crate::policy::ewma::{decayed, PeakEwma, Trend};
pub use crate::policy::outcome::{Outcome, OutcomeKind};
use crate::policy::rise_fall::RiseFall;
use crate::policy::slow_start::SlowStart;
use crate::policy::success::SuccessRate;
use crate::telemetry::metrics::BackendMetrics;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Messages of the backend actor.
#[derive(Debug)]
pub enum BackendMsg {
    /// Request outcomes are queued: fold them.
    Outcomes,
    /// An active probe's result, forwarded by the pool with the pool's mean latency (where this
    /// backend's estimate restarts if the result brings it back).
    Probe { pass: bool, pool_mean: Duration },
    /// The breaker's open period may be over.
    Tick,
    /// A reload changed the upstream's settings: take them, keeping every estimate and state.
    Retune(Arc<Upstream>),
    /// The operator put the backend back to `ready`: start over from the pool's mean latency
    /// and ramp up, as after a return to rotation.
    Rejoin { pool_mean: Duration },
}

/// What a backend's last outcome says about measuring it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recent {
    /// Nothing yet: its estimate is a presumption (the pool's mean), which must not cost it
    /// its first requests, so it is asked at once.
    #[default]
    Unmeasured,
    /// It answered.
    Answered,
    /// It answered far faster than its estimate: one more such answer confirms it became fast
    /// again ([`crate::policy::ewma`]'s trough), so it is worth asking again at once.
    Faster,
    /// It failed: its breaker's trials and the probes, not exploring picks, bring it back.
    Failed,
}

/// What the pool knows of a backend: everything a pick and /status need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendView {
    /// In rotation by the active probes.
    pub healthy: bool,
    /// Out by the probes, but the last one passed: it takes trial requests, and each that
    /// succeeds counts as a passing probe toward its return.
    pub rising: bool,
    /// The breaker's state.
    pub circuit: CircuitState,
    /// Consecutive trips without a clean close.
    pub trips: u32,
    /// The last open period of the breaker.
    pub open_period: Duration,
    /// Peak EWMA of latency, seconds, as of `latency_stamp`; read it through
    /// [`BackendView::latency_at`], which decays it toward zero since then.
    pub latency: f64,
    /// When `latency` was last sampled.
    pub latency_stamp: Instant,
    /// The EWMA's time constant, seconds.
    pub latency_decay: f64,
    /// Decaying success ratio.
    pub success_rate: f64,
    /// When the slow-start ramp in progress began.
    pub slow_start_since: Option<Instant>,
    /// What its last outcome said.
    pub recent: Recent,
}

impl BackendView {
    /// A backend nothing is known of yet: closed, presumed at `latency`.
    pub(crate) fn fresh(healthy: bool, latency: Duration, decay: Duration, now: Instant) -> Self {
        BackendView {
            healthy,
            rising: false,
            circuit: CircuitState::Closed,
            trips: 0,
            open_period: Duration::ZERO,
            latency: latency.as_secs_f64(),
            latency_stamp: now,
            latency_decay: decay.as_secs_f64(),
            success_rate: 1.0,
            slow_start_since: None,
            recent: Recent::Unmeasured,
        }
    }

    /// Whether it takes only trial requests: its breaker is half-open, or the probes found it
    /// back once and its answers must confirm it.
    pub fn on_trial(&self) -> bool {
        self.circuit == CircuitState::HalfOpen || self.rising
    }

    /// The latency estimate read at `now`.
    pub fn latency_at(&self, now: Instant) -> f64 {
        decayed(
            self.latency,
            now.saturating_duration_since(self.latency_stamp),
            self.latency_decay,
        )
    }
}

/// The actor; its state lives in `BackendState`.
#[derive(Debug, Default)]
pub struct BackendActor;

/// What a backend actor starts from.
#[derive(Debug)]
pub struct BackendArgs {
    pub(crate) id: BackendId,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) authority: Arc<str>,
    pub(crate) pool: ActorRef<PoolMsg>,
    pub(crate) metrics: Arc<BackendMetrics>,
    /// The backend's queue of request outcomes.
    pub(crate) outcomes: Arc<Outcomes>,
    /// Where the latency estimate starts: the pool's mean, so a new backend is not flooded.
    pub(crate) initial_latency: Duration,
    /// Whether it starts healthy: a restarted actor keeps what the probes had found.
    pub(crate) healthy: bool,
    /// Whether it starts in slow start (a backend added to a running pool).
    pub(crate) ramp: bool,
}

/// The state a backend actor drives.
#[derive(Debug)]
pub struct BackendState {
    id: BackendId,
    upstream: Arc<Upstream>,
    authority: Arc<str>,
    pool: ActorRef<PoolMsg>,
    metrics: Arc<BackendMetrics>,
    outcomes: Arc<Outcomes>,
    ewma: PeakEwma,
    success: SuccessRate,
    breaker: Breaker,
    probes: RiseFall,
    slow_start: SlowStart,
    pool_mean: Duration,
    recent: Recent,
    reported: BackendView,
}

/// The pool hears of a moving estimate only when it moved by more than this share: picks need
/// fresh figures, not one message per request.
const REPORT_THRESHOLD: f64 = 0.02;

impl Actor for BackendActor {
    type Msg = BackendMsg;
    type State = BackendState;
    type Arguments = BackendArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BackendArgs,
    ) -> Result<BackendState, ActorProcessingErr> {
        // Outcomes queued while a previous life of this actor was failing lost their message.
        myself.cast(BackendMsg::Outcomes)?;
        let now = Instant::now();
        let up = &args.upstream;
        let mut probes = RiseFall::new(up.health.healthy_threshold, up.health.unhealthy_threshold);
        if !args.healthy {
            probes.force(false);
        }
        let mut slow_start = SlowStart::new(up.adaptive.slow_start);
        if args.ramp {
            slow_start.begin(now);
        }
        let mut state = BackendState {
            ewma: PeakEwma::new(args.initial_latency, up.adaptive.ewma_decay, now),
            success: SuccessRate::new(up.adaptive.ewma_decay, now),
            breaker: Breaker::new(&up.circuit_breaker, now),
            slow_start,
            probes,
            pool_mean: args.initial_latency,
            recent: Recent::Unmeasured,
            id: args.id,
            authority: args.authority,
            pool: args.pool,
            metrics: args.metrics,
            outcomes: args.outcomes,
            reported: BackendView::fresh(
                args.healthy,
                args.initial_latency,
                up.adaptive.ewma_decay,
                now,
            ),
            upstream: args.upstream,
        };
        state.reported = state.view();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: BackendMsg,
        state: &mut BackendState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let was_in_rotation = state.in_rotation();
        let circuit_change = match msg {
            BackendMsg::Outcomes => {
                let queue = state.outcomes.clone();
                queue.drain(|o| {
                    if let Some(circuit) = state.fold_outcome(o, now) {
                        state.circuit_changed(&myself, circuit, now);
                    }
                });
                None
            }
            BackendMsg::Probe { pass, pool_mean } => {
                state.pool_mean = pool_mean;
                state.fold_probe(pass, now)
            }
            BackendMsg::Tick => state.breaker.poll(now),
            BackendMsg::Retune(upstream) => {
                state.retune(upstream, now);
                None
            }
            BackendMsg::Rejoin { pool_mean } => {
                state.pool_mean = pool_mean;
                state.rejoin(now);
                None
            }
        };
        if let Some(circuit) = circuit_change {
            state.circuit_changed(&myself, circuit, now);
        }
        if !was_in_rotation && state.in_rotation() {
            state.rejoin(now);
        }
        state.report(now);
        Ok(())
    }
}

impl BackendState {
    /// In rotation as far as this backend knows: probes pass and the breaker is closed. (The
    /// pool may keep an open one in rotation under the ejection cap.)
    fn in_rotation(&self) -> bool {
        self.probes.healthy() && self.breaker.state() == CircuitState::Closed
    }

    fn fold_outcome(&mut self, o: Outcome, now: Instant) -> Option<CircuitState> {
        let failed = o.kind.is_failure();
        if failed {
            self.ewma
                .observe_failure(o.latency, self.upstream.timeouts.response, now);
        } else {
            self.ewma.observe(o.latency, now);
        }
        self.success.observe(!failed, now);
        self.recent = if failed {
            Recent::Failed
        } else if self.ewma.trend() == Trend::FarBelow {
            Recent::Faster
        } else {
            Recent::Answered
        };
        // A trial request of a backend the probes are bringing back is a probe of the real
        // thing: its success counts toward the rise, its failure starts the rise over.
        if self.probes.rising() && self.probes.record(!failed) == Some(true) {
            tracing::info!(upstream = %self.upstream.name, backend = %self.authority, "probes and trial requests passed: back in rotation");
        }
        if o.kind == OutcomeKind::Connect {
            self.breaker.record_unreachable(now)
        } else {
            self.breaker.record(failed, now)
        }
    }

    fn fold_probe(&mut self, pass: bool, now: Instant) -> Option<CircuitState> {
        match self.probes.record(pass) {
            Some(true) => {
                tracing::info!(upstream = %self.upstream.name, backend = %self.authority, "active probes passed: back in rotation");
                // Probes that bring a backend back need not wait out the breaker's open period.
                self.breaker.probes_recovered()
            }
            Some(false) => {
                tracing::info!(upstream = %self.upstream.name, backend = %self.authority, "active probes failed: out of rotation");
                // Out is out, whoever noticed: the breaker keeps the count of its outages.
                self.breaker.probes_failed(now)
            }
            // The first pass of a backend out: it takes trial requests from now, which its
            // breaker counts as its half-open trials.
            None if pass && self.probes.rising() => self.breaker.probes_recovered(),
            None => None,
        }
    }

    /// Takes a reload's settings for this upstream; estimates, breaker state and probe streaks
    /// carry over.
    fn retune(&mut self, upstream: Arc<Upstream>, now: Instant) {
        self.breaker.retune(&upstream.circuit_breaker, now);
        self.probes.retune(
            upstream.health.healthy_threshold,
            upstream.health.unhealthy_threshold,
        );
        self.ewma.retune(upstream.adaptive.ewma_decay);
        self.success.retune(upstream.adaptive.ewma_decay);
        self.slow_start.retune(upstream.adaptive.slow_start);
        self.upstream = upstream;
    }

    /// Back in rotation: estimates start over from the pool's mean, and the weight ramps up.
    fn rejoin(&mut self, now: Instant) {
        self.ewma = PeakEwma::new(self.pool_mean, self.upstream.adaptive.ewma_decay, now);
        self.recent = Recent::Unmeasured;
        self.success.reset(now);
        self.slow_start.begin(now);
    }

    /// The breaker moved to `circuit`: counted, logged, and an open one timed.
    fn circuit_changed(&self, myself: &ActorRef<BackendMsg>, circuit: CircuitState, now: Instant) {
        self.metrics.transition(circuit);
        self.log_transition(circuit);
        if let CircuitState::Open { until } = circuit {
            myself.send_after(until.saturating_duration_since(now), || BackendMsg::Tick);
        }
    }

    fn log_transition(&self, circuit: CircuitState) {
        match circuit {
            CircuitState::Open { .. } => tracing::info!(
                upstream = %self.upstream.name,
                backend = %self.authority,
                trips = self.breaker.trips(),
                open_for = %humantime::format_duration(self.breaker.last_open_period()),
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                upstream = %self.upstream.name,
                backend = %self.authority,
                state = circuit.name(),
                "circuit breaker {}",
                if circuit == CircuitState::Closed { "closed" } else { "half-open" }
            ),
        }
    }

    fn view(&self) -> BackendView {
        BackendView {
            healthy: self.probes.healthy(),
            rising: self.probes.rising(),
            circuit: self.breaker.state(),
            trips: self.breaker.trips(),
            open_period: self.breaker.last_open_period(),
            latency: self.ewma.get(),
            latency_stamp: self.ewma.stamp(),
            latency_decay: self.upstream.adaptive.ewma_decay.as_secs_f64(),
            success_rate: self.success.get(),
            slow_start_since: self.slow_start.since(),
            recent: self.recent,
        }
    }

    /// Tells the pool the view when a state changed or an estimate moved enough from what the
    /// pool sees (the pool reads the last reported latency decayed to `now`: a steady backend is
    /// re-reported as that drifts away from its real estimate).
    fn report(&mut self, now: Instant) {
        let view = self.view();
        let r = &self.reported;
        let moved = |a: f64, b: f64| (a - b).abs() > REPORT_THRESHOLD * b.abs().max(1e-6);
        let changed = view.healthy != r.healthy
            || view.rising != r.rising
            || view.recent != r.recent
            || view.circuit != r.circuit
            || view.trips != r.trips
            || view.slow_start_since != r.slow_start_since
            || moved(view.latency_at(now), r.latency_at(now))
            || moved(view.success_rate, r.success_rate);
        if changed {
            self.reported = view;
            let _ = self.pool.cast(PoolMsg::View { id: self.id, view });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pool::batch::Nudge;
    use ractor::RpcReplyPort;
    use tokio::sync::mpsc;

    /// Stands in for the pool: forwards every view it is told.
    struct Listener;

    impl Actor for Listener {
        type Msg = PoolMsg;
        type State = mpsc::UnboundedSender<BackendView>;
        type Arguments = mpsc::UnboundedSender<BackendView>;

        async fn pre_start(
            &self,
            _: ActorRef<PoolMsg>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _: ActorRef<PoolMsg>,
            msg: PoolMsg,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                PoolMsg::View { view, .. } => {
                    let _ = tx.send(view);
                }
                PoolMsg::Status(reply) => drop::<RpcReplyPort<_>>(reply),
                _ => {}
            }
            Ok(())
        }
    }

    fn upstream() -> Arc<Upstream> {
        let config = Config::from_toml(
            "[[upstreams]]\nname = \"u\"\n[[upstreams.backends]]\naddress = \"127.0.0.1:1\"\n\
             [upstreams.circuit_breaker]\nconsecutive_failures = 3\nopen_base = \"2s\"\n",
        )
        .unwrap();
        Arc::new(config.upstreams[0].clone())
    }

    /// The next reported circuit state other than `skip`.
    async fn next_circuit(
        rx: &mut mpsc::UnboundedReceiver<BackendView>,
        skip: fn(CircuitState) -> bool,
    ) -> CircuitState {
        loop {
            let view = rx.recv().await.expect("the actor reports");
            if !skip(view.circuit) {
                return view.circuit;
            }
        }
    }

    /// A backend actor over `upstream()`, and what a test drives and watches it through.
    struct Harness {
        backend: ActorRef<BackendMsg>,
        pool: ActorRef<PoolMsg>,
        outcomes: Arc<Outcomes>,
        /// Every view it reports to its pool.
        views: mpsc::UnboundedReceiver<BackendView>,
        metrics: crate::telemetry::metrics::Metrics,
    }

    impl Harness {
        /// A backend actor reporting to a listener; out by its probes when `healthy` is false.
        async fn start(healthy: bool) -> Harness {
            let (tx, views) = mpsc::unbounded_channel();
            let (pool, _) = Actor::spawn(None, Listener, tx).await.unwrap();
            let metrics = crate::telemetry::metrics::Metrics::new();
            let outcomes = Arc::new(Outcomes::default());
            let args = BackendArgs {
                id: 0,
                upstream: upstream(),
                authority: Arc::from("127.0.0.1:1"),
                pool: pool.clone(),
                metrics: metrics.backend("web", "127.0.0.1:1", 1),
                outcomes: outcomes.clone(),
                initial_latency: Duration::from_millis(10),
                healthy,
                ramp: false,
            };
            let (backend, _) = Actor::spawn(None, BackendActor, args).await.unwrap();
            Harness {
                backend,
                pool,
                outcomes,
                views,
                metrics,
            }
        }

        /// Out by its probes, made rising by one passing probe (the pool's mean latency
        /// 1 ms): it takes trial requests.
        async fn rising() -> Harness {
            let mut h = Harness::start(false).await;
            let pool_mean = Duration::from_millis(1);
            h.backend
                .cast(BackendMsg::Probe {
                    pass: true,
                    pool_mean,
                })
                .unwrap();
            let view = h.next_view(|v| v.rising).await;
            assert!(!view.healthy && view.on_trial(), "{view:?}");
            h
        }

        /// One request's outcome, in 300 µs.
        fn push(&self, kind: OutcomeKind) {
            self.push_took(kind, Duration::from_micros(300));
        }

        fn push_took(&self, kind: OutcomeKind, latency: Duration) {
            if self.outcomes.push(Outcome { kind, latency }, true) == Nudge::Now {
                self.backend.cast(BackendMsg::Outcomes).unwrap();
            }
        }

        /// The next reported view that `want` accepts.
        async fn next_view(&mut self, want: impl Fn(&BackendView) -> bool) -> BackendView {
            loop {
                let view = self.views.recv().await.expect("the actor reports");
                if want(&view) {
                    return view;
                }
            }
        }

        fn stop(self) {
            self.backend.stop(None);
            self.pool.stop(None);
        }
    }

    /// Out by its probes, one passing probe makes it rising; one trial request that succeeds
    /// is the second pass of `healthy_threshold = 2`: back in rotation, its ramp begun.
    #[tokio::test(start_paused = true)]
    async fn a_successful_trial_request_completes_the_rise() {
        let mut h = Harness::rising().await;
        h.push(OutcomeKind::Success);
        let view = h.next_view(|v| v.healthy).await;
        assert!(!view.rising && !view.on_trial(), "{view:?}");
        assert!(view.slow_start_since.is_some(), "it ramps up: {view:?}");
        assert_eq!(
            view.latency, 0.001,
            "its estimate restarts at the pool's mean"
        );
        h.stop();
    }

    /// A trial request that fails starts the rise over: out again until a probe passes.
    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_request_starts_the_rise_over() {
        let mut h = Harness::rising().await;
        h.push(OutcomeKind::Connect);
        let view = h.next_view(|v| !v.rising).await;
        assert!(!view.healthy && view.recent == Recent::Failed, "{view:?}");
        h.stop();
    }

    /// Unmeasured until its first answer, which sets its estimate; an answer far below the
    /// estimate is news: the view says so, for the pick to ask again.
    #[tokio::test(start_paused = true)]
    async fn a_far_faster_answer_is_reported_as_such() {
        let mut h = Harness::start(true).await;
        h.push_took(OutcomeKind::Success, Duration::from_millis(5));
        let view = h.next_view(|v| v.recent == Recent::Answered).await;
        assert!(
            (view.latency - 0.005).abs() < 1e-9,
            "the first answer: {view:?}"
        );
        h.push(OutcomeKind::Success);
        let view = h.next_view(|v| v.recent == Recent::Faster).await;
        assert!(
            view.latency > 0.004,
            "one answer is not believed yet: {view:?}"
        );
        h.push(OutcomeKind::Success);
        let view = h.next_view(|v| v.recent == Recent::Answered).await;
        assert!(view.latency < 0.001, "the second confirms it: {view:?}");
        h.stop();
    }

    /// No request arrives after the trip: the actor's own timer turns the breaker half-open.
    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_turns_half_open_on_time_without_traffic() {
        let mut h = Harness::start(true).await;
        for _ in 0..3 {
            h.push_took(OutcomeKind::Connect, Duration::from_millis(1));
        }
        let opened_at = Instant::now();
        let state = next_circuit(&mut h.views, |c| c == CircuitState::Closed).await;
        assert!(matches!(state, CircuitState::Open { .. }), "{state:?}");
        // Paused time jumps to the timer: half-open exactly one open period later.
        let state = next_circuit(&mut h.views, |c| matches!(c, CircuitState::Open { .. })).await;
        assert_eq!(state, CircuitState::HalfOpen);
        assert_eq!(Instant::now() - opened_at, Duration::from_secs(2));
        let text = h.metrics.render();
        for to in ["open", "half_open"] {
            let series = format!(
                "fulcrum_circuit_transitions_total{{upstream=\"web\",backend=\"127.0.0.1:1\",to=\"{to}\"}} 1"
            );
            assert!(text.contains(&series), "{series} in\n{text}");
        }
        h.stop();
    }
}
