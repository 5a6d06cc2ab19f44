//! Retries and timeouts over real sockets: what a client sees when one backend fails, counted at
//! the backends where it matters (no duplicates, no backend tried twice, the budget holds).

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use loadtest::Fault;
use std::time::Duration;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn success(records: &[Record]) -> f64 {
    records.iter().filter(|r| r.status == 200).count() as f64 / records.len() as f64
}

/// Keeps every backend in rotation whatever happens: no probe or breaker takes one out, so the
/// retries alone must hide the fault.
fn no_ejection() -> Tuning {
    Tuning {
        algorithm: "round_robin",
        health: "interval = \"60s\"\nunhealthy_threshold = 1000\n".into(),
        breaker: "consecutive_failures = 1000000\nconsecutive_connect_failures = 1000000\n\
                  minimum_requests = 1000000\n"
            .into(),
        ..Tuning::default()
    }
}

#[tokio::test]
async fn dead_every_get_succeeds() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    let server = start(&tuned(&bs, &Tuning::default())).await;
    paced(server.proxy_addr(), 100, secs(0.3)).await;
    bs[1].set_fault(Fault::dead());
    let records = paced(server.proxy_addr(), 100, secs(2.0)).await;
    assert_eq!(
        success(&records),
        1.0,
        "{:?}",
        records.iter().find(|r| r.status != 200)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn errors_half_503_still_99_percent_succeed() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[2].set_fault(Fault::errors(0.5, 503));
    // Round robin and no ejection: a third of the requests meet the fault first.
    let server = start(&tuned(&bs, &no_ejection())).await;
    let records = paced(server.proxy_addr(), 100, secs(3.0)).await;
    assert!(success(&records) >= 0.99, "success {}", success(&records));
    let s = pool_status(&server).await;
    assert!(
        s.retries.get("status").copied().unwrap_or(0) >= 20,
        "{:?}",
        s.retries
    );
    server.shutdown().await;
}

#[tokio::test]
async fn reset_still_99_percent_succeed() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[1].set_fault(Fault::reset());
    let server = start(&tuned(&bs, &no_ejection())).await;
    let records = paced(server.proxy_addr(), 100, secs(3.0)).await;
    assert!(success(&records) >= 0.99, "success {}", success(&records));
    server.shutdown().await;
}

#[tokio::test]
async fn hang_still_99_percent_succeed_and_none_waits_past_one_timeout() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    let t = Tuning {
        timeouts: "connect = \"200ms\"\nresponse = \"500ms\"\n".into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    paced(server.proxy_addr(), 100, secs(0.3)).await;
    bs[1].set_fault(Fault::hang());
    let records = paced(server.proxy_addr(), 100, secs(3.0)).await;
    assert!(success(&records) >= 0.99, "success {}", success(&records));
    // A request caught by the hung backend waits out its response timeout, then one retry.
    let slowest = records.iter().map(|r| r.took).max().unwrap();
    assert!(slowest < secs(0.5 + 0.4), "waited {slowest:?}");
    server.shutdown().await;
}

async fn post(addr: std::net::SocketAddr, body: &'static str) -> Answer {
    let req = Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, client().request(req))
        .await
        .unwrap()
        .unwrap();
    collect(resp).await
}

