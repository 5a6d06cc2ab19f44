//! The fuzz targets' corpora (fuzz/corpus/<target>/), replayed through the targets' own checks:
//! every input the fuzzers kept, and every finding fixed since, stays a regression test here
//! without cargo-fuzz.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>`; how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    n
}

#[test]
fn every_corpus_input_passes_its_targets_checks() {
    for (target, check) in [
        ("request_parser", checks::request_parser as fn(&[u8])),
        ("response_parser", checks::response_parser),
        ("chunked", checks::chunked),
        ("config", checks::config),
    ] {
        assert!(
            replay(target, check) >= 3,
            "{target}'s corpus is nearly empty"
        );
    }
}
