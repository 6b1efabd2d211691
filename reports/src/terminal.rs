//! The summary printed at the end of a run: per device a line of counts,
//! then every case that failed or warned with the check that explains it.

use std::fmt::Write;

use crate::ktap::exit_code;
use crate::summary::{
    first_failed_check, impact_line, one_line, qemu_verdict, CheckStatus, OutcomeCounts,
};
use results::{CaseResult, CheckRecord, Grading, Outcome, Requirement, RunResults};

/// Indent of the detail lines under a case, past its outcome label.
const DETAIL: &str = "            ";

/// Plain text, no colour: one line of counts per device, the failing and
/// warning cases under it, and a total line with the run's verdict.
pub fn terminal_summary(results: &RunResults) -> String {
    let mut out = String::new();
    let mut total = OutcomeCounts::default();
    for device in &results.devices {
        let counts = OutcomeCounts::of(&device.cases);
        let driver = device
            .driver
            .as_deref()
            .or(device.access.as_deref())
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}{driver}: {} case{}: {}",
            device.spec,
            counts.total(),
            if counts.total() == 1 { "" } else { "s" },
            counts.describe()
        );
        if let Some(wedged) = &device.wedged {
            let _ = writeln!(out, "  wedged: {}", one_line(wedged));
        }
        for case in &device.cases {
            total.add(case.outcome);
            write_case(
                &mut out,
                case,
                &results.requirements,
                results.meta.grading(),
            );
        }
        let verdict = qemu_verdict(device, &results.requirements);
        let _ = writeln!(out, "  {}", verdict.line);
        if !verdict.harmless.is_empty() {
            let _ = writeln!(out, "  harmless to QEMU: {}", verdict.harmless.join(", "));
        }
    }
    if let Some(reason) = &results.meta.interrupted {
        let _ = writeln!(out, "interrupted: {}", one_line(reason));
    }
    let verdict = match exit_code(results) {
        0 => "passed",
        4 => "nothing ran",
        _ => "FAILED",
    };
    let _ = writeln!(
        out,
        "total: {} case{}: {} -> {verdict}",
        total.total(),
        if total.total() == 1 { "" } else { "s" },
        total.describe()
    );
    out
}

/// Checks shown in full under a case; the rest are counted.
const SHOWN_CHECKS: usize = 3;

fn write_case(out: &mut String, case: &CaseResult, requirements: &[Requirement], grading: Grading) {
    let label = match case.outcome {
        Outcome::Fail => "FAIL",
        Outcome::Warn => "WARN",
        Outcome::Timeout => "TIMEOUT",
        Outcome::Error => "ERROR",
        Outcome::Xpass => "XPASS",
        Outcome::Xfail => "XFAIL",
        Outcome::Pass | Outcome::Ignored => return,
    };
    let reason = case
        .reason
        .as_deref()
        .map(|r| format!(": {}", one_line(r)))
        .unwrap_or_default();
    let _ = writeln!(out, "  {label:<9} {}{reason}", case.name);
    // A known failure is listed, not explained again.
    if case.outcome == Outcome::Xfail {
        return;
    }
    if let Some(stuck) = &case.stuck_in {
        let _ = writeln!(out, "{DETAIL}stuck in: {}", one_line(stuck));
    }
    let explaining = explaining_checks(case, grading);
    let checks = if explaining.is_empty() {
        first_failed_check(case).into_iter().collect()
    } else {
        explaining
    };
    for check in checks.iter().take(SHOWN_CHECKS) {
        for id in &check.ids {
            let summary = requirements
                .iter()
                .find(|r| &r.id == id)
                .map(|r| format!(" {}", one_line(&r.summary)))
                .unwrap_or_default();
            let _ = writeln!(out, "{DETAIL}{id} ({}){summary}", check.strength.as_str());
        }
        let _ = writeln!(out, "{DETAIL}expected: {}", one_line(&check.expected));
        let _ = writeln!(out, "{DETAIL}observed: {}", one_line(&check.observed));
        if let Some(line) = impact_line(check, requirements) {
            let _ = writeln!(out, "{DETAIL}{line}");
        }
        if let Some(at) = &check.location {
            let _ = writeln!(out, "{DETAIL}at: {at}");
        }
    }
    let more = checks.len().saturating_sub(SHOWN_CHECKS);
    if more > 0 {
        let _ = writeln!(
            out,
            "{DETAIL}(and {more} more failed check{})",
            if more == 1 { "" } else { "s" }
        );
    }
}

/// The checks behind a case's outcome: failed ones, then warnings, then
/// the ones that passed against expectations.
fn explaining_checks(case: &CaseResult, grading: Grading) -> Vec<&CheckRecord> {
    [CheckStatus::Fail, CheckStatus::Warn, CheckStatus::Xpass]
        .into_iter()
        .flat_map(|want| {
            case.checks
                .iter()
                .filter(move |c| CheckStatus::of(c, grading) == want)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;

    #[test]
    fn terminal_snapshot() {
        insta::assert_snapshot!(terminal_summary(&fixture()));
    }

    #[test]
    fn at_most_three_checks_are_explained() {
        let mut results = fixture();
        let case = results.devices[1]
            .cases
            .iter_mut()
            .find(|c| c.outcome == Outcome::Fail)
            .unwrap();
        let failed = case.checks[0].clone();
        for i in 0..3 {
            let mut c = failed.clone();
            c.name = format!("extra-{i}");
            case.checks.push(c);
        }
        let text = terminal_summary(&results);
        assert_eq!(text.matches("expected: ").count(), 6, "{text}");
        assert!(text.contains("(and 2 more failed checks)\n"), "{text}");
    }

    #[test]
    fn verdict_line_follows_the_exit_code() {
        let mut results = fixture();
        assert!(terminal_summary(&results).ends_with("-> FAILED\n"));
        for case in results.devices.iter_mut().flat_map(|d| &mut d.cases) {
            case.outcome = Outcome::Ignored;
        }
        let text = terminal_summary(&results);
        assert!(
            text.ends_with("total: 12 cases: 12 ignored -> nothing ran\n"),
            "{text}"
        );
        results.devices[0].cases[0].outcome = Outcome::Pass;
        assert!(terminal_summary(&results).ends_with("-> passed\n"));
    }
}
