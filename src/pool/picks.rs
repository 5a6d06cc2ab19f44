//! How the request path asks a pool for a backend. A first try on a worker with a shard of the
//! pool is picked there and then, from the shard ([`super::shard`]). Any other pick (a retry,
//! or a first try on a thread without a shard) is queued for the pool actor, which is nudged
//! only when no nudge is on its way (see [`super::batch`]) and answers every queued pick when
//! the nudge comes, in the order they came, each on its own reply channel: what a busy proxy
//! saves there is ractor's cost per message (the boxed message, the actor's select over its
//! ports, the panic guard), paid once per batch instead of once per request.

use super::actor::{NoBackend, PoolActor, PoolArgs, PoolMsg};
use super::batch::{Batch, Nudge};
use super::lease::Lease;
use super::shard::{self, ShardActor, ShardArgs, ShardMsg};
use crate::policy::balance::BackendId;
use ractor::{Actor, ActorRef, SpawnErr};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a pick answers.
pub type PickAnswer = Result<Lease, NoBackend>;

/// A pick's answer, as [`Pool::ask`] hands it back: at hand when this thread's shard picked it,
/// else on its way from the pool actor. Awaited, it gives the answer, or `None` when the pool
/// actor went before answering. An answer at hand takes no channel: a first try costs no
/// allocation for its reply.
#[derive(Debug)]
pub enum Asked {
    /// Picked in place; taken by the first poll.
    Here(Option<PickAnswer>),
    /// Queued for the pool actor.
    Queued(oneshot::Receiver<PickAnswer>),
}

impl Future for Asked {
    type Output = Option<PickAnswer>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Asked::Here(answer) => Poll::Ready(answer.take()),
            Asked::Queued(answer) => Pin::new(answer).poll(cx).map(Result::ok),
        }
    }
}

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

/// A pool's shard as the pool reaches it.
#[derive(Debug)]
pub struct Shard {
    pub(crate) actor: ActorRef<ShardMsg>,
    /// It exited: the pool sends it nothing more.
    pub(crate) gone: AtomicBool,
}

/// A pool's shards, one per serving worker thread.
pub type Shards = Arc<[Shard]>;

/// Numbers the pools of this process, which their shards are found by.
static POOLS: AtomicU64 = AtomicU64::new(0);

/// A running pool actor as the proxy holds it: its ref, for every message, its pick queue, and
/// the number its shards are found by.
#[derive(Debug, Clone)]
pub struct Pool {
    actor: ActorRef<PoolMsg>,
    picks: Arc<Picks>,
    id: u64,
}

impl Pool {
    /// Starts a pool actor (unlinked; it links its backends' actors to itself), without shards.
    pub async fn spawn(args: PoolArgs) -> Result<Pool, SpawnErr> {
        Pool::spawn_on(args, &[]).await
    }

