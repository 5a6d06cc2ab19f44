//! The metrics of metrics.md: their names as constants in one place, one Prometheus registry per
//! running server (so that two servers in one process, as in the tests, never mix their series),
//! and handles registered once per upstream and per backend. The request path then updates an
//! atomic through a handle; it never looks a series up by name.
//!
//! Label values are bounded by construction: upstream names and backend addresses come from the
//! config, and every other label is one of the fixed enums below.

use crate::policy::breaker::CircuitState;
use crate::policy::outcome::OutcomeKind;
use crate::policy::retry::REASONS as RETRY_REASONS;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::Arc;
use std::time::Duration;

/// The metric names of metrics.md (the contract), and fulcrum's own additions.
pub mod names {
    /// Gauge: the dynamic weight now in use.
    pub const BACKEND_WEIGHT: &str = "fulcrum_backend_weight";
    /// Gauge: the configured weight.
    pub const BACKEND_STATIC_WEIGHT: &str = "fulcrum_backend_static_weight";
    /// Gauge: the peak EWMA of latency, seconds.
    pub const BACKEND_EWMA_LATENCY: &str = "fulcrum_backend_ewma_latency_seconds";
    /// Gauge: the decaying success ratio.
    pub const BACKEND_SUCCESS_RATE: &str = "fulcrum_backend_success_rate";
    /// Gauge: requests in flight.
    pub const BACKEND_INFLIGHT: &str = "fulcrum_backend_inflight";
    /// Gauge: 1 in rotation, 0 out.
    pub const BACKEND_HEALTHY: &str = "fulcrum_backend_healthy";
    /// Gauge: 0 closed, 1 open, 2 half-open.
    pub const BACKEND_CIRCUIT_STATE: &str = "fulcrum_backend_circuit_state";
    /// Counter: breaker state changes, by the state entered (`to`).
    pub const CIRCUIT_TRANSITIONS: &str = "fulcrum_circuit_transitions_total";
    /// Counter: active probes, by `result` (`pass` / `fail`).
    pub const PROBES: &str = "fulcrum_probes_total";
    /// Counter: backend responses forwarded to clients, by status class (`code`).
    pub const REQUESTS: &str = "fulcrum_requests_total";
    /// Counter: failed tries, by `kind` (`connect`, `reset`, `timeout`, `status`).
    pub const UPSTREAM_FAILURES: &str = "fulcrum_upstream_failures_total";
    /// Counter: retries made, by `reason` (the `retry.on` name of the failure).
    pub const RETRIES: &str = "fulcrum_retries_total";
    /// Counter: retries the budget refused.
    pub const RETRIES_BUDGET_EXHAUSTED: &str = "fulcrum_retries_budget_exhausted_total";
    /// Histogram: client-seen latency through the proxy, seconds.
    pub const REQUEST_DURATION: &str = "fulcrum_request_duration_seconds";
    /// Histogram: time to response headers per try, seconds.
    pub const UPSTREAM_DURATION: &str = "fulcrum_upstream_duration_seconds";
    /// Counter: requests answered 503 because no backend was available.
    pub const NO_BACKEND: &str = "fulcrum_no_backend_total";
    /// Counter (fulcrum's addition): every response sent to a client, fulcrum's own answers
    /// included, by status class (`code`): the errors that reached clients.
    pub const RESPONSES: &str = "fulcrum_responses_total";
    /// Counter (fulcrum's addition): client connections cut by a clock, by `kind`: `header`
    /// (`listen.header_read_timeout`), `body` (`listen.body_read_timeout` or the request's
    /// deadline, answered 408), `send` (`listen.send_timeout`).
    pub const CLIENT_TIMEOUTS: &str = "fulcrum_client_timeouts_total";
    /// Counter (fulcrum's addition): panics caught in a request's task (answered 500, or the
    /// connection reset when the response had begun). Any is a bug.
    pub const PANICS: &str = "fulcrum_panics_total";
}

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram.
    Histogram,
}

