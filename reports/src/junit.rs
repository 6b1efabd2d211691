//! JUnit XML, for CI systems.
//!
//! One `<testsuite>` per device (named by its spec), one `<testcase>` per
//! case (classname = device spec, name = case name). A driver that broke a
//! MUST rule, an unexpected pass and a timeout (KERNEL-02: the driver did
//! not return) are `<failure>`s; a harness problem is an `<error>`; an
//! ignored case is `<skipped>`. SHOULD warnings and expected failures pass,
//! with what happened in `<system-out>`. Every case's step log is in its
//! `<system-out>`, the kernel log lines in `<system-err>`.

use std::fmt::Write;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use crate::diff::Comparison;
use crate::stats::{human_bytes, human_duration};
use crate::summary::{check_message, first_failed_check, impact_line, qemu_verdict, CheckStatus};
use results::{CaseResult, DeviceResults, Grading, Outcome, Requirement, RunMeta, RunResults};

/// The run as a JUnit XML document.
pub fn junit(results: &RunResults) -> String {
    render(results, None)
}

/// The run as a JUnit XML document whose suites also carry, as
/// properties, what changed on their device since a baseline run:
/// `baseline.started`, the counts, and one `newly_failing` (`_passing`,
/// `_ignored`) or `figure_changed` property per change.
pub fn junit_compared(results: &RunResults, comparison: &Comparison) -> String {
    render(results, Some(comparison))
}

fn render(results: &RunResults, comparison: Option<&Comparison>) -> String {
    let mut report = Report::new("vfio-migtest");
    for device in &results.devices {
        let mut suite = TestSuite::new(device.spec.as_str());
        suite.add_properties(run_properties(&results.meta));
        suite.add_properties(device_properties(device, &results.requirements));
        if let Some(c) = comparison {
            suite.add_properties(comparison_properties(c, device));
        }
        let mut total = 0u64;
        for case in &device.cases {
            total = total.saturating_add(case.duration_ns);
            suite.add_test_case(test_case(device, case, results));
        }
        suite.set_time(Duration::from_nanos(total));
        report.add_test_suite(suite);
    }
    // Serialising into memory has no I/O to fail, and XmlString has
    // already dropped characters XML cannot carry.
    report
        .to_string()
        .expect("a junit report serialises into memory")
}

fn run_properties(meta: &RunMeta) -> Vec<Property> {
    let mut props = vec![
        Property::new("tool_version", &meta.tool_version),
        Property::new("kernel_release", &meta.kernel_release),
        Property::new("host", &meta.host),
        Property::new("started", &meta.started),
        Property::new("seed", meta.seed.to_string()),
        Property::new("strict", meta.strict.to_string()),
        Property::new(
            "consumer",
            meta.consumer.map_or("none", |_| "qemu").to_string(),
        ),
        Property::new("command_line", meta.command_line.join(" ")),
    ];
    if let Some(finished) = &meta.finished {
        props.push(Property::new("finished", finished));
    }
    if let Some(reason) = &meta.interrupted {
        props.push(Property::new("interrupted", reason));
    }
    props
}

fn comparison_properties(c: &Comparison, device: &DeviceResults) -> Vec<Property> {
    let label = if device.name.is_empty() {
        &device.spec
    } else {
        &device.name
    };
    let changes: Vec<_> = c.for_device(label).collect();
    let count = |kind: &str| changes.iter().filter(|(k, _)| *k == kind).count();
    let mut props = vec![
        Property::new("baseline.started", &c.baseline.started),
        Property::new("baseline.host", &c.baseline.host),
        Property::new("baseline.newly_failing", count("newly_failing").to_string()),
        Property::new("baseline.newly_passing", count("newly_passing").to_string()),
        Property::new("baseline.newly_ignored", count("newly_ignored").to_string()),
    ];
    for (kind, k) in &changes {
        props.push(Property::new(
            *kind,
            format!("{} {}: {} -> {}", k.id_text(), k.path(), k.before, k.after),
        ));
    }
    for f in c.figures.iter().filter(|f| &f.device == label) {
        props.push(Property::new(
            "figure_changed",
            format!(
                "{}: {} -> {} ({})",
                f.what,
                f.before_text(),
                f.after_text(),
                f.percent_text()
            ),
        ));
    }
    props
}

