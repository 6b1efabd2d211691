//! The results model: everything a run observed, serialised as
//! `results.json`. Every report is a pure function of a [`RunResults`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of the `results.json` schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    pub schema: u32,
    pub meta: RunMeta,
    /// The requirement catalogue the run checked against.
    pub requirements: Vec<Requirement>,
    pub devices: Vec<DeviceResults>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub tool_version: String,
    /// `uname -r` of the host the devices are on.
    pub kernel_release: String,
    pub host: String,
    /// RFC 3339, UTC.
    pub started: String,
    pub finished: Option<String>,
    pub command_line: Vec<String>,
    /// The seed every random choice in the run derives from.
    pub seed: u64,
    /// SHOULD failures count as failures.
    pub strict: bool,
    pub include_dangerous: bool,
    /// `--consumer`: whose migration the grading speaks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<Consumer>,
    /// Set when the run stopped early (signal), with the reason.
    pub interrupted: Option<String>,
    /// What the run could not do or check (no readable /dev/kmsg, ...).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Strength {
    Must,
    Should,
    /// De facto: what the core or every in-tree driver does.
    Df,
    Info,
}

impl Strength {
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::Must => "MUST",
            Strength::Should => "SHOULD",
            Strength::Df => "DF",
            Strength::Info => "INFO",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// `V2-FSM-03`.
    pub id: String,
    pub strength: Strength,
    pub summary: String,
    /// Where the rule comes from (`include/uapi/linux/vfio.h: ...`).
    pub source: String,
    /// What QEMU does when a driver breaks the rule (absent in results
    /// written before impacts were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuImpact>,
}

/// What QEMU does with a driver that breaks a rule: the worst a QEMU
/// release with migration protocol v2 (8.0 on) does, read from its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuImpact {
    pub effect: QemuEffect,
    /// The QEMU function(s) the effect comes from (`hw/vfio/migration.c: vfio_save_block()`).
    pub via: String,
    /// How, and which QEMU versions behave how.
    pub why: String,
}

/// QEMU's effects, from harmless to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QemuEffect {
    /// QEMU never relies on the rule.
    None,
    /// The migration completes, later or with a longer downtime.
    Slower,
    /// The pending size stays above the downtime threshold.
    NeverConverges,
    /// The switchover (or the end of the stop-and-copy phase) never comes.
    NoSwitchover,
    /// The migration fails with an error; the guest keeps running on the source.
    Fails,
    /// The device stream ends early without an error.
    Truncated,
    /// The destination guest runs with a device state that is not the source's.
    WrongState,
    /// QEMU aborts (hw_error()) or its thread dies in the kernel.
    Aborts,
}

impl QemuEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            QemuEffect::None => "no effect",
            QemuEffect::Slower => "slower",
            QemuEffect::NeverConverges => "migration never converges",
            QemuEffect::NoSwitchover => "switchover never happens",
            QemuEffect::Fails => "migration fails with an error",
            QemuEffect::Truncated => "device stream silently truncated",
            QemuEffect::WrongState => "destination guest gets wrong device state",
            QemuEffect::Aborts => "QEMU aborts",
        }
    }

    /// Whether a QEMU migration with this deviation does not succeed.
    pub fn breaks_migration(self) -> bool {
        self > QemuEffect::Slower
    }
}

/// The consumer of the migration uAPI a run grades for (`--consumer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consumer {
    /// A deviation that breaks a QEMU migration fails, whatever its strength.
    Qemu,
}

/// How failed checks count: `--strict` and `--consumer` together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grading {
    /// SHOULD failures count as failures.
    pub strict: bool,
    pub consumer: Option<Consumer>,
}

impl Grading {
    /// Whether a failed check that no expectations file lists fails its case.
    pub fn fails(self, check: &CheckRecord) -> bool {
        check.strength == Strength::Must
            || (self.strict && check.strength == Strength::Should)
            || (self.consumer == Some(Consumer::Qemu)
                && check.qemu.is_some_and(QemuEffect::breaks_migration))
    }
}

impl RunMeta {
    pub fn grading(&self) -> Grading {
        Grading {
            strict: self.strict,
            consumer: self.consumer,
        }
    }
}

