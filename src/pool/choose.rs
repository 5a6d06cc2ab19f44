//! What a pick reads of each backend ([`PickSlot`]), the rules that say which backends may take
//! a request ([`Rules`]), and the choice itself ([`Chooser`]): the one code that both the pool
//! actor and its shards (`super::shard`) pick with, each over its own copy of the slots and with
//! its own algorithm state.
//!
//! What a pick may choose: a backend whose actor runs and whose probes pass; not one whose
//! breaker is open, unless the ejection cap keeps it in ([`crate::policy::ejection`]); one on
//! trial (its breaker half-open, or out by the probes but passing again) only for its
//! `half_open_requests` trial requests, which go to it ahead of the algorithm. `adaptive` and
//! `p2c_ewma` see dynamic weights ([`crate::policy::weight`]), effective latencies, which
//! backends are ramping (a ramping one never wins a duel by looking cheaper: see
//! [`crate::policy::balance::p2c`]) and which may be measured again ([`Explore`]); the other
//! algorithms see static weights scaled by slow start.

use super::actor::NoBackend;
use super::backend::{BackendMsg, BackendView, Recent};
use super::change::AdminState;
use super::lease::{BackendShared, Lease};
use crate::config::{Algorithm, Upstream};
use crate::policy::balance::{self, BackendId, Balancer, Candidate, Explore};
use crate::policy::breaker::CircuitState;
use crate::policy::ejection;
use crate::policy::slow_start;
use crate::policy::weight::{dynamic_weight, effective_latency, WeightInputs};
use ractor::ActorRef;
use rand::rngs::SmallRng;
use std::sync::Arc;
use tokio::time::Instant;

/// One backend as a pick sees it.
#[derive(Debug, Clone)]
pub struct PickSlot {
    pub(crate) shared: Arc<BackendShared>,
    pub(crate) static_weight: u32,
    /// Its actor; none while the pool restarts it.
    pub(crate) actor: Option<ActorRef<BackendMsg>>,
    /// The latest view its actor reported.
    pub(crate) view: BackendView,
    /// When its breaker last opened: the first to open are the ones ejected under the cap.
    pub(crate) opened_at: Option<Instant>,
    pub(crate) admin: AdminState,
    /// When it was removed: it takes nothing new and goes once nothing is in flight.
    pub(crate) removing: Option<Instant>,
}

impl AsRef<PickSlot> for PickSlot {
    fn as_ref(&self) -> &PickSlot {
        self
    }
}

impl PickSlot {
    /// Whether it is meant to take traffic: `ready` and not being removed.
    pub(crate) fn active(&self) -> bool {
        self.admin == AdminState::Ready && self.removing.is_none()
    }
}

/// The rules of an upstream over its slots, in any form that holds a [`PickSlot`].
pub(crate) struct Rules<'a, S> {
    upstream: &'a Upstream,
    slots: &'a [S],
}

impl<'a, S: AsRef<PickSlot>> Rules<'a, S> {
    /// `slots` under `upstream`'s settings.
    pub(crate) fn new(upstream: &'a Upstream, slots: &'a [S]) -> Self {
        Rules { upstream, slots }
    }

    fn slot(&self, i: usize) -> &PickSlot {
        self.slots[i].as_ref()
    }

    /// Indices of the backends the breaker keeps out now: open, and within the ejection cap.
    /// One the probes keep out is out regardless, and takes no place under the cap.
    pub(crate) fn ejected(&self, now: Instant) -> Vec<usize> {
        let open =
            |s: &PickSlot| s.view.healthy && matches!(s.view.circuit, CircuitState::Open { .. });
        if !self.slots.iter().any(|s| open(s.as_ref())) {
            return Vec::new();
        }
        let active = self.slots.iter().filter(|s| s.as_ref().active()).count();
        let cap = ejection::breaker_cap(active, self.upstream.circuit_breaker.max_ejection_percent);
        let opened = self
            .slots
            .iter()
            .map(AsRef::as_ref)
            .enumerate()
            .filter(|&(_, s)| s.active() && open(s))
            .map(|(i, s)| (s.opened_at.unwrap_or(now), i))
            .collect();
        ejection::ejected(opened, cap)
    }

