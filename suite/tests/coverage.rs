//! Every requirement in the catalogue is checked when the shipped cases run
//! (or by the runner itself), and no case cites an unknown ID. Coverage is
//! what a run emits, not what the cases claim: each case runs on the clean
//! simulator (v1 cases on `sim:v1`) and the requirement IDs of the checks
//! it records are collected, so a built-in check that is removed from the
//! executor shows up here as an uncovered requirement.

mod common;

use std::collections::BTreeSet;

use common::{catalogue, run_case};
use results::Verdict;
use suite::requirements;

/// Checked by the runner around every case, not by a scenario step.
const RUNNER_IDS: &[&str] = &["KERNEL-01"];

#[test]
fn every_requirement_is_checked_by_a_run_of_the_catalogue() {
    let known: BTreeSet<String> = requirements::all().iter().map(|r| r.id.clone()).collect();
    let scenarios = catalogue();
    let cited: BTreeSet<String> = scenarios.iter().flat_map(|s| s.requirement_ids()).collect();
    let unknown: Vec<&String> = cited.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "cited but not in the catalogue: {unknown:?}"
    );

    let mut checked: BTreeSet<String> = RUNNER_IDS.iter().map(|s| s.to_string()).collect();
    let mut ran = 0;
    for s in &scenarios {
        let Some(result) = run_case(s, "sim") else {
            continue;
        };
        ran += 1;
        checked.extend(
            result
                .checks
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Pass | Verdict::Fail))
                .flat_map(|c| c.ids.iter().cloned()),
        );
    }
    assert!(ran >= 30, "only {ran} cases ran");
    let stray: Vec<&String> = checked.difference(&known).collect();
    assert!(
        stray.is_empty(),
        "checked but not in the catalogue: {stray:?}"
    );
    let uncovered: Vec<&String> = known.difference(&checked).collect();
    assert!(
        uncovered.is_empty(),
        "no check of a catalogue run cites: {uncovered:?}"
    );
    println!(
        "coverage: {}/{} requirement IDs checked in {ran} cases",
        checked.len(),
        known.len()
    );
}
