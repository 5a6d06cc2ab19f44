//! Wiring: config → pool actors → the proxy and admin listeners, each client connection served
//! by [`connection::serve`]; signals (SIGHUP reloads through [`Control`]); and the way out (stop
//! accepting, drain in-flight requests and upgraded connections up to `listen.drain_timeout`,
//! stop the actors).

use crate::admin::Admin;
use crate::config::Config;
use crate::connection::{self, until_true, Builders, Limits};
use crate::control::{self, Control, ReloadError, Reloaded};
use crate::pool::PoolMsg;
use crate::proxy::body::{AnswerBody, BoxError, HoldBody};
use crate::proxy::body_timeout::BodyTimeout;
use crate::proxy::{headers, Proxy};
use crate::telemetry::access::Access;
use crate::telemetry::metrics::Metrics;
use crate::workers::{self, Workers};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use ractor::ActorRef;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

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
    /// The response body. Its own type rather than one boxed body for every handler: boxing
    /// the proxy's answer (a backend's body, held with its access entry) cost an allocation
    /// per request.
    type Body: http_body::Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static;

    /// Answers one request from `client`.
    fn handle(
        &self,
        req: Request<ClientBody>,
        client: Peer,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// A client request's body as a [`Handler`] gets it: hyper's, under its clocks, or one that
/// fulcrum's own HTTP/1.1 server read whole with the request's head (see `connection::plain`).
/// Every error it ends with is a [`ClientBodyError`]: the client's doing.
#[derive(Debug)]
pub enum ClientBody {
    /// The body as hyper reads it. Boxed with its clocks: the whole body is a size every
    /// request moves about, and this is the rarer kind.
    Hyper(Box<HyperBody>),
    /// All of the body; empty for none.
    Whole(Bytes),
}

/// hyper's body of a request, and the clocks of its silences and of the request's deadline.
#[derive(Debug)]
pub struct HyperBody {
    body: Incoming,
    clock: BodyTimeout,
    deadline: Option<tokio::time::Instant>,
}

/// Why a client's request body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Malformed (a bad chunk), or the client closed the connection mid-body.
    #[error("the request body broke off or was malformed: {0}")]
    Broken(#[source] hyper::Error),
    /// Silent longer than `listen.body_read_timeout`, or not all in by the request's deadline.
    #[error("the request body did not arrive in time")]
    Timeout,
}

impl ClientBody {
    /// hyper's body, allowing `idle_ms` milliseconds of silence between two reads.
    pub fn hyper(body: Incoming, idle_ms: u32) -> ClientBody {
        ClientBody::Hyper(Box::new(HyperBody {
            body,
            clock: BodyTimeout::millis(idle_ms),
            deadline: None,
        }))
    }

    /// The whole body must be in by `deadline` (the request's).
    pub fn set_deadline(&mut self, deadline: tokio::time::Instant) {
        if let ClientBody::Hyper(b) = self {
            b.deadline = Some(deadline);
        }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        match self.get_mut() {
            ClientBody::Hyper(b) => {
                let polled = std::pin::Pin::new(&mut b.body).poll_frame(cx);
                if b.clock
                    .poll_silence(polled.is_pending(), b.deadline, cx)
                    .is_ready()
                {
                    return Poll::Ready(Some(Err(ClientBodyError::Timeout.into())));
                }
                polled.map(|f| f.map(|r| r.map_err(|e| ClientBodyError::Broken(e).into())))
            }
            ClientBody::Whole(b) if b.is_empty() => Poll::Ready(None),
            ClientBody::Whole(b) => {
                Poll::Ready(Some(Ok(http_body::Frame::data(std::mem::take(b)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.body.is_end_stream(),
            ClientBody::Whole(b) => b.is_empty(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ClientBody::Hyper(b) => b.body.size_hint(),
            ClientBody::Whole(b) => http_body::SizeHint::with_exact(b.len() as u64),
        }
    }
}

/// The client of a connection, as its requests' handler sees it: its address, and that address
/// as a header value, made once per connection rather than for every request's
/// `X-Forwarded-For` (an allocation and a formatting each).
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    ip: HeaderValue,
    trusted: bool,
}

impl Peer {
    /// The client at `addr`, not a trusted proxy.
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            ip: headers::ip_value(addr.ip()),
            trusted: false,
        }
    }

    /// The client at `addr`, trusted when one of `trusted_proxies` holds its address.
    pub fn among(addr: SocketAddr, trusted_proxies: &[ipnet::IpNet]) -> Peer {
        let ip = addr.ip().to_canonical();
        Peer {
            trusted: trusted_proxies.iter().any(|net| net.contains(&ip)),
            ..Peer::new(addr)
        }
    }

    /// Whether it is a trusted proxy (`listen.trusted_proxies`), whose forwarding headers are
    /// believed.
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its IP address as a header value.
    pub fn ip(&self) -> &HeaderValue {
        &self.ip
    }
}

impl Handler for Proxy {
    type Body = HoldBody<AnswerBody, Access>;

    fn handle(
        &self,
        req: Request<ClientBody>,
        client: Peer,
    ) -> impl Future<Output = Response<Self::Body>> + Send {
        Proxy::handle(self, req, client)
    }
}

/// A running fulcrum: its listeners, its pool actors, and the switch that stops it.
pub struct Server {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    control: Arc<Control>,
    proxy: Arc<Proxy>,
    drain: Duration,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds both listeners, starts one pool actor per upstream and starts serving.
    /// `seed` seeds the pools' random sources (tests); `None` seeds from the OS. Without a
    /// file behind the config, [`Server::reload`] has nothing to read; see [`Server::start_from`].
    pub async fn start(config: &Config, seed: Option<u64>) -> Result<Server, StartError> {
        Server::start_from(config, None, seed).await
    }

    /// As [`Server::start`], for a `config` read from the file `source`, which a reload
    /// (SIGHUP, `POST /admin/reload`, [`Server::reload`]) reads again.
    pub async fn start_from(
        config: &Config,
        source: Option<PathBuf>,
        seed: Option<u64>,
    ) -> Result<Server, StartError> {
        Server::start_on(config, source, seed, &Workers::one()).await
    }

    /// As [`Server::start_from`], serving the proxy listener's connections on `workers`
    /// (`runtime.worker_threads`); the rest runs on the runtime this is called on, which must
    /// be the first of them.
    pub async fn start_on(
        config: &Config,
        source: Option<PathBuf>,
        seed: Option<u64>,
        workers: &Workers,
    ) -> Result<Server, StartError> {
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

        let metrics = Metrics::new();
        let mut pools = Vec::with_capacity(config.upstreams.len());
        for (i, up) in config.upstreams.iter().enumerate() {
            let seed = seed.map(|s| s.wrapping_add(i as u64));
            let pool = control::spawn_pool(
                up,
                seed,
                &metrics,
                config.listen.drain_timeout,
                workers.serving(),
            )
            .await
            .map_err(|reason| StartError::Pool {
                upstream: up.name.clone(),
                reason,
            })?;
            pools.push((up.name.clone(), pool));
        }

        let pool_refs: Vec<_> = pools.iter().map(|(_, p)| p.clone()).collect();
        let proxy = Arc::new(Proxy::new(config, &pool_refs, &metrics));
        let upstreams = pools.len();
        let control = Arc::new(Control::new(
            config.clone(),
            source,
            pools,
            proxy.clone(),
            metrics.clone(),
            seed,
            workers.serving().to_vec(),
        ));
        let admin = Arc::new(Admin::new(
            control.clone(),
            metrics.clone(),
            &config.admin.hosts,
        ));
        let (stop, stopped) = watch::channel(false);
        let limits = Limits {
            header_read: config.listen.header_read_timeout,
            idle: config.listen.idle_timeout,
            drain: config.listen.drain_timeout,
            max_connections: config.listen.max_connections,
            max_header_bytes: config.listen.max_header_bytes,
            body_read: config.listen.body_read_timeout,
            send: config.listen.send_timeout,
        };
        let clients = metrics.clients();
        let proxy_side = Builders::new(&limits, &config.listen.trusted_proxies, clients.clone());
        let mut tasks = serve(
            "proxy",
            proxy_listener,
            proxy.clone(),
            &stopped,
            (limits, proxy_side),
            (workers.serving(), workers.first_serving()),
        );
        // The admin listener's few requests stay on worker 0, with the actors they ask.
        tasks.extend(serve(
            "admin",
            admin_listener,
            admin,
            &stopped,
            (limits, Builders::new(&limits, &[], clients)),
            (&workers.handles()[..1], 0),
        ));
        tasks.push(tokio::spawn(upkeep(metrics, stopped)));
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, upstreams, "fulcrum started");
        Ok(Server {
            proxy_addr,
            admin_addr,
            control,
            proxy,
            drain: config.listen.drain_timeout,
            stop,
            tasks,
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
        self.control.pool(name)
    }

    /// What changes the running server: reloads and the admin API's changes.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Reads the config file again and applies the difference (as SIGHUP does).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.control.reload().await
    }

    /// Stops accepting, lets in-flight requests and upgraded connections finish (up to the
    /// drain timeout), then stops the actors.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let tunnels = self.proxy.tunnels().clone();
        let drain = self.drain;
        let tunnels = tokio::spawn(async move { tunnels.drain(drain).await });
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = tunnels.await;
        for (_, pool) in &self.control.pools() {
            let _ = pool
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                .await;
        }
        tracing::info!("fulcrum stopped");
    }
}

/// Runs `config` (read from `source`) on `workers` until SIGINT or SIGTERM, then shuts down gracefully;
/// SIGHUP reloads the file.
pub async fn run(
    config: &Config,
    source: Option<PathBuf>,
    workers: &Workers,
) -> Result<(), StartError> {
    // Caught from before "fulcrum started" is logged: a supervisor that signals as soon as it
    // reads that line must not meet the default action (exit) instead.
    let mut hangups = hangups();
    let stop = stop_signals();
    let server = Server::start_on(config, source, None, workers).await?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = hangups.recv() => {
                // The outcome is logged by the reload itself.
                let _ = server.reload().await;
            }
        }
    }
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    server.shutdown().await;
    Ok(())
}

/// SIGHUPs as they come (never, where there are none).
fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                // Several at once are one reload.
                let _ = tx.try_send(());
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    stop_signals().await
}

