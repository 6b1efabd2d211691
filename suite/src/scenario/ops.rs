//! The table of operations: for each operation its name in the file, the
//! protocol it belongs to, what an `expect` can observe of it, the
//! variables it sets and the requirements its built-in checks cite. The
//! loader, validation, the protocol scope check and coverage read this
//! table; the executor runs each operation. A new operation is a variant
//! and a row here, and its executor.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use super::{
    FieldAccess, FieldValue, Mutation, Protocol, RaceKind, ReadUntil, Role, StateRef, StateSet,
    Step, V1Chunking, WriteSpec,
};

/// One operation. See the README's scenario reference for each one's
/// built-in checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    GetState,
    SetState(StateRef),
    Feature {
        feature: u32,
        /// GET/SET/PROBE bits.
        ops: u32,
        extra_flags: u32,
        argsz: Option<u32>,
        payload: Option<u64>,
        state: Option<StateRef>,
    },
    MigrationFlags,
    DataSize,
    PrecopyInfo {
        argsz: Option<u32>,
        flags: u32,
    },
    Read {
        into: Option<String>,
        chunk: u64,
        until: ReadUntil,
        max: Option<u64>,
    },
    /// QEMU's precopy phase on a device in PRE_COPY(_P2P): reads of
    /// min(1 MiB, stop_copy_length) bytes with QEMU's estimates of the
    /// initial and dirty bytes, until a read has no data (or `rounds`).
    QemuPrecopy {
        into: Option<String>,
        rounds: u32,
    },
    /// QEMU's `vfio_save_complete_precopy()` read loop: buffers of
    /// min(1 MiB, stop_copy_length) bytes until read() returns 0.
    QemuStopCopy {
        into: Option<String>,
    },
    Pread {
        offset: u64,
        len: u64,
    },
    Write(WriteSpec),
    Pwrite {
        offset: u64,
        len: u64,
    },
    Poll {
        readable: bool,
        writable: bool,
        timeout: Duration,
    },
    DataIoctl {
        request: u64,
        argsz: u32,
    },
    Cloexec,
    CloseDataFd,
    SessionEnded,
    /// If the device is in ERROR: SET must fail and only reset leaves it
    /// (V2-RESET-03); otherwise the check does not apply.
    ErrorState,
    Save {
        into: String,
        chunk: u64,
    },
    Resume(WriteSpec),
    Pipe {
        to: Role,
        chunk: u64,
    },
    Compare {
        a: String,
        b: String,
    },
    /// Threads on the data fd while the main thread acts (see [`RaceKind`]),
    /// joined within `within` after the main thread is done.
    Race {
        kind: RaceKind,
        from: Option<String>,
        into: Option<String>,
        to: Option<StateRef>,
        chunk: u64,
        within: Duration,
    },
    Reset,
    CloseDevice,
    Reopen,
    Sleep(Duration),
    Repeat {
        times: u32,
        steps: Vec<Step>,
    },
    ForEach {
        vars: Vec<(String, StateSet)>,
        steps: Vec<Step>,
    },
    Walk {
        steps: u64,
        seed: Option<u64>,
        invalid: bool,
    },
    LoggingStart {
        page_size: u64,
        ranges: Vec<(u64, u64)>,
        num_ranges: Option<u32>,
    },
    LoggingStop,
    LoggingReport {
        iova: u64,
        length: u64,
        page_size: u64,
    },
    MigrationRegion,
    ConfigIds,
    ReadField {
        access: FieldAccess,
        into: Option<String>,
    },
    WriteField {
        access: FieldAccess,
        value: FieldValue,
    },
    V1Save {
        into: String,
        max_iterations: u64,
    },
    V1Resume {
        from: String,
        chunk: V1Chunking,
        mutation: Mutation,
        /// Leave RESUMING for running (`true`) or stop.
        then_running: bool,
    },
    /// Resumes `from` twice and saves with and without region accesses
    /// between clearing _RUNNING and the first `pending_bytes` read, to
    /// tell which freeze point the device shows (V1-STATE-06).
    V1Freeze {
        from: String,
        touches: u32,
    },
}

/// Which cases may use an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    V1,
    V2,
    /// Either protocol.
    Any,
}

/// The requirement IDs an operation checks on its own, without `expect`.
#[derive(Debug, Clone, Copy)]
pub enum Checks {
    Same(&'static [&'static str]),
    /// Operations that both protocols run, each with its own rules.
    ByProtocol {
        v2: &'static [&'static str],
        v1: &'static [&'static str],
    },
}

/// One row of the table.
#[derive(Debug)]
pub struct OpInfo {
    pub name: &'static str,
    pub scope: Scope,
    /// The `expect` keys it can observe.
    pub observes: &'static [&'static str],
    /// The variables it sets for later comparisons.
    pub sets: &'static [&'static str],
    pub checks: Checks,
}

