//! Expectations files (`run --expect FILE`, `report --expect FILE`): the
//! failures a lab already knows about for a driver, each with a reason.
//!
//! ```yaml
//! driver: mtty                 # optional: only devices bound to this driver
//! device_type: mtty-2          # optional: only devices of this type
//! known:
//!   - case: dma-logging        # a case name, or
//!     ids: [V2-LOG-02]         # requirement IDs, or both
//!     reason: mtty_log_start() returns 0 unconditionally
//!     link: https://...        # optional
//! ```
//!
//! An entry covers a check when the check belongs to the entry's case (any
//! case if it names none) and cites one of its IDs (any ID if it lists
//! none). After a case is folded:
//! - every failed check an entry covers gets `known_failure` (its reason);
//! - a case whose remaining (not covered) checks would fail stays FAIL;
//! - else a case with an entry that no failed check met becomes XPASS, so
//!   a lab notices a fix; the passed checks the entry covers are marked;
//! - else a case with remaining SHOULD failures stays WARN;
//! - else a case with covered MUST or SHOULD failures becomes XFAIL.
//!
//! The case's reason then cites the entries (`file:line:column: reason`).
//! Cases that were ignored, timed out, errored or did not finish keep
//! their outcome. XFAIL does not fail a run; XPASS does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use results::{
    case_outcome, CaseResult, CheckRecord, DeviceResults, Grading, Outcome, SourceLoc, Strength,
    Verdict,
};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use suite::scenario::{parse_yaml, LoadError};

use crate::cases::Case;

/// Requirements every case may cite besides its scenario's: the runner's
/// own checks (kernel log, deadline).
const RUNNER_IDS: [&str; 2] = ["KERNEL-01", "KERNEL-02"];

/// Every case an expectations file may name, with the requirement IDs it
/// can check.
pub type CaseIds = BTreeMap<String, BTreeSet<String>>;

