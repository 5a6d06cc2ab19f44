//! `loadtest bench`: fulcrum beside nginx and HAProxy, in one run on one machine. Three fast
//! backends run in a process of their own; the proxies are started in front of them (one worker
//! each, then each with its default worker count) and driven by closed-loop load at each
//! connection count, taking turns: each target's count is gathered over several turns (two by
//! default), so that a drift in the machine's speed, which on a shared VM can be 20% in a
//! minute, falls on all of them alike. Their CPU time and memory are read from /proc. Talking to
//! the backends directly is measured too, as the ceiling.

pub mod backends;
pub mod idle;
pub mod instructions;
pub mod load;
pub mod procfs;
pub mod proxies;
pub mod slow;
pub mod table;

use idle::IdleMemory;
use load::{Tally, Window};
use procfs::{Cpu, Tree};
use proxies::{Kind, Setup, Workers};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// How a bench is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fulcrum binary.
    pub fulcrum: PathBuf,
    /// The loadtest binary, which runs the backends (`bench-backends`).
    pub loadtest: PathBuf,
    /// The other proxies to measure, when installed.
    pub against: Vec<Kind>,
    /// Concurrent connections of each measure (default 1, 16, 128).
    pub connections: Vec<usize>,
    /// Load before each turn starts counting (default 500 ms).
    pub warmup: Duration,
    /// How long each measure counts, over all its turns (default 4 s).
    pub duration: Duration,
    /// The turns each measure's count is split into, the targets taking turns (default 2).
    pub rounds: u32,
    /// Idle keep-alive connections for the memory measure; 0 skips it (default 10,000).
    pub idle: usize,
    /// Also count each proxy's instructions per request under valgrind (one worker each, at
    /// [`Options::counted_connections`]); off by default, as it needs valgrind and 10–20 s a
    /// proxy.
    pub instructions: bool,
    /// How long the load of each count runs.
    pub counted: instructions::Load,
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
            connections: vec![1, 16, 128],
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(4),
            rounds: 2,
            idle: 10_000,
            instructions: false,
            counted: instructions::Load::FULL,
            workdir: std::env::temp_dir().join(format!("loadtest-bench-{}", std::process::id())),
        }
    }

    /// The turns of each measure (at least one).
    fn turns(&self) -> u32 {
        self.rounds.max(1)
    }

    /// The connections instructions are counted at: 16, or the nearest count measured.
    pub fn counted_connections(&self) -> usize {
        self.connections
            .iter()
            .copied()
            .min_by_key(|&n| n.abs_diff(16))
            .unwrap_or(16)
    }

    /// The short form: every step, briefly (a few seconds in all without other proxies).
    pub fn quick(self) -> Options {
        Options {
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            counted: instructions::Load::QUICK,
            rounds: 1,
            idle: self.idle.min(500),
            ..self
        }
    }
}

/// One measure: one target at one connection count.
#[derive(Debug, Clone)]
pub struct Cell {
    /// `None` is talking to the backends directly.
    pub proxy: Option<Kind>,
    /// The proxy's workers (`One` for direct).
    pub workers: Workers,
    /// Concurrent connections.
    pub connections: usize,
    /// What the clients saw.
    pub tally: Tally,
    /// The window's length.
    pub seconds: f64,
    /// The proxy's CPU time in the window (None for direct).
    pub cpu: Option<Cpu>,
    /// The proxy's peak resident memory so far (None for direct).
    pub peak_rss: Option<u64>,
    /// 2xx answers per second in each turn, in the order they ran: the targets take turns, so
    /// two targets' figures of the same turn were measured a few seconds apart, and how far
    /// their ratio moves from turn to turn is the machine's noise.
    pub turns: Vec<f64>,
}