    /// Whether slot `i` is in rotation: its actor runs, and either its probes pass and its
    /// breaker has not ejected it, or it is rising (out by the probes, the last one passed) and
    /// its breaker is not open. (One on trial is, for its trial requests: see
    /// [`Self::admits`].)
    pub(crate) fn in_rotation(&self, i: usize, ejected: &[usize]) -> bool {
        let s = self.slot(i);
        let open = matches!(s.view.circuit, CircuitState::Open { .. });
        s.active()
            && s.actor.is_some()
            && if s.view.healthy {
                !(open && ejected.contains(&i))
            } else {
                s.view.rising && !open
            }
    }

    /// Whether slot `i` may take one more request now: in rotation, and, if on trial, with
    /// trial requests left.
    fn admits(&self, i: usize, ejected: &[usize]) -> bool {
        let s = self.slot(i);
        self.in_rotation(i, ejected)
            && (!s.view.on_trial()
                || s.shared.trials() < self.upstream.circuit_breaker.half_open_requests)
    }

    /// Whether the p2c algorithms may send slot `i` a request to measure it again at `now`.
    fn explore(&self, i: usize, now: Instant) -> Explore {
        let s = self.slot(i);
        if s.shared.inflight() > 0 {
            return Explore::No;
        }
        match s.view.recent {
            Recent::Failed => Explore::No,
            Recent::Unmeasured | Recent::Faster => Explore::Now,
            Recent::Answered => Explore::Idle(s.shared.unanswered_for(now).as_secs_f64()),
        }
    }

    /// Slot `i`'s latency as the weights see it at `now`: its estimate, or how long it has
    /// held requests unanswered when that is longer.
    pub(crate) fn effective_latency(&self, i: usize, now: Instant) -> f64 {
        let s = self.slot(i);
        effective_latency(
            s.view.latency_at(now),
            s.shared.silent_for(now).as_secs_f64(),
        )
    }

    /// Slot `i`'s slow-start factor at `now` (1 when not ramping).
    pub(crate) fn ramp(&self, i: usize, now: Instant) -> f64 {
        slow_start::ramp(
            self.slot(i).view.slow_start_since,
            self.upstream.adaptive.slow_start,
            now,
        )
    }

    /// The weight the upstream's algorithm uses for slot `i`, whose effective latency is
    /// `latency` and slow-start factor `ramp`; `best` is the lowest effective latency in rotation.
    pub(crate) fn weight(&self, i: usize, latency: f64, best: f64, ramp: f64) -> f64 {
        let s = self.slot(i);
        let static_weight = f64::from(s.static_weight);
        match self.upstream.algorithm {
            Algorithm::Adaptive | Algorithm::P2cEwma => dynamic_weight(
                &WeightInputs {
                    static_weight,
                    latency,
                    best_latency: best,
                    success_rate: s.view.success_rate,
                    slow_start: ramp,
                },
                self.upstream.adaptive.min_weight_ratio,
            ),
            // Affinity must not move with latency: the ring keeps static weights.
            Algorithm::ConsistentHash => static_weight,
            _ => static_weight * ramp,
        }
    }

    /// The lowest effective latency among the backends in rotation: the weights' reference.
    pub(crate) fn best_latency(&self, ejected: &[usize], now: Instant) -> f64 {
        (0..self.slots.len())
            .filter(|i| self.in_rotation(*i, ejected))
            .map(|i| self.effective_latency(i, now))
            .fold(f64::INFINITY, f64::min)
    }
}

/// An upstream's algorithm with its state, its random source, and the buffers every pick
/// reuses.
pub(crate) struct Chooser {
    algorithm: Algorithm,
    balancer: Box<dyn Balancer>,
    rng: SmallRng,
    candidates: Vec<Candidate>,
    candidate_slots: Vec<usize>,
}

