//! The frontend's request path: route by Host and path, ask the upstream's pool actor for a
//! backend, rewrite headers, forward with the upstream's pooled client, stream the response back
//! and report each try's outcome to the backend's actor. A failed try is retried on a backend not
//! yet tried when the retry policy allows it and the pool's retry budget has room, within the
//! request's overall deadline — always before any byte of a response has gone to the client.
//! Each request carries its [`Access`] entry, which counts the metrics of the request and writes
//! the access log when the response ends. No balancing policy lives here.
//!
//! The routes and upstream handles of one config generation sit behind an [`ArcSwap`]: a reload
//! swaps them whole while requests in flight finish on the generation they started with.

pub mod body;
pub mod body_timeout;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod replay;
pub mod route;
pub mod upgrade;

use crate::config::{Config, Timeouts};
use crate::patience::patient;
use crate::policy::balance::{hash_bytes, BackendId};
use crate::policy::retry::{Failure, NoRetry, RetryPolicy};
use crate::pool::{Lease, NoBackend, Outcome, OutcomeKind, Pool, PoolMsg};
use crate::server::{ClientBody, Peer};
use crate::telemetry::access::{self, Access};
use crate::telemetry::metrics::{ClientMetrics, ClientTimeout, Metrics, UpstreamMetrics};
use arc_swap::ArcSwap;
use body::{boxed, text, AnswerBody, HoldBody, LeasedBody, ProxyBody};
use forward::{Forwarder, SendError, TryError, TryHead};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Empty, Limited};
use replay::{ClientFault, RequestBody};
use route::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use upgrade::Tunnels;

/// How long the frontend waits for a pool actor to answer a pick. A pick costs microseconds;
/// this bounds the damage of a stuck actor, it is not a tuning knob.
const PICK_TIMEOUT: Duration = Duration::from_secs(1);

/// One upstream as the frontend sees it.
struct UpstreamHandle {
    name: Arc<str>,
    metrics: Arc<UpstreamMetrics>,
    pool: Pool,
    forwarder: Forwarder,
    timeouts: Timeouts,
    retry: RetryPolicy,
    replay_limit: u64,
    preserve_host: bool,
    /// `upgrades` (compared without case).
    upgrades: Box<[Box<str>]>,
}

/// What the proxy takes from `[listen]`: fixed until a restart, as the listener is.
struct Front {
    max_uri_bytes: usize,
    max_body_bytes: u64,
    via: bool,
}

/// The routes and upstreams of one config generation.
struct Routes {
    router: Router,
    upstreams: Vec<Arc<UpstreamHandle>>,
    access_log: bool,
}

/// The request path, shared by every client connection.
pub struct Proxy {
    front: Front,
    routes: ArcSwap<Routes>,
    metrics: Metrics,
    clients: Arc<ClientMetrics>,
    tunnels: Tunnels,
}

/// The request as sent to every try: everything but the body, which [`RequestBody`] provides.
struct TryTemplate {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    added: headers::Added,
}

impl Drop for TryTemplate {
    fn drop(&mut self) {
        // The last try is over: the map holds a later response's headers.
        crate::spare::recycle(std::mem::take(&mut self.headers));
    }
}

impl TryTemplate {
    /// What one try sends but its body; `host` replaces the client's Host when set.
    fn head<'a>(&'a self, host: Option<&'a HeaderValue>) -> TryHead<'a> {
        TryHead {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            added: &self.added,
            host,
        }
    }
}

/// How the last try failed, kept to answer the client if no retry succeeds.
enum LastFailure {
    /// No response: the answer is fulcrum's own.
    Try(TryError),
    /// The backend answered a failure status: that answer goes to the client as it is. Boxed:
    /// the request's future holds room for this across every try, and it is rarely needed.
    Response(Box<Response<AnswerBody>>),
}

/// The `Via` value fulcrum adds for a message received over `version`.
fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_10 => "1.0 fulcrum",
        Version::HTTP_2 => "2 fulcrum",
        _ => "1.1 fulcrum",
    })
}

