//! HTTP/1.1 upgrades (WebSocket, and the protocols an upstream's `upgrades` adds): the
//! request's `Connection: upgrade` and `Upgrade` survive the hop-by-hop strip, a backend's `101 Switching Protocols`
//! goes back to the client, and the two upgraded connections are then joined byte for byte.
//! The backend's lease rides in the tunnel, so the connection counts in flight until it closes.
//! Tunnels are tracked: a shutdown waits for them as for requests, up to the drain deadline,
//! then closes them.

use crate::pool::Lease;
use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::{Request, Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The `Upgrade` header of a request that asks for one: HTTP/1.1 with `Connection: upgrade`.
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    if !super::headers::lists(req.headers(), CONNECTION, "upgrade") {
        return None;
    }
    req.headers().get(UPGRADE).cloned()
}

/// Whether every protocol an `Upgrade` header lists is in `allowed` (in any case; a
/// protocol's version, after `/`, does not count). Only `websocket` by default: another
/// protocol's tunnel (`h2c`, say) would carry requests fulcrum never sees, past its limits and
/// its log.
pub fn allowed(protocol: &HeaderValue, allowed: &[Box<str>]) -> bool {
    let Ok(text) = protocol.to_str() else {
        return false;
    };
    let mut any = false;
    for p in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let name = p.split('/').next().unwrap_or(p);
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return false;
        }
        any = true;
    }
    any
}

/// Puts back the two headers an upgrade needs after the hop-by-hop strip took them.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// The running tunnels of a proxy.
#[derive(Debug, Clone, Default)]
pub struct Tunnels {
    tracker: TaskTracker,
    close: CancellationToken,
}

impl Tunnels {
    /// Joins the client's connection to the backend's once both upgrades complete, holding
    /// `lease` until either side closes.
    pub fn open<B>(&self, client: OnUpgrade, backend: &mut Response<B>, lease: Lease) {
        let backend = hyper::upgrade::on(backend);
        let close = self.close.clone();
        self.tracker.spawn(async move {
            let joined = async {
                let (client, backend) = match tokio::try_join!(client, backend) {
                    Ok(both) => both,
                    Err(e) => {
                        tracing::debug!(error = %e, "upgrade did not complete");
                        return;
                    }
                };
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            };
            tokio::select! {
                _ = joined => {}
                _ = close.cancelled() => {}
            }
            drop(lease);
        });
    }

    /// Tunnels open now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Lets the open tunnels run for at most `deadline`, then closes those left.
    pub async fn drain(&self, deadline: Duration) {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tracker.len(),
                "drain timeout reached; closing the remaining upgraded connections"
            );
            self.close.cancel();
            self.tracker.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_protocols_pass_whatever_their_case_or_version() {
        let list: Vec<Box<str>> = vec!["websocket".into()];
        let ok = |v: &'static str| allowed(&HeaderValue::from_static(v), &list);
        assert!(ok("websocket"));
        assert!(ok("WebSocket"));
        assert!(ok("websocket/13"));
        assert!(!ok("h2c"));
        assert!(!ok("websocket, h2c"));
        assert!(!ok(""));
        assert!(!ok(" , "));
    }
}
