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
//!
//! Beside the instructions it counts the atomic read-modify-writes among them (`lock`-prefixed
//! and `xchg` with memory, found with `objdump -d` in the proxy's own binary; its libraries'
//! are left out): each costs some 15–20 cycles and holds back the instructions around it, so
//! two proxies with the same count can differ in time by how many of these they run.

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
    /// Of them, atomic read-modify-writes in the proxy's own binary; `None` when they could
    /// not be told (no `objdump`).
    pub atomics: Option<u64>,
}

impl Counted {
    /// Instructions per 2xx answer.
    pub fn per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.instructions as f64 / self.requests as f64)
    }

    /// Atomic read-modify-writes per 2xx answer.
    pub fn atomics_per_request(&self) -> Option<f64> {
        let atomics = self.atomics?;
        (self.requests > 0).then(|| atomics as f64 / self.requests as f64)
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

/// How long the load of a count runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Load before counting starts.
    pub warmup: Duration,
    /// How long the counted load runs, at least.
    pub count: Duration,
    /// Answers to count, at least: the counted load runs on until they came (for a minute at
    /// most).
    pub least: u64,
}

impl Load {
    /// Under valgrind a proxy answers some 4,000 requests a second: 3 s counts about 12,000.
    pub const FULL: Load = Load {
        warmup: Duration::from_secs(1),
        count: Duration::from_secs(3),
        least: 5_000,
    };

    /// `--quick`: enough to see that counting works.
    pub const QUICK: Load = Load {
        warmup: Duration::from_millis(200),
        count: Duration::from_millis(500),
        least: 50,
    };
}

