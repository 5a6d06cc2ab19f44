//! The fault matrix in CI: every scenario of `loadtest/scenarios/` in its quick form (a few
//! seconds each), at each of its rates, run by the loadtest runner against the real fulcrum
//! binary on its default config, must meet all its expectations. `loadtest run --all` runs the
//! same files at full length (loadtest/RESULTS.md).

mod common;

use common::one_at_a_time;
use loadtest::report::Report;
use loadtest::run::{self, Options};
use loadtest::scenario::Scenario;
use std::path::{Path, PathBuf};

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/scenarios")
}

/// Runs scenario `name` in its quick form at each of its rates; panics with the report of the
/// first run that fails.
async fn holds(name: &str) {
    let scenario = Scenario::load(&folder().join(format!("{name}.toml")))
        .unwrap_or_else(|e| panic!("{e}"))
        .quick();
    let opts = Options {
        fulcrum: PathBuf::from(env!("CARGO_BIN_EXE_fulcrum")),
        progress: false,
    };
    for at_rate in scenario.runs() {
        // One at a time: each drives up to 1,500 requests a second on a 2-core machine.
        let _timed = one_at_a_time().await;
        let run = run::run(&at_rate, true, &opts)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", at_rate.name));
        // What a failed report shows of fulcrum's state is read from the real /status: it must
        // be there for every backend, or a failure in CI would say nothing of why.
        assert!(
            run.samples
                .last()
                .is_some_and(|s| !s.views.is_empty() && s.views.iter().all(Option::is_some)),
            "{}: /status gave no view of some backend",
            at_rate.name
        );
        let report = Report::new(&run);
        assert!(report.pass, "{}", report.text());
    }
}

macro_rules! scenarios {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                holds($file).await;
            }
        )*

        /// Every scenario file has its test here, so none is left out of CI.
        #[test]
        fn every_scenario_file_is_run() {
            let mut files: Vec<String> = std::fs::read_dir(folder())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
                .collect();
            files.sort();
            let mut tested = vec![$($file.to_string()),*];
            tested.sort();
            assert_eq!(files, tested);
        }
    };
}

scenarios! {
    slow => "slow",
    errors => "errors",
    dead => "dead",
    hang => "hang",
    reset => "reset",
    flap => "flap",
    recover => "recover",
    all_down => "all-down",
    overload => "overload",
    post => "post",
    latency_step => "latency-step",
    slow_one_worker => "slow-one-worker",
    hang_then_dead => "hang-then-dead",
    cycle => "cycle",
}
