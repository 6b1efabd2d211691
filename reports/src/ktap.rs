//! KTAP version 1 (Documentation/dev-tools/ktap.rst) and the kselftest
//! exit code.
//!
//! One top-level test per case of every device, named
//! `<device slug>__<case name>` (see [`crate::summary::device_slugs`]),
//! each with one subtest per check. Diagnostic lines about a test come
//! directly before its result line, as the specification recommends.
//!
//! Directives: ignored cases are `ok .. # SKIP reason`; XFAIL is
//! `ok .. # XFAIL reason` as kselftest's `ksft_test_result_code()` prints
//! it; timeouts are `not ok .. # TIMEOUT` and harness errors
//! `not ok .. # ERROR`, the two directives the specification reserves for
//! them. An unexpected pass fails this run, so it is `not ok .. # XPASS`
//! (kselftest prints `ok` there because its exit code treats XPASS as a
//! pass). A SHOULD failure is `ok` with `# WARN` diagnostic lines; a DF
//! or INFO deviation is `ok` with `# NOTE` lines.

use std::fmt::Write;

use crate::summary::{
    case_id, device_slugs, impact_line, one_line, qemu_verdict, CheckStatus, OutcomeCounts,
};
use results::{CaseResult, CheckRecord, Outcome, Requirement, RunResults};

/// The kselftest exit codes (tools/testing/selftests/kselftest.h).
const KSFT_PASS: i32 = 0;
const KSFT_FAIL: i32 = 1;
const KSFT_SKIP: i32 = 4;

/// 1 if any case failed, timed out, errored or passed unexpectedly, or the
/// run was interrupted; else 4 if no case ran at all (every case ignored,
/// or no usable device); else 0.
pub fn exit_code(results: &RunResults) -> i32 {
    let counts = OutcomeCounts::of(results.devices.iter().flat_map(|d| &d.cases));
    if counts.failed() > 0 || results.meta.interrupted.is_some() {
        KSFT_FAIL
    } else if counts.ran() == 0 {
        KSFT_SKIP
    } else {
        KSFT_PASS
    }
}

/// The whole run as KTAP version 1.
pub fn ktap(results: &RunResults) -> String {
    let mut out = String::from("KTAP version 1\n");
    let total: usize = results.devices.iter().map(|d| d.cases.len()).sum();
    let _ = writeln!(out, "1..{total}");
    let meta = &results.meta;
    diag(
        &mut out,
        0,
        &format!(
            "vfio-migtest {}, kernel {}, host {}, seed {}{}",
            meta.tool_version,
            meta.kernel_release,
            meta.host,
            meta.seed,
            match (meta.strict, meta.consumer) {
                (false, None) => "",
                (true, None) => ", strict",
                (false, Some(_)) => ", consumer qemu",
                (true, Some(_)) => ", strict, consumer qemu",
            }
        ),
    );

    let mut counts = OutcomeCounts::default();
    let mut number = 0;
    for (device, device_slug) in results.devices.iter().zip(device_slugs(&results.devices)) {
        let flags = device
            .migration_flags
            .map(|f| {
                let names = device.migration_flag_names.clone();
                format!(", MIGRATION flags {}", names.unwrap_or(format!("{f:#x}")))
            })
            .unwrap_or_default();
        diag(
            &mut out,
            0,
            &format!(
                "device {device_slug}: {} (driver {}, protocols {}{flags})",
                device.spec,
                device.driver.as_deref().unwrap_or("none"),
                if device.protocols.is_empty() {
                    "none".to_string()
                } else {
                    device.protocols.join(", ")
                },
            ),
        );
        if let Some(wedged) = &device.wedged {
            diag(
                &mut out,
                0,
                &format!("device {device_slug} wedged: {wedged}"),
            );
        }
        let verdict = qemu_verdict(device, &results.requirements);
        diag(
            &mut out,
            0,
            &format!("device {device_slug}: {}", verdict.line),
        );
        if !verdict.harmless.is_empty() {
            diag(
                &mut out,
                0,
                &format!(
                    "device {device_slug}: harmless to QEMU: {}",
                    verdict.harmless.join(", ")
                ),
            );
        }
        for case in &device.cases {
            number += 1;
            counts.add(case.outcome);
            write_case(
                &mut out,
                number,
                &case_id(&device_slug, case),
                case,
                results,
            );
        }
    }
    if let Some(reason) = &meta.interrupted {
        diag(&mut out, 0, &format!("interrupted: {reason}"));
    }
    diag(
        &mut out,
        0,
        &format!(
            "warn:{} timeout:{} (counted as pass and fail below)",
            counts.warn, counts.timeout
        ),
    );
    // kselftest's ksft_print_cnts() line, which CI log parsers look for.
    let _ = writeln!(
        out,
        "# Totals: pass:{} fail:{} xfail:{} xpass:{} skip:{} error:{}",
        counts.pass + counts.warn,
        counts.fail + counts.timeout,
        counts.xfail,
        counts.xpass,
        counts.ignored,
        counts.error
    );
    out
}

