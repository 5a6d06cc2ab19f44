//! The request path over real sockets: balancing, routing, error answers, header rewriting,
//! HTTP/2 from clients, and bodies streamed both ways.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use loadtest::{Backend, Fault};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_backends() {
    let bs = backends(3).await;
    let server = start(&one_upstream("round_robin", &bs, &[1, 5, 1], "")).await;
    let counts = spread(&client(), server.proxy_addr(), 300).await;
    let expected: BTreeMap<String, usize> = [("b0", 100), ("b1", 100), ("b2", 100)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(counts, expected);
    // Counted at the backends too: each got exactly its share, nothing else.
    assert_eq!(
        bs.iter().map(Backend::requests).collect::<Vec<_>>(),
        vec![100, 100, 100]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn weighted_round_robin_honours_weights() {
    let bs = backends(3).await;
    let server = start(&one_upstream("weighted_round_robin", &bs, &[1, 2, 3], "")).await;
    let counts = spread(&client(), server.proxy_addr(), 600).await;
    let expected: BTreeMap<String, usize> = [("b0", 100), ("b1", 200), ("b2", 300)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(counts, expected);
    server.shutdown().await;
}

#[tokio::test]
async fn every_algorithm_serves_through_the_real_path() {
    for algorithm in [
        "adaptive",
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "random",
        "p2c_ewma",
        "consistent_hash",
    ] {
        let bs = backends(3).await;
        let server = start(&one_upstream(algorithm, &bs, &[], "")).await;
        let counts = spread(&client(), server.proxy_addr(), 60).await;
        assert_eq!(
            counts.values().sum::<usize>(),
            60,
            "{algorithm}: {counts:?}"
        );
        assert!(
            counts.keys().all(|k| k.starts_with('b')),
            "{algorithm}: {counts:?}"
        );
        if algorithm == "consistent_hash" {
            // One client IP: one backend.
            assert_eq!(counts.len(), 1, "{counts:?}");
        }
        server.shutdown().await;
    }
}

#[tokio::test]
async fn routes_by_host_and_longest_path_prefix() {
    let bs = backends(4).await;
    let up = |name: &str, hosts: &str, prefix: &str, b: &Backend| {
        format!(
            "[[upstreams]]\nname = \"{name}\"\nhosts = {hosts}\npath_prefix = \"{prefix}\"\n\
             algorithm = \"round_robin\"\n  [[upstreams.backends]]\n  address = \"{}\"\n",
            b.addr()
        )
    };
    let cfg = config(
        &[
            up("site", "[\"*\"]", "/", &bs[0]),
            up("api", "[\"*\"]", "/api", &bs[1]),
            up("shop", "[\"shop.test\"]", "/", &bs[2]),
            up("wild", "[\"*.shop.test\"]", "/", &bs[3]),
        ]
        .concat(),
    );
    let server = start(&cfg).await;
    let c = client();
    let addr = server.proxy_addr();
    let to = |a: Answer| a.backend.unwrap_or_else(|| format!("!{}", a.status));
    assert_eq!(to(get(&c, addr, "/", Some("x.test")).await), "b0");
    assert_eq!(to(get(&c, addr, "/api/v1?q=1", Some("x.test")).await), "b1");
    assert_eq!(to(get(&c, addr, "/", Some("shop.test")).await), "b2");
    assert_eq!(to(get(&c, addr, "/", Some("SHOP.test:8080")).await), "b2");
    assert_eq!(to(get(&c, addr, "/cart", Some("eu.shop.test")).await), "b3");
    // Longest prefix beats a more specific host.
    assert_eq!(to(get(&c, addr, "/api", Some("shop.test")).await), "b1");
    server.shutdown().await;
}

#[tokio::test]
async fn no_matching_upstream_is_404_with_a_reason() {
    let bs = backends(1).await;
    let cfg = config(&format!(
        "[[upstreams]]\nname = \"only\"\nhosts = [\"a.test\"]\npath_prefix = \"/app\"\n{}",
        backend_tables(&bs, &[])
    ));
    let server = start(&cfg).await;
    let c = client();
    let a = get(&c, server.proxy_addr(), "/elsewhere", Some("a.test")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.contains("no upstream matches"), "{}", a.body);
    assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
    let a = get(&c, server.proxy_addr(), "/app", Some("b.test")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(bs[0].requests(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn refused_connection_is_502_without_the_address() {
    let bs = backends(1).await;
    bs[0].set_fault(Fault::dead());
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let a = get(&client(), server.proxy_addr(), "/", None).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(a.body.contains("backend connection failed"), "{}", a.body);
    let port = bs[0].addr().port().to_string();
    assert!(
        !a.body.contains(&port) && !a.body.contains("127.0.0.1"),
        "{}",
        a.body
    );
    server.shutdown().await;
}

#[tokio::test]
async fn no_backend_in_rotation_is_an_immediate_503() {
    let bs = backends(2).await;
    for b in &bs {
        b.set_health_fault(Fault::errors(1.0, 503));
    }
    let health = "[upstreams.health]\ninterval = \"50ms\"\nbackoff_base = \"50ms\"\nunhealthy_threshold = 2\n";
    let server = start(&one_upstream("round_robin", &bs, &[], health)).await;
    // Probe 3 arriving means the pool has handled probe 2: both backends are out.
    for b in &bs {
        tokio::time::timeout(PATIENCE, b.wait_health_requests(3))
            .await
            .unwrap();
    }
    let started = tokio::time::Instant::now();
    let a = get(&client(), server.proxy_addr(), "/", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.body.contains("no backend available"), "{}", a.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(bs.iter().map(Backend::requests).sum::<u64>(), 0);

    // Healthy again: back in rotation after `healthy_threshold` (2) passing probes.
    for b in &bs {
        b.set_health_fault(Fault::OK);
        let seen = b.health_requests();
        tokio::time::timeout(PATIENCE, b.wait_health_requests(seen + 3))
            .await
            .unwrap();
    }
    let a = get(&client(), server.proxy_addr(), "/", None).await;
    assert_eq!(a.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test]
async fn headers_are_rewritten_for_the_backend() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let req = Request::get(format!("http://{}/echo?a=1&b=two", server.proxy_addr()))
        .header("host", "app.test")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = collect(client().request(req).await.unwrap()).await;
    assert_eq!(a.status, StatusCode::OK);
    let echo: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let h = &echo["headers"];
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["uri"], "/echo?a=1&b=two");
    assert_eq!(h["host"][0], "app.test");
    assert_eq!(h["x-custom"][0], "kept");
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "app.test");
    // Each once: fulcrum's values are written beside the client's headers, which lose theirs.
    for once in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "via",
    ] {
        assert_eq!(h[once].as_array().map(Vec::len), Some(1), "{once}: {h}");
    }
    assert_eq!(
        h["x-request-id"][0],
        a.headers["x-request-id"].to_str().unwrap()
    );
    for dropped in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(h.get(dropped).is_none(), "{dropped} forwarded: {h}");
    }
    // Via both ways.
    assert_eq!(h["via"][0], "1.1 fulcrum");
    assert_eq!(a.headers["via"], "1.1 fulcrum");
    server.shutdown().await;
}

#[tokio::test]
async fn host_is_the_backends_when_not_preserved_and_via_can_be_off() {
    let bs = backends(1).await;
    let mut cfg = one_upstream("round_robin", &bs, &[], "preserve_host = false");
    cfg.listen.via = false;
    let server = start(&cfg).await;
    let req = Request::get(format!("http://{}/echo", server.proxy_addr()))
        .header("host", "app.test")
        .header("via", "1.0 edge")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = collect(client().request(req).await.unwrap()).await;
    let echo: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let h = &echo["headers"];
    assert_eq!(h["host"][0], bs[0].addr().to_string());
    // The client's host is still told, as X-Forwarded-Host.
    assert_eq!(h["x-forwarded-host"][0], "app.test");
    assert_eq!(h["via"][0], "1.0 edge");
    assert_eq!(h["via"].as_array().unwrap().len(), 1);
    assert!(a.headers.get("via").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn http2_clients_are_served() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let h2: TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = Request::get(format!("http://{}/echo", server.proxy_addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let a = collect(resp).await;
    assert_eq!(a.status, StatusCode::OK);
    let echo: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    // The backend got HTTP/1.1 with a Host made from the client's :authority.
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["headers"]["via"][0], "2 fulcrum");
    assert_eq!(echo["headers"]["host"][0], server.proxy_addr().to_string());
    server.shutdown().await;
}

const MB20: u64 = 20 * 1024 * 1024;

#[tokio::test]
async fn a_20mb_response_streams_through() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let uri = format!("http://{}/stream?bytes={MB20}&gate=1", server.proxy_addr());
    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(PATIENCE, client().request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    // The backend holds its last chunk until the gate opens: bytes arriving now prove the proxy
    // is not waiting for the whole body.
    while got < 1024 * 1024 {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("first bytes before the last is sent");
        got += frame
            .unwrap()
            .unwrap()
            .into_data()
            .map_or(0, |d| d.len() as u64);
    }
    assert!(bs[0].stream_bytes_sent() < MB20);
    bs[0].open_gate();
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap() {
        got += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, MB20);
    server.shutdown().await;
}

#[tokio::test]
async fn a_20mb_request_body_streams_through() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(ReceiverStream(rx));
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<ReceiverStream>>();
    let req = Request::post(format!("http://{}/sink", server.proxy_addr()))
        .header("content-length", MB20)
        .body(body)
        .unwrap();
    let answer = tokio::spawn(async move { c.request(req).await });
    let chunk = Bytes::from(vec![b'y'; 1024 * 1024]);
    tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    // The backend sees the first megabyte while 19 are still unsent: nothing buffers it all.
    tokio::time::timeout(PATIENCE, bs[0].wait_body_bytes(1))
        .await
        .expect("first bytes reach the backend");
    assert!(bs[0].body_bytes() < MB20);
    for _ in 1..20 {
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(tx);
    let resp = tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let a = collect(resp).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.trim(), MB20.to_string());
    server.shutdown().await;
}

/// An mpsc receiver as a `Stream`, for `StreamBody`.
struct ReceiverStream(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Frame<Bytes>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn admin_and_proxy_listeners_serve_only_their_own() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let c = client();
    // /status on the proxy listener is just a path, proxied to a backend.
    let a = get(&c, server.proxy_addr(), "/status", None).await;
    assert_eq!(a.backend.as_deref(), Some("b0"));
    // The admin listener serves /status and nothing of the proxied traffic.
    let a = get(&c, server.admin_addr(), "/status", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.backend, None);
    for path in ["/", "/echo", "/anything"] {
        let a = get(&c, server.admin_addr(), path, None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(bs[0].requests(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_malformed_request_gets_400_and_the_proxy_serves_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: banana\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(server.proxy_addr())
            .await
            .unwrap();
        s.write_all(garbage).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    }
    assert_eq!(bs[0].requests(), 0);
    let a = get(&client(), server.proxy_addr(), "/", None).await;
    assert_eq!(a.status, StatusCode::OK);
    server.shutdown().await;
}
