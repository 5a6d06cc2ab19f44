//! The command line (cli.md): `run` (the default), `check`, `demo`. Exit codes: 0 clean
//! shutdown, 1 bad config or a listener that cannot bind, 2 bad command line.

use crate::config::Config;
use crate::telemetry::{self, LogFormat};
use crate::workers::Workers;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The default config path.
pub const DEFAULT_CONFIG: &str = "config/fulcrum.toml";

#[derive(Parser)]
#[command(
    name = "fulcrum",
    version,
    about = "An HTTP load balancer that adapts to sick backends fast"
)]
struct Cli {
    /// Log format; default: pretty on a terminal, json otherwise. RUST_LOG filters.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Config file for `run` when no subcommand is given.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer (the default).
    Run {
        /// The config file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file without starting anything.
    Check {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run on an embedded config with three built-in backends (fast, slow, flaky).
    Demo {
        /// The proxy's listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Run { config }) => run(&config, cli.log_format),
        None => run(&cli.config, cli.log_format),
        Some(Command::Demo { listen, admin }) => {
            if let Err(e) = telemetry::init(cli.log_format) {
                return fail(&e);
            }
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            match rt.block_on(crate::demo::run(listen, admin)) {
                Ok(()) => 0,
                Err(e) => fail(&e.to_string()),
            }
        }
    }
}

fn fail(reason: &str) -> i32 {
    eprintln!("fulcrum: {reason}");
    1
}

fn check(path: &Path) -> i32 {
    match Config::load(path) {
        Ok(config) => {
            println!("{}: {}", path.display(), config.summary());
            0
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            1
        }
    }
}

fn run(path: &Path, log_format: Option<LogFormat>) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            return 1;
        }
    };
    if let Err(e) = telemetry::init(log_format) {
        return fail(&e);
    }
    // Each worker is one thread with tokio's current-thread scheduler, as each nginx worker is
    // one process: a wake-up never crosses threads (see `workers`).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let workers = match rt.block_on(async { Workers::start(config.runtime.worker_threads) }) {
        Ok(w) => w,
        Err(e) => return fail(&format!("cannot start the worker threads: {e}")),
    };
    match rt.block_on(crate::server::run(
        &config,
        Some(path.to_path_buf()),
        &workers,
    )) {
        Ok(()) => 0,
        Err(e) => fail(&e.to_string()),
    }
}
