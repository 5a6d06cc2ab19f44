//! Running a scenario: the backends in-process, the real `fulcrum` binary as a child process with
//! the scenario's config, open-loop load on a fixed timetable (latency counted from each request's
//! scheduled send time, so a stall is not hidden), the timeline of faults, and a sampler that
//! reads fulcrum's /status every 100 ms (tries per backend, as fulcrum counts them) and its
//! resident memory. fulcrum is stopped by its PID with SIGTERM, as an operator would.

use crate::scenario::Scenario;
use crate::{Backend, Fault};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// How often the sampler reads fulcrum's /status.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// How a run is made.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fulcrum binary.
    pub fulcrum: PathBuf,
    /// Print a progress line on stderr (when it is a terminal).
    pub progress: bool,
}

/// Why a run could not be made (a failed expectation is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A backend could not start.
    #[error("cannot start a backend: {0}")]
    Backend(std::io::Error),
    /// The base config could not be read or merged.
    #[error("fulcrum config: {0}")]
    Config(String),
    /// fulcrum did not start.
    #[error("fulcrum did not start: {0}")]
    Fulcrum(String),
    /// A file could not be written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One request of the load.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Its scheduled send time, from the start of the load.
    pub sent: Duration,
    /// From the scheduled send time to the end of the answer (or of the wait).
    pub latency: Duration,
    /// The answer's status; 0 when there was none.
    pub status: u16,
    /// Why there was no answer: `timeout`, `connect` or `broken`.
    pub error: Option<&'static str>,
    /// The backend that answered (`x-backend: b2` is 2); None for fulcrum's own answers.
    pub backend: Option<u8>,
}

impl Record {
    /// Answered 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One reading of fulcrum's /status.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When, from the start of the load.
    pub t: Duration,
    /// Tries handed to each backend since fulcrum started (b0, b1, ...).
    pub picks: Vec<u64>,
    /// What fulcrum made of each backend (b0, b1, ...); None if /status did not list it.
    pub views: Vec<Option<View>>,
    /// fulcrum's resident memory, KiB (Linux).
    pub rss_kib: Option<u64>,
}

/// fulcrum's view of one backend in a /status reading: what its share follows from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct View {
    /// The dynamic weight.
    pub weight: f64,
    /// The latency estimate, milliseconds.
    pub ewma_ms: f64,
    /// Requests in flight to it.
    pub inflight: u64,
    /// `closed`, `open`, `half_open`, or `down` when its probes fail.
    pub state: String,
}

impl View {
    fn parse(b: &serde_json::Value) -> Option<View> {
        let state = if b["probes_passing"].as_bool() == Some(false) {
            "down".to_string()
        } else {
            b["circuit_state"].as_str()?.to_string()
        };
        Some(View {
            weight: b["weight"].as_f64()?,
            ewma_ms: b["ewma_latency_seconds"].as_f64()? * 1000.0,
            inflight: b["inflight"].as_u64()?,
            state,
        })
    }
}

/// A timeline event as applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// When, seconds from the start of the load.
    pub at: f64,
    /// `b2` or `all`.
    pub backend: String,
    /// The fault, in loadtest's text form.
    pub fault: String,
    /// Whether it ends a fault.
    pub recovery: bool,
}

