//! The report of a run: what the clients saw (success, failures by kind and status, latency
//! percentiles from an HDR histogram), how fulcrum shared the tries among the backends (whole run
//! and per second, from its own counts), the time to detect and to recover, and each expectation
//! judged. Printed as text, written as JSON, or summed up as one markdown row.
//!
//! - **Share** of a backend over a span: its tries (fulcrum's `picks`) over all tries.
//! - **Time to detect**: from the fault until the faulty backend gets under 1% of tries in every
//!   one-second window to the fault's end.
//! - **Time to recover**: from the last recovery event to the recovered backend's first try; for
//!   `all`, to the first 2xx answer. **Every back**: to the last recovered backend's first try.
//! - **Share back**: from the last recovery event until the recovered backend (after `all`: each)
//!   gets `share_back` of the tries over a sliding one-second window.
//! - **Failed after recovery**: requests sent after the last recovery event that got no 2xx.
//! - **p99 excess**: the p99 of all requests less the p99 of those the other backends answered.
//! - **Bystander share**: the least share a backend the timeline never faults got in any second.

use crate::run::{Applied, Record, Run, Sample, View, SAMPLE_PERIOD};
use crate::scenario::ShareUntil;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// The slowest.
    pub max: f64,
}

/// One backend's share of the tries.
#[derive(Debug, Clone, Serialize)]
pub struct Share {
    /// `b0` ...
    pub backend: String,
    /// Over the whole run.
    pub share: f64,
    /// Second by second.
    pub per_second: Vec<f64>,
    /// fulcrum's view of it at the end of each second (the last /status reading in it).
    pub view_per_second: Vec<Option<View>>,
}

/// One expectation, judged.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The `[expect]` key.
    pub name: String,
    /// What it asks.
    pub want: String,
    /// What the run showed.
    pub got: String,
    /// Whether it holds.
    pub pass: bool,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// What it shows.
    pub description: String,
    /// Run in its quick form.
    pub quick: bool,
    /// Requests per second offered.
    pub rate: u32,
    /// Seconds of load.
    pub duration_s: f64,
    /// `GET /` and the like.
    pub request: String,
    /// Requests sent.
    pub requests: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// `ok / requests`.
    pub success_ratio: f64,
    /// The others, by status (`503`) or by what happened (`timeout`, `connect`, `broken`).
    pub failures: BTreeMap<String, u64>,
    /// Latency of every request, from its scheduled send time to the end of its answer.
    pub latency_ms: Percentiles,
    /// p99 latency of the failed requests.
    pub failure_p99_ms: Option<f64>,
    /// Each backend's share of the tries.
    pub backends: Vec<Share>,
    /// The share of 2xx answers, second by second.
    pub success_per_second: Vec<f64>,
    /// The timeline as applied.
    pub events: Vec<Applied>,
    /// The backend whose fault is judged.
    pub faulty: Option<String>,
    /// Time to detect, seconds.
    pub detect_s: Option<f64>,
    /// Time to recover, seconds.
    pub recover_s: Option<f64>,
    /// Time until every recovered backend had a try again, seconds.
    pub every_back_s: Option<f64>,
    /// Time until the recovered backends got `share_back` of the tries, seconds.
    pub share_back_s: Option<f64>,
    /// Requests sent after the last recovery event that got no 2xx.
    pub failed_after_recover: Option<u64>,
    /// p99 of all requests less the p99 of those the backends other than the faulty one
    /// answered, milliseconds.
    pub p99_excess_ms: Option<f64>,
    /// The least share of tries any bystander got in a whole second.
    pub min_bystander_share: Option<f64>,
    /// fulcrum's retries by reason.
    pub retries: BTreeMap<String, u64>,
    /// fulcrum's failed tries by kind.
    pub upstream_failures: BTreeMap<String, u64>,
    /// Requests a backend received more than once.
    pub duplicates: u64,
    /// fulcrum's peak resident memory, MiB.
    pub peak_rss_mib: Option<f64>,
    /// fulcrum exited 0 on SIGTERM.
    pub clean_exit: bool,
    /// fulcrum's log.
    pub log: String,
    /// Every expectation.
    pub checks: Vec<Check>,
    /// All of them hold, and fulcrum exited cleanly.
    pub pass: bool,
}

