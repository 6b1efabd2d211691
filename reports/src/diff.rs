//! What changed between two runs: a pure function of two results models
//! (the run and a baseline), rendered by the terminal summary, the HTML
//! report and the JUnit properties.
//!
//! Devices are paired by name (BDF, UUID, `sim`); devices left over on
//! both sides are paired in order, so a run of `sim:fault=x` compares with
//! one of `sim`. Checks are paired by device, case and check name. Each
//! check is classified as the reports show it ([`CheckStatus`]); a case
//! that was ignored, or is missing, did not run its checks.

use std::collections::BTreeMap;

use crate::stats::{human_duration, throughput, Spread};
use crate::summary::{one_line, CheckStatus};
use results::{CaseResult, CheckRecord, DeviceResults, Direction, Grading, RunResults, Strength};

/// Default threshold for figures: a change beyond this many percent is
/// listed.
pub const DEFAULT_THRESHOLD_PERCENT: f64 = 20.0;

/// What the baseline run was.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineInfo {
    pub started: String,
    pub host: String,
    pub kernel_release: String,
    pub tool_version: String,
}

/// How a check stood in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Ran and passed (a DF/INFO note counts as passing: it never fails).
    Pass,
    /// Failed so that the run fails (MUST, SHOULD under --strict, XPASS).
    Fail,
    /// A SHOULD check failed.
    Warn,
    /// Failed as an expectations file says it would.
    Known,
    /// The case was ignored, missing, or the check did not apply.
    NotRun,
}

impl Standing {
    fn of(check: Option<&CheckRecord>, case_ran: bool, grading: Grading) -> Standing {
        let Some(check) = check.filter(|_| case_ran) else {
            return Standing::NotRun;
        };
        match CheckStatus::of(check, grading) {
            CheckStatus::Pass | CheckStatus::Note => Standing::Pass,
            CheckStatus::Fail | CheckStatus::Xpass => Standing::Fail,
            CheckStatus::Warn => Standing::Warn,
            CheckStatus::Xfail => Standing::Known,
            CheckStatus::NotApplicable => Standing::NotRun,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Pass => "pass",
            Standing::Fail => "fail",
            Standing::Warn => "warn",
            Standing::Known => "xfail",
            Standing::NotRun => "not run",
        }
    }

    fn failing(self) -> bool {
        self.severity() > 0
    }

    /// How badly the check fails: a change to a higher severity is a new
    /// failure (a known failure that now fails the run is one too).
    fn severity(self) -> u8 {
        match self {
            Standing::Pass | Standing::NotRun => 0,
            Standing::Known => 1,
            Standing::Warn => 2,
            Standing::Fail => 3,
        }
    }
}

/// One check (or, for a case that timed out or errored without a failed
/// check, the case itself) that changed.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckChange {
    /// Requirement IDs of the check (sorted lists group by the first).
    pub ids: Vec<String>,
    pub strength: Option<Strength>,
    /// The device as the run names it.
    pub device: String,
    pub case: String,
    /// `None` for a change of the case's outcome alone.
    pub check: Option<String>,
    pub before: String,
    pub after: String,
    /// What the run observed (the failed check's message, the reason).
    pub detail: String,
}

impl CheckChange {
    /// `sim/precopy/s4-end`.
    pub fn path(&self) -> String {
        match &self.check {
            Some(check) => format!("{}/{}/{check}", self.device, self.case),
            None => format!("{}/{}", self.device, self.case),
        }
    }

    /// `V2-SAVE-01, V2-SAVE-02`, or `-` for a change without IDs.
    pub fn id_text(&self) -> String {
        if self.ids.is_empty() {
            "-".into()
        } else {
            self.ids.join(", ")
        }
    }
}

/// What kind of figure changed, and which way is worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Median SET latency of one arc, ns: higher is worse.
    Latency,
    /// Bytes per second of all saves or all resumes: lower is worse.
    Throughput,
    /// ns from leaving RUNNING to the end of the stream: higher is worse.
    Downtime,
}

/// A figure that moved beyond the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct FigureChange {
    pub device: String,
    pub figure: Figure,
    /// `SET RUNNING -> STOP median`, `save throughput`, `downtime`.
    pub what: String,
    pub before: f64,
    pub after: f64,
    /// Signed change relative to the baseline, in percent.
    pub percent: f64,
    pub worse: bool,
}