#[tokio::test]
async fn a_post_that_reached_a_resetting_backend_is_not_retried() {
    let bs = backends(2).await;
    bs[0].set_fault(Fault::reset());
    let server = start(&tuned(&bs, &no_ejection())).await;
    // round_robin starts with b0.
    let a = post(server.proxy_addr(), "order #1").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{a:?}");
    assert_eq!(
        (bs[0].requests(), bs[1].requests()),
        (1, 0),
        "the POST went twice"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_post_whose_connection_was_refused_is_retried() {
    let bs = backends(2).await;
    bs[0].set_fault(Fault::dead());
    let server = start(&tuned(&bs, &no_ejection())).await;
    for _ in 0..20 {
        let a = post(server.proxy_addr(), "order").await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
    }
    // Each POST reached a backend exactly once. First tries go round both backends (the
    // worker's shard picks them); retries are the pool's. So every other POST met the dead b0
    // first and was retried on b1.
    assert_eq!(bs[1].requests(), 20);
    let s = pool_status(&server).await;
    assert_eq!(
        s.retries.get("connect-failure").copied(),
        Some(10),
        "{:?}",
        s.retries
    );
    server.shutdown().await;
}

#[tokio::test]
async fn no_backend_is_tried_twice_for_one_request() {
    let bs = backends(3).await;
    for b in &bs {
        b.set_fault(Fault::errors(1.0, 503));
    }
    let t = Tuning {
        timeouts: "response = \"1s\"\n".into(),
        ..no_ejection()
    };
    let mut cfg = tuned(&bs, &t);
    // More attempts than backends, and budget to spare: only the exclusion stops the tries.
    cfg.upstreams[0].retry.attempts = 5;
    cfg.upstreams[0].retry.budget_min_per_sec = 10_000;
    let server = start(&cfg).await;
    let c = client();
    for _ in 0..30 {
        let a = get(&c, server.proxy_addr(), "/", None).await;
        // The last backend's own 503 comes back as it is.
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(a.body.starts_with("error from b"), "{}", a.body);
    }
    let counts: Vec<u64> = bs.iter().map(loadtest::Backend::requests).collect();
    assert_eq!(counts, vec![30, 30, 30]);
    server.shutdown().await;
}

#[tokio::test]
async fn the_budget_stops_a_retry_storm() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    for b in &bs {
        b.set_fault(Fault::errors(1.0, 503));
    }
    let mut cfg = tuned(&bs, &no_ejection());
    let retry = &mut cfg.upstreams[0].retry;
    retry.attempts = 2;
    retry.budget_ratio = 0.2;
    retry.budget_min_per_sec = 1;
    let server = start(&cfg).await;
    let records = paced(server.proxy_addr(), 100, secs(2.0)).await;
    let requests = records.len() as u64;
    let tries: u64 = bs.iter().map(loadtest::Backend::requests).sum();
    // (1 + ratio) × requests + the floor over the budget's 10 s window.
    let bound = (1.2 * requests as f64) as u64 + 10;
    assert!(
        tries >= requests && tries <= bound,
        "{tries} tries for {requests} requests"
    );
    let s = pool_status(&server).await;
    assert!(s.retries_budget_exhausted > 0, "{s:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_response_failing_mid_body_is_not_retried() {
    let bs = backends(2).await;
    let server = start(&tuned(&bs, &no_ejection())).await;
    let req = Request::get(format!(
        "http://{}/truncate?bytes=1000",
        server.proxy_addr()
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0;
    let mut broke = false;
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap() {
        match frame {
            Ok(f) => got += f.into_data().map_or(0, |d| d.len()),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    // The client sees the connection end after the half that was sent: nothing spliced on.
    assert!(broke, "the body ended cleanly");
    assert_eq!(got, 500);
    assert_eq!(bs[0].requests() + bs[1].requests(), 1, "retried");
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_replay_limit_is_not_retried_and_is_counted() {
    let bs = backends(2).await;
    bs[0].set_fault(Fault::dead());
    let mut cfg = tuned(&bs, &no_ejection());
    cfg.upstreams[0].retry.replay_body_limit = 16;
    let server = start(&cfg).await;
    // round_robin: the first try goes to the dead b0; a refused connect could be retried, but
    // this body was too large to keep.
    let a = post(server.proxy_addr(), "a body longer than sixteen bytes").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    // A small one is kept and retried.
    let a = post(server.proxy_addr(), "small").await;
    assert_eq!(a.status, StatusCode::OK);
    let a = post(server.proxy_addr(), "small").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(bs[1].requests(), 2);
    let s = pool_status(&server).await;
    assert_eq!(s.retries_off_body_too_large, 1, "{s:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_pool_idle_below_the_backend_keep_alive_never_meets_a_closing_connection() {
    let _timed = one_at_a_time().await;
    let bs = backends(1).await;
    // The backend drops connections idle for 80 ms; fulcrum's pool lets them go after 40 ms.
    // (With the pool's idle above the backend's keep-alive, a request can be written on a
    // connection the backend is closing; a POST then fails, since nothing shows the backend
    // did not process it.)
    bs[0].set_keep_alive_timeout(Some(Duration::from_millis(80)));
    let mut cfg = tuned(&bs, &no_ejection());
    cfg.upstreams[0].timeouts.idle = Duration::from_millis(40);
    let server = start(&cfg).await;
    for i in 0..40u64 {
        // Gaps of 20 to 100 ms: some reuse a pooled connection, some find it expired.
        tokio::time::sleep(Duration::from_millis(20 + (i * 37) % 80)).await;
        let a = post(server.proxy_addr(), "once").await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {a:?}");
    }
    // POSTs, never duplicated: each reached the backend exactly once.
    assert_eq!(bs[0].requests(), 40);
    server.shutdown().await;
}
