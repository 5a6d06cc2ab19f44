//! How the request path asks a pool for a backend: a [`Pool`] queues the pick and nudges the
//! actor only when no nudge is on its way (see [`super::batch`]); the actor answers every
//! queued pick when the nudge comes, in the order they came, each on its own reply channel.
//! The picks still go through an actor, which alone touches the algorithm's state; what a
//! busy proxy saves is ractor's cost per message (the boxed message, the actor's select over
//! its ports, the panic guard), paid once per batch instead of once per request.
//!
//! With several worker threads, a first try asked on worker `n > 0` goes to the pool's shard on
//! that worker ([`super::shard`]); retries, and every pick of worker 0, go to the pool actor.

use super::actor::{NoBackend, PoolActor, PoolArgs, PoolMsg};
use super::batch::{Batch, Nudge};
use super::lease::Lease;
use super::shard::{ShardActor, ShardArgs, ShardMsg};
use crate::policy::balance::BackendId;
use crate::workers;
use ractor::{Actor, ActorRef, SpawnErr};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a pick answers.
pub type PickAnswer = Result<Lease, NoBackend>;

/// One queued pick, as [`PoolMsg::Pick`] carries one.
#[derive(Debug)]
pub(crate) struct PickRequest {
    pub(crate) key: u64,
    pub(crate) exclude: Vec<BackendId>,
    pub(crate) retry: Option<&'static str>,
    pub(crate) now: Instant,
    pub(crate) reply: oneshot::Sender<PickAnswer>,
}

/// A pool's queue of picks not yet answered.
pub(crate) type Picks = Batch<PickRequest>;

/// What a pool actor is started with: its arguments, the queue its [`Pool`] fills, and the
/// counter its shards add their first tries to.
#[derive(Debug)]
pub struct PoolStart {
    pub(crate) args: PoolArgs,
    pub(crate) picks: Arc<Picks>,
    pub(crate) deposits: Arc<AtomicU64>,
}

/// A pool's shard as the request path and the pool reach it.
#[derive(Debug)]
pub struct Shard {
    pub(crate) actor: ActorRef<ShardMsg>,
    pub(crate) picks: Arc<Picks>,
    /// It failed: its worker's picks go to the pool actor.
    pub(crate) gone: AtomicBool,
}

/// A pool's shards, the one of worker `n` at `n - 1`.
pub type Shards = Arc<[Shard]>;

/// A running pool actor as the proxy holds it: its ref, for every message, its pick queue, and
/// its shards.
#[derive(Debug, Clone)]
pub struct Pool {
    actor: ActorRef<PoolMsg>,
    picks: Arc<Picks>,
    shards: Shards,
}

impl Pool {
    /// Starts a pool actor (unlinked; it links its backends' actors to itself), without shards.
    pub async fn spawn(args: PoolArgs) -> Result<Pool, SpawnErr> {
        Pool::spawn_on(args, &[]).await
    }

    /// Starts a pool actor on this runtime (worker 0) and a shard of it on each of `workers`
    /// (workers 1, 2, ..., in order), linked to it.
    pub async fn spawn_on(args: PoolArgs, workers: &[Handle]) -> Result<Pool, SpawnErr> {
        let picks = Arc::new(Picks::default());
        let deposits = Arc::new(AtomicU64::new(0));
        let seed = args.seed;
        let start = PoolStart {
            args,
            picks: picks.clone(),
            deposits: deposits.clone(),
        };
        let (actor, _) = Actor::spawn(None, PoolActor, start).await?;
        if workers.is_empty() {
            return Ok(Pool {
                actor,
                picks,
                shards: Arc::new([]),
            });
        }
        let mut shards = Vec::with_capacity(workers.len());
        match Pool::start_shards(&actor, &deposits, seed, workers, &mut shards).await {
            Ok(shards) => Ok(Pool {
                actor,
                picks,
                shards,
            }),
            Err(e) => {
                // Nothing is left running of a pool that could not start whole.
                for shard in &shards {
                    shard.actor.stop(None);
                }
                actor.stop(None);
                Err(e)
            }
        }
    }