/// One device under test and every case run on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceResults {
    /// As given on the command line.
    pub spec: String,
    /// BDF, UUID or `sim`.
    pub name: String,
    pub driver: Option<String>,
    pub sysfs_path: Option<String>,
    pub iommu_group: Option<u32>,
    /// `group`, `cdev` or `simulator`.
    pub access: Option<String>,
    pub device_type: Option<String>,
    /// `v1`, `v2`: what the device speaks.
    pub protocols: Vec<String>,
    pub migration_flags: Option<u64>,
    /// `migration_flags` by bit name (`STOP_COPY|P2P`), as the suite names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_flag_names: Option<String>,
    pub stop_copy_length: Option<u64>,
    /// Other devices used by two-device cases, by role.
    pub peers: BTreeMap<String, String>,
    /// Time from leaving RUNNING(_P2P) to the end of the STOP_COPY stream,
    /// from the device's save cases.
    pub downtime_ns: Option<u64>,
    /// Set when the device could not be opened or brought back to RUNNING;
    /// later cases on it were not run.
    pub wedged: Option<String>,
    pub cases: Vec<CaseResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    /// Only SHOULD-level checks failed.
    Warn,
    /// A MUST-level check failed: the driver broke a rule.
    Fail,
    /// Not run: the device lacks what the case requires, or it is dangerous.
    Ignored,
    /// The case did not finish before its deadline.
    Timeout,
    /// The harness or the environment failed, not the driver.
    Error,
    /// Failed as an expectations file says it would.
    Xfail,
    /// An expectations file says it fails, but it passed.
    Xpass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "warn",
            Outcome::Fail => "fail",
            Outcome::Ignored => "ignored",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Xfail => "xfail",
            Outcome::Xpass => "xpass",
        }
    }

    /// Whether this outcome makes the run fail (exit code 1).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Fail | Outcome::Timeout | Outcome::Error | Outcome::Xpass
        )
    }
}

/// A location in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLoc {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl std::fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// Stable, slug-safe (`[A-Za-z0-9_-]`).
    pub name: String,
    pub about: String,
    pub file: String,
    /// `v1` or `v2`.
    pub protocol: String,
    pub outcome: Outcome,
    /// Why ignored, timed out or errored; for XFAIL/XPASS, the expectation's reason.
    pub reason: Option<String>,
    pub duration_ns: u64,
    /// The random seed the case used, if any.
    pub seed: Option<u64>,
    /// The step the case was in when it timed out.
    pub stuck_in: Option<String>,
    pub steps: Vec<StepRecord>,
    /// Steps not kept in `steps` (long walks keep the first and last ones).
    pub steps_elided: u64,
    pub checks: Vec<CheckRecord>,
    /// Latency samples of every SET, by arc `FROM>TO`, in ns.
    pub latencies: BTreeMap<String, Vec<u64>>,
    pub transfers: Vec<Transfer>,
    /// v1 save iterations: what the header said each round.
    pub v1_iterations: Vec<V1Iteration>,
    /// Kernel log lines logged while the case ran (KERNEL-01).
    pub kernel_log: Vec<String>,
    /// Free-form notes (which freeze point a v1 device shows, ...).
    pub notes: Vec<String>,
}

impl CaseResult {
    pub fn new(name: &str, file: &str, protocol: &str) -> CaseResult {
        CaseResult {
            name: name.to_string(),
            about: String::new(),
            file: file.to_string(),
            protocol: protocol.to_string(),
            outcome: Outcome::Pass,
            reason: None,
            duration_ns: 0,
            seed: None,
            stuck_in: None,
            steps: Vec::new(),
            steps_elided: 0,
            checks: Vec::new(),
            latencies: BTreeMap::new(),
            transfers: Vec::new(),
            v1_iterations: Vec::new(),
            kernel_log: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// What one syscall-level operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepReturn {
    /// The return value (bytes for read/write, 0 for ioctls, a fd ...).
    Ok(i64),
    /// The errno by name (`EINVAL`) and number.
    Errno { name: String, errno: i32 },
    /// The harness gave up waiting (poll timed out).
    TimedOut,
}

impl std::fmt::Display for StepReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepReturn::Ok(v) => write!(f, "{v}"),
            StepReturn::Errno { name, errno } => write!(f, "{name} ({errno})"),
            StepReturn::TimedOut => f.write_str("timed out"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Position in the case, counting every executed operation.
    pub index: u64,
    /// Device role: `device`, `destination`, `incompatible`.
    pub role: String,
    /// The uAPI operation: `SET MIG_DEVICE_STATE`, `read`, `VFIO_DEVICE_RESET` ...
    pub op: String,
    /// Its arguments, as text (`RUNNING -> STOP_COPY`, `fd 5, 4096 bytes`).
    pub args: String,
    pub ret: StepReturn,
    /// The migration state after the step, when known.
    pub state: Option<String>,
    /// Bytes moved by this step.
    pub bytes: u64,
    /// Start, from the start of the case.
    pub start_ns: u64,
    pub duration_ns: u64,
    pub location: Option<SourceLoc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// The check could not apply on this device (e.g. ERROR never reached).
    NotApplicable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// Stable, slug-safe, unique within the case.
    pub name: String,
    pub ids: Vec<String>,
    pub strength: Strength,
    pub verdict: Verdict,
    pub expected: String,
    pub observed: String,
    pub location: Option<SourceLoc>,
    /// Set by an expectations file: this failure is known, with the reason.
    pub known_failure: Option<String>,
    /// The worst QEMU effect among `ids`' requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuEffect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Save,
    Resume,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub role: String,
    pub direction: Direction,
    pub bytes: u64,
    pub duration_ns: u64,
    /// Chunk size used, 0 when mixed.
    pub chunk: u64,
    /// For saves that ran through STOP_COPY: from leaving RUNNING(_P2P) to
    /// the end of the stream.
    pub downtime_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Iteration {
    pub pending_bytes: u64,
    pub data_offset: u64,
    pub data_size: u64,
}