/// The last sample at or before `t` (the first sample before any).
fn sample_at(samples: &[Sample], t: Duration) -> Option<&Sample> {
    let i = samples.partition_point(|s| s.t <= t);
    samples.get(i.saturating_sub(1))
}

/// The tries per backend of [`sample_at`] `t`.
fn picks_at(samples: &[Sample], t: Duration) -> &[u64] {
    sample_at(samples, t).map_or(&[][..], |s| &s.picks[..])
}

/// fulcrum's view of backend `b` in [`sample_at`] `t`.
fn view_at(samples: &[Sample], b: usize, t: Duration) -> Option<View> {
    sample_at(samples, t)?.views.get(b)?.clone()
}

/// Backend `b`'s share of the tries made in `[from, to)`; None when there were none.
fn share(samples: &[Sample], b: usize, from: Duration, to: Duration) -> Option<f64> {
    let (a, z) = (picks_at(samples, from), picks_at(samples, to));
    if a.len() != z.len() || b >= z.len() {
        return None;
    }
    let total: u64 = z.iter().zip(a).map(|(z, a)| z - a).sum();
    (total > 0).then(|| (z[b] - a[b]) as f64 / total as f64)
}

fn ms(d: u64) -> f64 {
    d as f64 / 1000.0
}

fn percentiles(latencies: impl Iterator<Item = Duration>) -> Option<(Percentiles, u64)> {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok()?;
    for l in latencies {
        h.saturating_record((l.as_micros() as u64).max(1));
    }
    if h.is_empty() {
        return None;
    }
    let q = |q: f64| ms(h.value_at_quantile(q));
    Some((
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: ms(h.max()),
        },
        h.len(),
    ))
}

/// The first event after `from` that touches backend `b` (by name or `all`).
fn next_event_for<'a>(events: &'a [Applied], b: &str, from: f64) -> Option<&'a Applied> {
    events
        .iter()
        .find(|e| e.at > from && (e.backend == b || e.backend == "all"))
}

/// The last recovery event and the backends it brought back (after `all`, every one).
fn last_recovery(run: &Run) -> Option<(&Applied, Vec<usize>)> {
    let s = &run.scenario;
    let e = run.events.iter().rev().find(|e| e.recovery)?;
    let backends = if e.backend == "all" {
        (0..s.backends.count).collect()
    } else {
        s.backend_index(&e.backend).into_iter().collect()
    };
    Some((e, backends))
}

/// From `from`, the time until backend `b`'s first try.
fn first_try_after(samples: &[Sample], b: usize, from: f64) -> Option<f64> {
    let before = picks_at(samples, Duration::from_secs_f64(from.max(0.0)))
        .get(b)
        .copied()?;
    samples
        .iter()
        .find(|x| x.t.as_secs_f64() > from && x.picks.get(b).is_some_and(|p| *p > before))
        .map(|x| x.t.as_secs_f64() - from)
}

/// From `from`, the time until every backend of `bs` gets at least `min` of the tries over a
/// sliding window of one second that starts at `from` or later.
fn share_back_after(
    samples: &[Sample],
    bs: &[usize],
    min: f64,
    from: f64,
    end: f64,
) -> Option<f64> {
    let window = Duration::from_secs(1);
    let mut u = Duration::from_secs_f64(from.max(0.0)) + window;
    let end = Duration::from_secs_f64(end) + SAMPLE_PERIOD;
    while u <= end {
        let least = bs
            .iter()
            .map(|&b| share(samples, b, u - window, u).unwrap_or(0.0))
            .reduce(f64::min);
        if !bs.is_empty() && least.is_some_and(|l| l >= min) {
            return Some(u.as_secs_f64() - from);
        }
        u += SAMPLE_PERIOD;
    }
    None
}

