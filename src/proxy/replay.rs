//! Request bodies and retries: a body of at most `retry.replay_body_limit` bytes is read ahead
//! and kept, so every try can send it again; a larger one streams through once, what was read
//! ahead first, and its request is not retried. Bodies are never buffered beyond the limit.
//!
//! Every body is read ahead up to the limit before any backend is asked, a larger one too
//! (nginx buffers whole bodies for the same reason): a client that sends its body a byte at a
//! time then holds only its own connection until its body clock cuts it, never a backend's.
//! Streamed at once, such a body met a backend that answered before reading it, and the
//! client, answered, could come back at once: 1,000 of them took fulcrum from 44,000 to 725
//! requests a second for everyone else.
//!
//! The client's body arrives as a [`LimitedBody`]: counted against `listen.max_body_bytes`, so
//! that a body found too large while reading ahead or while streaming ends in a
//! [`LengthLimitError`]. [`client_fault`] tells that, and the client's other body failures,
//! from a backend's: the proxy answers them 413, 400 or 408 and charges no backend.

use super::body::{boxed, BoxError, ProxyBody};
use crate::server::{ClientBody, ClientBodyError};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The client's request body, counted against the body size limit.
pub type LimitedBody = Limited<ClientBody>;

/// A request that failed through its client's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Larger than `listen.max_body_bytes`: 413.
    TooLarge,
    /// Malformed, or broken off by the client: 400.
    Broken,
    /// Too slow (`listen.body_read_timeout`, or the request's deadline): 408.
    Slow,
}

/// The client's fault that `err`, or an error it wraps, is; `None` when it is not the client's.
pub fn client_fault(err: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return Some(ClientFault::TooLarge);
        }
        match e.downcast_ref::<ClientBodyError>() {
            Some(ClientBodyError::Timeout) => return Some(ClientFault::Slow),
            Some(ClientBodyError::Broken(_)) => return Some(ClientFault::Broken),
            None => {}
        }
        cause = e.source();
    }
    None
}

/// A request body, as far as retries are concerned.
pub enum RequestBody {
    /// Small enough: kept whole, sent again on every try.
    Replayable(Bytes),
    /// Too large: streamed once; `None` after the first try took it.
    OneShot(Option<PrefixedBody>),
}

impl RequestBody {
    /// Reads ahead up to `limit` bytes of `body`. Fails when the client's body breaks, is too
    /// slow or outgrows the body size limit ([`client_fault`]).
    pub async fn prepare(mut body: LimitedBody, limit: u64) -> Result<RequestBody, BoxError> {
        if body.is_end_stream() {
            return Ok(RequestBody::Replayable(Bytes::new()));
        }
        // Grown as bytes come, not sized by what the client declares: a slow client declaring
        // a large body must not hold the limit's worth of memory for nothing.
        let mut kept = BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                kept.extend_from_slice(&data);
                if kept.len() as u64 > limit {
                    return Ok(RequestBody::one_shot(kept.freeze(), body));
                }
            }
        }
        Ok(RequestBody::Replayable(kept.freeze()))
    }

    fn one_shot(prefix: Bytes, rest: LimitedBody) -> RequestBody {
        RequestBody::OneShot(Some(PrefixedBody {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
            ended: Arc::default(),
        }))
    }

    /// Whether another try could send this body again.
    pub fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable(_))
    }

    /// The body for the next try; `None` if a one-shot body was already sent.
    pub fn for_try(&mut self) -> Option<TryBody> {
        match self {
            RequestBody::Replayable(bytes) => Some(TryBody::Whole(bytes.clone())),
            RequestBody::OneShot(body) => body.take().map(|b| {
                let ended = b.ended.clone();
                TryBody::Stream(boxed(b), ended)
            }),
        }
    }
}

/// The body one try sends.
pub enum TryBody {
    /// All of it, in hand.
    Whole(Bytes),
    /// Streamed from the client as it arrives; the flag is set once it has all been read.
    Stream(ProxyBody, Arc<AtomicBool>),
}

impl TryBody {
    /// As a body hyper can send.
    pub fn into_proxy_body(self) -> ProxyBody {
        match self {
            TryBody::Whole(bytes) => boxed(Full::new(bytes)),
            TryBody::Stream(body, _) => body,
        }
    }
}

/// What was read ahead, then the rest of the client's body as it arrives.
pub struct PrefixedBody {
    prefix: Option<Bytes>,
    rest: LimitedBody,
    /// Set when the last of the body has been read.
    ended: Arc<AtomicBool>,
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let polled = Pin::new(&mut self.rest).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.rest.is_end_stream() {
            self.ended.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        // The upper bound first: `set_lower` asserts that the lower one stays under it.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(rest.lower().saturating_add(extra));
        hint
    }
}
