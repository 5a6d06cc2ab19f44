//! A panic in a request's task, caught as futures' `catch_unwind` does: polls run under
//! `std::panic::catch_unwind`, so that a panic answers 500 (or, once the response has begun,
//! cuts the client's connection), is counted in `fulcrum_panics_total` and logged, and never
//! ends more than its own connection. Under hyper's server each request's future and body are
//! polled so ([`answer`], [`Caught`]); fulcrum's own server polls a connection's whole run so
//! (`plain`), which costs next to nothing per request.

use crate::proxy::body::BoxError;
use crate::telemetry::metrics::ClientMetrics;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// What fulcrum answers when a request's handler panicked.
const PANICKED: &str = "500 Internal Server Error: fulcrum failed on this request\n";

/// The same, whole on the wire, for fulcrum's own HTTP/1.1 server.
pub(super) fn panicked_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{PANICKED}",
        PANICKED.len()
    )
    .into_bytes()
}

/// Polls `fut` where it is pinned, catching a panic of any of its polls. Not a wrapper that
/// takes the future by value: a request's future is kilobytes, and moving it into a wrapper
/// cost a copy of it on every request.
pub fn catching<F: Future>(
    mut fut: Pin<&mut F>,
) -> impl Future<Output = Result<F::Output, Box<dyn Any + Send>>> + '_ {
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(polled) => polled.map(Ok),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
}

/// The answer to a request of `client`: the handler's `answered`, its body polled under
/// `catch_unwind` too, or 500 when the handler panicked (counted and logged).
pub fn answer<B>(
    answered: Result<Response<B>, Box<dyn Any + Send>>,
    client: SocketAddr,
    clients: &Arc<ClientMetrics>,
) -> Response<Caught<B>> {
    match answered {
        Ok(resp) => resp.map(|body| Caught {
            inner: Inner::Handler(body),
            clients: clients.clone(),
            client,
        }),
        Err(panic) => {
            report(clients, &*panic, "answering a request", client);
            let mut resp = Response::new(Caught {
                inner: Inner::Own(Some(Bytes::from_static(PANICKED.as_bytes()))),
                clients: clients.clone(),
                client,
            });
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

/// Counts and logs a panic.
pub(super) fn report(
    clients: &ClientMetrics,
    panic: &(dyn Any + Send),
    doing: &str,
    client: SocketAddr,
) {
    clients.panicked();
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(%client, panic = message, "a request's task panicked {doing}; this is a bug");
}

/// A response body polled under `catch_unwind`.
pub struct Caught<B> {
    inner: Inner<B>,
    clients: Arc<ClientMetrics>,
    client: SocketAddr,
}

enum Inner<B> {
    /// The handler's body.
    Handler(B),
    /// fulcrum's own answer to a panic; `None` once sent.
    Own(Option<Bytes>),
    /// The handler's body panicked.
    Broken,
}

/// The error a body ends with after its panic.
#[derive(Debug, thiserror::Error)]
#[error("the response body panicked")]
pub struct Panicked;

impl<B> Body for Caught<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Handler(body) => {
                let polled =
                    std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(body).poll_frame(cx)));
                polled.unwrap_or_else(|panic| {
                    this.inner = Inner::Broken;
                    report(
                        &this.clients,
                        &*panic,
                        "sending a response body",
                        this.client,
                    );
                    Poll::Ready(Some(Err(Panicked.into())))
                })
            }
            Inner::Own(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Broken => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Handler(body) => body.is_end_stream(),
            Inner::Own(bytes) => bytes.is_none(),
            Inner::Broken => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Handler(body) => body.size_hint(),
            Inner::Own(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Broken => SizeHint::with_exact(0),
        }
    }
}
