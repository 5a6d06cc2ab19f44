//! A scenario file (`loadtest/scenarios/*.toml`): the backends, the fulcrum config, the load, a
//! timeline of faults and the expectations a run is judged by. Loading validates everything up
//! front and names the key of any mistake, as fulcrum's own config does.
//!
//! ```toml
//! description = "one backend dies"
//! [backends]
//! count = 3
//! latency = "2ms"
//! [fulcrum.upstream]            # merged into fulcrum's first upstream
//! algorithm = "adaptive"
//! [fulcrum.upstream.health]
//! interval = "500ms"
//! [load]
//! rate = [200, 1500]            # requests per second, on a fixed timetable; one run per rate
//! duration = "20s"
//! quick_duration = "6s"         # --quick: the timeline is scaled to this
//! [[timeline]]
//! at = "5s"
//! backend = "b2"                # or "all"
//! fault = "dead"                # loadtest's fault text: ok, dead, hang, reset, latency 300ms, errors 0.5 503
//! [expect]
//! min_success = 0.999
//! max_detect = "1s"
//! ```

use crate::fault::{Fault, Mode};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name; the file's stem when loaded from a file.
    #[serde(default)]
    pub name: String,
    /// One line saying what it shows.
    #[serde(default)]
    pub description: String,
    /// `[backends]`.
    #[serde(default)]
    pub backends: Backends,
    /// `[fulcrum]`.
    #[serde(default)]
    pub fulcrum: FulcrumSetup,
    /// `[load]`.
    pub load: Load,
    /// `[[timeline]]`: fault changes, in time order.
    #[serde(default)]
    pub timeline: Vec<Event>,
    /// `[expect]`.
    #[serde(default)]
    pub expect: Expect,
}

/// `[backends]`: in-process loadtest backends named b0, b1, ...
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backends {
    /// How many. Default 3.
    pub count: usize,
    /// Base latency of every answer. Default `1ms`.
    #[serde(deserialize_with = "duration")]
    pub latency: Duration,
    /// Requests each serves at once (the rest queue), as a server's worker pool. Default: no
    /// limit.
    pub capacity: Option<u32>,
}

impl Default for Backends {
    fn default() -> Self {
        Backends {
            count: 3,
            latency: Duration::from_millis(1),
            capacity: None,
        }
    }
}

/// `[fulcrum]`: the config fulcrum runs with. The runner sets the listeners (loopback, ephemeral
/// ports), the backends, and `log.access = false` unless the base config says otherwise.
/// Scenarios run fulcrum on its defaults: a scenario sets a key only when it is about that key,
/// and its description says so.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FulcrumSetup {
    /// A fulcrum config file to start from, relative to the scenario file. Default: fulcrum's
    /// defaults.
    pub config: Option<PathBuf>,
    /// Keys merged into fulcrum's `[runtime]` (`worker_threads`).
    pub runtime: toml::Table,
    /// Keys merged into the first upstream (tables merge key by key).
    pub upstream: toml::Table,
}

/// `[load]`: open-loop load, one request per tick of a fixed timetable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Requests per second: one rate, or several (`[200, 1500]`), each a run of its own with the
    /// same timeline and expectations ([`Scenario::runs`]).
    #[serde(deserialize_with = "rates")]
    pub rate: Vec<u32>,
    /// How long.
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    /// How long with `--quick`; the timeline is scaled by `quick_duration / duration`.
    /// Default: the smaller of `duration` and 6 s.
    #[serde(default, deserialize_with = "opt_duration")]
    pub quick_duration: Option<Duration>,
    /// Method. Default GET.
    #[serde(default = "get")]
    pub method: String,
    /// Path. Default `/`.
    #[serde(default = "root")]
    pub path: String,
    /// Request body size in bytes. Default 0.
    #[serde(default)]
    pub body_bytes: usize,
    /// A request with no whole answer after this counts as a timeout. Default `10s`.
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn get() -> String {
    "GET".to_string()
}

fn root() -> String {
    "/".to_string()
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// One fault change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When, from the start of the load.
    #[serde(deserialize_with = "duration")]
    pub at: Duration,
    /// A backend's name (`b0` ...) or `all`.
    pub backend: String,
    /// The fault, as loadtest's text form: `ok`, `dead`, `hang`, `reset`, `latency 300ms`,
    /// `errors 0.5 503`. A fault with no latency keeps the backends' base latency.
    #[serde(deserialize_with = "fault")]
    pub fault: Fault,
}

