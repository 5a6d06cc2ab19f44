//! The actors through their real messages: leases count requests in flight, and a pool restarts
//! a backend actor that dies while traffic goes on without a failed request.

mod common;

use common::*;
use fulcrum::pool::{Lease, PoolMsg, UpstreamStatus};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use std::time::Duration;

async fn status(pool: &ActorRef<PoolMsg>) -> UpstreamStatus {
    match pool.call(PoolMsg::Status, Some(PATIENCE)).await.unwrap() {
        CallResult::Success(s) => s,
        other => panic!("no status: {other:?}"),
    }
}

async fn pick(pool: &ActorRef<PoolMsg>) -> Lease {
    let answer = pool
        .call(
            |reply| PoolMsg::Pick {
                key: 0,
                exclude: Vec::new(),
                retry: None,
                now: tokio::time::Instant::now(),
                reply,
            },
            Some(PATIENCE),
        )
        .await
        .unwrap();
    match answer {
        CallResult::Success(Ok(lease)) => lease,
        other => panic!("no lease: {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_counts_in_flight_until_dropped() {
    let bs = backends(3).await;
    let server = start(&one_upstream("least_connections", &bs, &[], "")).await;
    let pool = server.pool("web").unwrap();
    let leases = vec![pick(&pool).await, pick(&pool).await, pick(&pool).await];
    // least_connections saw each lease: three picks, three different backends.
    let mut ids: Vec<u64> = leases.iter().map(Lease::id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
    let inflight = |s: &UpstreamStatus| s.backends.iter().map(|b| b.inflight).collect::<Vec<_>>();
    assert_eq!(inflight(&status(&pool).await), vec![1, 1, 1]);
    // The gauge is set from the same count when /metrics is scraped.
    assert_eq!(inflight_gauges(&server).await, vec![1.0, 1.0, 1.0]);
    let fourth = pick(&pool).await;
    assert_eq!(fourth.inflight(), 2);
    drop(leases);
    assert_eq!(fourth.inflight(), 1);
    drop(fourth);
    assert_eq!(inflight(&status(&pool).await), vec![0, 0, 0]);
    assert_eq!(inflight_gauges(&server).await, vec![0.0, 0.0, 0.0]);
    server.shutdown().await;
}

/// `fulcrum_backend_inflight` of each backend, as a scrape of /metrics says, in text order.
async fn inflight_gauges(server: &fulcrum::server::Server) -> Vec<f64> {
    let scrape = get(&client(), server.admin_addr(), "/metrics", None).await;
    assert_eq!(scrape.status, 200);
    scrape
        .body
        .lines()
        .filter(|l| l.starts_with("fulcrum_backend_inflight{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn the_pool_restarts_a_dead_backend_actor_and_no_request_fails() {
    let bs = backends(3).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let pool = server.pool("web").unwrap();
    let addr = server.proxy_addr();

    // Four clients, 60 requests each, running while the actor is killed.
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            let c = client();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..60 {
                    let a = get(&c, addr, "/", None).await;
                    if a.status != http::StatusCode::OK {
                        failures.push(a.status);
                    }
                }
                failures
            })
        })
        .collect();

    tokio::time::timeout(PATIENCE, bs[0].wait_requests(10))
        .await
        .unwrap();
    let actor_of = |id| {
        let pool = pool.clone();
        async move {
            match pool
                .call(|reply| PoolMsg::BackendActor { id, reply }, Some(PATIENCE))
                .await
                .unwrap()
            {
                CallResult::Success(Some(a)) => a,
                other => panic!("no actor: {other:?}"),
            }
        }
    };
    let old = actor_of(0).await;
    old.kill_and_wait(Some(PATIENCE)).await.unwrap();
    let served_at_kill = bs[0].requests();

    let mut failures = Vec::new();
    for t in traffic {
        failures.extend(t.await.unwrap());
    }
    assert!(failures.is_empty(), "clients saw {failures:?}");

    let new = actor_of(0).await;
    assert_ne!(new.get_id(), old.get_id(), "the actor was replaced");
    let s = status(&pool).await;
    assert_eq!(s.backends[0].actor_restarts, 1);
    assert!(s.backends[1..].iter().all(|b| b.actor_restarts == 0));
    // The restarted backend is back in rotation.
    assert!(
        bs[0].requests() > served_at_kill,
        "backend 0 got no traffic after the restart"
    );
    assert_eq!(bs.iter().map(loadtest::Backend::requests).sum::<u64>(), 240);

    // And it folds outcomes again: its figures move with new traffic. A burst, so that it takes
    // several requests before any answers: one slow answer alone is not believed as a peak.
    let before = status(&pool).await.backends[0].ewma_latency_seconds;
    bs[0].set_fault(loadtest::Fault::latency(Duration::from_millis(300)));
    let _ = paced(addr, 100_000, Duration::from_micros(300)).await;
    // Successes reach the backend's actor a moment after they end (they wait to be sent
    // together): the figures move soon after the burst, not at once.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let after = status(&pool).await.backends[0].ewma_latency_seconds;
        if after >= 0.3 && after > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{before} -> {after}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown().await;
}