impl Cell {
    /// Adds `turn`, a later turn of the same measure.
    fn absorb(&mut self, turn: Cell) {
        self.turns.extend(turn.turns);
        self.tally.absorb(&turn.tally);
        self.seconds += turn.seconds;
        self.cpu = match (self.cpu, turn.cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.peak_rss = self.peak_rss.max(turn.peak_rss);
    }

    /// 2xx answers per second.
    pub fn rate(&self) -> f64 {
        self.tally.ok as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// The proxy's CPU seconds (user and system) per 1,000 answers.
    pub fn cpu_per_1000(&self) -> Option<f64> {
        self.per_1000(self.cpu?.total())
    }

    /// The part of [`Cell::cpu_per_1000`] spent in the proxy's own code (user time): the part
    /// a proxy's design decides, where the system part is mostly the TCP stack's.
    pub fn user_per_1000(&self) -> Option<f64> {
        self.per_1000(self.cpu?.user)
    }

    fn per_1000(&self, seconds: f64) -> Option<f64> {
        (self.tally.ok > 0).then(|| seconds * 1000.0 / self.tally.ok as f64)
    }
}

/// A proxy's idle-connection memory.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    /// Which proxy.
    pub proxy: Kind,
    /// What was measured.
    pub memory: IdleMemory,
}

/// Everything a bench measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Every measure, in the order made.
    pub cells: Vec<Cell>,
    /// Idle-connection memory, one worker each.
    pub idle: Vec<Idle>,
    /// Proxies asked for but not installed.
    pub missing: Vec<Kind>,
    /// Proxies that would not start, with why.
    pub failed: Vec<(Kind, String)>,
    /// Versions of the programs measured, for the record.
    pub versions: Vec<(Kind, String)>,
    /// Instructions per request, when counted.
    pub instructions: Vec<instructions::Counted>,
    /// Counting was asked for but valgrind is not installed.
    pub no_valgrind: bool,
    /// Proxies whose instructions could not be counted, with why.
    pub uncounted: Vec<(Kind, String)>,
}

/// Runs the whole bench; `progress` hears each step. Call it on a current-thread runtime: the
/// load shares one thread, as wrk's `-t1` does.
pub async fn run(opts: &Options, progress: &dyn Fn(&str)) -> Result<Results, String> {
    raise_file_limit();
    let mut results = Results::default();
    let mut programs = vec![(Kind::Fulcrum, opts.fulcrum.clone())];
    for &kind in &opts.against {
        match proxies::find(kind.name()) {
            Some(p) => programs.push((kind, p)),
            None => results.missing.push(kind),
        }
    }
    for (kind, program) in &programs {
        results
            .versions
            .push((*kind, version(*kind, program).await));
    }
    let backends = backends::Backends::start(&opts.loadtest, 3).await?;
    let direct = backends.addrs().to_vec();
    for workers in [Workers::One, Workers::Default] {
        // Every proxy of a setting runs at once, idle but for the one under load, and the
        // targets take turns at each connection count: a drift in the machine's speed then
        // touches all of them alike, not whichever ran last.
        let mut running = Vec::new();
        for (kind, program) in &programs {
            let dir = opts.workdir.join(format!(
                "{}-{}",
                kind.name(),
                if workers == Workers::One {
                    "one"
                } else {
                    "default"
                }
            ));
            let setup = Setup {
                backends: &direct,
                dir: &dir,
                workers,
                max_connections: opts.idle.max(1000) + 1000,
                files: file_limit(),
                counted: None,
            };
            match proxies::start(*kind, program, &setup).await {
                Ok(p) => running.push((*kind, p)),
                Err(e) => {
                    progress(&format!("{kind} did not start: {e}"));
                    results.failed.push((*kind, e));
                }
            }
        }
        let rounds = opts.turns();
        for &n in &opts.connections {
            // Direct first, then each proxy; a turn of each, then the next turn.
            let mut cells: Vec<Cell> = Vec::new();
            for round in 1..=rounds {
                let turn = if rounds > 1 {
                    format!(" (turn {round} of {rounds})")
                } else {
                    String::new()
                };
                progress(&format!(
                    "{}: direct to the backends, {n} connections{turn}",
                    table::workers(workers)
                ));
                let mut made = vec![measure(None, workers, &direct, n, None, opts).await];
                for (kind, proxy) in &running {
                    progress(&format!(
                        "{}: {kind}, {n} connections{turn}",
                        table::workers(workers)
                    ));
                    let tree = Tree::new(proxy.pid);
                    made.push(
                        measure(Some(*kind), workers, &[proxy.addr], n, Some(&tree), opts).await,
                    );
                }
                if cells.is_empty() {
                    cells = made;
                } else {
                    for (cell, turn) in cells.iter_mut().zip(made) {
                        cell.absorb(turn);
                    }
                }
            }
            results.cells.extend(cells);
        }
        for (kind, proxy) in running {
            if workers == Workers::One && opts.idle > 0 {
                progress(&format!("{kind}: {} idle connections", opts.idle));
                let memory = idle::measure(proxy.addr, opts.idle, &Tree::new(proxy.pid)).await;
                results.idle.push(Idle {
                    proxy: kind,
                    memory,
                });
            }
            proxy.stop().await;
        }
    }
    if opts.instructions {
        count_instructions(opts, &programs, &direct, &mut results, progress).await;
    }
    drop(backends);
    // Kept when something went wrong, for its logs.
    if results.failed.is_empty() && results.uncounted.is_empty() {
        let _ = std::fs::remove_dir_all(&opts.workdir);
    }
    Ok(results)
}