/// Everything a run saw: the report is computed from this.
#[derive(Debug)]
pub struct Run {
    /// The scenario as run (the quick form under `--quick`).
    pub scenario: Scenario,
    /// Whether it was the quick form.
    pub quick: bool,
    /// Every request, in schedule order.
    pub records: Vec<Record>,
    /// fulcrum's /status readings.
    pub samples: Vec<Sample>,
    /// The timeline as applied.
    pub events: Vec<Applied>,
    /// Requests some backend received more than once (by `x-request-id`).
    pub duplicates: u64,
    /// fulcrum's retries by reason, from /metrics at the end.
    pub retries: BTreeMap<String, u64>,
    /// fulcrum's failed tries by kind, from /metrics at the end.
    pub upstream_failures: BTreeMap<String, u64>,
    /// Whether fulcrum exited 0 on SIGTERM.
    pub clean_exit: bool,
    /// fulcrum's log.
    pub log: PathBuf,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs `scenario` (already in its quick form if `quick`).
pub async fn run(scenario: &Scenario, quick: bool, opts: &Options) -> Result<Run, RunError> {
    let s = scenario;
    let mut backends = Vec::with_capacity(s.backends.count);
    let base = Fault::latency(s.backends.latency);
    for i in 0..s.backends.count {
        let b = Backend::start_with(
            &format!("b{i}"),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            base,
        )
        .await
        .map_err(RunError::Backend)?;
        b.set_capacity(s.backends.capacity);
        b.keep_request_ids();
        backends.push(Arc::new(b));
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let workdir = std::env::temp_dir().join(format!("loadtest-{}-{}", std::process::id(), s.name));
    std::fs::create_dir_all(&workdir)?;
    let config_path = workdir.join("fulcrum.toml");
    std::fs::write(&config_path, fulcrum_config(s, &addrs)?)?;
    let log = workdir.join("fulcrum.log");
    let fulcrum = Fulcrum::start(&opts.fulcrum, &config_path, &log).await?;
    let admin_client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let ready = fetch(&admin_client, fulcrum.admin, "/status").await;
    if ready.is_none() {
        return Err(RunError::Fulcrum(format!(
            "its admin listener does not answer; see {}",
            log.display()
        )));
    }

    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = tokio::spawn(sample(
        admin_client.clone(),
        fulcrum.admin,
        fulcrum.pid,
        addrs.clone(),
        start,
        stop_rx,
    ));
    let timeline = tokio::spawn(apply_timeline(s.clone(), backends.clone(), start));
    let records = drive(s, fulcrum.proxy, start, opts.progress).await;
    let _ = stop_tx.send(true);
    let samples = sampler.await.unwrap_or_default();
    let events = timeline.await.unwrap_or_default();
    let metrics = fetch(&admin_client, fulcrum.admin, "/metrics")
        .await
        .unwrap_or_default();
    let clean_exit = fulcrum.stop().await;

    let mut ids: std::collections::HashMap<String, u32> = Default::default();
    for b in backends.iter() {
        for (id, n) in b.request_ids() {
            *ids.entry(id).or_insert(0) += n;
        }
    }
    let duplicates = ids
        .iter()
        .filter(|(id, n)| !id.is_empty() && **n > 1)
        .count() as u64;
    Ok(Run {
        scenario: s.clone(),
        quick,
        records,
        samples,
        events,
        duplicates,
        retries: sum_by_label(&metrics, "fulcrum_retries_total", "reason"),
        upstream_failures: sum_by_label(&metrics, "fulcrum_upstream_failures_total", "kind"),
        clean_exit,
        log,
    })
}

/// The fulcrum config of a scenario: its base file (or nothing), the listeners on loopback
/// ephemeral ports, the access log off unless the base says otherwise, the first upstream merged
/// with `fulcrum.upstream` and given the backends.
pub fn fulcrum_config(s: &Scenario, backends: &[SocketAddr]) -> Result<String, RunError> {
    let mut root = match &s.fulcrum.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| RunError::Config(format!("{}: {e}", p.display())))?;
            text.parse::<toml::Table>()
                .map_err(|e| RunError::Config(format!("{}: {e}", p.display())))?
        }
        None => toml::Table::new(),
    };
    let table = |root: &mut toml::Table, key: &str| -> Result<toml::Table, RunError> {
        match root.remove(key) {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(t)) => Ok(t),
            Some(_) => Err(RunError::Config(format!("{key} is not a table"))),
        }
    };
    for key in ["listen", "admin"] {
        let mut t = table(&mut root, key)?;
        t.insert("address".into(), "127.0.0.1:0".into());
        root.insert(key.into(), t.into());
    }
    let mut log = table(&mut root, "log")?;
    log.entry("access").or_insert(false.into());
    root.insert("log".into(), log.into());
    if !s.fulcrum.runtime.is_empty() {
        let mut runtime = table(&mut root, "runtime")?;
        merge(&mut runtime, &s.fulcrum.runtime);
        root.insert("runtime".into(), runtime.into());
    }
    let mut upstream = match root.remove("upstreams") {
        Some(toml::Value::Array(a)) => match a.into_iter().next() {
            Some(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        },
        _ => toml::Table::new(),
    };
    upstream.entry("name").or_insert("web".into());
    merge(&mut upstream, &s.fulcrum.upstream);
    let tables: Vec<toml::Value> = backends
        .iter()
        .map(|a| {
            let mut t = toml::Table::new();
            t.insert("address".into(), a.to_string().into());
            t.into()
        })
        .collect();
    upstream.insert("backends".into(), tables.into());
    root.insert("upstreams".into(), vec![toml::Value::from(upstream)].into());
    toml::to_string(&root).map_err(|e| RunError::Config(e.to_string()))
}

