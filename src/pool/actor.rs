//! PoolActor: one per upstream. It owns the backends' slots (the shared in-flight counter, the
//! backend's actor, the pool's view of its latency and probe health), answers `Pick` with a
//! [`Lease`] through the upstream's balancing algorithm, restarts a backend actor that dies, and
//! schedules the active probes as tasks that report back. Its handler never awaits I/O.

use super::backend::{BackendActor, BackendArgs, BackendMsg};
use super::lease::{BackendShared, Lease};
use super::probe;
use crate::config::{Algorithm, Health, Upstream};
use crate::policy::balance::{self, BackendId, Balancer, Candidate};
use crate::policy::rise_fall::RiseFall;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Where a latency estimate starts when nothing is known of any backend yet.
const DEFAULT_LATENCY: Duration = Duration::from_millis(10);

/// Why a pick found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoBackend {
    /// Every backend is out of rotation (or excluded for this request).
    #[error("no backend available")]
    NoneAvailable,
}

/// Messages of the pool actor.
#[derive(Debug)]
pub enum PoolMsg {
    /// Choose a backend for one request. `key` is its affinity key (hash of the client IP);
    /// `exclude` lists backends this request already tried.
    Pick {
        key: u64,
        exclude: Vec<BackendId>,
        reply: RpcReplyPort<Result<Lease, NoBackend>>,
    },
    /// A backend actor's latency estimate moved.
    Latency { id: BackendId, seconds: f64 },
    /// An active probe finished.
    ProbeResult { id: BackendId, pass: bool },
    /// The pool's figures, for /status.
    Status(RpcReplyPort<UpstreamStatus>),
    /// The actor now serving backend `id` (operations and supervision tests).
    BackendActor {
        id: BackendId,
        reply: RpcReplyPort<Option<ActorRef<BackendMsg>>>,
    },
}

/// One backend as /status shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendStatus {
    /// `host:port`.
    pub address: String,
    /// The configured weight.
    pub static_weight: u32,
    /// The weight now in use.
    pub weight: f64,
    /// Peak EWMA of latency, seconds.
    pub ewma_latency_seconds: f64,
    /// Requests in flight.
    pub inflight: u32,
    /// In rotation by the active probes.
    pub healthy: bool,
    /// Times the pool restarted this backend's actor.
    pub actor_restarts: u32,
}

/// One upstream as /status shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamStatus {
    /// The upstream's name.
    pub name: String,
    /// Its balancing algorithm.
    pub algorithm: &'static str,
    /// Its backends, in config order.
    pub backends: Vec<BackendStatus>,
}

/// The actor; its state lives in [`PoolState`].
#[derive(Debug, Default)]
pub struct PoolActor;

/// What a pool actor starts from.
#[derive(Debug)]
pub struct PoolArgs {
    /// The upstream's (validated) config.
    pub upstream: Upstream,
    /// Seed of the pool's random source; `None` seeds from the OS (tests pass one).
    pub seed: Option<u64>,
}

/// One backend as the pool holds it.
struct Slot {
    shared: Arc<BackendShared>,
    static_weight: u32,
    actor: Option<ActorRef<BackendMsg>>,
    latency: f64,
    probes: RiseFall,
    restarts: u32,
}

/// The state a pool actor drives.
pub struct PoolState {
    upstream: Upstream,
    slots: Vec<Slot>,
    balancer: Box<dyn Balancer>,
    rng: SmallRng,
    candidates: Vec<Candidate>,
}

impl std::fmt::Debug for PoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolState")
            .field("upstream", &self.upstream.name)
            .field("backends", &self.slots.len())
            .finish()
    }
}

impl Actor for PoolActor {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let up = args.upstream;
        let rng = match args.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let mut state = PoolState {
            balancer: balance::for_algorithm(up.algorithm),
            slots: Vec::with_capacity(up.backends.len()),
            candidates: Vec::with_capacity(up.backends.len()),
            rng,
            upstream: up,
        };
        for (i, b) in state.upstream.backends.iter().enumerate() {
            let authority = b
                .authority()
                .map_err(|e| format!("backend {}: {e}", b.address))?;
            state.slots.push(Slot {
                shared: Arc::new(BackendShared {
                    id: i as BackendId,
                    authority: Arc::from(authority),
                    inflight: Default::default(),
                }),
                static_weight: b.weight,
                actor: None,
                latency: DEFAULT_LATENCY.as_secs_f64(),
                probes: RiseFall::new(
                    state.upstream.health.healthy_threshold,
                    state.upstream.health.unhealthy_threshold,
                ),
                restarts: 0,
            });
        }
        for i in 0..state.slots.len() {
            state.spawn_backend(&myself, i).await?;
            // Spread the first probes over a quarter interval rather than all at once.
            let first = state
                .upstream
                .health
                .interval
                .mul_f64(state.rng.random::<f64>() / 4.0);
            state.schedule_probe(&myself, i, first);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Pick {
                key,
                exclude,
                reply,
            } => {
                let _ = reply.send(state.pick(key, &exclude));
            }
            PoolMsg::Latency { id, seconds } => {
                if let Some(slot) = state.slot_mut(id) {
                    slot.latency = seconds;
                }
            }
            PoolMsg::ProbeResult { id, pass } => {
                let interval = state.upstream.health.interval;
                let Some(i) = state.index_of(id) else {
                    return Ok(());
                };
                let slot = &mut state.slots[i];
                if let Some(healthy) = slot.probes.record(pass) {
                    tracing::info!(
                        upstream = %state.upstream.name,
                        backend = %slot.shared.authority,
                        healthy,
                        "active probes {} backend",
                        if healthy { "returned" } else { "took out" }
                    );
                }
                state.schedule_probe(&myself, i, interval);
            }
            PoolMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
            PoolMsg::BackendActor { id, reply } => {
                let _ = reply.send(state.slot_mut(id).and_then(|s| s.actor.clone()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                reason.clone().unwrap_or_else(|| "stopped".to_string()),
            ),
            _ => return Ok(()),
        };
        // The pool stops its children only when it stops itself, so any exit seen here is
        // one nobody asked for: restart, with the backend's slot (and in-flight count) intact.
        if let Some(i) = state.index_of_actor(cell) {
            let slot = &mut state.slots[i];
            slot.actor = None;
            slot.restarts += 1;
            tracing::warn!(
                upstream = %state.upstream.name,
                backend = %slot.shared.authority,
                reason = %why,
                restarts = slot.restarts,
                "backend actor exited; restarting it"
            );
            state.spawn_backend(&myself, i).await?;
        }
        Ok(())
    }
}

impl PoolState {
    fn index_of(&self, id: BackendId) -> Option<usize> {
        self.slots.iter().position(|s| s.shared.id == id)
    }