/// Every metric fulcrum serves: name, type, label names, help text.
pub const ALL: &[(&str, Kind, &[&str], &str)] = {
    use names::*;
    use Kind::*;
    const B: &[&str] = &["upstream", "backend"];
    &[
        (BACKEND_WEIGHT, Gauge, B, "The dynamic weight now in use."),
        (BACKEND_STATIC_WEIGHT, Gauge, B, "The configured weight."),
        (
            BACKEND_EWMA_LATENCY,
            Gauge,
            B,
            "Peak EWMA of latency, seconds.",
        ),
        (
            BACKEND_SUCCESS_RATE,
            Gauge,
            B,
            "Estimate of the success ratio.",
        ),
        (BACKEND_INFLIGHT, Gauge, B, "Requests in flight."),
        (BACKEND_HEALTHY, Gauge, B, "1 in rotation, 0 out."),
        (
            BACKEND_CIRCUIT_STATE,
            Gauge,
            B,
            "Circuit breaker: 0 closed, 1 open, 2 half-open.",
        ),
        (
            CIRCUIT_TRANSITIONS,
            Counter,
            &["upstream", "backend", "to"],
            "Circuit breaker state changes.",
        ),
        (
            PROBES,
            Counter,
            &["upstream", "backend", "result"],
            "Active health probes.",
        ),
        (
            REQUESTS,
            Counter,
            &["upstream", "backend", "code"],
            "Backend responses forwarded, by status class.",
        ),
        (
            UPSTREAM_FAILURES,
            Counter,
            &["upstream", "backend", "kind"],
            "Failed tries to a backend, by kind.",
        ),
        (
            RETRIES,
            Counter,
            &["upstream", "reason"],
            "Retries made, by the failure that caused them.",
        ),
        (
            RETRIES_BUDGET_EXHAUSTED,
            Counter,
            &["upstream"],
            "Retries refused by the retry budget.",
        ),
        (
            REQUEST_DURATION,
            Histogram,
            &["upstream"],
            "Client-seen latency through the proxy, to the last byte, seconds.",
        ),
        (
            UPSTREAM_DURATION,
            Histogram,
            B,
            "Time to response headers per try, seconds.",
        ),
        (
            NO_BACKEND,
            Counter,
            &["upstream"],
            "Requests answered 503 because no backend was available.",
        ),
        (
            RESPONSES,
            Counter,
            &["upstream", "code"],
            "Responses sent to clients, fulcrum's own included, by status class.",
        ),
        (
            CLIENT_TIMEOUTS,
            Counter,
            &["kind"],
            "Client connections cut by a timeout: header, body or send.",
        ),
        (
            PANICS,
            Counter,
            &[],
            "Panics caught in a request's task; any is a bug.",
        ),
    ]
};

/// Histogram buckets, seconds: proxy latencies from half a millisecond to thirty seconds.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The `to` values of [`names::CIRCUIT_TRANSITIONS`], in [`circuit_index`] order.
const CIRCUIT_TO: [&str; 3] = ["closed", "open", "half_open"];
/// The `code` values of [`names::REQUESTS`] and [`names::RESPONSES`].
const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The `kind` values of [`names::CLIENT_TIMEOUTS`], in [`ClientTimeout`] order.
const CLIENT_TIMEOUT_KINDS: [&str; 3] = ["header", "body", "send"];
/// The `kind` values of [`names::UPSTREAM_FAILURES`].
const FAILURE_KINDS: [&str; 4] = ["connect", "reset", "timeout", "status"];

/// A breaker state's index in [`CIRCUIT_TO`], which is also its gauge value.
fn circuit_index(c: CircuitState) -> usize {
    match c {
        CircuitState::Closed => 0,
        CircuitState::Open { .. } => 1,
        CircuitState::HalfOpen => 2,
    }
}