impl FigureChange {
    fn show(&self, value: f64) -> String {
        match self.figure {
            Figure::Latency | Figure::Downtime => human_duration(value as u64),
            Figure::Throughput => {
                throughput(value as u64, 1_000_000_000).unwrap_or_else(|| "-".into())
            }
        }
    }

    pub fn before_text(&self) -> String {
        self.show(self.before)
    }

    pub fn after_text(&self) -> String {
        self.show(self.after)
    }

    /// `+35%` or `-12%`.
    pub fn percent_text(&self) -> String {
        format!("{:+.0}%", self.percent)
    }
}

/// Everything that changed between a baseline and a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub baseline: BaselineInfo,
    pub threshold_percent: f64,
    /// Failing now (fail, warn or xfail), not failing in the baseline.
    pub newly_failing: Vec<CheckChange>,
    /// Passing now, failing in the baseline.
    pub newly_passing: Vec<CheckChange>,
    /// Not run now (case ignored or gone, check not applicable), run in
    /// the baseline.
    pub newly_ignored: Vec<CheckChange>,
    pub figures: Vec<FigureChange>,
    /// Devices of either run without a counterpart in the other.
    pub unpaired: Vec<String>,
}

impl Comparison {
    /// Whether a newly failing check fails the run (exit status 1).
    pub fn newly_fails(&self) -> bool {
        self.newly_failing.iter().any(|c| c.after == "fail")
    }

    pub fn is_empty(&self) -> bool {
        self.newly_failing.is_empty()
            && self.newly_passing.is_empty()
            && self.newly_ignored.is_empty()
            && self.figures.is_empty()
            && self.unpaired.is_empty()
    }

    /// The changes that concern one device of the run.
    pub fn for_device<'a>(
        &'a self,
        device: &'a str,
    ) -> impl Iterator<Item = (&'static str, &'a CheckChange)> + 'a {
        [
            ("newly_failing", &self.newly_failing),
            ("newly_passing", &self.newly_passing),
            ("newly_ignored", &self.newly_ignored),
        ]
        .into_iter()
        .flat_map(|(kind, list)| list.iter().map(move |c| (kind, c)))
        .filter(move |(_, c)| c.device == device)
    }
}

/// The run's device name as the comparison names it.
fn device_label(d: &DeviceResults) -> String {
    if d.name.is_empty() {
        d.spec.clone()
    } else {
        d.name.clone()
    }
}

/// Pairs each device of `new` with one of `old`: by name, then the rest in
/// order. Returns the pairs and the unpaired devices of both.
fn pair_devices<'a>(
    new: &'a [DeviceResults],
    old: &'a [DeviceResults],
) -> (Vec<(&'a DeviceResults, &'a DeviceResults)>, Vec<String>) {
    let mut taken = vec![false; old.len()];
    let mut slots: Vec<Option<usize>> = new
        .iter()
        .map(|n| {
            let at = old
                .iter()
                .enumerate()
                .position(|(i, o)| !taken[i] && o.name == n.name)?;
            taken[at] = true;
            Some(at)
        })
        .collect();
    let rest: Vec<usize> = (0..old.len()).filter(|&i| !taken[i]).collect();
    let mut rest = rest.into_iter();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = rest.next();
        if let Some(i) = *slot {
            taken[i] = true;
        }
    }
    let mut unpaired = Vec::new();
    let mut pairs = Vec::new();
    for (n, slot) in new.iter().zip(&slots) {
        match slot {
            Some(i) => pairs.push((n, &old[*i])),
            None => unpaired.push(format!("{} (only in this run)", n.spec)),
        }
    }
    for (o, t) in old.iter().zip(&taken) {
        if !t {
            unpaired.push(format!("{} (only in the baseline)", o.spec));
        }
    }
    (pairs, unpaired)
}

