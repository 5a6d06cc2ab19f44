//! Changes to a running fulcrum: a reload (SIGHUP or `POST /admin/reload`) and the admin API's
//! backend changes. [`Control`] owns the running generation — the config last applied and the
//! pool actor of each upstream — and applies each change as a difference:
//!
//! - an upstream still in the file keeps its pool actor, which keeps the backends still listed
//!   (actor, estimates, breaker; the proxy keeps the pooled connections to them), drains the
//!   ones gone and adds the new ones in slow start ([`crate::pool`]);
//! - a new upstream gets a new pool; a removed one is taken out of the routes, then its pool
//!   drains and stops;
//! - the proxy switches to the new routes in one atomic swap: a request is routed by either the
//!   old config or the new one, never by half of each.
//!
//! An invalid file changes nothing: the reason is logged and returned. `[listen]`, `[runtime]`
//! and `admin.address` take effect at the next start (the listeners stay bound); a reload that
//! changes them says so. Changes are serialised: one reload or admin change at a time.

use crate::config::{BackendConfig, Config, ConfigErrors, Upstream};
use crate::pool::{AdminState, Applied, ChangeError, Pool, PoolArgs, PoolMsg};
use crate::proxy::Proxy;
use crate::telemetry::metrics::Metrics;
use arc_swap::ArcSwapOption;
use ractor::rpc::CallResult;
use ractor::ActorRef;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;

/// How long a change waits for a pool actor to apply it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// fulcrum runs on a config that is not a file (`demo`, or a test).
    #[error("no config file to reload: fulcrum was started without one")]
    NoFile,
    /// The file is unreadable or invalid; every problem is listed.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// A pool actor could not start or did not answer.
    #[error("{0}")]
    Pool(String),
}

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No upstream of that name.
    #[error("no upstream named {0:?}")]
    UnknownUpstream(String),
    /// The backend's fields are invalid.
    #[error("{0}")]
    Invalid(String),
    /// The pool refused the change.
    #[error("{0}")]
    Refused(ChangeError),
    /// The pool did not answer in time.
    #[error("the pool of upstream {0:?} did not answer")]
    NotAnswering(String),
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reloaded {
    /// Upstreams that got a new pool.
    pub upstreams_added: Vec<String>,
    /// Upstreams whose pool is draining out.
    pub upstreams_removed: Vec<String>,
    /// Per kept upstream, what happened to its backends.
    pub backends: BTreeMap<String, Applied>,
    /// Keys that changed but take effect only at the next start.
    pub needs_restart: Vec<&'static str>,
}

/// The running generation and what changes it.
pub struct Control {
    /// The config file reloads read; `None` when started from an embedded config.
    source: Option<PathBuf>,
    /// The config last applied. Its lock serialises changes.
    config: tokio::sync::Mutex<Config>,
    /// The pool of each upstream, in config order: read by the admin listener.
    pools: Mutex<Vec<(String, Pool)>>,
    proxy: Arc<Proxy>,
    metrics: Metrics,
    token: ArcSwapOption<String>,
    seed: Option<u64>,
    /// The workers that serve connections, where a new pool starts its shards.
    workers: Vec<Handle>,
}

/// Starts the pool actor of `upstream` here, and its shards on `workers` (the workers that
/// serve connections); `drain` bounds how long its removed backends linger.
pub async fn spawn_pool(
    upstream: &Upstream,
    seed: Option<u64>,
    metrics: &Metrics,
    drain: Duration,
    workers: &[Handle],
) -> Result<Pool, String> {
    let args = PoolArgs {
        upstream: upstream.clone(),
        seed,
        metrics: metrics.clone(),
        drain,
    };
    Pool::spawn_on(args, workers)
        .await
        .map_err(|e| e.to_string())
}