fn code_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One running server's metrics registry.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    /// An empty registry with every metric described.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            // BUCKETS is a non-empty constant: the only error set_buckets has cannot happen.
            .expect("BUCKETS is not empty")
            .build_recorder();
        for &(name, kind, _, help) in ALL {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        Metrics {
            recorder: Arc::new(recorder),
            handle,
        }
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds the histogram samples recorded since the last render or upkeep, so that they do
    /// not pile up when nobody scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(name, labels)
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&Self::key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder
            .register_gauge(&Self::key(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&Self::key(name, labels), &METADATA)
    }

    /// The handles of the client side, shared by every listener of the server.
    pub fn clients(&self) -> Arc<ClientMetrics> {
        Arc::new(ClientMetrics {
            timeouts: CLIENT_TIMEOUT_KINDS
                .map(|k| self.counter(names::CLIENT_TIMEOUTS, &[("kind", k)])),
            panics: self.counter(names::PANICS, &[]),
        })
    }

    /// The handles of upstream `upstream`.
    pub fn upstream(&self, upstream: &str) -> Arc<UpstreamMetrics> {
        let u = [("upstream", upstream)];
        Arc::new(UpstreamMetrics {
            retries: RETRY_REASONS
                .map(|r| self.counter(names::RETRIES, &[("upstream", upstream), ("reason", r)])),
            budget_exhausted: self.counter(names::RETRIES_BUDGET_EXHAUSTED, &u),
            request_duration: self.histogram(names::REQUEST_DURATION, &u),
            no_backend: self.counter(names::NO_BACKEND, &u),
            responses: CODES
                .map(|c| self.counter(names::RESPONSES, &[("upstream", upstream), ("code", c)])),
        })
    }

    /// The handles of backend `backend` (its address) of upstream `upstream`.
    pub fn backend(
        &self,
        upstream: &str,
        backend: &str,
        static_weight: u32,
    ) -> Arc<BackendMetrics> {
        let b = [("upstream", upstream), ("backend", backend)];
        let with = |k: &'static str, v: &'static str| [b[0], b[1], (k, v)];
        let m = BackendMetrics {
            weight: self.gauge(names::BACKEND_WEIGHT, &b),
            ewma: self.gauge(names::BACKEND_EWMA_LATENCY, &b),
            success_rate: self.gauge(names::BACKEND_SUCCESS_RATE, &b),
            inflight: self.gauge(names::BACKEND_INFLIGHT, &b),
            healthy: self.gauge(names::BACKEND_HEALTHY, &b),
            circuit_state: self.gauge(names::BACKEND_CIRCUIT_STATE, &b),
            transitions: CIRCUIT_TO
                .map(|to| self.counter(names::CIRCUIT_TRANSITIONS, &with("to", to))),
            probes: [
                self.counter(names::PROBES, &with("result", "pass")),
                self.counter(names::PROBES, &with("result", "fail")),
            ],
            requests: CODES.map(|c| self.counter(names::REQUESTS, &with("code", c))),
            failures: FAILURE_KINDS
                .map(|k| self.counter(names::UPSTREAM_FAILURES, &with("kind", k))),
            upstream_duration: self.histogram(names::UPSTREAM_DURATION, &b),
            static_weight: self.gauge(names::BACKEND_STATIC_WEIGHT, &b),
        };
        m.static_weight(static_weight);
        Arc::new(m)
    }
}

/// Which clock cut a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    /// The request's header was too slow.
    Header,
    /// The request's body was too slow.
    Body,
    /// The client read too slowly.
    Send,
}

/// The handles of the client side.
#[derive(Debug)]
pub struct ClientMetrics {
    timeouts: [Counter; 3],
    panics: Counter,
}

impl ClientMetrics {
    /// A clock cut a client connection.
    pub fn timeout(&self, kind: ClientTimeout) {
        self.timeouts[kind as usize].increment(1);
    }

    /// A request's task panicked.
    pub fn panicked(&self) {
        self.panics.increment(1);
    }
}

/// The handles of one upstream.
#[derive(Debug)]
pub struct UpstreamMetrics {
    retries: [Counter; 4],
    budget_exhausted: Counter,
    request_duration: Histogram,
    no_backend: Counter,
    responses: [Counter; 5],
}

impl UpstreamMetrics {
    /// A retry was made for `reason` (a `retry.on` name).
    pub fn retry(&self, reason: &str) {
        if let Some(i) = RETRY_REASONS.iter().position(|r| *r == reason) {
            self.retries[i].increment(1);
        }
    }

