//! Every requirement in the catalogue is checked when the shipped cases run
//! (or by the runner itself), and no case cites an unknown ID. Coverage is
//! what a run emits, not what the cases claim: each case runs on the clean
//! simulator (v1 cases on `sim:v1`) and the requirement IDs of the checks
//! it records are collected, so a built-in check that is removed from the
//! executor shows up here as an uncovered requirement. Rules whose checks
//! only run when a device breaks them (a SET out of ERROR needs a device in
//! ERROR) are looked for again on the simulator with the fault that breaks
//! them.
#![forbid(unsafe_code)]

mod common;

use std::collections::BTreeSet;

use common::{catalogue, run_case};
use results::{CaseResult, Verdict};
use suite::device::sim::{catalogue as faults, Expected};
use suite::requirements;
use suite::scenario::Scenario;

/// The requirement IDs of the checks that ran (applicable, passed or
/// failed) when every case ran on simulators built from `spec`.
fn checked_ids(scenarios: &[Scenario], spec: &str) -> (BTreeSet<String>, usize) {
    let results: Vec<CaseResult> = scenarios.iter().filter_map(|s| run_case(s, spec)).collect();
    let ids = results
        .iter()
        .flat_map(|r| &r.checks)
        .filter(|c| matches!(c.verdict, Verdict::Pass | Verdict::Fail))
        .flat_map(|c| c.ids.iter().cloned())
        .collect();
    (ids, results.len())
}

/// Checked by the runner around every case, not by a scenario step: the
/// kernel log, and the case deadline (a hang needs process isolation).
const RUNNER_IDS: &[&str] = &["KERNEL-01", "KERNEL-02"];

/// INFO requirements that allow behaviour rather than demand it, so no
/// check can fail on them: what a run sees is recorded as a note.
const ALLOWANCES: &[&str] = &["V1-ERR-01", "V1-SAVE-05"];

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

    let (mut checked, ran) = checked_ids(&scenarios, "sim");
    checked.extend(RUNNER_IDS.iter().map(|s| s.to_string()));
    let broken: Vec<_> = faults()
        .iter()
        .filter(|f| f.expected != Expected::Timeout && !checked.contains(f.requirement))
        .collect();
    for fault in broken {
        let spec = format!("sim:v1+v2,fault={}", fault.name);
        checked.extend(checked_ids(&scenarios, &spec).0);
    }
    assert!(ran >= 30, "only {ran} cases ran");
    let stray: Vec<&String> = checked.difference(&known).collect();
    assert!(
        stray.is_empty(),
        "checked but not in the catalogue: {stray:?}"
    );
    let uncovered: Vec<&String> = known
        .difference(&checked)
        .filter(|id| !ALLOWANCES.contains(&id.as_str()))
        .collect();
    assert!(
        uncovered.is_empty(),
        "no check of a catalogue run cites: {uncovered:?}"
    );
    let stale: Vec<&&str> = ALLOWANCES
        .iter()
        .filter(|id| checked.contains(**id))
        .collect();
    assert!(
        stale.is_empty(),
        "checked after all, not an allowance: {stale:?}"
    );
    println!(
        "coverage: {}/{} requirement IDs checked in {ran} cases",
        checked.len(),
        known.len()
    );
}