fn diag(out: &mut String, depth: usize, text: &str) {
    let _ = writeln!(
        out,
        "{:indent$}# {}",
        "",
        one_line(text),
        indent = depth * 2
    );
}

fn result_line(
    out: &mut String,
    depth: usize,
    ok: bool,
    number: usize,
    name: &str,
    directive: &str,
) {
    let _ = writeln!(
        out,
        "{:indent$}{} {number} {name}{}",
        "",
        if ok { "ok" } else { "not ok" },
        if directive.is_empty() {
            String::new()
        } else {
            format!(" # {}", one_line(directive))
        },
        indent = depth * 2
    );
}

fn write_case(out: &mut String, number: usize, id: &str, case: &CaseResult, results: &RunResults) {
    if case.outcome != Outcome::Ignored && !case.checks.is_empty() {
        let _ = writeln!(out, "  KTAP version 1\n  1..{}", case.checks.len());
        for (i, check) in case.checks.iter().enumerate() {
            write_check(out, i + 1, check, results);
        }
    }
    if let Some(stuck) = &case.stuck_in {
        diag(out, 0, &format!("stuck in: {stuck}"));
    }
    for line in &case.kernel_log {
        diag(out, 0, &format!("kernel: {line}"));
    }
    for note in &case.notes {
        diag(out, 0, &format!("note: {note}"));
    }
    let reason = case.reason.as_deref().unwrap_or("");
    let with = |word: &str| {
        if reason.is_empty() {
            word.to_string()
        } else {
            format!("{word} {reason}")
        }
    };
    let (ok, directive) = match case.outcome {
        Outcome::Pass => (true, String::new()),
        Outcome::Warn => {
            let warnings = case
                .checks
                .iter()
                .filter(|c| CheckStatus::of(c, results.meta.grading()) == CheckStatus::Warn)
                .count();
            diag(
                out,
                0,
                &format!("WARN {id}: {warnings} SHOULD check(s) failed"),
            );
            (true, String::new())
        }
        Outcome::Fail => (false, String::new()),
        Outcome::Ignored => (true, with("SKIP")),
        Outcome::Timeout => (false, with("TIMEOUT")),
        Outcome::Error => (false, with("ERROR")),
        Outcome::Xfail => (true, with("XFAIL")),
        Outcome::Xpass => (false, with("XPASS")),
    };
    result_line(out, 0, ok, number, id, &directive);
}