    /// The budget refused a retry.
    pub fn budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
    }

    /// A request was answered 503 for want of a backend.
    pub fn no_backend(&self) {
        self.no_backend.increment(1);
    }

    /// A response with `status` went to a client.
    pub fn response(&self, status: u16) {
        self.responses[code_index(status)].increment(1);
    }

    /// A response's last byte went to the client (or the client left) `seconds` after the
    /// request arrived.
    pub fn duration(&self, seconds: f64) {
        self.request_duration.record(seconds);
    }
}

/// The handles of one backend.
#[derive(Debug)]
pub struct BackendMetrics {
    weight: Gauge,
    ewma: Gauge,
    success_rate: Gauge,
    inflight: Gauge,
    healthy: Gauge,
    circuit_state: Gauge,
    static_weight: Gauge,
    transitions: [Counter; 3],
    probes: [Counter; 2],
    requests: [Counter; 5],
    failures: [Counter; 4],
    upstream_duration: Histogram,
}

/// The figures of a backend the pool publishes as gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// The dynamic weight (0 out of rotation).
    pub weight: f64,
    /// The EWMA of latency, seconds.
    pub ewma_seconds: f64,
    /// The success ratio estimate.
    pub success_rate: f64,
    /// In rotation.
    pub healthy: bool,
    /// The breaker's state.
    pub circuit: CircuitState,
    /// Requests in flight. Set with the others rather than counted by every request: the
    /// gauge's two float updates a request were 1% of the request path's CPU, and a scrape
    /// sets it to the exact count anyway.
    pub inflight: u32,
}

impl BackendMetrics {
    /// Sets the gauges the pool computes.
    pub fn publish(&self, f: &Figures) {
        self.weight.set(f.weight);
        self.ewma.set(f.ewma_seconds);
        self.success_rate.set(f.success_rate);
        self.healthy.set(if f.healthy { 1.0 } else { 0.0 });
        self.circuit_state.set(circuit_index(f.circuit) as f64);
        self.inflight.set(f64::from(f.inflight));
    }

    /// The configured weight (set again when a reload or the admin API changes it).
    pub fn static_weight(&self, weight: u32) {
        self.static_weight.set(f64::from(weight));
    }

    /// The breaker entered `to`.
    pub fn transition(&self, to: CircuitState) {
        self.transitions[circuit_index(to)].increment(1);
    }

    /// An active probe passed or failed.
    pub fn probe(&self, pass: bool) {
        self.probes[usize::from(!pass)].increment(1);
    }

    /// A try ended as `kind` after `latency`: response headers (a failing status too) feed the
    /// time-to-headers histogram, failures their counter.
    pub fn outcome(&self, kind: OutcomeKind, latency: Duration) {
        let failure = match kind {
            OutcomeKind::Success => None,
            OutcomeKind::Connect => Some(0),
            OutcomeKind::Reset => Some(1),
            OutcomeKind::Timeout => Some(2),
            OutcomeKind::Status(_) => Some(3),
        };
        if matches!(kind, OutcomeKind::Success | OutcomeKind::Status(_)) {
            self.upstream_duration.record(latency.as_secs_f64());
        }
        if let Some(i) = failure {
            self.failures[i].increment(1);
        }
    }

    /// This backend's response with `status` went to the client.
    pub fn forwarded(&self, status: u16) {
        self.requests[code_index(status)].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(CODES[code_index(100)], "1xx");
        assert_eq!(CODES[code_index(204)], "2xx");
        assert_eq!(CODES[code_index(404)], "4xx");
        assert_eq!(CODES[code_index(599)], "5xx");
        assert_eq!(CODES[code_index(999)], "5xx");
    }

    #[test]
    fn two_registries_do_not_share_series() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.upstream("web").no_backend();
        let up = b.upstream("web");
        up.no_backend();
        up.no_backend();
        assert!(a
            .render()
            .contains("fulcrum_no_backend_total{upstream=\"web\"} 1"));
        assert!(b
            .render()
            .contains("fulcrum_no_backend_total{upstream=\"web\"} 2"));
    }
}