/// A future that resolves on SIGINT or SIGTERM, both caught from the moment this is called
/// (not from its first poll, as `tokio::signal::ctrl_c` would).
fn stop_signals() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let next = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = next(interrupt) => {}
                _ = next(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How often histogram samples are folded when nobody scrapes /metrics.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Folds the metrics' histogram samples now and then until `stopped`, so that they stay
/// bounded without a scraper.
async fn upkeep(metrics: Metrics, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => metrics.upkeep(),
            _ = until_true(&mut stopped) => return,
        }
    }
}

/// Accepts connections on `listener` and hands each to the one of `workers` (the first of
/// which is worker number `first`) serving the fewest, which serves HTTP/1.1 and HTTP/2 on it
/// with `handler`, until `stopped` turns true; then each worker lets its open connections
/// finish for at most the drain timeout. The returned tasks end when all that is done.
fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    stopped: &watch::Receiver<bool>,
    (limits, builders): (Limits, Builders),
    (workers, first): (&[Handle], usize),
) -> Vec<JoinHandle<()>> {
    let builders = Arc::new(builders);
    let mut tasks = Vec::with_capacity(workers.len() + 1);
    let mut hands = Vec::with_capacity(workers.len());
    for (index, worker) in workers.iter().enumerate() {
        let (hand, accepted) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        hands.push(Hand {
            accepted: hand,
            open: open.clone(),
            here: first + index == workers::current(),
        });
        tasks.push(worker.spawn(tend(
            Tending {
                name,
                index,
                handler: handler.clone(),
                builders: builders.clone(),
                limits,
                open,
            },
            accepted,
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(accept(
        name,
        listener,
        hands,
        stopped.clone(),
        limits,
    )));
    tasks
}

/// A connection on its way to a worker, with its permit.
type Accepted = (Socket, SocketAddr, OwnedSemaphorePermit);

/// An accepted socket: as accepted, for worker 0 (where the accepting runs); taken off this
/// thread's reactor for any other, to be registered with that worker's, so that its readiness
/// is seen on the thread that serves it.
enum Socket {
    Here(TcpStream),
    Moved(std::net::TcpStream),
}

impl Socket {
    /// The socket on the reactor of the runtime this is called on.
    fn registered(self) -> std::io::Result<TcpStream> {
        match self {
            Socket::Here(s) => Ok(s),
            Socket::Moved(s) => TcpStream::from_std(s),
        }
    }
}

/// How the accepting task reaches one worker: its queue of new connections, and how many it
/// serves.
struct Hand {
    accepted: mpsc::UnboundedSender<Accepted>,
    open: Arc<AtomicUsize>,
    /// Its worker is the one accepting.
    here: bool,
}

/// Accepts connections until `stopped`, each handed to the worker with the fewest open, as
/// nginx's workers take new connections when they are least busy. Runs on worker 0.
async fn accept(
    name: &'static str,
    listener: TcpListener,
    hands: Vec<Hand>,
    mut stopped: watch::Receiver<bool>,
    limits: Limits,
) {
    // A connection holds a permit for its life; without one, the next is not accepted and
    // waits in the kernel's queue, as with HAProxy's maxconn.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = until_true(&mut stopped) => break,
        };
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
        let Some(hand) = hands.iter().min_by_key(|h| h.open.load(Ordering::Relaxed)) else {
            break;
        };
        let stream = if hand.here {
            Socket::Here(stream)
        } else {
            match stream.into_std() {
                Ok(s) => Socket::Moved(s),
                Err(_) => continue,
            }
        };
        hand.open.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError((_, _, permit))) =
            hand.accepted.send((stream, client, permit))
        {
            // That worker has stopped: the server is on its way out.
            drop(permit);
            break;
        }
    }
    drop(listener);
    let open: usize = hands.iter().map(|h| h.open.load(Ordering::Relaxed)).sum();
    tracing::info!(
        listener = name,
        open,
        "listener closed; draining its connections"
    );
}

