//! The bench's backends: the fastest honest HTTP/1.1 server hyper makes, a fixed small answer to
//! every request, so the proxy in front is what the bench measures. They run in a process of
//! their own (`loadtest bench-backends`), on one thread, and [`Backends`] is that process seen
//! from the bench.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;

/// The answer to every request.
pub const BODY: &[u8] = b"hello from a bench backend\n";

/// Binds `count` listeners on loopback ephemeral ports.
pub async fn bind(count: usize) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
    }
    Ok(out)
}

/// Serves every listener until stdin closes (the bench holds the other end, so the backends
/// cannot outlive it).
pub async fn serve(listeners: Vec<TcpListener>) {
    for l in listeners {
        tokio::spawn(accept(l));
    }
    let mut sink = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
}

async fn accept(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and the like: wait for a connection to close rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

/// The backends' process, started by the bench.
pub struct Backends {
    child: tokio::process::Child,
    addrs: Vec<SocketAddr>,
}

impl Backends {
    /// Starts `loadtest bench-backends --count N` from `exe` and reads where they listen.
    pub async fn start(exe: &Path, count: usize) -> Result<Backends, String> {
        let mut child = tokio::process::Command::new(exe)
            .args(["bench-backends", "--count", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let stdout = child.stdout.take().ok_or("the backends have no stdout")?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let read = reader.read_line(&mut line);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err("the backends did not say where they listen".into()),
        }
        let addrs = parse_listening(&line)
            .ok_or_else(|| format!("the backends said {line:?}, not where they listen"))?;
        Ok(Backends { child, addrs })
    }

    /// Where they listen.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The backends' process.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The line `loadtest bench-backends` prints: `listening ADDR ADDR ...`.
pub fn listening_line(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("listening {}", list.join(" "))
}

fn parse_listening(line: &str) -> Option<Vec<SocketAddr>> {
    let rest = line.trim().strip_prefix("listening ")?;
    let addrs: Option<Vec<SocketAddr>> = rest.split(' ').map(|a| a.parse().ok()).collect();
    addrs.filter(|a| !a.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_round_trips() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
        ];
        assert_eq!(
            parse_listening(&format!("{}\n", listening_line(&addrs))),
            Some(addrs)
        );
        assert_eq!(parse_listening("listening "), None);
        assert_eq!(parse_listening("ready"), None);
    }
}
