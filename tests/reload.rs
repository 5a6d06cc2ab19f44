//! Reloads by difference, in-process over real sockets: a kept backend keeps its actor, its
//! estimates and its pooled connection; a removed one drains its request in flight; an added one
//! starts in slow start; upstreams come and go; an invalid file changes nothing; and no request
//! fails while reloads follow each other under load.

mod common;

use common::*;
use fulcrum::config::Config;
use fulcrum::control::ReloadError;
use fulcrum::pool::PoolMsg;
use fulcrum::server::Server;
use loadtest::{Backend, Fault};
use std::time::Duration;

/// An upstream table: `name`, matching `prefix`, over these backends with their weights.
fn upstream(name: &str, prefix: &str, backends: &[(&Backend, u32)]) -> String {
    let mut t = format!(
        "[[upstreams]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nalgorithm = \"round_robin\"\n"
    );
    for (b, w) in backends {
        t.push_str(&format!(
            "  [[upstreams.backends]]\n  address = \"{}\"\n  weight = {w}\n",
            b.addr()
        ));
    }
    t.push_str("  [upstreams.adaptive]\n  slow_start = \"2s\"\n");
    t
}

/// A file with upstream `web` over these backends.
fn web(backends: &[(&Backend, u32)]) -> String {
    file_text(&upstream("web", "/", backends))
}

/// A whole file around these upstream tables.
fn file_text(upstreams: &str) -> String {
    format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{upstreams}"
    )
}

async fn start_on(file: &ConfigFile) -> Server {
    let text = std::fs::read_to_string(&file.0).unwrap();
    let config = Config::from_toml(&text).unwrap();
    Server::start_from(&config, Some(file.0.clone()), Some(7))
        .await
        .unwrap()
}

/// The actor serving backend `id` of upstream `web`.
async fn actor_id(server: &Server, id: fulcrum::policy::balance::BackendId) -> ractor::ActorId {
    let pool = server.pool("web").unwrap();
    match pool
        .call(|reply| PoolMsg::BackendActor { id, reply }, Some(PATIENCE))
        .await
        .unwrap()
    {
        ractor::rpc::CallResult::Success(Some(a)) => a.get_id(),
        other => panic!("no actor for backend {id}: {other:?}"),
    }
}

#[tokio::test]
async fn a_kept_backend_keeps_its_actor_estimates_and_connection_and_an_added_one_ramps() {
    let bs = backends(3).await;
    let file = ConfigFile::new(&web(&[(&bs[0], 1), (&bs[1], 1)]));
    let server = start_on(&file).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, server.proxy_addr(), "/", None).await.status, 200);
    }
    let actor = actor_id(&server, 0).await;
    let before = pool_status(&server).await;
    let connections = bs[0].traffic_connections();
    assert_eq!(
        connections, 1,
        "one keep-alive connection carried b0's requests"
    );

    // b1 goes, b2 comes, b0 stays with a new weight; the settings change too.
    file.write(&file_text(
        &upstream("web", "/", &[(&bs[0], 3), (&bs[2], 1)]).replace(
            "[upstreams.adaptive]",
            "[upstreams.circuit_breaker]\n  consecutive_failures = 9\n  [upstreams.adaptive]",
        ),
    ));
    let done = server.reload().await.unwrap();
    let web = &done.backends["web"];
    assert_eq!(web.kept, vec![bs[0].addr().to_string()]);
    assert_eq!(web.removed, vec![bs[1].addr().to_string()]);
    assert_eq!(web.added, vec![bs[2].addr().to_string()]);

    assert_eq!(actor_id(&server, 0).await, actor, "b0 kept its actor");
    let after = pool_status(&server).await;
    let b0 = &after.backends[0];
    assert_eq!(b0.address, bs[0].addr().to_string());
    assert_eq!(b0.static_weight, 3);
    assert_eq!(b0.picks, before.backends[0].picks, "b0 kept its counters");
    assert!(b0.ewma_latency_seconds > 0.0);
    // b1 had nothing in flight: gone at once. b2 ramps.
    assert_eq!(after.backends.len(), 2, "{after:#?}");
    let b2 = &after.backends[1];
    assert_eq!(b2.address, bs[2].addr().to_string());
    assert!(b2.slow_start_factor < 1.0, "{b2:#?}");

    let b1_before = bs[1].requests();
    for _ in 0..10 {
        assert_eq!(get(&c, server.proxy_addr(), "/", None).await.status, 200);
    }
    assert_eq!(
        bs[1].requests(),
        b1_before,
        "a removed backend gets nothing"
    );
    assert!(bs[2].requests() > 0, "the added backend takes traffic");
    assert_eq!(
        bs[0].traffic_connections(),
        connections,
        "b0's pooled connection was kept"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_removed_backend_finishes_its_request_in_flight() {
    let bs = backends(2).await;
    let file = ConfigFile::new(&web(&[(&bs[0], 1), (&bs[1], 1)]));
    let server = start_on(&file).await;
    bs[0].set_health_fault(Fault::OK);
    bs[0].set_fault(Fault::latency(Duration::from_millis(1000)));
    // Round robin starts at b0: the first request is the slow one.
    let addr = server.proxy_addr();
    let slow = tokio::spawn(async move { get(&client(), addr, "/", None).await });
    bs[0].wait_requests(1).await;
    file.write(&web(&[(&bs[1], 1)]));
    let done = server.reload().await.unwrap();
    assert_eq!(done.backends["web"].removed, vec![bs[0].addr().to_string()]);
    let s = pool_status(&server).await;
    assert!(
        s.backends[0].removing && s.backends[0].inflight == 1,
        "{s:#?}"
    );
    let a = tokio::time::timeout(PATIENCE, slow).await.unwrap().unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.backend.as_deref(), Some("b0"));
    for _ in 0..5 {
        let a = get(&client(), addr, "/", None).await;
        assert_eq!(a.backend.as_deref(), Some("b1"));
    }
    server.shutdown().await;
}