fn device_properties(device: &DeviceResults, requirements: &[Requirement]) -> Vec<Property> {
    let mut props = vec![Property::new("device", &device.name)];
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            props.push(Property::new(name, value));
        }
    };
    add("driver", device.driver.clone());
    add("sysfs_path", device.sysfs_path.clone());
    add("iommu_group", device.iommu_group.map(|g| g.to_string()));
    add("access", device.access.clone());
    add("device_type", device.device_type.clone());
    add("protocols", Some(device.protocols.join(",")));
    add("migration_flags", crate::flags_text(device));
    add(
        "stop_copy_length",
        device.stop_copy_length.map(|n| n.to_string()),
    );
    add("downtime", device.downtime_ns.map(human_duration));
    for (role, peer) in &device.peers {
        add(&format!("peer.{role}"), Some(peer.clone()));
    }
    add("wedged", device.wedged.clone());
    add(
        "qemu.verdict",
        Some(qemu_verdict(device, requirements).line),
    );
    props
}

fn test_case(device: &DeviceResults, case: &CaseResult, results: &RunResults) -> TestCase {
    let grading = results.meta.grading();
    let requirements = &results.requirements;
    let reason = case.reason.clone().unwrap_or_default();
    let first = first_failed_check(case).map(|c| match impact_line(c, requirements) {
        Some(line) => format!("{}; {line}", check_message(c)),
        None => check_message(c),
    });
    let non_success = |kind, ty: &str, message: String| {
        let mut status = TestCaseStatus::non_success(kind);
        status
            .set_type(ty)
            .set_message(message)
            .set_description(failed_checks(case, grading, requirements));
        status
    };
    let status = match case.outcome {
        Outcome::Pass | Outcome::Warn | Outcome::Xfail => TestCaseStatus::success(),
        Outcome::Fail => non_success(
            NonSuccessKind::Failure,
            "fail",
            first.unwrap_or_else(|| reason.clone()),
        ),
        Outcome::Timeout => non_success(
            NonSuccessKind::Failure,
            "timeout",
            match &case.stuck_in {
                Some(stuck) => format!("KERNEL-02: {reason}; stuck in {stuck}"),
                None => format!("KERNEL-02: {reason}"),
            },
        ),
        Outcome::Error => non_success(NonSuccessKind::Error, "error", reason.clone()),
        Outcome::Xpass => non_success(
            NonSuccessKind::Failure,
            "xpass",
            format!("passed, but expected to fail: {reason}"),
        ),
        Outcome::Ignored => {
            let mut status = TestCaseStatus::skipped();
            status.set_message(reason.clone());
            status
        }
    };
    let mut tc = TestCase::new(case.name.as_str(), status);
    tc.set_classname(device.spec.as_str())
        .set_time(Duration::from_nanos(case.duration_ns))
        .set_assertions(case.checks.len());
    if case.outcome != Outcome::Ignored {
        tc.set_system_out(system_out(case, grading, requirements));
    }
    if !case.kernel_log.is_empty() {
        tc.set_system_err(case.kernel_log.join("\n") + "\n");
    }
    tc
}

/// Every check that did not simply pass, in full.
fn failed_checks(case: &CaseResult, grading: Grading, requirements: &[Requirement]) -> String {
    let mut out = String::new();
    for check in &case.checks {
        let status = CheckStatus::of(check, grading);
        if matches!(status, CheckStatus::Pass | CheckStatus::NotApplicable) {
            continue;
        }
        let _ = writeln!(
            out,
            "{} [{}] {}",
            status.as_str().to_uppercase(),
            check.strength.as_str(),
            check_message(check)
        );
        if let Some(line) = impact_line(check, requirements) {
            let _ = writeln!(out, "  {line}");
        }
        if let Some(known) = &check.known_failure {
            let _ = writeln!(out, "  known failure: {known}");
        }
    }
    out
}

