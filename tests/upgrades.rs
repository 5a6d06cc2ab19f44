//! Upgraded connections over real sockets: a WebSocket handshake gets the backend's 101, frames
//! pass both ways byte for byte, the connection counts in flight at its backend until it
//! closes, and a shutdown lets it run until the drain deadline, then closes it.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HANDSHAKE: &str = "GET /upgrade HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\n\
     Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
     Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked WebSocket text frame carrying "hello" (RFC 6455 §5.7).
const FRAME: [u8; 11] = [
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

/// Opens a WebSocket through fulcrum; the stream after the 101, and the 101's head.
async fn open(proxy: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(HANDSHAKE.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut byte))
            .await
            .expect("101 in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).to_lowercase())
}

/// Sends a frame and reads it back.
async fn echo(s: &mut TcpStream) {
    s.write_all(&FRAME).await.unwrap();
    let mut back = [0u8; FRAME.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, FRAME);
}

/// Waits (bounded) until the backend's in-flight count is `n`: a lease is dropped by the
/// tunnel's task just after the sockets close, and nothing announces it.
async fn inflight_becomes(server: &fulcrum::server::Server, n: u32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = pool_status(server).await.backends[0].inflight;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "in flight stayed {now}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_websocket_passes_both_ways_and_counts_in_flight_until_it_closes() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let (mut ws, head) = open(server.proxy_addr()).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    for _ in 0..3 {
        echo(&mut ws).await;
    }
    assert_eq!(bs[0].upgraded_open(), 1);
    assert_eq!(pool_status(&server).await.backends[0].inflight, 1);
    // Plain requests are served beside it.
    assert_eq!(
        get(&client(), server.proxy_addr(), "/", None).await.status,
        200
    );
    drop(ws);
    inflight_becomes(&server, 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_the_backend_refuses_is_an_ordinary_answer() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    // The backend answers 426 to /upgrade without `Connection: upgrade`.
    let a = get(&client(), server.proxy_addr(), "/upgrade", None).await;
    assert_eq!(a.status, 426);
    assert_eq!(pool_status(&server).await.backends[0].inflight, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_open_websocket_run_until_the_drain_deadline() {
    let bs = backends(1).await;
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.listen.drain_timeout = Duration::from_secs(2);
    let server = start(&cfg).await;
    let (mut ws, head) = open(server.proxy_addr()).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let started = tokio::time::Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    // Still served while draining.
    echo(&mut ws).await;
    // Then closed by the deadline.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, ws.read(&mut buf))
        .await
        .expect("closed by the drain deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown ends")
        .unwrap();
}
