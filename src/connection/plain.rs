//! fulcrum's own HTTP/1.1 server for plain requests: an HTTP/1.1 request with no upgrade and
//! no `Expect`, whose head, and its body if it has one (by `Content-Length`), arrive whole in
//! one read. That is nearly every request a load balancer sees, and serving it here costs less than through hyper's connection (its
//! dispatcher, its buffers, a clock read at every poll): the client side's share of fulcrum's
//! CPU fell from about 40% to under 30%. The request is parsed from one read, its head kept in
//! a buffer the run uses again, and the response's head and a small body go out in one write.
//!
//! Anything else (a chunked body or one not all read yet, an upgrade, HTTP/1.0, a head in
//! pieces, too many headers, a malformed head) is handed to hyper's connection with the bytes read so far, and hyper serves the
//! connection until it parks; hyper also answers every bad request (400, 431) itself. The
//! watchdog's clocks, the client-gone check and the graceful stop run here as they do around
//! hyper's connection.

use super::{caught, client_gone, ended_from_outside, Serve};
use crate::proxy::body::BoxError;
use crate::race::{race, Won};
use crate::server::{ClientBody, Handler};
use crate::spare;
use crate::telemetry::metrics::ClientTimeout;
use crate::watchdog::{Expired, Watchdog};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body;
use http_body_util::BodyExt;
use std::cell::RefCell;
use std::io::{self, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::SystemTime;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// One read of the client's socket; a plain request's head arrives whole within it.
const READ_BYTES: usize = 4096;

/// Room for requests' heads, allocated when a run's buffer has too little left.
const HEAD_ROOM: usize = 2048;

/// Most header lines a plain request may have; one with more goes to hyper.
const MAX_HEADERS: usize = 64;

/// Response bytes gathered before a write: a small body goes out with its head in one write.
const GATHER_BYTES: usize = 16 * 1024;

/// How a run of the plain server ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The connection is over.
    Close,
    /// Idle for the park clock: wait for the client's next request holding nothing.
    Park,
    /// A request this server does not read itself: hyper takes over, from these bytes.
    Hyper(Bytes),
}

/// Serves plain requests on `stream`, starting with the bytes in `rest`, until the connection
/// ends, idles for the park clock, or a request needs hyper.
pub(super) async fn run<H: Handler>(
    stream: &TcpStream,
    rest: Bytes,
    serve: &Serve<H>,
    max_head: usize,
    stopped: &mut watch::Receiver<bool>,
) -> Ended {
    let watchdog = &serve.watchdog;
    let closing = AtomicBool::new(false);
    let responding = AtomicBool::new(false);
    let mut main = std::pin::pin!(requests(
        stream,
        rest,
        serve,
        max_head,
        &closing,
        &responding
    ));
    // A panic anywhere in the requests' work is caught at this one place, per poll of the whole
    // run: catching each request's future on its own cost a copy of its answer per request.
    let won = {
        let side = std::pin::pin!(ended_from_outside(
            watchdog,
            true,
            || client_gone(stream),
            stopped
        ));
        race(caught::catching(main.as_mut()), side).await
    };
    match won {
        Won::Main(Ok(ended)) => ended,
        Won::Main(Err(panic)) => panicked(stream, serve, &responding, panic).await,
        Won::Side(Some(Expired::Park)) => Ended::Park,
        Won::Side(Some(Expired::ClientGone)) => {
            tracing::debug!(client = %serve.client.addr(), "client left with its request in flight; closing");
            Ended::Close
        }
        Won::Side(Some(Expired::Send)) => {
            serve.clients.timeout(ClientTimeout::Send);
            tracing::debug!(client = %serve.client.addr(), "client read none of its response for the send timeout; closing");
            Ended::Close
        }
        Won::Side(Some(Expired::Header)) => {
            serve.clients.timeout(ClientTimeout::Header);
            Ended::Close
        }
        Won::Side(Some(Expired::Idle)) => Ended::Close,
        // The server stops: the request in flight finishes, with `Connection: close`.
        Won::Side(None) if watchdog.in_flight() => {
            closing.store(true, Ordering::Relaxed);
            if let Err(panic) = caught::catching(main).await {
                panicked(stream, serve, &responding, panic).await;
            }
            Ended::Close
        }
        Won::Side(None) => Ended::Close,
    }
}

/// After a panic in the run's work: counted and logged; the client gets a 500 unless its
/// response had begun (its head goes out with the first of its body), and the connection ends.
async fn panicked<H: Handler>(
    stream: &TcpStream,
    serve: &Serve<H>,
    responding: &AtomicBool,
    panic: Box<dyn std::any::Any + Send>,
) -> Ended {
    caught::report(
        &serve.clients,
        &*panic,
        "serving a request",
        serve.client.addr(),
    );
    drop(panic);
    if !responding.load(Ordering::Relaxed) {
        let _ = write_all(stream, &serve.watchdog, &caught::panicked_response()).await;
    }
    Ended::Close
}