impl OpInfo {
    /// The IDs its built-in checks cite in a case of `protocol` (for
    /// coverage: which rules a case can catch).
    pub fn builtin(&self, protocol: Protocol) -> &'static [&'static str] {
        match (self.checks, protocol) {
            (Checks::Same(ids), _) => ids,
            (Checks::ByProtocol { v2, .. }, Protocol::V2) => v2,
            (Checks::ByProtocol { v1, .. }, Protocol::V1) => v1,
        }
    }
}

/// What a SET is checked against (a walk is a series of SETs).
const SET: &[&str] = &[
    "V2-FSM-02",
    "V2-FSM-03",
    "V2-FSM-04",
    "V2-FSM-05",
    "V2-FSM-06",
    "V2-FSM-07",
    "V2-FSM-08",
    "V2-FSM-10",
    "V2-RESET-03",
    "V2-RESUME-03",
    "V2-RESUME-04",
    "V2-TIME-01",
];

/// Every operation, in the order the reference lists them.
pub const OPERATIONS: &[OpInfo] = &[
    OpInfo {
        name: "get_state",
        scope: Scope::V2,
        observes: &["ok", "errno", "state"],
        sets: &[],
        checks: Checks::Same(&["V2-FSM-02", "V2-FSM-11"]),
    },
    OpInfo {
        name: "set_state",
        scope: Scope::V2,
        observes: &["ok", "errno", "state", "data_fd"],
        sets: &[],
        checks: Checks::Same(SET),
    },
    OpInfo {
        name: "feature",
        scope: Scope::Any,
        observes: &["ok", "errno", "unchanged", "state", "data_fd"],
        sets: &[],
        checks: Checks::ByProtocol {
            v2: &["V2-PRECOPY-12"],
            v1: &[],
        },
    },
    OpInfo {
        name: "migration_flags",
        scope: Scope::V2,
        observes: &["ok", "errno", "flags"],
        sets: &[],
        checks: Checks::Same(&["V2-FEAT-10"]),
    },
    OpInfo {
        name: "data_size",
        scope: Scope::V2,
        observes: &["ok", "errno", "stop_copy_length"],
        sets: &["stop_copy_length"],
        checks: Checks::Same(&["V2-SIZE-01"]),
    },
    OpInfo {
        name: "precopy_info",
        scope: Scope::V2,
        observes: &["ok", "errno", "initial_bytes", "dirty_bytes", "flags"],
        sets: &["initial_bytes", "dirty_bytes"],
        checks: Checks::Same(&[
            "V2-PRECOPY-01",
            "V2-PRECOPY-02",
            "V2-PRECOPY-03",
            "V2-PRECOPY-04",
            "V2-PRECOPY-05",
            "V2-PRECOPY-09",
            "V2-PRECOPY-14",
            "V2-PRECOPY-15",
            "V2-PRECOPY-16",
        ]),
    },
    OpInfo {
        name: "read",
        scope: Scope::V2,
        observes: &["ok", "errno", "bytes", "end"],
        sets: &[],
        checks: Checks::Same(&[
            "V2-SAVE-01",
            "V2-SAVE-02",
            "V2-PRECOPY-06",
            "V2-PRECOPY-07",
            "V2-TIME-02",
            "KERNEL-02",
        ]),
    },
    OpInfo {
        name: "qemu_precopy",
        scope: Scope::V2,
        observes: &[],
        sets: &["stop_copy_length", "initial_bytes", "dirty_bytes"],
        checks: Checks::Same(&[
            "V2-SIZE-01",
            "V2-PRECOPY-01",
            "V2-PRECOPY-04",
            "V2-PRECOPY-08",
            "V2-PRECOPY-10",
        ]),
    },
    OpInfo {
        name: "qemu_stop_copy",
        scope: Scope::V2,
        observes: &["ok", "errno", "bytes", "end"],
        sets: &["stop_copy_length"],
        checks: Checks::Same(&["V2-SIZE-01", "V2-SAVE-01", "V2-SAVE-02", "KERNEL-02"]),
    },
    OpInfo {
        name: "pread",
        scope: Scope::V2,
        observes: &["ok", "errno"],
        sets: &[],
        checks: Checks::Same(&["V2-SAVE-04"]),
    },
    OpInfo {
        name: "write",
        scope: Scope::V2,
        observes: &["ok", "errno", "rejected", "bytes"],
        sets: &[],
        checks: Checks::Same(&["KERNEL-02"]),
    },
    OpInfo {
        name: "pwrite",
        scope: Scope::V2,
        observes: &["ok", "errno"],
        sets: &[],
        checks: Checks::Same(&["V2-RESUME-07"]),
    },
    OpInfo {
        name: "poll",
        scope: Scope::V2,
        observes: &["readable"],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "data_ioctl",
        scope: Scope::V2,
        observes: &["ok", "errno"],
        sets: &[],
        checks: Checks::Same(&["V2-PRECOPY-03"]),
    },
    OpInfo {
        name: "cloexec",
        scope: Scope::V2,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&["V2-SAVE-06"]),
    },
    OpInfo {
        name: "close_data_fd",
        scope: Scope::V2,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "session_ended",
        scope: Scope::V2,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&["V2-FSM-09", "V2-SAVE-05", "V2-FSM-13", "V2-RESET-02"]),
    },
    OpInfo {
        name: "error_state",
        scope: Scope::Any,
        observes: &[],
        sets: &[],
        checks: Checks::ByProtocol {
            v2: &["V2-RESET-03", "V2-RESET-01"],
            v1: &["V1-STATE-05", "V1-ERR-01"],
        },
    },
    OpInfo {
        name: "save",
        scope: Scope::V2,
        observes: &["ok", "bytes"],
        sets: &[],
        checks: Checks::Same(&[
            "V2-FSM-03",
            "V2-FSM-07",
            "V2-FSM-08",
            "V2-SAVE-01",
            "V2-SAVE-02",
            "V2-SIZE-03",
            "V2-SIZE-04",
            "V2-TIME-01",
            "V2-TIME-02",
        ]),
    },
    OpInfo {
        name: "resume",
        scope: Scope::V2,
        observes: &["ok", "rejected", "errno"],
        sets: &[],
        checks: Checks::Same(&[
            "V2-RESUME-01",
            "V2-RESUME-03",
            "V2-RESUME-04",
            "V2-TIME-01",
            "V2-TIME-02",
        ]),
    },
    OpInfo {
        name: "pipe",
        scope: Scope::V2,
        observes: &["ok", "bytes"],
        sets: &[],
        checks: Checks::Same(&["V2-RESUME-01", "V2-RESUME-03"]),
    },
    OpInfo {
        name: "compare",
        scope: Scope::Any,
        observes: &["equal"],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "race",
        scope: Scope::V2,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&[
            "V2-RACE-01",
            "V2-RACE-02",
            "V2-RACE-03",
            "V2-RACE-04",
            "V2-SAVE-05",
            "V2-RESET-02",
            "V2-FSM-13",
            "KERNEL-02",
        ]),
    },
    OpInfo {
        name: "reset",
        scope: Scope::Any,
        observes: &["ok", "errno", "state"],
        sets: &[],
        checks: Checks::ByProtocol {
            v2: &["V2-RESET-01", "V2-RESET-02"],
            v1: &["V1-STATE-01", "V1-STATE-05", "V1-ERR-01"],
        },
    },
    OpInfo {
        name: "close_device",
        scope: Scope::Any,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "reopen",
        scope: Scope::Any,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "sleep",
        scope: Scope::Any,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "repeat",
        scope: Scope::Any,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "for_each",
        scope: Scope::V2,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "walk",
        scope: Scope::V2,
        observes: &[],
        sets: &[],
        checks: Checks::Same(SET),
    },
    OpInfo {
        name: "logging_start",
        scope: Scope::Any,
        observes: &["ok", "errno"],
        sets: &[],
        checks: Checks::Same(&["V2-LOG-01", "V2-LOG-02", "V2-LOG-07"]),
    },
    OpInfo {
        name: "logging_stop",
        scope: Scope::Any,
        observes: &["ok", "errno"],
        sets: &[],
        checks: Checks::Same(&["V2-LOG-04"]),
    },
    OpInfo {
        name: "logging_report",
        scope: Scope::Any,
        observes: &["ok", "errno", "clean"],
        sets: &[],
        checks: Checks::Same(&[
            "V2-LOG-03",
            "V2-LOG-04",
            "V2-LOG-05",
            "V2-LOG-08",
            "V2-LOG-09",
        ]),
    },
    OpInfo {
        name: "migration_region",
        scope: Scope::Any,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&["V1-REGION-01"]),
    },
    OpInfo {
        name: "config_ids",
        scope: Scope::Any,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&[]),
    },
    OpInfo {
        name: "read_field",
        scope: Scope::V1,
        observes: &["ok", "errno", "value"],
        sets: &[],
        checks: Checks::Same(&["V1-REGION-02", "V1-REGION-03"]),
    },
    OpInfo {
        name: "write_field",
        scope: Scope::V1,
        observes: &["ok", "errno", "value"],
        sets: &[],
        checks: Checks::Same(&[
            "V1-REGION-02",
            "V1-REGION-03",
            "V1-STATE-02",
            "V1-STATE-03",
            "V1-STATE-04",
            "V1-STATE-05",
        ]),
    },
    OpInfo {
        name: "v1_save",
        scope: Scope::V1,
        observes: &["ok", "bytes"],
        sets: &[],
        checks: Checks::Same(&[
            "V1-SAVE-01",
            "V1-SAVE-02",
            "V1-SAVE-03",
            "V1-SAVE-04",
            "V1-SAVE-05",
            "V1-SAVE-06",
            "V1-SAVE-07",
        ]),
    },
    OpInfo {
        name: "v1_resume",
        scope: Scope::V1,
        observes: &["ok", "rejected"],
        sets: &[],
        checks: Checks::Same(&["V1-RESUME-01", "V1-RESUME-02", "V1-RESUME-03"]),
    },
    OpInfo {
        name: "v1_freeze",
        scope: Scope::V1,
        observes: &[],
        sets: &[],
        checks: Checks::Same(&["V1-STATE-06"]),
    },
];