/// Compares `new` with `baseline`: the changed checks and the figures that
/// moved more than `threshold_percent`.
pub fn compare(new: &RunResults, baseline: &RunResults, threshold_percent: f64) -> Comparison {
    let (pairs, unpaired) = pair_devices(&new.devices, &baseline.devices);
    let mut c = Comparison {
        baseline: BaselineInfo {
            started: baseline.meta.started.clone(),
            host: baseline.meta.host.clone(),
            kernel_release: baseline.meta.kernel_release.clone(),
            tool_version: baseline.meta.tool_version.clone(),
        },
        threshold_percent,
        newly_failing: Vec::new(),
        newly_passing: Vec::new(),
        newly_ignored: Vec::new(),
        figures: Vec::new(),
        unpaired,
    };
    for (n, o) in pairs {
        compare_checks(&mut c, n, new.meta.grading(), o, baseline.meta.grading());
        compare_figures(&mut c, n, o);
    }
    let by_id = |a: &CheckChange, b: &CheckChange| {
        (a.ids.first(), a.path()).cmp(&(b.ids.first(), b.path()))
    };
    c.newly_failing.sort_by(by_id);
    c.newly_passing.sort_by(by_id);
    c.newly_ignored.sort_by(by_id);
    c
}

fn compare_checks(
    c: &mut Comparison,
    new: &DeviceResults,
    new_grading: Grading,
    old: &DeviceResults,
    old_grading: Grading,
) {
    let device = device_label(new);
    let old_cases: BTreeMap<&str, &CaseResult> =
        old.cases.iter().map(|k| (k.name.as_str(), k)).collect();
    let no_checks: Vec<CheckRecord> = Vec::new();
    for case in &new.cases {
        let before = old_cases.get(case.name.as_str()).copied();
        let ran_now = case.outcome != results::Outcome::Ignored;
        let ran_before = before.is_some_and(|b| b.outcome != results::Outcome::Ignored);
        let old_checks = before.map_or(&no_checks, |b| &b.checks);
        let mut names: Vec<&str> = case.checks.iter().map(|k| k.name.as_str()).collect();
        for k in old_checks {
            if !names.contains(&k.name.as_str()) {
                names.push(&k.name);
            }
        }
        let mut case_newly_failing = false;
        for name in names {
            let now_check = case.checks.iter().find(|k| k.name == name);
            let old_check = old_checks.iter().find(|k| k.name == name);
            let now = Standing::of(now_check, ran_now, new_grading);
            let was = Standing::of(old_check, ran_before, old_grading);
            let record = now_check.or(old_check).expect("a name from one of the two");
            let change = |detail: String| CheckChange {
                ids: record.ids.clone(),
                strength: Some(record.strength),
                device: device.clone(),
                case: case.name.clone(),
                check: Some(name.to_string()),
                before: was.as_str().into(),
                after: now.as_str().into(),
                detail,
            };
            if now.failing() && now.severity() > was.severity() {
                case_newly_failing = true;
                let k = now_check.expect("a failing check ran");
                c.newly_failing.push(change(one_line(&format!(
                    "expected {}, observed {}",
                    k.expected, k.observed
                ))));
            } else if now == Standing::Pass && was.failing() {
                c.newly_passing.push(change(String::new()));
            } else if now == Standing::NotRun && was != Standing::NotRun {
                let why = if !ran_now {
                    case.reason
                        .clone()
                        .unwrap_or_else(|| "the case was ignored".into())
                } else if now_check.is_none() {
                    "the case no longer makes this check".into()
                } else {
                    "the check did not apply".into()
                };
                c.newly_ignored.push(change(one_line(&why)));
            }
        }
        let failed_before = before.is_some_and(|b| b.outcome.is_failure());
        if case.outcome.is_failure() && !failed_before && !case_newly_failing {
            c.newly_failing.push(CheckChange {
                ids: Vec::new(),
                strength: None,
                device: device.clone(),
                case: case.name.clone(),
                check: None,
                before: before.map_or("not run", |b| b.outcome.as_str()).into(),
                after: "fail".into(),
                detail: one_line(&format!(
                    "{}{}",
                    case.outcome.as_str(),
                    case.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )),
            });
        }
    }
    let new_names: Vec<&str> = new.cases.iter().map(|k| k.name.as_str()).collect();
    for old_case in old
        .cases
        .iter()
        .filter(|k| !new_names.contains(&k.name.as_str()))
    {
        if old_case.outcome == results::Outcome::Ignored {
            continue;
        }
        for k in &old_case.checks {
            let was = Standing::of(Some(k), true, old_grading);
            if was == Standing::NotRun {
                continue;
            }
            c.newly_ignored.push(CheckChange {
                ids: k.ids.clone(),
                strength: Some(k.strength),
                device: device.clone(),
                case: old_case.name.clone(),
                check: Some(k.name.clone()),
                before: was.as_str().into(),
                after: Standing::NotRun.as_str().into(),
                detail: "the case is not in this run".into(),
            });
        }
    }
}

