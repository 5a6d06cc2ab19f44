//! What each fuzz target checks, apart from its `fuzz_target!` so that `cargo test` can replay
//! the corpora through the same code (tests/fuzz_corpus.rs). Every function must return for any
//! input; a panic is a finding.

use bytes::{Bytes, BytesMut};
use fulcrum::proxy::h1::{self, Chunked, Decoded, Framing};

/// fulcrum's parser of a client's plain request: whatever it takes lies within the input, and
/// a body it takes is exactly as long as the request declared.
pub fn request_parser(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    let Some((req, _, taken)) = fulcrum::connection::take_plain_request(&input, 64 * 1024) else {
        return;
    };
    assert!(taken <= data.len(), "took {taken} of {} bytes", data.len());
    let declared: usize = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    match req.body() {
        fulcrum::server::ClientBody::Whole(b) => assert_eq!(b.len(), declared),
        fulcrum::server::ClientBody::Hyper(..) => panic!("a plain request's body is whole"),
    }
}

/// A backend's response: its head, then its body as framed, read to the end or to an error.
/// The first byte says whether the request was HEAD.
pub fn response_parser(data: &[u8]) {
    let Some((&flag, wire)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(wire);
    let Ok(Some(head)) = h1::parse_response(&mut buf, flag & 1 == 1) else {
        return;
    };
    let mut framing = head.framing;
    let mut body = 0usize;
    // Each turn takes bytes or ends: at most one turn per byte, and one more.
    for _ in 0..=wire.len() + 1 {
        match framing.decode(&mut buf) {
            Ok(Decoded::Data(d)) => {
                assert!(!d.is_empty() || framing.is_done());
                body += d.len();
                assert!(body <= wire.len());
            }
            Ok(Decoded::NeedMore | Decoded::End) | Err(_) => return,
        }
    }
    panic!("the body decoder went round without taking bytes");
}

/// Chunked decoding, fed whole and fed in pieces (cut where the first bytes say): the same body
/// and the same verdict however the bytes arrive.
pub fn chunked(data: &[u8]) {
    let Some((&cut, wire)) = data.split_first() else {
        return;
    };
    let whole = unchunk(wire, wire.len().max(1));
    let pieces = unchunk(wire, usize::from(cut % 16) + 1);
    assert_eq!(whole, pieces, "fed whole and in pieces of {}", cut % 16 + 1);
}

/// The body and how it ended (true: ended well; false: needs more; `None`: refused).
fn unchunk(wire: &[u8], step: usize) -> Option<(Vec<u8>, bool)> {
    let mut framing = Framing::Chunked(Chunked::default());
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match framing.decode(&mut buf).ok()? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::End => return Some((body, true)),
            Decoded::NeedMore if fed == wire.len() => return Some((body, false)),
            Decoded::NeedMore => {
                let next = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..next]);
                fed = next;
            }
        }
    }
}

/// The config loader: any text is a config or a list of errors, each naming its key.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = fulcrum::config::Config::from_toml(text) {
        assert!(!errors.to_string().is_empty());
    }
}
