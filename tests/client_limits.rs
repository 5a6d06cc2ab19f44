//! Client connection limits over real sockets: a slow header is cut (slowloris), an idle
//! keep-alive connection is closed, and a request in flight is never cut however long it takes;
//! a head too large is 431, a URI too long 414, a body too large 413 (declared, read ahead or
//! streamed); connections over `max_connections` wait their turn; a client that leaves with its
//! request in flight ends that request's exchange with the backend.

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

/// A backend that answers `/slow` never: it reports when the request arrived and when its
/// connection was closed. Anything else (a health probe) is answered at once.
async fn hanging_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if !head.starts_with(b"GET /slow") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = tx.send("request");
                // Until the proxy lets go of this exchange (bounded by the test's patience).
                let _ = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await;
                let _ = tx.send("closed");
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_client_that_leaves_ends_its_requests_exchange() {
    let (backend, mut seen) = hanging_backend().await;
    let mut cfg = config(&format!(
        "[[upstreams]]\nname = \"web\"\n[upstreams.timeouts]\nresponse = \"600s\"\n\
         request = \"600s\"\n[[upstreams.backends]]\naddress = \"{backend}\"\n"
    ));
    cfg.listen.idle_timeout = Duration::from_secs(600);
    let server = start(&cfg).await;
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let next = tokio::time::timeout(PATIENCE, seen.recv()).await.unwrap();
    assert_eq!(next, Some("request"));
    let left = tokio::time::Instant::now();
    drop(s);
    // Without noticing, fulcrum would wait out the response timeout (600 s).
    let next = tokio::time::timeout(PATIENCE, seen.recv()).await;
    assert_eq!(
        next,
        Ok(Some("closed")),
        "the backend's exchange outlived its client"
    );
    assert!(
        left.elapsed() < Duration::from_secs(5),
        "{:?}",
        left.elapsed()
    );
    server.shutdown().await;
}

/// Sends `raw` on a fresh connection and reads the status line of the answer.
async fn status_line(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let answer = raw_exchange(addr, raw).await;
    answer.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn a_head_over_the_limit_is_431() {
    let bs = backends(1).await;
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.listen.max_header_bytes = 8192;
    let server = start(&cfg).await;
    let big = "x".repeat(10_000);
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let line = status_line(server.proxy_addr(), raw.as_bytes()).await;
    assert!(line.starts_with("HTTP/1.1 431"), "{line}");
    // Under the limit passes.
    let small = "x".repeat(4_000);
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {small}\r\nConnection: close\r\n\r\n");
    let line = status_line(server.proxy_addr(), raw.as_bytes()).await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert_eq!(bs[0].requests(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_uri_over_the_limit_is_414() {
    let bs = backends(1).await;
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.listen.max_uri_bytes = 1000;
    let server = start(&cfg).await;
    let c = client();
    let long = format!("/{}", "a".repeat(1000));
    let a = get(&c, server.proxy_addr(), &long, None).await;
    assert_eq!(a.status, 414, "{}", a.body);
    assert!(a.body.contains("longer than 1000 bytes"), "{}", a.body);
    let fits = format!("/{}", "a".repeat(998));
    assert_eq!(get(&c, server.proxy_addr(), &fits, None).await.status, 200);
    assert_eq!(bs[0].requests(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_however_it_arrives() {
    let bs = backends(1).await;
    // Bodies over 100 bytes are streamed rather than read ahead: both paths are covered.
    let mut cfg = one_upstream(
        "round_robin",
        &bs,
        &[],
        "[upstreams.retry]\nreplay_body_limit = 100",
    );
    cfg.listen.max_body_bytes = 1000;
    let server = start(&cfg).await;
    let addr = server.proxy_addr();
    let body = "b".repeat(5000);
    // Declared too large: refused before any backend is asked.
    let raw = format!(
        "POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{body}"
    );
    let line = status_line(addr, raw.as_bytes()).await;
    assert!(line.starts_with("HTTP/1.1 413"), "declared: {line}");
    assert_eq!(bs[0].requests(), 0);
    // Chunked, found too large while streaming to the backend.
    let chunk = "c".repeat(500);
    let mut raw =
        "POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_string();
    for _ in 0..4 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");
    let line = status_line(addr, raw.as_bytes()).await;
    assert!(line.starts_with("HTTP/1.1 413"), "streamed: {line}");
    // The backend is not blamed for the client's body.
    let status = pool_status(&server).await;
    assert_eq!(status.backends[0].circuit_state, "closed");
    assert_eq!(status.backends[0].success_rate, 1.0);
    // Chunked, found too large while read ahead (the replay limit is larger than the body limit).
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.listen.max_body_bytes = 1000;
    let server2 = start(&cfg).await;
    let line = status_line(server2.proxy_addr(), raw.as_bytes()).await;
    assert!(line.starts_with("HTTP/1.1 413"), "read ahead: {line}");
    // Within the limit passes whole.
    let fits = "d".repeat(1000);
    let raw = format!(
        "POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{fits}"
    );
    let line = status_line(addr, raw.as_bytes()).await;
    assert!(line.starts_with("HTTP/1.1 200"), "fits: {line}");
    server.shutdown().await;
    server2.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_one() {
    let bs = backends(1).await;
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.listen.max_connections = 2;
    let server = start(&cfg).await;
    let addr = server.proxy_addr();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    // The third connects (the kernel queues it) but is not served while two are open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served over the cap");
    drop(held.pop());
    let n = tokio::time::timeout(PATIENCE, third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    server.shutdown().await;
}
