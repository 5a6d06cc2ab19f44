//! Sending one try of a request to one backend: a pooled hyper-util client per upstream (its
//! connect timeout and idle time from `timeouts`), the response timeout to headers, and the
//! classification of failures into the kinds the breaker and the EWMA understand.

use super::body::ProxyBody;
use crate::config::Timeouts;
use crate::policy::retry::Failure;
use crate::pool::OutcomeKind;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

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
    /// The client's body outgrew `listen.max_body_bytes` while it streamed: not the backend's
    /// doing.
    BodyLimit,
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

/// One upstream's client to its backends.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, ProxyBody>,
}

impl Forwarder {
    /// A client with the upstream's timeouts.
    pub fn new(timeouts: &Timeouts) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(timeouts.idle)
            .retry_canceled_requests(true)
            // The client's Host header is kept, as nginx's `proxy_set_header Host $host` does.
            .set_host(false)
            .build(connector);
        Forwarder { client }
    }

    /// Sends `req` to `authority`, with the path and query it already carries, allowing
    /// `timeout` for the response headers. A request the client could not write on a reused
    /// keep-alive connection the backend had just closed is sent again on a fresh one by
    /// hyper-util (`retry_canceled_requests`): it was never processed, so this is safe for any
    /// method.
    pub async fn send(
        &self,
        authority: &str,
        mut req: Request<ProxyBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, SendError> {
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let uri: Uri = format!("http://{authority}{path}")
            .parse()
            .map_err(|_| SendError::Try(TryError::Connect))?;
        *req.uri_mut() = uri;
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(SendError::Try(TryError::Timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(SendError::Try(TryError::Connect)),
            Ok(Err(e)) if super::replay::is_body_limit(&e) => Err(SendError::BodyLimit),
            Ok(Err(_)) => Err(SendError::Try(TryError::Reset)),
        }
    }
}
