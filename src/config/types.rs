//! The serde types of the config file, one struct per table, each field with its default.
//! Field names are the contract of config.md; unknown keys are refused everywhere.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The whole config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[listen]`: the client-facing listener.
    #[serde(default)]
    pub listen: Listen,
    /// `[admin]`: the admin listener.
    #[serde(default)]
    pub admin: Admin,
    /// `[runtime]`: the tokio runtime.
    #[serde(default)]
    pub runtime: Runtime,
    /// `[log]`: what is logged.
    #[serde(default)]
    pub log: Log,
    /// `[[upstreams]]`: at least one is required.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
}

/// `[listen]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// The proxy's listener. Default `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// How long in-flight requests may run on after SIGTERM/SIGINT. Default `30s`.
    #[serde(with = "duration_str")]
    pub drain_timeout: Duration,
    /// A client must send a request's whole header within this (slowloris). Default `10s`.
    #[serde(with = "duration_str")]
    pub header_read_timeout: Duration,
    /// A client keep-alive connection with no request for this long is closed. Default `60s`.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// A client sending a request body may fall silent this long at most (nginx's
    /// `client_body_timeout`); past it, `408` and the connection is closed. The whole body must
    /// also arrive within the upstream's `timeouts.request`. Default `10s`.
    #[serde(with = "duration_str")]
    pub body_read_timeout: Duration,
    /// A client that reads none of its response for this long is cut off (nginx's
    /// `send_timeout`), so that it cannot hold a backend's body and its connection. Default
    /// `30s`.
    #[serde(with = "duration_str")]
    pub send_timeout: Duration,
    /// Peers whose `Forwarded` and `X-Real-IP` headers are believed and passed on (CIDRs, e.g.
    /// `["10.0.0.0/8"]`); from any other peer they are removed. Default none.
    pub trusted_proxies: Vec<IpNet>,
    /// Client connections served at once; past it, new connections wait in the kernel's
    /// accept queue (as HAProxy's `maxconn` does) until one closes. Default 10000.
    pub max_connections: usize,
    /// A request's start line and headers, in bytes; larger gets `431`. Default 65536 (64 KiB).
    pub max_header_bytes: usize,
    /// A request's URI (path and query), in bytes; longer gets `414`. Default 8192 (8 KiB).
    pub max_uri_bytes: usize,
    /// A request's body, in bytes; larger gets `413` (nginx's `client_max_body_size`).
    /// 0: no limit. Default 0.
    pub max_body_bytes: u64,
    /// Add `Via: 1.1 fulcrum` to requests and responses (RFC 9110 §7.6.3). Default true.
    pub via: bool,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 0,
            via: true,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// The admin listener (/metrics, /status, the admin API). Default `127.0.0.1:9901`.
    pub address: SocketAddr,
    /// When set, every admin request must carry `Authorization: Bearer <token>`. Required when
    /// `address` is not a loopback address. Default none.
    pub token: Option<String>,
    /// Host names the admin listener answers to besides IP addresses and `localhost` (a
    /// request naming any other is refused, so that a web page cannot reach it through DNS
    /// rebinding). Default none.
    pub hosts: Vec<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: None,
            hosts: Vec::new(),
        }
    }
}

/// `[runtime]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Worker threads; 0 = one per core. Default 0. Each runs its own tokio current-thread
    /// runtime, as each nginx worker is one process: client connections are spread over them
    /// (each to the one serving the fewest), and a connection's requests, picks and backend
    /// connections stay on its worker. The actors and the admin listener run on the first.
    pub worker_threads: usize,
}

/// `[log]` (fulcrum's addition; the format is `--log-format`, the filter `RUST_LOG`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// One `info` event per request on the proxy listener, target `fulcrum::access`.
    /// Default true.
    pub access: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log { access: true }
    }
}

/// The balancing algorithm of an upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Power of two choices on cost = EWMA × (in-flight + 1) / weight. The default.
    #[default]
    Adaptive,
    /// Each backend in turn, weights ignored.
    RoundRobin,
    /// Smooth weighted round robin (nginx).
    WeightedRoundRobin,
    /// Fewest requests in flight relative to weight.
    LeastConnections,
    /// Weighted random.
    Random,
    /// Power of two choices on peak EWMA × (in-flight + 1) (linkerd).
    P2cEwma,
    /// A hash ring keyed by the client IP.
    ConsistentHash,
}

