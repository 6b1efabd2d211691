//! `report --baseline`: a clean simulator run against the same catalogue
//! run on a simulator with one fault, through the built binary.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Output};

use results::{RunResults, Verdict};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-migtest"));
    for var in [
        "VFIO_MIGTEST_DEVICES",
        "VFIO_MIGTEST_DESTINATION",
        "VFIO_MIGTEST_INCOMPATIBLE",
        "VFIO_MIGTEST_CASES",
        "VFIO_MIGTEST_OUT",
        "VFIO_MIGTEST_SEED",
        "VFIO_MIGTEST_EXPECT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The built-in catalogue on `device` (the long random walk skipped).
fn run(device: &str, out: &Path) -> RunResults {
    let o = bin()
        .args([
            "run", "--seed", "3", "--skip", "walk", "--device", device, "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.code().is_some(), "{}", text(&o.stderr));
    let json = std::fs::read_to_string(out.join("results.json")).unwrap();
    reports::read_json(&json).unwrap()
}

fn report(new: &Path, old: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("report")
        .arg(new.join("results.json"))
        .arg("--baseline")
        .arg(old.join("results.json"))
        .args(extra)
        .output()
        .unwrap()
}

/// The lines of one list of the comparison (`newly failing: N` and the
/// lines indented under it).
fn listed(stdout: &str, title: &str) -> Vec<String> {
    let head = format!("  {title}: ");
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(&head));
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    let n: usize = first[head.len()..].parse().unwrap();
    let out: Vec<String> = lines
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(out.len(), n, "{stdout}");
    out
}

#[test]
fn a_fault_shows_exactly_its_failing_checks_as_new() {
    let clean_dir = tempfile::tempdir().unwrap();
    let fault_dir = tempfile::tempdir().unwrap();
    let clean = run("sim", clean_dir.path());
    let fault = run("sim:fault=enomsg-in-stop-copy", fault_dir.path());
    assert!(clean
        .devices
        .iter()
        .flat_map(|d| &d.cases)
        .all(|c| !c.outcome.is_failure()));

    let mut want: Vec<String> = fault.devices[0]
        .cases
        .iter()
        .flat_map(|c| {
            c.checks
                .iter()
                .filter(|k| k.verdict == Verdict::Fail)
                .map(move |k| format!("sim/{}/{}", c.name, k.name))
        })
        .collect();
    want.sort();
    assert!(!want.is_empty());

    let html = fault_dir.path().join("compared.html");
    let junit = fault_dir.path().join("compared.xml");
    let o = report(
        fault_dir.path(),
        clean_dir.path(),
        &[
            "--html",
            html.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}{}", text(&o.stderr));
    let mut got: Vec<String> = listed(&stdout, "newly failing")
        .iter()
        .map(|l| {
            // `V2-SAVE-02 (MUST) sim/case/check: pass -> fail: ...`
            let path = l.split(' ').nth(2).unwrap();
            assert!(l.contains(": pass -> fail: "), "{l}");
            path.trim_end_matches(':').to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, want, "{stdout}");
    assert!(listed(&stdout, "newly passing").is_empty(), "{stdout}");
    assert!(stdout.contains("V2-SAVE-02 (MUST) sim/"), "{stdout}");

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains(r#"<section id="comparison">"#));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(
        xml.matches(r#"<property name="newly_failing""#).count(),
        want.len()
    );

    // The other way round, the fault's checks are fixed: nothing fails.
    let o = report(clean_dir.path(), fault_dir.path(), &[]);
    let stdout = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}{}", text(&o.stderr));
    assert_eq!(
        listed(&stdout, "newly passing").len(),
        want.len(),
        "{stdout}"
    );
    assert!(listed(&stdout, "newly failing").is_empty(), "{stdout}");

    // A run against itself changed nothing.
    let o = report(clean_dir.path(), clean_dir.path(), &["--threshold", "1000"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        text(&o.stdout).ends_with("  nothing changed\n"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn a_bad_baseline_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("results.json"), "{}").unwrap();
    let o = bin()
        .arg("report")
        .arg(dir.path().join("results.json"))
        .arg("--baseline")
        .arg(dir.path().join("missing.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = bin()
        .args(["report", "x.json", "--baseline", "y.json", "--threshold=-5"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("a threshold is a percentage"),
        "{}",
        text(&o.stderr)
    );
}
