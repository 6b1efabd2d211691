//! Every requirement in the catalogue is checked by at least one shipped
//! case (or by the runner itself), and no case cites an unknown ID.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::Path;

use suite::requirements;
use suite::scenario::{load_all, read_dir, LoadError};

/// Checked by the runner around every case, not by a scenario step.
const RUNNER_IDS: &[&str] = &["KERNEL-01"];

#[test]
fn every_requirement_is_covered_by_a_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cases");
    let files = read_dir(&dir).unwrap();
    let scenarios =
        load_all(files.iter().map(|(f, t)| (f.as_str(), t.as_str()))).unwrap_or_else(|e| {
            panic!(
                "{}",
                e.iter()
                    .map(LoadError::detailed)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    let cited: BTreeSet<String> = scenarios
        .iter()
        .flat_map(|s| s.requirement_ids())
        .chain(RUNNER_IDS.iter().map(|s| s.to_string()))
        .collect();
    let known: BTreeSet<String> = requirements::all().iter().map(|r| r.id.clone()).collect();
    let unknown: Vec<&String> = cited.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "cited but not in the catalogue: {unknown:?}"
    );
    let uncovered: Vec<&String> = known.difference(&cited).collect();
    assert!(uncovered.is_empty(), "no case covers: {uncovered:?}");
    println!("coverage: {}/{} requirement IDs", cited.len(), known.len());
}
