//! The real `fulcrum` binary driven from a test: started on a config file it keeps (so a test
//! can rewrite it and send SIGHUP), its JSON log read event by event from stderr, signalled
//! with nix, and stopped with SIGTERM.

use super::{ConfigFile, PATIENCE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

/// A running fulcrum process.
pub struct Fulcrum {
    child: Child,
    log: Lines<BufReader<ChildStderr>>,
    seen: Vec<Json>,
    config: ConfigFile,
    /// The admin listener's address.
    pub admin: SocketAddr,
}

impl Fulcrum {
    /// Starts `fulcrum run` on `config` with `RUST_LOG` set to `filter`, and waits for it to
    /// say where it listens; the proxy's address.
    pub async fn start(config: &str, filter: &str) -> (Fulcrum, SocketAddr) {
        let file = ConfigFile::new(config);
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&file.0)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut f = Fulcrum {
            child,
            log,
            seen: Vec::new(),
            config: file,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let started = f.until(|e| message(e) == "fulcrum started").await;
        let addr = |k: &str| -> SocketAddr {
            started["fields"][k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} in {started}"))
                .parse()
                .unwrap()
        };
        f.admin = addr("admin");
        (f, addr("proxy"))
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Replaces the config file's text (for a reload).
    pub fn rewrite(&self, config: &str) {
        self.config.write(config);
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("running") as i32;
        kill(Pid::from_raw(pid), signal).unwrap();
    }

    /// The next log event, or None once the process has closed stderr.
    pub async fn next(&mut self) -> Option<Json> {
        let line = tokio::time::timeout(PATIENCE, self.log.next_line())
            .await
            .expect("a log line in time")
            .unwrap()?;
        let event: Json = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        self.seen.push(event.clone());
        Some(event)
    }

    /// Reads events until one satisfies `pred`.
    pub async fn until(&mut self, pred: impl Fn(&Json) -> bool) -> Json {
        loop {
            match self.next().await {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("fulcrum exited; its log: {:#?}", self.seen),
            }
        }
    }

    /// Reads every event to the end and waits for the exit; the events and the exit status.
    pub async fn wait(mut self) -> (Vec<Json>, ExitStatus) {
        while self.next().await.is_some() {}
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        (std::mem::take(&mut self.seen), status)
    }

    /// SIGTERM, then every event to the end; the exit status must be 0.
    pub async fn stop(self) -> Vec<Json> {
        self.signal(Signal::SIGTERM);
        let (seen, status) = self.wait().await;
        assert!(status.success(), "{status}");
        seen
    }
}

/// The message of a log event.
pub fn message(e: &Json) -> &str {
    e["fields"]["message"].as_str().unwrap_or("")
}

/// A config for the binary over `backends` (upstream `web`, round robin, quick probes), with
/// `extra` TOML before the tables.
pub fn binary_config(backends: &[loadtest::Backend], extra: &str) -> String {
    format!(
        "{extra}\n[listen]\naddress = \"127.0.0.1:0\"\ndrain_timeout = \"2s\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[upstreams]]\nname = \"web\"\nalgorithm = \"round_robin\"\n{}\
         [upstreams.health]\ninterval = \"100ms\"\ntimeout = \"200ms\"\n\
         unhealthy_threshold = 2\nbackoff_base = \"50ms\"\nbackoff_max = \"400ms\"\n",
        super::backend_tables(backends, &[])
    )
}