/// The plain requests of a connection, one after another.
async fn requests<H: Handler>(
    stream: &TcpStream,
    mut rest: Bytes,
    serve: &Serve<H>,
    max_head: usize,
    closing: &AtomicBool,
    responding: &AtomicBool,
) -> Ended {
    // Where requests' heads are kept while they are served: each head is split off and shared
    // by its header values, and the room is used again once they are gone. One allocation per
    // run (and per `HEAD_ROOM` of pipelined heads), where a head of its own cost one per request.
    let mut heads = BytesMut::new();
    // What goes out to the client, kept for the run's next responses.
    let mut out = Vec::with_capacity(512);
    loop {
        if rest.is_empty() {
            // An empty slice still holds the buffer: let go of it, or its room is never
            // used again.
            rest = Bytes::new();
            if stream.readable().await.is_err() {
                return Ended::Close;
            }
            match read(stream, &mut heads) {
                Got::Read => rest = heads.split().freeze(),
                Got::Again => continue,
                Got::Closed => return Ended::Close,
            }
        }
        let Some((request, close, len)) = take(&rest, max_head) else {
            return Ended::Hyper(rest);
        };
        rest.advance(len);
        let head_request = request.method() == Method::HEAD;
        let guard = serve.watchdog.request_here();
        let response = serve.handler.handle(request, serve.client.clone()).await;
        let close = close || closing.load(Ordering::Relaxed);
        let watchdog = &serve.watchdog;
        responding.store(true, Ordering::Relaxed);
        let kept = match respond(stream, watchdog, &mut out, response, head_request, close).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::debug!(error = %e, client = %serve.client.addr(), "response to the client cut short");
                false
            }
        };
        responding.store(false, Ordering::Relaxed);
        drop(guard);
        if !kept || closing.load(Ordering::Relaxed) {
            return Ended::Close;
        }
    }
}

/// What one read of the client's socket gave.
enum Got {
    /// Bytes, added to the heads' buffer.
    Read,
    /// Nothing to read after all.
    Again,
    /// The client closed the connection (or it broke).
    Closed,
}

