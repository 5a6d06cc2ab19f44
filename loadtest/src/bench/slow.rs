//! `loadtest slow-clients`: what slow clients cost everyone else. A proxy on its defaults
//! (default workers) serves closed-loop load for a baseline; then the same load again while
//! slowloris connections (a request head sent a line at a time, never finished) and slow-body
//! connections (a large body declared, then sent a byte at a time) are held against it, each
//! opened again as soon as the proxy cuts it. Reported: the normal traffic's latency and rate
//! in both, the attackers held and cut, and the proxy's open files and resident memory before,
//! during, after the attackers have gone, and after a second attack (nothing may leak: what an
//! allocator keeps for reuse stays level from one attack to the next).

use super::backends::Backends;
use super::load::{self, Tally, Window};
use super::procfs::Tree;
use super::proxies::{self, Kind, Setup, Workers};
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How a slow-clients run is made.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fulcrum binary.
    pub fulcrum: PathBuf,
    /// The loadtest binary, which runs the backends.
    pub loadtest: PathBuf,
    /// The other proxies to measure, when installed.
    pub against: Vec<Kind>,
    /// The normal load's connections (default 16).
    pub connections: usize,
    /// How long each measure of the normal load counts (default 10 s).
    pub duration: Duration,
    /// Slowloris connections held (default 1,000).
    pub slowloris: usize,
    /// Slow-body connections held (default 1,000).
    pub slow_body: usize,
    /// How often each attacker sends its next few bytes (default 1 s).
    pub tick: Duration,
    /// Where each proxy's config and logs go.
    pub workdir: PathBuf,
}

impl Options {
    /// The defaults, with the binaries given.
    pub fn new(fulcrum: PathBuf, loadtest: PathBuf) -> Options {
        Options {
            fulcrum,
            loadtest,
            against: vec![Kind::Nginx, Kind::Haproxy],
            connections: 16,
            duration: Duration::from_secs(10),
            slowloris: 1000,
            slow_body: 1000,
            tick: Duration::from_secs(1),
            workdir: std::env::temp_dir().join(format!("loadtest-slow-{}", std::process::id())),
        }
    }
}

/// A proxy's resources at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    /// Open file descriptors of its processes.
    pub fds: usize,
    /// Resident memory, bytes.
    pub rss: u64,
}

impl Resources {
    fn of(tree: &Tree) -> Resources {
        Resources {
            fds: tree.fds(),
            rss: tree.rss(),
        }
    }
}

/// One proxy's run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Which proxy.
    pub proxy: Kind,
    /// The normal load alone.
    pub baseline: Tally,
    /// The normal load beside the attackers.
    pub attacked: Tally,
    /// How long each tally counted, seconds.
    pub seconds: f64,
    /// Attackers open at the end of the attacked measure (slowloris, slow body).
    pub held: (usize, usize),
    /// Attacker connections the proxy closed during the run (slowloris, slow body).
    pub cut: (usize, usize),
    /// Before the baseline, at the end of the attacked measure, 3 s after the attackers left,
    /// and 3 s after a second attack like the first (memory kept for reuse stays level from
    /// one attack to the next; a leak grows).
    pub before: Resources,
    /// See `before`.
    pub during: Resources,
    /// See `before`.
    pub after: Resources,
    /// See `before`.
    pub after_again: Resources,
}

/// What each attacker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// A request head, a header line per tick, never finished.
    Slowloris,
    /// A whole head declaring a 1 MB body, then a byte of it per tick.
    SlowBody,
}

/// Attackers open now and cut so far, per kind.
#[derive(Debug, Default)]
struct Count {
    open: Cell<usize>,
    cut: Cell<usize>,
}

