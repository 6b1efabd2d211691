//! MIG_PRECOPY_INFOv2 and VFIO_PRECOPY_INFO_REINIT through the built
//! binary: the opted-in REINIT path passes on a simulator that
//! re-initialises its precopy data, and each way of getting it wrong fails
//! the check that cites its rule.
#![forbid(unsafe_code)]

mod common;
use common::bin;

use std::path::Path;

use results::{CaseResult, Outcome, RunResults, Verdict};

/// The result of the catalogue's case `case` on `sim:OPTIONS`.
fn run(out: &Path, case: &str, options: &str) -> CaseResult {
    let o = bin()
        .args(["run", "--exact", case, "--device"])
        .arg(format!("sim:{options}"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let json = std::fs::read_to_string(out.join("results.json"))
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    let r: RunResults = reports::read_json(&json).unwrap();
    r.devices[0].cases[0].clone()
}

fn failed_ids(r: &CaseResult) -> Vec<&str> {
    r.checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .flat_map(|c| c.ids.iter().map(String::as_str))
        .collect()
}

#[test]
fn an_opted_in_reinit_passes_and_is_noted() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(tmp.path(), "precopy-reinit", "reinit=3");
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", failed_ids(&r));
    assert!(
        r.notes
            .iter()
            .any(|n| n.starts_with("REINIT: new initial data")),
        "{:?}",
        r.notes
    );
    let restart = r
        .checks
        .iter()
        .find(|c| c.name.ends_with("dirty-bytes-restart"))
        .expect("a REINIT report's dirty_bytes are checked");
    assert_eq!(restart.verdict, Verdict::Pass);
}

#[test]
fn without_the_opt_in_new_initial_data_is_dirty_data() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(tmp.path(), "precopy-info-v2-reopen", "reinit=3");
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", failed_ids(&r));
    assert!(!r.notes.iter().any(|n| n.starts_with("REINIT")));
}

#[test]
fn each_reinit_fault_fails_its_rule() {
    for (case, fault, id, outcome) in [
        (
            "precopy-info-v2-reopen",
            "reinit-without-opt-in",
            "V2-PRECOPY-14",
            Outcome::Fail,
        ),
        (
            "precopy-reinit",
            "initial-bytes-rise-without-reinit",
            "V2-PRECOPY-15",
            Outcome::Warn,
        ),
        (
            "precopy-reinit",
            "reinit-dirty-bytes-kept",
            "V2-PRECOPY-16",
            Outcome::Warn,
        ),
        (
            "precopy-reinit",
            "precopy-info-v2-get-accepted",
            "V2-PRECOPY-11",
            Outcome::Fail,
        ),
        (
            "precopy-info-v2-pre-copy-only",
            "precopy-info-v2-without-pre-copy",
            "V2-PRECOPY-12",
            Outcome::Fail,
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let r = run(tmp.path(), case, &format!("fault={fault}"));
        assert_eq!(r.outcome, outcome, "{fault}: {:?}", failed_ids(&r));
        assert!(
            failed_ids(&r).contains(&id),
            "{fault}: {:?}",
            failed_ids(&r)
        );
    }
}

#[test]
fn an_opt_in_kept_across_a_reopen_is_noted() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        tmp.path(),
        "precopy-info-v2-reopen",
        "fault=precopy-info-v2-survives-reopen",
    );
    // A de facto rule: the case passes with the broken check as a note.
    assert_eq!(r.outcome, Outcome::Pass);
    assert_eq!(failed_ids(&r), ["V2-PRECOPY-13"]);
}
