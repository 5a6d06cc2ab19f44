//! HTTP/1.1 on the wire to a backend, for the requests whose body is known whole: the request
//! head written into one buffer, the response head parsed with httparse, and the response body
//! unframed (RFC 9112 §6.3: no body, `Content-Length`, chunked, or to the close). Pure: bytes in,
//! bytes out, no socket; [`super::forward`] drives it on its pooled connections.
//!
//! hyper's client connection does the same work from a task of its own, fed by a channel, with
//! its own buffers: a proxy pays for that hop on every request. Reading and writing in the
//! request's own task costs the syscalls and little else.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// The most headers a backend's response may carry.
const MAX_HEADERS: usize = 128;
/// The largest response head (and chunk-size line, and trailer section) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why a backend's bytes are not HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The head, a chunk or the framing headers are malformed or too large.
    Malformed,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed HTTP/1.1 response from the backend")
    }
}

impl std::error::Error for WireError {}

/// Appends the request head (and `body`) to `out`. `headers`, then `added`, are forwarded as
/// they are but for the framing ones, which this writes for `body`, and Host when `host`
/// replaces it.
pub fn encode_request<'a>(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &'a HeaderMap,
    added: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    host: Option<&HeaderValue>,
    body: &[u8],
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers.iter().chain(added) {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || (host.is_some() && name == HOST) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A body-less GET says nothing; methods that carry a body say it is empty (as hyper does).
    let declares =
        !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if declares {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// Status, version and headers; the body comes after.
    pub response: Response<()>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once this body ends.
    pub keep_alive: bool,
}

/// Parses a response head from the start of `buf`, taking its bytes. `Ok(None)`: incomplete,
/// read more. Interim 1xx responses (but 101) are taken and skipped. `head_request`: the
/// request was HEAD, so the response has no body whatever its headers say.
pub fn parse_response(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, WireError> {
    loop {
        // Uninitialised slots: zeroing 128 of them for every response costs more than parsing.
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parser = httparse::ParserConfig::default();
        let len = match parser.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(WireError::Malformed)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(WireError::Malformed),
        };
        let code = parsed.code.ok_or(WireError::Malformed)?;
        let status = StatusCode::from_u16(code).map_err(|_| WireError::Malformed)?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Where each name and value sits in the head: the values then share its bytes. Kept on
        // the stack for the first few (a `Vec` per response was an allocation per request).
        let base = buf.as_ptr() as usize;
        let at = |field: &[u8]| {
            let start = field.as_ptr() as usize - base;
            Span::new(start, field.len())
        };
        let mut few = [(Span::default(), Span::default()); FEW_HEADERS];
        let mut more = Vec::new();
        for (i, h) in parsed.headers.iter().enumerate() {
            let span = (at(h.name.as_bytes()), at(h.value));
            match few.get_mut(i) {
                Some(slot) => *slot = span,
                None => more.push(span),
            }
        }
        let count = parsed.headers.len();
        let head = buf.split_to(len).freeze();
        // Room for the two fulcrum adds to every response (Via, X-Request-Id): growing the map
        // for them reallocated it, ~1% of the request path's CPU.
        let mut headers = crate::spare::header_map(count + 2);
        // Noted as the names go by, so that the framing and keep-alive checks below look up
        // only the headers that are there (most responses carry no `Transfer-Encoding` and no
        // `Connection`).
        let mut seen = Seen::default();
        for (name, value) in few[..count.min(FEW_HEADERS)].iter().chain(&more) {
            let (name, value) = (name.range(), value.range());
            if name.end > head.len() || value.end > head.len() {
                return Err(WireError::Malformed);
            }
            let name = HeaderName::from_bytes(&head[name]).map_err(|_| WireError::Malformed)?;
            let value = HeaderValue::from_maybe_shared(head.slice(value))
                .map_err(|_| WireError::Malformed)?;
            seen.note(&name);
            headers.append(name, value);
        }
        let framing = framing(status, &headers, head_request, seen)?;
        if seen.transfer_encoding && seen.content_length {
            // Both framings named: the coding wins (RFC 9112 §6.3), and a length passed on
            // would frame the client's copy wrongly.
            headers.remove(CONTENT_LENGTH);
        }
        // A switched connection is the tunnel's, never another request's. A 204 that declares
        // a body (RFC 9110 §15.3.5 forbids it) may well send one after it: those bytes would
        // be the next request's answer.
        let keep_alive = version == Version::HTTP_11
            && status != StatusCode::SWITCHING_PROTOCOLS
            && !matches!(framing, Framing::Close)
            && !(seen.connection && super::headers::lists(&headers, CONNECTION, "close"))
            && !(status == StatusCode::NO_CONTENT && declares_body(&headers, seen));
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// Whether the headers announce a body: a coding, or a length other than 0.
fn declares_body(headers: &HeaderMap, seen: Seen) -> bool {
    seen.transfer_encoding
        || (seen.content_length
            && headers
                .get_all(CONTENT_LENGTH)
                .iter()
                .any(|v| v.as_bytes() != b"0"))
}

/// Which of the headers that frame a response and end its connection it carries.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName) {
        // Standard names compare as an enum, not as bytes.
        if *name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == CONTENT_LENGTH {
            self.content_length = true;
        } else if *name == CONNECTION {
            self.connection = true;
        }
    }
}

/// Response headers whose place in the head is kept on the stack; more go to a `Vec`.
const FEW_HEADERS: usize = 32;

/// Where a field sits in a response head (at most [`MAX_HEAD_BYTES`], so `u32` holds it).
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn new(start: usize, len: usize) -> Span {
        // Both lie within a head of at most MAX_HEAD_BYTES; one that did not would be out of
        // the head's range, which the caller checks.
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(len).unwrap_or(0),
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// How a response's body is delimited (RFC 9112 §6.3).
fn framing(
    status: StatusCode,
    headers: &HeaderMap,
    head: bool,
    seen: Seen,
) -> Result<Framing, WireError> {
    if head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    if seen.transfer_encoding {
        // The final coding is the last token of the last value.
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').map(str::trim).find(|t| !t.is_empty()));
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case("chunked") => Framing::Chunked(Chunked::default()),
            // Any other final coding runs to the close.
            _ => Framing::Close,
        });
    }
    if !seen.content_length {
        return Ok(Framing::Close);
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.to_str().map_err(|_| WireError::Malformed)?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(WireError::Malformed);
            }
            let n: u64 = part.parse().map_err(|_| WireError::Malformed)?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Malformed);
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// How much of a body is left, and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Close,
}