impl Event {
    /// Whether this event ends a fault: `ok`, with no latency or errors of its own.
    pub fn is_recovery(&self) -> bool {
        self.fault.mode == Mode::Normal
            && self.fault.error_rate == 0.0
            && self.fault.latency.is_zero()
    }
}

/// `[expect]`: what a run must show. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// The least share of requests answered 2xx.
    pub min_success: Option<f64>,
    /// The backend whose fault is judged. Default: the first faulted in the timeline.
    pub faulty: Option<String>,
    /// The most share of tries the faulty backend may get, from `settle` after its fault began
    /// to the fault's end.
    pub max_share: Option<f64>,
    /// How long the balancer has to adapt before `max_share` is judged. Default `3s`.
    #[serde(deserialize_with = "duration")]
    pub settle: Duration,
    /// Until when `max_share` is judged: `fault_end` (the faulty backend's next event; the
    /// default) or `run_end` (a flapping backend's many faults as one).
    pub share_until: ShareUntil,
    /// The longest time from the fault to the faulty backend getting under 1% of tries.
    #[serde(deserialize_with = "opt_duration")]
    pub max_detect: Option<Duration>,
    /// The longest time from the last recovery event to the recovered backend's first try
    /// (for `all`: to the first 2xx answer).
    #[serde(deserialize_with = "opt_duration")]
    pub max_recover: Option<Duration>,
    /// The longest time from the last recovery event until every backend it brought back has
    /// had a try again (after `all`: the last of them).
    #[serde(deserialize_with = "opt_duration")]
    pub max_every_back: Option<Duration>,
    /// The most requests that may fail among those sent after the last recovery event, counted
    /// in time of load (failures ÷ rate): `"330ms"` is 500 requests at 1,500/s and 66 at 200/s,
    /// so one bound holds at every rate.
    #[serde(deserialize_with = "opt_duration")]
    pub max_failed_after_recover: Option<Duration>,
    /// A share of tries the recovered backend must get back (after `all`: each of them), over a
    /// sliding one-second window, within `max_share_back` of the last recovery event.
    pub share_back: Option<f64>,
    /// How long after the last recovery event `share_back` must be reached.
    #[serde(deserialize_with = "opt_duration")]
    pub max_share_back: Option<Duration>,
    /// The least share of tries the recovered (or faulty) backend gets over the run's last
    /// `final_window`: its fair share back.
    pub min_final_share: Option<f64>,
    /// The window of `min_final_share`. Default `2s`.
    #[serde(deserialize_with = "duration")]
    pub final_window: Duration,
    /// The highest p99 latency of all requests.
    #[serde(deserialize_with = "opt_duration")]
    pub max_p99: Option<Duration>,
    /// The most the p99 latency of all requests may exceed the p99 of the requests the other
    /// backends answered: what the faulty backend adds to the tail.
    #[serde(deserialize_with = "opt_duration")]
    pub max_p99_excess: Option<Duration>,
    /// The least share of tries every bystander (a backend the timeline never faults) gets in
    /// every whole second of the run: no healthy backend is starved while another is sick.
    pub min_bystander_share: Option<f64>,
    /// The highest p99 latency of the requests that failed: failures must be fast.
    #[serde(deserialize_with = "opt_duration")]
    pub max_failure_p99: Option<Duration>,
    /// The most requests any backend received twice (by `x-request-id`).
    pub max_duplicates: Option<u64>,
    /// The most resident memory fulcrum may reach, MiB.
    pub max_rss_mib: Option<f64>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            min_success: None,
            faulty: None,
            max_share: None,
            settle: Duration::from_secs(3),
            share_until: ShareUntil::FaultEnd,
            max_detect: None,
            max_recover: None,
            max_every_back: None,
            max_failed_after_recover: None,
            share_back: None,
            max_share_back: None,
            min_final_share: None,
            final_window: Duration::from_secs(2),
            max_p99: None,
            max_p99_excess: None,
            min_bystander_share: None,
            max_failure_p99: None,
            max_duplicates: None,
            max_rss_mib: None,
        }
    }
}

