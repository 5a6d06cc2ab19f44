//! What a pick hands the frontend: a claim on one backend that counts the request in flight
//! until dropped, and the channel to report the request's outcome to the backend's actor.
//!
//! The shared per-backend counters are atomics so that a request's end costs no message
//! (architecture.md). Besides the in-flight count they keep how long the backend has gone
//! without answering anything while holding requests: the age of its oldest outstanding request,
//! near enough, which is what exposes a hung backend long before any timeout fires.

use super::backend::{BackendMsg, Outcome};
use super::batch::{Nudge, Outcomes};
use super::later;
use crate::policy::balance::BackendId;
use crate::telemetry::metrics::BackendMetrics;
use crate::workers;
use http::HeaderValue;
use ractor::ActorRef;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Per-backend data shared between the pool and the leases it handed out.
#[derive(Debug)]
pub(crate) struct BackendShared {
    pub(crate) id: BackendId,
    pub(crate) authority: Arc<str>,
    /// `authority` as a Host header value, built once rather than on every try.
    host: Option<HeaderValue>,
    pub(crate) metrics: Arc<BackendMetrics>,
    /// Outcomes on their way to the backend's actor; it outlives each life of the actor.
    pub(crate) outcomes: Arc<Outcomes>,
    inflight: AtomicU32,
    picks: AtomicU64,
    /// Trial requests handed out since its breaker turned half-open, by every picker.
    trials: AtomicU32,
    /// Time base of the two stamps below.
    epoch: Instant,
    /// When the in-flight count last rose from zero (ns since `epoch`).
    busy_since: AtomicU64,
    /// When a request to it last got its answer or failed (ns since `epoch`).
    last_answer: AtomicU64,
}

impl BackendShared {
    pub(crate) fn new(
        id: BackendId,
        authority: Arc<str>,
        metrics: Arc<BackendMetrics>,
        epoch: Instant,
    ) -> BackendShared {
        BackendShared {
            id,
            host: HeaderValue::from_str(&authority).ok(),
            authority,
            metrics,
            outcomes: Arc::default(),
            inflight: AtomicU32::new(0),
            picks: AtomicU64::new(0),
            trials: AtomicU32::new(0),
            epoch,
            busy_since: AtomicU64::new(0),
            last_answer: AtomicU64::new(0),
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Requests in flight.
    pub(crate) fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Leases handed out since the start.
    pub(crate) fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// Trial requests handed out since its breaker last turned half-open.
    pub(crate) fn trials(&self) -> u32 {
        self.trials.load(Ordering::Relaxed)
    }

    /// Takes one of `limit` trial requests; false when all are taken.
    pub(crate) fn take_trial(&self, limit: u32) -> bool {
        self.trials
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a trial taken for a try that did not go.
    pub(crate) fn return_trial(&self) {
        let _ = self
            .trials
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Its breaker turned half-open: its trials start over.
    pub(crate) fn reset_trials(&self) {
        self.trials.store(0, Ordering::Relaxed);
    }

    /// How long since a request to it last got its answer or failed (since the pool started,
    /// if none has).
    pub(crate) fn unanswered_for(&self, now: Instant) -> Duration {
        Duration::from_nanos(
            self.stamp(now)
                .saturating_sub(self.last_answer.load(Ordering::Relaxed)),
        )
    }

    /// How long the backend has held requests without answering any: zero when idle or
    /// answering.
    pub(crate) fn silent_for(&self, now: Instant) -> Duration {
        if self.inflight() == 0 {
            return Duration::ZERO;
        }
        let since = self
            .busy_since
            .load(Ordering::Relaxed)
            .max(self.last_answer.load(Ordering::Relaxed));
        Duration::from_nanos(self.stamp(now).saturating_sub(since))
    }
}

/// A request's claim on one backend; the backend counts it in flight until this is dropped.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<BackendShared>,
    actor: ActorRef<BackendMsg>,
}

impl Lease {
    /// A claim taken at `now` (the pick's instant).
    pub(crate) fn new(
        shared: Arc<BackendShared>,
        actor: ActorRef<BackendMsg>,
        now: Instant,
    ) -> Lease {
        if shared.inflight.fetch_add(1, Ordering::Relaxed) == 0 {
            shared
                .busy_since
                .store(shared.stamp(now), Ordering::Relaxed);
        }
        shared.picks.fetch_add(1, Ordering::Relaxed);
        Lease { shared, actor }
    }

    /// The backend's identity in its pool.
    pub fn id(&self) -> BackendId {
        self.shared.id
    }

    /// `host:port` of the backend.
    pub fn authority(&self) -> &Arc<str> {
        &self.shared.authority
    }

    /// `host:port` of the backend as a Host header value; None if it is not a valid one.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.shared.host.as_ref()
    }

    /// The backend's metric handles.
    pub fn metrics(&self) -> &Arc<BackendMetrics> {
        &self.shared.metrics
    }

    /// Requests now in flight to this backend, this one included.
    pub fn inflight(&self) -> u32 {
        self.shared.inflight()
    }

    /// Tells the backend's actor how the request went, as of `now`: queued, with a message only
    /// when none is on its way already. The request path never waits.
    pub fn report(&self, outcome: Outcome, now: Instant) {
        self.shared
            .last_answer
            .store(self.shared.stamp(now), Ordering::Relaxed);
        self.shared.metrics.outcome(outcome.kind, outcome.latency);
        // A failure goes at once; so does an outcome when nothing else is in flight to this
        // backend and the actor runs on this thread, since no other is coming to share the
        // message and waiting would only cost the thread a wake-up of its own. On another
        // worker, the message wakes the main thread: better one wake-up for the outcomes of
        // `COALESCE`, every backend's together, than one for each.
        let urgent =
            outcome.kind.is_failure() || (self.shared.inflight() <= 1 && workers::hosts_actors());
        match self.shared.outcomes.push(outcome, urgent) {
            Nudge::None => {}
            Nudge::Now => ask_to_drain(&self.actor, &self.shared),
            Nudge::Later => {
                // From a timer of ours rather than ractor's `send_after`, which drops the
                // message unseen when the actor has died meanwhile: no report would ask again.
                let (actor, shared) = (self.actor.clone(), self.shared.clone());
                later::after_coalesce(move || ask_to_drain(&actor, &shared));
            }
        }
    }
}

/// Sends the backend's actor for its queued outcomes. If it died since the pick, its successor
/// drains when it starts; for what comes after, the next report must send the message again.
fn ask_to_drain(actor: &ActorRef<BackendMsg>, shared: &BackendShared) {
    if actor.cast(BackendMsg::Outcomes).is_err() {
        shared.outcomes.unnudge();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
