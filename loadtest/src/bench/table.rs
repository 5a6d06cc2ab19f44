//! The bench's report: markdown tables, readable in a terminal and pasted as they are into
//! BENCHMARKS.md. One table of figures per worker setting, then fulcrum's ratios to each other
//! target at each connection count, then the idle-connection memory.

use super::proxies::{Kind, Workers};
use super::{Cell, Results};
use std::fmt::Write;
use std::time::Duration;

/// How a worker setting is named in the tables.
pub fn workers(w: Workers) -> &'static str {
    match w {
        Workers::One => "one worker each",
        Workers::Default => "default workers",
    }
}

/// The whole report.
pub fn render(r: &Results) -> String {
    let mut out = String::new();
    for w in [Workers::One, Workers::Default] {
        let _ = writeln!(out, "### {} ({})\n", workers(w), setting(w));
        out.push_str(&figures(r, w));
        out.push('\n');
        let _ = writeln!(
            out,
            "fulcrum ÷ each other target (req/s: above 1 is fulcrum faster; p99 and CPU per \
             request: below 1 is fulcrum better):\n"
        );
        out.push_str(&ratios(r, w));
        out.push('\n');
    }
    if !r.idle.is_empty() {
        out.push_str("### idle keep-alive client connections (one worker each)\n\n");
        out.push_str(&idle(r));
        out.push('\n');
    }
    if let Some(first) = r.instructions.first() {
        let _ = writeln!(
            out,
            "### instructions per request (valgrind's callgrind, user space; one worker each, {} \
             connections)\n",
            first.connections
        );
        out.push_str(&instructions(r));
        out.push('\n');
    }
    if r.no_valgrind {
        let _ = writeln!(
            out,
            "valgrind is not installed, so no instructions were counted: {}",
            super::instructions::INSTALL_HINT
        );
    }
    for kind in &r.missing {
        let _ = writeln!(
            out,
            "{kind} is not installed, so it was not measured: {}",
            kind.install_hint()
        );
    }
    for (kind, why) in &r.failed {
        let _ = writeln!(out, "{kind} did not start: {why}");
    }
    for (kind, why) in &r.uncounted {
        let _ = writeln!(out, "{kind}: instructions not counted: {why}");
    }
    if !r.versions.is_empty() {
        let v: Vec<String> = r.versions.iter().map(|(_, v)| v.clone()).collect();
        let _ = writeln!(out, "measured: {}", v.join("; "));
    }
    out
}

fn setting(w: Workers) -> &'static str {
    match w {
        Workers::One => "fulcrum worker_threads = 1, nginx worker_processes 1, HAProxy nbthread 1",
        Workers::Default => {
            "fulcrum worker_threads = 0, nginx worker_processes auto, HAProxy nbthread unset"
        }
    }
}

/// Each proxy's count, and fulcrum's over it (below 1: fulcrum runs fewer instructions).
fn instructions(r: &Results) -> String {
    let mut out = String::from(
        "| target | requests counted | instructions per request | fulcrum ÷ it | atomic ops per request |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let fulcrum = r
        .instructions
        .iter()
        .find(|c| c.proxy == Kind::Fulcrum)
        .and_then(|c| c.per_request());
    for c in &r.instructions {
        let per = c.per_request();
        let ratio = match (fulcrum, per) {
            (Some(f), Some(p)) if p > 0.0 => format!("{:.2}", f / p),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {} |",
            c.proxy,
            c.requests,
            per.map_or("-".into(), |p| format!("{p:.0}")),
            c.atomics_per_request()
                .map_or("-".into(), |a| format!("{a:.0}")),
        );
    }
    out
}

fn name(c: &Cell) -> &'static str {
    c.proxy.map_or("direct", Kind::name)
}

/// The cells of worker setting `w` in the order connection count, then direct, fulcrum, the
/// others.
fn rows(r: &Results, w: Workers) -> Vec<&Cell> {
    let mut rows: Vec<&Cell> = r.cells.iter().filter(|c| c.workers == w).collect();
    rows.sort_by_key(|c| (c.connections, rank(c.proxy)));
    rows
}

fn rank(p: Option<Kind>) -> u8 {
    match p {
        None => 0,
        Some(Kind::Fulcrum) => 1,
        Some(Kind::Nginx) => 2,
        Some(Kind::Haproxy) => 3,
    }
}

fn figures(r: &Results, w: Workers) -> String {
    let mut out = String::from(
        "| conns | target | req/s | p50 | p99 | p99.9 | CPU s / 1k req | of it user | peak RSS | errors |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let seconds = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.4}"));
    for c in rows(r, w) {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            c.connections,
            name(c),
            c.rate(),
            latency(c.tally.percentile(50.0)),
            latency(c.tally.percentile(99.0)),
            latency(c.tally.percentile(99.9)),
            seconds(c.cpu_per_1000()),
            seconds(c.user_per_1000()),
            c.peak_rss.map_or("-".into(), mib),
            c.tally.errors,
        );
    }
    out
}

fn ratios(r: &Results, w: Workers) -> String {
    let mut out = String::from(
        "| conns | fulcrum ÷ | req/s | turn by turn | p99 | CPU per request | user CPU per request |\n\
         |---:|---|---:|---:|---:|---:|---:|\n",
    );
    let rows = rows(r, w);
    for f in rows.iter().filter(|c| c.proxy == Some(Kind::Fulcrum)) {
        for other in rows
            .iter()
            .filter(|c| c.connections == f.connections && c.proxy != Some(Kind::Fulcrum))
        {
            let cpu = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let p99 = |c: &Cell| c.tally.percentile(99.0).as_secs_f64();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.connections,
                name(other),
                ratio(f.rate(), other.rate()),
                by_turn(f, other),
                ratio(p99(f), p99(other)),
                cpu(f.cpu_per_1000(), other.cpu_per_1000()),
                cpu(f.user_per_1000(), other.user_per_1000()),
            );
        }
    }
    out
}

