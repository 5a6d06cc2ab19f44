//! The fault-injecting backend: an HTTP/1.1 server whose [`Fault`] can be switched while it
//! runs. `/health` follows the traffic fault (less its errors) unless given a fault apart. It counts what it receives, so tests assert at the
//! backend what reached it.
//!
//! Paths: `/health` (200 `ok`), `/echo` (JSON of the request as received: method, URI,
//! headers), `/sink` (reads the body, answers its length), `/stream?bytes=N[&chunk=K][&gate=1]`
//! (N bytes in chunks of K; with `gate=1` the last chunk waits for [`Backend::open_gate`]),
//! `/truncate?bytes=N` (promises N bytes, sends half, then breaks the connection), `/upgrade`
//! (with `Connection: upgrade`, answers 101 to whatever `Upgrade` protocol was asked, WebSocket
//! included, then echoes every byte), anything else: 200 with `x-backend: <id>` and a small body
//! naming the backend.

use crate::fault::{Fault, Mode};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::Rng;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BackendBody = UnsyncBoxBody<Bytes, BoxError>;

/// A running fault-injecting backend. Dropping it stops it.
pub struct Backend {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
}

struct Inner {
    id: String,
    addr: SocketAddr,
    traffic: watch::Sender<Fault>,
    /// A fault set for `/health` apart; `None` follows the traffic fault (see `health_fault`).
    health: watch::Sender<Option<Fault>>,
    requests: watch::Sender<u64>,
    health_requests: watch::Sender<u64>,
    body_bytes: watch::Sender<u64>,
    stream_bytes: AtomicU64,
    /// Connections that carried a request other than `/health` (probes connect afresh each time).
    traffic_connections: AtomicU64,
    /// Upgraded connections open now.
    upgraded: AtomicU64,
    gate: watch::Sender<bool>,
    listening: watch::Sender<bool>,
    /// Idle keep-alive connections are closed after this many ms; 0: kept open.
    keep_alive_ms: AtomicU64,
    /// Requests served at once (not `/health`); the rest wait their turn. None: no limit.
    workers: std::sync::Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// The `x-request-id` of every request received, with how often, once asked to keep them.
    ids: std::sync::Mutex<Option<std::collections::HashMap<String, u32>>>,
}

impl Backend {
    /// Starts a healthy backend named `id` on `listen` (use port 0 for an ephemeral port).
    pub async fn start(id: &str, listen: SocketAddr) -> std::io::Result<Backend> {
        Backend::start_with(id, listen, Fault::OK).await
    }

