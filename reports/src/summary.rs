//! What every renderer needs to agree on: outcome counts, stable names,
//! how a check is classified and how a failed check is described.

use results::{
    CaseResult, CheckRecord, DeviceResults, Grading, Outcome, QemuEffect, QemuImpact, Requirement,
    Strength, Verdict,
};

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
    /// A MUST check failed (or a SHOULD one under `--strict`, or one that
    /// breaks a QEMU migration under `--consumer qemu`).
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
    pub fn of(check: &CheckRecord, grading: Grading) -> CheckStatus {
        match (check.verdict, &check.known_failure, check.strength) {
            (Verdict::NotApplicable, _, _) => CheckStatus::NotApplicable,
            (Verdict::Fail, Some(_), _) => CheckStatus::Xfail,
            (Verdict::Pass, Some(_), _) => CheckStatus::Xpass,
            (Verdict::Pass, None, _) => CheckStatus::Pass,
            (Verdict::Fail, None, _) if grading.fails(check) => CheckStatus::Fail,
            (Verdict::Fail, None, Strength::Should) => CheckStatus::Warn,
            // DF and INFO (a MUST failure always fails).
            (Verdict::Fail, None, _) => CheckStatus::Note,
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

/// The QEMU impact of a check: that of its worst requirement.
pub fn qemu_impact<'r>(
    check: &CheckRecord,
    requirements: &'r [Requirement],
) -> Option<&'r QemuImpact> {
    check
        .ids
        .iter()
        .filter_map(|id| requirements.iter().find(|r| &r.id == id)?.qemu.as_ref())
        .max_by_key(|q| q.effect)
}

/// `QEMU: migration never converges (hw/vfio/migration.c: vfio_state_pending_exact())`.
pub fn impact_line(check: &CheckRecord, requirements: &[Requirement]) -> Option<String> {
    let q = qemu_impact(check, requirements)?;
    Some(one_line(&format!(
        "QEMU: {} ({})",
        q.effect.as_str(),
        q.via
    )))
}

/// Whether QEMU would live-migrate a VM with this device, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVerdict {
    pub migrates: bool,
    /// One line: the verdict and the finding that decides it.
    pub line: String,
    /// Deviations QEMU does not care about (or that only slow it), by ID.
    pub harmless: Vec<String>,
}

