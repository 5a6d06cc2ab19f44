//! Instructions per request, counted by valgrind's callgrind (`loadtest bench --instructions`).
//! On a shared VM the timed measures move by 10–20% from one run to the next, more than most
//! changes to a proxy's code; the instructions a proxy executes for the same requests move by
//! about 1%. Each proxy (one worker) runs under callgrind with counting off, takes a
//! warm-up of load, then counts only while the closed-loop load of the counted window runs:
//! its instructions over the 2xx answers in that window. Counting stops after the last answer
//! is in, so the requests still in flight when the window closed add their part (a few of
//! thousands). User-space instructions only: the kernel's work (about two thirds of a proxied
//! request's CPU on loopback) is not seen, and an instruction is not a cycle (cache misses and
//! contention are not counted), so this ranks code, not machines.

use super::load::{self as driver, Tally, Window};
use super::proxies::{self, Callgrind, Kind, Setup, Workers};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// How to install what counting needs, on Debian or Ubuntu.
pub const INSTALL_HINT: &str = "sudo apt-get install -y valgrind";

/// One proxy's count.
#[derive(Debug, Clone, Copy)]
pub struct Counted {
    /// Which proxy.
    pub proxy: Kind,
    /// Concurrent connections of the counted load.
    pub connections: usize,
    /// 2xx answers in the counted window.
    pub requests: u64,
    /// User-space instructions executed while counting.
    pub instructions: u64,
}

impl Counted {
    /// Instructions per 2xx answer.
    pub fn per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.instructions as f64 / self.requests as f64)
    }
}

/// valgrind and callgrind_control, when both are installed (found as the proxies are).
pub fn tools(out: PathBuf) -> Option<Callgrind> {
    Some(Callgrind {
        valgrind: proxies::find("valgrind")?,
        control: proxies::find("callgrind_control")?,
        out,
    })
}

/// The load a count is taken under.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Concurrent connections.
    pub connections: usize,
    /// Load before counting starts.
    pub warmup: Duration,
    /// How long the counted load runs, at least.
    pub count: Duration,
    /// Answers to count, at least: the counted load runs on until they came (for a minute at
    /// most).
    pub least: u64,
}

/// Counts `kind`'s instructions per request: started from `program` under `callgrind` in
/// front of `backends` (its files in `dir`), then driven by `load`.
pub async fn measure(
    kind: Kind,
    program: &Path,
    callgrind: &Callgrind,
    backends: &[SocketAddr],
    dir: &Path,
    load: Load,
) -> Result<Counted, String> {
    let Load {
        connections,
        warmup,
        count,
        ..
    } = load;
    let setup = Setup {
        backends,
        dir,
        workers: Workers::One,
        max_connections: connections + 1000,
        files: 4096,
        counted: Some(callgrind),
    };
    let proxy = proxies::start(kind, program, &setup).await?;
    // Until every connection has had answers: valgrind translates each code path the first
    // time it runs, and a debug build on a busy machine may take most of a second per request.
    drive(proxy.addr, connections, warmup, connections as u64).await;
    control(callgrind, proxy.pid, &["--instr=on"]).await?;
    let tally = drive(proxy.addr, connections, count, load.least).await;
    control(callgrind, proxy.pid, &["--instr=off"]).await?;
    control(callgrind, proxy.pid, &["--dump"]).await?;
    let dumped = dump_file(&callgrind.out);
    let text = read_dump(&dumped).await;
    proxy.stop().await;
    let text = text?;
    let instructions = totals(&text).ok_or_else(|| {
        format!(
            "{}: no `totals:` line in callgrind's dump",
            dumped.display()
        )
    })?;
    if tally.ok == 0 {
        return Err(format!(
            "{kind} answered no request under valgrind ({} errors)",
            tally.errors
        ));
    }
    Ok(Counted {
        proxy: kind,
        connections,
        requests: tally.ok,
        instructions,
    })
}

/// Load on `addr` for `window`, then for more windows until `least` answers came or a minute
/// passed; what the clients saw in all of them.
async fn drive(addr: SocketAddr, connections: usize, window: Duration, least: u64) -> Tally {
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut all = Tally::empty();
    loop {
        let now = Instant::now();
        let tally = driver::closed_loop(
            &[addr],
            connections,
            Window {
                start: now,
                end: now + window,
            },
        )
        .await;
        all.absorb(&tally);
        if all.ok >= least || Instant::now() > give_up {
            return all;
        }
    }
}

/// Runs `callgrind_control` with `args` on `pid`.
async fn control(callgrind: &Callgrind, pid: u32, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(&callgrind.control)
        .args(args)
        .arg(pid.to_string())
        .output()
        .await
        .map_err(|e| format!("{}: {e}", callgrind.control.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {} {pid}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where callgrind writes its first dump of a run whose counts go to `out`.
fn dump_file(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// The dump's text, once callgrind has written it whole (its `totals:` line comes last):
/// `callgrind_control` returns when the request is taken, not when the file is done.
async fn read_dump(path: &Path) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if totals(&text).is_some() {
                return Ok(text);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: callgrind wrote no counts in 30 s",
                path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The instructions counted in a callgrind dump: its `totals:` line (the one event recorded,
/// `Ir`).
pub fn totals(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_the_totals_line() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\npid: 22719\nevents: Ir\n\
                    summary: 0\n\nfn=(1) main\n3 5\n\ntotals: 557937955\n";
        assert_eq!(totals(dump), Some(557_937_955));
        assert_eq!(
            totals("events: Ir\nsummary: 0\n"),
            None,
            "not written whole yet"
        );
        assert_eq!(totals("totals: many\n"), None);
    }

    #[test]
    fn the_first_dump_adds_one_to_the_name() {
        assert_eq!(
            dump_file(Path::new("/tmp/x/callgrind.out")),
            PathBuf::from("/tmp/x/callgrind.out.1")
        );
    }

    #[test]
    fn per_request_divides_by_the_answers() {
        let c = Counted {
            proxy: Kind::Fulcrum,
            connections: 16,
            requests: 4,
            instructions: 100,
        };
        assert_eq!(c.per_request(), Some(25.0));
        assert_eq!(Counted { requests: 0, ..c }.per_request(), None);
    }

    /// Counting off until switched on, the counts going where the bench reads them.
    #[test]
    fn the_wrapper_counts_nothing_until_switched_on() {
        let c = Callgrind {
            valgrind: "/usr/bin/valgrind".into(),
            control: "/usr/bin/callgrind_control".into(),
            out: "/tmp/b/callgrind.out".into(),
        };
        let w: Vec<String> = c
            .wrapper()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            w,
            [
                "/usr/bin/valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                "--callgrind-out-file=/tmp/b/callgrind.out"
            ]
        );
    }
}
