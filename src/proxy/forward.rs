//! Sending one try of a request to one backend, over fulcrum's own keep-alive connections: one
//! idle list per backend (its own short lock, never one for all backends), connections made
//! within the connect timeout, returned to their list the moment the response's last byte is
//! read, and closed after `timeouts.idle` unused. Also the response timeout to headers, the read
//! timeout between a body's reads (`timeouts.read`), and the classification of failures into the
//! kinds the breaker and the EWMA understand.
//!
//! A request whose body is known whole (every request but a large upload) and that asks for no
//! upgrade is written and its response read in the request's own task, by [`super::h1`], on a
//! pooled connection. The others, whose body streams or whose connection becomes a tunnel, go
//! through hyper's client connection on a connection of their own.
//!
//! hyper-util's legacy client did all of this before; it guards every host's idle list with one
//! mutex, races a new connect against each checkout, and spawns a task per request to return the
//! connection, and hyper's client connection runs in a task of its own fed by a channel: costs a
//! proxy pays on every request.

use super::body::{BoxError, ProxyBody};
use super::body_timeout::BodyTimeout;
use super::h1::{self, Decoded, Framing, Head, WireError};
use super::headers::Added;
use super::replay::{client_fault, ClientFault, TryBody};
use crate::config::Timeouts;
use crate::policy::retry::{idempotent, Failure};
use crate::pool::OutcomeKind;
use crate::workers;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Idle connections kept per backend at most; more are closed when their response ends.
const MAX_IDLE_PER_BACKEND: usize = 1024;
/// Room made in a connection's read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

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
    /// The client's body failed while it streamed (too large, broken, too slow): not the
    /// backend's doing.
    Client(ClientFault),
}

/// How a backend's response body failed after its head was passed on.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Silent for `timeouts.read` (this long) mid-body.
    #[error("the backend fell silent mid-body")]
    Stalled(Duration),
    /// Closed mid-body, or malformed.
    #[error("the backend's body broke off: {0}")]
    Broken(BoxError),
}

impl BodyError {
    /// The outcome this failure is reported as.
    pub fn outcome(&self) -> OutcomeKind {
        match self {
            BodyError::Stalled(_) => OutcomeKind::Timeout,
            BodyError::Broken(_) => OutcomeKind::Reset,
        }
    }

    /// The latency it is reported with: the silence waited out, or none for a break.
    pub fn cost(&self) -> Duration {
        match self {
            BodyError::Stalled(waited) => *waited,
            BodyError::Broken(_) => Duration::ZERO,
        }
    }
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

const RESET: SendError = SendError::Try(TryError::Reset);

/// What one try sends but its body, borrowed from the request's template: the request is
/// built for hyper only when hyper sends it, and written straight from here otherwise.
#[derive(Debug, Clone, Copy)]
pub struct TryHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI, in origin form.
    pub uri: &'a Uri,
    /// The headers, rewritten for the backend.
    pub headers: &'a HeaderMap,
    /// What fulcrum adds to them.
    pub added: &'a Added,
    /// Replaces the headers' Host when set.
    pub host: Option<&'a HeaderValue>,
}

impl TryHead<'_> {
    /// The request as hyper sends it.
    fn to_request(self, body: ProxyBody) -> Request<ProxyBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        self.added.insert_into(req.headers_mut());
        if let Some(v) = self.host {
            req.headers_mut().insert(header::HOST, v.clone());
        }
        req
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
    /// `timeouts.read`, in milliseconds, as each response's body clock takes it.
    read_timeout_ms: u32,
    /// Written only when a backend is first used; every other request takes the read lock.
    /// Keyed by the backend's authority, hashed with foldhash: the keys come from the config,
    /// not from clients, and SipHash's resistance to chosen keys cost two thirds of the lookup
    /// that every try makes.
    backends: RwLock<HashMap<Box<str>, Arc<IdleList>, foldhash::fast::RandomState>>,
}

/// A connection to a backend, with the bytes read from it and not yet used (none between
/// responses: a connection with leftovers is not reused).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Its last response had no body (HEAD, 204, 304): a backend that sends one anyway sends it
    /// after the response, so the socket itself is asked before the connection is used again.
    bodiless: bool,
}