/// Reads once from `stream` into this thread's read buffer, and adds what came to `heads`.
fn read(stream: &TcpStream, heads: &mut BytesMut) -> Got {
    thread_local! {
        // One per worker thread rather than on the stack: a fresh stack buffer was zeroed on
        // every read (1% of the CPU), and the connection's future never holds it.
        static BUF: RefCell<[u8; READ_BYTES]> = const { RefCell::new([0; READ_BYTES]) };
    }
    BUF.with_borrow_mut(|buf| {
        let mut got = 0;
        let polled = stream.try_io(Interest::READABLE, || {
            let n = (&*socket2::SockRef::from(stream)).read(buf)?;
            got = n;
            // A short read emptied the socket: tokio forgets the readiness now, as its own
            // reads do, rather than learning it from one more read that would block.
            if n > 0 && n < READ_BYTES {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match polled {
            Ok(()) if got == 0 => return Got::Closed,
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if got == 0 {
                    return Got::Again;
                }
            }
            Err(_) => return Got::Closed,
        }
        if heads.capacity() - heads.len() < got {
            heads.reserve(got.max(HEAD_ROOM));
        }
        heads.extend_from_slice(&buf[..got]);
        Got::Read
    })
}

/// [`take`], for the fuzz targets and the test that holds it to hyper's verdicts. A function of
/// its own, so that `take` stays the request loop's to inline.
pub fn take_request(input: &Bytes, max_head: usize) -> Option<(Request<ClientBody>, bool, usize)> {
    take(input, max_head)
}

/// The plain request at the start of `input`: the request (its head and body shared with
/// `input`), whether the client asked to close, and how many bytes it took. `None` when the
/// request is not plain, is not whole, or is not well-formed: hyper's to read.
fn take(input: &Bytes, max_head: usize) -> Option<(Request<ClientBody>, bool, usize)> {
    // Uninitialised slots: zeroing them for every request costs more than parsing.
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(input, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        _ => return None,
    };
    if parsed.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    let mut close = false;
    let mut length: Option<usize> = None;
    let mut lengths = 0;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // Digits only, and every Content-Length alike; anything else is hyper's to refuse.
            if h.value.is_empty() || h.value.len() > 12 || !h.value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n = std::str::from_utf8(h.value).ok()?.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
            lengths += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return None;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if lists(h.value, b"upgrade") {
                return None;
            }
            close |= lists(h.value, b"close");
        }
    }
    // A body is read here only when it came whole with its head.
    let taken = len.checked_add(length.unwrap_or(0))?;
    if taken > input.len() {
        return None;
    }
    let body = input.slice(len..taken);
    // Where a slice of `input`, borrowed by the parse, sits in it.
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - input.as_ptr() as usize;
        input.slice(start..start + part.len())
    };
    let uri = Uri::from_maybe_shared(at(parsed.path?.as_bytes())).ok()?;
    let mut headers = spare::header_map(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // Equal lengths said twice are one length, as hyper reads them.
        if lengths > 1 && name == CONTENT_LENGTH && headers.contains_key(CONTENT_LENGTH) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(at(h.value)).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(ClientBody::Whole(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some((request, close, taken))
}

/// How the response's body is delimited on the wire.
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// This many bytes.
    Length(u64),
    Chunked,
}

/// Writes `response` to the client; whether the connection stays open for the next request.
/// Errors are the client's socket's or the body's: the connection is closed.
async fn respond<B>(
    stream: &TcpStream,
    watchdog: &Watchdog,
    out: &mut Vec<u8>,
    response: Response<B>,
    head_request: bool,
    close: bool,
) -> io::Result<bool>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let (parts, mut body) = response.into_parts();
    out.clear();
    let (mut framing, keep) = encode_head(
        out,
        parts.status,
        &parts.headers,
        &body,
        head_request,
        close,
    );
    spare::recycle(parts.headers);
    let mut trailers = None;
    loop {
        if body.is_end_stream() {
            break;
        }
        // What the body has now goes out with what is gathered; only then wait for more.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
            .await
        {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(stream, watchdog, out).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(io::Error::other)?;
        match frame.into_data() {
            Ok(data) => gather(stream, watchdog, out, &mut framing, data).await?,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    match framing {
        Framing::Length(left) if left > 0 => {
            // The body ended short of its length: the client sees the connection close.
            write_all(stream, watchdog, out).await?;
            return Ok(false);
        }
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n");
            if let Some(trailers) = &trailers {
                encode_headers(out, trailers);
            }
            out.extend_from_slice(b"\r\n");
        }
        Framing::None | Framing::Length(_) => {}
    }
    write_all(stream, watchdog, out).await?;
    Ok(keep)
}

/// Writes the status line and headers into `out`, with the framing, `Date` and
/// `Connection: close` hyper would add; the body's framing, and whether to keep the connection.
fn encode_head<B: Body>(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &B,
    head_request: bool,
    close: bool,
) -> (Framing, bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut length = None;
    let mut dated = false;
    let mut close_listed = false;
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            // The framing is this server's to choose.
            continue;
        }
        if name == CONTENT_LENGTH {
            match value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                // Unreadable or two lengths: framed by the body instead.
                _ => continue,
            }
        } else if name == DATE {
            dated = true;
        } else if name == CONNECTION {
            close_listed |= lists(value.as_bytes(), b"close");
        }
        encode_header(out, name, value);
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    if close && !close_listed {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        // Formatted straight into the buffer: `io::Write` on a `Vec` cannot fail.
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    (framing, !(close || close_listed))
}

/// Whether a comma-separated header value (`Connection`) lists `token`, in any case: as
/// `headers::lists` does for a header map, on the bytes of one value.
fn lists(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn encode_header(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn encode_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        encode_header(out, name, value);
    }
}

/// Adds a body's `data` to what goes out, framed; writes when enough has gathered. A body
/// longer than its length is an error: what it said it was went out, the rest would be taken
/// for the next response.
async fn gather(
    stream: &TcpStream,
    watchdog: &Watchdog,
    out: &mut Vec<u8>,
    framing: &mut Framing,
    data: Bytes,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    match framing {
        Framing::None => return Ok(()),
        Framing::Length(left) => {
            if data.len() as u64 > *left {
                let fits = usize::try_from(*left).unwrap_or(usize::MAX);
                out.extend_from_slice(&data[..fits]);
                write_all(stream, watchdog, out).await?;
                return Err(io::Error::other(
                    "the response body is longer than its length",
                ));
            }
            *left -= data.len() as u64;
        }
        Framing::Chunked => {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
    }
    if out.len() + data.len() <= GATHER_BYTES {
        out.extend_from_slice(&data);
    } else {
        flush(stream, watchdog, out).await?;
        write_all(stream, watchdog, &data).await?;
    }
    if matches!(framing, Framing::Chunked) {
        out.extend_from_slice(b"\r\n");
    }
    if out.len() >= GATHER_BYTES {
        flush(stream, watchdog, out).await?;
    }
    Ok(())
}

/// Writes what has gathered in `out` to the client, and empties it.
async fn flush(stream: &TcpStream, watchdog: &Watchdog, out: &mut Vec<u8>) -> io::Result<()> {
    write_all(stream, watchdog, out).await?;
    out.clear();
    Ok(())
}

/// Writes all of `buf` to the client. Through a shared reference to the socket, not tokio's
/// `write_all`: the watchdog's client-gone check peeks the same socket meanwhile. A write that
/// finds no room starts the watchdog's send clock; one that goes through stops it.
async fn write_all(stream: &TcpStream, watchdog: &Watchdog, mut buf: &[u8]) -> io::Result<()> {
    let mut blocked = false;
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                if std::mem::take(&mut blocked) {
                    watchdog.wrote();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked = true;
                watchdog.write_blocked();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Calls `f` with the `Date` header's value for now, formatted once a second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;

    fn taken(input: &[u8]) -> Option<(Request<ClientBody>, bool, usize)> {
        take(&Bytes::copy_from_slice(input), 8192)
    }

    #[test]
    fn a_plain_request_is_taken_with_its_head() {
        let input = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next";
        let (req, close, len) = taken(input).expect("plain");
        assert_eq!(len, input.len() - b"GET /next".len());
        assert!(!close);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "x");
        let a: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert!(req.body().is_end_stream());
    }

    #[test]
    fn a_body_that_came_whole_with_its_head_is_taken_too() {
        let input = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1";
        let (req, _, len) = taken(input).expect("plain");
        assert_eq!(len, input.len() - b"GET / HTTP/1.1".len());
        let body = req.into_body();
        assert_eq!(body.size_hint().exact(), Some(5));
        let data = futures_now(body.collect()).unwrap().to_bytes();
        assert_eq!(&data[..], b"hello");
    }

    /// The output of a future that is ready at once.
    fn futures_now<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("not ready at once"),
        }
    }

    #[test]
    fn connection_close_is_noted() {
        let (_, close, _) =
            taken(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").unwrap();
        assert!(close);
    }

    #[test]
    fn what_is_not_plain_is_left_to_hyper() {
        for input in [
            &b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET  HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                taken(input).is_none(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        assert!(taken(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).is_none());
        // A head over the limit: hyper answers 431.
        let input = Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(take(&input, 10).is_none());
        // An empty body is still plain.
        assert!(taken(b"DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());
    }

    fn head_of<B: Body>(
        status: u16,
        headers: &[(&str, &str)],
        body: &B,
        head: bool,
        close: bool,
    ) -> (String, Framing, bool) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        let (framing, keep) = encode_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &map,
            body,
            head,
            close,
        );
        (String::from_utf8(out).unwrap(), framing, keep)
    }

    #[test]
    fn a_head_says_how_its_body_is_framed() {
        let sized = http_body_util::Full::new(Bytes::from_static(b"hello"));
        let (head, framing, keep) = head_of(
            200,
            &[("date", "d"), ("content-length", "5")],
            &sized,
            false,
            false,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 5\r\n\r\n"
        );
        assert!(matches!(framing, Framing::Length(5)) && keep);

        let (head, framing, _) = head_of(404, &[("date", "d")], &sized, false, false);
        assert_eq!(
            head,
            "HTTP/1.1 404 Not Found\r\ndate: d\r\ncontent-length: 5\r\n\r\n"
        );
        assert!(matches!(framing, Framing::Length(5)));

        let stream = http_body_util::StreamBody::new(futures_empty());
        let (head, framing, _) = head_of(
            200,
            &[("date", "d"), ("transfer-encoding", "chunked")],
            &stream,
            false,
            false,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: d\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert!(matches!(framing, Framing::Chunked));

        let (head, framing, keep) = head_of(
            200,
            &[("date", "d"), ("content-length", "5")],
            &sized,
            true,
            true,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: d\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"
        );
        assert!(matches!(framing, Framing::None) && !keep);

        let (head, _, keep) = head_of(204, &[("connection", "close")], &sized, false, false);
        assert!(
            head.starts_with("HTTP/1.1 204 No Content\r\nconnection: close\r\ndate: "),
            "{head}"
        );
        assert!(head.ends_with(" GMT\r\n\r\n") && !keep, "{head}");
    }

    fn futures_empty() -> impl futures_core::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        struct Never;
        impl futures_core::Stream for Never {
            type Item = Result<Frame<Bytes>, BoxError>;
            fn poll_next(
                self: Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                Poll::Pending
            }
        }
        Never
    }
}
