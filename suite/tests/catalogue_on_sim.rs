//! The shipped catalogue against the clean reference simulator: every case
//! that applies passes. (The runner's end-to-end tests do the same through
//! child processes; this runs in process so a failure shows its checks.)
#![forbid(unsafe_code)]

mod common;

use common::{catalogue, run_case};
use results::{CaseResult, Outcome, Verdict};

fn describe(r: &CaseResult) -> String {
    let mut out = format!("{} -> {:?} {:?}\n", r.name, r.outcome, r.reason);
    for c in r.checks.iter().filter(|c| c.verdict == Verdict::Fail) {
        out += &format!(
            "  FAIL {} {:?} {:?}: expected {}, observed {}\n",
            c.name, c.ids, c.strength, c.expected, c.observed
        );
    }
    for n in &r.notes {
        out += &format!("  note: {n}\n");
    }
    out
}

#[test]
fn clean_simulator_passes_every_case() {
    let mut bad = String::new();
    let mut ran = 0;
    for s in catalogue() {
        if let Some(r) = run_case(&s, "sim") {
            ran += 1;
            if r.outcome != Outcome::Pass {
                bad += &describe(&r);
            }
        }
    }
    assert!(bad.is_empty(), "{bad}");
    assert!(ran >= 30, "only {ran} cases ran");
}

/// Every fault of the simulator's catalogue is caught by the catalogue of
/// cases, with a failing check citing the fault's requirement, at the
/// expected outcome. Faults that hang need process isolation and are
/// covered by the runner's `faults` command.
#[test]
fn every_fault_is_detected() {
    use suite::device::sim::{catalogue as faults, Expected};
    let cases = catalogue();
    let mut misses = String::new();
    for fault in faults() {
        if fault.expected == Expected::Timeout {
            continue;
        }
        let spec = format!("sim:v1+v2,fault={}", fault.name);
        let results: Vec<CaseResult> = cases.iter().filter_map(|s| run_case(s, &spec)).collect();
        let citing: Vec<&CaseResult> = results
            .iter()
            .filter(|r| {
                r.checks.iter().any(|c| {
                    c.verdict == Verdict::Fail && c.ids.iter().any(|id| id == fault.requirement)
                })
            })
            .collect();
        let worst = results.iter().map(|r| r.outcome).max_by_key(|o| match o {
            Outcome::Fail | Outcome::Error | Outcome::Timeout => 3,
            Outcome::Warn => 2,
            _ => 1,
        });
        let ok = match fault.expected {
            Expected::Fail => {
                !citing.is_empty() && citing.iter().any(|r| r.outcome == Outcome::Fail)
            }
            Expected::Warn => {
                !citing.is_empty() && citing.iter().any(|r| r.outcome == Outcome::Warn)
            }
            Expected::Note => !citing.is_empty(),
            Expected::Pass => results.iter().all(|r| r.outcome == Outcome::Pass),
            Expected::Timeout => unreachable!(),
        };
        if !ok {
            misses += &format!(
                "{} ({}, expected {:?}): citing cases {:?}, worst outcome {:?}\n",
                fault.name,
                fault.requirement,
                fault.expected,
                citing
                    .iter()
                    .map(|r| (&r.name, r.outcome))
                    .collect::<Vec<_>>(),
                worst
            );
            for r in results
                .iter()
                .filter(|r| r.outcome != Outcome::Pass)
                .take(3)
            {
                misses += &describe(r);
            }
        }
    }
    assert!(misses.is_empty(), "{misses}");
}
