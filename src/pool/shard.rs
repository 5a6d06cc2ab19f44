//! A pool's shards, architecture.md's "shard picks over several pool workers": each upstream has
//! one [`ShardActor`] on every worker thread that serves connections (`crate::workers`), and the
//! first tries of that worker's requests are picked from the shard's copy of the pool's slots,
//! with its own algorithm state. A pick then never crosses threads, and takes no message: the
//! request path reads the shard in place ([`pick_here`]), as nginx's workers each read their own
//! copy of an upstream's state. A message to an actor per pick cost some 3,000 instructions a
//! request at one connection, where nothing shares it (BENCHMARKS.md, eleventh round).
//!
//! The shard's slots live in a table of this thread's shards, which only this thread touches:
//! its actor, which runs here too (each worker is a current-thread runtime), applies the pool's
//! changes to them in the order they come, between the picks; its state's drop, however the
//! actor ends, takes them out, after which its worker's picks go to the pool actor.
//!
//! The pool actor, on worker 0, stays the one owner of the backends: it spawns and supervises
//! their actors, runs the probes, applies reloads and the admin API's changes, answers every
//! retry (and the first tries of a worker without a shard), and sends each shard the slots as
//! they change, in order (one slot when a backend's view changes, all of them when the
//! membership or the settings do). What must hold across shards is shared rather than copied:
//! the in-flight counts and the half-open trials are per-backend atomics, and the first tries a
//! shard hands out are added to a counter the pool folds into its retry budget, which therefore
//! still bounds the retries of the whole upstream.
//!
//! A shard that fails is not restarted: the pool answers its worker's picks from then on.

use super::choose::{self, Chooser, PickSlot, Rules};
use super::picks::PickAnswer;
use crate::config::Upstream;
use crate::policy::balance::BackendId;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::rngs::SmallRng;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// The slots of an upstream as the pool last sent them, with its settings.
#[derive(Debug)]
pub struct Table {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) slots: Vec<PickSlot>,
}

/// Messages of a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// The pool's slots and settings, after a change of membership or settings.
    Table(Arc<Table>),
    /// One slot changed (its view, or its actor after a restart).
    Slot(usize, Box<PickSlot>),
}

/// The actor; what it keeps up to date is this thread's [`Local`] of its pool.
#[derive(Debug, Default)]
pub struct ShardActor;

/// What a shard starts from.
#[derive(Debug)]
pub struct ShardArgs {
    /// The number of its pool ([`super::Pool`]), which the request path looks it up by.
    pub(crate) pool: u64,
    pub(crate) table: Arc<Table>,
    /// Where it counts the first tries it hands out, for the pool's retry budget.
    pub(crate) deposits: Arc<AtomicU64>,
    pub(crate) rng: SmallRng,
}

/// A shard's actor state: which pool's [`Local`] it keeps. Dropping it takes that out of this
/// thread's table, so that a shard that stopped or failed is not picked from stale.
#[derive(Debug)]
pub struct ShardState {
    pool: u64,
}

impl Drop for ShardState {
    fn drop(&mut self) {
        // During the thread's exit the table may be gone already: then there is nothing to do.
        let _ = HERE.try_with(|here| {
            if let Ok(mut here) = here.try_borrow_mut() {
                here.retain(|l| l.pool != self.pool);
            }
        });
    }
}

/// One pool's shard on this thread: what its picks read and its actor writes.
struct Local {
    pool: u64,
    upstream: Arc<Upstream>,
    slots: Vec<PickSlot>,
    chooser: Chooser,
    deposits: Arc<AtomicU64>,
}

