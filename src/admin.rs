//! The admin listener: `GET /metrics` (the Prometheus text of metrics.md, after each pool actor
//! has published its figures of now), `GET /status` (JSON of every upstream and backend, asked
//! of the pool actors), and the admin API (JSON), which changes the running pools through
//! [`Control`] until the next reload:
//!
//! | request | does |
//! |---|---|
//! | `GET /admin/upstreams` | upstreams and backends, as `/status` |
//! | `POST /admin/upstreams/{name}/backends` `{"address": "h:p", "weight": 1}` | adds a backend, in slow start |
//! | `DELETE /admin/upstreams/{name}/backends/{address}` | drains it out of the pool |
//! | `PUT /admin/upstreams/{name}/backends/{address}/state` `{"state": "drain"}` | `ready`, `not_ready` or `drain` |
//! | `POST /admin/reload` | reads the config file again and applies the difference |
//!
//! With `admin.token` set, every request must carry `Authorization: Bearer <token>`. Every
//! change is logged with the client's address. The listener serves nothing of the proxied
//! traffic.
//!
//! A web page the operator visits must not be able to use it (a loopback listener without a
//! token is reachable from their browser): a request whose `Host` is not an IP address,
//! `localhost` or one of `admin.hosts` is refused (DNS rebinding), a change from another origin
//! (`Origin`, `Sec-Fetch-Site`) is refused, and a change's JSON body must say
//! `Content-Type: application/json`, which a page cannot send across origins without asking
//! first (a CORS preflight, which this listener never grants).

use crate::config::BackendConfig;
use crate::control::{AdminError, Control, ReloadError};
use crate::pool::{AdminState, ChangeError, PoolMsg, UpstreamStatus};
use crate::proxy::body::{boxed, ProxyBody};
use crate::server::{ClientBody, Handler, Peer};
use crate::telemetry::metrics::Metrics;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long /status and /metrics wait for each pool actor.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The largest admin request body read.
const MAX_BODY: usize = 64 * 1024;

/// The tracing target of admin changes.
const TARGET: &str = "fulcrum::admin";

/// The admin endpoints over the running server.
pub struct Admin {
    control: Arc<Control>,
    metrics: Metrics,
    /// `admin.hosts`, lowercase.
    hosts: Vec<String>,
}

#[derive(Serialize)]
struct Status {
    upstreams: Vec<UpstreamStatus>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// The body of `POST /admin/upstreams/{name}/backends`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// The body of `PUT .../state`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewState {
    state: AdminState,
}