/// Runs the measure against fulcrum and each installed proxy of `opts.against`, one after
/// another; `progress` hears each step. Call it on a current-thread runtime.
pub async fn run(opts: &Options, progress: &dyn Fn(&str)) -> Result<Vec<Report>, String> {
    super::raise_file_limit();
    let backends = Backends::start(&opts.loadtest, 3).await?;
    let mut programs = vec![(Kind::Fulcrum, opts.fulcrum.clone())];
    for &kind in &opts.against {
        match proxies::find(kind.name()) {
            Some(p) => programs.push((kind, p)),
            None => progress(&format!("{kind} is not installed: {}", kind.install_hint())),
        }
    }
    let mut reports = Vec::new();
    for (kind, program) in programs {
        let dir = opts.workdir.join(kind.name());
        let setup = Setup {
            backends: backends.addrs(),
            dir: &dir,
            workers: Workers::Default,
            max_connections: 10_000,
            files: super::file_limit(),
            counted: None,
        };
        let proxy = proxies::start(kind, &program, &setup).await?;
        let tree = Tree::new(proxy.pid);
        progress(&format!(
            "{kind}: baseline, {} connections",
            opts.connections
        ));
        // A moment of load first, so that the baseline's resources are the warm proxy's.
        measure(proxy.addr, opts.connections, Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = Resources::of(&tree);
        let baseline = measure(proxy.addr, opts.connections, opts.duration).await;
        progress(&format!(
            "{kind}: {} slowloris and {} slow-body connections, then the same load beside them",
            opts.slowloris, opts.slow_body
        ));
        let (attacked, during, held, cut) = attacked(proxy.addr, &tree, opts).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = Resources::of(&tree);
        progress(&format!("{kind}: the same attack again"));
        let _ = self::attacked(proxy.addr, &tree, opts).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after_again = Resources::of(&tree);
        reports.push(Report {
            proxy: kind,
            baseline,
            attacked,
            seconds: opts.duration.as_secs_f64(),
            held,
            cut,
            before,
            during,
            after,
            after_again,
        });
        proxy.stop().await;
    }
    drop(backends);
    let _ = std::fs::remove_dir_all(&opts.workdir);
    Ok(reports)
}

/// The normal load for `duration`, after a short warm-up.
async fn measure(addr: SocketAddr, connections: usize, duration: Duration) -> Tally {
    let now = Instant::now();
    let window = Window {
        start: now + Duration::from_millis(300),
        end: now + Duration::from_millis(300) + duration,
    };
    load::closed_loop(&[addr], connections, window).await
}

/// The attackers opened and held, the normal load measured beside them; what it saw, the
/// proxy's resources at its end, and the attackers held then and cut by then.
async fn attacked(
    addr: SocketAddr,
    tree: &Tree,
    opts: &Options,
) -> (Tally, Resources, (usize, usize), (usize, usize)) {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let stop = Rc::new(Cell::new(false));
            let loris = Rc::new(Count::default());
            let body = Rc::new(Count::default());
            let mut attackers = Vec::new();
            for (n, kind, count) in [
                (opts.slowloris, Attack::Slowloris, &loris),
                (opts.slow_body, Attack::SlowBody, &body),
            ] {
                for _ in 0..n {
                    attackers.push(tokio::task::spawn_local(attacker(
                        addr,
                        kind,
                        opts.tick,
                        count.clone(),
                        stop.clone(),
                    )));
                    // Opened at a pace the listen backlog takes: 2,000 in about 2 s.
                    tokio::task::yield_now().await;
                    if attackers.len() % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            let tally = measure(addr, opts.connections, opts.duration).await;
            let during = Resources::of(tree);
            let held = (loris.open.get(), body.open.get());
            stop.set(true);
            for a in attackers {
                a.abort();
            }
            (tally, during, held, (loris.cut.get(), body.cut.get()))
        })
        .await
}

/// One attacker: opens a connection, sends its attack a little each tick, and opens another
/// when the proxy closes it, until told to stop.
async fn attacker(
    addr: SocketAddr,
    kind: Attack,
    tick: Duration,
    count: Rc<Count>,
    stop: Rc<Cell<bool>>,
) {
    while !stop.get() {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(tick).await;
            continue;
        };
        count.open.set(count.open.get() + 1);
        let head: &[u8] = match kind {
            Attack::Slowloris => b"GET / HTTP/1.1\r\nHost: bench.local\r\n",
            Attack::SlowBody => {
                b"POST / HTTP/1.1\r\nHost: bench.local\r\nContent-Length: 1000000\r\n\r\n"
            }
        };
        let mut alive = s.write_all(head).await.is_ok();
        let mut buf = [0u8; 1024];
        while alive && !stop.get() {
            // Sleep a tick, unless the proxy answers or closes meanwhile.
            match tokio::time::timeout(tick, s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => alive = false,
                // An answer (a 408, say) before the close: wait for the close.
                Ok(Ok(_)) => {}
                Err(_) => {
                    let more: &[u8] = match kind {
                        Attack::Slowloris => b"X-Slow: a\r\n",
                        Attack::SlowBody => b"x",
                    };
                    alive = s.write_all(more).await.is_ok();
                }
            }
        }
        count.open.set(count.open.get() - 1);
        if !stop.get() {
            count.cut.set(count.cut.get() + 1);
        }
    }
}

/// The reports as a markdown table.
pub fn render(reports: &[Report], opts: &Options) -> String {
    let mut out = format!(
        "Normal load: {} keep-alive connections, closed loop, {} s per measure; attackers: \
         {} slowloris + {} slow-body connections, a few bytes each per {} s, reopened when cut. \
         Each proxy on its defaults, default workers.\n\n",
        opts.connections,
        opts.duration.as_secs_f64(),
        opts.slowloris,
        opts.slow_body,
        opts.tick.as_secs_f64()
    );
    out.push_str(
        "| proxy | p50 alone | p99 alone | p99 attacked | × | req/s alone | req/s attacked | \
         errors attacked | attackers held | cut | fds before / during / after / after again | \
         RSS MiB before / during / after / after again |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for r in reports {
        let p99 = ms(r.baseline.percentile(99.0));
        let p99_attacked = ms(r.attacked.percentile(99.0));
        out.push_str(&format!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} | {:.0} | {:.0} | {} | {} + {} | {} + {} | {} / {} / {} / {} | {:.1} / {:.1} / {:.1} / {:.1} |\n",
            r.proxy,
            ms(r.baseline.percentile(50.0)),
            p99,
            p99_attacked,
            p99_attacked / p99.max(f64::MIN_POSITIVE),
            r.baseline.ok as f64 / r.seconds,
            r.attacked.ok as f64 / r.seconds,
            r.attacked.errors,
            r.held.0,
            r.held.1,
            r.cut.0,
            r.cut.1,
            r.before.fds,
            r.during.fds,
            r.after.fds,
            r.after_again.fds,
            mib(r.before.rss),
            mib(r.during.rss),
            mib(r.after.rss),
            mib(r.after_again.rss),
        ));
    }
    out
}