/// Merges `from` into `into`, table by table.
fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The fulcrum child process.
pub(crate) struct Fulcrum {
    child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) proxy: SocketAddr,
    pub(crate) admin: SocketAddr,
}

/// The command that runs `program` by `wrapper` (a program and its arguments, `program`'s path
/// appended), or `program` itself when `wrapper` is empty.
pub(crate) fn command_under(
    wrapper: &[std::ffi::OsString],
    program: &Path,
) -> tokio::process::Command {
    match wrapper.split_first() {
        Some((runner, args)) => {
            let mut c = tokio::process::Command::new(runner);
            c.args(args).arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    }
}

impl Fulcrum {
    /// Starts `bin run --config config`, its JSON log going to `log`, and waits for it to say
    /// where it listens.
    pub(crate) async fn start(bin: &Path, config: &Path, log: &Path) -> Result<Fulcrum, RunError> {
        Fulcrum::start_under(&[], bin, config, log).await
    }

    /// As [`Fulcrum::start`], run by `wrapper` (a program and its arguments, fulcrum's command
    /// line appended): the bench counts fulcrum's instructions under valgrind this way. The
    /// wrapper must run fulcrum in its own process, as valgrind does, so that the pid is
    /// fulcrum's.
    pub(crate) async fn start_under(
        wrapper: &[std::ffi::OsString],
        bin: &Path,
        config: &Path,
        log: &Path,
    ) -> Result<Fulcrum, RunError> {
        let mut child = command_under(wrapper, bin)
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RunError::Fulcrum(format!("{}: {e}", bin.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| RunError::Fulcrum("exited at once".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| RunError::Fulcrum("no stderr".into()))?;
        let mut file = std::fs::File::create(log)?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = writeln!(file, "{line}");
                if tx.is_some() {
                    if let Some(addrs) = started(&line) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addrs);
                        }
                    }
                }
            }
        });
        let started = tokio::time::timeout(Duration::from_secs(30), rx).await;
        match started {
            Ok(Ok((proxy, admin))) => Ok(Fulcrum {
                child,
                pid,
                proxy,
                admin,
            }),
            _ => {
                let _ = child.kill().await;
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                Err(RunError::Fulcrum(format!(
                    "no start line in its log ({}): {}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )))
            }
        }
    }

    /// SIGTERM, then waits for the exit; true when it exited 0 in time.
    pub(crate) async fn stop(mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = self.child.kill().await;
                false
            }
        }
    }
}

/// The proxy and admin addresses of fulcrum's "fulcrum started" log line.
fn started(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = &v["fields"];
    if f["message"] != "fulcrum started" {
        return None;
    }
    Some((
        f["proxy"].as_str()?.parse().ok()?,
        f["admin"].as_str()?.parse().ok()?,
    ))
}

