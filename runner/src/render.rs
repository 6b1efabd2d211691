//! The report files of a run, from the reports crate's renderers.

use reports::{Outcome, RunResults};

/// Every report written at the end of a run, by file name.
pub fn files(results: &RunResults) -> Vec<(&'static str, String)> {
    let mut json = serde_json::to_string_pretty(results).unwrap_or_default();
    json.push('\n');
    vec![("results.json", json)]
}

/// KTAP for `--format ktap`, when the renderer is available.
pub fn ktap(_results: &RunResults) -> Option<String> {
    None
}

/// Counts per device for the terminal.
pub fn summary(results: &RunResults) -> String {
    let mut out = String::new();
    for d in &results.devices {
        let count = |o: Outcome| d.cases.iter().filter(|c| c.outcome == o).count();
        out.push_str(&format!(
            "{}: {} pass, {} warn, {} fail, {} timeout, {} error, {} ignored\n",
            d.spec,
            count(Outcome::Pass),
            count(Outcome::Warn),
            count(Outcome::Fail),
            count(Outcome::Timeout),
            count(Outcome::Error),
            count(Outcome::Ignored)
        ));
    }
    out
}

/// 0 pass, 1 any failure, 4 nothing ran (kselftest).
pub fn exit_code(results: &RunResults) -> i32 {
    let cases = || results.devices.iter().flat_map(|d| &d.cases);
    if cases().any(|c| c.outcome.is_failure()) || results.meta.interrupted.is_some() {
        1
    } else if cases().all(|c| c.outcome == Outcome::Ignored) {
        4
    } else {
        0
    }
}

/// Reads `results.json`.
pub fn read_json(text: &str) -> anyhow::Result<RunResults> {
    Ok(serde_json::from_str(text)?)
}