impl Chooser {
    /// `algorithm`'s balancer, fresh, drawing from `rng`.
    pub(crate) fn new(algorithm: Algorithm, rng: SmallRng) -> Chooser {
        Chooser {
            algorithm,
            balancer: balance::for_algorithm(algorithm),
            rng,
            candidates: Vec::new(),
            candidate_slots: Vec::new(),
        }
    }

    /// The random source, which the pool's probe jitter draws from too.
    pub(crate) fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// Follows a reload: a new algorithm starts with fresh state; the same one keeps its own.
    pub(crate) fn retune(&mut self, algorithm: Algorithm) {
        if algorithm != self.algorithm {
            self.algorithm = algorithm;
            self.balancer = balance::for_algorithm(algorithm);
        }
    }

    /// The slot that takes one try of a request with affinity `key`, not among the backends in
    /// `exclude`, at `now`. A half-open backend's trial is taken here, from the count every
    /// picker shares.
    pub(crate) fn choose<S: AsRef<PickSlot>>(
        &mut self,
        rules: &Rules<'_, S>,
        key: u64,
        exclude: &[BackendId],
        now: Instant,
    ) -> Result<usize, NoBackend> {
        let ejected = rules.ejected(now);
        let mut candidates = std::mem::take(&mut self.candidates);
        let mut slots = std::mem::take(&mut self.candidate_slots);
        candidates.clear();
        slots.clear();
        // One pass for what each candidate costs; weights need the best of them, so a second.
        let mut best = f64::INFINITY;
        // Only the two duelling algorithms weigh latency: the others are spared its decay (an
        // `exp` per candidate per pick).
        let latencies = matches!(
            rules.upstream.algorithm,
            Algorithm::Adaptive | Algorithm::P2cEwma
        );
        let cap = rules.upstream.circuit_breaker.max_inflight;
        let mut full = false;
        for i in 0..rules.slots.len() {
            let s = rules.slot(i);
            if !rules.admits(i, &ejected) || exclude.contains(&s.shared.id) {
                continue;
            }
            if cap > 0 && s.shared.inflight() >= cap {
                full = true;
                continue;
            }
            let latency = if latencies {
                rules.effective_latency(i, now)
            } else {
                0.0
            };
            best = best.min(latency);
            candidates.push(Candidate {
                id: s.shared.id,
                weight: 0.0,
                inflight: s.shared.inflight(),
                latency,
                ramping: false,
                explore: if latencies {
                    rules.explore(i, now)
                } else {
                    Explore::No
                },
            });
            slots.push(i);
        }
        for (c, &i) in candidates.iter_mut().zip(&slots) {
            let ramp = rules.ramp(i, now);
            c.weight = rules.weight(i, c.latency, best, ramp);
            c.ramping = ramp < 1.0;
        }
        // A backend on trial gets its few trial requests first: judged by the estimates that
        // tripped its breaker (a failure costs a penalty latency), the balancer would starve
        // the trials and leave it out of traffic long after it recovered. Another picker may
        // have taken the last trial since the count was read: then it is left out.
        let trials = rules.upstream.circuit_breaker.half_open_requests;
        let mut trial = None;
        let mut c = 0;
        while c < slots.len() {
            let s = rules.slot(slots[c]);
            if !s.view.on_trial() {
                c += 1;
            } else if trial.is_none() && s.shared.take_trial(trials) {
                trial = Some(slots[c]);
                c += 1;
            } else {
                slots.remove(c);
                candidates.remove(c);
            }
        }
        let chosen = trial.or_else(|| {
            self.balancer
                .pick(&candidates, key, &mut self.rng)
                .and_then(|c| slots.get(c).copied())
        });
        self.candidates = candidates;
        self.candidate_slots = slots;
        chosen.ok_or(if full {
            NoBackend::AtCapacity
        } else {
            NoBackend::NoneAvailable
        })
    }
}

/// A lease on `slot` taken at `now`; none while its actor is being restarted.
pub(crate) fn lease(slot: &PickSlot, now: Instant) -> Result<Lease, NoBackend> {
    let actor = slot.actor.clone().ok_or(NoBackend::NoneAvailable)?;
    Ok(Lease::new(slot.shared.clone(), actor, now))
}
