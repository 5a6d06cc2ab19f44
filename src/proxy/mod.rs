//! The frontend's request path: route by Host and path, ask the upstream's pool actor for a
//! backend, rewrite headers, forward with the upstream's pooled client, stream the response back
//! and report the outcome to the backend's actor. No balancing policy lives here.

pub mod body;
pub mod forward;
pub mod headers;
pub mod route;

use crate::config::Upstream;
use crate::policy::balance::hash_bytes;
use crate::pool::{Lease, NoBackend, Outcome, OutcomeKind, PoolMsg};
use body::{boxed, text, LeasedBody, ProxyBody};
use forward::{Forwarder, TryError};
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use ractor::ActorRef;
use route::Router;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// How long the frontend waits for a pool actor to answer a pick. A pick costs microseconds;
/// this bounds the damage of a stuck actor, it is not a tuning knob.
const PICK_TIMEOUT: Duration = Duration::from_secs(1);

/// One upstream as the frontend sees it.
struct UpstreamHandle {
    pool: ActorRef<PoolMsg>,
    forwarder: Forwarder,
    failure_statuses: Vec<u16>,
}

/// The request path, shared by every client connection.
pub struct Proxy {
    router: Router,
    upstreams: Vec<UpstreamHandle>,
}

impl Proxy {
    /// A proxy over `upstreams` (from the config), each answered by its pool actor in `pools`
    /// (same order).
    pub fn new(upstreams: &[Upstream], pools: Vec<ActorRef<PoolMsg>>) -> Proxy {
        let handles = upstreams
            .iter()
            .zip(pools)
            .map(|(u, pool)| UpstreamHandle {
                pool,
                forwarder: Forwarder::new(&u.timeouts),
                failure_statuses: u
                    .retry
                    .on
                    .iter()
                    .filter_map(|s| s.parse::<u16>().ok())
                    .filter(|s| (500..=599).contains(s))
                    .collect(),
            })
            .collect();
        Proxy {
            router: Router::new(upstreams),
            upstreams: handles,
        }
    }

    /// Answers one client request. Never fails: every problem becomes a status code.
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<ProxyBody> {
        let host = request_host(&req);
        let Some(index) = self.router.route(host.as_deref(), req.uri().path()) else {
            return text(
                StatusCode::NOT_FOUND,
                "no upstream matches this host and path",
            );
        };
        let upstream = &self.upstreams[index];
        let lease = match pick(&upstream.pool, client).await {
            Ok(lease) => lease,
            Err(reason) => return text(StatusCode::SERVICE_UNAVAILABLE, reason),
        };
        let req = prepare(req, client, host.as_deref());
        let started = Instant::now();
        let result = upstream.forwarder.send(lease.authority(), req).await;
        let latency = started.elapsed();
        match result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let kind = if upstream.failure_statuses.contains(&status) {
                    OutcomeKind::Status(status)
                } else {
                    OutcomeKind::Success
                };
                lease.report(Outcome { kind, latency });
                headers::strip_hop_by_hop(resp.headers_mut());
                resp.map(|b| boxed(LeasedBody::new(b, lease)))
            }
            Err(e) => {
                lease.report(Outcome {
                    kind: e.outcome(),
                    latency,
                });
                match e {
                    TryError::Connect => text(StatusCode::BAD_GATEWAY, "backend connection failed"),
                    TryError::Reset => text(
                        StatusCode::BAD_GATEWAY,
                        "backend closed the connection without a response",
                    ),
                    TryError::Timeout => text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "backend did not answer in time",
                    ),
                }
            }
        }
    }
}

/// Asks the pool actor for a backend; the reason is for the client when there is none.
async fn pick(pool: &ActorRef<PoolMsg>, client: SocketAddr) -> Result<Lease, &'static str> {
    let key = match client.ip() {
        std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
    };
    let answer = pool
        .call(
            |reply| PoolMsg::Pick {
                key,
                exclude: Vec::new(),
                reply,
            },
            Some(PICK_TIMEOUT),
        )
        .await;
    match answer {
        Ok(ractor::rpc::CallResult::Success(Ok(lease))) => Ok(lease),
        Ok(ractor::rpc::CallResult::Success(Err(NoBackend::NoneAvailable))) => {
            Err("no backend available")
        }
        _ => Err("upstream pool not answering"),
    }
}

/// The host the client asked for: the Host header, or the HTTP/2 `:authority`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

/// Rewrites a client request into the request sent to the backend (HTTP/1.1, hop-by-hop
/// headers dropped, forwarding headers set, the client's Host kept); the body streams as is.
fn prepare(req: Request<Incoming>, client: SocketAddr, host: Option<&str>) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::set_forwarded(&mut parts.headers, client.ip(), "http", host);
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        // HTTP/2 clients send :authority, not Host; an HTTP/1.1 backend needs Host.
        parts.headers.insert(header::HOST, h);
    }
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, boxed(body))
}
