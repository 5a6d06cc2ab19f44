//! Which top-level modules of `src/` name which (`crate::<module>` anywhere in a module's files,
//! tests included), and the import circles among them. The layers are meant to point one way
//! (main → cli → server → proxy / admin → pool → policy); the circles still there are listed
//! below, to be taken apart, and no new one may appear. `cargo test --test layers -- --nocapture`
//! prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The circles left: each a set of top-level modules that reach one another.
const KNOWN_CIRCLES: &[&[&str]] = &[&["admin", "connection", "control", "proxy", "server"]];

/// Module → the modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name != "main" && name != "lib" {
            modules.insert(name);
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for module in &modules {
        let mut files = Vec::new();
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        collect(&src.join(module), &mut files);
        let named = edges.entry(module.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let target: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&target) && target != *module {
                    named.insert(target);
                }
            }
        }
    }
    edges
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The strongly connected parts with more than one module, by reachability (a graph of twenty
/// nodes needs nothing cleverer).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for m in edges.keys() {
        if found.iter().any(|c| c.contains(m)) {
            continue;
        }
        let from_m = reach(m);
        let circle: BTreeSet<String> = from_m
            .iter()
            .filter(|other| reach(other).contains(m))
            .cloned()
            .collect();
        if !circle.is_empty() {
            found.push(circle);
        }
    }
    found
}

#[test]
fn no_import_circle_but_the_known_ones() {
    let edges = graph();
    for (m, to) in &edges {
        println!(
            "{m} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let found = circles(&edges);
    let known: Vec<BTreeSet<String>> = KNOWN_CIRCLES
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(
        found, known,
        "import circles among src/'s top-level modules"
    );
}

#[test]
fn telemetry_and_policy_sit_below_the_pool() {
    let edges = graph();
    let below = |m: &str| edges.get(m).cloned().unwrap_or_default();
    assert!(
        below("policy").iter().all(|m| m == "config"),
        "{:?}",
        below("policy")
    );
    assert!(
        !below("telemetry").contains("pool"),
        "{:?}",
        below("telemetry")
    );
}
