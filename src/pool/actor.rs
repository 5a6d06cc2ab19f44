//! PoolActor: one per upstream. It owns the backends' slots (the shared counters, the backend's
//! actor, the latest [`BackendView`] it reported), answers `Pick` with a [`Lease`] through the
//! upstream's balancing algorithm, restarts a backend actor that dies, and schedules the active
//! probes as tasks that report back. Its handler never awaits I/O.
//!
//! What a pick may choose, and how: [`super::choose`], whose code the pool's shards
//! (`super::shard`) pick with too.
//!
//! Metrics: the pool publishes each backend's weight, EWMA, success rate, rotation and breaker
//! gauges whenever a backend's view or probe result changes them, and again on every scrape
//! ([`PoolMsg::Publish`]), since weights also drift with time (decay, silence, slow start).
//!
//! Changes while running: a reload ([`PoolMsg::Reconfigure`]) keeps the backends it still lists
//! (same address) with their actors, estimates and breakers, retuned to the new settings; drains
//! the ones it no longer lists (no new requests; dropped when nothing is left in flight, or after
//! the drain timeout); and adds the new ones in slow start. The admin API adds, removes and
//! switches backends ([`AdminState`]) the same way. A pool whose upstream left the config
//! ([`PoolMsg::Retire`]) drains all its backends, then stops.
//!
//! Probes: every `health.interval` for a backend whose last probe passed and is in rotation;
//! after a failed probe, `backoff_base × 2^n` (±20% jitter, capped at `backoff_max`) for the
//! n-th failure in a row — quick to confirm a fall, gentle on a backend that stays down; after a
//! pass of a backend still out, `backoff_base`, to confirm its rise quickly (its trial requests,
//! when there is traffic, confirm it sooner). While the upstream is short-handed (fewer than
//! half its backends in rotation), a backend out is probed every 100 ms at most
//! ([`crate::policy::backoff::out_of_rotation`]).

use super::backend::{BackendActor, BackendArgs, BackendMsg, BackendView};
use super::change::{AdminState, Applied, ChangeError};
use super::choose::{self, Chooser, PickSlot, Rules};
use super::lease::Lease;
use super::picks::{PickAnswer, Picks, PoolStart, Shards};
use super::probe;
use super::shard::{ShardMsg, Table};
use crate::config::{BackendConfig, Upstream};
use crate::policy::backoff::{self, Backoff};
use crate::policy::balance::BackendId;
use crate::policy::breaker::CircuitState;
use crate::policy::budget::RetryBudget;
use crate::telemetry::metrics::{Figures, Metrics, UpstreamMetrics};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

mod changes;

/// Where a latency estimate starts when nothing is known of any backend yet.
const DEFAULT_LATENCY: Duration = Duration::from_millis(10);

/// How often a pool with shards folds their first tries into its retry budget: a tenth of the
/// budget's window, the length of one of its buckets.
const FOLD_PERIOD: Duration = Duration::from_secs(1);

/// How long a backend's new estimate may wait before the pool's shards get it, with the others
/// of that time. The shards' weights then lag the pool's by this much at most; what takes a
/// backend in or out of rotation goes at once.
const SHARE_PERIOD: Duration = Duration::from_millis(10);

/// How often a pool looks whether its removed backends have drained.
const SWEEP_PERIOD: Duration = Duration::from_millis(100);

/// Why a pick found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoBackend {
    /// Every backend is out of rotation (or excluded for this request).
    #[error("no backend available")]
    NoneAvailable,
    /// A retry was refused: the upstream's retry budget is spent.
    #[error("retry budget exhausted")]
    BudgetExhausted,
    /// Every backend that could take it already has `max_inflight` requests.
    #[error("all backends at capacity")]
    AtCapacity,
}