impl Report {
    /// Computes the report of `run`.
    pub fn new(run: &Run) -> Report {
        let s = &run.scenario;
        let secs = |x: f64| Duration::from_secs_f64(x.max(0.0));
        let end = s.load.duration;
        let n = s.backends.count;
        let records = &run.records;
        let ok = records.iter().filter(|r| r.ok()).count() as u64;
        let mut failures = BTreeMap::new();
        for r in records.iter().filter(|r| !r.ok()) {
            let key = r.error.map_or_else(|| r.status.to_string(), str::to_string);
            *failures.entry(key).or_insert(0) += 1;
        }
        let (latency_ms, _) = percentiles(records.iter().map(|r| r.latency)).unwrap_or((
            Percentiles {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            },
            0,
        ));
        let failure_p99_ms =
            percentiles(records.iter().filter(|r| !r.ok()).map(|r| r.latency)).map(|(p, _)| p.p99);
        let seconds = end.as_secs_f64().ceil() as u64;
        let samples = &run.samples;
        let backends: Vec<Share> = (0..n)
            .map(|b| Share {
                backend: format!("b{b}"),
                share: share(samples, b, Duration::ZERO, end + SAMPLE_PERIOD * 10).unwrap_or(0.0),
                per_second: (0..seconds)
                    .map(|k| {
                        share(
                            samples,
                            b,
                            Duration::from_secs(k),
                            Duration::from_secs(k + 1),
                        )
                        .unwrap_or(0.0)
                    })
                    .collect(),
                view_per_second: (0..seconds)
                    .map(|k| view_at(samples, b, Duration::from_secs(k + 1)))
                    .collect(),
            })
            .collect();
        let success_per_second = (0..seconds)
            .map(|k| {
                let in_second: Vec<&Record> =
                    records.iter().filter(|r| r.sent.as_secs() == k).collect();
                if in_second.is_empty() {
                    1.0
                } else {
                    in_second.iter().filter(|r| r.ok()).count() as f64 / in_second.len() as f64
                }
            })
            .collect();

        let faulty = s.faulty();
        let faulty_name = faulty.map(|b| format!("b{b}"));
        // The fault judged: the first event faulting the faulty backend, to its next change.
        let fault = faulty_name.as_ref().and_then(|f| {
            run.events
                .iter()
                .find(|e| !e.recovery && (&e.backend == f || e.backend == "all"))
                .map(|e| {
                    let until =
                        next_event_for(&run.events, f, e.at).map_or(end.as_secs_f64(), |n| n.at);
                    (e.at, until)
                })
        });
        let detect_s = match (faulty, fault) {
            (Some(b), Some((from, until))) => detect(samples, b, secs(from), secs(until)),
            _ => None,
        };
        let recovery = last_recovery(run);
        let recover_s = recovery.as_ref().and_then(|(e, bs)| {
            if e.backend == "all" {
                records
                    .iter()
                    .filter(|r| r.ok() && r.sent.as_secs_f64() >= e.at)
                    .map(|r| (r.sent + r.latency).as_secs_f64() - e.at)
                    .reduce(f64::min)
            } else {
                first_try_after(samples, *bs.first()?, e.at)
            }
        });
        let every_back_s = recovery.as_ref().and_then(|(e, bs)| {
            bs.iter()
                .map(|&b| first_try_after(samples, b, e.at))
                .collect::<Option<Vec<f64>>>()
                .and_then(|v| v.into_iter().reduce(f64::max))
        });
        let share_back_s = match (&recovery, s.expect.share_back) {
            (Some((e, bs)), Some(min)) => {
                share_back_after(samples, bs, min, e.at, end.as_secs_f64())
            }
            _ => None,
        };
        let failed_after_recover = recovery.as_ref().map(|(e, _)| {
            records
                .iter()
                .filter(|r| !r.ok() && r.sent.as_secs_f64() >= e.at)
                .count() as u64
        });
        let p99_excess_ms = faulty.and_then(|f| {
            let others = records
                .iter()
                .filter(|r| r.backend.is_some_and(|b| usize::from(b) != f))
                .map(|r| r.latency);
            percentiles(others).map(|(p, _)| latency_ms.p99 - p.p99)
        });
        let min_bystander_share = s
            .bystanders()
            .iter()
            .flat_map(|&b| backends[b].per_second.iter().copied())
            .reduce(f64::min);
        let peak_rss_mib = samples
            .iter()
            .filter_map(|x| x.rss_kib)
            .max()
            .map(|k| k as f64 / 1024.0);

        let mut report = Report {
            scenario: s.name.clone(),
            description: s.description.clone(),
            quick: run.quick,
            rate: s.rate(),
            duration_s: end.as_secs_f64(),
            request: format!("{} {}", s.load.method, s.load.path),
            requests: records.len() as u64,
            ok,
            success_ratio: if records.is_empty() {
                0.0
            } else {
                ok as f64 / records.len() as f64
            },
            failures,
            latency_ms,
            failure_p99_ms,
            backends,
            success_per_second,
            events: run.events.clone(),
            faulty: faulty_name,
            detect_s,
            recover_s,
            every_back_s,
            share_back_s,
            failed_after_recover,
            p99_excess_ms,
            min_bystander_share,
            retries: run.retries.clone(),
            upstream_failures: run.upstream_failures.clone(),
            duplicates: run.duplicates,
            peak_rss_mib,
            clean_exit: run.clean_exit,
            log: run.log.display().to_string(),
            checks: Vec::new(),
            pass: false,
        };
        report.checks = report.judge(run, fault);
        report.pass = run.clean_exit && report.checks.iter().all(|c| c.pass);
        report
    }

