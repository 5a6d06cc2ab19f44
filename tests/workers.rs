//! Several worker threads (`runtime.worker_threads`), through the real server and real sockets:
//! connections are served on every worker, each picking through its own shard of the pool, and
//! what the pool learns of a backend reaches every worker.

mod common;

use common::*;
use fulcrum::config::Config;
use fulcrum::server::Server;
use fulcrum::workers::Workers;
use loadtest::Fault;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinSet;

/// Clients that each keep their own connection, so that the server sees as many.
const CLIENTS: usize = 4;

async fn start_on(config: &Config, workers: &Workers) -> Server {
    Server::start_on(config, None, Some(42), workers)
        .await
        .unwrap()
}

/// `CLIENTS` clients, side by side, each sending `n` GETs one after another on its own
/// connection: the answers by backend (non-200 as "!<status>").
async fn side_by_side(server: &Server, n: usize) -> BTreeMap<String, usize> {
    let addr = server.proxy_addr();
    let mut runs = JoinSet::new();
    for _ in 0..CLIENTS {
        runs.spawn(async move { spread(&client(), addr, n).await });
    }
    let mut counts = BTreeMap::new();
    for run in runs.join_all().await {
        for (k, v) in run {
            *counts.entry(k).or_insert(0) += v;
        }
    }
    counts
}

#[tokio::test]
async fn every_backend_serves_the_connections_of_every_worker() {
    let _timed = one_at_a_time().await;
    let workers = Workers::start(2).unwrap();
    let bs = backends(3).await;
    let server = start_on(&one_upstream("round_robin", &bs, &[], ""), &workers).await;
    let counts = side_by_side(&server, 15).await;
    assert_eq!(counts.len(), 3, "only answers from all three: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), CLIENTS * 15);
    assert!(counts.values().all(|&n| n >= 10), "{counts:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_dead_backend_is_left_out_on_every_worker() {
    let _timed = one_at_a_time().await;
    let workers = Workers::start(2).unwrap();
    let bs = backends(3).await;
    let t = Tuning {
        breaker: "consecutive_failures = 5\nopen_base = \"10s\"\nopen_max = \"10s\"\n".into(),
        ..Tuning::default()
    };
    let server = start_on(&tuned(&bs, &t), &workers).await;
    let before = side_by_side(&server, 10).await;
    assert_eq!(before.len(), 3, "{before:?}");
    bs[1].set_fault(Fault::dead());
    // Long enough for its failures or its probes to take it out; retries keep the failures
    // from the clients.
    let _detecting = side_by_side(&server, 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let picks = pool_status(&server).await.backends[1].picks;
    let after = side_by_side(&server, 20).await;
    let dead = bs[1].id().to_string();
    assert!(
        after.keys().all(|k| *k != dead && !k.starts_with('!')),
        "{after:?}"
    );
    let s = pool_status(&server).await;
    assert_eq!(s.backends[1].picks, picks, "picked by a worker: {s:#?}");
    assert!(!s.backends[1].healthy, "{s:#?}");
    server.shutdown().await;
}
