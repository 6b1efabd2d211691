//! `--consumer qemu` through the built binary: a deviation that breaks a
//! QEMU migration fails whatever its strength, a harmless one stays a
//! warning, and expectations files and `--strict` compose with it.
#![forbid(unsafe_code)]

mod common;
use common::bin;

use std::path::Path;
use std::process::Output;

use results::{Consumer, Outcome, RunResults};

/// The catalogue's `precopy` case on a simulator with `fault`.
fn precopy(out: &Path, fault: &str, args: &[&str]) -> Output {
    bin()
        .args(["run", "--exact", "precopy", "--device"])
        .arg(format!("sim:fault={fault}"))
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

fn results(out: &Path) -> RunResults {
    reports::read_json(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

fn outcome(r: &RunResults) -> Outcome {
    r.devices[0].cases[0].outcome
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn initial_bytes_that_never_fall_fail_for_qemu_and_warn_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    let o = precopy(&plain, "initial-bytes-stuck", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert_eq!(outcome(&results(&plain)), Outcome::Warn);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains(
            "QEMU: migration never converges (hw/vfio/migration.c: vfio_state_pending_exact()"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("QEMU would not migrate this device: migration never converges"));

    let qemu = tmp.path().join("qemu");
    let o = precopy(&qemu, "initial-bytes-stuck", &["--consumer", "qemu"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let r = results(&qemu);
    assert_eq!(outcome(&r), Outcome::Fail);
    assert_eq!(r.meta.consumer, Some(Consumer::Qemu));
    let ktap = std::fs::read_to_string(qemu.join("results.ktap")).unwrap();
    assert!(
        ktap.contains("#   QEMU: migration never converges"),
        "{ktap}"
    );
    let junit = std::fs::read_to_string(qemu.join("junit.xml")).unwrap();
    assert!(
        junit.contains("; QEMU: migration never converges"),
        "{junit}"
    );
    let html = std::fs::read_to_string(qemu.join("report.html")).unwrap();
    assert!(html.contains("QEMU would not migrate this device"));

    // A report re-rendered from results.json grades as the run did.
    let o = bin()
        .arg("report")
        .arg(qemu.join("results.json"))
        .output()
        .unwrap();
    assert!(
        text(&o.stdout).contains("FAIL      precopy"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn a_harmless_should_deviation_stays_a_warning_for_qemu() {
    let tmp = tempfile::tempdir().unwrap();
    let o = precopy(
        tmp.path(),
        "zero-at-end-of-precopy",
        &["--consumer", "qemu"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert_eq!(outcome(&results(tmp.path())), Outcome::Warn);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("QEMU: no effect (hw/vfio/migration.c: vfio_save_block())"),
        "{stdout}"
    );
    assert!(
        stdout.contains("QEMU would migrate this device"),
        "{stdout}"
    );
    assert!(
        stdout.contains("harmless to QEMU: V2-PRECOPY-06"),
        "{stdout}"
    );

    // --strict still fails it, with or without the consumer.
    let strict = tmp.path().join("strict");
    let o = precopy(
        &strict,
        "zero-at-end-of-precopy",
        &["--consumer", "qemu", "--strict"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
}

#[test]
fn a_listed_failure_stays_xfail_for_qemu_but_not_in_the_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let known = tmp.path().join("sim.yaml");
    std::fs::write(
        &known,
        "driver: sim\nknown:\n  - case: precopy\n    ids: [V2-PRECOPY-04]\n    reason: initial_bytes is the whole state\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = precopy(
        &out,
        "initial-bytes-stuck",
        &[
            "--consumer",
            "qemu",
            "--expect",
            &known.display().to_string(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert_eq!(outcome(&results(&out)), Outcome::Xfail);
    // QEMU does not read expectations files: the device still does not migrate.
    assert!(
        text(&o.stdout).contains("QEMU would not migrate this device"),
        "{}",
        text(&o.stdout)
    );
}