    /// Starts the shards of the pool `actor` on `workers`, each pushed to `shards` as it
    /// starts, and hands them to the pool.
    async fn start_shards(
        actor: &ActorRef<PoolMsg>,
        deposits: &Arc<AtomicU64>,
        seed: Option<u64>,
        workers: &[Handle],
        shards: &mut Vec<Shard>,
    ) -> Result<Shards, SpawnErr> {
        let failed = |e: &dyn std::fmt::Display| SpawnErr::StartupFailed(e.to_string().into());
        let table = ractor::call!(actor, PoolMsg::Table).map_err(|e| failed(&e))?;
        for (n, worker) in workers.iter().enumerate() {
            let args = ShardArgs {
                table: table.clone(),
                picks: Arc::new(Picks::default()),
                deposits: deposits.clone(),
                rng: match seed {
                    Some(s) => SmallRng::seed_from_u64(s ^ (n as u64 + 1).rotate_left(32)),
                    None => SmallRng::from_os_rng(),
                },
            };
            let picks = args.picks.clone();
            let pool = actor.get_cell();
            let (shard, _) = worker
                .spawn(async move { Actor::spawn_linked(None, ShardActor, args, pool).await })
                .await
                .map_err(|e| failed(&e))??;
            shards.push(Shard {
                actor: shard,
                picks,
                gone: AtomicBool::new(false),
            });
        }
        let started: Shards = std::mem::take(shards).into();
        // The pool sends them the slots again as it takes them on: whatever changed since the
        // table above reaches them. Waited for: ractor hands a supervisor its children's exits
        // ahead of its messages, and an exit of a shard the pool does not know yet would leave
        // that shard's picks unanswered.
        if let Err(e) = ractor::call!(actor, PoolMsg::Shards, started.clone()) {
            for shard in started.iter() {
                shard.actor.stop(None);
            }
            return Err(failed(&e));
        }
        Ok(started)
    }

    /// The actor, for the messages other than picks.
    pub fn actor(&self) -> &ActorRef<PoolMsg> {
        &self.actor
    }

    /// Asks for a backend for one try: `key` is the request's affinity key, `exclude` the
    /// backends it already tried, `retry` the reason when it is a retry, `now` the caller's
    /// reading of the clock (as [`PoolMsg::Pick`]). The answer comes on the receiver; `None`
    /// when the actor is gone, and a receiver that closes unanswered when it goes before
    /// answering.
    pub fn ask(
        &self,
        key: u64,
        exclude: &[BackendId],
        retry: Option<&'static str>,
        now: Instant,
    ) -> Option<oneshot::Receiver<PickAnswer>> {
        let (reply, answer) = oneshot::channel();
        let request = PickRequest {
            key,
            exclude: exclude.to_vec(),
            retry,
            now,
            reply,
        };
        let worker = workers::current();
        let shard = match retry {
            None if worker > 0 => self.shards.get(worker - 1),
            _ => None,
        };
        match shard {
            Some(shard) if !shard.gone.load(Ordering::Acquire) => {
                if shard.picks.push(request, true) == Nudge::Now
                    && shard.actor.cast(ShardMsg::Picks).is_err()
                {
                    shard.gone.store(true, Ordering::Release);
                }
                // Gone now, or gone before the pick was queued: the pool takes what it left.
                if shard.gone.load(Ordering::Acquire) && !self.hand_over(shard) {
                    return None;
                }
            }
            _ => {
                if !self.queue(request) {
                    return None;
                }
            }
        }
        Some(answer)
    }

    /// Queues `request` for the pool actor; false when the actor is gone.
    fn queue(&self, request: PickRequest) -> bool {
        if self.picks.push(request, true) == Nudge::Now && self.actor.cast(PoolMsg::Picks).is_err()
        {
            // The pick stays queued, unanswered, and its receiver goes with the caller's return.
            self.picks.unnudge();
            return false;
        }
        true
    }

    /// Moves the picks a failed shard left queued to the pool actor; false when that is gone too.
    fn hand_over(&self, shard: &Shard) -> bool {
        let mut alive = true;
        shard.picks.drain(|p| alive &= self.queue(p));
        alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::telemetry::metrics::Metrics;
    use std::time::Duration;

    async fn round_robin_over_three() -> Pool {
        let mut text = String::from("[[upstreams]]\nname = \"u\"\nalgorithm = \"round_robin\"\n");
        for port in 1..=3 {
            text.push_str(&format!(
                "[[upstreams.backends]]\naddress = \"127.0.0.1:{port}\"\n"
            ));
        }
        // Probes an hour away: nothing here dials the backends.
        text.push_str("[upstreams.health]\nkind = \"tcp\"\ninterval = \"1h\"\n");
        let config = Config::from_toml(&text).unwrap();
        Pool::spawn(PoolArgs {
            upstream: config.upstreams[0].clone(),
            seed: Some(1),
            metrics: Metrics::new(),
            drain: Duration::from_secs(1),
        })
        .await
        .unwrap()
    }

    /// Picks asked before the actor runs go in one batch, and are answered in the order asked:
    /// round robin hands them the backends in turn.
    #[tokio::test(start_paused = true)]
    async fn queued_picks_are_all_answered_in_the_order_asked() {
        let pool = round_robin_over_three().await;
        let now = Instant::now();
        let asked: Vec<_> = (0..6)
            .map(|key| pool.ask(key, &[], None, now).expect("the actor runs"))
            .collect();
        let mut ports = Vec::new();
        for answer in asked {
            let lease = answer.await.expect("answered").expect("a backend");
            ports.push(lease.authority().rsplit(':').next().unwrap().to_string());
        }
        let first: Vec<_> = ports[..3].to_vec();
        assert_eq!(
            ports[3..],
            first[..],
            "round robin's turn goes on: {ports:?}"
        );
        let mut distinct = first.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "each backend once per turn: {ports:?}");
        pool.actor().stop(None);
    }