/// A JSON answer.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ProxyBody> {
    let (status, body) = match serde_json::to_vec_pretty(value) {
        Ok(body) => (status, body),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error": "cannot encode the answer"}"#.to_vec(),
        ),
    };
    let mut resp = Response::new(boxed(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON error answer: `{"error": reason}`.
fn error(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    json(status, &ErrorBody { error: reason })
}

impl Admin {
    /// Admin endpoints over `control`'s pools and the server's metrics, answering to the
    /// host names `hosts` besides IP addresses and `localhost`.
    pub fn new(control: Arc<Control>, metrics: Metrics, hosts: &[String]) -> Admin {
        Admin {
            control,
            metrics,
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Why a request cannot be from the operator's own client but from a web page, if it
    /// cannot: its Host names a site (DNS rebinding), or it is a change from another origin.
    fn foreign(&self, req: &Request<ClientBody>) -> Option<&'static str> {
        let headers = req.headers();
        let host = headers
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{0}"))
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        // No Host at all is a hand-made request: a browser always sends one.
        if let Some(host) = host {
            let name = host_name(host).to_ascii_lowercase();
            let known = name.parse::<std::net::IpAddr>().is_ok()
                || name == "localhost"
                || self.hosts.contains(&name);
            if !known {
                return Some(
                    "this admin listener answers only to an IP address, localhost or admin.hosts",
                );
            }
        }
        if req.method() == Method::GET || req.method() == Method::HEAD {
            return None;
        }
        let site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
        if site.is_some_and(|s| s != b"same-origin" && s != b"none") {
            return Some("changes from another site are refused");
        }
        match (headers.get(header::ORIGIN), host) {
            (None, _) => None,
            (Some(origin), Some(host)) if same_origin(origin.as_bytes(), host) => None,
            (Some(_), _) => Some("changes from another origin are refused"),
        }
    }

    async fn metrics(&self) -> Response<ProxyBody> {
        for (name, pool) in &self.control.pools() {
            if !matches!(
                pool.call(PoolMsg::Publish, Some(STATUS_TIMEOUT)).await,
                Ok(ractor::rpc::CallResult::Success(()))
            ) {
                // The scrape goes on with that pool's last published figures.
                tracing::warn!(upstream = %name, "pool actor did not publish for /metrics");
            }
        }
        let mut resp = Response::new(boxed(Full::new(Bytes::from(self.metrics.render()))));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_TEXT),
        );
        resp
    }

    async fn status(&self) -> Response<ProxyBody> {
        let pools = self.control.pools();
        let mut upstreams = Vec::with_capacity(pools.len());
        for (name, pool) in &pools {
            match pool.call(PoolMsg::Status, Some(STATUS_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(s)) => upstreams.push(s),
                _ => {
                    tracing::warn!(upstream = %name, "pool actor did not answer /status");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a pool actor did not answer",
                    );
                }
            }
        }
        json(StatusCode::OK, &Status { upstreams })
    }

    /// Whether the request may use the admin listener.
    fn authorised(&self, req: &Request<ClientBody>) -> bool {
        let Some(token) = self.control.token() else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
    }

    async fn reload(&self, client: SocketAddr) -> Response<ProxyBody> {
        tracing::info!(target: TARGET, %client, "reload asked");
        match self.control.reload().await {
            Ok(done) => json(StatusCode::OK, &done),
            Err(ReloadError::NoFile) => error(
                StatusCode::CONFLICT,
                "no config file to reload: fulcrum was started without one",
            ),
            Err(e @ ReloadError::Invalid(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    async fn backends(
        &self,
        req: Request<ClientBody>,
        client: SocketAddr,
        upstream: &str,
        rest: &[&str],
    ) -> Response<ProxyBody> {
        let method = req.method().clone();
        match (&method, rest) {
            (&Method::POST, []) => {
                let new: NewBackend = match read_json(req).await {
                    Ok(v) => v,
                    Err(resp) => return resp,
                };
                let backend = BackendConfig {
                    address: new.address.clone(),
                    weight: new.weight,
                };
                let result = self.control.add_backend(upstream, backend).await;
                answer(result, StatusCode::CREATED, || {
                    tracing::info!(target: TARGET, %client, upstream, backend = %new.address, weight = new.weight, "backend added through the admin API");
                    serde_json::json!({"upstream": upstream, "added": new.address, "weight": new.weight})
                })
            }
            (&Method::DELETE, [address]) => {
                let result = self.control.remove_backend(upstream, address).await;
                answer(result, StatusCode::ACCEPTED, || {
                    tracing::info!(target: TARGET, %client, upstream, backend = %address, "backend removed through the admin API; draining");
                    serde_json::json!({"upstream": upstream, "removing": address})
                })
            }
            (&Method::PUT | &Method::POST, [address, "state"]) => {
                let new: NewState = match read_json(req).await {
                    Ok(v) => v,
                    Err(resp) => return resp,
                };
                let result = self.control.set_state(upstream, address, new.state).await;
                answer(result, StatusCode::OK, || {
                    tracing::info!(target: TARGET, %client, upstream, backend = %address, state = new.state.name(), "backend state set through the admin API");
                    serde_json::json!({"upstream": upstream, "backend": address, "state": new.state})
                })
            }
            (_, [] | [_] | [_, "state"]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST .../backends, DELETE .../backends/{address}, PUT .../backends/{address}/state",
            ),
            _ => not_found(),
        }
    }
}

/// The answer to an admin change: `ok` on success (after running `done`, which logs it), else
/// the error's status and reason.
fn answer(
    result: Result<(), AdminError>,
    ok: StatusCode,
    done: impl FnOnce() -> serde_json::Value,
) -> Response<ProxyBody> {
    match result {
        Ok(()) => json(ok, &done()),
        Err(e) => {
            let status = match &e {
                AdminError::UnknownUpstream(_) => StatusCode::NOT_FOUND,
                AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
                AdminError::Refused(ChangeError::UnknownBackend(_)) => StatusCode::NOT_FOUND,
                AdminError::Refused(
                    ChangeError::DuplicateBackend(_) | ChangeError::Removing(_),
                ) => StatusCode::CONFLICT,
                AdminError::Refused(ChangeError::Spawn { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
                AdminError::NotAnswering(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, &e.to_string())
        }
    }
}

/// Reads a JSON request body of at most [`MAX_BODY`] bytes; a 4xx answer when it is not one,
/// or when it does not say `Content-Type: application/json`.
async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<ClientBody>,
) -> Result<T, Response<ProxyBody>> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json",
        ));
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large or broke off",
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

fn not_found() -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        "no such admin endpoint; try /metrics, /status, /admin/upstreams or /admin/reload",
    )
}

/// The name in a Host value, without its port (and an IPv6 literal without its brackets).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a page served from `host`.
fn same_origin(origin: &[u8], host: &str) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// Compares without an early exit, so the time taken says nothing of where a guess went wrong.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Handler for Admin {
    type Body = ProxyBody;

    async fn handle(&self, req: Request<ClientBody>, peer: Peer) -> Response<ProxyBody> {
        let client = peer.addr();
        if let Some(reason) = self.foreign(&req) {
            tracing::warn!(target: TARGET, %client, reason, "admin request refused");
            return error(StatusCode::FORBIDDEN, reason);
        }
        if !self.authorised(&req) {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "this admin listener needs Authorization: Bearer <admin.token>",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fulcrum\""),
            );
            return resp;
        }
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["metrics"]) => self.metrics().await,
            (&Method::GET, ["status"] | ["admin", "upstreams"]) => self.status().await,
            (&Method::POST, ["admin", "reload"]) => self.reload(client).await,
            // `segments` borrow the path's own copy, so `req` can move on with its body.
            (_, ["admin", "upstreams", upstream, "backends", rest @ ..]) => {
                self.backends(req, client, upstream, rest).await
            }
            (_, ["metrics"] | ["status"] | ["admin", "upstreams"]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            (_, ["admin", "reload"]) => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            _ => not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{constant_time_eq, host_name, same_origin};

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:9901"), "127.0.0.1");
        assert_eq!(host_name("[::1]:9901"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("evil.example:80"), "evil.example");
    }

    #[test]
    fn an_origin_is_the_same_only_for_the_same_host_and_port() {
        assert!(same_origin(b"http://127.0.0.1:9901", "127.0.0.1:9901"));
        assert!(!same_origin(b"http://127.0.0.1:9902", "127.0.0.1:9901"));
        assert!(!same_origin(b"http://evil", "127.0.0.1:9901"));
        assert!(!same_origin(b"null", "127.0.0.1:9901"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