/// The backend that answers `/api/x`.
async fn api_answered_by(server: &Server) -> String {
    let a = get(&client(), server.proxy_addr(), "/api/x", None).await;
    a.backend.unwrap_or_default()
}

#[tokio::test]
async fn upstreams_come_and_go_with_the_file() {
    let bs = backends(2).await;
    let web = upstream("web", "/", &[(&bs[0], 1)]);
    let file = ConfigFile::new(&file_text(&web));
    let server = start_on(&file).await;
    assert_eq!(api_answered_by(&server).await, "b0");
    file.write(&file_text(&format!(
        "{web}{}",
        upstream("api", "/api", &[(&bs[1], 1)])
    )));
    let done = server.reload().await.unwrap();
    assert_eq!(done.upstreams_added, vec!["api".to_string()]);
    assert_eq!(api_answered_by(&server).await, "b1");
    file.write(&file_text(&web));
    let done = server.reload().await.unwrap();
    assert_eq!(done.upstreams_removed, vec!["api".to_string()]);
    assert_eq!(api_answered_by(&server).await, "b0");
    assert!(server.pool("api").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_says_why() {
    let bs = backends(2).await;
    let good = web(&[(&bs[0], 1), (&bs[1], 1)]);
    let file = ConfigFile::new(&good);
    let server = start_on(&file).await;
    let before = pool_status(&server).await;
    file.write(&good.replace("weight = 1", "weight = 0"));
    match server.reload().await {
        Err(ReloadError::Invalid(e)) => {
            let text = e.to_string();
            assert!(text.contains("upstreams[0].backends[0].weight"), "{text}");
        }
        other => panic!("an invalid file was applied: {other:?}"),
    }
    file.write("this is not toml [");
    assert!(matches!(
        server.reload().await,
        Err(ReloadError::Invalid(_))
    ));
    let after = pool_status(&server).await;
    assert_eq!(after.backends.len(), before.backends.len());
    assert_eq!(after.backends[0].static_weight, 1);
    assert_eq!(
        get(&client(), server.proxy_addr(), "/", None).await.status,
        200
    );
    // Without a file there is nothing to reload.
    let embedded = start(&one_upstream("round_robin", &bs, &[], "")).await;
    assert!(matches!(embedded.reload().await, Err(ReloadError::NoFile)));
    embedded.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn no_request_fails_while_reloads_follow_each_other_under_load() {
    let _timed = one_at_a_time().await;
    let bs = backends(4).await;
    let layouts = [
        upstream("web", "/", &[(&bs[0], 1), (&bs[1], 1)]),
        upstream("web", "/", &[(&bs[1], 2), (&bs[2], 1)]),
        format!(
            "{}{}",
            upstream("web", "/", &[(&bs[2], 1), (&bs[3], 1), (&bs[0], 1)]),
            upstream("other", "/other", &[(&bs[1], 1)])
        ),
        upstream("web", "/", &[(&bs[3], 1)]),
    ];
    let file = ConfigFile::new(&file_text(&layouts[0]));
    let server = start_on(&file).await;
    let load = paced(server.proxy_addr(), 200, Duration::from_secs(3));
    let reloads = async {
        let mut n = 0;
        for round in 0..10 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            file.write(&file_text(&layouts[(round + 1) % layouts.len()]));
            server.reload().await.unwrap();
            n += 1;
        }
        n
    };
    let (records, n) = tokio::join!(load, reloads);
    assert_eq!(n, 10);
    let failed: Vec<_> = records.iter().filter(|r| r.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        records.len(),
        &failed[..failed.len().min(5)]
    );
    for b in &bs {
        assert!(b.requests() > 0, "{} got no traffic", b.id());
    }
    server.shutdown().await;
}