/// GET `http://addr{path}`, the body as text; None on any failure.
async fn fetch(client: &HttpClient, addr: SocketAddr, path: &str) -> Option<String> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .ok()?
        .ok()?;
    String::from_utf8(body.to_bytes().to_vec()).ok()
}

/// Sums the samples of counter `name` in Prometheus text by the value of `label`.
fn sum_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let prefix = format!("{name}{{");
    let key = format!("{label}=\"");
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(v) = labels.split(&key).nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let n = value.parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry(v.to_string()).or_insert(0) += n;
    }
    out
}

/// Reads fulcrum's /status every [`SAMPLE_PERIOD`] until `stop`.
async fn sample(
    client: HttpClient,
    admin: SocketAddr,
    pid: u32,
    addrs: Vec<SocketAddr>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        // After a stop too: one last reading, so the end of the run is covered.
        if let Some(s) = read_sample(&client, admin, pid, &addrs, start).await {
            out.push(s);
        }
    }
    out
}

async fn read_sample(
    client: &HttpClient,
    admin: SocketAddr,
    pid: u32,
    addrs: &[SocketAddr],
    start: Instant,
) -> Option<Sample> {
    let body = fetch(client, admin, "/status").await?;
    // Stamped once the answer is in, so a try is never placed before it was made.
    let t = start.elapsed();
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let listed = v["upstreams"][0]["backends"].as_array()?;
    let entries: Vec<Option<&serde_json::Value>> = addrs
        .iter()
        .map(|a| {
            listed
                .iter()
                .find(|b| b["address"].as_str() == Some(&a.to_string()))
        })
        .collect();
    let picks = entries
        .iter()
        .map(|b| b.and_then(|b| b["picks"].as_u64()).unwrap_or(0))
        .collect();
    let views = entries.iter().map(|b| b.and_then(View::parse)).collect();
    Some(Sample {
        t,
        picks,
        views,
        rss_kib: rss_kib(pid),
    })
}

/// The resident memory of process `pid`, KiB (Linux's /proc).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Applies the timeline at its times; returns it as applied.
async fn apply_timeline(s: Scenario, backends: Vec<Arc<Backend>>, start: Instant) -> Vec<Applied> {
    let mut out = Vec::new();
    for e in &s.timeline {
        tokio::time::sleep_until(start + e.at).await;
        let mut fault = e.fault;
        if fault.latency.is_zero() {
            fault.latency = s.backends.latency;
        }
        for (i, b) in backends.iter().enumerate() {
            if e.backend == "all" || e.backend == format!("b{i}") {
                b.set_fault(fault);
            }
        }
        out.push(Applied {
            at: start.elapsed().as_secs_f64(),
            backend: e.backend.clone(),
            fault: e.fault.to_string(),
            recovery: e.is_recovery(),
        });
    }
    out
}

