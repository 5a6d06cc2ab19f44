//! `loadtest`: the command line of the loadtest crate.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use loadtest::{Backend, Fault};
use std::net::SocketAddr;
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
}

#[tokio::main]
async fn main() {
    tracing_init();
    let cli = Cli::parse();
    let code = match cli.command {
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
    };
    std::process::exit(code);
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

/// Logs to stderr: fault switches at info; `RUST_LOG` filters.
fn tracing_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
