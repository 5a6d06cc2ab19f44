//! One active health probe: a task the pool actor spawns (its handler never awaits I/O), bounded
//! by `health.timeout`. `http` sends `GET path` on a fresh connection and passes on a 2xx; `tcp`
//! passes when the connect succeeds.

use crate::config::{Health, ProbeKind};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Runs one probe against `authority` (`host:port`); true when it passes within the timeout.
pub(crate) async fn probe(health: &Health, authority: &str) -> bool {
    tokio::time::timeout(health.timeout, attempt(health, authority))
        .await
        .unwrap_or(false)
}

async fn attempt(health: &Health, authority: &str) -> bool {
    let Ok(stream) = TcpStream::connect(authority).await else {
        return false;
    };
    if health.kind == ProbeKind::Tcp {
        return true;
    }
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    // The connection task ends with the probe: it is dropped with this future on timeout.
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(health.path.as_str())
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "fulcrum-probe")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new());
    let pass = match req {
        Ok(req) => sender
            .send_request(req)
            .await
            .is_ok_and(|resp| resp.status().is_success()),
        Err(_) => false,
    };
    driver.abort();
    pass
}
