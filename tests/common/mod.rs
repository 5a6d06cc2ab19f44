//! Shared helpers of the integration tests: loadtest backends on ephemeral ports, a fulcrum
//! started in-process from a TOML text, and a small HTTP client.
#![allow(dead_code)]

use bytes::Bytes;
use fulcrum::config::Config;
use fulcrum::server::Server;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loadtest::Backend;
use std::net::SocketAddr;
use std::time::Duration;

/// An upper bound for anything a test waits on: generous, since CI machines are slow.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Starts `n` healthy backends named b0, b1, ...
pub async fn backends(n: usize) -> Vec<Backend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Backend::start(&format!("b{i}"), loopback()).await.unwrap());
    }
    out
}

/// `[[upstreams.backends]]` tables for these backends, with the given weights (1 if empty).
pub fn backend_tables(backends: &[Backend], weights: &[u32]) -> String {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "  [[upstreams.backends]]\n  address = \"{}\"\n  weight = {}\n",
                b.addr(),
                weights.get(i).copied().unwrap_or(1)
            )
        })
        .collect()
}

/// A config with ephemeral listeners; `upstreams` is the `[[upstreams]]` part.
pub fn config(upstreams: &str) -> Config {
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ndrain_timeout = \"2s\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{upstreams}"
    );
    match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid: {e}\n{text}"),
    }
}

/// One upstream named `web` over `backends`, with `extra` lines inside the upstream table.
pub fn one_upstream(algorithm: &str, backends: &[Backend], weights: &[u32], extra: &str) -> Config {
    config(&format!(
        "[[upstreams]]\nname = \"web\"\nalgorithm = \"{algorithm}\"\n{extra}\n{}",
        backend_tables(backends, weights)
    ))
}

pub async fn start(config: &Config) -> Server {
    Server::start(config, Some(42)).await.unwrap()
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A buffered answer: status, the `x-backend` header, the body as text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub backend: Option<String>,
    pub body: String,
    pub headers: http::HeaderMap,
}

pub async fn collect(resp: Response<hyper::body::Incoming>) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let backend = headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = tokio::time::timeout(PATIENCE, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body complete")
        .to_bytes();
    Answer {
        status,
        backend,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers,
    }
}

/// GET `http://addr{path}` with an optional Host header.
pub async fn get(client: &TestClient, addr: SocketAddr, path: &str, host: Option<&str>) -> Answer {
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(h) = host {
        req = req.header(http::header::HOST, h);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(PATIENCE, client.request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    collect(resp).await
}

/// Sends `n` GETs to `/` one after another and counts answers by backend (non-200 as "!<status>").
pub async fn spread(
    client: &TestClient,
    addr: SocketAddr,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let a = get(client, addr, "/", None).await;
        let key = if a.status == StatusCode::OK {
            a.backend.unwrap_or_default()
        } else {
            format!("!{}", a.status.as_u16())
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}