/// Per arc, every latency sample of the device's cases.
fn latencies(d: &DeviceResults) -> BTreeMap<&str, Vec<u64>> {
    let mut out: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for case in &d.cases {
        for (arc, ns) in &case.latencies {
            out.entry(arc).or_default().extend(ns);
        }
    }
    out
}

/// Bytes per second of all the device's transfers in one direction.
fn rate(d: &DeviceResults, direction: Direction) -> Option<f64> {
    let (bytes, ns) = d
        .cases
        .iter()
        .flat_map(|c| &c.transfers)
        .filter(|t| t.direction == direction)
        .fold((0u64, 0u64), |(b, n), t| {
            (b.saturating_add(t.bytes), n.saturating_add(t.duration_ns))
        });
    (ns > 0 && bytes > 0).then(|| bytes as f64 * 1e9 / ns as f64)
}

fn compare_figures(c: &mut Comparison, new: &DeviceResults, old: &DeviceResults) {
    let device = device_label(new);
    let mut add = |figure: Figure, what: String, before: f64, after: f64| {
        if before <= 0.0 {
            return;
        }
        let percent = (after - before) / before * 100.0;
        if percent.abs() <= c.threshold_percent {
            return;
        }
        let worse = match figure {
            Figure::Throughput => after < before,
            Figure::Latency | Figure::Downtime => after > before,
        };
        c.figures.push(FigureChange {
            device: device.clone(),
            figure,
            what,
            before,
            after,
            percent,
            worse,
        });
    };
    let old_lat = latencies(old);
    for (arc, samples) in latencies(new) {
        let (Some(now), Some(was)) = (
            Spread::of(&samples),
            old_lat.get(arc).and_then(|s| Spread::of(s)),
        ) else {
            continue;
        };
        add(
            Figure::Latency,
            format!("SET {} median", arc.replace('>', " -> ")),
            was.median as f64,
            now.median as f64,
        );
    }
    for (direction, name) in [(Direction::Save, "save"), (Direction::Resume, "resume")] {
        if let (Some(was), Some(now)) = (rate(old, direction), rate(new, direction)) {
            add(Figure::Throughput, format!("{name} throughput"), was, now);
        }
    }
    if let (Some(was), Some(now)) = (old.downtime_ns, new.downtime_ns) {
        add(Figure::Downtime, "downtime".into(), was as f64, now as f64);
    }
}