/// Messages of the pool actor.
#[derive(Debug)]
pub enum PoolMsg {
    /// Choose a backend for one try of a request. `key` is its affinity key (hash of the client
    /// IP); `exclude` lists backends this request already tried; `retry` is the reason when this
    /// is a retry, which the retry budget must allow. `now` is the caller's reading of the
    /// clock as it asks: the pick's policies run on it, so that a try reads the clock once, not
    /// once more in the actor (0.9% of fulcrum's user time); they all take an instant a little
    /// older than one they have already seen.
    Pick {
        key: u64,
        exclude: Vec<BackendId>,
        retry: Option<&'static str>,
        now: Instant,
        reply: RpcReplyPort<PickAnswer>,
    },
    /// Answer the picks queued by the pool's [`super::Pool`] handle (the request path's way).
    Picks,
    /// A request could not be retried because its body was too large to keep a copy of.
    BodyNotReplayable,
    /// A backend actor's view changed.
    View { id: BackendId, view: BackendView },
    /// An active probe finished.
    ProbeResult { id: BackendId, pass: bool },
    /// The pool's figures, for /status.
    Status(RpcReplyPort<UpstreamStatus>),
    /// Set the gauges to the figures of now, for a scrape of /metrics.
    Publish(RpcReplyPort<()>),
    /// The actor now serving backend `id` (operations and supervision tests).
    BackendActor {
        id: BackendId,
        reply: RpcReplyPort<Option<ActorRef<BackendMsg>>>,
    },
    /// A reload: the upstream's new settings and backend list.
    Reconfigure {
        upstream: Box<Upstream>,
        reply: RpcReplyPort<Applied>,
    },
    /// Add a backend (admin API), in slow start.
    AddBackend {
        backend: BackendConfig,
        reply: RpcReplyPort<Result<(), ChangeError>>,
    },
    /// Drain a backend out of the pool (admin API).
    RemoveBackend {
        address: String,
        reply: RpcReplyPort<Result<(), ChangeError>>,
    },
    /// Set a backend's [`AdminState`] (admin API).
    SetState {
        address: String,
        state: AdminState,
        reply: RpcReplyPort<Result<(), ChangeError>>,
    },
    /// The upstream left the config: drain every backend, then stop.
    Retire,
    /// Drop the removed backends that have drained (a timer, while any is being removed).
    Sweep,
    /// The slots and settings as they are, for new shards.
    Table(RpcReplyPort<Arc<Table>>),
    /// The pool's shards, started: from now on they get every change of the slots.
    Shards(Shards, RpcReplyPort<()>),
    /// Fold the first tries the shards handed out into the retry budget (a timer, with shards).
    Fold,
    /// Send the shards the backends' new estimates (a timer, after an estimate changed).
    Share,
}

/// One backend as /status shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendStatus {
    /// `host:port`.
    pub address: String,
    /// The configured weight.
    pub static_weight: u32,
    /// The weight now in use by the upstream's algorithm.
    pub weight: f64,
    /// Peak EWMA of latency, seconds.
    pub ewma_latency_seconds: f64,
    /// Decaying success ratio.
    pub success_rate: f64,
    /// Requests in flight.
    pub inflight: u32,
    /// In rotation: the probes pass and the breaker has not ejected it.
    pub healthy: bool,
    /// What the active probes say.
    pub probes_passing: bool,
    /// `closed`, `open` or `half_open`.
    pub circuit_state: &'static str,
    /// Seconds until an open breaker turns half-open.
    pub open_until_seconds: Option<f64>,
    /// Consecutive trips without a clean close.
    pub consecutive_trips: u32,
    /// Times the breaker opened since the start.
    pub circuit_opens: u64,
    /// Length of the breaker's last open period, seconds.
    pub open_period_seconds: f64,
    /// Consecutive failed probes.
    pub probe_failures: u32,
    /// The nominal delay before the next probe after another failure, seconds.
    pub probe_backoff_seconds: f64,
    /// The slow-start factor on the weight now (1 when not ramping).
    pub slow_start_factor: f64,
    /// Requests handed to this backend since the start.
    pub picks: u64,
    /// Times the pool restarted this backend's actor.
    pub actor_restarts: u32,
    /// The operator's switch: `ready`, `not_ready` or `drain`.
    pub admin_state: &'static str,
    /// Removed from the config or through the API: it goes once nothing is left in flight.
    pub removing: bool,
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
    /// Retries made since the start, by the failure that caused them.
    pub retries: std::collections::BTreeMap<&'static str, u64>,
    /// Retries the budget refused.
    pub retries_budget_exhausted: u64,
    /// Requests whose body was too large to retry.
    pub retries_off_body_too_large: u64,
}

