//! The pool's changes while running (a child of the actor module, so it reaches the pool's
//! private state): slots added and started, a reload's plan applied, the admin API's add,
//! remove and switch, and the sweep that drops removed backends once drained.

use super::{PoolMsg, PoolState, Slot, DEFAULT_LATENCY, SWEEP_PERIOD};
use crate::config::{BackendConfig, Upstream};
use crate::policy::backoff::Backoff;
use crate::policy::breaker::CircuitState;
use crate::policy::budget::RetryBudget;
use crate::pool::backend::{BackendMsg, BackendView};
use crate::pool::change::{self, AdminState, Applied, ChangeError};
use crate::pool::choose::PickSlot;
use crate::pool::lease::BackendShared;
use crate::telemetry::metrics::Figures;
use ractor::{ActorProcessingErr, ActorRef};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

impl PoolState {
    /// Adds a slot for backend `b`, starts its actor (in slow start if `ramp`) and its probes.
    pub(super) async fn add_slot(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        b: &BackendConfig,
        ramp: bool,
        now: Instant,
    ) -> Result<usize, ActorProcessingErr> {
        let authority = b
            .authority()
            .map_err(|e| format!("backend {}: {e}", b.address))?
            .to_string();
        let id = self.next_id;
        self.next_id += 1;
        let up = &self.upstream;
        self.slots.push(Slot {
            pick: PickSlot {
                shared: Arc::new(BackendShared::new(
                    id,
                    Arc::from(authority.as_str()),
                    self.registry.backend(&up.name, &authority, b.weight),
                    now,
                )),
                static_weight: b.weight,
                actor: None,
                view: BackendView::fresh(true, DEFAULT_LATENCY, up.adaptive.ewma_decay, now),
                opened_at: None,
                admin: AdminState::Ready,
                removing: None,
            },
            opens: 0,
            backoff: Backoff::new(up.health.backoff_base, up.health.backoff_max),
            restarts: 0,
            probing: false,
            unshared: false,
        });
        let i = self.slots.len() - 1;
        self.spawn_backend(myself, i, ramp).await?;
        // Spread the first probes over a quarter interval rather than all at once.
        let first = self
            .upstream
            .health
            .interval
            .mul_f64(self.chooser.rng().random::<f64>() / 4.0);
        self.schedule_probe(myself, i, first);
        Ok(i)
    }

    /// Applies a reload to this pool: new settings for all, the backend list by [`change::plan`].
    pub(super) async fn reconfigure(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        new: Upstream,
    ) -> Applied {
        let now = Instant::now();
        let running: Vec<(&str, u32)> = self
            .slots
            .iter()
            .map(|s| (&*s.pick.shared.authority, s.pick.static_weight))
            .collect();
        let wanted: Vec<(&str, u32)> = new
            .backends
            .iter()
            .map(|b| (b.authority().unwrap_or(b.address.as_str()), b.weight))
            .collect();
        let plan = change::plan(&running, &wanted);
        // The tables a backend actor reads; the others are the pool's or the proxy's.
        let old = &self.upstream;
        let settings_changed = new.health != old.health
            || new.circuit_breaker != old.circuit_breaker
            || new.adaptive != old.adaptive
            || new.timeouts != old.timeouts;
        if new.algorithm != self.upstream.algorithm {
            self.chooser.retune(new.algorithm);
        }
        if new.retry != self.upstream.retry {
            self.budget = RetryBudget::new(&new.retry, now);
        }
        let backoff_changed = new.health.backoff_base != self.upstream.health.backoff_base
            || new.health.backoff_max != self.upstream.health.backoff_max;
        let upstream = Arc::new(new);
        self.upstream = upstream.clone();
        let mut applied = Applied::default();
        let mut rejoining = Vec::new();
        for &(i, weight) in &plan.keep {
            let slot = &mut self.slots[i];
            slot.set_weight(weight);
            // The file is the truth again: what the API changed ends here.
            if std::mem::replace(&mut slot.pick.admin, AdminState::Ready) != AdminState::Ready {
                rejoining.push(i);
            }
            slot.pick.removing = None;
            if backoff_changed {
                slot.backoff =
                    Backoff::new(upstream.health.backoff_base, upstream.health.backoff_max);
            }
            if settings_changed {
                if let Some(actor) = &slot.pick.actor {
                    let _ = actor.cast(BackendMsg::Retune(upstream.clone()));
                }
            }
            applied.kept.push(slot.pick.shared.authority.to_string());
        }
        for i in rejoining {
            self.rejoin(i);
        }
        for &i in &plan.remove {
            let slot = &mut self.slots[i];
            slot.pick.removing.get_or_insert(now);
            applied.removed.push(slot.pick.shared.authority.to_string());
        }
        for i in 0..self.slots.len() {
            self.resume_probes(myself, i);
        }
        for &j in &plan.add {
            let b = upstream.backends[j].clone();
            match self.add_slot(myself, &b, true, now).await {
                Ok(_) => applied.added.push(b.address.clone()),
                Err(e) => {
                    tracing::error!(upstream = %upstream.name, backend = %b.address, error = %e, "cannot start an added backend")
                }
            }
        }
        tracing::info!(
            upstream = %upstream.name,
            added = applied.added.len(),
            removed = applied.removed.len(),
            kept = applied.kept.len(),
            "upstream reconfigured"
        );
        self.sweep(myself, now);
        self.publish(now);
        applied
    }

