//! `fulcrum demo`: the balancer on an embedded config in front of three in-process backends on
//! loopback ephemeral ports (one fast, one slow, one flaky): a newcomer's first run.

use crate::config::Config;
use crate::server::{self, Server};
use loadtest::{Backend, Fault};
use std::net::SocketAddr;
use std::time::Duration;

/// The embedded config; `{fast}`, `{slow}`, `{flaky}`, `{listen}` and `{admin}` are filled in.
const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A backend could not bind.
    #[error("cannot start a demo backend: {0}")]
    Backend(std::io::Error),
    /// The embedded config did not validate (a bug, or a bad --listen/--admin pair).
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigErrors),
    /// The balancer could not start.
    #[error(transparent)]
    Start(#[from] server::StartError),
}

/// Starts the backends and the balancer, prints where to look, runs until Ctrl-C.
pub async fn run(listen: SocketAddr, admin: SocketAddr) -> Result<(), DemoError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let start = |id: &'static str, fault: Fault| async move {
        Backend::start_with(id, loopback, fault)
            .await
            .map_err(DemoError::Backend)
    };
    let fast = start("fast", Fault::latency(Duration::from_millis(2))).await?;
    let slow = start("slow", Fault::latency(Duration::from_millis(150))).await?;
    let flaky = start(
        "flaky",
        Fault {
            latency: Duration::from_millis(5),
            ..Fault::errors(0.2, 503)
        },
    )
    .await?;
    let text = DEMO_CONFIG
        .replace("{fast}", &fast.addr().to_string())
        .replace("{slow}", &slow.addr().to_string())
        .replace("{flaky}", &flaky.addr().to_string())
        .replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string());
    let config = Config::from_toml(&text)?;
    let server = Server::start(&config, None).await?;
    let (p, a) = (server.proxy_addr(), server.admin_addr());
    println!(
        "fulcrum demo\n\
         \x20 proxy:    http://{p}/\n\
         \x20 metrics:  http://{a}/metrics\n\
         \x20 status:   http://{a}/status\n\
         \x20 backends: fast {} (2 ms), slow {} (150 ms), flaky {} (20% 503)\n\
         \x20 load:     while sleep 0.02; do curl -s -o /dev/null http://{p}/; done\n\
         \x20 watch:    watch -n1 'curl -s http://{a}/metrics | grep -E \"^fulcrum_backend_(weight|circuit_state)\"'\n\
         \x20 drain:    curl -s -X PUT http://{a}/admin/upstreams/demo/backends/{slow}/state -H 'Content-Type: application/json' -d '{{\"state\": \"drain\"}}'\n\
         \x20 Ctrl-C stops it.",
        fast.addr(),
        slow.addr(),
        flaky.addr(),
        slow = slow.addr(),
    );
    server::wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}
