//! What fulcrum shows of itself: /metrics scraped over HTTP and parsed as Prometheus text, /status
//! beside it, the admin and proxy listeners kept apart, and the access log and state-change
//! events of the real binary.

mod common;

use common::binary::{binary_config, message, Fulcrum};
use common::*;
use fulcrum::telemetry::metrics::{self, names, Kind};
use loadtest::Fault;
use prometheus_parse::Value;
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::time::Duration;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A parsed scrape of /metrics.
struct Scrape(prometheus_parse::Scrape);

async fn scrape(admin: SocketAddr) -> Scrape {
    let a = get(&client(), admin, "/metrics", None).await;
    assert_eq!(a.status, 200);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        a.headers
    );
    let lines = a.body.lines().map(|l| Ok(l.to_string()));
    Scrape(prometheus_parse::Scrape::parse(lines).expect("Prometheus text"))
}

impl Scrape {
    /// The value of the counter or gauge `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) => v,
                ref other => panic!("{name} is not a counter or gauge: {other:?}"),
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0]
    }

    /// Of backend `b`.
    fn of(&self, name: &str, b: SocketAddr) -> f64 {
        self.value(name, &[("backend", &b.to_string())])
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let h = self
            .0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} {labels:?} missing"));
        match &h.value {
            Value::Histogram(buckets) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_metric_is_served_with_its_type_and_labels_and_counts_what_clients_saw() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[2].set_fault(Fault::errors(0.5, 503));
    let server = start(&tuned(&bs, &Tuning::default())).await;
    let records = paced(server.proxy_addr(), 100, secs(1.5)).await;
    let s = scrape(server.admin_addr()).await;

    for &(name, kind, labels, _) in metrics::ALL {
        let samples: Vec<_> = s.0.samples.iter().filter(|x| x.metric == name).collect();
        assert!(!samples.is_empty(), "{name} is not served");
        assert!(s.0.docs.contains_key(name), "{name} has no HELP");
        for x in samples {
            let typed = matches!(
                (kind, &x.value),
                (Kind::Counter, Value::Counter(_))
                    | (Kind::Gauge, Value::Gauge(_))
                    | (Kind::Histogram, Value::Histogram(_))
            );
            assert!(typed, "{name}: {kind:?} expected, got {:?}", x.value);
            let mut got: Vec<&str> = x.labels.keys().map(String::as_str).collect();
            got.sort_unstable();
            let mut want = labels.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "labels of {name}");
        }
    }

    let ok = records.iter().filter(|r| r.status == 200).count() as f64;
    let failed = records.iter().filter(|r| r.status == 503).count() as f64;
    assert_eq!(ok + failed, records.len() as f64, "only 200s and 503s");
    let web = [("upstream", "web")];
    let class = |code| [("upstream", "web"), ("code", code)];
    assert_eq!(s.value(names::RESPONSES, &class("2xx")), ok);
    assert_eq!(s.value(names::RESPONSES, &class("5xx")), failed);
    let forwarded_ok: f64 = bs
        .iter()
        .map(|b| {
            s.value(
                names::REQUESTS,
                &[("backend", &b.addr().to_string()), ("code", "2xx")],
            )
        })
        .sum();
    assert_eq!(forwarded_ok, ok, "every 200 came from a backend");
    let b2_status_failures = s.value(
        names::UPSTREAM_FAILURES,
        &[("backend", &bs[2].addr().to_string()), ("kind", "status")],
    );
    assert!(b2_status_failures > 0.0);
    let retried = s.value(names::RETRIES, &[("upstream", "web"), ("reason", "status")]);
    let refused = s.value(names::RETRIES_BUDGET_EXHAUSTED, &web);
    assert!(retried > 0.0);
    // Each 503 try was retried, refused by the budget, or was a final try's answer.
    assert!(
        retried + refused <= b2_status_failures,
        "{retried} {refused}"
    );
    for b in &bs {
        assert_eq!(s.of(names::BACKEND_STATIC_WEIGHT, b.addr()), 1.0);
        assert_eq!(s.of(names::BACKEND_INFLIGHT, b.addr()), 0.0);
        let passed = s.value(
            names::PROBES,
            &[("backend", &b.addr().to_string()), ("result", "pass")],
        );
        assert!(passed >= 1.0, "probes of {}", b.addr());
    }

    // Buckets from half a millisecond to thirty seconds; every answer counted once.
    let h = s.histogram(names::REQUEST_DURATION, &web);
    assert_eq!(h.first().unwrap().0, 0.0005);
    assert!(h.iter().any(|(le, _)| *le == 30.0), "{h:?}");
    let total = h.last().unwrap().1;
    // An answer's duration is recorded as its body ends, a hair after the client has it all.
    assert!(total <= records.len() as f64 && total >= records.len() as f64 - 3.0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_backend_shows_its_ewma_rise_and_its_weight_fall() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    // Adaptive shuns the slow one, and its estimate decays while nobody asks it (so that it is
    // tried again): a long decay keeps what a scrape reads near its last 300 ms sample.
    // Probes wait long enough for its answers: slow, it stays in rotation.
    let t = Tuning {
        adaptive: "ewma_decay = \"10s\"\nslow_start = \"1s\"\nmin_weight_ratio = 0.05\n".into(),
        health: "interval = \"100ms\"\ntimeout = \"1s\"\n".into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    let _ = paced(server.proxy_addr(), 100, secs(1.0)).await;
    let before = scrape(server.admin_addr()).await;
    bs[2].set_fault(Fault::latency(Duration::from_millis(300)));
    // A burst of 30 at once first: it takes several of them before any answers, and it takes
    // two slow answers in a row to be believed as a peak (one alone is folded in, and what it
    // costs the backend would keep the balancer from asking it again for a while).
    let _ = paced(server.proxy_addr(), 100_000, secs(0.0003)).await;
    let _ = paced(server.proxy_addr(), 100, secs(2.0)).await;
    let after = scrape(server.admin_addr()).await;
    let slow = bs[2].addr();
    let (e0, e1) = (
        before.of(names::BACKEND_EWMA_LATENCY, slow),
        after.of(names::BACKEND_EWMA_LATENCY, slow),
    );
    assert!(e1 > 0.1 && e1 > 10.0 * e0, "EWMA {e0} -> {e1}");
    let (w0, w1) = (
        before.of(names::BACKEND_WEIGHT, slow),
        after.of(names::BACKEND_WEIGHT, slow),
    );
    assert!(w1 < w0 / 3.0, "weight {w0} -> {w1}");
    assert!(w1 < after.of(names::BACKEND_WEIGHT, bs[0].addr()) / 5.0);
    assert_eq!(after.of(names::BACKEND_HEALTHY, slow), 1.0, "slow, not out");
    server.shutdown().await;
}

#[tokio::test]
async fn a_dead_backend_shows_an_open_breaker_and_its_transition() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    let t = Tuning {
        // round_robin keeps offering it requests, and the probes are too slow to act first: the
        // breaker takes it out, at its first connection that cannot be made.
        algorithm: "round_robin",
        health: "interval = \"60s\"\nunhealthy_threshold = 10\n".into(),
        breaker: "consecutive_failures = 3\nopen_base = \"10s\"\nopen_max = \"10s\"\n".into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    let before = scrape(server.admin_addr()).await;
    let dead = bs[2].addr();
    assert_eq!(before.of(names::BACKEND_CIRCUIT_STATE, dead), 0.0);
    bs[2].set_fault(Fault::dead());
    bs[2].wait_listening(false).await;
    let records = paced(server.proxy_addr(), 100, secs(1.0)).await;
    assert!(records.iter().all(|r| r.status == 200), "retries hide it");
    let s = scrape(server.admin_addr()).await;
    let b = dead.to_string();
    assert_eq!(s.of(names::BACKEND_CIRCUIT_STATE, dead), 1.0, "open");
    assert_eq!(s.of(names::BACKEND_HEALTHY, dead), 0.0);
    assert_eq!(s.of(names::BACKEND_WEIGHT, dead), 0.0);
    let to = |state| {
        s.value(
            names::CIRCUIT_TRANSITIONS,
            &[("backend", &b), ("to", state)],
        )
    };
    assert_eq!(to("open"), 1.0);
    assert_eq!(to("half_open"), 0.0, "open for 10 s");
    assert!(
        s.value(
            names::UPSTREAM_FAILURES,
            &[("backend", &b), ("kind", "connect")]
        ) >= 1.0
    );
    for live in [bs[0].addr(), bs[1].addr()] {
        assert_eq!(s.of(names::BACKEND_CIRCUIT_STATE, live), 0.0);
        assert_eq!(s.of(names::BACKEND_HEALTHY, live), 1.0);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn status_says_what_metrics_says() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[1].set_fault(Fault::latency(Duration::from_millis(40)));
    let server = start(&tuned(&bs, &Tuning::default())).await;
    bs[2].set_fault(Fault::dead());
    let _ = paced(server.proxy_addr(), 100, secs(1.5)).await;
    let m = scrape(server.admin_addr()).await;
    let a = get(&client(), server.admin_addr(), "/status", None).await;
    assert_eq!(a.status, 200);
    let doc: Json = serde_json::from_str(&a.body).unwrap();
    let backends = doc["upstreams"][0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3);
    // The two reads are a few milliseconds apart: estimates decay a little in between.
    let near = |a: f64, b: f64| (a - b).abs() <= 0.05 * a.abs().max(b.abs()) + 1e-9;
    for st in backends {
        let addr: SocketAddr = st["address"].as_str().unwrap().parse().unwrap();
        let f = |k: &str| st[k].as_f64().unwrap();
        assert_eq!(f("static_weight"), m.of(names::BACKEND_STATIC_WEIGHT, addr));
        assert_eq!(f("inflight"), m.of(names::BACKEND_INFLIGHT, addr));
        let healthy = if st["healthy"].as_bool().unwrap() {
            1.0
        } else {
            0.0
        };
        assert_eq!(healthy, m.of(names::BACKEND_HEALTHY, addr));
        let state = match st["circuit_state"].as_str().unwrap() {
            "closed" => 0.0,
            "open" => 1.0,
            "half_open" => 2.0,
            other => panic!("circuit state {other}"),
        };
        assert_eq!(state, m.of(names::BACKEND_CIRCUIT_STATE, addr));
        for (key, name) in [
            ("weight", names::BACKEND_WEIGHT),
            ("ewma_latency_seconds", names::BACKEND_EWMA_LATENCY),
            ("success_rate", names::BACKEND_SUCCESS_RATE),
        ] {
            let (j, p) = (f(key), m.of(name, addr));
            assert!(near(j, p), "{addr} {key}: /status {j}, /metrics {p}");
        }
    }
    let dead = backends
        .iter()
        .find(|b| b["address"] == bs[2].addr().to_string())
        .unwrap();
    assert_eq!(
        dead["healthy"], false,
        "one backend out, so zeros are compared too: {dead}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_admin_and_proxy_listeners_serve_nothing_of_each_other() {
    let bs = backends(1).await;
    let server = start(&one_upstream("round_robin", &bs, &[], "")).await;
    let c = client();
    // On the proxy, admin paths are paths like any other: the backend answers them.
    for path in ["/metrics", "/status"] {
        let a = get(&c, server.proxy_addr(), path, None).await;
        assert_eq!(a.backend.as_deref(), Some("b0"), "{path}: {a:?}");
        assert!(!a.body.contains("fulcrum_"), "{path}: {}", a.body);
    }
    assert_eq!(bs[0].requests(), 2);
    // On the admin listener, proxied paths and hosts reach no backend (a site's name is not
    // one the admin listener answers to at all).
    for (path, host, status) in [
        ("/", None, 404),
        ("/echo", None, 404),
        ("/", Some("web.example.com"), 403),
    ] {
        let a = get(&c, server.admin_addr(), path, host).await;
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.backend, None);
    }
    let a = get(&c, server.admin_addr(), "/metrics", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        bs[0].requests(),
        2,
        "no request reached the backend from /admin"
    );
    server.shutdown().await;
}

fn is_access(e: &Json) -> bool {
    e["target"] == "fulcrum::access"
}

async fn echo(c: &TestClient, proxy: SocketAddr, id: Option<&str>) -> (String, Json) {
    let mut req = http::Request::get(format!("http://{proxy}/echo?q=1"));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let a = collect(c.request(req).await.unwrap()).await;
    assert_eq!(a.status, 200);
    let returned = a.headers["x-request-id"].to_str().unwrap().to_string();
    (returned, serde_json::from_str(&a.body).unwrap())
}

#[tokio::test]
async fn the_access_log_names_every_request_and_state_changes_name_the_backend() {
    let bs = backends(2).await;
    let (mut f, proxy) = Fulcrum::start(&binary_config(&bs, ""), "info").await;
    let c = client();

    let (kept, seen_by_backend) = echo(&c, proxy, Some("client-id-42")).await;
    assert_eq!(kept, "client-id-42");
    assert_eq!(
        seen_by_backend["headers"]["x-request-id"][0],
        "client-id-42"
    );
    let e = f.until(is_access).await;
    let fields = &e["fields"];
    assert_eq!(e["level"], "INFO");
    assert_eq!(fields["request_id"], "client-id-42");
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["path"], "/echo");
    assert_eq!(fields["upstream"], "web");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["tries"], 1);
    assert_eq!(fields["client"], "127.0.0.1");
    let backend = fields["backend"].as_str().unwrap();
    assert!(bs.iter().any(|b| b.addr().to_string() == backend), "{e}");
    assert!(fields["duration_ms"].as_f64().unwrap() >= 0.0, "{e}");

    let (made, seen_by_backend) = echo(&c, proxy, None).await;
    assert_eq!(made.len(), 32, "a generated id: {made}");
    assert_eq!(seen_by_backend["headers"]["x-request-id"][0], made.as_str());
    let e = f.until(is_access).await;
    assert_eq!(e["fields"]["request_id"], made.as_str());

    // Kill one backend: the probes take it out, and the log says which.
    bs[1].set_fault(Fault::dead());
    let dead = bs[1].addr().to_string();
    let e = f
        .until(|e| {
            message(e).contains("out of rotation") && e["fields"]["backend"] == dead.as_str()
        })
        .await;
    assert_eq!(e["level"], "INFO", "{e}");
    assert_eq!(e["fields"]["upstream"], "web");
    f.until(|e| message(e).contains("backing off") && e["fields"]["backend"] == dead.as_str())
        .await;

    let all = f.stop().await;
    assert!(all.iter().any(|e| message(e) == "fulcrum stopped"));
}