/// What [`Framing::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// Nothing yet: read more.
    NeedMore,
    /// The body is complete.
    End,
}

impl Framing {
    /// Takes the next body bytes from `buf`. For [`Framing::Close`], the caller decides the end
    /// (the backend's close); every other framing ends by itself.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        match self {
            Framing::Length(0) => Ok(Decoded::End),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Ok(Decoded::Data(buf.split_to(n).freeze()))
            }
            Framing::Chunked(c) => c.decode(buf),
            Framing::Close if buf.is_empty() => Ok(Decoded::NeedMore),
            Framing::Close => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// Whether the body has ended (all of a length read, the last chunk and trailers seen).
    pub fn is_done(&self) -> bool {
        match self {
            Framing::Length(left) => *left == 0,
            Framing::Chunked(c) => c.state == ChunkState::Done,
            Framing::Close => false,
        }
    }

    /// Bytes left, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Length(left) => Some(*left),
            _ => None,
        }
    }
}

/// The chunked decoder's place in the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes left in the current chunk.
    left: u64,
    /// Trailer bytes seen, bounded by [`MAX_HEAD_BYTES`].
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// At a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data.
    Data,
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    // Hex digits and nothing else (RFC 9112 §7.1: no sign, no leading space),
                    // then optional extensions after ';' (with the spaces or tabs allowed
                    // before it), which are ignored.
                    let size = line.split(|&b| b == b';').next().unwrap_or_default();
                    let end = size
                        .iter()
                        .rposition(|&b| b != b' ' && b != b'\t')
                        .map_or(0, |i| i + 1);
                    let digits = &size[..end];
                    if digits.is_empty()
                        || digits.len() > 15
                        || !digits.iter().all(u8::is_ascii_hexdigit)
                    {
                        return Err(WireError::Malformed);
                    }
                    self.left = digits.iter().fold(0u64, |n, &d| {
                        n << 4 | u64::from(char::from(d).to_digit(16).unwrap_or(0))
                    });
                    self.state = if self.left == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    self.left -= n as u64;
                    if self.left == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Malformed);
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    // Trailers are dropped: nothing fulcrum forwards depends on them.
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_HEAD_BYTES {
                        return Err(WireError::Malformed);
                    }
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Takes one CRLF-ended line from `buf`, without its CRLF; `None` if no full line is there yet.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = buf.split_to(end).freeze();
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_HEAD_BYTES => Err(WireError::Malformed),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(text);
        let head = parse_response(&mut buf, false).unwrap().unwrap();
        (head, buf)
    }

    /// Feeds `wire` to a decoder `step` bytes at a time; the body and whether it ended.
    fn unframe(
        mut framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, bool), WireError> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End => return Ok((body, true)),
                Decoded::NeedMore if fed == wire.len() => return Ok((body, false)),
                Decoded::NeedMore => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    fn encoded(method: Method, uri: &str, headers: &HeaderMap, body: &[u8]) -> String {
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &method,
            &uri.parse().unwrap(),
            headers,
            std::iter::empty(),
            None,
            body,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_request_head_carries_every_header_and_frames_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("b:80"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(
            encoded(Method::POST, "/p?q=1", &headers, b"hello"),
            "POST /p?q=1 HTTP/1.1\r\nhost: b:80\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\nhello"
        );
        let mut out = Vec::new();
        let backend = HeaderValue::from_static("10.0.0.1:8080");
        let added = [
            (
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("3"),
            ),
            (CONTENT_LENGTH, HeaderValue::from_static("99")),
        ];
        encode_request(
            &mut out,
            &Method::GET,
            &Uri::from_static("/"),
            &headers,
            added.iter().map(|(n, v)| (n, v)),
            Some(&backend),
            b"",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-a: 1\r\nx-a: 2\r\nx-b: 3\r\n\r\n",
            "the backend's Host replaces the client's; added headers come last, framing still \
             fulcrum's"
        );
        let none = HeaderMap::new();
        assert_eq!(
            encoded(Method::GET, "/", &none, b""),
            "GET / HTTP/1.1\r\n\r\n"
        );
        assert_eq!(
            encoded(Method::PUT, "/", &none, b""),
            "PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_response_head_is_parsed_and_its_bytes_taken() {
        let (h, rest) = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-B: a b\r\n\r\nokNEXT");
        assert_eq!(h.response.status(), 200);
        assert_eq!(h.response.headers()["x-b"], "a b");
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(&rest[..], b"okNEXT");
    }

    #[test]
    fn a_head_with_more_headers_than_the_stack_keeps_is_parsed_whole() {
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..FEW_HEADERS + 8 {
            text.push_str(&format!("X-H{i}: v{i}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        let (h, _) = head(&text);
        let headers = h.response.headers();
        assert_eq!(headers.len(), FEW_HEADERS + 9);
        for i in 0..FEW_HEADERS + 8 {
            assert_eq!(headers[format!("x-h{i}")], format!("v{i}"));
        }
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_garbage_is_refused() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(parse_response(&mut buf, false).unwrap().is_none());
        assert_eq!(buf.len(), 27, "nothing taken");
        let mut buf = BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n");
        assert_eq!(
            parse_response(&mut buf, false).unwrap_err(),
            WireError::Malformed
        );
        let mut buf = BytesMut::from(&vec![b'a'; MAX_HEAD_BYTES + 1][..]);
        buf[..9].copy_from_slice(b"HTTP/1.1 ");
        assert!(parse_response(&mut buf, false).is_err());
    }

    #[test]
    fn interim_responses_are_skipped() {
        let (h, rest) = head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.response.status(), 204);
        assert_eq!(h.framing, Framing::Length(0));
        assert!(rest.is_empty());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |t: &str| head(t).0;
        assert!(matches!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").framing,
            Framing::Chunked(_)
        ));
        let gz = f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(gz.framing, Framing::Close);
        assert!(!gz.keep_alive, "a body to the close ends the connection");
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n").framing, Framing::Close);
        assert_eq!(
            f("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").framing,
            Framing::Length(0)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n").framing,
            Framing::Length(3)
        );
        assert!(!f("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!f("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!f("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n").keep_alive);
        let both = f("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(both.framing, Framing::Chunked(_)));
        assert!(!both.response.headers().contains_key("content-length"));
        for bad in [
            "Content-Length: 3, 4",
            "Content-Length: -1",
            "Content-Length: 0x10",
        ] {
            let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n").as_str());
            assert!(parse_response(&mut buf, false).is_err(), "{bad}");
        }
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        let h = parse_response(&mut buf, true).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(0), "a HEAD response has no body");
    }

    #[test]
    fn a_204_that_declares_a_body_ends_its_connection() {
        let f = |t: &str| head(t).0.keep_alive;
        assert!(f("HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(f("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"));
        assert!(!f("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"));
        assert!(!f(
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        // A 304's length is the representation's, as RFC 9110 allows: no body follows it.
        assert!(f("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"));
    }

    #[test]
    fn a_chunk_size_may_be_followed_by_spaces_and_an_extension() {
        let chunked = Framing::Chunked(Chunked::default());
        for wire in [
            &b"5 ;x=1\r\nhello\r\n0\r\n\r\n"[..],
            b"5\t \r\nhello\r\n0\r\n\r\n",
        ] {
            let (body, ended) = unframe(chunked.clone(), wire, 64).unwrap();
            assert_eq!((body.as_slice(), ended), (&b"hello"[..], true));
        }
    }

    #[test]
    fn bodies_are_unframed_however_the_bytes_are_split() {
        let chunked = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..=chunked.len() {
            let (body, ended) =
                unframe(Framing::Chunked(Chunked::default()), chunked, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert!(ended);
            let (body, ended) = unframe(Framing::Length(5), b"hello", step).unwrap();
            assert_eq!((body.as_slice(), ended), (&b"hello"[..], true));
        }
        let (body, ended) = unframe(Framing::Close, b"to the end", 3).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"to the end"[..], false));
    }

    #[test]
    fn a_length_body_leaves_what_follows_it() {
        let mut buf = BytesMut::from("okHTTP/1.1");
        let mut f = Framing::Length(2);
        assert_eq!(
            f.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"ok"))
        );
        assert!(f.is_done());
        assert_eq!(f.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"10000000000000000\r\n",
            b"+5\r\nhello\r\n",
            b" 5\r\nhello\r\n",
            b"-5\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
        ] {
            assert!(
                unframe(Framing::Chunked(Chunked::default()), bad, 64).is_err(),
                "{bad:?}"
            );
        }
    }
}