/// The actor; its state lives in `PoolState`.
#[derive(Debug, Default)]
pub struct PoolActor;

/// What a pool actor starts from, handed to [`super::Pool::spawn`].
#[derive(Debug)]
pub struct PoolArgs {
    /// The upstream's (validated) config.
    pub upstream: Upstream,
    /// Seed of the pool's random source; `None` seeds from the OS (tests pass one).
    pub seed: Option<u64>,
    /// The server's metrics registry.
    pub metrics: Metrics,
    /// How long a removed backend is kept for its requests in flight (`listen.drain_timeout`).
    pub drain: Duration,
}

/// One backend as the pool holds it: what a pick reads, and what only the pool keeps.
struct Slot {
    pick: PickSlot,
    /// Times its breaker opened since the start (across actor restarts).
    opens: u64,
    backoff: Backoff,
    restarts: u32,
    /// A probe of it is scheduled or running (probes pause while it is `not_ready`).
    probing: bool,
    /// Its view changed since the shards last got it, in nothing that moves it in or out of
    /// rotation: they get it with the next [`PoolMsg::Share`].
    unshared: bool,
}

impl AsRef<PickSlot> for Slot {
    fn as_ref(&self) -> &PickSlot {
        &self.pick
    }
}

/// The state a pool actor drives.
pub struct PoolState {
    upstream: Arc<Upstream>,
    slots: Vec<Slot>,
    chooser: Chooser,
    budget: RetryBudget,
    registry: Metrics,
    metrics: Arc<UpstreamMetrics>,
    next_id: BackendId,
    drain: Duration,
    /// The upstream left the config: stop once every backend is gone.
    retiring: bool,
    /// A sweep is scheduled.
    sweeping: bool,
    retries: std::collections::BTreeMap<&'static str, u64>,
    budget_exhausted: u64,
    body_too_large: u64,
    /// The picks the request path queued.
    picks: Arc<Picks>,
    /// The shards on the serving workers, which get every change of the slots.
    shards: Shards,
    /// First tries the shards handed out, not yet in the budget.
    deposits: Arc<AtomicU64>,
    /// A [`PoolMsg::Share`] is on its way.
    sharing: bool,
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
    type Arguments = PoolStart;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        PoolStart {
            args,
            picks,
            deposits,
        }: PoolStart,
    ) -> Result<PoolState, ActorProcessingErr> {
        let up = Arc::new(args.upstream);
        let rng = match args.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let epoch = Instant::now();
        let mut state = PoolState {
            chooser: Chooser::new(up.algorithm, rng),
            budget: RetryBudget::new(&up.retry, epoch),
            registry: args.metrics.clone(),
            metrics: args.metrics.upstream(&up.name),
            retries: Default::default(),
            budget_exhausted: 0,
            body_too_large: 0,
            slots: Vec::with_capacity(up.backends.len()),
            next_id: 0,
            drain: args.drain,
            retiring: false,
            sweeping: false,
            upstream: up.clone(),
            picks,
            shards: Arc::new([]),
            deposits,
            sharing: false,
        };
        for b in &up.backends {
            state.add_slot(&myself, b, false, epoch).await?;
        }
        state.publish(epoch);
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
                retry,
                now,
                reply,
            } => {
                state.fold(now);
                let _ = reply.send(state.pick(key, &exclude, retry, now));
            }
            PoolMsg::Picks => {
                if !state.shards.is_empty() {
                    state.fold(Instant::now());
                }
                let picks = state.picks.clone();
                state.answer(&picks);
            }
            PoolMsg::BodyNotReplayable => state.body_too_large += 1,
            PoolMsg::View { id, view } => state.update_view(&myself, id, view, Instant::now()),
            PoolMsg::ProbeResult { id, pass } => state.probe_result(&myself, id, pass),
            PoolMsg::Status(reply) => {
                let _ = reply.send(state.status(Instant::now()));
            }
            PoolMsg::Publish(reply) => {
                state.publish(Instant::now());
                let _ = reply.send(());
            }
            PoolMsg::BackendActor { id, reply } => {
                let _ = reply.send(
                    state
                        .index_of(id)
                        .and_then(|i| state.slots[i].pick.actor.clone()),
                );
            }
            // Boxed, these two: they spawn actors, and their futures would otherwise make the
            // future of every message (a pick on every request) a few KiB larger to build.
            PoolMsg::Reconfigure { upstream, reply } => {
                let applied = Box::pin(state.reconfigure(&myself, *upstream)).await;
                state.share_all();
                let _ = reply.send(applied);
            }
            PoolMsg::AddBackend { backend, reply } => {
                let added = Box::pin(state.add_backend(&myself, &backend)).await;
                state.share_all();
                let _ = reply.send(added);
            }
            PoolMsg::RemoveBackend { address, reply } => {
                let removed = state.remove_backend(&myself, &address);
                state.share_all();
                let _ = reply.send(removed);
            }
            PoolMsg::SetState {
                address,
                state: to,
                reply,
            } => {
                let set = state.set_state(&myself, &address, to);
                state.share_all();
                let _ = reply.send(set);
            }
            PoolMsg::Retire => {
                state.retiring = true;
                let now = Instant::now();
                for slot in &mut state.slots {
                    slot.pick.removing.get_or_insert(now);
                }
                tracing::info!(upstream = %state.upstream.name, "upstream removed from the config; draining its backends");
                state.sweep(&myself, now);
                state.share_all();
            }
            PoolMsg::Sweep => {
                state.sweeping = false;
                state.sweep(&myself, Instant::now());
                state.share_all();
            }
            PoolMsg::Table(reply) => {
                let _ = reply.send(state.table());
            }
            PoolMsg::Shards(shards, reply) => {
                state.shards = shards;
                // Whatever changed since they were given their first table.
                state.share_all();
                myself.send_interval(FOLD_PERIOD, || PoolMsg::Fold);
                let _ = reply.send(());
            }
            PoolMsg::Fold => state.fold(Instant::now()),
            PoolMsg::Share => state.share_estimates(),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        for shard in state.shards.iter() {
            shard.actor.stop(None);
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
        if let Some(shard) = state
            .shards
            .iter()
            .find(|s| s.actor.get_id() == cell.get_id())
        {
            // Its worker's picks come here from now on: its slots went with its state (see
            // `super::shard`).
            tracing::warn!(
                upstream = %state.upstream.name,
                reason = %why,
                "a pick shard exited; the pool answers its worker's picks"
            );
            shard.gone.store(true, Ordering::Release);
            return Ok(());
        }
        // The pool stops its children only when it stops itself, so any exit seen here is
        // one nobody asked for: restart, with the backend's slot (and in-flight count) intact.
        if let Some(i) = state.index_of_actor(cell) {
            let slot = &mut state.slots[i];
            slot.pick.actor = None;
            slot.restarts += 1;
            tracing::warn!(
                upstream = %state.upstream.name,
                backend = %slot.pick.shared.authority,
                reason = %why,
                restarts = slot.restarts,
                "backend actor exited; restarting it"
            );
            state.spawn_backend(&myself, i, false).await?;
            state.publish(Instant::now());
        }
        Ok(())
    }
}