static BY_NAME: LazyLock<HashMap<&'static str, &'static OpInfo>> =
    LazyLock::new(|| OPERATIONS.iter().map(|o| (o.name, o)).collect());

/// The operation names, as accepted in a step and listed in errors.
pub(super) static NAMES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| OPERATIONS.iter().map(|o| o.name).collect());

impl Op {
    /// The operation's row of the table.
    pub fn info(&self) -> &'static OpInfo {
        BY_NAME[self.name()]
    }

    /// Operations of the v1 migration region protocol.
    pub fn is_v1(&self) -> bool {
        self.info().scope == Scope::V1
    }

    /// The operation `name` stands for when it takes no arguments.
    pub(super) fn without_args(name: &str) -> Option<Op> {
        Some(match name {
            "get_state" => Op::GetState,
            "migration_flags" => Op::MigrationFlags,
            "data_size" => Op::DataSize,
            "cloexec" => Op::Cloexec,
            "close_data_fd" => Op::CloseDataFd,
            "session_ended" => Op::SessionEnded,
            "error_state" => Op::ErrorState,
            "reset" => Op::Reset,
            "close_device" => Op::CloseDevice,
            "reopen" => Op::Reopen,
            "logging_stop" => Op::LoggingStop,
            "migration_region" => Op::MigrationRegion,
            "config_ids" => Op::ConfigIds,
            _ => return None,
        })
    }

    /// The name the file uses for this operation.
    pub fn name(&self) -> &'static str {
        match self {
            Op::GetState => "get_state",
            Op::SetState(_) => "set_state",
            Op::Feature { .. } => "feature",
            Op::MigrationFlags => "migration_flags",
            Op::DataSize => "data_size",
            Op::PrecopyInfo { .. } => "precopy_info",
            Op::Read { .. } => "read",
            Op::QemuPrecopy { .. } => "qemu_precopy",
            Op::QemuStopCopy { .. } => "qemu_stop_copy",
            Op::Pread { .. } => "pread",
            Op::Write(_) => "write",
            Op::Pwrite { .. } => "pwrite",
            Op::Poll { .. } => "poll",
            Op::DataIoctl { .. } => "data_ioctl",
            Op::Cloexec => "cloexec",
            Op::CloseDataFd => "close_data_fd",
            Op::SessionEnded => "session_ended",
            Op::ErrorState => "error_state",
            Op::Save { .. } => "save",
            Op::Resume(_) => "resume",
            Op::Pipe { .. } => "pipe",
            Op::Compare { .. } => "compare",
            Op::Race { .. } => "race",
            Op::Reset => "reset",
            Op::CloseDevice => "close_device",
            Op::Reopen => "reopen",
            Op::Sleep(_) => "sleep",
            Op::Repeat { .. } => "repeat",
            Op::ForEach { .. } => "for_each",
            Op::Walk { .. } => "walk",
            Op::LoggingStart { .. } => "logging_start",
            Op::LoggingStop => "logging_stop",
            Op::LoggingReport { .. } => "logging_report",
            Op::MigrationRegion => "migration_region",
            Op::ConfigIds => "config_ids",
            Op::ReadField { .. } => "read_field",
            Op::WriteField { .. } => "write_field",
            Op::V1Save { .. } => "v1_save",
            Op::V1Resume { .. } => "v1_resume",
            Op::V1Freeze { .. } => "v1_freeze",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_one_operation_and_cites_known_requirements() {
        assert_eq!(BY_NAME.len(), OPERATIONS.len(), "a name is listed twice");
        for op in OPERATIONS {
            for protocol in [Protocol::V1, Protocol::V2] {
                for id in op.builtin(protocol) {
                    assert!(
                        crate::requirements::find(id).is_some(),
                        "{} cites unknown {id}",
                        op.name
                    );
                }
            }
            if let Some(plain) = Op::without_args(op.name) {
                assert_eq!(plain.name(), op.name);
            }
        }
    }
}
