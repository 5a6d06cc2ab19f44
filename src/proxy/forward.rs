//! Sending one try of a request to one backend, over fulcrum's own keep-alive connections: one
//! idle list per backend (its own short lock, never one for all backends), connections made
//! with `hyper::client::conn::http1` within the connect timeout, returned to their list the
//! moment the response's last byte is read, and closed after `timeouts.idle` unused. Also the
//! response timeout to headers, and the classification of failures into the kinds the breaker
//! and the EWMA understand.
//!
//! hyper-util's legacy client did this before; it guards every host's idle list with one mutex,
//! races a new connect against each checkout, and spawns a task per request to return the
//! connection: costs a proxy pays on every request.

use super::body::{BoxError, ProxyBody};
use crate::config::Timeouts;
use crate::policy::retry::Failure;
use crate::pool::OutcomeKind;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per backend at most; more are closed when their response ends.
const MAX_IDLE_PER_BACKEND: usize = 1024;

/// How a try failed, before any response header arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryError {
    /// The connection could not be made.
    Connect,
    /// The connection broke or the backend answered with garbage.
    Reset,
    /// No response headers within the response timeout.
    Timeout,
}

/// Why [`Forwarder::send`] got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The try failed: the backend's doing, as far as anyone can tell.
    Try(TryError),
    /// The client's body outgrew `listen.max_body_bytes` while it streamed: not the backend's
    /// doing.
    BodyLimit,
}

impl TryError {
    /// The outcome kind this failure is reported as.
    pub fn outcome(self) -> OutcomeKind {
        match self {
            TryError::Connect => OutcomeKind::Connect,
            TryError::Reset => OutcomeKind::Reset,
            TryError::Timeout => OutcomeKind::Timeout,
        }
    }

    /// The failure this is, for the retry decision.
    pub fn failure(self) -> Failure {
        match self {
            TryError::Connect => Failure::Connect,
            TryError::Reset => Failure::Reset,
            TryError::Timeout => Failure::Timeout,
        }
    }
}

/// One upstream's connections to its backends.
#[derive(Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
}

struct Shared {
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Written only when a backend is first used; every other request takes the read lock.
    backends: RwLock<HashMap<Box<str>, Arc<IdleList>>>,
}

/// One backend's idle connections, the most recently used last.
#[derive(Default)]
struct IdleList {
    conns: Mutex<Vec<IdleConn>>,
}