    fn judge(&self, run: &Run, fault: Option<(f64, f64)>) -> Vec<Check> {
        let s = &run.scenario;
        let e = &s.expect;
        let mut checks = Vec::new();
        let mut check = |name: &str, want: String, got: String, pass: bool| {
            checks.push(Check {
                name: name.to_string(),
                want,
                got,
                pass,
            })
        };
        let fmt_s = |x: Option<f64>| x.map_or("never".to_string(), |x| format!("{x:.2} s"));
        if let Some(min) = e.min_success {
            check(
                "min_success",
                format!(">= {:.2}%", min * 100.0),
                format!("{:.2}%", self.success_ratio * 100.0),
                self.success_ratio >= min,
            );
        }
        if let Some(max) = e.max_share {
            let got = match (s.faulty(), fault) {
                (Some(b), Some((from, until))) => {
                    let until = match e.share_until {
                        ShareUntil::FaultEnd => until,
                        ShareUntil::RunEnd => s.load.duration.as_secs_f64(),
                    };
                    let from = from + e.settle.as_secs_f64();
                    (from < until)
                        .then(|| {
                            share(
                                &run.samples,
                                b,
                                Duration::from_secs_f64(from),
                                Duration::from_secs_f64(until),
                            )
                        })
                        .flatten()
                }
                _ => None,
            };
            check(
                "max_share",
                format!(
                    "{} <= {:.1}% of tries, {} after its fault to {}",
                    self.faulty.as_deref().unwrap_or("?"),
                    max * 100.0,
                    humantime::format_duration(e.settle),
                    match e.share_until {
                        ShareUntil::FaultEnd => "its end",
                        ShareUntil::RunEnd => "the run's end",
                    }
                ),
                got.map_or("no tries to judge".into(), |g| format!("{:.2}%", g * 100.0)),
                got.is_some_and(|g| g <= max),
            );
        }
        if let Some(max) = e.max_detect {
            check(
                "max_detect",
                format!("<= {:.2} s", max.as_secs_f64()),
                fmt_s(self.detect_s),
                self.detect_s.is_some_and(|d| d <= max.as_secs_f64()),
            );
        }
        if let Some(max) = e.max_recover {
            check(
                "max_recover",
                format!("<= {:.2} s", max.as_secs_f64()),
                fmt_s(self.recover_s),
                self.recover_s.is_some_and(|d| d <= max.as_secs_f64()),
            );
        }
        if let Some(max) = e.max_every_back {
            check(
                "max_every_back",
                format!("<= {:.2} s", max.as_secs_f64()),
                fmt_s(self.every_back_s),
                self.every_back_s.is_some_and(|d| d <= max.as_secs_f64()),
            );
        }
        if let (Some(min), Some(max)) = (e.share_back, e.max_share_back) {
            check(
                "max_share_back",
                format!(
                    ">= {:.1}% of tries within {:.2} s",
                    min * 100.0,
                    max.as_secs_f64()
                ),
                fmt_s(self.share_back_s),
                self.share_back_s.is_some_and(|d| d <= max.as_secs_f64()),
            );
        }
        if let Some(max) = e.max_failed_after_recover {
            let most = (max.as_secs_f64() * f64::from(self.rate)).floor() as u64;
            check(
                "max_failed_after_recover",
                format!("<= {most} ({} of load)", humantime::format_duration(max)),
                self.failed_after_recover
                    .map_or("no recovery".into(), |n| n.to_string()),
                self.failed_after_recover.is_some_and(|n| n <= most),
            );
        }
        if let Some(min) = e.min_final_share {
            let end = s.load.duration;
            let from = end.saturating_sub(e.final_window);
            // The backend that recovered last; after `all`, every one (the least share counts).
            let recovered: Vec<usize> = match last_recovery(run) {
                Some((_, bs)) => bs,
                None => s.faulty().into_iter().collect(),
            };
            let got = recovered
                .iter()
                .map(|&b| share(&run.samples, b, from, end + SAMPLE_PERIOD * 10))
                .collect::<Option<Vec<f64>>>()
                .and_then(|v| v.into_iter().reduce(f64::min));
            let who: Vec<String> = recovered.iter().map(|b| format!("b{b}")).collect();
            check(
                "min_final_share",
                format!(
                    "{} >= {:.1}% of tries in the last {}",
                    if who.is_empty() {
                        "?".to_string()
                    } else {
                        who.join(", ")
                    },
                    min * 100.0,
                    humantime::format_duration(e.final_window)
                ),
                got.map_or("no tries".into(), |g| format!("{:.2}%", g * 100.0)),
                got.is_some_and(|g| g >= min),
            );
        }
        if let Some(max) = e.max_p99 {
            let max_ms = max.as_secs_f64() * 1000.0;
            check(
                "max_p99",
                format!("<= {max_ms:.1} ms"),
                format!("{:.1} ms", self.latency_ms.p99),
                self.latency_ms.p99 <= max_ms,
            );
        }
        if let Some(max) = e.max_p99_excess {
            let max_ms = max.as_secs_f64() * 1000.0;
            check(
                "max_p99_excess",
                format!("<= {max_ms:.1} ms over the others' p99"),
                self.p99_excess_ms
                    .map_or("unknown".into(), |p| format!("{p:.2} ms")),
                self.p99_excess_ms.is_some_and(|p| p <= max_ms),
            );
        }
        if let Some(min) = e.min_bystander_share {
            check(
                "min_bystander_share",
                format!(">= {:.1}% of tries in every second", min * 100.0),
                self.min_bystander_share
                    .map_or("no bystander".into(), |m| format!("{:.2}%", m * 100.0)),
                self.min_bystander_share.is_some_and(|m| m >= min),
            );
        }
        if let Some(max) = e.max_failure_p99 {
            let max_ms = max.as_secs_f64() * 1000.0;
            check(
                "max_failure_p99",
                format!("<= {max_ms:.1} ms"),
                self.failure_p99_ms
                    .map_or("no failures".into(), |p| format!("{p:.1} ms")),
                self.failure_p99_ms.is_none_or(|p| p <= max_ms),
            );
        }
        if let Some(max) = e.max_duplicates {
            check(
                "max_duplicates",
                format!("<= {max}"),
                self.duplicates.to_string(),
                self.duplicates <= max,
            );
        }
        if let Some(max) = e.max_rss_mib {
            check(
                "max_rss_mib",
                format!("<= {max:.0} MiB"),
                self.peak_rss_mib
                    .map_or("unknown".into(), |m| format!("{m:.1} MiB")),
                self.peak_rss_mib.is_some_and(|m| m <= max),
            );
        }
        checks
    }