impl PoolState {
    fn index_of(&self, id: BackendId) -> Option<usize> {
        self.slots.iter().position(|s| s.pick.shared.id == id)
    }

    /// The slot of the backend at `address` (`host:port`, as /status shows it).
    fn index_of_address(&self, address: &str) -> Option<usize> {
        let address = address.trim();
        self.slots
            .iter()
            .position(|s| s.pick.shared.authority.eq_ignore_ascii_case(address))
    }

    /// The upstream's rules over the slots as they are now.
    fn rules(&self) -> Rules<'_, Slot> {
        Rules::new(&self.upstream, &self.slots)
    }

    /// Whether slot `i` should be probed: not in maintenance and not being removed.
    fn probed(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.pick.admin != AdminState::NotReady && s.pick.removing.is_none()
    }

    fn index_of_actor(&self, cell: &ActorCell) -> Option<usize> {
        let id = cell.get_id();
        self.slots
            .iter()
            .position(|s| s.pick.actor.as_ref().is_some_and(|a| a.get_id() == id))
    }

    /// The mean latency estimate of the backends in rotation: where a new, restarted or
    /// returning backend starts.
    fn mean_latency(&self) -> Duration {
        let (sum, n) = self
            .slots
            .iter()
            .filter(|s| {
                s.pick.actor.is_some()
                    && s.pick.view.healthy
                    && s.pick.view.circuit == CircuitState::Closed
                    && s.pick.admin == AdminState::Ready
                    && s.pick.removing.is_none()
            })
            .fold((0.0, 0u32), |(sum, n), s| {
                (sum + s.pick.view.latency, n + 1)
            });
        if n == 0 {
            DEFAULT_LATENCY
        } else {
            Duration::from_secs_f64(sum / f64::from(n))
        }
    }

    async fn spawn_backend(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        i: usize,
        ramp: bool,
    ) -> Result<(), ActorProcessingErr> {
        let initial = self.mean_latency();
        let healthy = self.slots[i].pick.view.healthy;
        let args = BackendArgs {
            id: self.slots[i].pick.shared.id,
            upstream: self.upstream.clone(),
            authority: self.slots[i].pick.shared.authority.clone(),
            pool: myself.clone(),
            metrics: self.slots[i].pick.shared.metrics.clone(),
            outcomes: self.slots[i].pick.shared.outcomes.clone(),
            initial_latency: initial,
            healthy,
            ramp,
        };
        let (actor, _) = Actor::spawn_linked(None, BackendActor, args, myself.get_cell()).await?;
        let slot = &mut self.slots[i];
        slot.pick.actor = Some(actor);
        // A new actor has a fresh breaker: the pool's view starts over with it.
        let now = Instant::now();
        slot.pick.view =
            BackendView::fresh(healthy, initial, self.upstream.adaptive.ewma_decay, now);
        if ramp && !self.upstream.adaptive.slow_start.is_zero() {
            slot.pick.view.slow_start_since = Some(now);
        }
        slot.pick.opened_at = None;
        self.share(i);
        Ok(())
    }

    fn update_view(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        id: BackendId,
        view: BackendView,
        now: Instant,
    ) {
        let Some(i) = self.index_of(id) else { return };
        let old = self.slots[i].pick.view;
        let before = old.circuit;
        let slot = &mut self.slots[i];
        slot.pick.view = view;
        match (before, view.circuit) {
            (CircuitState::Open { .. }, CircuitState::Open { .. }) => {}
            (_, CircuitState::Open { .. }) => {
                slot.opens += 1;
                // A reopening from half-open keeps its place in the ejection order.
                if slot.pick.opened_at.is_none() || before == CircuitState::Closed {
                    slot.pick.opened_at = Some(now);
                }
                let ejected = self.rules().ejected(now).contains(&i);
                let slot = &self.slots[i];
                if ejected {
                    tracing::info!(upstream = %self.upstream.name, backend = %slot.pick.shared.authority, "ejected by its circuit breaker");
                } else {
                    tracing::warn!(
                        upstream = %self.upstream.name,
                        backend = %slot.pick.shared.authority,
                        max_ejection_percent = self.upstream.circuit_breaker.max_ejection_percent,
                        "circuit breaker open but kept in rotation: the ejection cap is reached"
                    );
                }
            }
            (_, CircuitState::HalfOpen) => slot.pick.shared.reset_trials(),
            (_, CircuitState::Closed) => slot.pick.opened_at = None,
        }
        // Rising again: its trials start over (unless its breaker turned half-open with it, which
        // started them over already).
        if view.rising && !old.rising && before == view.circuit {
            self.slots[i].pick.shared.reset_trials();
        }
        // A change of rotation goes to the shards at once; a new estimate (latency, success
        // rate), which comes with nearly every batch of outcomes, within `SHARE_PERIOD`, with
        // the others of that time: a message per estimate woke every worker thousands of
        // times a second.
        let rotation = std::mem::discriminant(&before) != std::mem::discriminant(&view.circuit)
            || old.healthy != view.healthy
            || old.rising != view.rising
            || old.slow_start_since != view.slow_start_since;
        if rotation {
            self.share(i);
        } else if !self.shards.is_empty() {
            self.slots[i].unshared = true;
            if !self.sharing {
                self.sharing = true;
                myself.send_after(SHARE_PERIOD, || PoolMsg::Share);
            }
        }
        self.publish(now);
    }

    /// The slots and settings as a shard holds them.
    fn table(&self) -> Arc<Table> {
        Arc::new(Table {
            upstream: self.upstream.clone(),
            slots: self.slots.iter().map(|s| s.pick.clone()).collect(),
        })
    }

    /// Sends every running shard all the slots.
    fn share_all(&mut self) {
        if self.shards.is_empty() {
            return;
        }
        for slot in &mut self.slots {
            slot.unshared = false;
        }
        let table = self.table();
        for shard in self.running_shards() {
            let _ = shard.actor.cast(ShardMsg::Table(table.clone()));
        }
    }

    /// Sends every running shard slot `i`, changed.
    fn share(&mut self, i: usize) {
        self.slots[i].unshared = false;
        for shard in self.running_shards() {
            let slot = Box::new(self.slots[i].pick.clone());
            let _ = shard.actor.cast(ShardMsg::Slot(i, slot));
        }
    }

    /// Sends every running shard the slots whose estimates changed since they last got them.
    fn share_estimates(&mut self) {
        self.sharing = false;
        for i in 0..self.slots.len() {
            if self.slots[i].unshared {
                self.share(i);
            }
        }
    }

    fn running_shards(&self) -> impl Iterator<Item = &super::picks::Shard> {
        self.shards
            .iter()
            .filter(|s| !s.gone.load(Ordering::Acquire))
    }

    /// Adds the first tries the shards handed out to the retry budget, as of `now`.
    fn fold(&mut self, now: Instant) {
        let n = self.deposits.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.budget
                .deposit_many(u32::try_from(n).unwrap_or(u32::MAX), now);
        }
    }

    /// Answers every pick queued in `picks`, in the order they came.
    fn answer(&mut self, picks: &Picks) {
        picks.drain(|p| {
            let _ = p.reply.send(self.pick(p.key, &p.exclude, p.retry, p.now));
        });
    }

    /// A lease for one try, as [`PoolMsg::Pick`] asks; a retry must also find room in the
    /// budget.
    fn pick(
        &mut self,
        key: u64,
        exclude: &[BackendId],
        retry: Option<&'static str>,
        now: Instant,
    ) -> Result<Lease, NoBackend> {
        let rules = Rules::new(&self.upstream, &self.slots);
        let i = self.chooser.choose(&rules, key, exclude, now)?;
        let slot = &self.slots[i].pick;
        // The budget is asked only once there is somewhere to go: a retry with nowhere to go
        // spends nothing.
        match retry {
            None => self.budget.deposit(now),
            Some(reason) => {
                if !self.budget.try_withdraw(now) {
                    if slot.view.on_trial() {
                        slot.shared.return_trial();
                    }
                    self.budget_exhausted += 1;
                    self.metrics.budget_exhausted();
                    return Err(NoBackend::BudgetExhausted);
                }
                *self.retries.entry(reason).or_insert(0) += 1;
                self.metrics.retry(reason);
            }
        }
        choose::lease(slot, now)
    }

    fn probe_result(&mut self, myself: &ActorRef<PoolMsg>, id: BackendId, pass: bool) {
        let Some(i) = self.index_of(id) else { return };
        self.slots[i].probing = false;
        if !self.probed(i) {
            // In maintenance or on its way out: the probes pause; `ready` restarts them.
            return;
        }
        let pool_mean = self.mean_latency();
        let health = &self.upstream.health;
        let slot = &mut self.slots[i];
        slot.pick.shared.metrics.probe(pass);
        if let Some(actor) = &slot.pick.actor {
            let _ = actor.cast(BackendMsg::Probe { pass, pool_mean });
        }
        let delay = if pass {
            slot.backoff.reset();
            if slot.pick.view.healthy {
                health.interval
            } else {
                health.backoff_base
            }
        } else {
            let delay = slot.backoff.fail(self.chooser.rng());
            if !slot.pick.view.healthy {
                tracing::info!(
                    upstream = %self.upstream.name,
                    backend = %slot.pick.shared.authority,
                    failed_probes = slot.backoff.failures(),
                    next_probe_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                    "probe failed; backing off"
                );
            }
            delay
        };
        let delay = if self.slots[i].pick.view.healthy {
            delay
        } else {
            let (serving, active) = self.serving(Instant::now());
            backoff::out_of_rotation(delay, serving, active)
        };
        self.schedule_probe(myself, i, delay);
    }

    /// How many of the active backends serve (in rotation, their probes passing), and how many
    /// are active.
    fn serving(&self, now: Instant) -> (usize, usize) {
        let rules = self.rules();
        let ejected = rules.ejected(now);
        let active = self.slots.iter().filter(|s| s.pick.active()).count();
        let serving = (0..self.slots.len())
            .filter(|&i| self.slots[i].pick.view.healthy && rules.in_rotation(i, &ejected))
            .count();
        (serving, active)
    }

    fn schedule_probe(&mut self, myself: &ActorRef<PoolMsg>, i: usize, delay: Duration) {
        self.slots[i].probing = true;
        let slot = &self.slots[i];
        let id = slot.pick.shared.id;
        let authority = slot.pick.shared.authority.clone();
        let upstream = self.upstream.clone();
        let pool = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let pass = probe::probe(&upstream.health, &authority).await;
            // Fails only when the pool has stopped, which ends the probe cycle too.
            let _ = pool.cast(PoolMsg::ProbeResult { id, pass });
        });
    }

    /// Slot `i`'s figures at `now`, as /metrics and /status show them.
    fn figures(&self, i: usize, ejected: &[usize], best: f64, now: Instant) -> Figures {
        let s = &self.slots[i];
        let rules = self.rules();
        let in_rotation = rules.in_rotation(i, ejected);
        Figures {
            weight: if in_rotation {
                rules.weight(i, rules.effective_latency(i, now), best, rules.ramp(i, now))
            } else {
                0.0
            },
            ewma_seconds: s.pick.view.latency_at(now),
            success_rate: s.pick.view.success_rate,
            healthy: in_rotation,
            circuit: s.pick.view.circuit,
            inflight: s.pick.shared.inflight(),
        }
    }

    /// Sets every backend's gauges to its figures at `now`.
    fn publish(&self, now: Instant) {
        let ejected = self.rules().ejected(now);
        let best = self.rules().best_latency(&ejected, now);
        for (i, s) in self.slots.iter().enumerate() {
            s.pick
                .shared
                .metrics
                .publish(&self.figures(i, &ejected, best, now));
        }
    }

    fn status(&self, now: Instant) -> UpstreamStatus {
        let ejected = self.rules().ejected(now);
        let best = self.rules().best_latency(&ejected, now);
        UpstreamStatus {
            name: self.upstream.name.clone(),
            algorithm: self.upstream.algorithm.name(),
            backends: self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let f = self.figures(i, &ejected, best, now);
                    BackendStatus {
                        address: s.pick.shared.authority.to_string(),
                        static_weight: s.pick.static_weight,
                        weight: f.weight,
                        ewma_latency_seconds: f.ewma_seconds,
                        success_rate: f.success_rate,
                        inflight: s.pick.shared.inflight(),
                        healthy: f.healthy,
                        probes_passing: s.pick.view.healthy,
                        circuit_state: s.pick.view.circuit.name(),
                        open_until_seconds: match s.pick.view.circuit {
                            CircuitState::Open { until } => {
                                Some(until.saturating_duration_since(now).as_secs_f64())
                            }
                            _ => None,
                        },
                        consecutive_trips: s.pick.view.trips,
                        circuit_opens: s.opens,
                        open_period_seconds: s.pick.view.open_period.as_secs_f64(),
                        probe_failures: s.backoff.failures(),
                        probe_backoff_seconds: s.backoff.nominal().as_secs_f64(),
                        slow_start_factor: self.rules().ramp(i, now),
                        picks: s.pick.shared.picks(),
                        actor_restarts: s.restarts,
                        admin_state: s.pick.admin.name(),
                        removing: s.pick.removing.is_some(),
                    }
                })
                .collect(),
            retries: self.retries.clone(),
            retries_budget_exhausted: self.budget_exhausted,
            retries_off_body_too_large: self.body_too_large,
        }
    }
}
