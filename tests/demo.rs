//! `fulcrum demo` through the real binary: it starts its three backends and the balancer,
//! prints the addresses, and the proxy, /metrics and /status answer there.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn the_demo_serves_and_prints_where_to_look() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args([
            "--log-format",
            "json",
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut proxy, mut status, mut metrics, mut drain) = (None, None, None, None);
    while proxy.is_none() || status.is_none() || metrics.is_none() || drain.is_none() {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("demo prints its addresses")
            .unwrap()
            .expect("demo still running");
        let url = |l: &str| -> SocketAddr {
            l.split("http://")
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        if line.trim_start().starts_with("proxy:") {
            proxy = Some(url(&line));
        } else if line.trim_start().starts_with("status:") {
            assert!(line.trim_end().ends_with("/status"), "{line}");
            status = Some(url(&line));
        } else if line.trim_start().starts_with("drain:") {
            // curl -s -X PUT http://ADMIN/admin/upstreams/demo/backends/SLOW/state
            //   -H 'Content-Type: application/json' -d '...'
            assert!(
                line.contains("-H 'Content-Type: application/json'"),
                "{line}"
            );
            let url = line.split_whitespace().find(|w| w.starts_with("http://"));
            drain = url.map(str::to_string);
        } else if line.trim_start().starts_with("metrics:") {
            assert!(line.trim_end().ends_with("/metrics"), "{line}");
            metrics = Some(url(&line));
        }
    }
    let (proxy, status, metrics) = (proxy.unwrap(), status.unwrap(), metrics.unwrap());

    let c = client();
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let a = get(&c, proxy, "/", None).await;
        // The flaky backend answers 503 to a fifth of requests, and this frame has no retries.
        assert!(a.status == 200 || a.status == 503, "{a:?}");
        served.insert(a.backend.expect("x-backend"));
    }
    assert!(
        served
            .iter()
            .all(|b| ["fast", "slow", "flaky"].contains(&b.as_str())),
        "{served:?}"
    );
    assert!(served.contains("fast"), "{served:?}");

    let s = get(&c, status, "/status", None).await;
    let doc: serde_json::Value = serde_json::from_str(&s.body).unwrap();
    assert_eq!(doc["upstreams"][0]["backends"].as_array().unwrap().len(), 3);
    let m = get(&c, metrics, "/metrics", None).await;
    assert_eq!(m.status, 200);
    let weights = m
        .body
        .lines()
        .filter(|l| l.starts_with("fulcrum_backend_weight{"))
        .count();
    assert_eq!(weights, 3, "{}", m.body);

    // The printed drain command works: the slow backend is switched to `drain`.
    let req = http::Request::put(drain.unwrap())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"state": "drain"}"#,
        )))
        .unwrap();
    let a = collect(c.request(req).await.unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let s = get(&c, status, "/status", None).await;
    let doc: serde_json::Value = serde_json::from_str(&s.body).unwrap();
    let states: Vec<&str> = doc["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["admin_state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "drain", "ready"]);
    child.kill().await.unwrap();
}
