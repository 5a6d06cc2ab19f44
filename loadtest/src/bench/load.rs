//! The bench's closed-loop load: N keep-alive connections on one thread, each sending its next
//! request as soon as the last answer is in, as wrk does. Requests are written from one
//! prepared buffer and answers parsed with httparse (the parser hyper uses), with no per-request
//! allocation, so the generator takes as little of the shared CPU as it can. Only requests
//! sent and answered inside the measuring window count.

use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The request every connection sends.
pub const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: loadtest-bench\r\nAccept: */*\r\n\r\n";

/// Longer than any answer may take before its connection counts as broken.
const STUCK: Duration = Duration::from_secs(5);

/// When requests count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Requests sent before this are warm-up.
    pub start: Instant,
    /// Connections stop here; requests answered after it do not count.
    pub end: Instant,
}

/// What the clients saw in the window.
#[derive(Debug, Clone)]
pub struct Tally {
    /// 2xx answers.
    pub ok: u64,
    /// Answers that were not 2xx, broken connections and failed connects.
    pub errors: u64,
    /// Latency of the 2xx answers, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Tally {
    /// Nothing yet.
    pub fn empty() -> Tally {
        Tally {
            ok: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Adds what `other` saw (another turn of the same measure).
    pub fn absorb(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        // Both have the same bounds (`empty`): adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    /// The latency at `q` (0..=100) percent.
    pub fn percentile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_percentile(q))
    }
}

/// Drives `connections` connections, spread round robin over `targets`, until `window.end`.
/// Call it on a current-thread runtime: the connections share one thread and one tally.
pub async fn closed_loop(targets: &[SocketAddr], connections: usize, window: Window) -> Tally {
    let tally = Rc::new(RefCell::new(Tally::empty()));
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let tasks: Vec<_> = (0..connections)
                .filter_map(|i| targets.get(i % targets.len().max(1)).copied())
                .map(|addr| tokio::task::spawn_local(connection(addr, tally.clone(), window)))
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
    Rc::try_unwrap(tally).map_or_else(|rc| rc.borrow().clone(), RefCell::into_inner)
}

async fn connection(addr: SocketAddr, tally: Rc<RefCell<Tally>>, window: Window) {
    let mut conn: Option<Conn> = None;
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            return;
        }
        let counts = sent >= window.start;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn.insert(Conn::new(s))
                }
                Err(_) => {
                    if counts {
                        tally.borrow_mut().errors += 1;
                    }
                    // A refused connect returns at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        let answer = tokio::time::timeout(STUCK, c.exchange(REQUEST)).await;
        let done = Instant::now();
        let counts = sent >= window.start && done <= window.end;
        match answer {
            Ok(Ok(a)) => {
                if counts {
                    let mut t = tally.borrow_mut();
                    if (200..300).contains(&a.status) {
                        t.ok += 1;
                        let ns = (done - sent).as_nanos().min(u64::MAX as u128) as u64;
                        t.latency.saturating_record(ns.max(1));
                    } else {
                        t.errors += 1;
                    }
                }
                if a.close {
                    conn = None;
                }
            }
            _ => {
                if counts {
                    tally.borrow_mut().errors += 1;
                }
                conn = None;
            }
        }
    }
}

/// One answer, as far as the load cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// The server closes the connection after it.
    pub close: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A client connection with its read buffer.
pub struct Conn<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Conn<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Writes `request` and reads its whole answer.
    pub async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        self.stream.write_all(request).await?;
        let (head, status, framing, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf).map_err(invalid)? {
                httparse::Status::Complete(n) => {
                    let (framing, close) = framing(resp.headers)?;
                    break (n, resp.code.unwrap_or(0), framing, close);
                }
                httparse::Status::Partial => self.fill().await?,
            }
        };
        self.buf.drain(..head);
        match framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                self.buf.drain(..n);
            }
            Framing::Chunked => self.chunks().await?,
            Framing::UntilClose => {
                while self.stream.read_buf(&mut self.buf).await? > 0 {
                    self.buf.clear();
                }
                return Ok(Answer {
                    status,
                    close: true,
                });
            }
        }
        Ok(Answer { status, close })
    }

    async fn chunks(&mut self) -> std::io::Result<()> {
        loop {
            let (line, size) = loop {
                match httparse::parse_chunk_size(&self.buf).map_err(invalid)? {
                    httparse::Status::Complete(c) => break c,
                    httparse::Status::Partial => self.fill().await?,
                }
            };
            let size = usize::try_from(size).map_err(invalid)?;
            if size == 0 {
                self.buf.drain(..line);
                // The trailer section, usually empty, ends with an empty line.
                loop {
                    if self.buf.starts_with(b"\r\n") {
                        self.buf.drain(..2);
                        return Ok(());
                    }
                    if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        self.buf.drain(..end + 4);
                        return Ok(());
                    }
                    self.fill().await?;
                }
            }
            let whole = line + size + 2;
            while self.buf.len() < whole {
                self.fill().await?;
            }
            self.buf.drain(..whole);
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

fn framing(headers: &[httparse::Header<'_>]) -> std::io::Result<(Framing, bool)> {
    let mut framing = Framing::UntilClose;
    let mut close = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("a bad content-length"))?;
            if !matches!(framing, Framing::Chunked) {
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value.eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    Ok((framing, close))
}

fn invalid<E: std::fmt::Debug>(e: E) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Feeds `answers` to a Conn through an in-memory pipe, in pieces of `step` bytes.
    async fn read_all(wire: &'static [u8], step: usize, n: usize) -> Vec<Answer> {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            for piece in wire.chunks(step) {
                server.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            // Keep the pipe open until the reader is done.
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        });
        let mut conn = Conn::new(client);
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(conn.exchange(b"GET / HTTP/1.1\r\n\r\n").await.unwrap());
        }
        drop(conn);
        writer.await.unwrap();
        out
    }

    const WIRE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
        HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
        HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-trailer: 1\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive, close\r\n\r\n";

    #[tokio::test]
    async fn answers_are_framed_by_length_chunks_and_trailers() {
        let want = vec![
            Answer {
                status: 200,
                close: false,
            },
            Answer {
                status: 503,
                close: false,
            },
            Answer {
                status: 200,
                close: false,
            },
            Answer {
                status: 200,
                close: true,
            },
        ];
        // Whole, and split at every few bytes so each partial state is met.
        assert_eq!(read_all(WIRE, WIRE.len(), 4).await, want);
        assert_eq!(read_all(WIRE, 3, 4).await, want);
    }

    #[tokio::test]
    async fn a_bad_answer_is_an_error_not_a_panic() {
        let (client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n")
            .await
            .unwrap();
        let mut conn = Conn::new(client);
        let e = conn.exchange(b"GET / HTTP/1.1\r\n\r\n").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        drop(server);
        let e = conn.exchange(b"GET / HTTP/1.1\r\n\r\n").await.unwrap_err();
        assert!(matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe
        ));
    }
}
