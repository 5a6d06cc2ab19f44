//! One test per fault of faults.md, over real sockets with the loadtest backend, 3 backends and
//! a few hundred requests each. Retries are not in yet, so these assert what the pool does —
//! shares, ejection, detection and recovery times — not yet what every client sees.

mod common;

use common::*;
use loadtest::Fault;
use std::time::Duration;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[tokio::test]
async fn slow_backend_gets_under_10_percent_once_the_ewma_settles() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[2].set_fault(Fault::latency(Duration::from_millis(100)));
    let server = start(&tuned(&bs, &Tuning::default())).await;
    let settle = paced(server.proxy_addr(), 100, secs(1.0)).await;
    let measured = paced(server.proxy_addr(), 100, secs(2.0)).await;
    assert!(settle.iter().chain(&measured).all(|r| r.status == 200));
    let share = served_by(&measured, "b2") as f64 / measured.len() as f64;
    assert!(share < 0.10, "slow backend share {share}");
    let s = pool_status(&server).await;
    assert!(s.backends[2].weight < s.backends[0].weight / 5.0, "{s:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn one_slow_answer_does_not_cost_a_healthy_backend_its_share() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    // The default time constant: a lone peak, if believed, would take ~10 s to fade.
    let t = Tuning {
        adaptive: "ewma_decay = \"10s\"\nslow_start = \"1s\"\nmin_weight_ratio = 0.05\n".into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    let _ = paced(server.proxy_addr(), 100, secs(1.0)).await;
    // b1 answers exactly one request 40 ms late (a pause of the backend or of the machine): the
    // requests go one at a time, and the fault is lifted as soon as b1 has taken one.
    bs[1].set_fault(Fault::latency(Duration::from_millis(40)));
    let c = client();
    let from = bs[1].requests();
    for _ in 0..100 {
        get(&c, server.proxy_addr(), "/", None).await;
        if bs[1].requests() > from {
            break;
        }
    }
    bs[1].set_fault(Fault::OK);
    assert_eq!(bs[1].requests(), from + 1);
    let records = paced(server.proxy_addr(), 100, secs(2.0)).await;
    assert!(records.iter().all(|r| r.status == 200));
    let share = served_by(&records, "b1") as f64 / records.len() as f64;
    assert!(share > 0.2, "b1's share after one slow answer: {share}");
    server.shutdown().await;
}

#[tokio::test]
async fn errors_open_the_breaker_on_the_rate() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[2].set_fault(Fault::errors(0.5, 503));
    let t = Tuning {
        // round_robin keeps sending it a third, so the breaker sees the volume; and only the
        // rate can trip it: never 1000 failures in a row. The threshold sits below the fault's
        // 50%: at exactly 50% a fair coin stays under it for two seconds in about one run of
        // seven (the arcsine law), and the test would flake.
        algorithm: "round_robin",
        breaker: "consecutive_failures = 1000\nfailure_rate = 0.35\nminimum_requests = 20\n\
                  window = \"2s\"\nopen_base = \"500ms\"\nopen_max = \"5s\"\nhalf_open_requests = 3\n"
            .into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    let records = paced(server.proxy_addr(), 150, secs(2.0)).await;
    let s = pool_status(&server).await;
    assert!(s.backends[2].circuit_opens >= 1, "{s:#?}");
    assert_eq!(s.backends[0].circuit_opens + s.backends[1].circuit_opens, 0);
    // While open it got nothing: well under its round-robin third.
    let b2 = served_by(&records, "b2") as f64 / records.len() as f64;
    assert!(b2 < 0.25, "b2 share {b2}");
    server.shutdown().await;
}

#[tokio::test]
async fn errors_make_the_weight_fall() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[2].set_fault(Fault::errors(0.5, 503));
    // The breaker kept out of it (it would trip on the rate): the weight alone must do it.
    let t = Tuning {
        breaker: "consecutive_failures = 1000\nfailure_rate = 1.0\n".into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    let records = paced(server.proxy_addr(), 150, secs(2.0)).await;
    let s = pool_status(&server).await;
    assert_eq!(s.backends[2].circuit_opens, 0, "{s:#?}");
    // Adaptive samples it so sparsely (a few picks a second) that its success estimate swings
    // with each outcome; its weight and its share are what must fall. A failure counts as twice
    // the latency estimate, so after two in a row b2 costs twice the others and loses every duel
    // until that estimate decays: its weight rests just under half of theirs (latency factor ½),
    // lower while its success estimate is down. Sampled every 100 ms in the second second of 40
    // runs: at most 0.49 of b0's weight in 399 readings of 400, 0.501 in one (and 0.503 once in
    // CI) with the breaker on; 0.501 at most in 25 more with it off. The bound sits above that
    // resting point rather than on it.
    assert!(s.backends[2].weight < 0.6 * s.backends[0].weight, "{s:#?}");
    let share = served_by(&records, "b2") as f64 / records.len() as f64;
    assert!(share < 0.1, "b2 share {share}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_dead_backend_is_out_within_a_second_and_not_tried_while_open() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    let t = Tuning {
        breaker: "consecutive_failures = 5\nopen_base = \"10s\"\nopen_max = \"10s\"\n".into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    let before = paced(server.proxy_addr(), 100, secs(0.5)).await;
    assert!(before.iter().all(|r| r.status == 200));
    bs[1].set_fault(Fault::dead());
    let detecting = paced(server.proxy_addr(), 100, secs(1.0)).await;
    let picks_after_a_second = pool_status(&server).await.backends[1].picks;
    let after = paced(server.proxy_addr(), 100, secs(1.0)).await;
    // Every failure came within the first second after it died.
    assert!(after.iter().all(|r| r.status == 200), "failures after 1 s");
    let failures = detecting.iter().filter(|r| r.status != 200).count();
    assert!(failures <= 10, "{failures} failures while detecting");
    let s = pool_status(&server).await;
    assert_eq!(
        s.backends[1].picks, picks_after_a_second,
        "tried while open"
    );
    assert!(!s.backends[1].healthy, "{s:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_hung_backend_is_avoided_at_once_and_out_within_seconds() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    let server = start(&tuned(&bs, &Tuning::default())).await;
    paced(server.proxy_addr(), 100, secs(0.5)).await;
    bs[1].set_fault(Fault::hang());
    let records = paced(server.proxy_addr(), 100, secs(2.0)).await;
    let picks = pool_status(&server).await.backends[1].picks;
    let later = paced(server.proxy_addr(), 100, secs(1.0)).await;
    let s = pool_status(&server).await;
    // The requests caught by it end by the response timeout (1 s), as 504s; few are caught,
    // because its unanswered requests make it look worse at once.
    let caught: Vec<_> = records.iter().filter(|r| r.status != 200).collect();
    assert!(caught.len() <= 10, "{} caught: {caught:?}", caught.len());
    assert!(
        caught.iter().all(|r| r.status == 504 && r.took < secs(3.0)),
        "{caught:?}"
    );
    assert!(later.iter().all(|r| r.status == 200));
    assert_eq!(s.backends[1].picks, picks, "still picked after 2 s");
    assert!(!s.backends[1].healthy, "{s:#?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_flapping_backend_is_held_out_ever_longer() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    let t = Tuning {
        // round_robin keeps offering it traffic, and the probes never take it out: the breaker
        // alone holds it out. (`adaptive` needs no breaker here: it avoids the backend after its
        // first failure of each dead spell.)
        algorithm: "round_robin",
        health: "interval = \"100ms\"\nunhealthy_threshold = 1000\n".into(),
        breaker: "consecutive_failures = 3\nopen_base = \"200ms\"\nopen_max = \"10s\"\n\
                  half_open_requests = 1\n"
            .into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    let flapping = {
        let b = std::sync::Arc::new(bs);
        let flapper = b.clone();
        let toggles = tokio::spawn(async move {
            for k in 0..12 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                flapper[1].set_fault(if k % 2 == 0 { Fault::dead() } else { Fault::OK });
            }
        });
        let records = paced(server.proxy_addr(), 100, secs(3.6)).await;
        toggles.await.unwrap();
        (b, records)
    };
    let (_bs, records) = flapping;
    let s = pool_status(&server).await;
    let b1 = &s.backends[1];
    assert!(b1.consecutive_trips >= 3, "{b1:#?}");
    assert!(
        b1.open_period_seconds >= 0.8 - 1e-9,
        "open period did not grow: {b1:#?}"
    );
    let share = served_by(&records, "b1") as f64 / records.len() as f64;
    assert!(share < 0.25, "flapping backend share {share}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_recovered_backend_is_found_by_the_probes_and_ramps_up() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[1].set_fault(Fault::dead());
    // Weighted round robin: the share then follows the probes and the ramp alone. Under the
    // latency-driven `adaptive`, one slow answer from b1 on a loaded CI machine cut its late
    // share from the usual third to 4% in one run, which says nothing of the ramp.
    let t = Tuning {
        algorithm: "weighted_round_robin",
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    paced(server.proxy_addr(), 100, secs(1.0)).await;
    assert!(!pool_status(&server).await.backends[1].healthy);

    bs[1].set_fault(Fault::OK);
    let addr = server.proxy_addr();
    let traffic = tokio::spawn(async move { paced(addr, 100, secs(3.0)).await });
    // Found within backoff_max (400 ms, +20% jitter) plus the rise and the trials.
    tokio::time::timeout(secs(2.0), bs[1].wait_requests(1))
        .await
        .expect("back in rotation within 2 s");
    let records = traffic.await.unwrap();
    assert!(
        records.iter().all(|r| r.status == 200),
        "an error while it returned"
    );
    let share = |from: f64, to: f64| {
        let window: Vec<_> = records
            .iter()
            .filter(|r| r.sent >= secs(from) && r.sent < secs(to))
            .cloned()
            .collect();
        served_by(&window, "b1") as f64 / window.len() as f64
    };
    let (early, late) = (share(0.0, 1.0), share(2.0, 3.0));
    assert!(early < late, "no ramp: {early} then {late}");
    assert!(late >= 0.15, "not its share back: {late}");
    server.shutdown().await;
}

#[tokio::test]
async fn all_down_is_an_immediate_503_and_traffic_returns_after() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    let server = start(&tuned(&bs, &Tuning::default())).await;
    paced(server.proxy_addr(), 100, secs(0.5)).await;
    for b in &bs {
        b.set_fault(Fault::dead());
    }
    let down = paced(server.proxy_addr(), 100, secs(1.5)).await;
    let settled: Vec<_> = down.iter().filter(|r| r.sent >= secs(1.0)).collect();
    assert!(!settled.is_empty());
    for r in &settled {
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.took < secs(0.5), "not immediate: {r:?}");
    }
    for b in &bs {
        b.set_fault(Fault::OK);
    }
    let back = paced(server.proxy_addr(), 100, secs(3.0)).await;
    let first_ok = back
        .iter()
        .find(|r| r.status == 200)
        .expect("traffic came back");
    assert!(
        first_ok.sent < secs(2.0),
        "back only at {:?}",
        first_ok.sent
    );
    assert!(back
        .iter()
        .filter(|r| r.sent >= secs(2.0))
        .all(|r| r.status == 200));
    server.shutdown().await;
}

#[tokio::test]
async fn tcp_probes_only_connect() {
    let _timed = one_at_a_time().await;
    let bs = backends(1).await;
    bs[0].set_health_fault(Fault::errors(1.0, 503));
    // The same backend behind two upstreams: one probes over HTTP, one by connecting.
    let up = |name: &str, host: &str, kind: &str| {
        format!(
            "[[upstreams]]\nname = \"{name}\"\nhosts = [\"{host}\"]\n{}\
             [upstreams.health]\nkind = \"{kind}\"\ninterval = \"50ms\"\nbackoff_base = \"50ms\"\n\
             unhealthy_threshold = 2\n",
            backend_tables(&bs, &[])
        )
    };
    let cfg = config(
        &[
            up("web", "tcp.test", "tcp"),
            up("http", "http.test", "http"),
        ]
        .concat(),
    );
    let server = start(&cfg).await;
    // Four HTTP probes seen: the http upstream has taken it out, and the tcp upstream has probed
    // as often, without a single request.
    tokio::time::timeout(PATIENCE, bs[0].wait_health_requests(4))
        .await
        .unwrap();
    let c = client();
    let tcp = get(&c, server.proxy_addr(), "/", Some("tcp.test")).await;
    let http = get(&c, server.proxy_addr(), "/", Some("http.test")).await;
    assert_eq!(tcp.status, 200);
    assert_eq!(http.status, 503);
    let s = pool_status(&server).await;
    assert!(
        s.backends[0].healthy && s.backends[0].probe_failures == 0,
        "{s:#?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn at_max_inflight_a_request_gets_an_immediate_503_not_a_queue() {
    let bs = backends(1).await;
    bs[0].set_fault(Fault::hang());
    let server = start(&one_upstream(
        "round_robin",
        &bs,
        &[],
        "[upstreams.circuit_breaker]\nmax_inflight = 2\n[upstreams.timeouts]\nresponse = \"10s\"\n",
    ))
    .await;
    let addr = server.proxy_addr();
    let c = client();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { get(&c, addr, "/", None).await })
        })
        .collect();
    bs[0].wait_requests(2).await;
    let asked = tokio::time::Instant::now();
    let a = get(&c, addr, "/", None).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.body.contains("all backends at capacity"), "{}", a.body);
    assert!(asked.elapsed() < secs(1.0), "not immediate");
    assert_eq!(bs[0].requests(), 2, "the third never reached the backend");
    for h in held {
        h.abort();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_half_open_backend_gets_its_trials_though_its_estimates_are_poor() {
    let _timed = one_at_a_time().await;
    let bs = backends(3).await;
    bs[2].set_fault(Fault::errors(1.0, 503));
    let t = Tuning {
        // Adaptive shuns it after its first failure: one failure must be enough to trip.
        breaker: "consecutive_failures = 1\nopen_base = \"300ms\"\nopen_max = \"300ms\"\n\
                  half_open_requests = 3\n"
            .into(),
        // A slow decay keeps the failures' penalty latency in its estimate: by cost alone,
        // adaptive would not pick it for a long while.
        adaptive: "ewma_decay = \"60s\"\nslow_start = \"1s\"\nmin_weight_ratio = 0.05\n".into(),
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    paced(server.proxy_addr(), 100, secs(1.0)).await;
    assert!(pool_status(&server).await.backends[2].circuit_opens >= 1);
    bs[2].set_fault(Fault::OK);
    let records = paced(server.proxy_addr(), 100, secs(1.5)).await;
    assert!(records.iter().all(|r| r.status == 200));
    let s = pool_status(&server).await;
    assert_eq!(s.backends[2].circuit_state, "closed", "{s:#?}");
    assert!(served_by(&records, "b2") >= 3, "its trials were served");
    server.shutdown().await;
}