impl Routes {
    /// The routes of `config`'s upstreams, each answered by its pool in `pools` (same order);
    /// an upstream of `previous` with the same name and timeouts keeps its client, and so its
    /// pooled connections.
    fn new(
        config: &Config,
        pools: &[Pool],
        metrics: &Metrics,
        previous: Option<&Routes>,
    ) -> Routes {
        let handles = config
            .upstreams
            .iter()
            .zip(pools)
            .map(|(u, pool)| {
                let kept = previous.and_then(|p| {
                    p.upstreams
                        .iter()
                        .find(|h| *h.name == *u.name && h.timeouts == u.timeouts)
                });
                Arc::new(UpstreamHandle {
                    name: Arc::from(u.name.as_str()),
                    metrics: metrics.upstream(&u.name),
                    pool: pool.clone(),
                    forwarder: kept
                        .map(|h| h.forwarder.clone())
                        .unwrap_or_else(|| Forwarder::new(&u.timeouts)),
                    timeouts: u.timeouts.clone(),
                    retry: RetryPolicy::new(&u.retry),
                    replay_limit: u.retry.replay_body_limit,
                    preserve_host: u.preserve_host,
                    upgrades: u.upgrades.iter().map(|p| p.as_str().into()).collect(),
                })
            })
            .collect();
        Routes {
            router: Router::new(&config.upstreams),
            upstreams: handles,
            access_log: config.log.access,
        }
    }
}

impl Proxy {
    /// A proxy over `config`'s upstreams, each answered by its pool actor in `pools` (same
    /// order), counting into `metrics`.
    pub fn new(config: &Config, pools: &[Pool], metrics: &Metrics) -> Proxy {
        Proxy {
            front: Front {
                max_uri_bytes: config.listen.max_uri_bytes,
                max_body_bytes: config.listen.max_body_bytes,
                via: config.listen.via,
            },
            routes: ArcSwap::from_pointee(Routes::new(config, pools, metrics, None)),
            metrics: metrics.clone(),
            clients: metrics.clients(),
            tunnels: Tunnels::default(),
        }
    }

    /// Switches new requests to the routes and upstreams of `config` (a reload); requests in
    /// flight finish on the routes they started with. Upstreams whose timeouts are unchanged keep
    /// their pooled connections.
    pub fn reroute(&self, config: &Config, pools: &[Pool]) {
        let previous = self.routes.load();
        let next = Routes::new(config, pools, &self.metrics, Some(&previous));
        self.routes.store(Arc::new(next));
    }

