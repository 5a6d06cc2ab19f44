//! `loadtest`: the command line of the loadtest crate.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use loadtest::report::Report;
use loadtest::scenario::Scenario;
use loadtest::{bench, run, Backend, Fault};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "fulcrum's fault-injecting backend and load tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a fault-injecting backend; switch its fault at run time through --control.
    Backend {
        /// Where to listen, e.g. 127.0.0.1:9001.
        #[arg(long)]
        listen: SocketAddr,
        /// Its name, sent back in the `x-backend` header.
        #[arg(long, default_value = "backend")]
        id: String,
        /// Latency added to every answer, e.g. 5ms.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        latency: Duration,
        /// Share of requests answered with --error-status, in [0, 1].
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Status of error answers.
        #[arg(long, default_value_t = 503)]
        error_status: u16,
        /// Start with this fault instead (`dead`, `hang`, `reset`, `errors 0.5 503`...).
        #[arg(long)]
        fault: Option<Fault>,
        /// A control listener: POST /fault, POST /fault/health, GET /fault, GET /stats.
        #[arg(long)]
        control: Option<SocketAddr>,
        /// Close keep-alive connections idle this long, e.g. 5s (default: keep them).
        #[arg(long, value_parser = humantime::parse_duration)]
        keep_alive: Option<Duration>,
    },
    /// Run a fault-injection scenario against the fulcrum binary and report what clients saw.
    Run {
        /// A scenario file; with --all, a folder of them (default: loadtest/scenarios).
        path: Option<PathBuf>,
        /// Run every scenario of the folder, one after another, and print one markdown table.
        #[arg(long)]
        all: bool,
        /// The fulcrum binary (default: `fulcrum` beside this program).
        #[arg(long)]
        fulcrum: Option<PathBuf>,
        /// The short form of each scenario: a few seconds, the timeline scaled to it.
        #[arg(long)]
        quick: bool,
        /// Also write the report as JSON (with --all: an array of reports).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw each backend's share and the success ratio per second as SVG (with --all: a
        /// folder, one file per scenario).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// With --all: write the table as markdown, with the date and the command.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Run only at this rate (requests per second) instead of each of the scenario's.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
    },
    /// Throughput, latency, CPU and memory of fulcrum beside nginx and HAProxy, in one run.
    Bench(BenchArgs),
    /// What 1,000 slowloris and 1,000 slow-body connections cost normal traffic, and whether
    /// the proxy's files and memory come back after (fulcrum, nginx, HAProxy on defaults).
    SlowClients(SlowArgs),
    /// The bench's backends (started by `loadtest bench`): fixed answers, one thread, until
    /// stdin closes.
    #[command(hide = true)]
    BenchBackends {
        /// How many listeners.
        #[arg(long, default_value_t = 3)]
        count: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    // The bench and its backends each run on one thread, as wrk -t1 and a one-thread backend
    // do; the rest share a multi-thread runtime.
    let runtime = match cli.command {
        Command::Bench { .. } | Command::BenchBackends { .. } | Command::SlowClients { .. } => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let code = match runtime {
        Ok(rt) => rt.block_on(command(cli)),
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn command(cli: Cli) -> i32 {
    tracing_init(if matches!(cli.command, Command::Run { .. }) {
        // The backends' fault switches would interleave with the progress line.
        "warn"
    } else {
        "info"
    });
    match cli.command {
        Command::Backend {
            listen,
            id,
            latency,
            error_rate,
            error_status,
            fault,
            control,
            keep_alive,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                eprintln!("loadtest: --error-rate must be in [0, 1], got {error_rate}");
                std::process::exit(2);
            }
            let fault = fault.unwrap_or(Fault {
                latency,
                error_rate,
                error_status,
                ..Fault::OK
            });
            run_backend(listen, &id, fault, control, keep_alive).await
        }
        Command::Run {
            path,
            all,
            fulcrum,
            quick,
            json,
            plot,
            results,
            rate,
        } => {
            let files = Files {
                json,
                plot,
                results,
            };
            match run_scenarios(path, all, fulcrum, quick, rate, &files).await {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("loadtest: {e}");
                    2
                }
            }
        }
        Command::Bench(args) => match run_bench(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadtest: {e}");
                2
            }
        },
        Command::SlowClients(args) => match run_slow(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadtest: {e}");
                2
            }
        },
        Command::BenchBackends { count } => match bench::backends::bind(count).await {
            Ok(listeners) => {
                let addrs: Vec<SocketAddr> = listeners
                    .iter()
                    .filter_map(|l| l.local_addr().ok())
                    .collect();
                println!("{}", bench::backends::listening_line(&addrs));
                bench::backends::serve(listeners).await;
                0
            }
            Err(e) => {
                eprintln!("loadtest: cannot listen: {e}");
                1
            }
        },
    }
}

