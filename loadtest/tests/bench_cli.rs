//! `loadtest bench --quick` runs every step of the bench against the real fulcrum binary and
//! prints its tables. No figure is asserted: speed is for the bench to report, not for a test.

use std::path::PathBuf;
use std::process::Command;

/// The fulcrum binary `cargo test --workspace` builds beside this crate's.
fn fulcrum() -> PathBuf {
    let beside = PathBuf::from(env!("CARGO_BIN_EXE_loadtest")).with_file_name("fulcrum");
    assert!(
        beside.is_file(),
        "no fulcrum binary at {}: run the suite with `cargo test --workspace`",
        beside.display()
    );
    beside
}

/// Runs `loadtest bench` with `args` against fulcrum, which must succeed: its stdout and stderr.
fn bench(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("bench")
        .args(args)
        .arg("--fulcrum")
        .arg(fulcrum())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn the_quick_bench_runs_and_prints_its_tables() {
    let (stdout, _) = bench(&[
        "--quick",
        "--against",
        "none",
        "--connections",
        "1,4",
        "--idle",
        "200",
    ]);
    for heading in [
        "### one worker each",
        "### default workers",
        "### idle keep-alive client connections",
        "| conns | target | req/s | p50 | p99 | p99.9 | CPU s / 1k req | of it user | peak RSS | errors |",
        "| conns | fulcrum ÷ | req/s | turn by turn | p99 | CPU per request | user CPU per request |",
    ] {
        assert!(
            stdout.contains(heading),
            "{heading:?} missing from:\n{stdout}"
        );
    }
    // A row per target and connection count, each with answers and no error.
    for target in ["direct", "fulcrum"] {
        for conns in [1, 4] {
            let prefix = format!("| {conns} | {target} | ");
            // The figures' rows, not the ratios' (which have fewer columns).
            let rows: Vec<&str> = stdout
                .lines()
                .filter(|l| l.starts_with(&prefix) && l.matches('|').count() == 11)
                .collect();
            assert_eq!(rows.len(), 2, "{prefix} once per worker setting:\n{stdout}");
            for row in rows {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let rate: f64 = cells[3].parse().unwrap();
                assert!(rate > 0.0, "{row}");
                assert_eq!(cells[10], "0", "no errors: {row}");
            }
        }
    }
    assert!(stdout.contains("| fulcrum | 200 of 200 |"), "{stdout}");
}

#[test]
fn an_unknown_proxy_is_refused_before_anything_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "bench",
            "--quick",
            "--against",
            "envoy",
            "--fulcrum",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("envoy"));
}

/// With `--instructions`, fulcrum's instructions per request are counted under valgrind when it
/// is installed; when it is not, the report says how to install it. Either way the rest of the
/// bench runs.
#[test]
fn instructions_are_counted_or_valgrind_is_named() {
    let (stdout, stderr) = bench(&[
        "--quick",
        "--instructions",
        "--against",
        "none",
        "--connections",
        "4",
        "--idle",
        "0",
    ]);
    assert!(stdout.contains("### one worker each"), "{stdout}");
    let installed = ["valgrind", "callgrind_control"]
        .into_iter()
        .all(installed_program);
    if installed {
        assert!(
            stdout.contains("### instructions per request") && stdout.contains("4 connections)"),
            "{stdout}\n{stderr}"
        );
        let row = stdout
            .lines()
            .find(|l| l.starts_with("| fulcrum | ") && l.matches('|').count() == 6)
            .unwrap_or_else(|| panic!("no count for fulcrum:\n{stdout}\n{stderr}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let requests: u64 = cells[2].parse().unwrap();
        let per_request: u64 = cells[3].parse().unwrap();
        assert!(requests > 0, "{row}");
        // A proxied request takes thousands of instructions; a count of nothing or of the
        // whole process's start would be far off.
        assert!((1_000..10_000_000).contains(&per_request), "{row}");
        // fulcrum's runtime takes atomic operations on every request: with objdump to find
        // them, some are counted.
        if installed_program("objdump") {
            let atomics: u64 = cells[5].parse().unwrap_or(0);
            assert!((1..per_request).contains(&atomics), "{row}");
        }
    } else {
        assert!(
            stdout.contains("valgrind is not installed")
                && stdout.contains("apt-get install -y valgrind"),
            "{stdout}"
        );
    }
}

/// Whether `program` is on PATH.
fn installed_program(program: &str) -> bool {
    Command::new("which")
        .arg(program)
        .output()
        .is_ok_and(|o| o.status.success())
}