impl Algorithm {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Adaptive => "adaptive",
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::Random => "random",
            Algorithm::P2cEwma => "p2c_ewma",
            Algorithm::ConsistentHash => "consistent_hash",
        }
    }
}

/// `[[upstreams]]`: a named pool of backends and how requests reach it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Unique name; the `upstream` label in metrics. Required.
    pub name: String,
    /// Host header patterns: `*`, an exact name, or `*.example.com`. Default `["*"]`.
    #[serde(default = "default_hosts")]
    pub hosts: Vec<String>,
    /// Path prefix; the longest matching prefix wins among upstreams whose hosts match.
    /// Default `/`.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Balancing algorithm. Default `adaptive`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Send the client's `Host` to the backends (nginx's `proxy_set_header Host $host`); false
    /// sends the backend's own `host:port`. Default true.
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    /// `Upgrade` protocols passed to the backends (compared without case or version); a
    /// request asking for any other is served as a plain request, its `Upgrade` dropped.
    /// Default `["websocket"]`.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
    /// `[[upstreams.backends]]`: at least one is required.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// `[upstreams.health]`: active probes.
    #[serde(default)]
    pub health: Health,
    /// `[upstreams.circuit_breaker]`: passive ejection from request outcomes.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// `[upstreams.adaptive]`: how outcomes become dynamic weights.
    #[serde(default)]
    pub adaptive: Adaptive,
    /// `[upstreams.retry]`
    #[serde(default)]
    pub retry: Retry,
    /// `[upstreams.timeouts]`
    #[serde(default)]
    pub timeouts: Timeouts,
}

fn default_hosts() -> Vec<String> {
    vec!["*".to_string()]
}

fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_string()]
}

fn default_true() -> bool {
    true
}

fn default_path_prefix() -> String {
    "/".to_string()
}

/// `[[upstreams.backends]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `host:port` (an optional `http://` is accepted). Required.
    pub address: String,
    /// Static weight, > 0. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How an active probe checks a backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `GET path`; a 2xx passes. The default.
    #[default]
    Http,
    /// Connecting is enough.
    Tcp,
}

/// `[upstreams.health]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// `http` or `tcp`. Default `http`.
    pub kind: ProbeKind,
    /// Probe path for `http`. Default `/health`.
    pub path: String,
    /// Steady probe interval for backends in rotation. Default `2s`.
    #[serde(with = "duration_str")]
    pub interval: Duration,
    /// Time allowed for one probe. Default `1s`.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Consecutive passes to return a backend to rotation; after the first, each successful
    /// trial request counts as a pass too. Default 2.
    pub healthy_threshold: u32,
    /// Consecutive failures to take a backend out. Default 3.
    pub unhealthy_threshold: u32,
    /// Probe interval of an ejected backend is `backoff_base * 2^n`. Default `500ms`.
    #[serde(with = "duration_str")]
    pub backoff_base: Duration,
    /// Cap of that interval (±20% jitter is applied, never above the cap): a recovered
    /// backend is found within it. Default `750ms`.
    #[serde(with = "duration_str")]
    pub backoff_max: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            kind: ProbeKind::Http,
            path: "/health".to_string(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_millis(750),
        }
    }
}

