//! The control listener of `loadtest backend --control ADDR`: switch a running backend's fault
//! over HTTP. `POST /fault` (body: a fault such as `dead`, `latency 200ms`, `errors 0.5 503`)
//! sets the traffic fault, `POST /fault/health` a `/health` fault apart (`DELETE /fault/health`
//! makes it follow the traffic fault again); `GET /fault` shows both;
//! `GET /stats` returns the counts as JSON.

use crate::backend::Backend;
use crate::fault::Fault;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the control endpoints for `backend` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, backend: Arc<Backend>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let backend = backend.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let backend = backend.clone();
                async move { Ok::<_, Infallible>(handle(req, &backend).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, backend: &Backend) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/fault") => reply(
            StatusCode::OK,
            format!(
                "traffic: {}\nhealth: {}\n",
                backend.fault(),
                backend.health_fault()
            ),
        ),
        (Method::GET, "/stats") => reply(
            StatusCode::OK,
            serde_json::json!({
                "id": backend.id(),
                "requests": backend.requests(),
                "health_requests": backend.health_requests(),
                "body_bytes": backend.body_bytes(),
                "fault": backend.fault().to_string(),
                "health_fault": backend.health_fault().to_string(),
            })
            .to_string(),
        ),
        (Method::DELETE, "/fault/health") => {
            backend.follow_traffic_fault();
            reply(
                StatusCode::OK,
                format!("health: {} (follows traffic)\n", backend.health_fault()),
            )
        }
        (Method::POST, "/fault" | "/fault/health") => {
            let body = match Limited::new(req.into_body(), 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "fault text too long\n".into(),
                    )
                }
            };
            let text = String::from_utf8_lossy(&body);
            match text.trim().parse::<Fault>() {
                Ok(fault) if path == "/fault" => {
                    backend.set_fault(fault);
                    tracing::info!(backend = backend.id(), %fault, "traffic fault set");
                    reply(StatusCode::OK, format!("traffic: {fault}\n"))
                }
                Ok(fault) => {
                    backend.set_health_fault(fault);
                    tracing::info!(backend = backend.id(), %fault, "health fault set");
                    reply(StatusCode::OK, format!("health: {fault}\n"))
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "try GET /fault, GET /stats, POST /fault, POST /fault/health, DELETE /fault/health\n"
                .into(),
        ),
    }
}

fn reply(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r
}
