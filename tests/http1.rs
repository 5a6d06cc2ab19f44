//! HTTP/1.1 as clients write it, over a raw socket: pipelined requests (one with a small
//! body), a chunked body between plain requests (fulcrum's own server hands it to hyper's and
//! takes the connection back), HEAD, `Connection: close`, and a backend's answer without a
//! length, which reaches the client chunked.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads until `text` has arrived `times` times in all that was read.
async fn until_seen(s: &mut TcpStream, text: &str, times: usize) -> String {
    let mut out = Vec::new();
    let seen = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&out).matches(text).count() < times {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(seen.is_ok(), "waited for {times} of {text:?}, got {out}");
    out
}

#[tokio::test]
async fn one_connection_serves_pipelined_bodied_and_plain_requests_in_order() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    // A plain request and one with a small body, in one write: fulcrum's own server reads both.
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    // In order: the sink's answer (the body's length) last.
    let two = until_seen(&mut s, "\r\n\r\n5\n", 1).await;
    assert_eq!(two.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{two}");
    assert!(
        two.contains("\r\n\r\nhello from b0\nHTTP/1.1 200 OK\r\n"),
        "{two}"
    );
    // A chunked body, which hyper reads.
    s.write_all(
        b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let sink = until_seen(&mut s, "\r\n\r\n3\n", 1).await;
    assert!(sink.starts_with("HTTP/1.1 200 OK\r\n"), "{sink}");
    // Long enough for hyper to park the connection: the next request is fulcrum's again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let last = until_closed(&mut s).await;
    assert!(last.starts_with("HTTP/1.1 200 OK\r\n"), "{last}");
    assert!(last.contains("\r\nconnection: close\r\n"), "{last}");
    assert!(last.ends_with("\r\n\r\nhello from b0\n"), "{last}");
    assert_eq!(bs[0].requests(), 4);
    server.shutdown().await;
}

#[tokio::test]
async fn a_head_request_gets_its_length_but_no_body() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let both = until_closed(&mut s).await;
    let (head, get) = both
        .split_once("\r\n\r\n")
        .map(|(h, rest)| (h, rest.to_string()))
        .unwrap_or_else(|| panic!("no head: {both}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{both}");
    assert!(head.contains("\r\ncontent-length: 14"), "{both}");
    // The next bytes are the GET's answer, not a body.
    assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{both}");
    assert!(get.ends_with("\r\n\r\nhello from b0\n"), "{both}");
    server.shutdown().await;
}

/// A backend that answers every request (health probes too) with a chunked body.
async fn chunked_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    // A chunk of 26 bytes: its size is "1a", not "26".
                    let answer: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                        5\r\nhello\r\n1a\r\n abcdefghijklmnopqrstuvwxy\r\n0\r\n\r\n";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_answer_without_a_length_reaches_the_client_chunked() {
    let addr = chunked_backend().await;
    let server = start(&config(&format!(
        "[[upstreams]]\nname = \"web\"\n[[upstreams.backends]]\naddress = \"{addr}\"\n"
    )))
    .await;
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut s).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{answer}");
    assert!(!head.contains("content-length"), "{answer}");
    assert_eq!(dechunk(body), "hello abcdefghijklmnopqrstuvwxy", "{answer}");
    server.shutdown().await;
}

/// The data of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            assert_eq!(rest, "\r\n", "the last chunk ends the body");
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}