/// The case names and IDs of a loaded catalogue.
pub fn case_ids(cases: &[Case]) -> CaseIds {
    cases
        .iter()
        .map(|c| {
            let mut ids: BTreeSet<String> = c.scenario.requirement_ids().into_iter().collect();
            ids.extend(RUNNER_IDS.iter().map(|s| s.to_string()));
            (c.scenario.name.clone(), ids)
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    driver: Option<Spanned<String>>,
    #[serde(default)]
    device_type: Option<Spanned<String>>,
    known: Spanned<Vec<Spanned<RawKnown>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKnown {
    #[serde(default)]
    case: Option<Spanned<String>>,
    #[serde(default)]
    ids: Vec<Spanned<String>>,
    reason: Spanned<String>,
    #[serde(default)]
    link: Option<Spanned<String>>,
}

/// One known failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub case: Option<String>,
    pub ids: Vec<String>,
    pub reason: String,
    pub link: Option<String>,
    /// Where the entry starts.
    pub at: SourceLoc,
}

impl Known {
    /// Whether this entry speaks of `check` of case `case`.
    fn covers(&self, case: &str, check: &CheckRecord) -> bool {
        self.case.as_deref().is_none_or(|c| c == case)
            && (self.ids.is_empty() || check.ids.iter().any(|id| self.ids.contains(id)))
    }

    /// What a covered check records as its `known_failure`.
    fn text(&self) -> String {
        match &self.link {
            Some(link) => format!("{} ({link})", self.reason),
            None => self.reason.clone(),
        }
    }
}

/// One expectations file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectFile {
    pub file: String,
    pub driver: Option<String>,
    pub device_type: Option<String>,
    pub known: Vec<Known>,
}

impl ExpectFile {
    /// Whether the file speaks of `device`.
    pub fn applies_to(&self, device: &DeviceResults) -> bool {
        let matches = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        matches(&self.driver, &device.driver) && matches(&self.device_type, &device.device_type)
    }

    /// `driver mtty, type mtty-2`, or `every device`.
    pub fn scope(&self) -> String {
        let parts: Vec<String> = [("driver", &self.driver), ("type", &self.device_type)]
            .into_iter()
            .filter_map(|(what, v)| v.as_ref().map(|v| format!("{what} {v}")))
            .collect();
        if parts.is_empty() {
            "every device".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Every `--expect` file of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectations {
    pub files: Vec<ExpectFile>,
}

/// Loads and checks every file; all errors are returned, the first of each
/// file.
pub fn load(paths: &[PathBuf], catalogue: &CaseIds) -> Result<Expectations, Vec<LoadError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| LoadError {
                file: name.clone(),
                line: 1,
                column: 1,
                message: format!("cannot read the expectations file: {e}"),
                snippet: None,
            })
            .and_then(|text| parse(&text, &name, catalogue));
        match parsed {
            Ok(f) => files.push(f),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(Expectations { files })
    } else {
        Err(errors)
    }
}

/// Parses one expectations file; `file` names it in errors and reasons.
pub fn parse(text: &str, file: &str, catalogue: &CaseIds) -> Result<ExpectFile, LoadError> {
    let raw: RawFile = parse_yaml(text, file)?;
    let err = |at: &Location, message: String| LoadError {
        file: file.to_string(),
        line: at.line().max(1),
        column: at.column().max(1),
        message,
        snippet: None,
    };
    let non_empty = |s: &Option<Spanned<String>>, what: &str| match s {
        Some(v) if v.value.trim().is_empty() => {
            Err(err(&v.referenced, format!("`{what}` is empty")))
        }
        Some(v) => Ok(Some(v.value.clone())),
        None => Ok(None),
    };
    let driver = non_empty(&raw.driver, "driver")?;
    let device_type = non_empty(&raw.device_type, "device_type")?;
    if raw.known.value.is_empty() {
        return Err(err(
            &raw.known.referenced,
            "`known` lists no failures".into(),
        ));
    }
    let mut known = Vec::new();
    for entry in &raw.known.value {
        let at = &entry.referenced;
        let k = &entry.value;
        if k.case.is_none() && k.ids.is_empty() {
            return Err(err(at, "an entry needs `case`, `ids` or both".into()));
        }
        let case_ids = match &k.case {
            Some(c) => match catalogue.get(&c.value) {
                Some(ids) => Some(ids),
                None => {
                    return Err(err(
                        &c.referenced,
                        format!(
                            "unknown case `{}` (`vfio-migtest list` shows them)",
                            c.value
                        ),
                    ))
                }
            },
            None => None,
        };
        for id in &k.ids {
            if suite::requirements::find(&id.value).is_none() {
                return Err(err(
                    &id.referenced,
                    format!(
                        "unknown requirement ID `{}` (see uapi-requirements.md)",
                        id.value
                    ),
                ));
            }
            if let (Some(ids), Some(case)) = (case_ids, &k.case) {
                if !ids.contains(&id.value) {
                    let listed: Vec<&str> = ids.iter().map(String::as_str).collect();
                    return Err(err(
                        &id.referenced,
                        format!(
                            "case `{}` never checks {}; it checks {}",
                            case.value,
                            id.value,
                            listed.join(", ")
                        ),
                    ));
                }
            }
        }
        if k.reason.value.trim().is_empty() {
            return Err(err(
                &k.reason.referenced,
                "`reason` is empty: say why the failure is known".into(),
            ));
        }
        if let Some(link) = &k.link {
            let url = &link.value;
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.contains(char::is_whitespace)
            {
                return Err(err(
                    &link.referenced,
                    format!("`link` must be an http(s) URL, not `{url}`"),
                ));
            }
        }
        known.push(Known {
            case: k.case.as_ref().map(|c| c.value.clone()),
            ids: k.ids.iter().map(|i| i.value.clone()).collect(),
            reason: k.reason.value.trim().to_string(),
            link: k.link.as_ref().map(|l| l.value.clone()),
            at: SourceLoc {
                file: file.to_string(),
                line: u32::try_from(at.line()).unwrap_or(u32::MAX),
                column: u32::try_from(at.column()).unwrap_or(u32::MAX),
            },
        });
    }
    Ok(ExpectFile {
        file: file.to_string(),
        driver,
        device_type,
        known,
    })
}

/// `file:line:column: reason; ...` for the entries at `which`.
fn cite(entries: &[&Known], which: impl Iterator<Item = usize>) -> String {
    let mut seen = BTreeSet::new();
    which
        .filter(|&i| seen.insert(i))
        .map(|i| format!("{}: {}", entries[i].at, entries[i].text()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The case with the expectations that apply to `device` applied (see the
/// module documentation). `grading` is the run's `--strict` and `--consumer`.
pub fn apply(
    expectations: &Expectations,
    device: &DeviceResults,
    mut case: CaseResult,
    grading: Grading,
) -> CaseResult {
    let entries: Vec<&Known> = expectations
        .files
        .iter()
        .filter(|f| f.applies_to(device))
        .flat_map(|f| &f.known)
        .filter(|k| k.case.as_deref().is_none_or(|c| c == case.name))
        .collect();
    if entries.is_empty() {
        return case;
    }
    // met[i]: a failed check is covered by entry i; counted[i]: one of them
    // is a MUST or SHOULD check, which is what turns a case into XFAIL.
    let mut met = vec![false; entries.len()];
    let mut counted = vec![false; entries.len()];
    for check in case
        .checks
        .iter_mut()
        .filter(|c| c.verdict == Verdict::Fail)
    {
        let mut first = None;
        for (i, k) in entries.iter().enumerate() {
            if k.covers(&case.name, check) {
                met[i] = true;
                counted[i] |= check.strength == Strength::Should || grading.fails(check);
                first.get_or_insert(i);
            }
        }
        if let Some(i) = first {
            check.known_failure = Some(entries[i].text());
        }
    }
    // Only a case that ran to its end can show that a known failure is gone
    // or that every failure is known; a failed case with a reason is one a
    // harness error cut short.
    let judged = matches!(case.outcome, Outcome::Pass | Outcome::Warn | Outcome::Fail)
        && case.reason.is_none();
    if !judged {
        return case;
    }
    let name = case.name.clone();
    let exercised = |k: &Known, checks: &[CheckRecord]| {
        k.case.is_some()
            || checks
                .iter()
                .any(|c| c.verdict != Verdict::NotApplicable && k.covers(&name, c))
    };
    let unmet: Vec<usize> = (0..entries.len())
        .filter(|&i| !met[i] && exercised(entries[i], &case.checks))
        .collect();
    for &i in &unmet {
        for check in case
            .checks
            .iter_mut()
            .filter(|c| c.verdict == Verdict::Pass && entries[i].covers(&name, c))
        {
            check.known_failure = Some(entries[i].text());
        }
    }
    let unknown: Vec<CheckRecord> = case
        .checks
        .iter()
        .filter(|c| c.known_failure.is_none())
        .cloned()
        .collect();
    let rest = case_outcome(&unknown, grading);
    if rest == Outcome::Fail {
        case.outcome = Outcome::Fail;
    } else if !unmet.is_empty() {
        case.outcome = Outcome::Xpass;
        case.reason = Some(cite(&entries, unmet.into_iter()));
    } else if rest == Outcome::Warn {
        case.outcome = Outcome::Warn;
    } else if counted.iter().any(|&c| c) {
        case.outcome = Outcome::Xfail;
        case.reason = Some(cite(&entries, (0..entries.len()).filter(|&i| counted[i])));
    }
    case
}

/// The case as it was before any expectations were applied (for `report
/// --expect`, which replaces the run's expectations).
pub fn clear(mut case: CaseResult, grading: Grading) -> CaseResult {
    for check in &mut case.checks {
        check.known_failure = None;
    }
    if matches!(case.outcome, Outcome::Xfail | Outcome::Xpass) {
        case.outcome = case_outcome(&case.checks, grading);
        case.reason = None;
    }
    case
}

/// How the run's notes about expectations files start.
pub const NOTE_PREFIX: &str = "expectations ";

/// One line per file for the run's notes: which devices it applied to.
pub fn notes(expectations: &Expectations, devices: &[DeviceResults]) -> Vec<String> {
    expectations
        .files
        .iter()
        .map(|f| {
            let on: Vec<&str> = devices
                .iter()
                .filter(|d| f.applies_to(d))
                .map(|d| d.spec.as_str())
                .collect();
            if on.is_empty() {
                format!(
                    "{NOTE_PREFIX}{} ({}) apply to no device of this run",
                    f.file,
                    f.scope()
                )
            } else {
                format!(
                    "{NOTE_PREFIX}{} ({}): {} known failure(s), applied to {}",
                    f.file,
                    f.scope(),
                    f.known.len(),
                    on.join(", ")
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> CaseIds {
        let mut c = CaseIds::new();
        for (name, ids) in [
            ("dma-logging", &["V2-LOG-02", "V2-LOG-03", "V2-LOG-04"][..]),
            ("precopy", &["V2-PRECOPY-06", "V2-PRECOPY-08"]),
            ("fresh-device", &["V2-FSM-01", "V2-FSM-02"]),
        ] {
            let mut set: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
            set.extend(RUNNER_IDS.iter().map(|s| s.to_string()));
            c.insert(name.into(), set);
        }
        c
    }

    const FILE: &str = "driver: mtty
known:
  - case: dma-logging
    ids: [V2-LOG-02]
    reason: mtty_log_start() returns 0
    link: https://example.org/mtty
  - case: precopy
    ids: [V2-PRECOPY-06]
    reason: mtty_save_read() returns 0
";

    fn expectations(text: &str) -> Expectations {
        Expectations {
            files: vec![parse(text, "mtty.yaml", &catalogue()).unwrap()],
        }
    }

    fn device(driver: &str) -> DeviceResults {
        DeviceResults {
            spec: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into(),
            driver: Some(driver.into()),
            device_type: Some("mtty-2".into()),
            ..DeviceResults::default()
        }
    }

    fn check(name: &str, id: &str, strength: Strength, verdict: Verdict) -> CheckRecord {
        CheckRecord {
            name: name.into(),
            ids: vec![id.into()],
            strength,
            verdict,
            expected: "x".into(),
            observed: "y".into(),
            location: None,
            known_failure: None,
            qemu: None,
        }
    }

    /// A folded case: outcome from its checks, as `CaseFold::finish` does.
    fn case(name: &str, checks: Vec<CheckRecord>, strict: bool) -> CaseResult {
        let grading = Grading {
            strict,
            consumer: None,
        };
        let mut c = CaseResult::new(name, &format!("v2/{name}.yaml"), "v2");
        c.outcome = case_outcome(&checks, grading);
        c.checks = checks;
        c
    }

    use Strength::{Df, Must, Should};
    use Verdict::{Fail, NotApplicable, Pass};

    #[test]
    fn the_file_parses_with_locations() {
        let e = expectations(FILE);
        let f = &e.files[0];
        assert_eq!(f.driver.as_deref(), Some("mtty"));
        assert_eq!(f.known.len(), 2);
        assert_eq!(f.known[0].case.as_deref(), Some("dma-logging"));
        assert_eq!(f.known[0].ids, ["V2-LOG-02"]);
        assert_eq!(f.known[0].at.to_string(), "mtty.yaml:3:5");
        assert_eq!(
            f.known[0].text(),
            "mtty_log_start() returns 0 (https://example.org/mtty)"
        );
        assert_eq!(f.known[1].link, None);
        assert_eq!(f.scope(), "driver mtty");
    }

    #[test]
    fn outcomes_follow_the_table() {
        struct Row {
            what: &'static str,
            case: &'static str,
            checks: Vec<CheckRecord>,
            strict: bool,
            outcome: Outcome,
            reason: Option<&'static str>,
        }
        let log02 = |v| check("s8-result", "V2-LOG-02", Must, v);
        let log04 = |v| check("s10-result", "V2-LOG-04", Must, v);
        let pre06 = |v| check("s3-enomsg", "V2-PRECOPY-06", Should, v);
        let pre08 = |v| check("s9-resume", "V2-PRECOPY-08", Must, v);
        let rows = vec![
            Row {
                what: "every failed MUST check known",
                case: "dma-logging",
                checks: vec![log02(Fail), log04(Pass)],
                strict: false,
                outcome: Outcome::Xfail,
                reason: Some(
                    "mtty.yaml:3:5: mtty_log_start() returns 0 (https://example.org/mtty)",
                ),
            },
            Row {
                what: "an unknown MUST failure besides",
                case: "dma-logging",
                checks: vec![log02(Fail), log04(Fail)],
                strict: false,
                outcome: Outcome::Fail,
                reason: None,
            },
            Row {
                what: "the known failure is fixed",
                case: "dma-logging",
                checks: vec![log02(Pass), log04(Pass)],
                strict: false,
                outcome: Outcome::Xpass,
                reason: Some(
                    "mtty.yaml:3:5: mtty_log_start() returns 0 (https://example.org/mtty)",
                ),
            },
            Row {
                what: "fixed, and the check did not even apply",
                case: "dma-logging",
                checks: vec![log02(NotApplicable)],
                strict: false,
                outcome: Outcome::Xpass,
                reason: Some(
                    "mtty.yaml:3:5: mtty_log_start() returns 0 (https://example.org/mtty)",
                ),
            },
            Row {
                what: "a known SHOULD warning",
                case: "precopy",
                checks: vec![pre06(Fail), pre08(Pass)],
                strict: false,
                outcome: Outcome::Xfail,
                reason: Some("mtty.yaml:7:5: mtty_save_read() returns 0"),
            },
            Row {
                what: "a known SHOULD failure under --strict",
                case: "precopy",
                checks: vec![pre06(Fail), pre08(Pass)],
                strict: true,
                outcome: Outcome::Xfail,
                reason: Some("mtty.yaml:7:5: mtty_save_read() returns 0"),
            },
            Row {
                what: "a known warning and an unknown MUST failure",
                case: "precopy",
                checks: vec![pre06(Fail), pre08(Fail)],
                strict: false,
                outcome: Outcome::Fail,
                reason: None,
            },
            Row {
                what: "a case no entry names",
                case: "fresh-device",
                checks: vec![check("s1-state", "V2-FSM-01", Df, Fail)],
                strict: false,
                outcome: Outcome::Pass,
                reason: None,
            },
        ];
        let e = expectations(FILE);
        for row in rows {
            let before = case(row.case, row.checks, row.strict);
            let grading = Grading {
                strict: row.strict,
                consumer: None,
            };
            let after = apply(&e, &device("mtty"), before.clone(), grading);
            assert_eq!(after.outcome, row.outcome, "{}", row.what);
            assert_eq!(after.reason.as_deref(), row.reason, "{}", row.what);
            // Failed checks an entry covers are marked, and only they.
            for (b, a) in before.checks.iter().zip(&after.checks) {
                let covered = e.files[0].known.iter().any(|k| k.covers(row.case, b));
                let marked = a.known_failure.is_some();
                let expect_marked = covered
                    && (b.verdict == Fail || (row.outcome == Outcome::Xpass && b.verdict == Pass));
                assert_eq!(marked, expect_marked, "{}: {}", row.what, b.name);
                assert_eq!(a.verdict, b.verdict);
            }
            // Applying is undone by clear().
            assert_eq!(clear(after, grading), before, "{}", row.what);
        }
    }

    #[test]
    fn other_drivers_and_unfinished_cases_are_left_alone() {
        let e = expectations(FILE);
        let failed = case(
            "dma-logging",
            vec![check("s8-result", "V2-LOG-02", Must, Fail)],
            false,
        );
        assert_eq!(
            apply(
                &e,
                &device("mlx5_vfio_pci"),
                failed.clone(),
                Grading::default()
            ),
            failed
        );
        let mut no_driver = device("mtty");
        no_driver.driver = None;
        assert_eq!(
            apply(&e, &no_driver, failed.clone(), Grading::default()),
            failed
        );

        for outcome in [Outcome::Timeout, Outcome::Error, Outcome::Ignored] {
            let mut c = failed.clone();
            c.outcome = outcome;
            c.reason = Some("did not finish within 1s".into());
            let after = apply(&e, &device("mtty"), c.clone(), Grading::default());
            assert_eq!(after.outcome, outcome);
            assert_eq!(after.reason, c.reason);
            // The failure is still shown as known.
            assert!(after.checks[0].known_failure.is_some());
        }
        // A harness error on a failed case: not judged.
        let mut cut = failed.clone();
        cut.reason = Some("the case process ended before the case finished".into());
        assert_eq!(
            apply(&e, &device("mtty"), cut, Grading::default()).outcome,
            Outcome::Fail
        );
        // Nothing ran: not an XPASS either.
        let mut ignored = case("dma-logging", vec![], false);
        ignored.outcome = Outcome::Ignored;
        assert_eq!(
            apply(&e, &device("mtty"), ignored, Grading::default()).outcome,
            Outcome::Ignored
        );
    }

    #[test]
    fn entries_without_a_case_or_ids() {
        let text = "device_type: mtty-2
known:
  - ids: [V2-LOG-02]
    reason: any case
  - case: precopy
    reason: every failure of precopy
";
        let e = expectations(text);
        assert!(e.files[0].applies_to(&device("anything")));
        // ID-only: applies where that ID is checked; elsewhere it is no XPASS.
        let c = case(
            "dma-logging",
            vec![check("a", "V2-LOG-02", Must, Fail)],
            false,
        );
        assert_eq!(
            apply(&e, &device("mtty"), c, Grading::default()).outcome,
            Outcome::Xfail
        );
        let c = case(
            "fresh-device",
            vec![check("a", "V2-FSM-01", Must, Pass)],
            false,
        );
        assert_eq!(
            apply(&e, &device("mtty"), c, Grading::default()).outcome,
            Outcome::Pass
        );
        // Case-only: every failed check of the case is known.
        let c = case(
            "precopy",
            vec![
                check("a", "V2-PRECOPY-08", Must, Fail),
                check("b", "V2-PRECOPY-06", Should, Fail),
            ],
            false,
        );
        let after = apply(&e, &device("mtty"), c, Grading::default());
        assert_eq!(after.outcome, Outcome::Xfail);
        assert_eq!(
            after.reason.as_deref(),
            Some("mtty.yaml:5:5: every failure of precopy")
        );
        let c = case(
            "precopy",
            vec![check("a", "V2-PRECOPY-08", Must, Pass)],
            false,
        );
        assert_eq!(
            apply(&e, &device("mtty"), c, Grading::default()).outcome,
            Outcome::Xpass
        );
    }

    #[test]
    fn a_known_note_alone_changes_no_outcome() {
        let text = "known:
  - case: fresh-device
    ids: [V2-FSM-01]
    reason: mtty_close() keeps the migration state
";
        let e = expectations(text);
        let c = case(
            "fresh-device",
            vec![check("s1", "V2-FSM-01", Df, Fail)],
            false,
        );
        let after = apply(&e, &device("mtty"), c, Grading::default());
        assert_eq!(after.outcome, Outcome::Pass);
        assert!(after.checks[0].known_failure.is_some());
    }

    #[test]
    fn bad_files_name_the_place() {
        let cases = [
            ("known: []\n", "1:8", "`known` lists no failures"),
            ("known:\n  - reason: x\n", "2:5", "an entry needs `case`, `ids` or both"),
            (
                "known:\n  - case: nope\n    reason: x\n",
                "2:11",
                "unknown case `nope`",
            ),
            (
                "known:\n  - ids: [V2-LOG-99]\n    reason: x\n",
                "2:11",
                "unknown requirement ID `V2-LOG-99`",
            ),
            (
                "known:\n  - case: precopy\n    ids: [V2-LOG-02]\n    reason: x\n",
                "3:11",
                "case `precopy` never checks V2-LOG-02; it checks KERNEL-01, KERNEL-02, V2-PRECOPY-06, V2-PRECOPY-08",
            ),
            (
                "known:\n  - case: precopy\n    reason: '  '\n",
                "3:13",
                "`reason` is empty",
            ),
            (
                "known:\n  - case: precopy\n    reason: x\n    link: lore\n",
                "4:11",
                "`link` must be an http(s) URL, not `lore`",
            ),
            ("driver: ''\nknown:\n  - case: precopy\n    reason: x\n", "1:9", "`driver` is empty"),
            (
                "known:\n  - case: precopy\n    reason: x\n    why: y\n",
                "4:5",
                "unknown field `why`",
            ),
            ("known:\n  - case: precopy\n", "2:5", "missing field `reason`"),
        ];
        for (text, at, message) in cases {
            let e = parse(text, "x.yaml", &catalogue()).unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("x.yaml:{at}: ")) && shown.contains(message),
                "{text:?}: {shown}"
            );
        }
    }

    #[test]
    fn load_reports_every_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&good, FILE).unwrap();
        std::fs::write(&bad, "known: [\n").unwrap();
        let missing = dir.path().join("missing.yaml");
        let errors = load(&[good.clone(), bad, missing], &catalogue()).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].file.ends_with("bad.yaml"));
        assert!(
            errors[1].message.starts_with("cannot read"),
            "{}",
            errors[1]
        );
        assert_eq!(load(&[good], &catalogue()).unwrap().files.len(), 1);
    }

    #[test]
    fn notes_say_where_each_file_applied() {
        let e = expectations(FILE);
        let sim = DeviceResults {
            spec: "sim".into(),
            driver: Some("sim".into()),
            ..DeviceResults::default()
        };
        assert_eq!(
            notes(&e, std::slice::from_ref(&sim)),
            ["expectations mtty.yaml (driver mtty) apply to no device of this run"]
        );
        assert_eq!(
            notes(&e, &[sim, device("mtty")]),
            ["expectations mtty.yaml (driver mtty): 2 known failure(s), applied to 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"]
        );
    }

    /// The files shipped in expectations/ load against the built-in catalogue.
    #[test]
    fn shipped_expectations_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../expectations");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty());
        let cases = crate::cases::load(None).unwrap();
        if let Err(errors) = load(&paths, &case_ids(&cases)) {
            let text: Vec<String> = errors.iter().map(|e| e.detailed()).collect();
            panic!("{}", text.join("\n"));
        }
    }
}