fn system_out(case: &CaseResult, grading: Grading, requirements: &[Requirement]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({}, {})", case.about, case.file, case.protocol);
    let _ = writeln!(out, "outcome: {}", case.outcome.as_str());
    if let Some(reason) = &case.reason {
        let _ = writeln!(out, "reason: {reason}");
    }
    if let Some(stuck) = &case.stuck_in {
        let _ = writeln!(out, "stuck in: {stuck}");
    }
    if let Some(seed) = case.seed {
        let _ = writeln!(out, "seed: {seed}");
    }
    if matches!(case.outcome, Outcome::Warn | Outcome::Xfail | Outcome::Pass) {
        out.push_str(&failed_checks(case, grading, requirements));
    }
    for note in &case.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if !case.checks.is_empty() {
        let _ = writeln!(out, "checks:");
    }
    for check in &case.checks {
        let _ = writeln!(
            out,
            "  {:<5} {:<6} {}",
            CheckStatus::of(check, grading).as_str(),
            check.strength.as_str(),
            check_message(check)
        );
    }
    if !case.steps.is_empty() {
        let _ = writeln!(
            out,
            "steps (index role op args = return [state] bytes @start +duration):"
        );
    }
    for (i, step) in case.steps.iter().enumerate() {
        if case.steps_elided > 0 && i > 0 && step.index > case.steps[i - 1].index + 1 {
            let _ = writeln!(out, "  ... {} steps elided ...", case.steps_elided);
        }
        let mut line = format!("  #{} {} {}", step.index, step.role, step.op);
        if !step.args.is_empty() {
            let _ = write!(line, " {}", step.args);
        }
        let _ = write!(line, " = {}", step.ret);
        if let Some(state) = &step.state {
            let _ = write!(line, " [{state}]");
        }
        if step.bytes > 0 {
            let _ = write!(line, " {}", human_bytes(step.bytes));
        }
        let _ = writeln!(
            out,
            "{line} @{} +{}",
            human_duration(step.start_ns),
            human_duration(step.duration_ns)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;

    #[test]
    fn junit_snapshot() {
        insta::assert_snapshot!(junit(&fixture()));
    }

    #[test]
    fn counts_per_suite_are_right() {
        let xml = junit(&fixture());
        let report = Report::deserialize_from_str(&xml).unwrap();
        assert_eq!(
            (report.tests, report.failures, report.errors, report.skipped),
            (12, 3, 1, 2)
        );
        let counts: Vec<(&str, usize, usize, usize, usize)> = report
            .test_suites
            .iter()
            .map(|s| (s.name.as_str(), s.tests, s.failures, s.errors, s.skipped))
            .collect();
        assert_eq!(
            counts,
            [
                ("sim", 7, 1, 1, 1),
                ("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", 5, 2, 0, 1)
            ]
        );
        let mtty = &report.test_suites[1];
        let failed = mtty
            .test_cases
            .iter()
            .find(|c| c.name.as_str() == "save-stop-copy-chunked")
            .unwrap();
        assert_eq!(
            failed.classname.as_deref(),
            Some("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001")
        );
        let TestCaseStatus::NonSuccess {
            kind, message, ty, ..
        } = &failed.status
        else {
            panic!("not a failure: {:?}", failed.status);
        };
        assert_eq!(*kind, NonSuccessKind::Failure);
        assert_eq!(ty.as_deref(), Some("fail"));
        assert_eq!(
            message.as_deref(),
            Some("V2-SAVE-02: expected read() >= 0 in STOP_COPY until end of stream, observed read(data_fd, 149) = -1 ENOMSG after 1043 of 8472 bytes (cases/v2/save-stop-copy-chunked.yaml:11:7); QEMU: device stream silently truncated (hw/vfio/migration.c: vfio_save_block())")
        );
        assert!(failed
            .system_err
            .as_deref()
            .unwrap()
            .contains("<script>throw new Error('kernel log not escaped')</script>"));
        let sim = &report.test_suites[0];
        let timeout = sim
            .test_cases
            .iter()
            .find(|c| c.name.as_str() == "stop-copy-to-pre-copy")
            .unwrap();
        assert!(matches!(
            &timeout.status,
            TestCaseStatus::NonSuccess { ty: Some(t), .. } if t.as_str() == "timeout"
        ));
        let warn = sim
            .test_cases
            .iter()
            .find(|c| c.name.as_str() == "precopy-then-stop-copy")
            .unwrap();
        assert!(matches!(warn.status, TestCaseStatus::Success { .. }));
        assert!(warn
            .system_out
            .as_deref()
            .unwrap()
            .contains("WARN [SHOULD] V2-PRECOPY-06: expected read() < 0 && errno == ENOMSG"));
    }

    #[test]
    fn markup_in_results_is_escaped() {
        let xml = junit(&fixture());
        assert!(!xml.contains("<script>"));
        assert!(xml.contains("&lt;script&gt;"));
    }

    #[test]
    fn elided_steps_are_marked() {
        let xml = junit(&fixture());
        assert!(xml.contains("... 9960 steps elided ..."));
    }
}