    /// The upgraded connections (WebSocket and the like) open now.
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// Answers one client request. Never fails: every problem becomes a status code. The
    /// answer carries the request id, and its body the request's [`Access`] entry.
    pub async fn handle(
        &self,
        mut req: Request<ClientBody>,
        client: Peer,
    ) -> Response<HoldBody<AnswerBody, Access>> {
        let routes = self.routes.load_full();
        let id = access::request_id(req.headers());
        let mut entry = Access::new(
            req.method(),
            req.uri().path(),
            client.addr(),
            id.clone(),
            routes.access_log,
            Instant::now(),
        );
        let upgrade = upgrade::requested(&req).map(|p| (p, hyper::upgrade::on(&mut req)));
        // One async fn rather than this and a `serve` it awaits: each level's future is copied
        // whole into its caller's when awaited, and the two were 5 KiB a request.
        let mut resp: Response<AnswerBody> = 'serve: {
            let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
            if uri_len > self.front.max_uri_bytes {
                break 'serve own(text(
                    StatusCode::URI_TOO_LONG,
                    &format!("the URI is longer than {} bytes", self.front.max_uri_bytes),
                ));
            }
            let max_body = self.front.max_body_bytes;
            if max_body > 0 && declared_length(req.headers()).is_some_and(|n| n > max_body) {
                break 'serve body_too_large(max_body);
            }
            let host = match request_host(&req) {
                Ok(host) => host,
                Err(reason) => break 'serve closing(own(text(StatusCode::BAD_REQUEST, reason))),
            };
            let host_text = host.as_ref().and_then(|h| h.to_str().ok());
            let Some(index) = routes.router.route(host_text, req.uri().path()) else {
                break 'serve own(text(
                    StatusCode::NOT_FOUND,
                    "no upstream matches this host and path",
                ));
            };
            let upstream = &routes.upstreams[index];
            entry.routed(&upstream.name, upstream.metrics.clone());
            // An upgrade the upstream does not allow is dropped: the request goes as a plain one.
            let (protocol, mut client_upgrade) = upgrade
                .filter(|(p, _)| upgrade::allowed(p, &upstream.upgrades))
                .unzip();
            let request_id = entry.request_id().clone();
            let (template, mut body) = prepare(
                req,
                &client,
                host.as_ref(),
                self.front.via,
                protocol,
                request_id,
            );
            // From the request's arrival, as the access entry has it: the clock is read once for
            // both. The client's body must be in by then too.
            let deadline = entry.started() + upstream.timeouts.request;
            body.set_deadline(deadline);
            let limit = if max_body > 0 {
                usize::try_from(max_body).unwrap_or(usize::MAX)
            } else {
                usize::MAX
            };
            let mut body = match RequestBody::prepare(
                Limited::new(body, limit),
                upstream.replay_limit,
            )
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    let fault = replay::client_fault(&*e).unwrap_or(ClientFault::Broken);
                    break 'serve self.client_fault(fault, max_body);
                }
            };
            let key = client_key(client.addr());
            // The backends tried, for the next pick to avoid: filled only when a retry follows, so
            // that a request answered at its first try allocates nothing for it.
            let mut tried: Vec<BackendId> = Vec::new();
            let mut last: Option<LastFailure> = None;
            let mut retry_reason: Option<&'static str> = None;
            loop {
                // One reading of the clock serves the deadline, the pick's patience, the try's
                // latency and its connection checkout (clock reads were 7% of fulcrum's user time).
                let started = Instant::now();
                let remaining = deadline.saturating_duration_since(started);
                if remaining.is_zero() {
                    // The overall deadline bounds retries: answer with what the last try got.
                    break 'serve answer_failure(
                        last.or(Some(LastFailure::Try(TryError::Timeout))),
                        "",
                    );
                }
                let lease = match pick(&upstream.pool, key, &tried, retry_reason, started).await {
                    Ok(lease) => lease,
                    Err(e) => {
                        let none = matches!(
                            e,
                            PickError::NoBackend(NoBackend::NoneAvailable | NoBackend::AtCapacity)
                        );
                        if last.is_none() && none {
                            upstream.metrics.no_backend();
                        }
                        break 'serve answer_failure(last, e.reason());
                    }
                };
                let Some(try_body) = body.for_try() else {
                    // A one-shot body went with an earlier try; `may_retry` prevents getting here.
                    break 'serve answer_failure(last, "request body cannot be sent again");
                };
                let id = lease.id();
                entry.try_to(lease.authority());
                let host = if upstream.preserve_host {
                    None
                } else {
                    lease.host()
                };
                let result = upstream
                    .forwarder
                    .send(
                        lease.authority(),
                        template.head(host),
                        try_body,
                        started,
                        upstream.timeouts.response.min(remaining),
                    )
                    .await;
                let ended = Instant::now();
                let latency = ended.saturating_duration_since(started);
                let failure = match result {
                    Ok(mut resp) => {
                        let status = resp.status().as_u16();
                        let failed = upstream.retry.is_failure_status(status);
                        entry.answered_by(Some(lease.metrics().clone()));
                        lease.report(
                            Outcome {
                                kind: if failed {
                                    OutcomeKind::Status(status)
                                } else {
                                    OutcomeKind::Success
                                },
                                latency,
                            },
                            ended,
                        );
                        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                        let backend_upgrade = resp.headers().get(header::UPGRADE).cloned();
                        headers::strip_hop_by_hop(resp.headers_mut());
                        if self.front.via {
                            let hop = via(resp.version());
                            headers::append_via(resp.headers_mut(), hop);
                        }
                        if switching {
                            break 'serve match (client_upgrade.take(), backend_upgrade) {
                                (Some(on), Some(p)) => {
                                    upgrade::restore(resp.headers_mut(), p);
                                    self.tunnels.open(on, &mut resp, lease);
                                    resp.map(|_| AnswerBody::Other(boxed(Empty::new())))
                                }
                                // A 101 nobody asked for, or without its protocol: nothing to join.
                                _ => own(text(
                                    StatusCode::BAD_GATEWAY,
                                    "backend switched protocols unasked",
                                )),
                            };
                        }
                        let resp = resp.map(|b| AnswerBody::Backend(LeasedBody::new(b, lease)));
                        if !failed {
                            break 'serve resp;
                        }
                        last = Some(LastFailure::Response(Box::new(resp)));
                        Failure::Status(status)
                    }
                    Err(SendError::Client(fault)) => {
                        // The client's body failed while streaming: the backend did nothing
                        // wrong, so nothing is reported against it.
                        break 'serve self.client_fault(fault, max_body);
                    }
                    Err(SendError::Try(e)) => {
                        lease.report(
                            Outcome {
                                kind: e.outcome(),
                                latency,
                            },
                            ended,
                        );
                        entry.answered_by(None);
                        last = Some(LastFailure::Try(e));
                        e.failure()
                    }
                };
                // This try and the earlier ones.
                if tried.len() + 1 > upstream.retry.attempts() as usize {
                    break 'serve answer_failure(last, "");
                }
                match upstream
                    .retry
                    .may_retry(failure, &template.method, body.replayable())
                {
                    Ok(()) => {
                        retry_reason = Some(failure.reason());
                        tried.push(id);
                    }
                    Err(NoRetry::BodyNotReplayable) => {
                        let _ = upstream.pool.actor().cast(PoolMsg::BodyNotReplayable);
                        break 'serve answer_failure(last, "");
                    }
                    Err(_) => break 'serve answer_failure(last, ""),
                }
            }
        };
        entry.respond(resp.status().as_u16());
        resp.headers_mut().insert(access::REQUEST_ID, id);
        resp.map(|b| HoldBody::new(b, entry))
    }

    /// The answer to a request whose body failed through the client's doing; the connection
    /// closes after it, as what is left of the body cannot be told from a next request.
    fn client_fault(&self, fault: ClientFault, max_body: u64) -> Response<AnswerBody> {
        closing(match fault {
            ClientFault::TooLarge => body_too_large(max_body),
            ClientFault::Broken => own(text(
                StatusCode::BAD_REQUEST,
                "the request body broke off or was malformed",
            )),
            ClientFault::Slow => {
                self.clients.timeout(ClientTimeout::Body);
                own(text(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                ))
            }
        })
    }
}

