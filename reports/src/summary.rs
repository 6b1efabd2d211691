//! What every renderer needs to agree on: outcome counts, stable names,
//! how a check is classified and how a failed check is described.

use results::{CaseResult, CheckRecord, DeviceResults, Outcome, Strength, Verdict};

/// How many cases ended with each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub ignored: usize,
    pub timeout: usize,
    pub error: usize,
    pub xfail: usize,
    pub xpass: usize,
}

impl OutcomeCounts {
    pub fn of<'a>(cases: impl IntoIterator<Item = &'a CaseResult>) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for case in cases {
            counts.add(case.outcome);
        }
        counts
    }

    pub fn add(&mut self, outcome: Outcome) {
        let slot = match outcome {
            Outcome::Pass => &mut self.pass,
            Outcome::Warn => &mut self.warn,
            Outcome::Fail => &mut self.fail,
            Outcome::Ignored => &mut self.ignored,
            Outcome::Timeout => &mut self.timeout,
            Outcome::Error => &mut self.error,
            Outcome::Xfail => &mut self.xfail,
            Outcome::Xpass => &mut self.xpass,
        };
        *slot += 1;
    }

    pub fn get(&self, outcome: Outcome) -> usize {
        match outcome {
            Outcome::Pass => self.pass,
            Outcome::Warn => self.warn,
            Outcome::Fail => self.fail,
            Outcome::Ignored => self.ignored,
            Outcome::Timeout => self.timeout,
            Outcome::Error => self.error,
            Outcome::Xfail => self.xfail,
            Outcome::Xpass => self.xpass,
        }
    }

    pub fn total(&self) -> usize {
        ALL_OUTCOMES.iter().map(|&o| self.get(o)).sum()
    }

    /// Cases that ran (everything but ignored ones).
    pub fn ran(&self) -> usize {
        self.total() - self.ignored
    }

    /// Cases whose outcome fails the run.
    pub fn failed(&self) -> usize {
        ALL_OUTCOMES
            .iter()
            .filter(|o| o.is_failure())
            .map(|&o| self.get(o))
            .sum()
    }

    /// `2 pass, 1 warn, 1 fail`: the non-zero counts in [`ALL_OUTCOMES`] order.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = ALL_OUTCOMES
            .iter()
            .filter(|&&o| self.get(o) > 0)
            .map(|&o| format!("{} {}", self.get(o), o.as_str()))
            .collect();
        if parts.is_empty() {
            "no cases".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Every outcome, in the order reports list them.
pub const ALL_OUTCOMES: [Outcome; 8] = [
    Outcome::Pass,
    Outcome::Warn,
    Outcome::Fail,
    Outcome::Ignored,
    Outcome::Timeout,
    Outcome::Error,
    Outcome::Xfail,
    Outcome::Xpass,
];

/// Makes `text` slug-safe (`[A-Za-z0-9_-]`): each run of other characters
/// becomes one `-`, and such a dash is dropped at either end. Text that is
/// already slug-safe is returned unchanged.
pub fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut replaced = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c);
            replaced = false;
        } else if !replaced {
            if !out.is_empty() {
                out.push('-');
            }
            replaced = true;
        }
    }
    if replaced {
        out.pop();
    }
    if out.is_empty() {
        "unnamed".to_string()
    } else {
        out
    }
}

/// One stable slug per device, unique within the run: the slug of its
/// `name` (the BDF, UUID or `sim`) with `__` squeezed to `_` so that `__`
/// only ever separates device from case; devices that would share one use
/// the slug of their `spec` instead; if that still clashes, the device's
/// 1-based position is appended (`sim-2`).
pub fn device_slugs(devices: &[DeviceResults]) -> Vec<String> {
    let squeeze = |text: &str| {
        let mut s = slug(text);
        while s.contains("__") {
            s = s.replace("__", "_");
        }
        s
    };
    let base = |d: &DeviceResults| {
        if d.name.is_empty() {
            squeeze(&d.spec)
        } else {
            squeeze(&d.name)
        }
    };
    let bases: Vec<String> = devices.iter().map(base).collect();
    let by_spec: Vec<String> = devices
        .iter()
        .zip(&bases)
        .map(|(d, b)| {
            if bases.iter().filter(|o| *o == b).count() > 1 {
                squeeze(&d.spec)
            } else {
                b.clone()
            }
        })
        .collect();
    by_spec
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if by_spec.iter().filter(|o| *o == s).count() > 1 {
                format!("{s}-{}", i + 1)
            } else {
                s.clone()
            }
        })
        .collect()
}