impl Conn {
    /// Whether the backend has not closed it and sent nothing since its last response. The
    /// reactor is asked (a connection whose last read drained it has no readiness: no syscall);
    /// after a bodiless response the socket too, with a peek, as the reactor learns of bytes
    /// that arrived since its last poll only at its next. Bytes nobody asked for must never
    /// reach the next request's client.
    fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Ready(Err(_)) => false,
            Poll::Pending if !self.bodiless => true,
            // Readable, or not known to be: a close, or bytes; either way unusable, unless
            // there is nothing there after all.
            _ => matches!(
                socket2::SockRef::from(&self.stream).peek(&mut [std::mem::MaybeUninit::uninit(); 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// One backend's idle connections, one list per worker thread (`crate::workers`), the most
/// recently used last. A worker takes only its own: a socket's readiness is watched by the
/// worker that opened it, and one used from another thread would cost a wake-up across cores
/// on every read.
struct IdleList {
    workers: Box<[Mutex<Vec<IdleConn>>]>,
}

struct IdleConn {
    conn: Conn,
    since: Instant,
}

impl IdleList {
    fn new() -> IdleList {
        IdleList {
            workers: (0..workers::slots()).map(|_| Mutex::default()).collect(),
        }
    }

    /// This worker's list.
    fn mine(&self) -> std::sync::MutexGuard<'_, Vec<IdleConn>> {
        let list = &self.workers[workers::current() % self.workers.len()];
        list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that is still open and not idle too long. The most
    /// recent is the least likely to have been closed by the backend meanwhile.
    fn checkout(&self, now: Instant, idle_timeout: Duration) -> Option<Conn> {
        let mut conns = self.mine();
        while let Some(c) = conns.pop() {
            if now.duration_since(c.since) < idle_timeout && c.conn.is_open() {
                return Some(c.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        if !conn.buf.is_empty() {
            return;
        }
        let mut conns = self.mine();
        if conns.len() < MAX_IDLE_PER_BACKEND {
            conns.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle too long or closed by the backend, on every worker's list;
    /// the number left.
    fn prune(&self, now: Instant, idle_timeout: Duration) -> usize {
        let mut left = 0;
        for list in &self.workers {
            let mut conns = list.lock().unwrap_or_else(|e| e.into_inner());
            conns.retain(|c| now.duration_since(c.since) < idle_timeout && c.conn.is_open());
            left += conns.len();
        }
        left
    }

    /// Idle connections on every worker's list.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.workers
            .iter()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// How reading a response head failed.
enum HeadError {
    /// The backend closed or reset the connection before sending a byte of it.
    Closed,
    /// Anything else: a break mid-head, or bytes that are not HTTP.
    Broken,
}

impl Forwarder {
    /// Connections with the upstream's timeouts. Inside a runtime, a task closes idle
    /// connections once they pass `timeouts.idle`; it ends with the last clone.
    pub fn new(timeouts: &Timeouts) -> Forwarder {
        let shared = Arc::new(Shared {
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.idle,
            read_timeout_ms: super::body_timeout::millis(timeouts.read),
            backends: RwLock::new(HashMap::default()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(Arc::downgrade(&shared)));
        }
        Forwarder { shared }
    }

    /// Sends a request (`head` and `body`) to `authority` at `now`, allowing `timeout` for the
    /// response headers. A request that a reused connection turns out to have been closed under
    /// goes again on the next connection when that is safe: when none of it could be written,
    /// or when the method is idempotent and not a byte of answer came.
    ///
    /// While a streamed body is still coming from the client the response clock is held (the
    /// backend cannot be late answering a request it does not have whole; the body's own
    /// clock bounds the client): it runs again from the body's end.
    ///
    /// `now` is the caller's reading of the clock, taken for the try anyway: reading it again
    /// here cost a visible share of the request path's CPU.
    pub async fn send(
        &self,
        authority: &str,
        head: TryHead<'_>,
        body: TryBody,
        now: Instant,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, SendError> {
        let tunnel = head.headers.contains_key(header::UPGRADE) || *head.method == Method::CONNECT;
        let streaming = match &body {
            TryBody::Stream(_, ended) => Some(ended.clone()),
            TryBody::Whole(_) => None,
        };
        // Pinned where they are and polled side by side, rather than `timeout_at(.., work)`:
        // that moved the exchange's future into the `Timeout` and the `Timeout` into this
        // future's state, some 2.7 KiB copied per try.
        let mut work = std::pin::pin!(async {
            match body {
                TryBody::Whole(bytes) if !tunnel => {
                    let list = self.idle_list(authority);
                    self.exchange(&list, authority, head, &bytes, now).await
                }
                body => {
                    let req = head.to_request(body.into_proxy_body());
                    Box::pin(self.exchange_hyper(authority, req)).await
                }
            }
        });
        let mut timer = std::pin::pin!(tokio::time::sleep_until(now + timeout));
        std::future::poll_fn(|cx| loop {
            // The exchange first: an answer that is in when the timer fires still counts.
            if let Poll::Ready(result) = work.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            ready!(timer.as_mut().poll(cx));
            match &streaming {
                Some(ended) if !ended.load(Ordering::Relaxed) => {
                    timer.as_mut().reset(Instant::now() + timeout);
                }
                _ => return Poll::Ready(Err(SendError::Try(TryError::Timeout))),
            }
        })
        .await
    }

    /// Idle connections open now, summed over backends.
    #[cfg(test)]
    fn idle_connections(&self) -> usize {
        let backends = self
            .shared
            .backends
            .read()
            .unwrap_or_else(|e| e.into_inner());
        backends.values().map(|l| l.len()).sum()
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
        backends
            .entry(authority.into())
            .or_insert_with(|| Arc::new(IdleList::new()))
            .clone()
    }

    /// One request with a whole body, on a pooled connection, in this task.
    async fn exchange(
        &self,
        list: &Arc<IdleList>,
        authority: &str,
        head: TryHead<'_>,
        body: &Bytes,
        now: Instant,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut wire = crate::spare::buffer(512 + body.len());
        h1::encode_request(
            &mut wire,
            head.method,
            head.uri,
            head.headers,
            head.added.iter(),
            head.host,
            body,
        );
        let head_request = *head.method == Method::HEAD;
        // The caller's reading serves the first checkout; a resend reads the clock again.
        let mut first = Some(now);
        loop {
            let now = first.take().unwrap_or_else(Instant::now);
            let reused = list.checkout(now, self.shared.idle_timeout);
            let fresh = reused.is_none();
            let mut conn = match reused {
                Some(c) => c,
                // Boxed: a connect is rare once the pool is warm, and its future would
                // otherwise make every request's future (moved into hyper's slot) larger.
                None => Box::pin(self.connect(authority)).await?,
            };
            if conn.stream.write_all(&wire).await.is_err() {
                // The backend had closed it; it cannot have acted on a request it refused.
                if fresh {
                    return Err(RESET);
                }
                continue;
            }
            match read_head(&mut conn, head_request).await {
                Ok(Head {
                    response,
                    framing,
                    keep_alive,
                }) => {
                    let status = response.status();
                    conn.bodiless = head_request
                        || status == http::StatusCode::NO_CONTENT
                        || status == http::StatusCode::NOT_MODIFIED;
                    let clock = BodyTimeout::millis(self.shared.read_timeout_ms);
                    let body = PooledBody::wire(conn, framing, keep_alive, list.clone(), clock);
                    return Ok(response.map(|()| body));
                }
                // A keep-alive connection the backend closed as the request went out: it was
                // never processed, as far as anything can tell, so an idempotent one goes again.
                Err(HeadError::Closed) if !fresh && idempotent(head.method) => continue,
                Err(_) => return Err(RESET),
            }
        }
    }

    /// One request through hyper's client connection, on a new connection used once: a body
    /// that streams, or an upgrade that takes the connection over.
    async fn exchange_hyper(
        &self,
        authority: &str,
        req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let conn = self.connect(authority).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(conn.stream))
            .await
            .map_err(|_| RESET)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        match sender.send_request(req).await {
            Ok(resp) => {
                let clock = BodyTimeout::millis(self.shared.read_timeout_ms);
                Ok(resp.map(|b| PooledBody::hyper(b, clock)))
            }
            Err(e) => Err(client_fault(&e).map_or(RESET, SendError::Client)),
        }
    }

    async fn connect(&self, authority: &str) -> Result<Conn, SendError> {
        let fail = SendError::Try(TryError::Connect);
        let stream =
            tokio::time::timeout(self.shared.connect_timeout, TcpStream::connect(authority))
                .await
                .map_err(|_| fail)?
                .map_err(|_| fail)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            bodiless: false,
        })
    }
}

/// Reads until a whole response head is in.
async fn read_head(conn: &mut Conn, head_request: bool) -> Result<Head, HeadError> {
    loop {
        if !conn.buf.is_empty() {
            match h1::parse_response(&mut conn.buf, head_request) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(WireError::Malformed) => return Err(HeadError::Broken),
            }
        }
        conn.buf.reserve(READ_CHUNK);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(n) if n > 0 => {}
            _ if conn.buf.is_empty() => return Err(HeadError::Closed),
            _ => return Err(HeadError::Broken),
        }
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

/// A backend's response body. Read from a pooled connection, the connection goes back to its
/// idle list once the last byte is read; a body dropped before its end takes the connection
/// with it. Read by hyper, the connection is used once. Either way a silence of
/// `timeouts.read` mid-body ends it; every error it ends with is a [`BodyError`].
pub struct PooledBody {
    inner: Inner,
    clock: BodyTimeout,
}

enum Inner {
    Wire(Wire),
    Hyper(Incoming),
}

/// A body fulcrum unframes itself.
struct Wire {
    /// None once the body has ended or failed.
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    list: Arc<IdleList>,
}

impl Wire {
    /// The body is complete: the connection goes back if it may carry another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self.list.checkin(conn);
            }
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if self.framing.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Broken(e.into()))));
                }
            }
            conn.buf.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if self.framing == Framing::Close => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    let e = "backend closed the connection mid-body".into();
                    return Poll::Ready(Some(Err(BodyError::Broken(e))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Broken(e.into()))));
                }
            }
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let read_by = match &self.inner {
            Inner::Wire(_) => "fulcrum",
            Inner::Hyper(_) => "hyper",
        };
        f.debug_struct("PooledBody")
            .field("read_by", &read_by)
            .finish()
    }
}

