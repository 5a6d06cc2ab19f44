//! `loadtest run` refuses bad input before anything runs: exit 2, the file and the key named.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_file_is_exit_2_with_its_name() {
    let (code, err) = run(&["/nonexistent/dead.toml", "--fulcrum", "/bin/true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/dead.toml"), "{err}");
}

#[test]
fn a_bad_scenario_is_exit_2_naming_the_key() {
    let path = std::env::temp_dir().join(format!("loadtest-cli-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[load]\nrate = 100\nduration = \"5s\"\n[[timeline]]\nat = \"1s\"\nbackend = \"b9\"\nfault = \"dead\"\n",
    )
    .unwrap();
    let (code, err) = run(&[path.to_str().unwrap(), "--fulcrum", "/bin/true"]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("timeline[0].backend"), "{err}");
}

#[test]
fn every_shipped_scenario_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let s = loadtest::scenario::Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !s.description.is_empty(),
                "{} says what it shows",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 10, "one scenario per row of faults.md, and post");
}