#[tokio::test]
async fn the_access_log_turns_off_by_config_or_by_filter() {
    let bs = backends(1).await;
    for (name, extra, filter) in [
        ("config", "[log]\naccess = false", "info"),
        ("filter", "", "info,fulcrum::access=off"),
    ] {
        let (f, proxy) = Fulcrum::start(&binary_config(&bs, extra), filter).await;
        let c = client();
        for _ in 0..3 {
            let (id, _) = echo(&c, proxy, None).await;
            assert_eq!(id.len(), 32, "ids are made with the log off too");
        }
        // Stopping drains every connection, so any access event would be out before exit.
        let all = f.stop().await;
        assert!(!all.iter().any(is_access), "{name}: {all:#?}");
        assert!(
            all.iter().any(|e| message(e) == "fulcrum stopped"),
            "{name}"
        );
    }
}

#[test]
fn the_grafana_dashboard_parses_and_names_only_served_metrics() {
    let text = include_str!("../config/grafana-dashboard.json");
    let doc: Json = serde_json::from_str(text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&doc, &mut exprs);
    assert!(exprs.len() >= 4, "{exprs:?}");
    let mut used = std::collections::BTreeSet::new();
    for e in &exprs {
        for token in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !token.starts_with("fulcrum_") {
                continue;
            }
            let known = metrics::ALL.iter().any(|&(name, kind, _, _)| {
                token == name
                    || (kind == Kind::Histogram
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|sfx| token.strip_suffix(sfx) == Some(name)))
            });
            assert!(
                known,
                "the dashboard names {token}, which fulcrum does not serve"
            );
            used.insert(token.to_string());
        }
    }
    for needed in [
        names::BACKEND_WEIGHT,
        names::BACKEND_CIRCUIT_STATE,
        names::BACKEND_SUCCESS_RATE,
    ] {
        assert!(used.contains(needed), "the dashboard shows no {needed}");
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("histogram_quantile(0.99") && e.contains("_bucket")),
        "no p99 panel"
    );
}

fn collect_exprs(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Json::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Json::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