fn write_check(out: &mut String, number: usize, check: &CheckRecord, results: &RunResults) {
    // The requirement IDs are part of the name, so a lab's history of a
    // subtest is also the history of the rules it checks.
    let name = crate::summary::slug(&format!("{}__{}", check.name, check.ids.join("_")));
    let status = CheckStatus::of(check, results.meta.grading());
    let known = check.known_failure.as_deref().unwrap_or("");
    let (ok, label, directive) = match status {
        CheckStatus::Pass => (true, None, String::new()),
        CheckStatus::Fail => (false, Some("FAIL"), String::new()),
        CheckStatus::Warn => (true, Some("WARN"), String::new()),
        CheckStatus::Note => (true, Some("NOTE"), String::new()),
        CheckStatus::NotApplicable => (
            true,
            None,
            format!("SKIP not applicable: {}", check.observed),
        ),
        CheckStatus::Xfail => (true, Some("XFAIL"), format!("XFAIL {known}")),
        CheckStatus::Xpass => (false, Some("XPASS"), format!("XPASS {known}")),
    };
    if let Some(label) = label {
        diag(
            out,
            1,
            &format!(
                "{label} {} ({})",
                check.ids.join(", "),
                check.strength.as_str()
            ),
        );
        for id in &check.ids {
            if let Some(r) = find_requirement(&results.requirements, id) {
                diag(out, 1, &format!("  {id}: {}", r.summary));
            }
        }
        diag(out, 1, &format!("  expected: {}", check.expected));
        diag(out, 1, &format!("  observed: {}", check.observed));
        if let Some(line) = impact_line(check, &results.requirements) {
            diag(out, 1, &format!("  {line}"));
        }
        if let Some(at) = &check.location {
            diag(out, 1, &format!("  at: {at}"));
        }
    }
    result_line(out, 1, ok, number, &name, &directive);
}