    /// Adds backend `b` in slow start; one being removed is kept instead.
    pub(super) async fn add_backend(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        b: &BackendConfig,
    ) -> Result<(), ChangeError> {
        let now = Instant::now();
        // `check` has passed: the authority is there.
        let address = b.authority().unwrap_or(&b.address);
        if let Some(i) = self.index_of_address(address) {
            let slot = &mut self.slots[i];
            if slot.pick.removing.take().is_none() {
                return Err(ChangeError::DuplicateBackend(b.address.clone()));
            }
            slot.set_weight(b.weight);
            self.resume_probes(myself, i);
            self.publish(now);
            return Ok(());
        }
        self.add_slot(myself, b, true, now)
            .await
            .map_err(|e| ChangeError::Spawn {
                address: b.address.clone(),
                reason: e.to_string(),
            })?;
        self.publish(now);
        Ok(())
    }

    /// Starts draining backend `address` out of the pool.
    pub(super) fn remove_backend(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        address: &str,
    ) -> Result<(), ChangeError> {
        let i = self
            .index_of_address(address)
            .ok_or_else(|| ChangeError::UnknownBackend(address.to_string()))?;
        let now = Instant::now();
        self.slots[i].pick.removing.get_or_insert(now);
        self.sweep(myself, now);
        self.publish(now);
        Ok(())
    }

    /// Sets backend `address`'s [`AdminState`].
    pub(super) fn set_state(
        &mut self,
        myself: &ActorRef<PoolMsg>,
        address: &str,
        to: AdminState,
    ) -> Result<(), ChangeError> {
        let i = self
            .index_of_address(address)
            .ok_or_else(|| ChangeError::UnknownBackend(address.to_string()))?;
        if self.slots[i].pick.removing.is_some() {
            return Err(ChangeError::Removing(address.to_string()));
        }
        let from = std::mem::replace(&mut self.slots[i].pick.admin, to);
        if from != AdminState::Ready && to == AdminState::Ready {
            self.rejoin(i);
        }
        self.resume_probes(myself, i);
        self.publish(Instant::now());
        Ok(())
    }

    /// Slot `i` is `ready` again after the operator's switch: its actor starts over from the
    /// pool's mean latency and ramps up.
    fn rejoin(&self, i: usize) {
        let pool_mean = self.mean_latency();
        if let Some(actor) = &self.slots[i].pick.actor {
            let _ = actor.cast(BackendMsg::Rejoin { pool_mean });
        }
    }

    /// Probes slot `i` now if it should be probed and no probe of it is on its way.
    fn resume_probes(&mut self, myself: &ActorRef<PoolMsg>, i: usize) {
        if self.probed(i) && !self.slots[i].probing {
            self.schedule_probe(myself, i, Duration::ZERO);
        }
    }

    /// Drops the removed backends with nothing in flight, or removed longer than the drain
    /// timeout (their last requests finish unseen); stops a retiring pool once empty; looks
    /// again later while any removal is pending.
    pub(super) fn sweep(&mut self, myself: &ActorRef<PoolMsg>, now: Instant) {
        let drain = self.drain;
        let mut i = 0;
        while i < self.slots.len() {
            let gone = self.slots[i].pick.removing.is_some_and(|since| {
                self.slots[i].pick.shared.inflight() == 0
                    || now.saturating_duration_since(since) >= drain
            });
            if !gone {
                i += 1;
                continue;
            }
            let slot = self.slots.remove(i);
            slot.pick.shared.metrics.publish(&Figures {
                weight: 0.0,
                ewma_seconds: 0.0,
                success_rate: 0.0,
                healthy: false,
                circuit: CircuitState::Closed,
                inflight: 0,
            });
            if let Some(actor) = slot.pick.actor {
                // Out of the slots first, so the supervisor does not restart it.
                actor.stop(Some("removed".into()));
            }
            tracing::info!(
                upstream = %self.upstream.name,
                backend = %slot.pick.shared.authority,
                inflight = slot.pick.shared.inflight(),
                "backend removed"
            );
        }
        if self.retiring && self.slots.is_empty() {
            myself.stop(Some("upstream removed".into()));
            return;
        }
        if !self.sweeping && self.slots.iter().any(|s| s.pick.removing.is_some()) {
            self.sweeping = true;
            myself.send_after(SWEEP_PERIOD, || PoolMsg::Sweep);
        }
    }
}

impl Slot {
    /// The configured weight, and its gauge.
    fn set_weight(&mut self, weight: u32) {
        self.pick.static_weight = weight;
        self.pick.shared.metrics.static_weight(weight);
    }
}
