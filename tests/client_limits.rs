//! Client connection limits over real sockets: a slow header is cut (slowloris), an idle
//! keep-alive connection is closed, and a request in flight is never cut however long it takes.

mod common;

use common::*;
use loadtest::Fault;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server_with(
    header: Duration,
    idle: Duration,
    bs: &[loadtest::Backend],
) -> fulcrum::server::Server {
    let mut cfg = one_upstream("round_robin", bs, &[], "");
    cfg.listen.header_read_timeout = header;
    cfg.listen.idle_timeout = idle;
    start(&cfg).await
}

/// Reads until the server closes the connection; what it sent.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_header_sent_too_slowly_is_cut() {
    let bs = backends(1).await;
    // Idle far beyond the test's patience: only the header clock can close it.
    let server = server_with(Duration::from_millis(300), Duration::from_secs(600), &bs).await;
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    until_closed(&mut s).await;
    assert_eq!(bs[0].requests(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let bs = backends(1).await;
    // Header clock far beyond the test's patience: only the idle clock can close it.
    let server = server_with(Duration::from_secs(600), Duration::from_millis(300), &bs).await;
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello from b0\n"), "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_in_flight_is_never_cut() {
    let bs = backends(1).await;
    bs[0].set_fault(Fault::latency(Duration::from_millis(900)));
    let server = server_with(Duration::from_millis(200), Duration::from_millis(200), &bs).await;
    let c = client();
    for _ in 0..2 {
        let a = get(&c, server.proxy_addr(), "/", None).await;
        assert_eq!(a.status, 200);
    }
    server.shutdown().await;
}
