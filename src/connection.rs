//! One client connection, from accept to close: HTTP/2 (prior knowledge) or HTTP/1.1 with
//! upgrades, under its [`Watchdog`]'s clocks, ended gracefully when the server stops.
//!
//! HTTP/1.1 requests are read first by fulcrum's own server for plain requests (`plain.rs`),
//! which hands a request it does not serve (and the connection, until it parks) to hyper's.
//!
//! An HTTP/1.1 connection idle for [`PARK_AFTER`] is parked: hyper's connection is ended
//! without closing the socket, which hands its read and write buffers back (16 KiB or so), and
//! the bare socket waits for the client's next request, when the plain server takes it up
//! again (its run, with its buffers, ends at parking too). This is what lets thousands of idle
//! keep-alive clients cost little memory, as nginx's keep-alive handling does; a busy
//! connection is never parked.
//!
//! hyper's HTTP/1 connection is run with `half_close`: it does not read ahead on the client's
//! socket while a request is in flight. Reading ahead is how hyper notices a client that left,
//! but it took a new 8 KiB read buffer on every request (the request's head still held the old
//! one), 10% of fulcrum's user time. The watchdog notices instead, asking the socket (no read,
//! no syscall unless it is readable) about requests in flight longer than a tick of its clock.

mod caught;
mod plain;

/// fulcrum's own parser of a plain HTTP/1.1 request (see `plain`): the request, whether the
/// client asked to close, and the bytes it took; `None` for what it leaves to hyper. Public for
/// the fuzz targets and the test that holds it to hyper's verdicts.
pub use plain::take_request as take_plain_request;

use crate::proxy::body::HoldBody;
use crate::race::{race, Won};
use crate::server::{ClientBody, Handler, Peer};
use crate::telemetry::metrics::{ClientMetrics, ClientTimeout};
use crate::watchdog::{ActiveGuard, Expired, Watchdog};
use bytes::{Buf, Bytes};
use caught::Caught;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// An HTTP/1.1 connection with no request for this long is parked. Short, because until then
/// it holds hyper's buffers, and glibc keeps the heap those had: at 100 ms, 10,000 keep-alive
/// clients opened in a burst cost 45–50 MiB, at 20 ms 23–25 MiB. A client that pauses between
/// 20 and 100 ms pays for a new hyper connection per request instead (measured: 3 µs of CPU).
pub const PARK_AFTER: Duration = Duration::from_millis(20);

/// What an HTTP/2 connection must start with (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Client connection limits of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `listen.header_read_timeout`.
    pub header_read: Duration,
    /// `listen.idle_timeout`.
    pub idle: Duration,
    /// `listen.drain_timeout`.
    pub drain: Duration,
    /// `listen.max_connections`.
    pub max_connections: usize,
    /// `listen.max_header_bytes`.
    pub max_header_bytes: usize,
    /// `listen.body_read_timeout`.
    pub body_read: Duration,
    /// `listen.send_timeout`.
    pub send: Duration,
}

/// What every connection of a listener shares: the HTTP/1 and HTTP/2 connection builders, with
/// its header limit (hyper answers 431 itself when an HTTP/1 request's head outgrows its read
/// buffer), the peers it trusts, and its counters.
pub struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    trusted_proxies: Box<[ipnet::IpNet]>,
    clients: Arc<ClientMetrics>,
}