/// `loadtest slow-clients`' arguments.
#[derive(clap::Args)]
struct SlowArgs {
    /// Other proxies to measure when installed, comma-separated (`none` for fulcrum alone).
    #[arg(long, default_value = "nginx,haproxy")]
    against: String,
    /// The normal load's connections.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// How long each measure of the normal load counts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Slowloris connections held.
    #[arg(long, default_value_t = 1000)]
    slowloris: usize,
    /// Slow-body connections held.
    #[arg(long, default_value_t = 1000)]
    slow_body: usize,
    /// The fulcrum binary (default: `fulcrum` beside this program).
    #[arg(long)]
    fulcrum: Option<PathBuf>,
    /// Also write the table to this file, with the date and the command.
    #[arg(long)]
    out: Option<PathBuf>,
}

async fn run_slow(a: SlowArgs) -> Result<(), String> {
    let fulcrum = match a.fulcrum {
        Some(f) => f,
        None => default_fulcrum()?,
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut opts = bench::slow::Options::new(fulcrum, exe);
    opts.against = parse_against(&a.against)?;
    opts.connections = a.connections as usize;
    opts.duration = a.duration;
    opts.slowloris = a.slowloris;
    opts.slow_body = a.slow_body;
    let progress = |step: &str| eprintln!("slow-clients: {step}");
    let reports = bench::slow::run(&opts, &progress).await?;
    let text = bench::slow::render(&reports, &opts);
    println!("{text}");
    write_out(a.out.as_deref(), &text)
}

/// The proxies of an `--against` list.
fn parse_against(list: &str) -> Result<Vec<bench::proxies::Kind>, String> {
    let mut against = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "none" {
            continue;
        }
        against
            .push(bench::proxies::Kind::parse(name).ok_or_else(|| {
                format!("--against: {name:?} is not one of nginx, haproxy, none")
            })?);
    }
    Ok(against)
}

/// Writes `text` to `out`, if given, after the date and the command that made it.
fn write_out(out: Option<&std::path::Path>, text: &str) -> Result<(), String> {
    let Some(out) = out else {
        return Ok(());
    };
    let command: Vec<String> = std::env::args().collect();
    let doc = format!(
        "Produced on {date} by:\n\n```\n{command}\n```\n\n{text}",
        date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        command = command.join(" ")
    );
    std::fs::write(out, doc).map_err(|e| format!("{}: {e}", out.display()))
}