/// fulcrum's req/s ÷ `other`'s in each turn: the two were measured seconds apart, so the spread
/// of these is what the machine's drift does to the ratio, and a difference within it is noise.
fn by_turn(fulcrum: &Cell, other: &Cell) -> String {
    let each: Vec<String> = fulcrum
        .turns
        .iter()
        .zip(&other.turns)
        .map(|(&f, &o)| ratio(f, o))
        .collect();
    if each.is_empty() {
        "-".into()
    } else {
        each.join(" / ")
    }
}

fn idle(r: &Results) -> String {
    let mut out = String::from(
        "| target | connections held | RSS before | RSS with them | over idle | per connection |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for i in &r.idle {
        let m = i.memory;
        let per = if m.held > 0 {
            format!("{:.1} KiB", m.over() as f64 / 1024.0 / m.held as f64)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "| {} | {} of {} | {} | {} | {} | {} |",
            i.proxy,
            m.held,
            m.wanted,
            mib(m.before),
            mib(m.with),
            mib(m.over()),
            per
        );
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// A latency to three significant figures in the unit that suits it.
pub fn latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::idle::IdleMemory;
    use crate::bench::instructions::Counted;
    use crate::bench::load::Tally;
    use crate::bench::procfs::Cpu;
    use crate::bench::Idle;

    fn cell(proxy: Option<Kind>, workers: Workers, conns: usize, ok: u64, cpu: f64) -> Cell {
        let mut tally = Tally::empty();
        tally.ok = ok;
        for i in 1..=100u64 {
            tally.latency.record(i * 1000).unwrap();
        }
        Cell {
            proxy,
            workers,
            connections: conns,
            tally,
            seconds: 1.0,
            // A quarter of it in the proxy's own code.
            cpu: proxy.map(|_| Cpu {
                user: cpu / 4.0,
                system: cpu * 3.0 / 4.0,
            }),
            peak_rss: proxy.map(|_| 20 << 20),
            turns: vec![ok as f64],
        }
    }

    #[test]
    fn the_report_has_every_target_ratios_and_the_missing_ones() {
        let mut r = Results {
            cells: vec![
                cell(None, Workers::One, 16, 100_000, 0.0),
                cell(Some(Kind::Fulcrum), Workers::One, 16, 50_000, 1.0),
                cell(Some(Kind::Nginx), Workers::One, 16, 40_000, 2.0),
                cell(Some(Kind::Fulcrum), Workers::Default, 16, 60_000, 1.0),
            ],
            idle: vec![Idle {
                proxy: Kind::Fulcrum,
                memory: IdleMemory {
                    wanted: 10,
                    held: 10,
                    before: 10 << 20,
                    with: 11 << 20,
                },
            }],
            missing: vec![Kind::Haproxy],
            failed: vec![],
            versions: vec![(Kind::Fulcrum, "fulcrum 0.1.0".into())],
            instructions: vec![
                Counted {
                    proxy: Kind::Fulcrum,
                    connections: 16,
                    requests: 1000,
                    instructions: 26_000_000,
                    atomics: Some(186_000),
                },
                Counted {
                    proxy: Kind::Nginx,
                    connections: 16,
                    requests: 2000,
                    instructions: 34_000_000,
                    atomics: None,
                },
            ],
            no_valgrind: false,
            uncounted: vec![],
        };
        // Two turns each: fulcrum's varied, nginx's and the backends' did not.
        r.cells[0].turns = vec![100_000.0, 100_000.0];
        r.cells[1].turns = vec![46_000.0, 54_000.0];
        r.cells[2].turns = vec![40_000.0, 40_000.0];
        let t = render(&r);
        assert!(
            t.contains(
                "| 16 | fulcrum | 50000 | 50 µs | 99 µs | 100 µs | 0.0200 | 0.0050 | 20.0 MiB | 0 |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| 16 | nginx | 1.25 | 1.15 / 1.35 | 1.00 | 0.40 | 0.40 |"),
            "{t}"
        );
        assert!(
            t.contains("| 16 | direct | 0.50 | 0.46 / 0.54 | 1.00 | - | - |"),
            "{t}"
        );
        assert!(
            t.contains("| fulcrum | 10 of 10 | 10.0 MiB | 11.0 MiB | 1.0 MiB | 102.4 KiB |"),
            "{t}"
        );
        assert!(t.contains("haproxy is not installed") && t.contains("apt-get install -y haproxy"));
        assert!(t.contains("measured: fulcrum 0.1.0"));
        assert!(t.contains("one worker each, 16 connections)"), "{t}");
        assert!(t.contains("| fulcrum | 1000 | 26000 | 1.00 | 186 |"), "{t}");
        assert!(t.contains("| nginx | 2000 | 17000 | 1.53 | - |"), "{t}");
        assert!(!t.contains("valgrind is not installed"));
        let none = render(&Results {
            no_valgrind: true,
            uncounted: vec![(Kind::Haproxy, "no answer".into())],
            ..Results::default()
        });
        assert!(
            none.contains("valgrind is not installed")
                && none.contains("apt-get install -y valgrind"),
            "{none}"
        );
        assert!(
            none.contains("haproxy: instructions not counted: no answer"),
            "{none}"
        );
    }

    #[test]
    fn latencies_take_the_unit_that_suits_them() {
        assert_eq!(latency(Duration::from_nanos(4_560)), "4.56 µs");
        assert_eq!(latency(Duration::from_micros(123)), "123 µs");
        assert_eq!(latency(Duration::from_micros(4_560)), "4.56 ms");
    }
}
