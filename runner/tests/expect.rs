//! Expectations files through the built binary, against the simulator with
//! the fault that mirrors mtty's DMA logging deviation.
#![forbid(unsafe_code)]

mod common;
use common::bin;

use std::path::Path;
use std::process::Output;

use results::{Outcome, RunResults};

const SIM_KNOWN: &str = "# the simulator, told to accept a second START
driver: sim
known:
  - case: dma-logging
    ids: [V2-LOG-02]
    reason: told to accept a second START
";

fn run(dir: &Path, args: &[&str]) -> Output {
    bin()
        .arg("run")
        .arg("--exact")
        .arg("dma-logging")
        .arg("--out")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn results(path: &Path) -> RunResults {
    reports::read_json(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn dma_logging(r: &RunResults) -> &results::CaseResult {
    r.devices[0]
        .cases
        .iter()
        .find(|c| c.name == "dma-logging")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_known_failure_is_xfail_and_a_fixed_one_xpass() {
    let tmp = tempfile::tempdir().unwrap();
    let known = tmp.path().join("sim.yaml");
    std::fs::write(&known, SIM_KNOWN).unwrap();
    let known = known.display().to_string();

    let out = tmp.path().join("faulty");
    let o = run(
        &out,
        &[
            "--device",
            "sim:fault=logging-start-twice",
            "--expect",
            &known,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let r = results(&out.join("results.json"));
    let case = dma_logging(&r);
    assert_eq!(case.outcome, Outcome::Xfail);
    assert_eq!(
        case.reason.as_deref(),
        Some(format!("{known}:4:5: told to accept a second START").as_str())
    );
    let marked: Vec<&str> = case
        .checks
        .iter()
        .filter(|c| c.known_failure.is_some())
        .flat_map(|c| c.ids.iter().map(String::as_str))
        .collect();
    assert_eq!(marked, ["V2-LOG-02"]);
    assert!(r
        .meta
        .notes
        .iter()
        .any(|n| n.contains("applied to sim:fault")));
    let ktap = std::fs::read_to_string(out.join("results.ktap")).unwrap();
    assert!(ktap.contains("ok 1 sim__dma-logging # XFAIL "), "{ktap}");

    // The driver fixed: the entry is stale, and the run fails to say so.
    let out = tmp.path().join("fixed");
    let o = run(&out, &["--expect", &known]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("XPASS: "), "{}", text(&o.stdout));
    let r = results(&out.join("results.json"));
    assert_eq!(dma_logging(&r).outcome, Outcome::Xpass);

    // Another driver: the file does not apply.
    let other = tmp.path().join("other.yaml");
    std::fs::write(&other, SIM_KNOWN.replace("driver: sim", "driver: mtty")).unwrap();
    let out = tmp.path().join("other");
    let o = run(
        &out,
        &[
            "--device",
            "sim:fault=logging-start-twice",
            "--expect",
            &other.display().to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("apply to no device of this run"));
}

#[test]
fn report_replaces_the_expectations_of_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = run(&out, &["--device", "sim:fault=logging-start-twice"]);
    assert_eq!(o.status.code(), Some(1));
    let json = out.join("results.json");
    assert_eq!(dma_logging(&results(&json)).outcome, Outcome::Fail);

    let known = tmp.path().join("sim.yaml");
    std::fs::write(&known, SIM_KNOWN).unwrap();
    let again = tmp.path().join("again.json");
    let o = bin()
        .arg("report")
        .arg(&json)
        .arg("--expect")
        .arg(&known)
        .arg("--json")
        .arg(&again)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("-> passed"), "{}", text(&o.stdout));
    assert_eq!(dma_logging(&results(&again)).outcome, Outcome::Xfail);

    // Other expectations replace these: the failure is unknown again.
    let other = tmp.path().join("other.yaml");
    std::fs::write(
        &other,
        "known:\n  - case: precopy\n    ids: [V2-PRECOPY-06]\n    reason: r\n",
    )
    .unwrap();
    let third = tmp.path().join("third.json");
    let o = bin()
        .arg("report")
        .arg(&again)
        .arg("--expect")
        .arg(&other)
        .arg("--json")
        .arg(&third)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r = results(&third);
    let case = dma_logging(&r);
    assert_eq!(case.outcome, Outcome::Fail);
    assert!(case.checks.iter().all(|c| c.known_failure.is_none()));
    let notes: Vec<&String> = r
        .meta
        .notes
        .iter()
        .filter(|n| n.starts_with("expectations "))
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("other.yaml"), "{notes:?}");
}

#[test]
fn a_bad_expectations_file_stops_the_run_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "known:\n  - case: dma-logging\n    ids: [V2-LOG-99]\n    reason: x\n",
    )
    .unwrap();
    let o = run(
        &tmp.path().join("out"),
        &["--expect", &bad.display().to_string()],
    );
    assert_eq!(o.status.code(), Some(2));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:11: unknown requirement ID `V2-LOG-99`",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(!tmp.path().join("out/results.json").exists());
}