/// `resp`, saying that the connection closes after it.
fn closing(mut resp: Response<AnswerBody>) -> Response<AnswerBody> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The request's `Content-Length`, when it declares a usable one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The answer to a body over `listen.max_body_bytes`.
fn body_too_large(limit: u64) -> Response<AnswerBody> {
    own(text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than {limit} bytes"),
    ))
}

/// One of fulcrum's own answers, as the client gets it.
fn own(resp: Response<ProxyBody>) -> Response<AnswerBody> {
    resp.map(AnswerBody::Other)
}

/// The client's answer when no try succeeded: the backend's own failure response if there was
/// one, else fulcrum's short answer for the last failure, else 503 with `reason`.
fn answer_failure(last: Option<LastFailure>, reason: &str) -> Response<AnswerBody> {
    let answer = match last {
        Some(LastFailure::Response(resp)) => return *resp,
        Some(LastFailure::Try(TryError::Connect)) => {
            text(StatusCode::BAD_GATEWAY, "backend connection failed")
        }
        Some(LastFailure::Try(TryError::Reset)) => text(
            StatusCode::BAD_GATEWAY,
            "backend closed the connection without a response",
        ),
        Some(LastFailure::Try(TryError::Timeout)) => text(
            StatusCode::GATEWAY_TIMEOUT,
            "backend did not answer in time",
        ),
        None => text(StatusCode::SERVICE_UNAVAILABLE, reason),
    };
    own(answer)
}

