//! Protocol v2 operations: the state machine, the data fd, size estimates.
//! This file dispatches; each concern has its own file.
#![forbid(unsafe_code)]

mod data;
mod fsm;
mod lifecycle;
mod precopy;
mod qemu;
mod race;
mod transfer;

use results::{Direction, Event, StepReturn};

use super::stream::StreamBuf;
use super::*;
use crate::device::{DeviceExt, FeatureRequest, PollFlags};
use crate::model::{self, Expectation};
use crate::scenario::{EndExpect, Expect, FdExpect, ReadUntil, ResultExpect, WriteSpec};
use crate::uapi::*;

/// What a SET did, as far as later steps care.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SetOutcome {
    pub ok: bool,
}

impl Exec<'_, '_> {
    pub(super) fn v2_op(&mut self, step: &Step, key: &StepKey) -> Flow {
        let role = step.role;
        let expect = step.expect.as_ref();
        match &step.op {
            Op::GetState => self.get_state(role, expect, key),
            Op::SetState(target) => {
                let target = self.resolve_state(target)?;
                self.set_state(role, target, expect, key).map(|_| ())
            }
            Op::Feature {
                feature,
                ops,
                extra_flags,
                argsz,
                payload,
                state,
            } => {
                let state = state.as_ref().map(|s| self.resolve_state(s)).transpose()?;
                self.raw_feature(
                    role,
                    *feature,
                    *ops | *extra_flags,
                    *argsz,
                    *payload,
                    state,
                    expect,
                    key,
                )
            }
            Op::MigrationFlags => self.migration_flags(role, expect, key),
            Op::DataSize => self.data_size(role, expect, key).map(|_| ()),
            Op::PrecopyInfo { argsz, flags } => {
                self.precopy_info(role, *argsz, *flags, expect, key)
            }
            Op::Read {
                into,
                chunk,
                until,
                max,
            } => self.read_op(role, into.as_deref(), *chunk, *until, *max, expect, key),
            Op::QemuPrecopy { into, rounds } => {
                self.qemu_precopy(role, into.as_deref(), *rounds, key)
            }
            Op::QemuStopCopy { into } => self.qemu_stop_copy(role, into.as_deref(), expect, key),
            Op::Pread { offset, len } => self.positioned(role, false, *offset, *len, expect, key),
            Op::Pwrite { offset, len } => self.positioned(role, true, *offset, *len, expect, key),
            Op::Write(w) => self.write_op(role, w, expect, key).map(|_| ()),
            Op::Poll {
                readable,
                writable,
                timeout,
            } => self.poll_op(role, *readable, *writable, *timeout, expect, key),
            Op::DataIoctl { request, argsz } => {
                self.data_ioctl(role, *request, *argsz, expect, key)
            }
            Op::Cloexec => self.cloexec(role, key),
            Op::CloseDataFd => self.close_data_fd(role, key),
            Op::SessionEnded => self.session_ended(role, key),
            Op::ErrorState => self.error_state(role, key),
            Op::Save { into, chunk } => self.save(role, into, *chunk, expect, key),
            Op::Resume(w) => self.resume(role, w, expect, key),
            Op::Pipe { to, chunk } => self.pipe(role, *to, *chunk, expect, key),
            Op::Compare { a, b } => self.compare(a, b, expect, key),
            Op::Race {
                kind,
                from,
                into,
                to,
                chunk,
                within,
            } => {
                let to = to.as_ref().map(|t| self.resolve_state(t)).transpose()?;
                let race = race::Race {
                    kind: *kind,
                    from: from.as_deref(),
                    into: into.as_deref(),
                    to,
                    chunk: *chunk as usize,
                    within: *within,
                    returned: std::sync::Arc::default(),
                };
                self.race(role, &race, key)
            }
            Op::Reset => self.reset(role, expect, key),
            Op::CloseDevice => self.close_device(role, key),
            Op::Reopen => self.reopen(role, key),
            Op::LoggingStart {
                page_size,
                ranges,
                num_ranges,
            } => self.logging_start(role, *page_size, ranges, *num_ranges, expect, key),
            Op::LoggingStop => self.logging_stop(role, expect, key),
            Op::LoggingReport {
                iova,
                length,
                page_size,
            } => self.logging_report(role, *iova, *length, *page_size, expect, key),
            Op::MigrationRegion => self.migration_region(role, key),
            Op::ConfigIds => self.config_ids(role, key),
            Op::Repeat { .. }
            | Op::ForEach { .. }
            | Op::Sleep(_)
            | Op::Walk { .. }
            | Op::ReadField { .. }
            | Op::WriteField { .. }
            | Op::V1Save { .. }
            | Op::V1Resume { .. }
            | Op::V1Freeze { .. } => unreachable!("dispatched in Exec::step"),
        }
    }

    pub(crate) fn session_fd(&mut self, role: Role, want: SessionKind) -> Result<DataFd, Abort> {
        let failed = self.failed;
        let ctx = self.role(role)?;
        match &ctx.session {
            Some(s) if s.kind == want => Ok(s.fd),
            _ => {
                let what = match want {
                    SessionKind::Saving => "saving",
                    SessionKind::Resuming => "resuming",
                };
                let msg = format!(
                    "no {what} data session is open on the {role} (state {})",
                    ctx.state.map_or("unknown", MigState::name)
                );
                Err(if failed {
                    Abort::Driver(msg)
                } else {
                    Abort::Harness(msg)
                })
            }
        }
    }

    /// Waits until `fd` is ready for `events` or the case deadline passes.
    fn wait_ready(
        &mut self,
        role: Role,
        fd: DataFd,
        events: PollFlags,
    ) -> Result<Result<PollFlags, Errno>, Abort> {
        let budget = self.wait_budget();
        Ok(self.role(role)?.dev.data_poll(fd, events, budget))
    }
}
