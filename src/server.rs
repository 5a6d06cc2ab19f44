//! Wiring: config → pool actors → the proxy and admin listeners; and the way out (stop
//! accepting, drain in-flight requests up to `listen.drain_timeout`, stop the actors).

use crate::admin::Admin;
use crate::config::Config;
use crate::pool::{PoolActor, PoolArgs, PoolMsg};
use crate::proxy::body::ProxyBody;
use crate::proxy::Proxy;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use ractor::{Actor, ActorRef};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `listen.address` or `admin.address`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A pool actor could not start.
    #[error("cannot start the pool of upstream {upstream}: {reason}")]
    Pool {
        /// The upstream's name.
        upstream: String,
        /// What ractor said.
        reason: String,
    },
}

/// Something that answers HTTP requests on a listener.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `client`.
    fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;
}

impl Handler for Proxy {
    fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        Proxy::handle(self, req, client)
    }
}

/// A running fulcrum: its listeners, its pool actors, and the switch that stops it.
pub struct Server {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    pools: Vec<(String, ActorRef<PoolMsg>)>,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds both listeners, starts one pool actor per upstream and starts serving.
    /// `seed` seeds the pools' random sources (tests); `None` seeds from the OS.
    pub async fn start(config: &Config, seed: Option<u64>) -> Result<Server, StartError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let proxy_listener = bind("listen.address", config.listen.address).await?;
        let admin_listener = bind("admin.address", config.admin.address).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let proxy_addr = local(&proxy_listener, "listen.address", config.listen.address)?;
        let admin_addr = local(&admin_listener, "admin.address", config.admin.address)?;

        let mut pools = Vec::with_capacity(config.upstreams.len());
        for (i, up) in config.upstreams.iter().enumerate() {
            let args = PoolArgs {
                upstream: up.clone(),
                seed: seed.map(|s| s.wrapping_add(i as u64)),
            };
            let (pool, _) =
                Actor::spawn(None, PoolActor, args)
                    .await
                    .map_err(|e| StartError::Pool {
                        upstream: up.name.clone(),
                        reason: e.to_string(),
                    })?;
            pools.push((up.name.clone(), pool));
        }

        let proxy = Arc::new(Proxy::new(
            &config.upstreams,
            pools.iter().map(|(_, p)| p.clone()).collect(),
        ));
        let admin = Arc::new(Admin::new(pools.clone()));
        let (stop, stopped) = watch::channel(false);
        let drain = config.listen.drain_timeout;
        let listeners = vec![
            tokio::spawn(serve(proxy_listener, proxy, stopped.clone(), drain)),
            tokio::spawn(serve(admin_listener, admin, stopped, drain)),
        ];
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, upstreams = pools.len(), "fulcrum started");
        Ok(Server {
            proxy_addr,
            admin_addr,
            pools,
            stop,
            listeners,
        })
    }

    /// The proxy listener's bound address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The pool actor of the upstream called `name`.
    pub fn pool(&self, name: &str) -> Option<ActorRef<PoolMsg>> {
        self.pools
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), then stops the
    /// actors.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for l in self.listeners {
            let _ = l.await;
        }
        for (_, pool) in &self.pools {
            let _ = pool
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                .await;
        }
        tracing::info!("fulcrum stopped");
    }
}

/// Runs until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run(config: &Config) -> Result<(), StartError> {
    let server = Server::start(config, None).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    server.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Resolves once the flag is true (or its sender is gone).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// Accepts connections on `listener` and serves HTTP/1.1 and HTTP/2 on each with `handler`
/// until `stopped` turns true; then drains the open connections for at most `drain`.
async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut stopped: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = until_true(&mut stopped) => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(req, client).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %client, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "drain timeout ({}) reached; closing the remaining connections",
            humantime::format_duration(drain)
        );
    }
}