/// The end of the span `max_share` judges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareUntil {
    /// The faulty backend's next event.
    #[default]
    FaultEnd,
    /// The end of the run.
    RunEnd,
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// It could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a valid scenario.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key and what is wrong with it.
        reason: String,
    },
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ScenarioError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut s: Scenario = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        if let Some(config) = &s.fulcrum.config {
            if config.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                s.fulcrum.config = Some(base.join(config));
            }
        }
        s.validate().map_err(invalid)?;
        Ok(s)
    }

    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.backends.count == 0 {
            return Err("backends.count: at least one backend".into());
        }
        if self.backends.capacity == Some(0) {
            return Err("backends.capacity: must be at least 1".into());
        }
        if self.load.rate.is_empty() || self.load.rate.contains(&0) {
            return Err("load.rate: one or more rates, each at least 1".into());
        }
        if self.load.duration.is_zero() {
            return Err("load.duration: must be longer than 0".into());
        }
        if http::Method::from_bytes(self.load.method.as_bytes()).is_err() {
            return Err(format!(
                "load.method: {:?} is not a method",
                self.load.method
            ));
        }
        if !self.load.path.starts_with('/') {
            return Err(format!("load.path: {:?} must start with /", self.load.path));
        }
        let mut last = Duration::ZERO;
        for (i, e) in self.timeline.iter().enumerate() {
            if e.at < last {
                return Err(format!("timeline[{i}].at: events must be in time order"));
            }
            if e.at >= self.load.duration {
                return Err(format!("timeline[{i}].at: after the end of the load"));
            }
            if e.backend != "all" && self.backend_index(&e.backend).is_none() {
                return Err(format!(
                    "timeline[{i}].backend: no backend {:?} (b0..b{}, or all)",
                    e.backend,
                    self.backends.count - 1
                ));
            }
            last = e.at;
        }
        if let Some(f) = &self.expect.faulty {
            if self.backend_index(f).is_none() {
                return Err(format!("expect.faulty: no backend {f:?}"));
            }
        }
        for (key, v) in [
            ("expect.min_success", self.expect.min_success),
            ("expect.max_share", self.expect.max_share),
            ("expect.min_final_share", self.expect.min_final_share),
            ("expect.share_back", self.expect.share_back),
            (
                "expect.min_bystander_share",
                self.expect.min_bystander_share,
            ),
        ] {
            if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(format!("{key}: must be in [0, 1]"));
            }
        }
        if self.expect.share_back.is_some() != self.expect.max_share_back.is_some() {
            return Err(
                "expect.share_back: goes with expect.max_share_back, both or neither".into(),
            );
        }
        Ok(())
    }

    /// The requests per second of this run (the first rate, for a scenario not yet split by
    /// [`Scenario::runs`]).
    pub fn rate(&self) -> u32 {
        self.load.rate.first().copied().unwrap_or(1)
    }

    /// One scenario per rate of `load.rate`; with more than one, each is named `name@rate`.
    pub fn runs(&self) -> Vec<Scenario> {
        let several = self.load.rate.len() > 1;
        self.load
            .rate
            .iter()
            .map(|&r| {
                let mut s = self.clone();
                s.load.rate = vec![r];
                if several {
                    s.name = format!("{}@{r}", self.name);
                }
                s
            })
            .collect()
    }

    /// The backends no timeline event touches (neither by name nor by `all`).
    pub fn bystanders(&self) -> Vec<usize> {
        if self.timeline.iter().any(|e| e.backend == "all") {
            return Vec::new();
        }
        (0..self.backends.count)
            .filter(|b| !self.timeline.iter().any(|e| e.backend == format!("b{b}")))
            .collect()
    }

    /// The index of backend `name` (`b0` ...).
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        name.strip_prefix('b')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|i| *i < self.backends.count)
    }

    /// The backend whose fault is judged: `expect.faulty`, else the first one faulted.
    pub fn faulty(&self) -> Option<usize> {
        match &self.expect.faulty {
            Some(f) => self.backend_index(f),
            None => self
                .timeline
                .iter()
                .find(|e| !e.is_recovery())
                .and_then(|e| self.backend_index(&e.backend)),
        }
    }

    /// The short form of `--quick`: the load's quick duration, with the timeline scaled to it.
    pub fn quick(&self) -> Scenario {
        let mut q = self.clone();
        let short = self
            .load
            .quick_duration
            .unwrap_or(Duration::from_secs(6))
            .min(self.load.duration);
        let factor = short.as_secs_f64() / self.load.duration.as_secs_f64();
        q.load.duration = short;
        for e in &mut q.timeline {
            e.at = e.at.mul_f64(factor);
        }
        q
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration ({e})")))
}