/// Counts `kind`'s instructions per request: started from `program` under `callgrind` in
/// front of `backends` (its files in `dir`), then driven by `load` at `connections`.
pub async fn measure(
    kind: Kind,
    program: &Path,
    callgrind: &Callgrind,
    backends: &[SocketAddr],
    dir: &Path,
    connections: usize,
    load: Load,
) -> Result<Counted, String> {
    let Load {
        warmup,
        count,
        least,
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
    let tally = drive(proxy.addr, connections, count, least).await;
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
    let atomics = atomics(&text, program).await;
    Ok(Counted {
        proxy: kind,
        connections,
        requests: tally.ok,
        instructions,
        atomics,
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

/// The atomic read-modify-writes `program` ran in `dump`: the counts at the addresses where
/// `objdump -d` finds one. `None` without `objdump`, or when the dump has no counts for
/// `program` under its own path.
async fn atomics(dump: &str, program: &Path) -> Option<u64> {
    let objdump = proxies::find("objdump")?;
    let out = tokio::process::Command::new(objdump)
        .args(["-d", "--no-show-raw-insn"])
        .arg(program)
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let disassembly = String::from_utf8_lossy(&out.stdout);
    let object = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let counts = counts_by_address(dump, &object);
    if counts.is_empty() {
        // The dump names the binary otherwise: no count rather than a count of nothing.
        return None;
    }
    Some(
        atomic_addresses(&disassembly)
            .filter_map(|a| counts.get(&a))
            .sum(),
    )
}

/// The instructions counted at each address of `object` in a callgrind dump written with
/// `--dump-instr=yes`. In that format each cost line starts with its address, absolute (`0x..`)
/// or relative to the line before (`+n`, `-n`, `*` for the same); the line after a `calls=`
/// line is the call's inclusive cost, not the calling instruction's own, and is skipped. Object
/// names are given once with their number (`ob=(1) /path`, or `cob=(1) /path` when the object
/// is first met as a call's target) and then by number alone.
pub fn counts_by_address(dump: &str, object: &Path) -> std::collections::HashMap<u64, u64> {
    let mut names: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut counts = std::collections::HashMap::new();
    let mut ours = false;
    let mut address: u64 = 0;
    let mut call_cost = false;
    for line in dump.lines() {
        // A call's target object may be named first, on its `cob=` line; later `ob=` lines
        // then give its number alone.
        if let Some((id, name)) = line.strip_prefix("cob=").and_then(|r| r.split_once(' ')) {
            names.insert(id, name);
            continue;
        }
        if let Some(rest) = line.strip_prefix("ob=") {
            let (id, name) = match rest.split_once(' ') {
                Some((id, name)) => {
                    names.insert(id, name);
                    (id, Some(name))
                }
                None => (rest, None),
            };
            let name = name.or_else(|| names.get(id).copied());
            ours = name.is_some_and(|n| Path::new(n) == object);
            continue;
        }
        if line.starts_with("calls=") {
            call_cost = true;
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(position) = fields.next() else {
            continue;
        };
        let at = match position.as_bytes().first() {
            Some(b'*') => Some(address),
            Some(b'+') => position[1..].parse::<u64>().ok().map(|d| address + d),
            Some(b'-') => position[1..]
                .parse::<u64>()
                .ok()
                .map(|d| address.wrapping_sub(d)),
            Some(b'0') if position.starts_with("0x") => {
                u64::from_str_radix(&position[2..], 16).ok()
            }
            Some(c) if c.is_ascii_digit() => position.parse().ok(),
            _ => None,
        };
        let Some(at) = at else {
            continue;
        };
        address = at;
        if std::mem::take(&mut call_cost) || !ours {
            continue;
        }
        // The line's source line comes second, its count third.
        if let Some(n) = fields.nth(1).and_then(|n| n.parse::<u64>().ok()) {
            *counts.entry(at).or_insert(0) += n;
        }
    }
    counts
}

/// The addresses of atomic read-modify-writes in `objdump -d` output: `lock`-prefixed
/// instructions, and `xchg` with a memory operand (locked whether it says so or not).
pub fn atomic_addresses(disassembly: &str) -> impl Iterator<Item = u64> + '_ {
    disassembly.lines().filter_map(|line| {
        let (address, rest) = line.split_once(':')?;
        let address = u64::from_str_radix(address.trim(), 16).ok()?;
        let instruction = rest.trim_start();
        let atomic = instruction.starts_with("lock ")
            || (instruction.starts_with("xchg") && instruction.contains('('));
        atomic.then_some(address)
    })
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
            atomics: Some(8),
        };
        assert_eq!(c.per_request(), Some(25.0));
        assert_eq!(c.atomics_per_request(), Some(2.0));
        assert_eq!(Counted { requests: 0, ..c }.per_request(), None);
        assert_eq!(Counted { atomics: None, ..c }.atomics_per_request(), None);
    }

    /// Addresses decoded as the format compresses them, the objects told apart by name or
    /// number, and a call's inclusive cost not taken for the calling instruction's own.
    #[test]
    fn counts_are_read_per_address_of_the_object() {
        let dump = "positions: instr line\nevents: Ir\n\n\
                    ob=(2) /usr/lib/libc.so.6\nfn=(1) memcpy\n0x1000 5 7\n\n\
                    ob=(1) /opt/proxy\nfn=(2) main\n0x2000 10 3\n+4 * 3\n\
                    cfn=(1)\ncalls=3 0x1000 5\n* * 21\n\
                    +2 +1 3\n-6 * 9\n\n\
                    ob=(2)\nfn=(3) free\n0x2004 1 100\n\
                    ob=(1)\nfn=(4) work\n0x3000 1 4\n";
        let counts = counts_by_address(dump, Path::new("/opt/proxy"));
        // 0x2000: 3, then 9 more six before 0x2006; 0x2004, the call: its own 3, not the 21
        // of memcpy under it, nor libc's 100 at the same address; 0x2006: 3; 0x3000: 4.
        assert_eq!(counts.get(&0x2000), Some(&12));
        assert_eq!(counts.get(&0x2004), Some(&3));
        assert_eq!(counts.get(&0x2006), Some(&3));
        assert_eq!(counts.get(&0x3000), Some(&4));
        assert_eq!(counts.get(&0x1000), None);
    }

    /// HAProxy's dumps name its binary first as a call's target (`cob=`), after counting began
    /// inside libc; its own `ob=` lines then give the number alone.
    #[test]
    fn an_object_first_named_as_a_calls_target_is_known_by_its_number() {
        let dump = "positions: instr line\nevents: Ir\n\n\
                    ob=(2) /usr/lib/libc.so.6\nfn=(1) epoll_wait\n0x1000 5 7\n\
                    cob=(1) /opt/proxy\ncfn=(2) main\ncalls=1 0x2000 10\n0x1004 5 30\n\n\
                    ob=(1)\nfn=(2)\n0x2000 10 6\n";
        let counts = counts_by_address(dump, Path::new("/opt/proxy"));
        assert_eq!(counts.get(&0x2000), Some(&6));
        assert_eq!(counts.len(), 1, "{counts:?}");
    }

    #[test]
    fn atomic_instructions_are_the_locked_ones() {
        let disassembly = "\
            0000000000002000 <main>:\n\
            \x20   2000:\tlock incq 0x20(%rax)\n\
            \x20   2004:\tmov    %rax,%rbx\n\
            \x20   2006:\txchg   %eax,(%rbx)\n\
            \x20   2008:\txchg   %ax,%ax\n\
            \x20   200a:\tlock cmpxchg %rcx,0x10(%rdi)\n";
        let found: Vec<u64> = atomic_addresses(disassembly).collect();
        assert_eq!(found, [0x2000, 0x2006, 0x200a]);
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
                "--dump-instr=yes",
                "--callgrind-out-file=/tmp/b/callgrind.out"
            ]
        );
    }
}
