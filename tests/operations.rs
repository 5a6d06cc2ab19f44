//! Day-one operations on the real binary: a graceful shutdown on SIGTERM (the request in flight
//! completes, new connections are refused, exit 0).

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