    /// Starts a pool actor on this runtime and a shard of it on each of `workers` that is a
    /// current-thread runtime, linked to it. (A shard's actor must run on the thread whose
    /// requests read it; on a multi-thread runtime nothing holds it to one, and that runtime's
    /// picks go to the pool actor.)
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
        let pool = Pool {
            actor,
            picks,
            id: POOLS.fetch_add(1, Ordering::Relaxed),
        };
        let workers: Vec<&Handle> = workers
            .iter()
            .filter(|w| w.runtime_flavor() == RuntimeFlavor::CurrentThread)
            .collect();
        if workers.is_empty() {
            return Ok(pool);
        }
        match pool.start_shards(&deposits, seed, &workers).await {
            Ok(()) => Ok(pool),
            Err(e) => {
                // Nothing is left running of a pool that could not start whole: the shards
                // that did start, like its backends' actors, are its linked children.
                pool.actor.stop_children(None);
                pool.actor.stop(None);
                Err(e)
            }
        }
    }

    /// Starts this pool's shards on `workers` and hands them to the pool actor.
    async fn start_shards(
        &self,
        deposits: &Arc<AtomicU64>,
        seed: Option<u64>,
        workers: &[&Handle],
    ) -> Result<(), SpawnErr> {
        let failed = |e: &dyn std::fmt::Display| SpawnErr::StartupFailed(e.to_string().into());
        let actor = &self.actor;
        let table = ractor::call!(actor, PoolMsg::Table).map_err(|e| failed(&e))?;
        let mut shards = Vec::with_capacity(workers.len());
        for (n, worker) in workers.iter().enumerate() {
            let args = ShardArgs {
                pool: self.id,
                table: table.clone(),
                deposits: deposits.clone(),
                rng: match seed {
                    Some(s) => SmallRng::seed_from_u64(s ^ (n as u64 + 1).rotate_left(32)),
                    None => SmallRng::from_os_rng(),
                },
            };
            let pool = actor.get_cell();
            let (shard, _) = worker
                .spawn(async move { Actor::spawn_linked(None, ShardActor, args, pool).await })
                .await
                .map_err(|e| failed(&e))??;
            shards.push(Shard {
                actor: shard,
                gone: AtomicBool::new(false),
            });
        }
        let started: Shards = shards.into();
        // The pool sends them the slots again as it takes them on: whatever changed since the
        // table above reaches them. Waited for: ractor hands a supervisor its children's exits
        // ahead of its messages, and an exit of a shard the pool does not know yet would go
        // unnoticed.
        ractor::call!(actor, PoolMsg::Shards, started).map_err(|e| failed(&e))
    }

    /// The actor, for the messages other than picks.
    pub fn actor(&self) -> &ActorRef<PoolMsg> {
        &self.actor
    }

    /// Asks for a backend for one try: `key` is the request's affinity key, `exclude` the
    /// backends it already tried, `retry` the reason when it is a retry, `now` the caller's
    /// reading of the clock (as [`PoolMsg::Pick`]). The answer is at hand when this thread's
    /// shard picked it, else queued for the pool actor; `None` when the pool actor, asked, is
    /// gone.
    pub fn ask(
        &self,
        key: u64,
        exclude: &[BackendId],
        retry: Option<&'static str>,
        now: Instant,
    ) -> Option<Asked> {
        if retry.is_none() {
            if let Some(picked) = shard::pick_here(self.id, key, exclude, now) {
                return Some(Asked::Here(Some(picked)));
            }
        }
        let (reply, answer) = oneshot::channel();
        let request = PickRequest {
            key,
            exclude: exclude.to_vec(),
            retry,
            now,
            reply,
        };
        if self.picks.push(request, true) == Nudge::Now && self.actor.cast(PoolMsg::Picks).is_err()
        {
            // The pick stays queued, unanswered, and its receiver goes with the caller's return.
            self.picks.unnudge();
            return None;
        }
        Some(Asked::Queued(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::breaker::CircuitState;
    use crate::pool::BackendView;
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

    /// A backend out by its probes takes nothing; once a probe passes again it is rising, and
    /// takes its `half_open_requests` trial requests ahead of the algorithm, and no more until
    /// they prove it.
    #[tokio::test(start_paused = true)]
    async fn a_rising_backend_takes_its_trial_requests_first_and_only_those() {
        let pool = round_robin_over_three().await;
        let decay = Duration::from_secs(10);
        let port = |l: &Lease| l.authority().rsplit(':').next().unwrap().to_string();
        let view = |rising| BackendView {
            rising,
            ..BackendView::fresh(false, Duration::from_millis(10), decay, Instant::now())
        };
        let mut held = Vec::new();
        pool.actor()
            .cast(PoolMsg::View {
                id: 2,
                view: view(false),
            })
            .unwrap();
        for key in 0..6 {
            let lease = pool.ask(key, &[], None, Instant::now()).unwrap();
            held.push(lease.await.unwrap().unwrap());
        }
        assert!(held.iter().all(|l| port(l) != "3"), "out by its probes");
        pool.actor()
            .cast(PoolMsg::View {
                id: 2,
                view: view(true),
            })
            .unwrap();
        let mut ports = Vec::new();
        for key in 0..6 {
            let lease = pool.ask(key, &[], None, Instant::now()).unwrap();
            let lease = lease.await.unwrap().unwrap();
            ports.push(port(&lease));
            held.push(lease);
        }
        assert_eq!(ports[..3], ["3", "3", "3"], "{ports:?}");
        assert!(!ports[3..].contains(&"3".to_string()), "{ports:?}");
        pool.actor().stop(None);
    }

    /// Rising, but its breaker open (a relapse, whose open period passing probes do not cut
    /// short): it takes nothing, not even trials, and takes no place under the ejection cap.
    #[tokio::test(start_paused = true)]
    async fn a_rising_backend_whose_breaker_is_open_takes_nothing() {
        let pool = round_robin_over_three().await;
        let now = Instant::now();
        let view = BackendView {
            rising: true,
            circuit: CircuitState::Open {
                until: now + Duration::from_secs(3600),
            },
            ..BackendView::fresh(
                false,
                Duration::from_millis(10),
                Duration::from_secs(10),
                now,
            )
        };
        pool.actor().cast(PoolMsg::View { id: 2, view }).unwrap();
        for key in 0..6 {
            let lease = pool.ask(key, &[], None, Instant::now()).unwrap();
            let lease = lease.await.unwrap().unwrap();
            assert!(!lease.authority().ends_with(":3"), "{}", lease.authority());
        }
        pool.actor().stop(None);
    }

    /// A pool over one backend, with a shard on each of `workers`.
    async fn one_backend_on(workers: &[Handle]) -> Pool {
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
        Pool::spawn_on(args, workers).await.unwrap()
    }

    /// How a pick asked on this thread was answered: `Some(true)` at once, as a shard picks in
    /// place; `Some(false)` later, by the pool actor; `None` not at all.
    async fn answered(pool: Pool, retry: Option<&'static str>) -> Option<bool> {
        let answer = pool.ask(0, &[], retry, Instant::now())?;
        if let Asked::Here(picked) = answer {
            return matches!(picked, Some(Ok(_))).then_some(true);
        }
        let later = tokio::time::timeout(Duration::from_secs(5), answer).await;
        matches!(later, Ok(Some(Ok(_)))).then_some(false)
    }

    /// On a worker with a shard, a first try is picked there and then, with no message to any
    /// actor; a pick on a thread without a shard is answered by the pool actor. (That retries
    /// go to the pool, whose budget they must fit, `super::shard`'s tests show.)
    #[tokio::test]
    async fn first_tries_are_picked_in_place_where_there_is_a_shard() {
        let workers = crate::workers::Workers::start(2).unwrap();
        let pool = one_backend_on(workers.serving()).await;
        let on_worker_1 = workers.handles()[1].spawn(answered(pool.clone(), None));
        assert_eq!(on_worker_1.await.unwrap(), Some(true), "in place");
        assert_eq!(
            answered(pool.clone(), None).await,
            Some(false),
            "no shard on this thread: by the pool"
        );
        pool.actor().stop(None);
    }

    /// A pool started on this current-thread runtime has a shard here too, which picks its
    /// first tries in place; once that shard's actor stops, the pool actor answers them.
    #[tokio::test]
    async fn a_stopped_shards_picks_are_answered_by_the_pool() {
        let pool = one_backend_on(&[Handle::current()]).await;
        assert_eq!(answered(pool.clone(), None).await, Some(true), "in place");
        let shards: Vec<_> = pool
            .actor()
            .get_children()
            .into_iter()
            .filter(|c| c.is_message_type_of::<ShardMsg>() == Some(true))
            .collect();
        assert_eq!(shards.len(), 1, "one shard, here");
        shards[0]
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            answered(pool.clone(), None).await,
            Some(false),
            "by the pool, not from the stopped shard's slots"
        );
        pool.actor().stop(None);
    }

    /// On a multi-thread runtime, which may move an actor between its threads, no shard is
    /// started: the pool actor answers every pick.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_thread_runtime_gets_no_shard() {
        let pool = one_backend_on(&[Handle::current()]).await;
        let shards = pool
            .actor()
            .get_children()
            .into_iter()
            .filter(|c| c.is_message_type_of::<ShardMsg>() == Some(true))
            .count();
        assert_eq!(shards, 0);
        // The pool actor may answer on the other thread before the answer is looked at: that
        // it comes at all is what this can tell.
        assert!(answered(pool.clone(), None).await.is_some());
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