/// Sends the load on its timetable; returns every request in schedule order.
async fn drive(s: &Scenario, proxy: SocketAddr, start: Instant, progress: bool) -> Vec<Record> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let rate = f64::from(s.rate());
    let n = (rate * s.load.duration.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let method = Method::from_bytes(s.load.method.as_bytes()).unwrap_or(Method::GET);
    let body = Bytes::from(vec![b'x'; s.load.body_bytes]);
    let uri = format!("http://{proxy}{}", s.load.path);
    let done = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let progress = progress && std::io::stderr().is_terminal();
    let mut tasks = Vec::with_capacity(n as usize);
    let mut next_progress = Duration::from_secs(1);
    for k in 0..n {
        let at = start + period.mul_f64(k as f64);
        tokio::time::sleep_until(at).await;
        if progress && at - start >= next_progress {
            next_progress += Duration::from_secs(1);
            let (d, o) = (done.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
            eprint!(
                "\r{}: {:>5.1}s of {:.0}s  sent {k}  answered {d}  ok {:.2}%   ",
                s.name,
                (at - start).as_secs_f64(),
                s.load.duration.as_secs_f64(),
                if d == 0 {
                    100.0
                } else {
                    100.0 * o as f64 / d as f64
                }
            );
        }
        let req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("x-request-id", format!("loadtest-{k}"))
            .body(Full::new(body.clone()));
        let (client, timeout, done, ok) =
            (client.clone(), s.load.timeout, done.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let (status, error, backend) = match req {
                Ok(req) => one(&client, req, timeout).await,
                Err(_) => (0, Some("broken"), None),
            };
            done.fetch_add(1, Ordering::Relaxed);
            if (200..300).contains(&status) {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Record {
                sent: at - start,
                latency: at.elapsed(),
                status,
                error,
                backend,
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    if progress {
        eprintln!();
    }
    out
}

/// One request: its status and the backend that answered, or why there is no answer.
async fn one(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> (u16, Option<&'static str>, Option<u8>) {
    let answer =
        tokio::time::timeout(timeout, async {
            let resp = client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    "connect"
                } else {
                    "broken"
                }
            })?;
            let status = resp.status().as_u16();
            let backend = backend_index(resp.headers().get("x-backend"));
            resp.into_body().collect().await.map_err(|_| "broken")?;
            Ok::<(u16, Option<u8>), &'static str>((status, backend))
        })
        .await;
    match answer {
        Ok(Ok((status, backend))) => (status, None, backend),
        Ok(Err(e)) => (0, Some(e), None),
        Err(_) => (0, Some("timeout"), None),
    }
}

/// The index of the backend an `x-backend` header names (`b2` is 2).
fn backend_index(h: Option<&http::HeaderValue>) -> Option<u8> {
    h?.to_str().ok()?.strip_prefix('b')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_merges_the_scenario_into_the_first_upstream() {
        let s: Scenario = toml::from_str(
            "[load]\nrate = 1\nduration = \"1s\"\n\
             [fulcrum.upstream]\nalgorithm = \"round_robin\"\n\
             [fulcrum.upstream.health]\ninterval = \"100ms\"\n",
        )
        .unwrap();
        let addrs = [SocketAddr::from(([127, 0, 0, 1], 9001))];
        let text = fulcrum_config(&s, &addrs).unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["listen"]["address"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(t["log"]["access"].as_bool(), Some(false));
        let up = &t["upstreams"][0];
        assert_eq!(up["name"].as_str(), Some("web"));
        assert_eq!(up["algorithm"].as_str(), Some("round_robin"));
        assert_eq!(up["health"]["interval"].as_str(), Some("100ms"));
        assert_eq!(
            up["backends"][0]["address"].as_str(),
            Some("127.0.0.1:9001")
        );
    }

    #[test]
    fn a_scenario_s_runtime_keys_reach_fulcrum_s_runtime() {
        let s: Scenario = toml::from_str(
            "[load]\nrate = 1\nduration = \"1s\"\n[fulcrum.runtime]\nworker_threads = 1\n",
        )
        .unwrap();
        let text = fulcrum_config(&s, &[SocketAddr::from(([127, 0, 0, 1], 9001))]).unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["runtime"]["worker_threads"].as_integer(), Some(1));
    }

    #[test]
    fn the_answering_backend_is_read_from_x_backend() {
        let h = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert_eq!(backend_index(Some(&h("b2"))), Some(2));
        assert_eq!(backend_index(Some(&h("web-1"))), None);
        assert_eq!(backend_index(None), None);
    }

    #[test]
    fn counters_are_summed_by_label() {
        let text = "fulcrum_retries_total{upstream=\"web\",reason=\"status\"} 3\n\
                    fulcrum_retries_total{upstream=\"api\",reason=\"status\"} 2\n\
                    fulcrum_retries_total{upstream=\"web\",reason=\"reset\"} 0\n";
        let m = sum_by_label(text, "fulcrum_retries_total", "reason");
        assert_eq!(m["status"], 5);
        assert_eq!(m["reset"], 0);
    }
}
