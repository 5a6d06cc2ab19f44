//! The fault-injecting backend over real sockets: each fault does what faults.md says, faults
//! switch while it runs, /health is faulted apart, and the binary's control listener works.

use loadtest::{Backend, Fault};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const PATIENCE: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// One HTTP/1.1 exchange on a fresh connection: (status, headers and body as text).
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidData, format!("no status in {text:?}"))
        })?;
    Ok((status, text))
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    timeout(PATIENCE, exchange(addr, "GET", path, ""))
        .await
        .expect("answer in time")
}

#[tokio::test]
async fn answers_naming_itself_and_counts() {
    let b = Backend::start("alpha", loopback()).await.unwrap();
    let (status, text) = get(b.addr(), "/anything?x=1").await.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("x-backend: alpha"), "{text}");
    assert!(text.ends_with("hello from alpha\n"), "{text}");
    let (status, text) = get(b.addr(), "/health").await.unwrap();
    assert_eq!((status, text.ends_with("ok\n")), (200, true));
    assert_eq!((b.requests(), b.health_requests()), (1, 1));
}

#[tokio::test]
async fn dead_refuses_connects_and_comes_back_on_the_same_port() {
    let b = Backend::start("d", loopback()).await.unwrap();
    let addr = b.addr();
    // A keep-alive connection open before the fault...
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    open.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    b.set_fault(Fault::dead());
    // ...is closed by it: reading drains the rest of the answer, then ends.
    let mut rest = Vec::new();
    let closed = timeout(PATIENCE, open.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(closed.is_ok() || closed.is_err_and(|e| e.kind() == ErrorKind::ConnectionReset));
    // New connects are refused.
    timeout(PATIENCE, b.wait_listening(false)).await.unwrap();
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    b.set_fault(Fault::OK);
    timeout(PATIENCE, b.wait_listening(true)).await.unwrap();
    assert_eq!(get(addr, "/").await.unwrap().0, 200);
}

#[tokio::test]
async fn hang_reads_the_request_and_never_answers() {
    let b = Backend::start_with("h", loopback(), Fault::hang())
        .await
        .unwrap();
    let answer = timeout(
        Duration::from_millis(300),
        exchange(b.addr(), "POST", "/", "abc"),
    )
    .await;
    assert!(answer.is_err(), "answered: {answer:?}");
    assert_eq!(b.requests(), 1);
    assert_eq!(b.body_bytes(), 3);
}

#[tokio::test]
async fn reset_reads_the_request_then_resets() {
    let b = Backend::start_with("r", loopback(), Fault::reset())
        .await
        .unwrap();
    let err = get(b.addr(), "/").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(b.requests(), 1);
}

#[tokio::test]
async fn errors_answer_the_status_to_the_share_asked() {
    let b = Backend::start_with("e", loopback(), Fault::errors(1.0, 500))
        .await
        .unwrap();
    let (status, text) = get(b.addr(), "/").await.unwrap();
    assert_eq!(status, 500);
    assert!(text.contains("error from e"));
    b.set_fault(Fault::errors(0.5, 503));
    let mut errors = 0;
    for _ in 0..400 {
        if get(b.addr(), "/").await.unwrap().0 == 503 {
            errors += 1;
        }
    }
    // Binomial(400, 0.5): six standard deviations either side.
    assert!((140..=260).contains(&errors), "{errors} of 400");
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let b = Backend::start_with("l", loopback(), Fault::latency(Duration::from_millis(100)))
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(get(b.addr(), "/health").await.unwrap().0, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn health_follows_the_traffic_fault_less_its_errors() {
    let b = Backend::start_with("f", loopback(), Fault::errors(1.0, 503))
        .await
        .unwrap();
    assert_eq!(get(b.addr(), "/").await.unwrap().0, 503);
    assert_eq!(get(b.addr(), "/health").await.unwrap().0, 200);
    b.set_fault(Fault::hang());
    assert!(timeout(
        Duration::from_millis(200),
        exchange(b.addr(), "GET", "/health", "")
    )
    .await
    .is_err());
}

#[tokio::test]
async fn health_is_faulted_apart_from_traffic() {
    let b = Backend::start("x", loopback()).await.unwrap();
    b.set_health_fault(Fault::errors(1.0, 503));
    assert_eq!(get(b.addr(), "/health").await.unwrap().0, 503);
    assert_eq!(get(b.addr(), "/").await.unwrap().0, 200);
    b.set_health_fault(Fault::hang());
    assert!(timeout(
        Duration::from_millis(200),
        exchange(b.addr(), "GET", "/health", "")
    )
    .await
    .is_err());
    assert_eq!(get(b.addr(), "/").await.unwrap().0, 200);
    b.follow_traffic_fault();
    assert_eq!(get(b.addr(), "/health").await.unwrap().0, 200);
}

/// Reads the next line, which must start with `prefix`, and returns the address after `http://`.
async fn address_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    prefix: &str,
) -> SocketAddr {
    let line = timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.starts_with(prefix), "{line}");
    let url = line.split("http://").nth(1).unwrap();
    url.split_whitespace().next().unwrap().parse().unwrap()
}

/// `loadtest backend --control`: the fault switches over HTTP.
#[tokio::test]
async fn the_binary_switches_faults_through_its_control_listener() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--id",
            "cli",
            "--control",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let backend = address_line(&mut lines, "backend cli listening").await;
    let control = address_line(&mut lines, "control on").await;

    assert_eq!(get(backend, "/").await.unwrap().0, 200);
    let (status, text) = timeout(
        PATIENCE,
        exchange(control, "POST", "/fault", "errors 1.0 502"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(get(backend, "/").await.unwrap().0, 502);
    let (status, _) = exchange(control, "POST", "/fault", "explode")
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (_, stats) = exchange(control, "GET", "/stats", "").await.unwrap();
    assert!(stats.contains("\"requests\":2"), "{stats}");
    assert!(stats.contains("\"fault\":\"errors 1 502\""), "{stats}");
    exchange(control, "POST", "/fault", "dead").await.unwrap();
    // The switch is applied before the control answer is sent; the listener closes right after.
    let (_, fault) = exchange(control, "GET", "/fault", "").await.unwrap();
    assert!(fault.contains("traffic: dead"), "{fault}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_timeout() {
    let b = Backend::start("k", loopback()).await.unwrap();
    b.set_keep_alive_timeout(Some(Duration::from_millis(100)));
    let mut s = TcpStream::connect(b.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Keep-alive is on (no Connection: close): only the timeout ends the connection.
    let mut out = Vec::new();
    timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("closed")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("hello from k\n"),
        "{text}"
    );
}