    /// An excluded backend is not picked, through the queue as through `PoolMsg::Pick`.
    #[tokio::test(start_paused = true)]
    async fn a_queued_pick_honours_its_exclusions() {
        let pool = round_robin_over_three().await;
        let now = Instant::now();
        let first = pool.ask(0, &[], None, now).unwrap().await.unwrap().unwrap();
        let tried = [first.id()];
        for key in 0..6 {
            let lease = pool
                .ask(key, &tried, None, now)
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            assert_ne!(lease.id(), first.id());
        }
        pool.actor().stop(None);
    }

    /// A shard that takes messages and answers nothing: what is queued for it stays queued.
    struct Silent;

    impl Actor for Silent {
        type Msg = ShardMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _: ActorRef<ShardMsg>,
            _: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    /// On worker 1, a first try goes to that worker's shard; a retry, and any pick on worker 0,
    /// to the pool actor.
    #[tokio::test]
    async fn first_tries_go_to_the_workers_shard_and_retries_to_the_pool() {
        let workers = crate::workers::Workers::start(2).unwrap();
        let owner = round_robin_over_three().await;
        let (silent, _) = Actor::spawn(None, Silent, ()).await.unwrap();
        let queue = Arc::new(Picks::default());
        let pool = Pool {
            shards: Arc::new([Shard {
                actor: silent.clone(),
                picks: queue.clone(),
                gone: AtomicBool::new(false),
            }]),
            ..owner.clone()
        };
        let ask = |retry: Option<&'static str>| {
            let pool = pool.clone();
            async move {
                let answer = pool.ask(0, &[], retry, Instant::now()).unwrap();
                tokio::time::timeout(Duration::from_millis(500), answer)
                    .await
                    .map(|a| a.unwrap().is_ok())
            }
        };
        let on_worker_1 = workers.handles()[1].spawn(ask(None)).await.unwrap();
        assert!(on_worker_1.is_err(), "left to the silent shard");
        let mut queued = 0;
        queue.drain(|_| queued += 1);
        assert_eq!(queued, 1);
        let retry = workers.handles()[1].spawn(ask(Some("connect")));
        assert_eq!(retry.await.unwrap(), Ok(true), "answered by the pool");
        assert_eq!(ask(None).await, Ok(true), "worker 0 asks the pool");
        silent.stop(None);
        owner.actor().stop(None);
    }

    /// When a shard fails, the picks it left queued and its worker's picks from then on are
    /// answered by the pool.
    #[tokio::test]
    async fn a_failed_shards_picks_are_answered_by_the_pool() {
        let workers = crate::workers::Workers::start(2).unwrap();
        let mut text = String::from("[[upstreams]]\nname = \"u\"\n");
        text.push_str("[[upstreams.backends]]\naddress = \"127.0.0.1:1\"\n");
        text.push_str("[upstreams.health]\nkind = \"tcp\"\ninterval = \"1h\"\n");
        let config = Config::from_toml(&text).unwrap();
        let args = PoolArgs {
            upstream: config.upstreams[0].clone(),
            seed: Some(1),
            metrics: Metrics::new(),
            drain: Duration::from_secs(1),
        };
        let pool = Pool::spawn_on(args, &workers.handles()[1..]).await.unwrap();
        let shard = &pool.shards[0];
        // A pick queued for it before it goes, with no nudge: only a hand-over answers it.
        let (reply, left) = oneshot::channel();
        let request = PickRequest {
            key: 0,
            exclude: Vec::new(),
            retry: None,
            now: Instant::now(),
            reply,
        };
        assert_eq!(shard.picks.push(request, false), Nudge::Later);
        shard
            .actor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        let left = tokio::time::timeout(Duration::from_secs(5), left).await;
        assert!(matches!(left, Ok(Ok(Ok(_)))), "{left:?}");
        assert!(shard.gone.load(Ordering::Acquire));
        let asked = {
            let pool = pool.clone();
            workers.handles()[1].spawn(async move {
                let answer = pool.ask(0, &[], None, Instant::now()).unwrap();
                tokio::time::timeout(Duration::from_secs(5), answer).await
            })
        };
        assert!(matches!(asked.await.unwrap(), Ok(Ok(Ok(_)))));
        pool.actor().stop(None);
    }

    /// Once the actor is gone, asking fails at once rather than waiting for an answer.
    #[tokio::test(start_paused = true)]
    async fn asking_a_stopped_pool_fails_at_once() {
        let pool = round_robin_over_three().await;
        pool.actor()
            .stop_and_wait(None, Some(Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(pool.ask(0, &[], None, Instant::now()).is_none());
        assert!(
            pool.ask(1, &[], None, Instant::now()).is_none(),
            "and again"
        );
    }
}
