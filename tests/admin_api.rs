//! The admin API over HTTP on the admin listener: list, add (in slow start), remove (draining),
//! the operator's `ready`/`not_ready`/`drain` switch, reload with its 400, the bearer token, and
//! changes that last until the next reload.

mod common;

use bytes::Bytes;
use common::*;
use fulcrum::config::Config;
use fulcrum::server::Server;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value as Json};
use std::net::SocketAddr;
use std::time::Duration;

/// One admin request; the status and the JSON answer.
async fn admin(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Json>,
    token: Option<&str>,
) -> (StatusCode, Json) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let req = req
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let a = collect(client().request(req).await.unwrap()).await;
    let json = serde_json::from_str(&a.body).unwrap_or(Json::String(a.body.clone()));
    (a.status, json)
}

fn backends_of(list: &Json) -> Vec<(String, String)> {
    list["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["admin_state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn backends_are_listed_added_and_removed_with_clear_errors() {
    let bs = backends(3).await;
    let server = start(&one_upstream("round_robin", &bs[..2], &[], "")).await;
    let a = server.admin_addr();
    let (status, list) = admin(a, Method::GET, "/admin/upstreams", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["upstreams"][0]["name"], "web");
    assert_eq!(backends_of(&list).len(), 2);

    let b2 = bs[2].addr().to_string();
    let (status, body) = admin(
        a,
        Method::POST,
        "/admin/upstreams/web/backends",
        Some(json!({"address": b2, "weight": 2})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let s = pool_status(&server).await;
    assert_eq!(s.backends[2].address, b2);
    assert_eq!(s.backends[2].static_weight, 2);
    assert!(
        s.backends[2].slow_start_factor < 1.0,
        "starts in slow start"
    );
    for _ in 0..6 {
        assert_eq!(
            get(&client(), server.proxy_addr(), "/", None).await.status,
            200
        );
    }
    assert!(bs[2].requests() > 0, "the added backend takes traffic");

    // Refusals name the problem.
    let cases = [
        (
            json!({"address": b2}),
            "/admin/upstreams/web/backends",
            409,
            "already",
        ),
        (
            json!({"address": "nohost"}),
            "/admin/upstreams/web/backends",
            400,
            "address",
        ),
        (
            json!({"address": "127.0.0.1:1", "weight": 0}),
            "/admin/upstreams/web/backends",
            400,
            "weight",
        ),
        (
            json!({"adress": "127.0.0.1:1"}),
            "/admin/upstreams/web/backends",
            400,
            "unknown field",
        ),
        (
            json!({"address": "127.0.0.1:1"}),
            "/admin/upstreams/nope/backends",
            404,
            "nope",
        ),
    ];
    for (body, path, want, says) in cases {
        let (status, answer) = admin(a, Method::POST, path, Some(body.clone()), None).await;
        assert_eq!(status, want, "{body} → {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }

    let path = format!("/admin/upstreams/web/backends/{}", bs[0].addr());
    let (status, body) = admin(a, Method::DELETE, &path, None, None).await;
    assert_eq!(status, 202, "{body}");
    let (_, list) = admin(a, Method::GET, "/admin/upstreams", None, None).await;
    let left: Vec<String> = backends_of(&list).into_iter().map(|(a, _)| a).collect();
    assert!(!left.contains(&bs[0].addr().to_string()), "{list}");
    let before = bs[0].requests();
    for _ in 0..6 {
        assert_eq!(
            get(&client(), server.proxy_addr(), "/", None).await.status,
            200
        );
    }
    assert_eq!(bs[0].requests(), before, "a removed backend gets nothing");
    let (status, _) = admin(a, Method::DELETE, &path, None, None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn drain_and_not_ready_take_a_backend_out_and_ready_brings_it_back() {
    let bs = backends(2).await;
    let t = Tuning {
        algorithm: "round_robin",
        ..Tuning::default()
    };
    let server = start(&tuned(&bs, &t)).await;
    let a = server.admin_addr();
    let state = |addr: SocketAddr| format!("/admin/upstreams/web/backends/{addr}/state");
    for switch in ["drain", "not_ready"] {
        let (status, body) = admin(
            a,
            Method::PUT,
            &state(bs[0].addr()),
            Some(json!({"state": switch})),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (_, list) = admin(a, Method::GET, "/status", None, None).await;
        assert_eq!(backends_of(&list)[0].1, switch);
        let before = bs[0].requests();
        for _ in 0..6 {
            let r = get(&client(), server.proxy_addr(), "/", None).await;
            assert_eq!(r.backend.as_deref(), Some("b1"), "{switch}");
        }
        assert_eq!(bs[0].requests(), before);
    }
    // not_ready pauses the probes (quick ones here: 100 ms apart).
    let probes = bs[0].health_requests();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        bs[0].health_requests() <= probes + 1,
        "probed while not_ready"
    );
    let (status, _) = admin(
        a,
        Method::PUT,
        &state(bs[0].addr()),
        Some(json!({"state": "ready"})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let s = pool_status(&server).await;
    assert_eq!(s.backends[0].admin_state, "ready");
    bs[0].wait_health_requests(probes + 2).await;
    let mut back = 0;
    for _ in 0..10 {
        if get(&client(), server.proxy_addr(), "/", None)
            .await
            .backend
            .as_deref()
            == Some("b0")
        {
            back += 1;
        }
    }
    assert!(back > 0, "b0 takes traffic again");
    let (status, body) = admin(
        a,
        Method::PUT,
        &state(bs[0].addr()),
        Some(json!({"state": "maint"})),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn api_changes_last_until_a_reload_and_a_bad_reload_is_a_400() {
    let bs = backends(2).await;
    let text = |backends: &[loadtest::Backend]| {
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [[upstreams]]\nname = \"web\"\nalgorithm = \"round_robin\"\n{}",
            backend_tables(backends, &[])
        )
    };
    let file = ConfigFile::new(&text(&bs[..1]));
    let config = Config::load(&file.0).unwrap();
    let server = Server::start_from(&config, Some(file.0.clone()), Some(1))
        .await
        .unwrap();
    let a = server.admin_addr();
    let b1 = bs[1].addr().to_string();
    let (status, _) = admin(
        a,
        Method::POST,
        "/admin/upstreams/web/backends",
        Some(json!({"address": b1})),
        None,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(pool_status(&server).await.backends.len(), 2);

    file.write("[[upstreams]]\nname = \"web\"\nbackends = 3\n");
    let (status, body) = admin(a, Method::POST, "/admin/reload", None, None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("backends"),
        "{body}"
    );
    assert_eq!(
        pool_status(&server).await.backends.len(),
        2,
        "nothing changed"
    );

    // The file is the truth again: the backend added through the API goes.
    file.write(&text(&bs[..1]));
    let (status, body) = admin(a, Method::POST, "/admin/reload", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backends"]["web"]["removed"][0], b1);
    assert_eq!(pool_status(&server).await.backends.len(), 1);
    let (status, _) = admin(a, Method::GET, "/admin/reload", None, None).await;
    assert_eq!(status, 405);
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_guards_every_admin_endpoint() {
    let bs = backends(1).await;
    let mut cfg = one_upstream("round_robin", &bs, &[], "");
    cfg.admin.token = Some("s3cret".into());
    let server = start(&cfg).await;
    let a = server.admin_addr();
    for path in ["/metrics", "/status", "/admin/upstreams"] {
        for token in [None, Some("wrong"), Some("s3cre")] {
            let (status, _) = admin(a, Method::GET, path, None, token).await;
            assert_eq!(status, 401, "{path} with {token:?}");
        }
        let (status, _) = admin(a, Method::GET, path, None, Some("s3cret")).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _) = admin(a, Method::POST, "/admin/reload", None, None).await;
    assert_eq!(status, 401);
    // The proxy listener is not guarded by the admin token.
    assert_eq!(
        get(&client(), server.proxy_addr(), "/", None).await.status,
        200
    );
    server.shutdown().await;
}

/// An admin request with these extra headers, over a raw socket so that Host can be anything;
/// the status.
async fn raw_admin(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> u16 {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let answer = until_closed(&mut s).await;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[tokio::test]
async fn a_web_page_cannot_change_fulcrum_through_the_admin_listener() {
    let bs = backends(2).await;
    let mut cfg = one_upstream("round_robin", &bs[..1], &[], "");
    cfg.admin.hosts = vec!["fulcrum.internal".to_string()];
    let server = start(&cfg).await;
    let a = server.admin_addr();
    let add = "/admin/upstreams/web/backends";
    let body = json!({"address": bs[1].addr().to_string()}).to_string();
    let host = format!("Host: {a}\r\n");
    let json_type = "Content-Type: application/json\r\n";
    // A form a page can post across origins: not JSON.
    let plain = format!("{host}Content-Type: text/plain\r\n");
    assert_eq!(raw_admin(a, "POST", add, &plain, &body).await, 415);
    assert_eq!(raw_admin(a, "POST", add, &host, &body).await, 415);
    // From another origin, or a page's fetch across sites.
    let evil = format!("{host}{json_type}Origin: http://evil.example\r\n");
    assert_eq!(raw_admin(a, "POST", add, &evil, &body).await, 403);
    let reload = format!("{host}Origin: http://evil.example\r\n");
    assert_eq!(
        raw_admin(a, "POST", "/admin/reload", &reload, "").await,
        403
    );
    let fetched = format!("{host}{json_type}Sec-Fetch-Site: cross-site\r\n");
    assert_eq!(raw_admin(a, "POST", add, &fetched, &body).await, 403);
    // DNS rebinding: a name that is not the operator's, reads included.
    let rebound = format!("Host: evil.example:{}\r\n{json_type}", a.port());
    assert_eq!(raw_admin(a, "POST", add, &rebound, &body).await, 403);
    assert_eq!(raw_admin(a, "GET", "/status", &rebound, "").await, 403);
    assert_eq!(
        pool_status(&server).await.backends.len(),
        1,
        "nothing added"
    );
    // What the operator's own tools send passes: an IP or localhost, or a configured name, the
    // page's own origin, JSON.
    let own = format!("{host}{json_type}Origin: http://{a}\r\n");
    assert_eq!(
        raw_admin(a, "GET", "/status", "Host: localhost\r\n", "").await,
        200
    );
    let named = format!("Host: fulcrum.internal:{}\r\n", a.port());
    assert_eq!(raw_admin(a, "GET", "/status", &named, "").await, 200);
    assert_eq!(raw_admin(a, "POST", add, &own, &body).await, 201);
    assert_eq!(pool_status(&server).await.backends.len(), 2);
    server.shutdown().await;
}