/// `[upstreams.circuit_breaker]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    /// Trip after this many failures in a row. Default 5.
    pub consecutive_failures: u32,
    /// ...or after this many connections in a row that could not be made (refused, or timed
    /// out): nothing takes connections there. Default 1, as nginx's `max_fails = 1`.
    pub consecutive_connect_failures: u32,
    /// ...or when this share of requests in the window failed, in (0, 1]. Default 0.5.
    pub failure_rate: f64,
    /// ...with at least this many requests seen in the window. Default 20.
    pub minimum_requests: u32,
    /// The sliding window of the failure rate. Default `10s`.
    #[serde(with = "duration_str")]
    pub window: Duration,
    /// First open period; each consecutive trip doubles it. Default `1s`.
    #[serde(with = "duration_str")]
    pub open_base: Duration,
    /// Cap of the open period. Default `60s`.
    #[serde(with = "duration_str")]
    pub open_max: Duration,
    /// Trial requests while half-open; all must pass to close. Default 3.
    pub half_open_requests: u32,
    /// Never eject more than this share (percent) of an upstream's backends. Default 50.
    pub max_ejection_percent: u32,
    /// Requests in flight to one backend at most (Envoy's `max_requests`, HAProxy's
    /// `maxconn`, per backend); when every backend is at it, a request gets an immediate 503
    /// rather than a place in a growing queue. 0: no limit. Default 0.
    pub max_inflight: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            consecutive_failures: 5,
            consecutive_connect_failures: 1,
            failure_rate: 0.5,
            minimum_requests: 20,
            window: Duration::from_secs(10),
            open_base: Duration::from_secs(1),
            open_max: Duration::from_secs(60),
            half_open_requests: 3,
            max_ejection_percent: 50,
            max_inflight: 0,
        }
    }
}

/// `[upstreams.adaptive]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Adaptive {
    /// Time constant of the peak EWMA of latency. Default `10s`.
    #[serde(with = "duration_str")]
    pub ewma_decay: Duration,
    /// A returning backend's weight ramps from 10% to 100% over this. Default `1s`.
    #[serde(with = "duration_str")]
    pub slow_start: Duration,
    /// A live backend never falls below this share of its static weight, in (0, 1].
    /// Default 0.05.
    pub min_weight_ratio: f64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            ewma_decay: Duration::from_secs(10),
            slow_start: Duration::from_secs(1),
            min_weight_ratio: 0.05,
        }
    }
}

/// `[upstreams.retry]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Retries after the first try, each on a backend not yet tried. Default 2.
    pub attempts: u32,
    /// Retries may add at most this share of the upstream's request rate. Default 0.2.
    pub budget_ratio: f64,
    /// ...but always allow this many per second. Default 10.
    pub budget_min_per_sec: u32,
    /// Failure kinds that are retried: `connect-failure`, `reset`, `timeout`, or a 5xx status.
    /// Default `["connect-failure", "reset", "timeout", "502", "503", "504"]`.
    pub on: Vec<String>,
    /// Request bodies up to this many bytes are kept so the request can be retried; a larger
    /// body turns retries off for that request. Default 65536 (64 KiB).
    pub replay_body_limit: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 2,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            on: ["connect-failure", "reset", "timeout", "502", "503", "504"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            replay_body_limit: 64 * 1024,
        }
    }
}

/// `[upstreams.timeouts]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to a backend. Default `1s`.
    #[serde(with = "duration_str")]
    pub connect: Duration,
    /// From request sent to response headers. Default `15s`.
    #[serde(with = "duration_str")]
    pub response: Duration,
    /// How long a pooled upstream connection may stay idle; keep it below the backends' own
    /// keep-alive timeout. Default `60s`.
    #[serde(with = "duration_str")]
    pub idle: Duration,
    /// The whole request, retries included, to response headers; the client's body must
    /// arrive within it too. Default `30s`.
    #[serde(with = "duration_str")]
    pub request: Duration,
    /// A backend may fall silent this long at most in the middle of a response body (nginx's
    /// `proxy_read_timeout`); past it the client's connection is cut and the backend charged
    /// with a timeout. Default `60s`.
    #[serde(with = "duration_str")]
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(15),
            idle: Duration::from_secs(60),
            request: Duration::from_secs(30),
            read: Duration::from_secs(60),
        }
    }
}

/// The longest duration any key takes: no timeout or period here needs more than a day, and
/// a longer one is a typo that would overflow the clock arithmetic of every request.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Durations as strings (`"250ms"`, `"2s"`, `"1m"`), parsed by humantime, at most
/// [`MAX_DURATION`].
mod duration_str {
    use super::MAX_DURATION;
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration string such as \"250ms\", \"2s\", \"1m\"")
        })?;
        let d = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); use a string such as \"250ms\", \"2s\", \"1m\""
            ))
        })?;
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration {s:?} is longer than the most any key takes, 1 day"
            )));
        }
        Ok(d)
    }
}