    /// Starts a backend with an initial traffic fault.
    pub async fn start_with(
        id: &str,
        listen: SocketAddr,
        fault: Fault,
    ) -> std::io::Result<Backend> {
        // Bound once up front: the port is then fixed, and a `dead` spell rebinds the same one.
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            id: id.to_string(),
            addr,
            traffic: watch::Sender::new(fault),
            health: watch::Sender::new(None),
            requests: watch::Sender::new(0),
            health_requests: watch::Sender::new(0),
            body_bytes: watch::Sender::new(0),
            stream_bytes: AtomicU64::new(0),
            traffic_connections: AtomicU64::new(0),
            upgraded: AtomicU64::new(0),
            gate: watch::Sender::new(false),
            listening: watch::Sender::new(false),
            keep_alive_ms: AtomicU64::new(0),
            workers: std::sync::Mutex::new(None),
            ids: std::sync::Mutex::new(None),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(supervise(listener, inner.clone(), stopped));
        Ok(Backend { inner, stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Its name (the `x-backend` header).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Switches what it does to traffic (every path but `/health`). `dead` closes the listener
    /// and every open connection at once.
    pub fn set_fault(&self, fault: Fault) {
        self.inner.traffic.send_replace(fault);
    }

    /// Switches what it does to `/health` alone, until [`Backend::follow_traffic_fault`].
    pub fn set_health_fault(&self, fault: Fault) {
        self.inner.health.send_replace(Some(fault));
    }

    /// Lets `/health` follow the traffic fault again (the default).
    pub fn follow_traffic_fault(&self) {
        self.inner.health.send_replace(None);
    }

    /// The traffic fault now in force.
    pub fn fault(&self) -> Fault {
        *self.inner.traffic.borrow()
    }

    /// The fault `/health` gets now: the one set apart, or else the traffic fault without its
    /// errors (faults.md: a slow or hung backend is slow or hung on `/health` too, while one
    /// that fails a share of requests still passes its health checks).
    pub fn health_fault(&self) -> Fault {
        self.inner.health_fault()
    }

    /// Serves at most `n` requests at once, as a server with `n` workers does: the others queue
    /// (their latency grows) until a worker is free. `None` lifts the limit. `/health` is
    /// answered apart, as a server's health thread is.
    pub fn set_capacity(&self, n: Option<u32>) {
        let sem = n.map(|n| Arc::new(tokio::sync::Semaphore::new(n as usize)));
        *lock(&self.inner.workers) = sem;
    }

    /// Starts keeping the `x-request-id` of every request received from now on.
    pub fn keep_request_ids(&self) {
        lock(&self.inner.ids).get_or_insert_with(Default::default);
    }

    /// The request ids received since [`Backend::keep_request_ids`], with how often each came.
    pub fn request_ids(&self) -> std::collections::HashMap<String, u32> {
        lock(&self.inner.ids).clone().unwrap_or_default()
    }

    /// Requests received on any path but `/health`, answered or not.
    pub fn requests(&self) -> u64 {
        *self.inner.requests.borrow()
    }

    /// Waits until at least `n` requests (other than `/health`) have arrived.
    pub async fn wait_requests(&self, n: u64) {
        let mut rx = self.inner.requests.subscribe();
        let _ = rx.wait_for(|r| *r >= n).await;
    }

    /// `/health` requests received.
    pub fn health_requests(&self) -> u64 {
        *self.inner.health_requests.borrow()
    }

    /// Waits until at least `n` `/health` requests have arrived. A balancer probes one backend
    /// at a time, so the arrival of probe n+1 means it has handled the result of probe n.
    pub async fn wait_health_requests(&self, n: u64) {
        let mut rx = self.inner.health_requests.subscribe();
        let _ = rx.wait_for(|h| *h >= n).await;
    }

    /// Request body bytes received so far, over all requests.
    pub fn body_bytes(&self) -> u64 {
        *self.inner.body_bytes.borrow()
    }

    /// Waits until at least `n` request body bytes have arrived.
    pub async fn wait_body_bytes(&self, n: u64) {
        let mut rx = self.inner.body_bytes.subscribe();
        let _ = rx.wait_for(|b| *b >= n).await;
    }

    /// Bytes of `/stream` bodies handed to the connection so far.
    pub fn stream_bytes_sent(&self) -> u64 {
        self.inner.stream_bytes.load(Ordering::Relaxed)
    }

    /// Connections that carried a request other than `/health`: fewer than requests when the
    /// proxy reuses its connections.
    pub fn traffic_connections(&self) -> u64 {
        self.inner.traffic_connections.load(Ordering::Relaxed)
    }

    /// Upgraded (`/upgrade`) connections open now.
    pub fn upgraded_open(&self) -> u64 {
        self.inner.upgraded.load(Ordering::Relaxed)
    }

    /// Closes keep-alive connections idle for `timeout` (as servers do, often with a shorter
    /// timeout than the proxy in front expects); `None` keeps them open. Applies to new
    /// connections.
    pub fn set_keep_alive_timeout(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |t| t.as_millis().max(1) as u64);
        self.inner.keep_alive_ms.store(ms, Ordering::Relaxed);
    }

    /// Waits until the listener is open (`true`) or closed (`false`): a fault switch to or from
    /// `dead` takes effect asynchronously.
    pub async fn wait_listening(&self, open: bool) {
        let mut rx = self.inner.listening.subscribe();
        let _ = rx.wait_for(|l| *l == open).await;
    }

    /// Lets gated `/stream` responses send their last chunk.
    pub fn open_gate(&self) {
        self.inner.gate.send_replace(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Owns the listening socket: serves while the traffic fault is not `dead`, closes the listener
/// and all connections when it turns `dead`, and binds the same port again when it turns back.
async fn supervise(listener: TcpListener, inner: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    let mut traffic = inner.traffic.subscribe();
    let mut listener = Some(listener);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => {
                tokio::select! {
                    _ = traffic.wait_for(|f| f.mode != Mode::Dead) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                match rebind(inner.addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(backend = %inner.id, error = %e, "cannot listen again");
                        return;
                    }
                }
            }
        };
        if traffic.borrow().mode == Mode::Dead {
            drop(l);
            tokio::select! {
                _ = traffic.wait_for(|f| f.mode != Mode::Dead) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            continue;
        }
        let mut conns = JoinSet::new();
        inner.listening.send_replace(true);
        loop {
            tokio::select! {
                accepted = l.accept() => {
                    if let Ok((stream, _)) = accepted {
                        conns.spawn(serve_conn(stream, inner.clone()));
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = traffic.wait_for(|f| f.mode == Mode::Dead) => break,
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
        // Dead: the listener and every open connection go now.
        drop(l);
        conns.shutdown().await;
        inner.listening.send_replace(false);
    }
}

/// Binds `addr` again after a `dead` spell; a few tries in case the port is briefly held.
async fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
}

async fn serve_conn(stream: TcpStream, inner: Arc<Inner>) {
    // A second handle on the socket, kept so the `reset` fault can set SO_LINGER 0 after hyper
    // has taken the stream: the last close then sends RST instead of FIN.
    let Ok(std_stream) = stream.into_std() else {
        return;
    };
    let Ok(handle) = std_stream.try_clone() else {
        return;
    };
    let Ok(stream) = TcpStream::from_std(std_stream) else {
        return;
    };
    let reset = Arc::new(Notify::new());
    let svc_reset = reset.clone();
    let svc_inner = inner.clone();
    let counted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let svc = service_fn(move |req: Request<Incoming>| {
        let inner = inner.clone();
        let reset = svc_reset.clone();
        if req.uri().path() != "/health" && !counted.swap(true, Ordering::Relaxed) {
            inner.traffic_connections.fetch_add(1, Ordering::Relaxed);
        }
        async move { Ok::<_, Infallible>(respond(req, inner, reset).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    if let Some(idle) = inner_keep_alive(&svc_inner) {
        // hyper's header timer also runs while a connection waits for its next request: here
        // that is just the keep-alive timeout wanted.
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(idle);
    }
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = reset.notified() => {
            let _ = socket2::SockRef::from(&handle).set_linger(Some(Duration::ZERO));
        }
    }
}

impl Inner {
    fn health_fault(&self) -> Fault {
        self.health.borrow().unwrap_or_else(|| Fault {
            error_rate: 0.0,
            ..*self.traffic.borrow()
        })
    }
}

async fn respond(
    mut req: Request<Incoming>,
    inner: Arc<Inner>,
    reset: Arc<Notify>,
) -> Response<BackendBody> {
    if req.uri().path() == "/upgrade" {
        inner.requests.send_modify(|r| *r += 1);
        return upgrade(&mut req, inner);
    }
    let is_health = req.uri().path() == "/health";
    let fault = if is_health {
        inner.health_requests.send_modify(|h| *h += 1);
        inner.health_fault()
    } else {
        inner.requests.send_modify(|r| *r += 1);
        if let Some(ids) = lock(&inner.ids).as_mut() {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok());
            *ids.entry(id.unwrap_or("").to_string()).or_insert(0) += 1;
        }
        *inner.traffic.borrow()
    };
    // A worker is held from here to the answer: the latency below is its service time.
    let workers = if is_health {
        None
    } else {
        lock(&inner.workers).clone()
    };
    let _worker = match workers {
        Some(w) => w.acquire_owned().await.ok(),
        None => None,
    };
    let (parts, body) = req.into_parts();
    match fault.mode {
        Mode::Normal => {}
        Mode::Hang => {
            let _ = read_body(body, &inner).await;
            return never().await;
        }
        // `dead` reaches here only as a health fault: the port is open for traffic.
        Mode::Reset | Mode::Dead => {
            let _ = read_body(body, &inner).await;
            reset.notify_one();
            return never().await;
        }
    }
    if !fault.latency.is_zero() {
        tokio::time::sleep(fault.latency).await;
    }
    let failing = fault.error_rate > 0.0 && rand::rng().random::<f64>() < fault.error_rate;
    let mut resp = if failing {
        let _ = read_body(body, &inner).await;
        let status =
            StatusCode::from_u16(fault.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut r = full(format!("error from {}\n", inner.id));
        *r.status_mut() = status;
        r
    } else if is_health {
        let _ = read_body(body, &inner).await;
        full("ok\n".to_string())
    } else {
        match parts.uri.path() {
            "/echo" => {
                let received = read_body(body, &inner).await.unwrap_or(0);
                echo(&parts, &inner.id, received)
            }
            "/sink" => match read_body(body, &inner).await {
                Some(n) => full(format!("{n}\n")),
                None => {
                    let mut r = full("request body broke\n".to_string());
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                }
            },
            "/truncate" => {
                let _ = read_body(body, &inner).await;
                truncated(parts.uri.query().unwrap_or(""))
            }
            "/stream" => {
                let _ = read_body(body, &inner).await;
                stream(parts.uri.query().unwrap_or(""), inner.clone())
            }
            _ => {
                let _ = read_body(body, &inner).await;
                full(format!("hello from {}\n", inner.id))
            }
        }
    };
    if let Ok(v) = HeaderValue::from_str(&inner.id) {
        resp.headers_mut().insert("x-backend", v);
    }
    resp
}

/// Answers an upgrade request with 101 and echoes the upgraded connection's bytes until the
/// client closes it; 426 when no upgrade was asked for.
fn upgrade(req: &mut Request<Incoming>, inner: Arc<Inner>) -> Response<BackendBody> {
    let asked = req
        .headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let Some(protocol) = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .filter(|_| asked)
    else {
        let mut r = full("ask for an upgrade\n".to_string());
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        return r;
    };
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        inner.upgraded.fetch_add(1, Ordering::Relaxed);
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        inner.upgraded.fetch_sub(1, Ordering::Relaxed);
    });
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    r.headers_mut().insert(header::UPGRADE, protocol);
    r
}

/// Locks a mutex whose data stays valid whatever a panicking holder did.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn inner_keep_alive(inner: &Inner) -> Option<Duration> {
    match inner.keep_alive_ms.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// Waits forever: the answer that never comes (the connection task ends it).
async fn never() -> Response<BackendBody> {
    match std::future::pending::<Infallible>().await {}
}

/// Reads a request body to its end, counting the bytes as they arrive; None if it broke.
async fn read_body(mut body: Incoming, inner: &Inner) -> Option<u64> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
            inner.body_bytes.send_modify(|b| *b += data.len() as u64);
        }
    }
    Some(n)
}

fn full(text: String) -> Response<BackendBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn echo(parts: &http::request::Parts, id: &str, body_bytes: u64) -> Response<BackendBody> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let doc = serde_json::json!({
        "backend": id,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut r = full(doc.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A query parameter as a number.
fn query_param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse::<u64>().ok())
}

/// `/truncate?bytes=N`: a 200 promising N bytes (default 1000) that breaks off after half.
fn truncated(query: &str) -> Response<BackendBody> {
    let total = query_param(query, "bytes").unwrap_or(1000).max(2);
    let half = Bytes::from(vec![b't'; (total / 2) as usize]);
    let pause = Box::pin(tokio::time::sleep(Duration::from_millis(50)));
    let mut r = Response::new(
        Truncated {
            half: Some(half),
            pause,
        }
        .boxed_unsync(),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    r
}

/// Half a body, a pause (so it is flushed to the client), then an error: hyper aborts the
/// connection mid-body.
struct Truncated {
    half: Option<Bytes>,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Truncated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(half) = self.half.take() {
            return Poll::Ready(Some(Ok(Frame::data(half))));
        }
        std::task::ready!(self.pause.as_mut().poll(cx));
        Poll::Ready(Some(Err("truncated on purpose".into())))
    }
}

/// `/stream?bytes=N&chunk=K&gate=1`: N bytes of `x` in chunks of K (default 64 KiB), produced
/// as the client takes them.
fn stream(query: &str, inner: Arc<Inner>) -> Response<BackendBody> {
    let param = |name: &str| query_param(query, name);
    let total = param("bytes").unwrap_or(1 << 20);
    let chunk = param("chunk").unwrap_or(64 * 1024).clamp(1, 1 << 20);
    let gated = param("gate") == Some(1);
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        let block = Bytes::from(vec![b'x'; chunk as usize]);
        let mut sent = 0u64;
        while sent < total {
            let n = chunk.min(total - sent);
            if gated && sent + n >= total {
                let mut gate = inner.gate.subscribe();
                let _ = gate.wait_for(|open| *open).await;
            }
            if tx.send(block.slice(..n as usize)).await.is_err() {
                return;
            }
            sent += n;
            inner.stream_bytes.fetch_add(n, Ordering::Relaxed);
        }
    });
    let mut r = Response::new(ChannelBody { rx }.boxed_unsync());
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    r
}

/// A body fed chunk by chunk from a channel: the producer waits while the client is slow.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}