/// `loadtest bench`'s arguments.
#[derive(clap::Args)]
struct BenchArgs {
    /// Other proxies to measure when installed, comma-separated (`none` for fulcrum alone).
    #[arg(long, default_value = "nginx,haproxy")]
    against: String,
    /// Concurrent connections of each measure, comma-separated.
    #[arg(long, default_value = "1,16,128", value_delimiter = ',')]
    connections: Vec<usize>,
    /// How long each measure counts, over all its turns.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4s")]
    duration: Duration,
    /// Load before each turn starts counting.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    warmup: Duration,
    /// The turns each measure is split into, the targets taking turns, so that a drift in
    /// the machine's speed falls on all of them alike.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Idle keep-alive connections for the memory measure (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Every step, briefly: a smoke run of a few seconds.
    #[arg(long)]
    quick: bool,
    /// Also count each proxy's instructions per request under valgrind's callgrind (one worker
    /// each, at 16 connections), and the atomic operations among them (with objdump): steady
    /// from run to run where the timed measures are not.
    /// Needs valgrind (`sudo apt-get install -y valgrind`); adds 10-20 s a proxy.
    #[arg(long)]
    instructions: bool,
    /// The fulcrum binary (default: `fulcrum` beside this program).
    #[arg(long)]
    fulcrum: Option<PathBuf>,
    /// Also write the tables to this file, with the date and the command.
    #[arg(long)]
    out: Option<PathBuf>,
}