    /// The report as text, for a terminal.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "scenario {}{}: {}",
            self.scenario,
            if self.quick { " (quick)" } else { "" },
            self.description
        );
        let _ = writeln!(
            o,
            "  load       {} rps for {:.0} s, {}: {} requests",
            self.rate, self.duration_s, self.request, self.requests
        );
        let failures = if self.failures.is_empty() {
            "none".to_string()
        } else {
            self.failures
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            o,
            "  success    {:.3}% ({} of {}); failures: {failures}",
            self.success_ratio * 100.0,
            self.ok,
            self.requests
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            o,
            "  latency    p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms{}",
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.failure_p99_ms
                .map_or(String::new(), |p| format!("  (failures p99 {p:.1} ms)"))
        );
        let shares: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!("{} {:.1}%", b.backend, b.share * 100.0))
            .collect();
        let _ = writeln!(o, "  tries      {}", shares.join("  "));
        for e in &self.events {
            let _ = writeln!(o, "  timeline   {:>6.2} s  {} {}", e.at, e.backend, e.fault);
        }
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2} s"));
        let _ = writeln!(
            o,
            "  detect     {}   recover {}{}",
            fmt(self.detect_s),
            fmt(self.recover_s),
            self.faulty
                .as_ref()
                .map_or(String::new(), |f| format!("   (faulty backend {f})"))
        );
        if self.every_back_s.is_some() || self.share_back_s.is_some() {
            let _ = writeln!(
                o,
                "  back       every backend {}   share back {}   failed after the recovery {}",
                fmt(self.every_back_s),
                fmt(self.share_back_s),
                self.failed_after_recover
                    .map_or("-".to_string(), |n| n.to_string())
            );
        }
        if let (Some(p), Some(m)) = (self.p99_excess_ms, self.min_bystander_share) {
            let _ = writeln!(
                o,
                "  tail       p99 over the other backends' {p:.2} ms   least bystander share in a second {:.1}%",
                m * 100.0
            );
        }
        let kv = |m: &BTreeMap<String, u64>| {
            let parts: Vec<String> = m
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            }
        };
        let _ = writeln!(
            o,
            "  fulcrum    retries: {}; failed tries: {}; duplicates at backends: {}; peak RSS {}; {}",
            kv(&self.retries),
            kv(&self.upstream_failures),
            self.duplicates,
            self.peak_rss_mib
                .map_or("unknown".into(), |m| format!("{m:.1} MiB")),
            if self.clean_exit {
                "exit 0 on SIGTERM"
            } else {
                "NO clean exit on SIGTERM"
            }
        );
        let _ = write!(o, "  per second ");
        for b in &self.backends {
            let _ = write!(o, "{:>6}", b.backend);
        }
        let _ = writeln!(o, "{:>8}", "2xx");
        for (k, ok) in self.success_per_second.iter().enumerate() {
            let _ = write!(o, "  {:>8} s ", k);
            for b in &self.backends {
                let _ = write!(
                    o,
                    "{:>6.1}",
                    b.per_second.get(k).copied().unwrap_or(0.0) * 100.0
                );
            }
            let _ = writeln!(o, "{:>8.2}", ok * 100.0);
        }
        if !self.pass {
            // What the shares followed from: enough to tell a stuck estimate from an ejection.
            let _ = writeln!(
                o,
                "  fulcrum's view at the end of each second: weight, latency estimate ms, in flight, state"
            );
            for k in 0..self.success_per_second.len() {
                let _ = write!(o, "  {:>8} s ", k);
                for b in &self.backends {
                    let cell = match b.view_per_second.get(k).cloned().flatten() {
                        Some(v) => format!(
                            "{}: {:.3} {:.1} {} {}",
                            b.backend, v.weight, v.ewma_ms, v.inflight, v.state
                        ),
                        None => format!("{}: -", b.backend),
                    };
                    let _ = write!(o, " {cell:<26}");
                }
                let _ = writeln!(o);
            }
        }
        for c in &self.checks {
            let _ = writeln!(
                o,
                "  expect     {:<16} {:<40} got {:<14} {}",
                c.name,
                c.want,
                c.got,
                if c.pass { "pass" } else { "FAIL" }
            );
        }
        let _ = writeln!(o, "  {}", if self.pass { "PASS" } else { "FAIL" });
        o
    }

    /// The header of [`Report::markdown_row`]'s table.
    pub fn markdown_header() -> &'static str {
        "| scenario | rate | requests | success | p50 ms | p99 ms | max ms | faulty share | detect | recover | every back | share back | failed after | result |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    }

    /// One row of the `--all` table.
    pub fn markdown_row(&self) -> String {
        let faulty = self
            .faulty
            .as_ref()
            .and_then(|f| self.backends.iter().find(|b| &b.backend == f))
            .map_or("-".to_string(), |b| format!("{:.1}%", b.share * 100.0));
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2} s"));
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        format!(
            "| {} | {} | {} | {:.3}% | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.rate,
            self.requests,
            self.success_ratio * 100.0,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.max,
            faulty,
            fmt(self.detect_s),
            fmt(self.recover_s),
            fmt(self.every_back_s),
            fmt(self.share_back_s),
            self.failed_after_recover
                .map_or("-".to_string(), |n| n.to_string()),
            if self.pass {
                "pass".to_string()
            } else if failed.is_empty() {
                "FAIL (exit)".to_string()
            } else {
                format!("FAIL ({})", failed.join(", "))
            }
        )
    }
}