/// The run-wide name of a case: `<device slug>__<case name>` (`sim__fsm-every-arc`).
pub fn case_id(device_slug: &str, case: &CaseResult) -> String {
    format!("{device_slug}__{}", slug(&case.name))
}

/// How a single check reads in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Pass,
    /// A MUST check failed (or a SHOULD one under `--strict`).
    Fail,
    /// A SHOULD check failed.
    Warn,
    /// A DF or INFO check deviated: recorded, never a failure.
    Note,
    NotApplicable,
    /// Failed, as the expectations file says it would.
    Xfail,
    /// Passed, though the expectations file says it fails.
    Xpass,
}

impl CheckStatus {
    pub fn of(check: &CheckRecord, strict: bool) -> CheckStatus {
        match (check.verdict, &check.known_failure, check.strength) {
            (Verdict::NotApplicable, _, _) => CheckStatus::NotApplicable,
            (Verdict::Fail, Some(_), _) => CheckStatus::Xfail,
            (Verdict::Pass, Some(_), _) => CheckStatus::Xpass,
            (Verdict::Pass, None, _) => CheckStatus::Pass,
            (Verdict::Fail, None, Strength::Must) => CheckStatus::Fail,
            (Verdict::Fail, None, Strength::Should) if strict => CheckStatus::Fail,
            (Verdict::Fail, None, Strength::Should) => CheckStatus::Warn,
            (Verdict::Fail, None, Strength::Df | Strength::Info) => CheckStatus::Note,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "fail",
            CheckStatus::Warn => "warn",
            CheckStatus::Note => "note",
            CheckStatus::NotApplicable => "n/a",
            CheckStatus::Xfail => "xfail",
            CheckStatus::Xpass => "xpass",
        }
    }
}

/// The check that explains a case's outcome: the first failed MUST check,
/// else the first failed SHOULD check, else the first failed DF/INFO one,
/// else (for XPASS) the first check that passed against expectations.
pub fn first_failed_check(case: &CaseResult) -> Option<&CheckRecord> {
    let failed = |strength: Strength| {
        case.checks
            .iter()
            .find(|c| c.verdict == Verdict::Fail && c.strength == strength)
    };
    failed(Strength::Must)
        .or_else(|| failed(Strength::Should))
        .or_else(|| failed(Strength::Df))
        .or_else(|| failed(Strength::Info))
        .or_else(|| {
            case.checks
                .iter()
                .find(|c| c.verdict == Verdict::Pass && c.known_failure.is_some())
        })
}

/// `V2-SAVE-02: expected X, observed Y (cases/v2/x.yaml:14:7)`, on one line.
pub fn check_message(check: &CheckRecord) -> String {
    let ids = if check.ids.is_empty() {
        check.name.clone()
    } else {
        check.ids.join(", ")
    };
    let at = check
        .location
        .as_ref()
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    one_line(&format!(
        "{ids}: expected {}, observed {}{at}",
        check.expected, check.observed
    ))
}