/// The QEMU verdict of a device. The deciding finding is the first failed
/// check (known failures included: QEMU does not read expectations files)
/// whose rule breaks a QEMU migration, looking first at the cases that
/// run QEMU's own sequences (`qemu/`), then at the others in run order. A
/// hang or a kernel log line (KERNEL-01/02) decides only in a `qemu/` case:
/// elsewhere it may come from a request QEMU never makes.
pub fn qemu_verdict(device: &DeviceResults, requirements: &[Requirement]) -> QemuVerdict {
    let mut harmless: Vec<String> = Vec::new();
    let ran = device
        .cases
        .iter()
        .any(|c| c.protocol == "v2" && c.outcome != Outcome::Ignored);
    if !device.protocols.iter().any(|p| p == "v2") || !ran {
        let why = if device.protocols.iter().any(|p| p == "v1") {
            "it speaks only migration protocol v1, which QEMU removed in 8.0 (hw/vfio/migration.c: vfio_migration_init() asks for VFIO_DEVICE_FEATURE_MIGRATION)"
        } else if device.protocols.is_empty() {
            "it has no migration support (vfio_migration_realize() adds a migration blocker)"
        } else {
            "no protocol v2 case ran on it"
        };
        let migrates = false;
        let line = if device.protocols.iter().any(|p| p == "v2") {
            format!("QEMU verdict not decided: {why}")
        } else {
            format!("QEMU would not migrate this device: {why}")
        };
        return QemuVerdict {
            migrates,
            line,
            harmless,
        };
    }
    let ordered = device
        .cases
        .iter()
        .filter(|c| in_qemu_group(c))
        .chain(device.cases.iter().filter(|c| !in_qemu_group(c)));
    let mut decisive: Option<(&CaseResult, &CheckRecord, &QemuImpact)> = None;
    let mut breaking = 0usize;
    for case in ordered {
        let qemu_case = in_qemu_group(case);
        for check in case.checks.iter().filter(|c| {
            c.verdict == Verdict::Fail
                && (qemu_case || !c.ids.iter().all(|id| id.starts_with("KERNEL-")))
        }) {
            match qemu_impact(check, requirements) {
                Some(q) if q.effect.breaks_migration() => {
                    breaking += 1;
                    decisive.get_or_insert((case, check, q));
                }
                Some(q) if q.effect <= QemuEffect::Slower => {
                    for id in &check.ids {
                        if !harmless.contains(id) {
                            harmless.push(id.clone());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    harmless.sort();
    let incomplete = device
        .wedged
        .as_deref()
        .map(|w| format!("the device was wedged ({})", one_line(w)))
        .or_else(|| {
            let errors = device
                .cases
                .iter()
                .filter(|c| c.outcome == Outcome::Error)
                .count();
            (errors > 0).then(|| format!("{errors} case(s) ended in a harness error"))
        });
    match (decisive, incomplete) {
        (None, Some(why)) => QemuVerdict {
            migrates: false,
            line: format!(
                "QEMU verdict not decided: no finding breaks a QEMU migration, but {why}"
            ),
            harmless,
        },
        (decisive, _) => match decisive {
            Some((case, check, q)) => {
                let others = breaking - 1;
                let more = if others == 0 {
                    String::new()
                } else {
                    format!(
                        "; {others} more finding{} break{} it",
                        if others == 1 { "" } else { "s" },
                        if others == 1 { "s" } else { "" }
                    )
                };
                QemuVerdict {
                    migrates: false,
                    line: one_line(&format!(
                        "QEMU would not migrate this device: {} ({}), decided by {} in {}{more}",
                        q.effect.as_str(),
                        q.via,
                        check_message(check),
                        case.name
                    )),
                    harmless,
                }
            }
            None => QemuVerdict {
                migrates: true,
                line: "QEMU would migrate this device: no finding breaks a QEMU migration".into(),
                harmless,
            },
        },
    }
}

/// Whether a case is one of QEMU's own sequences (`cases/qemu/`).
fn in_qemu_group(case: &CaseResult) -> bool {
    case.file.split('/').rev().nth(1) == Some("qemu")
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
    use results::{QemuEffect, QemuImpact, Requirement, SourceLoc};

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
            qemu: None,
        }
    }

    #[test]
    fn check_status_follows_strength_and_expectations() {
        use Strength::*;
        use Verdict::*;
        let status = |s, v, k, strict| {
            CheckStatus::of(
                &check(s, v, k),
                Grading {
                    strict,
                    consumer: None,
                },
            )
        };
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

    fn requirement(id: &str, effect: QemuEffect, via: &str) -> Requirement {
        Requirement {
            id: id.into(),
            strength: Strength::Should,
            summary: String::new(),
            source: String::new(),
            qemu: Some(QemuImpact {
                effect,
                via: via.into(),
                why: String::new(),
            }),
        }
    }

    fn failed(name: &str, id: &str, effect: QemuEffect) -> CheckRecord {
        CheckRecord {
            name: name.into(),
            ids: vec![id.into()],
            qemu: Some(effect),
            ..check(Strength::Should, Verdict::Fail, None)
        }
    }

    /// mtty on a kernel without CONFIG_IOMMUFD_DRIVER: START works, every
    /// REPORT fails, precopy data ends with 0 instead of ENOMSG.
    #[test]
    fn qemu_verdict_names_the_deciding_finding_and_the_harmless_ones() {
        let reqs = [
            requirement(
                "V2-PRECOPY-06",
                QemuEffect::None,
                "migration.c: vfio_save_block()",
            ),
            requirement(
                "V2-LOG-06",
                QemuEffect::Fails,
                "listener.c: vfio_listener_log_sync()",
            ),
            requirement(
                "V2-LOG-02",
                QemuEffect::None,
                "listener.c: vfio_devices_dma_logging_start()",
            ),
            requirement(
                "KERNEL-02",
                QemuEffect::NoSwitchover,
                "migration.c: vfio_vmstate_change()",
            ),
        ];
        let mut precopy = CaseResult::new("precopy", "v2/precopy.yaml", "v2");
        precopy
            .checks
            .push(failed("enomsg", "V2-PRECOPY-06", QemuEffect::None));
        let mut hang = CaseResult::new("stop-copy-to-pre-copy", "v2/fsm.yaml", "v2");
        hang.checks
            .push(failed("deadline", "KERNEL-02", QemuEffect::NoSwitchover));
        let mut logging = CaseResult::new("dma-logging", "v2/dma-logging.yaml", "v2");
        let mut known = failed("second-start", "V2-LOG-02", QemuEffect::None);
        known.known_failure = Some("mtty keeps no state".into());
        logging.checks.push(known);
        let mut tracking = CaseResult::new("dirty-tracking", "qemu/dirty-tracking.yaml", "v2");
        tracking
            .checks
            .push(failed("report", "V2-LOG-06", QemuEffect::Fails));
        let mut device = DeviceResults {
            protocols: vec!["v2".into()],
            cases: vec![precopy, hang, logging.clone()],
            ..DeviceResults::default()
        };
        let v = qemu_verdict(&device, &reqs);
        assert!(v.migrates, "{v:?}");
        assert_eq!(v.harmless, ["V2-LOG-02", "V2-PRECOPY-06"]);
        device.cases.push(logging.clone());
        device.cases.push(tracking);
        let v = qemu_verdict(&device, &reqs);
        assert!(!v.migrates);
        assert!(
            v.line.starts_with("QEMU would not migrate this device: migration fails with an error (listener.c: vfio_listener_log_sync()), decided by V2-LOG-06"),
            "{}",
            v.line
        );
        assert!(v.line.ends_with("in dirty-tracking"), "{}", v.line);
        let v1 = DeviceResults {
            protocols: vec!["v1".into()],
            ..DeviceResults::default()
        };
        assert!(qemu_verdict(&v1, &reqs)
            .line
            .contains("only migration protocol v1"));
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