/// The comparison as terminal text.
pub fn comparison_text(c: &Comparison) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let b = &c.baseline;
    let _ = writeln!(
        out,
        "compared with the baseline of {} on {} (kernel {}, vfio-migtest {}):",
        b.started, b.host, b.kernel_release, b.tool_version
    );
    if c.is_empty() {
        let _ = writeln!(out, "  nothing changed");
    }
    for (title, list) in [
        ("newly failing", &c.newly_failing),
        ("newly passing", &c.newly_passing),
        ("newly ignored", &c.newly_ignored),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {title}: {}", list.len());
        for k in list {
            let strength = k
                .strength
                .map(|s| format!(" ({})", s.as_str()))
                .unwrap_or_default();
            let detail = if k.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", k.detail)
            };
            let _ = writeln!(
                out,
                "    {}{strength} {}: {} -> {}{detail}",
                k.id_text(),
                k.path(),
                k.before,
                k.after
            );
        }
    }
    if !c.figures.is_empty() {
        let _ = writeln!(
            out,
            "  figures beyond {}%: {}",
            c.threshold_percent,
            c.figures.len()
        );
        for f in &c.figures {
            let _ = writeln!(
                out,
                "    {} {}: {} -> {} ({}{})",
                f.device,
                f.what,
                f.before_text(),
                f.after_text(),
                f.percent_text(),
                if f.worse { ", worse" } else { ", better" }
            );
        }
    }
    for u in &c.unpaired {
        let _ = writeln!(out, "  unpaired device: {u}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;
    use results::{Outcome, Verdict};

    /// The fixture as a run where every case that ran passed.
    fn clean() -> RunResults {
        let mut r = fixture();
        r.meta.started = "2025-03-13T09:00:00Z".into();
        for case in r.devices.iter_mut().flat_map(|d| &mut d.cases) {
            if case.outcome != Outcome::Ignored {
                case.outcome = Outcome::Pass;
                case.reason = None;
            }
            for check in &mut case.checks {
                if check.verdict == Verdict::Fail {
                    check.verdict = Verdict::Pass;
                }
                check.known_failure = None;
            }
        }
        r
    }

    fn failing_paths(r: &RunResults) -> Vec<String> {
        let mut out = Vec::new();
        for d in &r.devices {
            for c in &d.cases {
                for k in &c.checks {
                    let s = CheckStatus::of(k, r.meta.grading());
                    if matches!(
                        s,
                        CheckStatus::Fail
                            | CheckStatus::Warn
                            | CheckStatus::Xfail
                            | CheckStatus::Xpass
                    ) {
                        out.push(format!("{}/{}/{}", device_label(d), c.name, k.name));
                    }
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_run_compared_with_itself_changed_nothing() {
        let c = compare(&fixture(), &fixture(), DEFAULT_THRESHOLD_PERCENT);
        assert!(c.is_empty(), "{c:#?}");
        assert!(!c.newly_fails());
        assert!(comparison_text(&c).ends_with("  nothing changed\n"));
    }

    #[test]
    fn every_failing_check_of_a_run_is_new_against_a_clean_baseline() {
        let new = fixture();
        let c = compare(&new, &clean(), DEFAULT_THRESHOLD_PERCENT);
        let mut listed: Vec<String> = c
            .newly_failing
            .iter()
            .filter(|k| k.check.is_some())
            .map(CheckChange::path)
            .collect();
        listed.sort();
        assert_eq!(listed, failing_paths(&new));
        assert!(c.newly_fails());
        assert!(c.newly_passing.is_empty() && c.newly_ignored.is_empty());
        // Sorted by requirement ID.
        let ids: Vec<_> = c.newly_failing.iter().map(|k| k.ids.first()).collect();
        assert!(ids.windows(2).all(|w| w[0] <= w[1]), "{ids:?}");
        // A timed-out or errored case without a failed check is listed as
        // the case.
        for case in new.devices.iter().flat_map(|d| &d.cases) {
            let has_failing_check = c
                .newly_failing
                .iter()
                .any(|k| k.case == case.name && k.check.is_some());
            let listed_alone = c
                .newly_failing
                .iter()
                .any(|k| k.case == case.name && k.check.is_none());
            assert_eq!(
                listed_alone,
                case.outcome.is_failure() && !has_failing_check,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn fixed_checks_are_newly_passing_and_fail_nothing() {
        let c = compare(&clean(), &fixture(), DEFAULT_THRESHOLD_PERCENT);
        assert!(c.newly_failing.is_empty(), "{:#?}", c.newly_failing);
        assert!(!c.newly_fails());
        let mut listed: Vec<String> = c.newly_passing.iter().map(CheckChange::path).collect();
        listed.sort();
        assert_eq!(listed, failing_paths(&fixture()));
    }

    #[test]
    fn a_warning_alone_is_listed_but_does_not_fail() {
        let mut new = clean();
        let case = new.devices[0]
            .cases
            .iter_mut()
            .find(|c| c.name == "precopy-then-stop-copy")
            .unwrap();
        let check = case
            .checks
            .iter_mut()
            .find(|k| k.strength == Strength::Should)
            .unwrap();
        check.verdict = Verdict::Fail;
        let c = compare(&new, &clean(), DEFAULT_THRESHOLD_PERCENT);
        assert_eq!(c.newly_failing.len(), 1);
        assert_eq!(c.newly_failing[0].after, "warn");
        assert!(!c.newly_fails());
        // Under --strict the same failure fails the run.
        new.meta.strict = true;
        assert!(compare(&new, &clean(), DEFAULT_THRESHOLD_PERCENT).newly_fails());
    }

    #[test]
    fn ignored_and_missing_cases_are_newly_ignored() {
        let mut new = clean();
        let cases = &mut new.devices[0].cases;
        let gone = cases.remove(0);
        let ignored = cases
            .iter_mut()
            .find(|c| c.outcome == Outcome::Pass && !c.checks.is_empty())
            .unwrap();
        ignored.outcome = Outcome::Ignored;
        ignored.reason = Some("the device lacks PRE_COPY".into());
        let ignored_name = ignored.name.clone();
        let c = compare(&new, &clean(), DEFAULT_THRESHOLD_PERCENT);
        assert!(c.newly_failing.is_empty() && !c.newly_fails());
        let of = |name: &str| {
            c.newly_ignored
                .iter()
                .filter(|k| k.case == name)
                .map(|k| k.detail.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(of(&gone.name).len(), gone.checks.len());
        assert!(of(&gone.name)
            .iter()
            .all(|d| d == "the case is not in this run"));
        assert!(of(&ignored_name)
            .iter()
            .all(|d| d == "the device lacks PRE_COPY"));
        assert!(!of(&ignored_name).is_empty());
    }

    #[test]
    fn figures_beyond_the_threshold_are_listed_with_their_direction() {
        let old = fixture();
        let mut new = fixture();
        let d = &mut new.devices[0];
        let was = d.downtime_ns.unwrap();
        d.downtime_ns = Some(was * 2);
        for t in d.cases.iter_mut().flat_map(|c| &mut c.transfers) {
            t.duration_ns /= 4;
        }
        let c = compare(&new, &old, 50.0);
        let downtime = c
            .figures
            .iter()
            .find(|f| f.figure == Figure::Downtime)
            .unwrap();
        assert!(downtime.worse);
        assert_eq!(downtime.percent_text(), "+100%");
        let save = c
            .figures
            .iter()
            .find(|f| f.what == "save throughput")
            .unwrap();
        assert!(!save.worse && save.percent > 250.0, "{save:?}");
        assert!(c.figures.iter().all(|f| f.device == "sim"));
        // The same changes within a higher threshold are not listed.
        let c = compare(&new, &old, 400.0);
        assert!(c.figures.is_empty(), "{:?}", c.figures);
    }

    #[test]
    fn devices_pair_by_name_then_in_order() {
        let old = fixture();
        let mut new = fixture();
        new.devices.reverse();
        new.devices[0].name = "renamed".into();
        let extra = new.devices[1].clone();
        new.devices.push(DeviceResults {
            name: "another".into(),
            spec: "0000:5e:00.1".into(),
            ..extra
        });
        let c = compare(&new, &old, DEFAULT_THRESHOLD_PERCENT);
        // The renamed device paired with the one left over, so nothing
        // changed on either; the third has no counterpart.
        assert!(c.newly_failing.is_empty(), "{:#?}", c.newly_failing);
        assert_eq!(c.unpaired, ["0000:5e:00.1 (only in this run)"]);
    }

    #[test]
    fn comparison_snapshot() {
        let mut new = fixture();
        new.devices[0].downtime_ns = new.devices[0].downtime_ns.map(|n| n * 3);
        insta::assert_snapshot!(comparison_text(&compare(
            &new,
            &clean(),
            DEFAULT_THRESHOLD_PERCENT
        )));
    }

    #[test]
    fn html_and_junit_carry_the_comparison() {
        let c = compare(&fixture(), &clean(), DEFAULT_THRESHOLD_PERCENT);
        let html = crate::html_compared(&fixture(), &c);
        assert!(html.contains(r#"<section id="comparison">"#));
        assert!(html.contains(r##"<a href="#comparison">"##));
        assert!(html.contains("Newly failing"));
        let first = &c.newly_failing[0];
        assert!(html.contains(&first.path()), "{}", first.path());
        assert!(!crate::html(&fixture()).contains(r#"id="comparison""#));
        let xml = crate::junit_compared(&fixture(), &c);
        assert!(xml.contains(r#"<property name="baseline.started" value="2025-03-13T09:00:00Z"/>"#));
        assert_eq!(
            xml.matches(r#"<property name="newly_failing""#).count(),
            c.newly_failing.len()
        );
        assert!(!crate::junit(&fixture()).contains("baseline."));
    }
}