/// The affinity key of a client: a hash of its IP.
fn client_key(client: SocketAddr) -> u64 {
    match client.ip() {
        std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
        std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
    }
}

/// Why a pick gave no lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PickError {
    /// The pool said why.
    NoBackend(NoBackend),
    /// The pool did not answer in time.
    NotAnswering,
}

impl PickError {
    /// The reason given to the client.
    fn reason(self) -> &'static str {
        match self {
            PickError::NoBackend(NoBackend::NoneAvailable) => "no backend available",
            PickError::NoBackend(NoBackend::AtCapacity) => "all backends at capacity",
            PickError::NoBackend(NoBackend::BudgetExhausted) => "retry budget exhausted",
            PickError::NotAnswering => "upstream pool not answering",
        }
    }
}

/// Asks the pool for a backend.
async fn pick(
    pool: &Pool,
    key: u64,
    tried: &[BackendId],
    retry: Option<&'static str>,
    now: Instant,
) -> Result<Lease, PickError> {
    // Picked in place by this worker's shard (a first try), or queued for the pool actor (a
    // message per batch, not per pick) and waited for until a deadline from the caller's `now`
    // rather than a clock read of its own, with no timer armed when the answer comes at once
    // (see `patient`).
    let Some(answer) = pool.ask(key, tried, retry, now) else {
        return Err(PickError::NotAnswering);
    };
    match patient(answer, now + PICK_TIMEOUT).await {
        Some(Some(answer)) => answer.map_err(PickError::NoBackend),
        _ => Err(PickError::NotAnswering),
    }
}

/// The URI as an HTTP/1.1 backend expects it: path and query only. HTTP/2 clients send the
/// scheme and authority too; the authority travels in Host.
fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri;
    }
    let mut parts = uri.into_parts();
    parts.scheme = None;
    parts.authority = None;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// The host the client asked for: the Host header, or the HTTP/2 `:authority`. A value, not a
/// string: cloning it shares the parsed bytes. Two Host headers, or an HTTP/1.1 request
/// without one, are refused (RFC 9112 §3.2): which host such a request means depends on who
/// reads it.
fn request_host(req: &Request<ClientBody>) -> Result<Option<HeaderValue>, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if first.is_none() && req.version() == Version::HTTP_11 {
        return Err("an HTTP/1.1 request needs a Host header");
    }
    Ok(first.filter(|h| h.to_str().is_ok()).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    }))
}

/// Rewrites a client request into what every try sends (HTTP/1.1, hop-by-hop headers dropped
/// but for an upgrade's, forwarding headers, `Via` and the request id set, the client's Host
/// kept), and hands back its body.
fn prepare(
    req: Request<ClientBody>,
    client: &Peer,
    host: Option<&HeaderValue>,
    add_via: bool,
    upgrade: Option<HeaderValue>,
    request_id: HeaderValue,
) -> (TryTemplate, ClientBody) {
    let (mut parts, body) = req.into_parts();
    let hop = add_via.then(|| via(parts.version));
    let added = headers::forward_request(
        &mut parts.headers,
        client.ip().clone(),
        "http",
        host,
        hop,
        request_id,
        client.trusted(),
    );
    if let Some(p) = upgrade {
        upgrade::restore(&mut parts.headers, p);
    }
    if let Some(h) = host.filter(|h| parts.headers.get(header::HOST) != Some(*h)) {
        // HTTP/2 clients send :authority, not Host; an HTTP/1.1 backend needs Host.
        parts.headers.insert(header::HOST, h.clone());
    }
    let template = TryTemplate {
        method: parts.method,
        uri: origin_form(parts.uri),
        headers: parts.headers,
        added,
    };
    (template, body)
}
