//! `fulcrum check` through the real binary: every bad file in tests/bad-configs/ is refused with
//! exit 1 and a message naming its key (each file's first line says what to expect); the
//! documented example passes with a one-line summary; a bad command line exits 2; a `RUST_LOG`
//! that is not a filter stops `run` and `demo` with its reason before anything starts.

use std::path::Path;
use std::process::{Command, Output};

fn fulcrum(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(args)
        .output()
        .expect("run fulcrum")
}

/// What a bad file's error must contain: its `# expect:` line; the empty file has no room for one.
fn expectation(path: &Path, text: &str) -> String {
    if text.is_empty() {
        return "upstreams: at least one [[upstreams]] table is required".to_string();
    }
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no `# expect:` first line", path.display()))
        .to_string()
}

#[test]
fn every_bad_config_is_refused_naming_the_key() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "only {} bad files", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = expectation(&path, &text);
        let out = fulcrum(&["check", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        assert!(
            stderr.contains(&expect),
            "{}: expected {expect:?} in:\n{stderr}",
            path.display()
        );
        assert!(
            out.stdout.is_empty(),
            "{}: printed a summary",
            path.display()
        );
    }
}

#[test]
fn every_error_in_a_file_is_reported_at_once() {
    let dir = tempdir();
    let path = dir.join("many.toml");
    std::fs::write(
        &path,
        "[[upstreams]]\nname = \"a\"\n[[upstreams.backends]]\naddress = \"x\"\nweight = 0\n\
         [upstreams.circuit_breaker]\nfailure_rate = 2.0\n",
    )
    .unwrap();
    let out = fulcrum(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    for key in [
        "upstreams[0].backends[0].address",
        "upstreams[0].backends[0].weight",
        "upstreams[0].circuit_breaker.failure_rate",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[test]
fn the_documented_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fulcrum.toml");
    let out = fulcrum(&["check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("1 upstream(s), 2 backend(s)"), "{stdout}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = fulcrum(&["check", "--config", "/nonexistent/fulcrum.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/fulcrum.toml"));
}

#[test]
fn a_bad_command_line_exits_2() {
    assert_eq!(fulcrum(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(fulcrum(&["check"]).status.code(), Some(2));
    assert_eq!(fulcrum(&["--log-format", "xml"]).status.code(), Some(2));
}

#[test]
fn run_refuses_a_bad_config_before_listening() {
    let dir = tempdir();
    let path = dir.join("bad.toml");
    // A valid listener, a bad upstream: nothing may bind.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &path,
        format!("[listen]\naddress = \"127.0.0.1:{port}\"\n[[upstreams]]\nname = \"a\"\n"),
    )
    .unwrap();
    let out = fulcrum(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstreams[0].backends"));
}

#[test]
fn a_listener_that_cannot_bind_exits_1_with_the_reason() {
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = dir.join("taken.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [[upstreams]]\nname = \"a\"\n[[upstreams.backends]]\naddress = \"127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    let out = fulcrum(&[
        "--log-format",
        "json",
        "run",
        "--config",
        path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (listen.address)"
        )),
        "{stderr}"
    );
}

/// A fresh directory under the target dir (no tempfile crate needed for two files).
/// Runs fulcrum with `RUST_LOG` = `filter`; its exit code and stderr, or a failure if it is
/// still running after 20 s (it started serving).
fn with_log_filter(args: &[&str], filter: &str) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(args)
        .env("RUST_LOG", filter)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fulcrum");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(out) => {
            let out = out.expect("wait for fulcrum");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("fulcrum {args:?} with RUST_LOG={filter:?} started instead of refusing it");
        }
    }
}

#[test]
fn a_log_filter_that_does_not_parse_stops_fulcrum_before_it_starts() {
    let dir = tempdir();
    let path = dir.join("good.toml");
    std::fs::write(
        &path,
        "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[upstreams]]\nname = \"u\"\n[[upstreams.backends]]\naddress = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let config = path.to_str().unwrap();
    for args in [
        vec!["run", "--config", config],
        vec!["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
    ] {
        let (code, stderr) = with_log_filter(&args, "fulcrum=loud");
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("RUST_LOG=\"fulcrum=loud\" is not a log filter"),
            "{args:?}: {stderr}"
        );
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "check-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
