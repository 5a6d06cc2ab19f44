//! BackendActor: one per backend, spawned linked to its pool. It folds every request outcome
//! into its policies (for now the peak EWMA of latency and outcome counts) and tells the pool
//! when its view changed enough to matter for picks.

use super::actor::PoolMsg;
use crate::policy::balance::BackendId;
use crate::policy::ewma::PeakEwma;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::time::Duration;
use tokio::time::Instant;

/// How one try of a request ended, as the frontend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Response headers arrived with a status that is not a failure.
    Success,
    /// The TCP connect failed or timed out.
    Connect,
    /// The connection broke after the request was sent.
    Reset,
    /// No response headers within the response timeout.
    Timeout,
    /// A 5xx status that counts as a failure.
    Status(u16),
}

impl OutcomeKind {
    /// Whether this outcome counts against the backend.
    pub fn is_failure(self) -> bool {
        !matches!(self, OutcomeKind::Success)
    }
}

/// One try's outcome and its time to response headers (or to the failure).
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// How it ended.
    pub kind: OutcomeKind,
    /// Time from sending to response headers, or to the failure.
    pub latency: Duration,
}

/// Messages of the backend actor.
#[derive(Debug)]
pub enum BackendMsg {
    /// A request's outcome, cast from the frontend.
    Outcome(Outcome),
    /// The actor's figures.
    Stats(RpcReplyPort<BackendStats>),
}

/// A backend actor's own figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendStats {
    /// Peak EWMA of latency, seconds.
    pub latency: f64,
    /// Outcomes seen by this incarnation of the actor.
    pub successes: u64,
    /// Failed outcomes seen by this incarnation of the actor.
    pub failures: u64,
}

/// The actor; its state lives in [`BackendState`].
#[derive(Debug, Default)]
pub struct BackendActor;

/// What a backend actor starts from.
#[derive(Debug)]
pub struct BackendArgs {
    pub(crate) id: BackendId,
    pub(crate) pool: ActorRef<PoolMsg>,
    /// Where the latency estimate starts: the pool's mean, so a new backend is not flooded.
    pub(crate) initial_latency: Duration,
    pub(crate) ewma_decay: Duration,
    /// The latency a failure counts as: a failure must never make a backend look fast.
    pub(crate) failure_penalty: Duration,
}

/// The state a backend actor drives.
#[derive(Debug)]
pub struct BackendState {
    id: BackendId,
    pool: ActorRef<PoolMsg>,
    ewma: PeakEwma,
    failure_penalty: Duration,
    reported_latency: f64,
    successes: u64,
    failures: u64,
}

/// The pool hears of a latency change only when it moved by more than this share: picks need a
/// fresh estimate, not one message per request.
const REPORT_THRESHOLD: f64 = 0.02;

impl Actor for BackendActor {
    type Msg = BackendMsg;
    type State = BackendState;
    type Arguments = BackendArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BackendArgs,
    ) -> Result<BackendState, ActorProcessingErr> {
        let ewma = PeakEwma::new(args.initial_latency, args.ewma_decay, Instant::now());
        Ok(BackendState {
            id: args.id,
            pool: args.pool,
            reported_latency: ewma.get(),
            ewma,
            failure_penalty: args.failure_penalty,
            successes: 0,
            failures: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: BackendMsg,
        state: &mut BackendState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BackendMsg::Outcome(o) => state.fold(o, Instant::now()),
            BackendMsg::Stats(reply) => {
                let _ = reply.send(BackendStats {
                    latency: state.ewma.get(),
                    successes: state.successes,
                    failures: state.failures,
                });
            }
        }
        Ok(())
    }
}

impl BackendState {
    fn fold(&mut self, o: Outcome, now: Instant) {
        let sample = if o.kind.is_failure() {
            self.failures += 1;
            o.latency.max(self.failure_penalty)
        } else {
            self.successes += 1;
            o.latency
        };
        self.ewma.observe(sample, now);
        let latency = self.ewma.get();
        let moved = (latency - self.reported_latency).abs() / self.reported_latency.max(1e-9);
        if moved > REPORT_THRESHOLD {
            self.reported_latency = latency;
            let _ = self.pool.cast(PoolMsg::Latency {
                id: self.id,
                seconds: latency,
            });
        }
    }
}
