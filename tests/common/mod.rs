//! Shared helpers of the integration tests: loadtest backends on ephemeral ports, a fulcrum
//! started in-process from a TOML text, and a small HTTP client.
#![allow(dead_code)]

pub mod binary;

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

/// Held by tests that measure shares and timings under paced traffic, so that the tests of one
/// file do not compete for the CPU with each other: on a 2-core CI machine, nine fault scenarios
/// at 100 rps each at once skew latency estimates by more than the faults do.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the other timed tests of this file to finish; hold the guard to the test's end.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    TIMED.lock().await
}

/// Numbers the config files of one test process.
static FILES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A config file in the temp dir, removed when dropped; rewritten between reloads.
pub struct ConfigFile(pub std::path::PathBuf);

impl ConfigFile {
    pub fn new(text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "fulcrum-test-{}-{}.toml",
            std::process::id(),
            FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }

    pub fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

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

/// One request of a paced run.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was scheduled, from the start of the run.
    pub sent: Duration,
    /// Its status; 0 if the connection to fulcrum failed.
    pub status: u16,
    /// The backend that answered (`x-backend`).
    pub backend: Option<String>,
    /// From its scheduled send time to the whole answer.
    pub took: Duration,
}

/// Sends `rate` GETs a second for `duration`, each on its own schedule (a slow answer does not
/// delay the next request), and returns them in schedule order. Bounded: `rate × duration`
/// requests, each given at most [`PATIENCE`].
pub async fn paced(addr: SocketAddr, rate: u32, duration: Duration) -> Vec<Record> {
    let c = client();
    let n = (f64::from(rate) * duration.as_secs_f64()).round() as u32;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for k in 0..n {
        let at = start + period * k;
        tokio::time::sleep_until(at).await;
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let answer = tokio::time::timeout(PATIENCE, async {
                let resp = c.request(req).await.ok()?;
                Some(collect(resp).await)
            })
            .await
            .ok()
            .flatten();
            Record {
                sent: at - start,
                status: answer.as_ref().map_or(0, |a| a.status.as_u16()),
                backend: answer.and_then(|a| a.backend),
                took: at.elapsed(),
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Requests answered by `backend` among `records`.
pub fn served_by(records: &[Record], backend: &str) -> usize {
    records
        .iter()
        .filter(|r| r.backend.as_deref() == Some(backend))
        .count()
}

/// The tables of an upstream tuned for tests: every timescale short, so a fault plays out in a
/// second or two. Each field is the whole body of its table.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub algorithm: &'static str,
    pub health: String,
    pub breaker: String,
    pub adaptive: String,
    pub timeouts: String,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            algorithm: "adaptive",
            health: "interval = \"100ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 2\n\
                     unhealthy_threshold = 2\nbackoff_base = \"50ms\"\nbackoff_max = \"400ms\"\n"
                .into(),
            breaker: "consecutive_failures = 5\nfailure_rate = 0.5\nminimum_requests = 20\n\
                      window = \"2s\"\nopen_base = \"500ms\"\nopen_max = \"5s\"\n\
                      half_open_requests = 3\n"
                .into(),
            adaptive: "ewma_decay = \"1s\"\nslow_start = \"1s\"\nmin_weight_ratio = 0.05\n".into(),
            timeouts: "connect = \"200ms\"\nresponse = \"1s\"\n".into(),
        }
    }
}

/// One upstream `web` over `backends`, tuned by `t`.
pub fn tuned(backends: &[Backend], t: &Tuning) -> Config {
    config(&format!(
        "[[upstreams]]\nname = \"web\"\nalgorithm = \"{}\"\n{}\
         [upstreams.health]\n{}[upstreams.circuit_breaker]\n{}\
         [upstreams.adaptive]\n{}[upstreams.timeouts]\n{}",
        t.algorithm,
        backend_tables(backends, &[]),
        t.health,
        t.breaker,
        t.adaptive,
        t.timeouts
    ))
}

/// The pool's view of upstream `web`, asked of its actor.
pub async fn pool_status(server: &Server) -> fulcrum::pool::UpstreamStatus {
    let pool = server.pool("web").expect("upstream web");
    match pool
        .call(fulcrum::pool::PoolMsg::Status, Some(PATIENCE))
        .await
        .expect("pool answers")
    {
        ractor::rpc::CallResult::Success(s) => s,
        other => panic!("no status: {other:?}"),
    }
}

/// Sends `raw` on a new connection to `addr`, then reads until the server closes it; what it
/// answered. A write the server cut short (it answered before reading everything) is fine.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(&mut s, raw).await;
    until_closed(&mut s).await
}

/// Reads until the server closes the connection; what it sent.
pub async fn until_closed(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(s, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}