fn find_requirement<'a>(requirements: &'a [Requirement], id: &str) -> Option<&'a Requirement> {
    requirements.iter().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;
    use results::DeviceResults;

    #[test]
    fn ktap_snapshot() {
        insta::assert_snapshot!(ktap(&fixture()));
    }

    /// One parsed result line: depth, ok, number, name, directive keyword.
    #[derive(Debug, PartialEq)]
    struct Line {
        depth: usize,
        ok: bool,
        number: usize,
        name: String,
        directive: Option<String>,
    }

    /// A small KTAP reader: checks the version line and plan of every
    /// (sub)test list, that numbers count up from 1, that names are
    /// slug-safe, and that a parent fails when a subtest fails. Returns
    /// the result lines.
    fn parse(text: &str) -> Vec<Line> {
        let mut lines = text.lines().peekable();
        assert_eq!(lines.next(), Some("KTAP version 1"));
        // (depth, planned, seen, any subtest failed)
        let mut stack: Vec<(usize, usize, usize, bool)> = Vec::new();
        let mut results = Vec::new();
        let mut pending_version: Option<usize> = Some(0);
        let mut child_failed = false;
        for line in lines {
            let depth = (line.len() - line.trim_start_matches(' ').len()) / 2;
            let body = line.trim_start_matches(' ');
            assert_eq!(line.len() - body.len(), depth * 2, "odd indent: {line:?}");
            if body == "KTAP version 1" {
                pending_version = Some(depth);
            } else if let Some(plan) = body.strip_prefix("1..") {
                assert_eq!(
                    pending_version.take(),
                    Some(depth),
                    "plan without version: {line:?}"
                );
                stack.push((depth, plan.parse().unwrap(), 0, false));
            } else if body.starts_with('#') {
                continue;
            } else {
                let (ok, rest) = if let Some(r) = body.strip_prefix("not ok ") {
                    (false, r)
                } else if let Some(r) = body.strip_prefix("ok ") {
                    (true, r)
                } else {
                    panic!("unknown line {line:?}");
                };
                // A result at depth d closes the subtest list at depth d + 1.
                if let Some(&(d, planned, seen, failed)) = stack.last() {
                    if d == depth + 1 {
                        assert_eq!(planned, seen, "plan mismatch before {line:?}");
                        child_failed = failed;
                        stack.pop();
                    }
                }
                let top = stack.last_mut().expect("result outside a plan");
                assert_eq!(top.0, depth, "result at the wrong depth: {line:?}");
                top.2 += 1;
                let (head, directive) = match rest.split_once(" # ") {
                    Some((h, d)) => (h, Some(d.split(' ').next().unwrap().to_string())),
                    None => (rest, None),
                };
                let (number, name) = head.split_once(' ').unwrap();
                let number: usize = number.parse().unwrap();
                assert_eq!(number, top.2, "numbers must count up: {line:?}");
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                    "name not slug-safe: {line:?}"
                );
                if !ok {
                    top.3 = true;
                }
                if child_failed {
                    assert!(!ok, "a subtest failed but the parent passed: {line:?}");
                    child_failed = false;
                }
                results.push(Line {
                    depth,
                    ok,
                    number,
                    name: name.to_string(),
                    directive,
                });
            }
        }
        let (depth, planned, seen, _) = stack.pop().expect("no plan");
        assert_eq!((depth, planned), (0, seen), "top-level plan mismatch");
        assert!(stack.is_empty());
        results
    }

    fn top(lines: &[Line]) -> Vec<&Line> {
        lines.iter().filter(|l| l.depth == 0).collect()
    }

    #[test]
    fn parsed_counts_match_the_fixture() {
        let text = ktap(&fixture());
        let lines = parse(&text);
        let top = top(&lines);
        assert_eq!(top.len(), 12);
        let count = |ok: bool, directive: Option<&str>| {
            top.iter()
                .filter(|l| l.ok == ok && l.directive.as_deref() == directive)
                .count()
        };
        // pass: 2 fsm-every-arc, v1 drain, walk; warn: precopy.
        assert_eq!(count(true, None), 5);
        assert_eq!(count(false, None), 1);
        assert_eq!(count(true, Some("SKIP")), 2);
        assert_eq!(count(false, Some("TIMEOUT")), 1);
        assert_eq!(count(false, Some("ERROR")), 1);
        assert_eq!(count(true, Some("XFAIL")), 1);
        assert_eq!(count(false, Some("XPASS")), 1);
        assert!(top.iter().any(|l| l.name == "sim__fsm-every-arc"));
        assert!(top
            .iter()
            .any(|l| l.name == "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001__fsm-every-arc"));
        let subtests = lines.iter().filter(|l| l.depth == 1).count();
        let checks: usize = fixture()
            .devices
            .iter()
            .flat_map(|d| &d.cases)
            .filter(|c| c.outcome != Outcome::Ignored)
            .map(|c| c.checks.len())
            .sum();
        assert_eq!(subtests, checks);
        assert!(text.ends_with("# Totals: pass:5 fail:2 xfail:1 xpass:1 skip:2 error:1\n"));
    }

    #[test]
    fn the_parser_rejects_inconsistent_output() {
        let text = ktap(&fixture());
        let broken_plan = text.replacen("1..12", "1..13", 1);
        assert!(std::panic::catch_unwind(|| parse(&broken_plan)).is_err());
        let hidden_failure = text.replacen(
            "not ok 9 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001__save-stop-copy-chunked",
            "ok 9 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001__save-stop-copy-chunked",
            1,
        );
        assert_ne!(hidden_failure, text);
        assert!(std::panic::catch_unwind(|| parse(&hidden_failure)).is_err());
    }

    #[test]
    fn warnings_and_strict_mode() {
        let mut results = fixture();
        let text = ktap(&results);
        assert!(text.contains("  # WARN V2-PRECOPY-06 (SHOULD)\n"));
        assert!(text.contains("  ok 3 end-of-precopy-is-enomsg__V2-PRECOPY-06\n"));
        results.meta.strict = true;
        let text = ktap(&results);
        assert!(text.contains("  # FAIL V2-PRECOPY-06 (SHOULD)\n"));
        assert!(text.contains("  not ok 3 end-of-precopy-is-enomsg__V2-PRECOPY-06\n"));
    }

    #[test]
    fn exit_codes_follow_kselftest() {
        let mut results = fixture();
        assert_eq!(exit_code(&results), 1);
        for case in results.devices.iter_mut().flat_map(|d| &mut d.cases) {
            if case.outcome.is_failure() {
                case.outcome = Outcome::Pass;
            }
        }
        assert_eq!(exit_code(&results), 0);
        results.meta.interrupted = Some("SIGINT".into());
        assert_eq!(exit_code(&results), 1);
        results.meta.interrupted = None;
        for case in results.devices.iter_mut().flat_map(|d| &mut d.cases) {
            case.outcome = Outcome::Ignored;
        }
        assert_eq!(exit_code(&results), 4);
        results.devices = vec![DeviceResults::default()];
        assert_eq!(exit_code(&results), 4);
        assert!(ktap(&results).contains("1..0\n"));
    }
}