/// Folds line breaks (and other control characters) into spaces, for
/// formats where one record is one line.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use results::SourceLoc;

    fn device(spec: &str, name: &str) -> DeviceResults {
        DeviceResults {
            spec: spec.into(),
            name: name.into(),
            ..DeviceResults::default()
        }
    }

    #[test]
    fn slugs_keep_safe_text_and_replace_the_rest() {
        assert_eq!(slug("fsm-every-arc"), "fsm-every-arc");
        assert_eq!(slug("a--b__c"), "a--b__c");
        assert_eq!(slug("0000:3b:00.1"), "0000-3b-00-1");
        assert_eq!(slug("/dev/vfio/devices/vfio3"), "dev-vfio-devices-vfio3");
        assert_eq!(slug("sim:fault=enomsg in stop"), "sim-fault-enomsg-in-stop");
        assert_eq!(slug("é"), "unnamed");
        assert_eq!(slug(""), "unnamed");
        assert_eq!(slug("x#"), "x");
    }

    #[test]
    fn device_slugs_are_unique_and_stable() {
        let devices = [
            device("sim", "sim"),
            device("sim:v1", "sim"),
            device("0000:3b:00.1", "0000:3b:00.1"),
            device("/dev/vfio/devices/vfio3", "0000:3b:00.1"),
            device("x", "a__b"),
            device("y", ""),
        ];
        assert_eq!(
            device_slugs(&devices),
            [
                "sim",
                "sim-v1",
                "0000-3b-00-1",
                "dev-vfio-devices-vfio3",
                "a_b",
                "y"
            ]
        );
        let twice = [device("sim", "sim"), device("sim", "sim")];
        assert_eq!(device_slugs(&twice), ["sim-1", "sim-2"]);
    }

    #[test]
    fn counts_and_description() {
        let mut c = OutcomeCounts::default();
        for o in [
            Outcome::Pass,
            Outcome::Pass,
            Outcome::Ignored,
            Outcome::Xpass,
        ] {
            c.add(o);
        }
        assert_eq!((c.total(), c.ran(), c.failed()), (4, 3, 1));
        assert_eq!(c.describe(), "2 pass, 1 ignored, 1 xpass");
        assert_eq!(OutcomeCounts::default().describe(), "no cases");
    }

    fn check(strength: Strength, verdict: Verdict, known: Option<&str>) -> CheckRecord {
        CheckRecord {
            name: "c".into(),
            ids: vec!["V2-SAVE-02".into()],
            strength,
            verdict,
            expected: "read() >= 0".into(),
            observed: "ENOMSG\nafter 4 bytes".into(),
            location: Some(SourceLoc {
                file: "cases/v2/s.yaml".into(),
                line: 3,
                column: 7,
            }),
            known_failure: known.map(String::from),
        }
    }

    #[test]
    fn check_status_follows_strength_and_expectations() {
        use Strength::*;
        use Verdict::*;
        let status = |s, v, k, strict| CheckStatus::of(&check(s, v, k), strict);
        assert_eq!(status(Must, Fail, None, false), CheckStatus::Fail);
        assert_eq!(status(Should, Fail, None, false), CheckStatus::Warn);
        assert_eq!(status(Should, Fail, None, true), CheckStatus::Fail);
        assert_eq!(status(Df, Fail, None, true), CheckStatus::Note);
        assert_eq!(status(Must, Fail, Some("known"), false), CheckStatus::Xfail);
        assert_eq!(status(Must, Pass, Some("known"), false), CheckStatus::Xpass);
        assert_eq!(
            status(Must, NotApplicable, None, false),
            CheckStatus::NotApplicable
        );
        assert_eq!(status(Must, Pass, None, false), CheckStatus::Pass);
    }

    #[test]
    fn first_failed_check_prefers_must() {
        let mut case = CaseResult::new("c", "f", "v2");
        assert!(first_failed_check(&case).is_none());
        case.checks
            .push(check(Strength::Should, Verdict::Fail, None));
        case.checks.push(check(Strength::Must, Verdict::Pass, None));
        case.checks.push(check(Strength::Must, Verdict::Fail, None));
        assert_eq!(first_failed_check(&case).unwrap().strength, Strength::Must);
        assert_eq!(
            check_message(first_failed_check(&case).unwrap()),
            "V2-SAVE-02: expected read() >= 0, observed ENOMSG after 4 bytes (cases/v2/s.yaml:3:7)"
        );
    }
}