struct IdleConn {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

impl IdleList {
    /// The most recently used connection that is still open and not idle too long. The most
    /// recent is the least likely to have been closed by the backend meanwhile.
    fn checkout(&self, now: Instant, idle_timeout: Duration) -> Option<SendRequest<ProxyBody>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = conns.pop() {
            if !c.sender.is_closed() && now.duration_since(c.since) < idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() < MAX_IDLE_PER_BACKEND {
            conns.push(IdleConn {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle too long or closed by the backend; the number left.
    fn prune(&self, now: Instant, idle_timeout: Duration) -> usize {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < idle_timeout);
        conns.len()
    }
}

impl Forwarder {
    /// Connections with the upstream's timeouts. Inside a runtime, a task closes idle
    /// connections once they pass `timeouts.idle`; it ends with the last clone.
    pub fn new(timeouts: &Timeouts) -> Forwarder {
        let shared = Arc::new(Shared {
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.idle,
            backends: RwLock::new(HashMap::new()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(Arc::downgrade(&shared)));
        }
        Forwarder { shared }
    }

    /// Sends `req` (origin-form URI, Host set) to `authority`, allowing `timeout` for the
    /// response headers. A request that a reused connection closed on before any of it was
    /// written (the backend had just closed it) goes again on the next connection: it was never
    /// processed, so this is safe for any method.
    pub async fn send(
        &self,
        authority: &str,
        req: Request<ProxyBody>,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, SendError> {
        let list = self.idle_list(authority);
        match tokio::time::timeout(timeout, self.exchange(&list, authority, req)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Try(TryError::Timeout)),
        }
    }

    /// Idle connections open now, summed over backends.
    pub fn idle_connections(&self) -> usize {
        let backends = self
            .shared
            .backends
            .read()
            .unwrap_or_else(|e| e.into_inner());
        backends
            .values()
            .map(|l| l.conns.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn idle_list(&self, authority: &str) -> Arc<IdleList> {
        if let Some(l) = self
            .shared
            .backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(authority)
        {
            return l.clone();
        }
        let mut backends = self
            .shared
            .backends
            .write()
            .unwrap_or_else(|e| e.into_inner());
        backends.entry(authority.into()).or_default().clone()
    }

    async fn exchange(
        &self,
        list: &Arc<IdleList>,
        authority: &str,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let reused = list.checkout(Instant::now(), self.shared.idle_timeout);
            let fresh = reused.is_none();
            let mut sender = match reused {
                Some(s) => s,
                // Boxed: a connect is rare once the pool is warm, and its future would
                // otherwise make every request's future (boxed per request) larger.
                None => Box::pin(self.connect(authority)).await?,
            };
            // A connection returned at its response's last byte may not have turned idle yet;
            // this waits for that, or finds it closed.
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(SendError::Try(TryError::Reset));
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // A switched connection belongs to the tunnel now.
                    let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (sender, list.clone()));
                    return Ok(resp.map(|body| PooledBody::new(body, back)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    Some(_) => return Err(SendError::Try(TryError::Reset)),
                    None if super::replay::is_body_limit(&e.into_error()) => {
                        return Err(SendError::BodyLimit)
                    }
                    None => return Err(SendError::Try(TryError::Reset)),
                },
            }
        }
    }

    async fn connect(&self, authority: &str) -> Result<SendRequest<ProxyBody>, SendError> {
        let fail = SendError::Try(TryError::Connect);
        let stream =
            tokio::time::timeout(self.shared.connect_timeout, TcpStream::connect(authority))
                .await
                .map_err(|_| fail)?
                .map_err(|_| fail)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| fail)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Closes idle connections past the idle timeout, every half of it, until the forwarder goes.
async fn reap(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(s) => (s.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        // A backend gone from the config, with nothing idle and no response in flight.
        let unused = |list: &Arc<IdleList>| {
            list.prune(now, shared.idle_timeout) == 0 && Arc::strong_count(list) == 1
        };
        // Pruned under the read lock, which requests take too; the write lock, which stalls
        // them, only when a backend is to go.
        let any_unused = shared
            .backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(unused);
        if any_unused {
            let mut backends = shared.backends.write().unwrap_or_else(|e| e.into_inner());
            backends.retain(|_, list| !unused(list));
        }
    }
}

/// A backend's response body that gives its connection back to the idle list once the last
/// byte is read. A body dropped before its end takes the connection with it: hyper closes a
/// connection whose response was not read to the end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(SendRequest<ProxyBody>, Arc<IdleList>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.back.is_some())
            .finish()
    }
}

impl PooledBody {
    fn new(inner: Incoming, back: Option<(SendRequest<ProxyBody>, Arc<IdleList>)>) -> PooledBody {
        let mut body = PooledBody { inner, back };
        // An empty body is never polled: its connection is free already.
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some((sender, list)) = self.back.take() {
            list.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn timeouts(idle: Duration) -> Timeouts {
        Timeouts {
            idle,
            ..Timeouts::default()
        }
    }

    fn get() -> Request<ProxyBody> {
        Request::get("/")
            .header("host", "test")
            .body(super::super::body::boxed(Empty::<Bytes>::new()))
            .unwrap()
    }

    /// A backend that answers `n` requests per connection with a 2-byte body, then closes;
    /// the number of connections it accepted is sent on `accepted`.
    async fn backend(
        per_conn: usize,
    ) -> (std::net::SocketAddr, tokio::sync::watch::Receiver<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tx.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    let mut answered = 0;
                    while answered < per_conn {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            answered += 1;
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, accepted) = backend(usize::MAX).await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        for _ in 0..5 {
            let resp = f
                .send(&addr.to_string(), get(), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(f.idle_connections(), 0, "in use until its body is read");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            assert_eq!(f.idle_connections(), 1);
        }
        assert_eq!(*accepted.borrow(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_replaced_without_failing_the_request() {
        let (addr, accepted) = backend(1).await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        for _ in 0..3 {
            let resp = f
                .send(&addr.to_string(), get(), Duration::from_secs(5))
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap();
            // Let the backend's close arrive, as it would between two real requests.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*accepted.borrow(), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_early_takes_its_connection_with_it() {
        let (addr, _) = backend(usize::MAX).await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        let resp = f
            .send(&addr.to_string(), get(), Duration::from_secs(5))
            .await
            .unwrap();
        drop(resp);
        assert_eq!(f.idle_connections(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, _) = backend(usize::MAX).await;
        let f = Forwarder::new(&timeouts(Duration::from_millis(200)));
        let resp = f
            .send(&addr.to_string(), get(), Duration::from_secs(5))
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(f.idle_connections(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(f.idle_connections(), 0);
    }

    #[tokio::test]
    async fn failures_are_classified() {
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        // Nothing listens on a port just released.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let e = f
            .send(&port.to_string(), get(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e, SendError::Try(TryError::Connect));
        // A backend that accepts and never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let e = f
            .send(&addr.to_string(), get(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e, SendError::Try(TryError::Timeout));
    }
}
