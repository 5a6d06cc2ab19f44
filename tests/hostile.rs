//! What a hostile client or a broken backend tries, over real sockets: bodies that lie about
//! their framing or never finish, clients that never read, backends that stall mid-body or send
//! bytes nobody asked for, requests with no Host or two, upgrades nobody enabled, forwarding
//! headers from strangers, half an HTTP/2 preface. None may crash a request, charge a backend
//! for a client's doing, or hold a connection for ever.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The server's Prometheus text.
async fn metrics_text(server: &fulcrum::server::Server) -> String {
    let c = client();
    get(&c, server.admin_addr(), "/metrics", None).await.body
}

/// The value of one series in a Prometheus text (0 when absent).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A chunked request body of `size` bytes in 10,000-byte chunks, with its last chunk.
fn chunked(size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(10_000);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'x', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

const CHUNKED_POST: &str =
    "POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_chunked_upload_is_200_within_the_body_limit_and_413_past_it() {
    let bs = backends(1).await;
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.listen.max_body_bytes = 100_000;
    let server = start(&cfg).await;
    // Past the replay limit (64 KiB), so both stream to the backend after what was read ahead.
    for (size, status) in [(70_000, "200"), (1_200_000, "413")] {
        let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
        let (mut rd, mut wr) = s.split();
        let body = chunked(size);
        let write = async {
            let _ = wr.write_all(CHUNKED_POST.as_bytes()).await;
            let _ = wr.write_all(&body).await;
        };
        let read = async {
            let mut out = Vec::new();
            let _ = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let ((), answer) = tokio::join!(write, read);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{size} bytes: {answer}"
        );
        if status == "200" {
            assert!(answer.ends_with("\r\n\r\n70000\n"), "{answer}");
        }
    }
    let text = metrics_text(&server).await;
    assert_eq!(series(&text, "fulcrum_panics_total"), 0.0, "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_and_never_the_backends_failure() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    // Well-formed for 70 KB (past the replay limit, so the body streams to the backend), then a
    // chunk size that is not hex. Six of these opened a healthy backend's breaker once.
    let mut raw = CHUNKED_POST.as_bytes().to_vec();
    let good = chunked(70_000);
    raw.extend_from_slice(&good[..good.len() - 5]);
    raw.extend_from_slice(b"zz\r\nbad\r\n0\r\n\r\n");
    for i in 0..6 {
        let answer = raw_exchange(server.proxy_addr(), &raw).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "request {i}: {answer}");
    }
    // A malformed body caught while it is read ahead is 400 as well.
    let mut small = CHUNKED_POST.as_bytes().to_vec();
    small.extend_from_slice(b"5\r\nhello\r\nzz\r\n");
    let answer = raw_exchange(server.proxy_addr(), &small).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "read ahead: {answer}");
    let s = pool_status(&server).await;
    assert_eq!(s.backends[0].circuit_state, "closed", "{s:#?}");
    assert_eq!(s.backends[0].circuit_opens, 0, "{s:#?}");
    assert_eq!(s.backends[0].success_rate, 1.0, "{s:#?}");
    let text = metrics_text(&server).await;
    assert_eq!(
        series(
            &text,
            "fulcrum_upstream_failures_total{upstream=\"web\",backend=\""
        ),
        0.0
    );
    assert!(!text.contains("kind=\"reset\"} 1"), "{text}");
    // The backend still serves.
    let c = client();
    assert_eq!(get(&c, server.proxy_addr(), "/", None).await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_408_and_the_connection_closed() {
    let bs = backends(1).await;
    let mut cfg = one_upstream(
        "round_robin",
        &bs,
        &[],
        "[upstreams.timeouts]\nrequest = \"1s\"",
    );
    cfg.listen.body_read_timeout = Duration::from_millis(400);
    let server = start(&cfg).await;
    let addr = server.proxy_addr();
    // One byte every 200 ms: never silent for the body read timeout, but not done within the
    // request's 1 s.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.split();
    let dribble = async {
        for _ in 0..100 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let read = async {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let answer = tokio::select! {
        answer = read => answer,
        () = dribble => String::from("the client sent its whole body"),
    };
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Two bytes, then silence: cut after the body read timeout, well before the request's 1 s.
    let started = Instant::now();
    let answer = {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nxx")
            .await
            .unwrap();
        until_closed(&mut s).await
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A large body declared and dribbled: its first 64 KiB are read ahead before any backend
    // is asked, so it never held one.
    let answer = {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nxx")
            .await
            .unwrap();
        until_closed(&mut s).await
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(bs[0].requests(), 0, "a backend was asked");
    // Streamed (past the replay limit), the same: the client's, not the backend's.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 70_000]).await.unwrap();
    let answer = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "streamed: {answer}");
    let status = pool_status(&server).await;
    assert_eq!(status.backends[0].success_rate, 1.0, "{status:#?}");
    assert_eq!(status.backends[0].circuit_opens, 0, "{status:#?}");
    let text = metrics_text(&server).await;
    assert_eq!(
        series(&text, "fulcrum_client_timeouts_total{kind=\"body\"}"),
        4.0,
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let bs = backends(1).await;
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.listen.send_timeout = Duration::from_millis(300);
    let server = start(&cfg).await;
    // 64 MiB: far more than the socket buffers on both sides hold.
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(b"GET /stream?bytes=67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Read nothing for a while: the connection must be closed under us.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "still open");
    assert!(total < 64 << 20, "got all {total} bytes");
    let text = metrics_text(&server).await;
    assert_eq!(
        series(&text, "fulcrum_client_timeouts_total{kind=\"send\"}"),
        1.0,
        "{text}"
    );
    // The backend's stream was let go of: the lease is back.
    let status = pool_status(&server).await;
    assert_eq!(status.backends[0].inflight, 0, "{status:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_and_charged() {
    let bs = backends(1).await;
    let server = start(&one_upstream(
        "round_robin",
        &bs,
        &[],
        "[upstreams.timeouts]\nread = \"300ms\"",
    ))
    .await;
    // The backend sends all but its last chunk, then waits for a gate nobody opens.
    let started = Instant::now();
    let answer = raw_exchange(
        server.proxy_addr(),
        b"GET /stream?bytes=200000&chunk=50000&gate=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..40]);
    assert!(answer.len() < 200_000, "{}", answer.len());
    assert!(took < Duration::from_secs(5), "{took:?}");
    let text = metrics_text(&server).await;
    let failures = format!(
        "fulcrum_upstream_failures_total{{upstream=\"web\",backend=\"{}\",kind=\"timeout\"}}",
        bs[0].addr()
    );
    assert_eq!(series(&text, &failures), 1.0, "{text}");
    let status = pool_status(&server).await;
    assert!(status.backends[0].success_rate < 1.0, "{status:#?}");
    assert_eq!(status.backends[0].inflight, 0, "{status:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_with_two_hosts_or_none_is_400_and_reaches_no_backend() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let addr = server.proxy_addr();
    for raw in [
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        // Through hyper's server too (a chunked body is hyper's to read).
        "POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    ] {
        let answer = raw_exchange(addr, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{raw:?}: {answer}");
    }
    assert_eq!(bs[0].requests(), 0);
    // HTTP/1.0 needs no Host.
    let answer = raw_exchange(addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn only_websocket_upgrades_unless_an_upstream_allows_more() {
    let bs = backends(1).await;
    let h2c = "GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: upgrade, http2-settings\r\n\
               Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(h2c.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Served as a plain request: the test backend answers an upgrade nobody asked for with 426.
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert_eq!(bs[0].upgraded_open(), 0);
    // WebSocket is on by default.
    let ws =
        "GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(ws.as_bytes()).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    server.shutdown().await;
    // Opted in per upstream, h2c is joined like any upgrade.
    let server = start(&one_upstream(
        "round_robin",
        &bs,
        &[],
        "upgrades = [\"websocket\", \"h2c\"]",
    ))
    .await;
    let mut s = TcpStream::connect(server.proxy_addr()).await.unwrap();
    s.write_all(h2c.as_bytes()).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    server.shutdown().await;
}

/// The JSON the test backend's `/echo` answered with.
async fn echoed(addr: SocketAddr, extra: &str) -> serde_json::Value {
    let raw = format!("GET /echo HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n");
    let answer = raw_exchange(addr, raw.as_bytes()).await;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_do_not_reach_the_backend() {
    let bs = backends(1).await;
    let spoof = "Forwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n";
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let doc = echoed(server.proxy_addr(), spoof).await;
    let headers = &doc["headers"];
    assert!(headers.get("forwarded").is_none(), "{doc}");
    assert!(headers.get("x-real-ip").is_none(), "{doc}");
    // X-Forwarded-For is appended to: its last entry is the peer fulcrum saw.
    assert_eq!(headers["x-forwarded-for"][0], "6.6.6.6, 127.0.0.1", "{doc}");
    server.shutdown().await;
    // From a trusted proxy, they pass.
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.listen.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let server = start(&cfg).await;
    let doc = echoed(server.proxy_addr(), spoof).await;
    assert_eq!(doc["headers"]["forwarded"][0], "for=6.6.6.6", "{doc}");
    assert_eq!(doc["headers"]["x-real-ip"][0], "6.6.6.6", "{doc}");
    server.shutdown().await;
}

/// A backend on a raw socket: each connection's requests are answered from `answers` in turn,
/// one answer per request read (a request is taken as a head ending in a blank line).
async fn scripted_backend(answers: Vec<Vec<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut scripts = answers.into_iter();
        while let Ok((mut s, _)) = listener.accept().await {
            let script = scripts.next().unwrap_or_default();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                for parts in script {
                    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let at = String::from_utf8_lossy(&seen).find("\r\n\r\n").unwrap_or(0);
                    seen.drain(..at + 4);
                    let _ = s.write_all(&parts).await;
                }
                // Hold the connection open until the other side closes it.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A config with one upstream over the backend at `addr`, probed by TCP connect only.
fn over(addr: SocketAddr, extra: &str) -> fulcrum::config::Config {
    config(&format!(
        "[[upstreams]]\nname = \"web\"\nalgorithm = \"round_robin\"\n{extra}\n\
         [upstreams.health]\nkind = \"tcp\"\n\
         [[upstreams.backends]]\naddress = \"{addr}\"\n"
    ))
}

/// A backend whose first connection answers `first`, then `late` 30 ms later, to every
/// request; its other connections answer honestly.
async fn late_bytes_backend(first: &'static [u8]) -> SocketAddr {
    let late = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!";
    let honest = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfine!";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = listener.accept().await {
            n += 1;
            let first_connection = n == 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if first_connection => {
                            let _ = s.write_all(first).await;
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            let _ = s.write_all(late).await;
                        }
                        Ok(_) => {
                            let _ = s.write_all(honest).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn bytes_after_a_bodiless_response_never_reach_the_next_client() {
    let c = client();
    // A 204 that declares a body, and sends one a moment later: the next request, at once,
    // must not go on that connection.
    let addr = late_bytes_backend(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").await;
    let server = start(&over(addr, "")).await;
    assert_eq!(get(&c, server.proxy_addr(), "/", None).await.status, 204);
    for _ in 0..3 {
        let a = get(&c, server.proxy_addr(), "/", None).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "fine!"));
    }
    server.shutdown().await;
    // A plain 204, then bytes: the connection they wait on is not used again.
    let addr = late_bytes_backend(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let server = start(&over(addr, "")).await;
    assert_eq!(get(&c, server.proxy_addr(), "/", None).await.status, 204);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let a = get(&c, server.proxy_addr(), "/", None).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "fine!"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_chunk_size_with_a_sign_or_spaces_is_refused() {
    for size in ["+5", " 5 "] {
        let answer = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
        );
        let addr = scripted_backend(vec![vec![answer.into_bytes()]; 8]).await;
        let server = start(&over(addr, "")).await;
        let c = client();
        let req = http::Request::get(format!("http://{}/", server.proxy_addr()))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        // The client never gets the body whole: its connection is cut before the head goes
        // out (fulcrum sends a head with the first of its body) or, had it gone, mid-body.
        let whole = match c.request(req).await {
            Ok(resp) => http_body_util::BodyExt::collect(resp.into_body())
                .await
                .is_ok(),
            Err(_) => false,
        };
        assert!(!whole, "{size:?} accepted");
        server.shutdown().await;
    }
}

/// CPU time process `pid` has used (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ, 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn half_an_http2_preface_costs_no_cpu_while_it_waits() {
    let bs = backends(1).await;
    // The real binary, so that its CPU time is its own and not other tests'.
    let config = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nheader_read_timeout = \"3s\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[upstreams]]\nname = \"web\"\n{}",
        backend_tables(&bs, &[])
    );
    let (fulcrum, addr) = common::binary::Fulcrum::start(&config, "info").await;
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_time(fulcrum.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(fulcrum.pid()) - before;
    // Peeking each socket every millisecond cost 120 ms here (10 × 1,000 wake-ups a second);
    // waiting for bytes, 0 (at the 10 ms resolution of the count).
    assert!(used < Duration::from_millis(50), "{used:?} of CPU in 2 s");
    // The header clock still closes them.
    for mut s in held {
        until_closed(&mut s).await;
    }
    // And a preface that was only slow is served as HTTP/2 still.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        PrefaceDone {
            io: hyper_util::rt::TokioIo::new(s),
            skip: 16,
        },
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    fulcrum.stop().await;
}

/// A client socket on which the first `skip` bytes of the HTTP/2 preface were written by hand:
/// hyper's client writes the whole preface, so as many of its first bytes are swallowed here.
struct PrefaceDone<T> {
    io: T,
    skip: usize,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for PrefaceDone<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for PrefaceDone<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A handler with a bug: it panics on `/panic`, and its body does on `/body-panic`.
struct Fragile;

/// A body that sends a first part, waits a moment (so that the head and that part go out),
/// then panics.
struct PanickingBody {
    sent: bool,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for PanickingBody {
    type Data = bytes::Bytes;
    type Error = fulcrum::proxy::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if !self.sent {
            self.sent = true;
            let part = bytes::Bytes::from_static(b"partial");
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(part))));
        }
        std::task::ready!(std::future::Future::poll(self.pause.as_mut(), cx));
        panic!("a body's bug")
    }
}

impl fulcrum::server::Handler for Fragile {
    type Body = fulcrum::proxy::body::ProxyBody;

    async fn handle(
        &self,
        req: http::Request<fulcrum::server::ClientBody>,
        _: fulcrum::server::Peer,
    ) -> http::Response<Self::Body> {
        use fulcrum::proxy::body::boxed;
        match req.uri().path() {
            "/panic" => panic!("a handler's bug"),
            "/body-panic" => http::Response::new(boxed(PanickingBody {
                sent: false,
                pause: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
            })),
            _ => http::Response::new(boxed(http_body_util::Full::new(bytes::Bytes::from("fine")))),
        }
    }
}

#[tokio::test]
async fn a_panic_answers_500_or_cuts_its_own_connection_and_nothing_else() {
    use fulcrum::connection::{serve, Builders, Limits};
    let metrics = fulcrum::telemetry::metrics::Metrics::new();
    let limits = Limits {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        drain: Duration::from_secs(1),
        max_connections: 100,
        max_header_bytes: 65536,
        body_read: Duration::from_secs(10),
        send: Duration::from_secs(30),
    };
    let builders = std::sync::Arc::new(Builders::new(&limits, &[], metrics.clients()));
    let handler = std::sync::Arc::new(Fragile);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, client)) = listener.accept().await {
            let (h, b, s) = (handler.clone(), builders.clone(), stopped.clone());
            tokio::spawn(serve(stream, client, h, b, s, limits));
        }
    });
    // fulcrum's own HTTP/1.1 server, then hyper's (a chunked body is hyper's to read).
    for raw in [
        "GET /panic HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /panic HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let answer = raw_exchange(addr, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 500"), "{raw:?}: {answer}");
    }
    // Once the head is out, the connection is cut: the client sees a body that breaks off.
    let answer = raw_exchange(addr, b"GET /body-panic HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("partial"), "{answer}");
    assert!(
        !answer.ends_with("\r\n0\r\n\r\n"),
        "the body ended well: {answer}"
    );
    // The worker goes on serving.
    let answer = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("fine"), "{answer}");
    assert_eq!(series(&metrics.render(), "fulcrum_panics_total"), 3.0);
}