impl Builders {
    /// The builders for `limits`, trusting the forwarding headers of `trusted_proxies`, counting
    /// into `clients`.
    pub fn new(
        limits: &Limits,
        trusted_proxies: &[ipnet::IpNet],
        clients: Arc<ClientMetrics>,
    ) -> Builders {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(limits.max_header_bytes);
        // No reading ahead while a request is in flight: the watchdog notices a client that
        // leaves (see the module's comment).
        h1.half_close(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Builders {
            h1,
            h2,
            trusted_proxies: trusted_proxies.into(),
            clients,
        }
    }
}

/// Resolves once `flag` is true.
pub async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// Serves one client connection until it closes, a clock of its watchdog ends it, or the server
/// stops (then gracefully: the request in flight finishes, keep-alive ends).
// An async block over the arguments rather than an `async fn`: an `async fn` keeps each
// argument twice in its future (152 bytes more here), and every connection holds this one, parked
// or not.
#[allow(clippy::manual_async_fn)]
pub fn serve<H: Handler>(
    stream: TcpStream,
    client: SocketAddr,
    handler: Arc<H>,
    builders: Arc<Builders>,
    mut stopped: watch::Receiver<bool>,
    limits: Limits,
) -> impl Future<Output = ()> + Send {
    async move {
        let watchdog = Watchdog::new(limits.header_read, limits.idle)
            .with_park(PARK_AFTER)
            .with_send(limits.send);
        let serve = Serve {
            handler,
            watchdog: watchdog.clone(),
            client: Peer::among(client, &builders.trusted_proxies),
            body_read_ms: crate::proxy::body_timeout::millis(limits.body_read),
            clients: builders.clients.clone(),
        };
        if !wait_for_request(&stream, &watchdog, &mut stopped).await {
            return;
        }
        let (h2, prefix) = match tokio::time::timeout(limits.header_read, sniff(&stream)).await {
            Ok(Ok(sniffed)) => sniffed,
            Ok(Err(_)) => return,
            Err(_) => {
                serve.clients.timeout(ClientTimeout::Header);
                return;
            }
        };
        let mut io = Parked { stream, prefix };
        if h2 {
            // Boxed: an HTTP/1 connection's task need not hold room for it.
            return Box::pin(serve_h2(io, serve, &builders, &mut stopped)).await;
        }
        loop {
            // fulcrum's own server first; hyper for a request it hands over, until hyper parks.
            // Boxed, as hyper's connection is: a parked connection's task holds no room for a
            // request's future.
            let rest = std::mem::take(&mut io.prefix);
            let max_head = limits.max_header_bytes;
            match Box::pin(plain::run(&io.stream, rest, &serve, max_head, &mut stopped)).await {
                plain::Ended::Close => return,
                plain::Ended::Park => {}
                plain::Ended::Hyper(bytes) => {
                    io.prefix = bytes;
                    io = match serve_h1(io, &serve, &builders, &mut stopped).await {
                        Some(parked) => parked,
                        None => return,
                    };
                }
            }
            if io.prefix.is_empty() && !wait_for_request(&io.stream, &watchdog, &mut stopped).await
            {
                return;
            }
        }
    }
}

/// Waits, holding no buffer, until the client sends something (true), or the idle clock runs
/// out or the server stops (false: close).
async fn wait_for_request(
    stream: &TcpStream,
    watchdog: &Watchdog,
    stopped: &mut watch::Receiver<bool>,
) -> bool {
    if *stopped.borrow() {
        return false;
    }
    tokio::select! {
        ready = stream.readable() => ready.is_ok(),
        _ = watchdog.expired(false, || false) => false,
        _ = until_true(stopped) => false,
    }
}

/// Whether the connection starts with the HTTP/2 preface, and the bytes read to tell. First
/// bytes that settle it are only peeked (they stay for whichever protocol serves them); a
/// preface that has come in part is read, so that waiting for its rest costs a wake-up when
/// bytes arrive rather than a peek every so often (a peek leaves the socket readable).
async fn sniff(stream: &TcpStream) -> io::Result<(bool, Bytes)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let n = stream.peek(&mut buf).await?;
    if n == 0 || buf[..n] != H2_PREFACE[..n] {
        return Ok((false, Bytes::new()));
    }
    if n == H2_PREFACE.len() {
        return Ok((true, Bytes::new()));
    }
    let mut got = Vec::with_capacity(H2_PREFACE.len());
    loop {
        stream.readable().await?;
        // Never past the preface: what follows belongs to the protocol.
        let want = H2_PREFACE.len() - got.len();
        match stream.try_read(&mut buf[..want]) {
            Ok(0) => return Ok((false, got.into())),
            Ok(k) => {
                got.extend_from_slice(&buf[..k]);
                if got[..] != H2_PREFACE[..got.len()] {
                    return Ok((false, got.into()));
                }
                if got.len() == H2_PREFACE.len() {
                    return Ok((true, got.into()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// One run of hyper's HTTP/1 connection on `io`: `Some` with the socket when it was parked,
/// `None` when the connection is over (closed, upgraded, timed out, or the server stopped).
async fn serve_h1<H: Handler>(
    io: Parked,
    serve: &Serve<H>,
    builders: &Builders,
    stopped: &mut watch::Receiver<bool>,
) -> Option<Parked> {
    let watchdog = &serve.watchdog;
    let io = Shared(Arc::new(Mutex::new(io)));
    let client = io.clone();
    // Boxed so that a parked connection's task holds no room for it.
    let mut conn = Box::new(
        builders
            .h1
            .serve_connection(watchdog.io(TokioIo::new(io)), serve.service())
            .with_upgrades(),
    );
    // The clocks and the stop signal are polled only when they woke the task, not at each of
    // the connection's wake-ups (see `race`).
    let won = {
        // Dropped once the race is over, so that its clocks wake the task no more and the
        // socket has one owner again.
        let gone = move || client.gone();
        let side = std::pin::pin!(ended_from_outside(watchdog, true, gone, stopped));
        race(&mut *conn, side).await
    };
    let mut parking = false;
    let result = match won {
        Won::Main(result) => result,
        Won::Side(event) => {
            match event {
                Some(Expired::Header) => {
                    serve.clients.timeout(ClientTimeout::Header);
                    tracing::debug!(client = %serve.client.addr(), "client too slow to send a request header; closing");
                    return None;
                }
                Some(Expired::ClientGone) => {
                    tracing::debug!(client = %serve.client.addr(), "client left with its request in flight; closing");
                    return None;
                }
                Some(Expired::Send) => {
                    serve.clients.timeout(ClientTimeout::Send);
                    tracing::debug!(client = %serve.client.addr(), "client read none of its response for the send timeout; closing");
                    return None;
                }
                Some(Expired::Park) => {
                    parking = true;
                    watchdog.set_parking(true);
                }
                Some(Expired::Idle) | None => {}
            }
            Pin::new(&mut *conn).graceful_shutdown();
            (&mut *conn).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, client = %serve.client.addr(), "client connection ended with an error");
        return None;
    }
    if !parking {
        return None;
    }
    watchdog.set_parking(false);
    tracing::trace!(client = %serve.client.addr(), "parked");
    let parts = conn.into_parts()?;
    let mut io = parts.io.into_inner().into_inner().into_inner()?;
    // Copied, or an empty `read_buf` would still hold hyper's whole read buffer.
    io.prefix = if io.prefix.is_empty() && parts.read_buf.is_empty() {
        Bytes::new()
    } else {
        [io.prefix, parts.read_buf].concat().into()
    };
    Some(io)
}

/// What ends a connection from outside it, raced against the connection: a clock of its
/// watchdog (`Some`; the park clock only with `park`), its client leaving (`gone`, asked by the
/// watchdog), or the server's stop (`None`).
async fn ended_from_outside(
    watchdog: &Watchdog,
    park: bool,
    gone: impl Fn() -> bool,
    stopped: &mut watch::Receiver<bool>,
) -> Option<Expired> {
    tokio::select! {
        expired = watchdog.expired(park, gone) => Some(expired),
        _ = until_true(stopped) => None,
    }
}

/// Whether the client closed its side of the connection (or reset it). Reads nothing: a socket
/// with no readiness is answered from tokio's readiness flags, without a syscall; a readable
/// one is peeked, and bytes waiting (a pipelined request) mean it is still there.
fn client_gone(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match stream.try_io(tokio::io::Interest::READABLE, || {
        socket2::SockRef::from(stream).peek(&mut byte)
    }) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// An HTTP/2 connection, never parked (its streams share one connection's state).
async fn serve_h2<H: Handler>(
    stream: Parked,
    serve: Serve<H>,
    builders: &Builders,
    stopped: &mut watch::Receiver<bool>,
) {
    let watchdog = serve.watchdog.clone();
    let client = serve.client.addr();
    let conn = builders
        .h2
        .serve_connection(watchdog.io(TokioIo::new(stream)), serve.service());
    let mut conn = std::pin::pin!(conn);
    let won = {
        // hyper's HTTP/2 notices a client that leaves by itself.
        let side = std::pin::pin!(ended_from_outside(&watchdog, false, || false, stopped));
        race(conn.as_mut(), side).await
    };
    let result = match won {
        Won::Main(result) => result,
        Won::Side(Some(Expired::Header)) => {
            serve.clients.timeout(ClientTimeout::Header);
            return;
        }
        Won::Side(Some(Expired::Send)) => {
            serve.clients.timeout(ClientTimeout::Send);
            return;
        }
        Won::Side(Some(Expired::ClientGone)) => return,
        Won::Side(Some(Expired::Idle | Expired::Park) | None) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %client, "client connection ended with an error");
    }
}

/// The service of one client connection: each request goes to the handler, and its response
/// body holds the watchdog's request guard until its last byte is out.
struct Serve<H> {
    handler: Arc<H>,
    watchdog: Watchdog,
    client: Peer,
    /// `listen.body_read_timeout`, milliseconds, as each request body's clock takes it.
    body_read_ms: u32,
    clients: Arc<ClientMetrics>,
}

impl<H> Clone for Serve<H> {
    fn clone(&self) -> Self {
        Serve {
            handler: self.handler.clone(),
            watchdog: self.watchdog.clone(),
            client: self.client.clone(),
            body_read_ms: self.body_read_ms,
            clients: self.clients.clone(),
        }
    }
}

type Answer<B> = Response<HoldBody<Caught<B>, ActiveGuard>>;

impl<H: Handler> Serve<H> {
    /// hyper's service for this connection. Through `service_fn` the handler's future keeps its
    /// own type, so hyper holds it unboxed: HTTP/1 in the one slot its connection allocates and
    /// reuses for every request, HTTP/2 in the task of the stream. Boxing it in a `Service`
    /// impl instead cost a 3 KiB allocation and free per request.
    fn service(
        &self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Answer<H::Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Answer<H::Body>, Infallible>> + Send + 'static,
    > + Send
           + 'static {
        let serve = self.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let handler = serve.handler.clone();
            let guard = serve.watchdog.request();
            let client = serve.client.clone();
            let clients = serve.clients.clone();
            let body_read_ms = serve.body_read_ms;
            async move {
                let addr = client.addr();
                let req = req.map(|b| ClientBody::hyper(b, body_read_ms));
                let handling = std::pin::pin!(handler.handle(req, client));
                let answered = caught::catching(handling).await;
                let resp = caught::answer(answered, addr, &clients);
                Ok(resp.map(|b| HoldBody::new(b, guard)))
            }
        })
    }
}

/// A client socket, with the bytes hyper had read but not used when it was parked.
struct Parked {
    stream: TcpStream,
    prefix: Bytes,
}

impl AsyncRead for Parked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Parked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A client socket shared by hyper's connection, which reads and writes it, and the watchdog,
/// which asks it whether the client left. Uncontended: the watchdog asks at most once per tick
/// of its clock.
#[derive(Clone)]
struct Shared(Arc<Mutex<Parked>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the client closed its side of the connection (or reset it). Reads nothing: a
    /// socket with no readiness is answered from tokio's readiness flags, without a syscall;
    /// a readable one is peeked, and bytes waiting (a pipelined request) mean it is still there.
    fn gone(&self) -> bool {
        let parked = self.lock();
        parked.prefix.is_empty() && client_gone(&parked.stream)
    }

    /// The socket, once hyper's connection and the watchdog are done with it (`None` if the
    /// watchdog still held it, which ending the race rules out).
    fn into_inner(self) -> Option<Parked> {
        Arc::try_unwrap(self.0)
            .ok()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }
}