impl PooledBody {
    fn wire(
        conn: Conn,
        framing: Framing,
        keep_alive: bool,
        list: Arc<IdleList>,
        clock: BodyTimeout,
    ) -> PooledBody {
        let mut wire = Wire {
            conn: Some(conn),
            framing,
            keep_alive,
            list,
        };
        // An empty body is never polled: its connection is free already.
        if wire.framing.is_done() {
            wire.finish();
        }
        PooledBody {
            inner: Inner::Wire(wire),
            clock,
        }
    }

    fn hyper(body: Incoming, clock: BodyTimeout) -> PooledBody {
        PooledBody {
            inner: Inner::Hyper(body),
            clock,
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
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Wire(w) => w.poll_frame(cx),
            Inner::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| BodyError::Broken(e.into())))),
        };
        if this
            .clock
            .poll_silence(polled.is_pending(), None, cx)
            .is_ready()
        {
            // The connection goes with the body: it is mid-response.
            if let Inner::Wire(w) = &mut this.inner {
                w.conn = None;
            }
            let waited = Duration::from_millis(u64::from(this.clock.idle_ms()));
            return Poll::Ready(Some(Err(BodyError::Stalled(waited).into())));
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Wire(w) => w.conn.is_none() || w.framing.is_done(),
            Inner::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Wire(w) => w
                .framing
                .remaining()
                .map_or_else(SizeHint::new, SizeHint::with_exact),
            Inner::Hyper(b) => b.size_hint(),
        }
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

    /// `req` sent through `f` to `addr`, as the proxy sends a try.
    async fn send(
        f: &Forwarder,
        addr: std::net::SocketAddr,
        req: Request<TryBody>,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, SendError> {
        let (mut parts, body) = req.into_parts();
        let added = super::super::headers::forward_request(
            &mut parts.headers,
            super::super::headers::ip_value(addr.ip()),
            "http",
            None,
            None,
            HeaderValue::from_static("test"),
            false,
        );
        let head = TryHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            added: &added,
            host: None,
        };
        f.send(&addr.to_string(), head, body, Instant::now(), timeout)
            .await
    }

    fn get() -> Request<TryBody> {
        request(Method::GET)
    }

    fn request(method: Method) -> Request<TryBody> {
        Request::builder()
            .method(method)
            .uri("/")
            .header("host", "test")
            .body(TryBody::Whole(Bytes::new()))
            .unwrap()
    }

    /// A backend that answers the `i`th request of each connection with `answer(i)`, closing
    /// the connection instead when that is `None`; the number of connections it accepted is
    /// sent on `accepted`.
    async fn scripted(
        answer: fn(usize) -> Option<&'static [u8]>,
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
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let Some(bytes) = answer(answered) else {
                                return;
                            };
                            answered += 1;
                            let _ = s.write_all(bytes).await;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// A backend that answers one request with `answer` and closes the connection.
    async fn once(answer: &'static [u8]) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
        });
        addr
    }

    /// GETs `/` from `addr` through `f`, the response's body read to its end.
    async fn fetch(f: &Forwarder, addr: std::net::SocketAddr) -> Result<Bytes, BoxError> {
        let resp = send(f, addr, get(), Duration::from_secs(5)).await.unwrap();
        Ok(resp.into_body().collect().await?.to_bytes())
    }

    /// A backend that answers `per_conn` requests per connection with a 2-byte body, then
    /// closes.
    async fn backend(
        per_conn: usize,
    ) -> (std::net::SocketAddr, tokio::sync::watch::Receiver<usize>) {
        match per_conn {
            1 => scripted(|i| (i < 1).then_some(OK)).await,
            _ => scripted(|_| Some(OK)).await,
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (addr, accepted) = backend(usize::MAX).await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        for _ in 0..5 {
            let resp = send(&f, addr, get(), Duration::from_secs(5)).await.unwrap();
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
            fetch(&f, addr).await.unwrap();
            // Let the backend's close arrive, as it would between two real requests.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*accepted.borrow(), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_early_takes_its_connection_with_it() {
        let (addr, _) = backend(usize::MAX).await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        let resp = send(&f, addr, get(), Duration::from_secs(5)).await.unwrap();
        drop(resp);
        assert_eq!(f.idle_connections(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, _) = backend(usize::MAX).await;
        let f = Forwarder::new(&timeouts(Duration::from_millis(200)));
        let resp = send(&f, addr, get(), Duration::from_secs(5)).await.unwrap();
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
        let e = send(&f, port, get(), Duration::from_secs(5))
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
        let e = send(&f, addr, get(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e, SendError::Try(TryError::Timeout));
    }

    #[tokio::test]
    async fn chunked_and_close_delimited_bodies_arrive_whole_and_only_framed_ones_are_pooled() {
        let (addr, accepted) = scripted(|_| {
            Some(&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n"[..])
        })
        .await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        for _ in 0..3 {
            let body = fetch(&f, addr).await.unwrap();
            assert_eq!(&body[..], b"ok!!!");
            assert_eq!(f.idle_connections(), 1);
        }
        assert_eq!(*accepted.borrow(), 1);

        // No length: the body runs to the close, and the connection goes with it.
        let addr = once(b"HTTP/1.1 200 OK\r\n\r\nto the close").await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        let body = fetch(&f, addr).await.unwrap();
        assert_eq!(&body[..], b"to the close");
        assert_eq!(f.idle_connections(), 0);
    }

    #[tokio::test]
    async fn a_response_written_a_byte_at_a_time_arrives_whole_and_frees_its_connection() {
        const SLOW: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwire\r\n0\r\n\r\n";
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = [0u8; 1024];
            loop {
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                for b in SLOW {
                    let _ = s.write_all(&[*b]).await;
                    tokio::task::yield_now().await;
                }
            }
        });
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        for _ in 0..2 {
            let resp = send(&f, addr, get(), Duration::from_secs(5)).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-a"], "1");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"wire");
            assert_eq!(f.idle_connections(), 1);
        }
    }

    #[tokio::test]
    async fn a_response_that_says_close_is_not_pooled() {
        let (addr, accepted) = scripted(|_| {
            Some(&b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..])
        })
        .await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        for _ in 0..2 {
            fetch(&f, addr).await.unwrap();
            assert_eq!(f.idle_connections(), 0);
        }
        assert_eq!(*accepted.borrow(), 2);
    }

    #[tokio::test]
    async fn a_stale_connection_is_retried_for_an_idempotent_request_only() {
        // Each connection answers its first request and closes at the second unanswered: what
        // a backend closing an idle keep-alive connection looks like to the request sent on it.
        let (addr, accepted) = scripted(|i| (i == 0).then_some(OK)).await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        for _ in 0..2 {
            fetch(&f, addr).await.unwrap();
        }
        assert_eq!(
            *accepted.borrow(),
            2,
            "the GET went again on a new connection"
        );
        let resp = send(&f, addr, request(Method::POST), Duration::from_secs(5)).await;
        // The pooled connection from the last GET is the stale one now.
        assert_eq!(resp.unwrap_err(), SendError::Try(TryError::Reset));
    }

    #[tokio::test]
    async fn a_streamed_body_goes_through_hyper_on_a_connection_of_its_own() {
        let (addr, accepted) = backend(usize::MAX).await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        for _ in 0..2 {
            let body = super::super::body::boxed(Empty::<Bytes>::new());
            let req = Request::get("/")
                .header("host", "test")
                .body(TryBody::Stream(body, Default::default()))
                .unwrap();
            let resp = send(&f, addr, req, Duration::from_secs(5)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            assert_eq!(f.idle_connections(), 0);
        }
        assert_eq!(*accepted.borrow(), 2);
    }

    #[tokio::test]
    async fn garbage_and_a_broken_body_are_failures() {
        let (addr, _) = scripted(|_| Some(&b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..])).await;
        let f = Forwarder::new(&timeouts(Duration::from_secs(60)));
        let e = send(&f, addr, get(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e, SendError::Try(TryError::Reset));

        let addr = once(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").await;
        assert!(
            fetch(&f, addr).await.is_err(),
            "a body cut short is an error"
        );
        assert_eq!(f.idle_connections(), 0);
    }
}