/// Time to detect: from `from` until backend `b` gets under 1% of the tries in every one-second
/// window that ends by `until`; None if it never does.
fn detect(samples: &[Sample], b: usize, from: Duration, until: Duration) -> Option<f64> {
    let window = Duration::from_secs(1);
    if until < from + window {
        return None;
    }
    let mut last_bad: Option<Duration> = None;
    let mut u = from;
    while u + window <= until {
        if share(samples, b, u, u + window).is_some_and(|s| s >= 0.01) {
            last_bad = Some(u);
        }
        u += SAMPLE_PERIOD;
    }
    match last_bad {
        None => Some(0.0),
        Some(t) if t + SAMPLE_PERIOD + window > until => None,
        Some(t) => Some((t + SAMPLE_PERIOD - from).as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(picks: &[[u64; 2]]) -> Vec<Sample> {
        picks
            .iter()
            .enumerate()
            .map(|(i, p)| Sample {
                t: SAMPLE_PERIOD * i as u32,
                picks: p.to_vec(),
                views: Vec::new(),
                rss_kib: None,
            })
            .collect()
    }

    #[test]
    fn shares_are_deltas_of_tries() {
        let s = samples(&[[0, 0], [10, 10], [20, 10], [30, 10]]);
        let ms = Duration::from_millis;
        assert_eq!(share(&s, 1, ms(0), ms(300)), Some(1.0 / 4.0));
        assert_eq!(share(&s, 0, ms(100), ms(300)), Some(1.0));
        assert_eq!(share(&s, 0, ms(300), ms(300)), None);
    }

    #[test]
    fn detection_is_the_end_of_the_last_window_with_a_share_of_one_percent() {
        // b1 gets half the tries until 0.5 s, then none; 30 samples (3 s).
        let mut p = Vec::new();
        let (mut a, mut b) = (0, 0);
        for i in 0..30 {
            p.push([a, b]);
            a += 10;
            if i < 5 {
                b += 10;
            }
        }
        let s = samples(&p);
        let d = detect(&s, 1, Duration::ZERO, Duration::from_secs(3)).unwrap();
        assert!((d - 0.5).abs() < 1e-9, "{d}");
        // Never detected when it keeps getting tries.
        let s = samples(&(0..30).map(|i| [i * 10, i * 10]).collect::<Vec<_>>());
        assert_eq!(detect(&s, 1, Duration::ZERO, Duration::from_secs(3)), None);
    }

    #[test]
    fn a_failed_run_shows_fulcrum_s_view_of_each_backend() {
        let scenario: crate::scenario::Scenario = toml::from_str(
            "[backends]\ncount = 2\n[load]\nrate = 10\nduration = \"2s\"\n\
             [expect]\nmin_final_share = 0.4\nfinal_window = \"1s\"\n",
        )
        .unwrap();
        let view = |weight, ewma_ms| View {
            weight,
            ewma_ms,
            inflight: 0,
            state: "closed".into(),
        };
        // b1 gets a fifth of the tries; fulcrum's view says why: a high estimate, a low weight.
        let samples = (0..=20u64)
            .map(|i| Sample {
                t: SAMPLE_PERIOD * i as u32,
                picks: vec![i * 4, i],
                views: vec![Some(view(1.0, 2.5)), Some(view(0.1, 24.0))],
                rss_kib: None,
            })
            .collect();
        let records = (0..20)
            .map(|i| Record {
                sent: Duration::from_millis(i * 100),
                latency: Duration::from_millis(3),
                status: 200,
                error: None,
                backend: Some(0),
            })
            .collect();
        let mut run = Run {
            scenario,
            quick: false,
            records,
            samples,
            events: Vec::new(),
            duplicates: 0,
            retries: BTreeMap::new(),
            upstream_failures: BTreeMap::new(),
            clean_exit: true,
            log: "fulcrum.log".into(),
        };
        let report = Report::new(&run);
        assert!(!report.pass);
        let text = report.text();
        assert!(text.contains("fulcrum's view"), "{text}");
        assert!(text.contains("b1: 0.100 24.0 0 closed"), "{text}");
        // A passing run keeps its report short.
        run.scenario.expect.min_final_share = None;
        let report = Report::new(&run);
        assert!(report.pass, "{}", report.text());
        assert!(!report.text().contains("fulcrum's view"));
    }
}
