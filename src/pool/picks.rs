//! How the request path asks a pool actor for a backend: a [`Pool`] queues the pick and nudges
//! the actor only when no nudge is on its way (see [`super::batch`]); the actor answers every
//! queued pick when the nudge comes, in the order they came, each on its own reply channel.
//! The picks still go through the actor, which alone touches the algorithm's state; what a
//! busy proxy saves is ractor's cost per message (the boxed message, the actor's select over
//! its ports, the panic guard), paid once per batch instead of once per request.

use super::actor::{NoBackend, PoolActor, PoolArgs, PoolMsg};
use super::batch::{Batch, Nudge};
use super::lease::Lease;
use crate::policy::balance::BackendId;
use ractor::{Actor, ActorRef, SpawnErr};
use std::sync::Arc;
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

/// What a pool actor is started with: its arguments, and the queue its [`Pool`] fills.
#[derive(Debug)]
pub struct PoolStart {
    pub(crate) args: PoolArgs,
    pub(crate) picks: Arc<Picks>,
}

/// A running pool actor as the proxy holds it: its ref, for every message, and its pick queue.
#[derive(Debug, Clone)]
pub struct Pool {
    actor: ActorRef<PoolMsg>,
    picks: Arc<Picks>,
}

impl Pool {
    /// Starts a pool actor (unlinked; it links its backends' actors to itself).
    pub async fn spawn(args: PoolArgs) -> Result<Pool, SpawnErr> {
        let picks = Arc::new(Picks::default());
        let start = PoolStart {
            args,
            picks: picks.clone(),
        };
        let (actor, _) = Actor::spawn(None, PoolActor, start).await?;
        Ok(Pool { actor, picks })
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
        if self.picks.push(request, true) == Nudge::Now && self.actor.cast(PoolMsg::Picks).is_err()
        {
            // The pick stays queued, unanswered, and its receiver goes with this return.
            self.picks.unnudge();
            return None;
        }
        Some(answer)
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
