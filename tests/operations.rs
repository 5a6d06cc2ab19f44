//! Day-one operations on the real binary: a graceful shutdown on SIGTERM (the request in flight
//! completes, new connections are refused, exit 0), and SIGHUP reloading the file (an invalid
//! one is refused with its reason, and fulcrum serves on).

mod common;

use common::binary::{binary_config, message, Fulcrum};
use common::*;
use loadtest::Fault;
use nix::sys::signal::Signal;
use std::time::Duration;

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let bs = backends(1).await;
    bs[0].set_health_fault(Fault::OK);
    let (f, proxy) = Fulcrum::start(&binary_config(&bs, ""), "info").await;
    let c = client();
    assert_eq!(get(&c, proxy, "/", None).await.status, 200);
    bs[0].set_fault(Fault::latency(Duration::from_millis(1500)));
    let before = bs[0].requests();
    let slow = tokio::spawn(async move { get(&client(), proxy, "/slow", None).await });
    bs[0].wait_requests(before + 1).await;
    f.signal(Signal::SIGTERM);
    let mut f = f;
    f.until(|e| message(e).starts_with("listener closed") && e["fields"]["listener"] == "proxy")
        .await;
    // The listener is closed at once: a new connection is refused.
    let refused = tokio::net::TcpStream::connect(proxy).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );
    // The request that was in flight gets its whole answer.
    let a = tokio::time::timeout(PATIENCE, slow)
        .await
        .expect("the slow request ends")
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "hello from b0\n");
    let (log, status) = f.wait().await;
    assert!(status.success(), "{status}");
    assert!(log.iter().any(|e| message(e) == "fulcrum stopped"));
}

#[tokio::test]
async fn sighup_reloads_the_file_and_refuses_an_invalid_one() {
    let bs = backends(2).await;
    let (mut f, proxy) = Fulcrum::start(&binary_config(&bs[..1], ""), "info").await;
    let c = client();
    assert_eq!(
        get(&c, proxy, "/", None).await.backend.as_deref(),
        Some("b0")
    );

    f.rewrite(&binary_config(&bs, ""));
    f.signal(Signal::SIGHUP);
    let e = f.until(|e| message(e) == "config reloaded").await;
    assert_eq!(e["level"], "INFO", "{e}");
    let mut b1 = 0;
    for _ in 0..6 {
        let a = get(&c, proxy, "/", None).await;
        assert_eq!(a.status, 200);
        b1 += usize::from(a.backend.as_deref() == Some("b1"));
    }
    assert!(b1 > 0, "the backend added by the reload takes traffic");

    f.rewrite(&binary_config(&bs, "").replace("weight = 1", "weight = -1"));
    f.signal(Signal::SIGHUP);
    let e = f
        .until(|e| message(e).starts_with("config reload refused"))
        .await;
    let reason = e["fields"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("upstreams[0].backends[0].weight"), "{e}");
    assert_eq!(get(&c, proxy, "/", None).await.status, 200);
    f.stop().await;
}