/// Locks a mutex whose data stays valid whatever a panicking holder did.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Control {
    /// The control of a server just started on `config` (read from `source`, if a file) with
    /// these pools (config order) and this proxy; a reload starts new pools' shards on
    /// `workers` (the workers that serve connections).
    pub fn new(
        config: Config,
        source: Option<PathBuf>,
        pools: Vec<(String, Pool)>,
        proxy: Arc<Proxy>,
        metrics: Metrics,
        seed: Option<u64>,
        workers: Vec<Handle>,
    ) -> Control {
        Control {
            source,
            token: ArcSwapOption::from(config.admin.token.clone().map(Arc::new)),
            config: tokio::sync::Mutex::new(config),
            pools: Mutex::new(pools),
            proxy,
            metrics,
            seed,
            workers,
        }
    }

    /// The pools now, in config order.
    pub fn pools(&self) -> Vec<(String, ActorRef<PoolMsg>)> {
        lock(&self.pools)
            .iter()
            .map(|(n, p)| (n.clone(), p.actor().clone()))
            .collect()
    }

    /// The pool of upstream `name`.
    pub fn pool(&self, name: &str) -> Option<ActorRef<PoolMsg>> {
        lock(&self.pools)
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.actor().clone())
    }

    /// The admin API's bearer token now, if one is set.
    pub fn token(&self) -> Option<Arc<String>> {
        self.token.load_full()
    }

    /// Reads the config file again and applies it; on any error nothing changes.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self.source.as_ref().ok_or(ReloadError::NoFile)?;
        let result = match Config::load(path) {
            Ok(config) => self.apply(config).await,
            Err(errors) => Err(ReloadError::Invalid(errors)),
        };
        match &result {
            Ok(r) => tracing::info!(
                file = %path.display(),
                upstreams_added = ?r.upstreams_added,
                upstreams_removed = ?r.upstreams_removed,
                needs_restart = ?r.needs_restart,
                "config reloaded"
            ),
            Err(e) => tracing::error!(
                file = %path.display(),
                reason = %e.to_string().replace('\n', "; "),
                "config reload refused; still running on the previous config"
            ),
        }
        result
    }

    /// Applies `new` (already validated) as a difference from the running config.
    pub async fn apply(&self, new: Config) -> Result<Reloaded, ReloadError> {
        let mut current = self.config.lock().await;
        let mut done = Reloaded::default();
        if new.listen != current.listen {
            done.needs_restart.push("listen");
        }
        if new.admin.address != current.admin.address {
            done.needs_restart.push("admin.address");
        }
        if new.admin.hosts != current.admin.hosts {
            done.needs_restart.push("admin.hosts");
        }
        if new.runtime != current.runtime {
            done.needs_restart.push("runtime");
        }
        let old_pools = lock(&self.pools).clone();
        let drain = current.listen.drain_timeout;
        // New pools first: if one cannot start, nothing has changed yet.
        let mut started = Vec::new();
        for (i, up) in new.upstreams.iter().enumerate() {
            if old_pools.iter().any(|(n, _)| *n == up.name) {
                continue;
            }
            let seed = self.seed.map(|s| s.wrapping_add(1000 + i as u64));
            match spawn_pool(up, seed, &self.metrics, drain, &self.workers).await {
                Ok(pool) => started.push((up.name.clone(), pool)),
                Err(e) => {
                    for (_, p) in started {
                        p.actor().stop(None);
                    }
                    return Err(ReloadError::Pool(format!(
                        "cannot start the pool of upstream {}: {e}",
                        up.name
                    )));
                }
            }
        }
        let mut pools = Vec::with_capacity(new.upstreams.len());
        for up in &new.upstreams {
            if let Some((_, pool)) = old_pools.iter().find(|(n, _)| *n == up.name) {
                let upstream = Box::new(up.clone());
                match pool
                    .actor()
                    .call(
                        |reply| PoolMsg::Reconfigure { upstream, reply },
                        Some(CHANGE_TIMEOUT),
                    )
                    .await
                {
                    Ok(CallResult::Success(applied)) => {
                        done.backends.insert(up.name.clone(), applied);
                    }
                    _ => tracing::warn!(upstream = %up.name, "pool did not confirm the reload"),
                }
                pools.push((up.name.clone(), pool.clone()));
            } else if let Some(i) = started.iter().position(|(n, _)| *n == up.name) {
                let (name, pool) = started.swap_remove(i);
                done.upstreams_added.push(name.clone());
                pools.push((name, pool));
            }
        }
        let refs: Vec<_> = pools.iter().map(|(_, p)| p.clone()).collect();
        self.proxy.reroute(&new, &refs);
        // Routes no longer lead to a removed upstream: its pool may drain now.
        for (name, pool) in &old_pools {
            if !new.upstreams.iter().any(|u| u.name == *name) {
                let _ = pool.actor().cast(PoolMsg::Retire);
                done.upstreams_removed.push(name.clone());
            }
        }
        *lock(&self.pools) = pools;
        self.token.store(new.admin.token.clone().map(Arc::new));
        *current = new;
        Ok(done)
    }

    /// Adds `backend` to upstream `upstream`, in slow start, until the next reload.
    pub async fn add_backend(
        &self,
        upstream: &str,
        backend: BackendConfig,
    ) -> Result<(), AdminError> {
        backend
            .check()
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        self.change(upstream, |reply| PoolMsg::AddBackend { backend, reply })
            .await
    }

    /// Drains backend `address` out of upstream `upstream`, until the next reload.
    pub async fn remove_backend(&self, upstream: &str, address: &str) -> Result<(), AdminError> {
        let address = address.to_string();
        self.change(upstream, |reply| PoolMsg::RemoveBackend { address, reply })
            .await
    }

    /// Sets backend `address` of upstream `upstream` to `state`, until the next reload.
    pub async fn set_state(
        &self,
        upstream: &str,
        address: &str,
        state: AdminState,
    ) -> Result<(), AdminError> {
        let address = address.to_string();
        self.change(upstream, |reply| PoolMsg::SetState {
            address,
            state,
            reply,
        })
        .await
    }

    async fn change(
        &self,
        upstream: &str,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<(), ChangeError>>) -> PoolMsg,
    ) -> Result<(), AdminError> {
        // Serialised with reloads, so a change never lands on a pool a reload is replacing.
        let _running = self.config.lock().await;
        let pool = self
            .pool(upstream)
            .ok_or_else(|| AdminError::UnknownUpstream(upstream.to_string()))?;
        match pool.call(msg, Some(CHANGE_TIMEOUT)).await {
            Ok(CallResult::Success(r)) => r.map_err(AdminError::Refused),
            _ => Err(AdminError::NotAnswering(upstream.to_string())),
        }
    }
}