async fn run_bench(a: BenchArgs) -> Result<(), String> {
    let fulcrum = match a.fulcrum {
        Some(f) => f,
        None => default_fulcrum()?,
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let against = parse_against(&a.against)?;
    if a.connections.is_empty() || a.connections.contains(&0) {
        return Err("--connections: give one or more counts above 0".into());
    }
    if a.duration.is_zero() {
        return Err("--duration must be above 0".into());
    }
    if a.rounds == 0 {
        return Err("--rounds must be 1 or more".into());
    }
    let mut opts = bench::Options::new(fulcrum, exe);
    opts.against = against;
    opts.connections = a.connections;
    opts.duration = a.duration;
    opts.warmup = a.warmup;
    opts.rounds = a.rounds;
    opts.idle = a.idle;
    opts.instructions = a.instructions;
    if a.quick {
        opts = opts.quick();
    }
    let started = std::time::Instant::now();
    let progress = |step: &str| eprintln!("bench: {step}");
    let results = bench::run(&opts, &progress).await?;
    let text = bench::table::render(&results);
    println!("{text}");
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    write_out(a.out.as_deref(), &text)
}

async fn run_backend(
    listen: SocketAddr,
    id: &str,
    fault: Fault,
    control: Option<SocketAddr>,
    keep_alive: Option<Duration>,
) -> i32 {
    let backend = match Backend::start_with(id, listen, fault).await {
        Ok(b) => {
            b.set_keep_alive_timeout(keep_alive);
            Arc::new(b)
        }
        Err(e) => {
            eprintln!("loadtest: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    println!(
        "backend {id} listening on http://{} ({fault})",
        backend.addr()
    );
    if let Some(addr) = control {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                println!(
                    "control on http://{}  (POST /fault, POST /fault/health, GET /stats)",
                    l.local_addr().map_or(addr, |a| a)
                );
                tokio::spawn(loadtest::control::serve(l, backend.clone()));
            }
            Err(e) => {
                eprintln!("loadtest: cannot listen on {addr} (control): {e}");
                return 1;
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    0
}

/// Where a run's outputs go.
struct Files {
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    results: Option<PathBuf>,
}

/// The scenarios' folder: `loadtest/scenarios` from here, or where this crate was built.
fn default_folder() -> PathBuf {
    let here = PathBuf::from("loadtest/scenarios");
    if here.is_dir() {
        here
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
    }
}

/// `fulcrum` beside this program, as cargo builds both into one folder.
fn default_fulcrum() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = exe.with_file_name(format!("fulcrum{}", std::env::consts::EXE_SUFFIX));
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(format!(
            "no fulcrum binary at {}: build it (cargo build --release) or pass --fulcrum PATH",
            beside.display()
        ))
    }
}

/// Runs one scenario or all; Ok(true) when every expectation held.
async fn run_scenarios(
    path: Option<PathBuf>,
    all: bool,
    fulcrum: Option<PathBuf>,
    quick: bool,
    rate: Option<u32>,
    files: &Files,
) -> Result<bool, String> {
    let fulcrum = match fulcrum {
        Some(f) => f,
        None => default_fulcrum()?,
    };
    let scenario_files = if all {
        let folder = path.unwrap_or_else(default_folder);
        let mut found: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map_err(|e| format!("{}: {e}", folder.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(format!("no scenario files in {}", folder.display()));
        }
        found
    } else {
        vec![path.ok_or("a scenario file, or --all")?]
    };
    // Every file is checked before anything runs; then each runs at each of its rates.
    let mut scenarios = Vec::new();
    for p in &scenario_files {
        let mut s = Scenario::load(p).map_err(|e| e.to_string())?;
        if let Some(r) = rate {
            s.load.rate = vec![r];
        }
        scenarios.extend(s.runs());
    }
    let opts = run::Options {
        fulcrum,
        progress: true,
    };
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for s in &scenarios {
        let s = if quick { s.quick() } else { s.clone() };
        let outcome = match run::run(&s, quick, &opts).await {
            Ok(o) => o,
            // One scenario that cannot run does not stop the others.
            Err(e) if all => {
                eprintln!("loadtest: {}: {e}", s.name);
                errors.push((s.name.clone(), e.to_string()));
                continue;
            }
            Err(e) => return Err(format!("{}: {e}", s.name)),
        };
        let report = Report::new(&outcome);
        println!("{}", report.text());
        if let Some(plot) = &files.plot {
            let out = if all {
                std::fs::create_dir_all(plot).map_err(|e| format!("{}: {e}", plot.display()))?;
                plot.join(format!("{}.svg", s.name))
            } else {
                plot.clone()
            };
            std::fs::write(&out, loadtest::plot::svg(&report))
                .map_err(|e| format!("{}: {e}", out.display()))?;
        }
        reports.push(report);
    }
    if all {
        let mut table = markdown_table(&reports);
        for (name, e) in &errors {
            table.push_str(&format!(
                "\n| {name} | - | - | - | - | - | - | - | - | - | - | - | - | ERROR: {} |",
                e.replace('|', "/")
            ));
        }
        println!("{table}");
        if let Some(out) = &files.results {
            let command: Vec<String> = std::env::args().collect();
            let text = format!(
                "# fulcrum fault scenarios: results\n\n\
                 Produced by `loadtest run --all` on {date} with:\n\n\
                 ```\n{command}\n```\n\n\
                 fulcrum on its default config but where a scenario is about a key (its file \
                 says so). Open-loop load (latency from each request's scheduled send time) at \
                 each of a scenario's rates (`name@rate`), 127.0.0.1 only, 3 in-process \
                 backends, fulcrum as a child process. Shares are of fulcrum's tries; detect is \
                 until the faulty backend gets under 1% of tries in every later second; recover \
                 is from the last recovery to the recovered backend's first try (for all \
                 backends: the first 2xx), every back to the last recovered backend's first \
                 try, share back to the recovered backends' share over a sliding second \
                 reaching the scenario's `share_back`; failed after counts the requests sent \
                 after the recovery that got no 2xx. Each scenario's file says what it expects \
                 and why; `loadtest run FILE` prints its whole report.\n\n{table}\n",
                date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                command = command.join(" ")
            );
            std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
        }
    }
    if let Some(out) = &files.json {
        let text = match reports.first() {
            Some(one) if !all => serde_json::to_string_pretty(one),
            _ => serde_json::to_string_pretty(&reports),
        }
        .map_err(|e| e.to_string())?;
        std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(errors.is_empty() && reports.iter().all(|r| r.pass))
}

fn markdown_table(reports: &[Report]) -> String {
    let mut t = String::from(Report::markdown_header());
    for r in reports {
        t.push('\n');
        t.push_str(&r.markdown_row());
    }
    t
}

/// Logs to stderr at `level` unless `RUST_LOG` says otherwise.
fn tracing_init(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
