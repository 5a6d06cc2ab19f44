//! Body types of the proxy: one boxed body for everything it sends and for its own answers, the
//! client's answer (a backend's body as it is, or a boxed one), a response body that holds the
//! backend's lease until the last byte is out (and charges the backend when its body fails),
//! and short plain-text answers.

use super::forward::{BodyError, PooledBody};
use crate::pool::{Lease, Outcome};
use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Any error a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request sent to a backend, and of fulcrum's own answers.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes a body into a [`ProxyBody`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A short plain-text answer from fulcrum itself. `reason` never names an internal address.
pub fn text(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let body = format!(
        "{} {}: {reason}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(boxed(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// What the proxy answers a client with: a backend's body holding its lease, as it is, or
/// any other body boxed. Not one boxed body for both: the backend's, on nearly every request,
/// would cost an allocation and a dynamic poll per frame.
pub enum AnswerBody {
    /// A backend's response body.
    Backend(LeasedBody),
    /// fulcrum's own answers, and upgrades' empty bodies.
    Other(ProxyBody),
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            AnswerBody::Backend(b) => Pin::new(b).poll_frame(cx),
            AnswerBody::Other(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Backend(b) => b.is_end_stream(),
            AnswerBody::Other(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Backend(b) => b.size_hint(),
            AnswerBody::Other(b) => b.size_hint(),
        }
    }
}

/// A body that holds a value until its last frame is out (or it is dropped): a backend's
/// [`Lease`], so a long download counts in flight as much as a slow answer does; a client
/// connection's request guard, so its idle clock starts when the response ends.
pub struct HoldBody<B, T> {
    inner: B,
    held: Option<T>,
}

impl<B, T> HoldBody<B, T> {
    /// Streams `inner`, holding `held` until the end.
    pub fn new(inner: B, held: T) -> Self {
        HoldBody {
            inner,
            held: Some(held),
        }
    }
}

/// A backend's response body holding its lease until its end. A body that fails mid-way (the
/// backend fell silent or broke off) is reported against the backend as a second outcome of
/// its try: the head's success said nothing of the body. Its latency is what the failure
/// cost: the read timeout for a silence (the penalty of a failure is at least twice the
/// estimate either way, see `policy::ewma`).
pub struct LeasedBody {
    inner: PooledBody,
    lease: Option<Lease>,
}

impl LeasedBody {
    /// `inner`, holding `lease`.
    pub fn new(inner: PooledBody, lease: Lease) -> LeasedBody {
        LeasedBody {
            inner,
            lease: Some(lease),
        }
    }
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.lease = None,
            Poll::Ready(Some(Err(e))) => {
                if let (Some(lease), Some(failure)) =
                    (self.lease.take(), e.downcast_ref::<BodyError>())
                {
                    let outcome = Outcome {
                        kind: failure.outcome(),
                        latency: failure.cost(),
                    };
                    lease.report(outcome, Instant::now());
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, T> Body for HoldBody<B, T>
where
    B: Body + Unpin,
    T: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
