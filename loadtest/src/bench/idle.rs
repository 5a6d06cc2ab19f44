//! The memory a proxy spends on idle clients: open N keep-alive connections, each with one
//! request answered (so the proxy has served it, not just accepted it), hold them, and read the
//! proxy's resident memory against what it held before.

use super::load::{Conn, REQUEST};
use super::procfs::Tree;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Connections opened at once: below the listen backlog, so none is dropped by the kernel.
const OPENERS: usize = 64;

/// The proxy's memory with and without the idle connections.
#[derive(Debug, Clone, Copy)]
pub struct IdleMemory {
    /// Connections asked for.
    pub wanted: usize,
    /// Connections opened and answered.
    pub held: usize,
    /// Resident bytes before.
    pub before: u64,
    /// Resident bytes while they are held.
    pub with: u64,
}

impl IdleMemory {
    /// Bytes over the idle baseline.
    pub fn over(&self) -> u64 {
        self.with.saturating_sub(self.before)
    }
}

/// Opens `n` connections to `addr`, reads `tree`'s memory, and closes them again.
pub async fn measure(addr: SocketAddr, n: usize, tree: &Tree) -> IdleMemory {
    // Let the proxy settle after the load before the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = tree.rss();
    let local = tokio::task::LocalSet::new();
    let held = local
        .run_until(async {
            let openers: Vec<_> = (0..OPENERS)
                .map(|i| {
                    let share = n / OPENERS + usize::from(i < n % OPENERS);
                    tokio::task::spawn_local(open(addr, share))
                })
                .collect();
            let mut held = Vec::with_capacity(n);
            for o in openers {
                if let Ok(conns) = o.await {
                    held.extend(conns);
                }
            }
            held
        })
        .await;
    // Idle means idle for a while: long enough for fulcrum to park them (1 s), as a real
    // keep-alive client between page views would be.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = tree.rss();
    IdleMemory {
        wanted: n,
        held: held.len(),
        before,
        with,
    }
}

async fn open(addr: SocketAddr, n: usize) -> Vec<Conn> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
        else {
            continue;
        };
        let mut conn = Conn::new(stream);
        let answered = tokio::time::timeout(Duration::from_secs(5), conn.exchange(REQUEST)).await;
        if matches!(answered, Ok(Ok(a)) if !a.close) {
            out.push(conn);
        }
    }
    out
}