thread_local! {
    /// This thread's shards, one per pool that has one here.
    static HERE: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// A first try of a request with affinity `key`, not among `exclude`, at `now`, picked on this
/// thread from pool `pool`'s shard; `None` when this thread has none (or it is in use), and the
/// pool actor must be asked.
pub(crate) fn pick_here(
    pool: u64,
    key: u64,
    exclude: &[BackendId],
    now: Instant,
) -> Option<PickAnswer> {
    HERE.with(|here| {
        let mut here = here.try_borrow_mut().ok()?;
        let local = here.iter_mut().find(|l| l.pool == pool)?;
        let rules = Rules::new(&local.upstream, &local.slots);
        let answer = local
            .chooser
            .choose(&rules, key, exclude, now)
            .and_then(|i| choose::lease(&local.slots[i], now));
        if answer.is_ok() {
            local.deposits.fetch_add(1, Ordering::Relaxed);
        }
        Some(answer)
    })
}

/// Applies `change` to pool `pool`'s shard on this thread.
fn change_here(pool: u64, change: impl FnOnce(&mut Local)) {
    HERE.with(|here| {
        if let Some(local) = here.borrow_mut().iter_mut().find(|l| l.pool == pool) {
            change(local);
        }
    });
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        let local = Local {
            pool: args.pool,
            chooser: Chooser::new(args.table.upstream.algorithm, args.rng),
            upstream: args.table.upstream.clone(),
            slots: args.table.slots.clone(),
            deposits: args.deposits,
        };
        HERE.with(|here| {
            let mut here = here.borrow_mut();
            here.retain(|l| l.pool != args.pool);
            here.push(local);
        });
        Ok(ShardState { pool: args.pool })
    }

    async fn handle(
        &self,
        _: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Table(table) => change_here(state.pool, |local| {
                local.chooser.retune(table.upstream.algorithm);
                local.upstream = table.upstream.clone();
                local.slots.clone_from(&table.slots);
            }),
            ShardMsg::Slot(i, slot) => change_here(state.pool, |local| {
                if let Some(s) = local.slots.get_mut(i) {
                    *s = *slot;
                }
            }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::breaker::CircuitState;
    use crate::pool::{AdminState, BackendView, NoBackend, Pool, PoolArgs, PoolMsg, Recent};
    use crate::telemetry::metrics::Metrics;
    use crate::workers::Workers;
    use std::time::Duration;
    use tokio::time::Instant;

    /// Generous: these run on real threads.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// Round robin over 127.0.0.1:1, :2 and :3 (ids 0, 1, 2), probed an hour from now: nothing
    /// here dials them.
    fn upstream(extra: &str) -> Upstream {
        upstream_of("round_robin", extra)
    }

    fn upstream_of(algorithm: &str, extra: &str) -> Upstream {
        let mut text = format!("[[upstreams]]\nname = \"u\"\nalgorithm = \"{algorithm}\"\n");
        for port in 1..=3 {
            text.push_str(&format!(
                "[[upstreams.backends]]\naddress = \"127.0.0.1:{port}\"\n"
            ));
        }
        text.push_str("[upstreams.health]\nkind = \"tcp\"\ninterval = \"1h\"\n");
        text.push_str(extra);
        Config::from_toml(&text).unwrap().upstreams.remove(0)
    }

    /// A pool over `upstream` with a shard on each serving worker.
    async fn pool_on(workers: &Workers, upstream: Upstream) -> Pool {
        let args = PoolArgs {
            upstream,
            seed: Some(7),
            metrics: Metrics::new(),
            drain: Duration::from_secs(1),
        };
        Pool::spawn_on(args, workers.serving()).await.unwrap()
    }

    /// `n` picks asked one after another on worker `w` (a retry for `retry`): the port of
    /// each backend picked, or why none was.
    async fn picks_on(
        workers: &Workers,
        w: usize,
        pool: &Pool,
        n: u64,
        retry: Option<&'static str>,
    ) -> Vec<Result<String, NoBackend>> {
        let pool = pool.clone();
        let asking = async move {
            let mut out = Vec::new();
            for key in 0..n {
                let answer = pool
                    .ask(key, &[], retry, Instant::now())
                    .expect("the pool runs");
                let answer = tokio::time::timeout(PATIENCE, answer)
                    .await
                    .expect("answered in time")
                    .expect("answered");
                out.push(answer.map(|l| l.authority().rsplit(':').next().unwrap().to_string()));
            }
            out
        };
        workers.handles()[w].spawn(asking).await.unwrap()
    }

    fn ports(picks: &[Result<String, NoBackend>]) -> Vec<&str> {
        picks
            .iter()
            .map(|p| p.as_deref().expect("a backend"))
            .collect()
    }

    /// A worker's first tries go round every backend, in the algorithm's order.
    #[tokio::test]
    async fn a_workers_first_tries_go_round_the_backends() {
        let workers = Workers::start(2).unwrap();
        let pool = pool_on(&workers, upstream("")).await;
        let picks = picks_on(&workers, 1, &pool, 6, None).await;
        let ports = ports(&picks);
        assert_eq!(
            ports[..3],
            ports[3..],
            "round robin's turn goes on: {ports:?}"
        );
        let mut distinct = ports[..3].to_vec();
        distinct.sort();
        assert_eq!(distinct, ["1", "2", "3"]);
        pool.actor().stop(None);
    }

    /// A change made through the pool (the admin API's drain) reaches the shards before the
    /// pool answers it.
    #[tokio::test]
    async fn a_backend_drained_through_the_pool_is_left_out_by_the_shards() {
        let workers = Workers::start(2).unwrap();
        let pool = pool_on(&workers, upstream("")).await;
        let drained = ractor::call!(pool.actor(), |reply| PoolMsg::SetState {
            address: "127.0.0.1:2".into(),
            state: AdminState::Drain,
            reply,
        })
        .unwrap();
        assert_eq!(drained, Ok(()));
        let picks = picks_on(&workers, 1, &pool, 6, None).await;
        assert!(!ports(&picks).contains(&"2"), "{picks:?}");
        pool.actor().stop(None);
    }

    /// A backend's breaker opening, as its actor reports it to the pool, reaches the shards.
    #[tokio::test]
    async fn a_breaker_that_opens_reaches_the_shards() {
        let workers = Workers::start(2).unwrap();
        let up = upstream("");
        let decay = up.adaptive.ewma_decay;
        let pool = pool_on(&workers, up).await;
        let now = Instant::now();
        let mut view = BackendView::fresh(true, Duration::from_millis(10), decay, now);
        view.circuit = CircuitState::Open {
            until: now + Duration::from_secs(3600),
        };
        pool.actor().cast(PoolMsg::View { id: 0, view }).unwrap();
        // The pool's next answer comes after it handled the view and shared it.
        let _ = ractor::call!(pool.actor(), PoolMsg::Status).unwrap();
        let picks = picks_on(&workers, 1, &pool, 6, None).await;
        assert!(!ports(&picks).contains(&"1"), "{picks:?}");
        pool.actor().stop(None);
    }

    /// A backend's new latency estimate, which moves no backend in or out of rotation, reaches
    /// the shards too, with the others of its `SHARE_PERIOD`: their weights follow the pool's.
    #[tokio::test]
    async fn a_new_estimate_reaches_the_shards() {
        let workers = Workers::start(2).unwrap();
        let up = upstream_of("adaptive", "");
        let decay = up.adaptive.ewma_decay;
        let pool = pool_on(&workers, up).await;
        let count = |picks: &[Result<String, NoBackend>]| {
            ports(picks).iter().filter(|p| **p == "1").count()
        };
        let even = picks_on(&workers, 1, &pool, 300, None).await;
        assert!(count(&even) > 60, "alike, a third each: {even:?}");
        let now = Instant::now();
        let slow = BackendView {
            recent: Recent::Answered,
            ..BackendView::fresh(true, Duration::from_secs(1), decay, now)
        };
        pool.actor()
            .cast(PoolMsg::View { id: 0, view: slow })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = picks_on(&workers, 1, &pool, 300, None).await;
        assert!(
            count(&after) < 30,
            "100 times slower, it gets a small share: {} of 300",
            count(&after)
        );
        pool.actor().stop(None);
    }

    /// Retries go to the pool, whose budget counts the first tries the shards handed out.
    #[tokio::test]
    async fn retries_go_to_the_pool_whose_budget_counts_the_shards_first_tries() {
        let workers = Workers::start(2).unwrap();
        let retry = "[upstreams.retry]\nbudget_ratio = 0.5\nbudget_min_per_sec = 0\n";
        let pool = pool_on(&workers, upstream(retry)).await;
        let refused = picks_on(&workers, 1, &pool, 1, Some("connect")).await;
        assert_eq!(refused, [Err(NoBackend::BudgetExhausted)], "no request yet");
        let status = ractor::call!(pool.actor(), PoolMsg::Status).unwrap();
        assert_eq!(status.retries_budget_exhausted, 1, "the pool refused it");
        let firsts = picks_on(&workers, 1, &pool, 10, None).await;
        assert_eq!(ports(&firsts).len(), 10);
        let granted = picks_on(&workers, 1, &pool, 5, Some("connect")).await;
        assert!(
            granted.iter().all(Result::is_ok),
            "half of 10 first tries: {granted:?}"
        );
        let over = picks_on(&workers, 1, &pool, 1, Some("connect")).await;
        assert_eq!(over, [Err(NoBackend::BudgetExhausted)]);
        pool.actor().stop(None);
    }
}