fn rates<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(r) => vec![r],
        OneOrMany::Many(v) => v,
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn fault<'de, D: Deserializer<'de>>(d: D) -> Result<Fault, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate().map(|_| s)
    }

    const LOAD: &str = "[load]\nrate = 100\nduration = \"10s\"\n";

    #[test]
    fn a_minimal_scenario_takes_the_defaults() {
        let s = parse(LOAD).unwrap();
        assert_eq!(s.backends.count, 3);
        assert_eq!(s.load.method, "GET");
        assert_eq!(s.expect.settle, Duration::from_secs(3));
        assert_eq!(s.faulty(), None);
    }

    #[test]
    fn mistakes_name_their_key() {
        for (text, key) in [
            ("[load]\nrate = 100\nduration = \"soon\"\n", "duration"),
            ("[load]\nrate = 0\nduration = \"1s\"\n", "load.rate"),
            ("[load]\nrate = 1\nduration = \"1s\"\nspeed = 2\n", "speed"),
            (
                &format!("{LOAD}[[timeline]]\nat = \"1s\"\nbackend = \"b7\"\nfault = \"dead\"\n"),
                "timeline[0].backend",
            ),
            (
                &format!("{LOAD}[[timeline]]\nat = \"11s\"\nbackend = \"b0\"\nfault = \"dead\"\n"),
                "timeline[0].at",
            ),
            (
                &format!("{LOAD}[[timeline]]\nat = \"1s\"\nbackend = \"b0\"\nfault = \"melt\"\n"),
                "melt",
            ),
            (
                &format!("{LOAD}[expect]\nmin_success = 2.0\n"),
                "expect.min_success",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(key), "{key} not in {e}");
        }
    }

    #[test]
    fn several_rates_are_several_runs_named_by_rate() {
        let s = parse("[load]\nrate = [200, 1500]\nduration = \"10s\"\n").unwrap();
        let runs: Vec<(String, u32)> = s
            .runs()
            .iter()
            .map(|r| (r.name.clone(), r.rate()))
            .collect();
        assert_eq!(
            runs,
            [("@200".to_string(), 200), ("@1500".to_string(), 1500)]
        );
        let one = parse(LOAD).unwrap();
        assert_eq!(one.runs().len(), 1);
        assert_eq!(one.runs()[0].name, "");
        let e = parse("[load]\nrate = []\nduration = \"1s\"\n").expect_err("no rate");
        assert!(e.contains("load.rate"), "{e}");
        let e = parse(&format!("{LOAD}[expect]\nshare_back = 0.3\n")).expect_err("half a pair");
        assert!(e.contains("expect.share_back"), "{e}");
    }

    #[test]
    fn bystanders_are_the_backends_no_event_touches() {
        let s = parse(&format!(
            "{LOAD}[[timeline]]\nat = \"1s\"\nbackend = \"b1\"\nfault = \"dead\"\n"
        ))
        .unwrap();
        assert_eq!(s.bystanders(), [0, 2]);
        let all = parse(&format!(
            "{LOAD}[[timeline]]\nat = \"1s\"\nbackend = \"all\"\nfault = \"dead\"\n"
        ))
        .unwrap();
        assert!(all.bystanders().is_empty());
    }

    #[test]
    fn quick_scales_the_timeline_and_judges_the_first_faulted_backend() {
        let s = parse(&format!(
            "{LOAD}quick_duration = \"5s\"\n[[timeline]]\nat = \"4s\"\nbackend = \"b2\"\nfault = \"dead\"\n\
             [[timeline]]\nat = \"8s\"\nbackend = \"b2\"\nfault = \"ok\"\n"
        ))
        .unwrap();
        assert_eq!(s.faulty(), Some(2));
        let q = s.quick();
        assert_eq!(q.load.duration, Duration::from_secs(5));
        assert_eq!(q.timeline[0].at, Duration::from_secs(2));
        assert_eq!(q.timeline[1].at, Duration::from_secs(4));
        assert!(q.timeline[1].is_recovery());
    }
}
