//! The access log and the request id. Every request on the proxy listener gets one `info` event
//! under the target `fulcrum::access` (`RUST_LOG=fulcrum::access=off` silences it, as does
//! `[log] access = false`), written when the response's last byte is out or the client goes
//! away first, as nginx writes its log after the response. The same moment records the
//! client-seen duration histogram, so the log and the metric agree.
//!
//! The request id is the client's `x-request-id` when it sent a usable one (1 to 128 visible
//! ASCII characters), else 32 random hex digits; it goes to the backend and back to the client.

use super::metrics::{BackendMetrics, UpstreamMetrics};
use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// The tracing target of access events.
pub const TARGET: &str = "fulcrum::access";

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The status an entry logs when its client left before the response (nginx's "client closed
/// request").
const CLIENT_LEFT: u16 = 499;

/// The longest client-sent request id kept.
const MAX_ID_LEN: usize = 128;

/// The request's id: the client's, if usable, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&REQUEST_ID) {
        Some(v) if usable(v.as_bytes()) => v.clone(),
        _ => new_id(),
    }
}

fn usable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.iter().all(u8::is_ascii_graphic)
}

fn new_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id = IDS.with(|rng| rng.borrow_mut().random::<u128>());
    // By hand rather than `format!`: this runs on every request without an id. A byte at a
    // time, two digits each, rather than a shift of the whole u128 for every digit.
    let mut text = [0u8; 32];
    for (pair, byte) in text.chunks_exact_mut(2).zip(id.to_be_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    // Split from a block of ids shared per thread: the id is cloned into the backend's
    // request, the response and the log (a copied slice would be copied again at its first
    // clone), and a block holds 128 ids, used again once they are all gone, where an id of
    // its own cost an allocation per request. Hex digits are always a valid header value.
    let id = ID_BLOCK.with_borrow_mut(|block| {
        if block.capacity() - block.len() < text.len() {
            block.reserve(ID_BLOCK_BYTES);
        }
        block.extend_from_slice(&text);
        block.split().freeze()
    });
    HeaderValue::from_maybe_shared(id).unwrap_or(HeaderValue::from_static("-"))
}

/// Room for 128 request ids.
const ID_BLOCK_BYTES: usize = 128 * 32;

thread_local! {
    /// Request ids need to be unique, not secret: a small generator per thread, seeded from the
    /// OS-seeded one, costs a fraction of rand's default (ChaCha) one per id.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
    /// Where new request ids are written (see `new_id`).
    static ID_BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// One request's entry, filled in along the request path; written, with the metrics it feeds,
/// when dropped.
pub struct Access {
    started: Instant,
    request_id: HeaderValue,
    client: SocketAddr,
    method: Method,
    /// The path, kept only when the event will be written.
    path: Option<String>,
    upstream: Option<Arc<UpstreamMetrics>>,
    /// The upstream's and the last try's backend's names, kept only when the event will be
    /// written: each kept name is an atomic increment and decrement on the request path.
    upstream_name: Option<Arc<str>>,
    backend: Option<Arc<str>>,
    /// The backend whose response is the answer, if one is.
    answered_by: Option<Arc<BackendMetrics>>,
    tries: u32,
    status: u16,
}

impl Access {
    /// The entry of a request that arrived at `started`; `log` says whether to write it.
    pub fn new(
        method: &Method,
        path: &str,
        client: SocketAddr,
        request_id: HeaderValue,
        log: bool,
        started: Instant,
    ) -> Access {
        let log = log && tracing::enabled!(target: TARGET, tracing::Level::INFO);
        Access {
            started,
            request_id,
            client,
            method: method.clone(),
            path: log.then(|| path.to_string()),
            upstream: None,
            upstream_name: None,
            backend: None,
            answered_by: None,
            tries: 0,
            status: 0,
        }
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request's id.
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// The request was routed to `name`.
    pub fn routed(&mut self, name: &Arc<str>, metrics: Arc<UpstreamMetrics>) {
        self.upstream = Some(metrics);
        self.upstream_name = self.path.is_some().then(|| name.clone());
    }

    /// A try goes to `backend`.
    pub fn try_to(&mut self, backend: &Arc<str>) {
        self.tries += 1;
        if self.path.is_some() {
            self.backend = Some(backend.clone());
        }
        self.answered_by = None;
    }

    /// The last try's backend answered (`Some`), or its answer is not the one kept (`None`).
    pub fn answered_by(&mut self, backend: Option<Arc<BackendMetrics>>) {
        self.answered_by = backend;
    }

    /// The response's headers go out with `status`: counted now, logged when the body ends.
    pub fn respond(&mut self, status: u16) {
        self.status = status;
        if let Some(b) = &self.answered_by {
            b.forwarded(status);
        }
        if let Some(u) = &self.upstream {
            u.response(status);
        }
    }
}

impl Access {
    /// The status logged: the response's, or nginx's 499 when the client left before it.
    fn status(&self) -> u16 {
        if self.status == 0 {
            CLIENT_LEFT
        } else {
            self.status
        }
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        if let Some(u) = &self.upstream {
            u.duration(elapsed.as_secs_f64());
        }
        let Some(path) = &self.path else { return };
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id.to_str().unwrap_or("-"),
            client = %self.client.ip(),
            method = %self.method,
            path = %path,
            upstream = %self.upstream_name.as_deref().unwrap_or("-"),
            backend = %self.backend.as_deref().unwrap_or("-"),
            status = self.status(),
            tries = self.tries,
            duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_whose_client_left_first_logs_499() {
        let entry = |status: Option<u16>| {
            let mut e = Access::new(
                &Method::GET,
                "/",
                "127.0.0.1:1".parse().unwrap(),
                HeaderValue::from_static("id"),
                false,
                Instant::now(),
            );
            if let Some(s) = status {
                e.respond(s);
            }
            e.status()
        };
        assert_eq!(entry(None), 499);
        assert_eq!(entry(Some(502)), 502);
    }

    #[test]
    fn ids_stay_whole_and_distinct_across_blocks() {
        let ids: Vec<HeaderValue> = (0..3 * ID_BLOCK_BYTES / 32 + 5).map(|_| new_id()).collect();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids
            .iter()
            .all(|v| v.len() == 32 && v.as_bytes().iter().all(u8::is_ascii_hexdigit)));
    }

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert!(fresh.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(fresh, request_id(&h), "ids are random");
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        for bad in ["", "has space", &"x".repeat(129)] {
            h.insert(REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            assert_eq!(request_id(&h).len(), 32, "{bad:?} replaced");
        }
    }
}