    fn slot_mut(&mut self, id: BackendId) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.shared.id == id)
    }

    fn index_of_actor(&self, cell: &ActorCell) -> Option<usize> {
        let id = cell.get_id();
        self.slots
            .iter()
            .position(|s| s.actor.as_ref().is_some_and(|a| a.get_id() == id))
    }

    /// The mean latency estimate of the pool: where a new or restarted backend starts.
    fn mean_latency(&self) -> Duration {
        let known: Vec<f64> = self
            .slots
            .iter()
            .filter(|s| s.actor.is_some())
            .map(|s| s.latency)
            .collect();
        if known.is_empty() {
            return DEFAULT_LATENCY;
        }
        Duration::from_secs_f64(known.iter().sum::<f64>() / known.len() as f64)
    }

    async fn spawn_backend(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        i: usize,
    ) -> Result<(), ActorProcessingErr> {
        let initial = self.mean_latency();
        let args = BackendArgs {
            id: self.slots[i].shared.id,
            pool: myself.clone(),
            initial_latency: initial,
            ewma_decay: self.upstream.adaptive.ewma_decay,
            failure_penalty: self.upstream.timeouts.response,
        };
        let (actor, _) = Actor::spawn_linked(None, BackendActor, args, myself.get_cell()).await?;
        let slot = &mut self.slots[i];
        slot.actor = Some(actor);
        slot.latency = initial.as_secs_f64();
        Ok(())
    }

    fn schedule_probe(&self, myself: &ActorRef<PoolMsg>, i: usize, delay: Duration) {
        let slot = &self.slots[i];
        let id = slot.shared.id;
        let authority = slot.shared.authority.clone();
        let health: Health = self.upstream.health.clone();
        let pool = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let pass = probe::probe(&health, &authority).await;
            // Fails only when the pool has stopped, which ends the probe cycle too.
            let _ = pool.cast(PoolMsg::ProbeResult { id, pass });
        });
    }

    fn pick(&mut self, key: u64, exclude: &[BackendId]) -> Result<Lease, NoBackend> {
        self.candidates.clear();
        for s in &self.slots {
            if s.actor.is_some() && s.probes.healthy() && !exclude.contains(&s.shared.id) {
                self.candidates.push(Candidate {
                    id: s.shared.id,
                    weight: f64::from(s.static_weight),
                    inflight: s.shared.inflight.load(Ordering::Relaxed),
                    latency: s.latency,
                });
            }
        }
        let chosen = self
            .balancer
            .pick(&self.candidates, key, &mut self.rng)
            .and_then(|i| self.candidates.get(i))
            .map(|c| c.id)
            .ok_or(NoBackend::NoneAvailable)?;
        let slot = self.slot_mut(chosen).ok_or(NoBackend::NoneAvailable)?;
        let actor = slot.actor.clone().ok_or(NoBackend::NoneAvailable)?;
        Ok(Lease::new(slot.shared.clone(), actor))
    }

    fn status(&self) -> UpstreamStatus {
        UpstreamStatus {
            name: self.upstream.name.clone(),
            algorithm: algorithm_name(self.upstream.algorithm),
            backends: self
                .slots
                .iter()
                .map(|s| BackendStatus {
                    address: s.shared.authority.to_string(),
                    static_weight: s.static_weight,
                    weight: f64::from(s.static_weight),
                    ewma_latency_seconds: s.latency,
                    inflight: s.shared.inflight.load(Ordering::Relaxed),
                    healthy: s.probes.healthy(),
                    actor_restarts: s.restarts,
                })
                .collect(),
        }
    }
}

fn algorithm_name(a: Algorithm) -> &'static str {
    a.name()
}
