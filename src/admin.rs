//! The admin listener: `GET /metrics` (the Prometheus text of metrics.md, after each pool actor
//! has published its figures of now) and `GET /status` (JSON of every upstream and backend,
//! asked of the pool actors). It serves nothing of the proxied traffic.

use crate::pool::{PoolMsg, UpstreamStatus};
use crate::proxy::body::{boxed, text, ProxyBody};
use crate::server::Handler;
use crate::telemetry::metrics::Metrics;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use ractor::ActorRef;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// How long /status and /metrics wait for each pool actor.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin endpoints over the pool actors.
pub struct Admin {
    pools: Vec<(String, ActorRef<PoolMsg>)>,
    metrics: Metrics,
}

#[derive(Serialize)]
struct Status {
    upstreams: Vec<UpstreamStatus>,
}

impl Admin {
    /// Admin endpoints over these (name, pool actor) pairs and the server's metrics.
    pub fn new(pools: Vec<(String, ActorRef<PoolMsg>)>, metrics: Metrics) -> Admin {
        Admin { pools, metrics }
    }

    async fn metrics(&self) -> Response<ProxyBody> {
        for (name, pool) in &self.pools {
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
        let mut upstreams = Vec::with_capacity(self.pools.len());
        for (name, pool) in &self.pools {
            match pool.call(PoolMsg::Status, Some(STATUS_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(s)) => upstreams.push(s),
                _ => {
                    tracing::warn!(upstream = %name, "pool actor did not answer /status");
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a pool actor did not answer",
                    );
                }
            }
        }
        json(&Status { upstreams })
    }
}

fn json<T: Serialize>(value: &T) -> Response<ProxyBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut resp = Response::new(boxed(Full::new(Bytes::from(body))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode status"),
    }
}

impl Handler for Admin {
    async fn handle(&self, req: Request<Incoming>, _client: SocketAddr) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => self.metrics().await,
            (&Method::GET, "/status") => self.status().await,
            (_, "/metrics" | "/status") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
            _ => text(
                StatusCode::NOT_FOUND,
                "no such admin endpoint; try /metrics or /status",
            ),
        }
    }
}