/// Counts each proxy's instructions per request, one after another (valgrind runs a proxy
/// some 20 times slower: taking turns would not make the counts any fairer, as they do not
/// drift with the machine).
async fn count_instructions(
    opts: &Options,
    programs: &[(Kind, PathBuf)],
    backends: &[SocketAddr],
    results: &mut Results,
    progress: &dyn Fn(&str),
) {
    let connections = opts.counted_connections();
    for (kind, program) in programs {
        let dir = opts.workdir.join(format!("{}-counted", kind.name()));
        let Some(callgrind) = instructions::tools(dir.join("callgrind.out")) else {
            results.no_valgrind = true;
            return;
        };
        progress(&format!(
            "{kind} under valgrind: instructions per request, {connections} connections"
        ));
        match instructions::measure(
            *kind,
            program,
            &callgrind,
            backends,
            &dir,
            connections,
            opts.counted,
        )
        .await
        {
            Ok(c) => results.instructions.push(c),
            Err(e) => {
                progress(&format!("{kind}: instructions not counted: {e}"));
                results.uncounted.push((*kind, e));
            }
        }
    }
}

async fn measure(
    proxy: Option<Kind>,
    workers: Workers,
    targets: &[SocketAddr],
    connections: usize,
    tree: Option<&Tree>,
    opts: &Options,
) -> Cell {
    let counted = opts.duration / opts.turns();
    let now = Instant::now();
    let window = Window {
        start: now + opts.warmup,
        end: now + opts.warmup + counted,
    };
    let cpu = async {
        let tree = tree?;
        tokio::time::sleep_until(window.start).await;
        let before = tree.cpu();
        tokio::time::sleep_until(window.end).await;
        Some(tree.cpu() - before)
    };
    let (tally, cpu) = tokio::join!(load::closed_loop(targets, connections, window), cpu);
    let mut cell = Cell {
        proxy,
        workers,
        connections,
        tally,
        seconds: counted.as_secs_f64(),
        cpu,
        peak_rss: tree.map(Tree::peak_rss),
        turns: Vec::new(),
    };
    cell.turns.push(cell.rate());
    cell
}

/// The program's own version line.
async fn version(kind: Kind, program: &std::path::Path) -> String {
    let flag = match kind {
        Kind::Fulcrum => "--version",
        Kind::Nginx | Kind::Haproxy => "-v",
    };
    let out = tokio::process::Command::new(program)
        .arg(flag)
        .output()
        .await;
    let Ok(out) = out else {
        return "unknown".into();
    };
    // nginx prints its version on stderr.
    let text = [out.stdout, out.stderr].concat();
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("unknown")
        .trim()
        .to_string()
}

/// The open-file limit now.
fn file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Raises the open-file limit: the idle measure holds thousands of connections, and the
/// proxies started from here inherit the limit (HAProxy asks for two descriptors per
/// connection it may hold). Past the hard limit only as root; else up to it.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const WANTED: u64 = 65_536;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if hard < WANTED && setrlimit(Resource::RLIMIT_NOFILE, WANTED, WANTED).is_ok() {
            return;
        }
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(ok: u64, latency_ms: u64, seconds: f64, user: f64, rss: u64) -> Cell {
        let mut tally = Tally::empty();
        tally.ok = ok;
        tally.errors = 1;
        for _ in 0..ok {
            tally.latency.record(latency_ms * 1_000_000).unwrap();
        }
        Cell {
            proxy: Some(Kind::Nginx),
            workers: Workers::One,
            connections: 16,
            tally,
            seconds,
            cpu: Some(Cpu {
                user,
                system: 2.0 * user,
            }),
            peak_rss: Some(rss),
            turns: vec![ok as f64 / seconds],
        }
    }

    /// Two turns of a measure add up to one: answers, errors, time and CPU summed, latencies
    /// pooled, the higher peak kept.
    #[test]
    fn turns_add_up() {
        let mut cell = turn(300, 1, 2.0, 0.5, 10);
        cell.absorb(turn(100, 9, 2.0, 0.25, 12));
        assert_eq!(cell.tally.ok, 400);
        assert_eq!(cell.tally.errors, 2);
        assert_eq!(cell.seconds, 4.0);
        assert_eq!(cell.rate(), 100.0);
        assert_eq!(cell.turns, [150.0, 50.0], "each turn's rate, in order");
        let cpu = cell.cpu.unwrap();
        assert_eq!((cpu.user, cpu.system), (0.75, 1.5));
        assert_eq!(cell.peak_rss, Some(12));
        assert_eq!(cell.tally.percentile(50.0).as_millis(), 1);
        assert_eq!(cell.tally.percentile(99.0).as_millis(), 9);
    }
}