/// What a worker serves a listener's connections with.
struct Tending<H> {
    name: &'static str,
    index: usize,
    handler: Arc<H>,
    builders: Arc<Builders>,
    limits: Limits,
    /// Its connections open, which the accepting task reads.
    open: Arc<AtomicUsize>,
}

/// Serves the connections handed to this worker until `stopped`; then lets them finish for at
/// most the drain timeout.
async fn tend<H: Handler>(
    t: Tending<H>,
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let ends = stopped.clone();
    let start = |conns: &mut JoinSet<()>, (stream, client, permit): Accepted| {
        let (handler, builders, stopped, open) = (
            t.handler.clone(),
            t.builders.clone(),
            ends.clone(),
            t.open.clone(),
        );
        let limits = t.limits;
        // The connection's future is made inside the task's, not moved into it: moved in, the
        // task held it twice (as what it captured and as what it awaits), 2.1 KiB instead of
        // 1.1 KiB for every connection, parked or not.
        conns.spawn(async move {
            if let Ok(stream) = stream.registered() {
                connection::serve(stream, client, handler, builders, stopped, limits).await;
            }
            open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    };
    loop {
        tokio::select! {
            next = accepted.recv() => match next {
                Some(conn) => start(&mut conns, conn),
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = until_true(&mut stopped) => break,
        }
    }
    // Those handed over as the server stopped are served too, as far as the drain lets them.
    accepted.close();
    while let Ok(conn) = accepted.try_recv() {
        start(&mut conns, conn);
    }
    let drained = tokio::time::timeout(t.limits.drain, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = t.name,
            open = conns.len(),
            worker = t.index,
            "drain timeout ({}) reached; closing the remaining connections",
            humantime::format_duration(t.limits.drain)
        );
        conns.shutdown().await;
    }
}
