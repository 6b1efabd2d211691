//! Protocol v2 operations: the state machine, the data fd, size estimates.
#![forbid(unsafe_code)]

use std::time::Instant;

use results::{Direction, Event, StepReturn};

use super::stream::StreamBuf;
use super::*;
use crate::device::{DeviceExt, FeatureRequest, PollFlags};
use crate::model::{self, Expectation};
use crate::scenario::{
    Cmp, EndExpect, Expect, FdExpect, Operand, ReadUntil, ResultExpect, WriteSpec,
};
use crate::uapi::*;

/// What a SET did, as far as later steps care.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SetOutcome {
    pub ok: bool,
}

/// How a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Eof,
    Enomsg,
    Error(Errno),
    /// The bound on bytes was reached before an end.
    Bound,
    /// poll() never reported the fd ready before the deadline.
    NotReady,
    /// `until: once`: one read done.
    Once(usize),
}

fn end_text(e: End) -> String {
    match e {
        End::Eof => "read returned 0 (end of stream)".into(),
        End::Enomsg => "read failed with ENOMSG".into(),
        End::Error(e) => format!("read failed with {}", errno_name(e)),
        End::Bound => "no end before the byte bound".into(),
        End::NotReady => "poll never reported the fd readable".into(),
        End::Once(n) => format!("one read returned {n}"),
    }
}

const RUNNING_STATES: [MigState; 4] = [
    MigState::Running,
    MigState::RunningP2p,
    MigState::PreCopy,
    MigState::PreCopyP2p,
];

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

    /// Checks an explicit result expectation against what happened.
    pub(crate) fn check_result(
        &mut self,
        key: &StepKey,
        e: &Expect,
        want: &ResultExpect,
        got: &Result<i64, Errno>,
    ) {
        let (pass, expected) = match want {
            ResultExpect::Ok => (got.is_ok(), "success".to_string()),
            ResultExpect::Rejected => (got.is_err(), "an error".to_string()),
            ResultExpect::Errno(list) => (
                matches!(got, Err(e) if list.contains(e)),
                list.iter()
                    .map(|e| errno_name(*e))
                    .collect::<Vec<_>>()
                    .join(" or "),
            ),
        };
        self.check(
            key,
            Check {
                kind: "result",
                ids: e.ids.clone(),
                strength: e.strength,
                pass,
                expected,
                observed: ret_text(got),
            },
        );
    }

    /// Checks `lhs <op> rhs` for an explicit expectation.
    pub(crate) fn check_cmp(
        &mut self,
        key: &StepKey,
        kind: &str,
        e: &Expect,
        cmp: &Cmp,
        lhs: u64,
    ) -> Flow {
        let rhs = self.operand(&cmp.rhs)?;
        self.check(
            key,
            Check {
                kind,
                ids: e.ids.clone(),
                strength: e.strength,
                pass: cmp.op.holds(lhs, rhs),
                expected: format!(
                    "{kind} {cmp}{}",
                    if matches!(cmp.rhs, Operand::Num(_)) {
                        String::new()
                    } else {
                        format!(" ({rhs})")
                    }
                ),
                observed: format!("{kind} = {lhs}"),
            },
        );
        Ok(())
    }

    pub(crate) fn operand(&mut self, o: &Operand) -> Result<u64, Abort> {
        match o {
            Operand::Num(n) => Ok(*n),
            Operand::Var(v) => self.vars.get(v).copied().ok_or_else(|| {
                Abort::Driver(format!("`{v}` has no value: the step that sets it failed"))
            }),
            Operand::Len(b) => self
                .buffers
                .get(b)
                .map(StreamBuf::len)
                .ok_or_else(|| Abort::Driver(format!("buffer `{b}` was never filled"))),
        }
    }

    fn get_state(&mut self, role: Role, expect: Option<&Expect>, key: &StepKey) -> Flow {
        let t0 = Instant::now();
        self.started(role, "GET MIG_DEVICE_STATE", "", key);
        let r = self.role(role)?.dev.get_state_raw();
        let got: Result<i64, Errno> = r.map(|(s, _)| i64::from(s));
        let state_now = r.ok().and_then(|(s, _)| MigState::from_raw(s));
        self.record(
            role,
            "GET MIG_DEVICE_STATE",
            String::new(),
            step_return(&got),
            state_now,
            0,
            t0,
            key,
        );
        if let Some(want) = expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            self.check_result(key, want.0, want.1, &got);
        }
        let Ok((raw, fd)) = r else {
            if expect.is_none_or(|e| e.result.is_none()) {
                self.check(
                    key,
                    Check::builtin(
                        "result",
                        "V2-FSM-02",
                        false,
                        "GET succeeds".into(),
                        ret_text(&got),
                    ),
                );
            }
            return Ok(());
        };
        self.check(
            key,
            Check::builtin(
                "data-fd",
                "V2-FSM-02",
                fd == -1,
                "data_fd = -1".into(),
                format!("data_fd = {fd}"),
            ),
        );
        let tracked = self.role(role)?.state;
        if let Some(e) = expect.filter(|e| e.state.is_some()) {
            let want = self.resolve_state(e.state.as_ref().expect("filtered"))?;
            self.check(
                key,
                Check {
                    kind: "state",
                    ids: e.ids.clone(),
                    strength: e.strength,
                    pass: raw == want,
                    expected: state_name(want),
                    observed: state_name(raw),
                },
            );
        } else if let Some(t) = tracked {
            self.check(
                key,
                Check::builtin(
                    "state",
                    "V2-FSM-11",
                    raw == t.raw(),
                    format!("{t} (no SET since)"),
                    state_name(raw),
                ),
            );
        }
        self.role(role)?.state = state_now;
        Ok(())
    }

    /// SET MIG_DEVICE_STATE to `target`, checked against the model, then
    /// GET to see where the device is.
    pub(crate) fn set_state(
        &mut self,
        role: Role,
        target: u32,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<SetOutcome, Abort> {
        let ctx = self.role(role)?;
        let flags = ctx.flags;
        let cur = match ctx.state {
            Some(s) => s,
            None => ctx.dev.get_state().map_err(|e| {
                Abort::Harness(format!(
                    "GET MIG_DEVICE_STATE failed with {}",
                    errno_name(e)
                ))
            })?,
        };
        // Leaving RESUMING makes the driver judge the data written: without a
        // complete stream it must refuse (V2-RESUME-03), whatever the table says.
        let unloaded = cur == MigState::Resuming && !ctx.resume_loaded;
        let model = model::expect_set(flags, cur, target);
        let incomplete = unloaded && matches!(model, Expectation::Moves { .. });
        let args = format!("{cur} -> {}", state_name(target));
        if model::is_dangerous(cur, target) && !self.opts.include_dangerous {
            self.note(format!(
                "skipped SET {args}: it never returns on kernels without the vfio_mig_get_next_state() fix; run with --include-dangerous"
            ));
            return Ok(SetOutcome { ok: false });
        }
        self.started(role, "SET MIG_DEVICE_STATE", &args, key);
        let t0 = Instant::now();
        let r = self.role(role)?.dev.set_state(target);
        let took = nanos(t0.elapsed());
        let got: Result<i64, Errno> = r.result.map(|()| i64::from(r.data_fd));
        let t_get = Instant::now();
        let g = self.role(role)?.dev.get_state_raw();
        let after = g.ok().and_then(|(s, _)| MigState::from_raw(s));
        self.record(
            role,
            "SET MIG_DEVICE_STATE",
            args,
            step_return(&got),
            after,
            0,
            t0,
            key,
        );
        let g_ret: Result<i64, Errno> = g.map(|(s, _)| i64::from(s));
        self.record(
            role,
            "GET MIG_DEVICE_STATE",
            String::new(),
            step_return(&g_ret),
            after,
            0,
            t_get,
            key,
        );
        if r.result.is_ok() {
            (self.sink)(Event::Latency {
                arc: format!("{cur}>{}", state_name(target)),
                ns: took,
            });
        }

        // The result of the SET itself.
        match expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            Some((e, w)) => self.check_result(key, e, w, &got),
            None if incomplete => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-RESUME-03",
                    r.result.is_err(),
                    "an error: no complete stream was written in RESUMING".into(),
                    ret_text(&got),
                ),
            ),
            None => {
                let (id, pass) = match &model {
                    Expectation::NoOp => ("V2-FSM-06", r.result.is_ok()),
                    Expectation::Moves { .. } => ("V2-FSM-07", r.result.is_ok()),
                    Expectation::Refused(why) => {
                        (why.requirement(), r.result == Err(Errno::EINVAL))
                    }
                };
                self.check_lazy(key, "result", pass, || {
                    let expected = match &model {
                        Expectation::NoOp => "success (already there)".to_string(),
                        Expectation::Moves { path, .. } => format!(
                            "success via {}",
                            path.iter()
                                .map(|s| s.name())
                                .collect::<Vec<_>>()
                                .join(" -> ")
                        ),
                        Expectation::Refused(_) => "EINVAL".to_string(),
                    };
                    Check::builtin("result", id, pass, expected, ret_text(&got))
                });
            }
        }

        let g_state = g.map(|(s, _)| s);
        if r.result.is_ok() {
            // The data fd (V2-FSM-06/08).
            let want_new = match (expect.and_then(|e| e.data_fd), &model) {
                (Some(w), _) => Some((w == FdExpect::New, None)),
                (None, Expectation::Moves { new_data_fd, .. }) => {
                    Some((*new_data_fd, Some("V2-FSM-08")))
                }
                (None, Expectation::NoOp) => Some((false, Some("V2-FSM-06"))),
                (None, Expectation::Refused(_)) => None,
            };
            if let Some((new, id)) = want_new {
                let pass = if new { r.data_fd >= 0 } else { r.data_fd == -1 };
                let expected = || {
                    if new {
                        "a new data_fd (>= 0)".to_string()
                    } else {
                        "data_fd = -1".to_string()
                    }
                };
                let observed = || format!("data_fd = {}", r.data_fd);
                match id {
                    Some(id) => self.check_lazy(key, "data-fd", pass, || {
                        Check::builtin("data-fd", id, pass, expected(), observed())
                    }),
                    None => {
                        let e = expect.expect("explicit data_fd");
                        self.check(
                            key,
                            Check {
                                kind: "data-fd",
                                ids: e.ids.clone(),
                                strength: e.strength,
                                pass,
                                expected: expected(),
                                observed: observed(),
                            },
                        );
                    }
                }
            }
            // The state right after (V2-FSM-03).
            let want_state = match expect.and_then(|e| e.state.as_ref()) {
                Some(s) => Some((self.resolve_state(s)?, expect)),
                None => Some((target, None)),
            };
            if let Some((want, e)) = want_state {
                let pass = g_state == Ok(want);
                let observed = || {
                    g_state
                        .map_or_else(|e| format!("GET failed with {}", errno_name(e)), state_name)
                };
                match e {
                    Some(e) => self.check(
                        key,
                        Check {
                            kind: "state",
                            ids: e.ids.clone(),
                            strength: e.strength,
                            pass,
                            expected: state_name(want),
                            observed: observed(),
                        },
                    ),
                    None => self.check_lazy(key, "state", pass, || {
                        Check::builtin(
                            "state",
                            "V2-FSM-03",
                            pass,
                            format!("GET right after SET reports {}", state_name(want)),
                            observed(),
                        )
                    }),
                }
            }
        } else {
            // A failed SET copies back the requested state (V2-FSM-10) and
            // leaves the device at the start, on the path, or in ERROR.
            let pass = r.device_state == target && r.data_fd == -1;
            self.check_lazy(key, "copied-back", pass, || {
                Check::builtin(
                    "copied-back",
                    "V2-FSM-10",
                    pass,
                    format!(
                        "device_state = {} and data_fd = -1 in the returned struct",
                        state_name(target)
                    ),
                    format!(
                        "device_state = {}, data_fd = {}",
                        state_name(r.device_state),
                        r.data_fd
                    ),
                )
            });
            let (allowed, id): (Vec<MigState>, &str) = match &model {
                _ if incomplete => (vec![MigState::Resuming, MigState::Error], "V2-RESUME-03"),
                Expectation::Refused(why) => (vec![cur], why.requirement()),
                Expectation::Moves { path, .. } => {
                    let mut v = vec![cur, MigState::Error];
                    v.extend(path);
                    (v, "V2-FSM-10")
                }
                Expectation::NoOp => (vec![cur, MigState::Error], "V2-FSM-10"),
            };
            let pass = g_state.is_ok_and(|s| allowed.iter().any(|a| a.raw() == s));
            self.check_lazy(key, "state-after-failure", pass, || {
                Check::builtin(
                    "state-after-failure",
                    id,
                    pass,
                    format!(
                        "one of {}",
                        allowed
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    g_state
                        .map_or_else(|e| format!("GET failed with {}", errno_name(e)), state_name),
                )
            });
        }
        self.after_set(role, cur, &model, &r, after, t0)?;
        Ok(SetOutcome {
            ok: r.result.is_ok(),
        })
    }

    /// Session and timing bookkeeping after a SET.
    fn after_set(
        &mut self,
        role: Role,
        cur: MigState,
        model: &Expectation,
        r: &crate::device::SetStateResult,
        after: Option<MigState>,
        t0: Instant,
    ) -> Flow {
        if r.result.is_ok() {
            let ends = matches!(
                model,
                Expectation::Moves {
                    ends_session: true,
                    ..
                }
            );
            if ends || r.data_fd >= 0 {
                self.end_session(role, EndedBy::Transition)?;
            }
            let ctx = self.role(role)?;
            if r.data_fd >= 0 {
                ctx.resume_loaded = false;
                let kind = if after == Some(MigState::Resuming) {
                    SessionKind::Resuming
                } else {
                    SessionKind::Saving
                };
                ctx.session = Some(Session {
                    fd: r.data_fd,
                    kind,
                    precopy_budget: None,
                    precopy_read: 0,
                    last_info: None,
                    bytes: 0,
                });
            }
            if let Some(a) = after {
                if RUNNING_STATES.contains(&cur) && matches!(a, MigState::Stop | MigState::StopCopy)
                {
                    ctx.stopped_at = Some(t0);
                }
                if RUNNING_STATES.contains(&a) {
                    ctx.stopped_at = None;
                }
            }
        }
        let ctx = self.role(role)?;
        ctx.state = after;
        // Whatever the model said, a device outside the saving group and
        // RESUMING has no session.
        let in_session = after.is_some_and(|s| s.is_saving() || s == MigState::Resuming);
        if !in_session && ctx.session.is_some() {
            self.end_session(role, EndedBy::Transition)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn raw_feature(
        &mut self,
        role: Role,
        feature: u32,
        flags: u32,
        argsz: Option<u32>,
        payload: Option<u64>,
        state: Option<u32>,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let data = match (state, payload) {
            (Some(s), _) => VfioDeviceFeatureMigState {
                device_state: s,
                data_fd: -1,
            }
            .to_bytes(),
            (None, Some(n)) => vec![0u8; n as usize],
            (None, None) => vec![0u8; default_payload(feature)],
        };
        let mut req = FeatureRequest::new(feature, 0, data);
        req.flags = feature | flags;
        if let Some(a) = argsz {
            req.argsz = a;
        }
        let before = req.data.clone();
        let args = format!(
            "argsz {}, flags {:#x} ({}{}), {} payload bytes",
            req.argsz,
            req.flags,
            feature_name(feature).map_or_else(|| feature.to_string(), str::to_string),
            op_names(flags),
            req.data.len()
        );
        self.started(role, "VFIO_DEVICE_FEATURE", &args, key);
        let t0 = Instant::now();
        let r = self.role(role)?.dev.feature(&mut req);
        let got = r.map(|()| 0i64);
        self.record(
            role,
            "VFIO_DEVICE_FEATURE",
            args,
            step_return(&got),
            None,
            0,
            t0,
            key,
        );
        if let Some(e) = expect {
            if let Some(w) = &e.result {
                self.check_result(key, e, w, &got);
            }
            if let Some(u) = e.unchanged {
                let same = req.data == before;
                self.check(
                    key,
                    Check {
                        kind: "payload",
                        ids: e.ids.clone(),
                        strength: e.strength,
                        pass: same == u,
                        expected: if u {
                            "payload untouched".into()
                        } else {
                            "payload written".into()
                        },
                        observed: if same {
                            "payload untouched".into()
                        } else {
                            "payload written".into()
                        },
                    },
                );
            }
        }
        if r.is_ok()
            && feature == VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2
            && flags & VFIO_DEVICE_FEATURE_SET != 0
        {
            self.role(role)?.precopy_info_v2 = true;
        }
        // A raw SET of the state moves the device: adopt any fd and re-learn the state.
        if feature == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
            && flags & VFIO_DEVICE_FEATURE_SET != 0
            && flags & VFIO_DEVICE_FEATURE_PROBE == 0
        {
            let fd = VfioDeviceFeatureMigState::from_bytes(&req.data).data_fd;
            let ctx = self.role(role)?;
            let now = ctx.dev.get_state().ok();
            ctx.state = now;
            if r.is_ok() && fd >= 0 {
                self.end_session(role, EndedBy::Transition)?;
                let kind = if now == Some(MigState::Resuming) {
                    SessionKind::Resuming
                } else {
                    SessionKind::Saving
                };
                self.role(role)?.session = Some(Session {
                    fd,
                    kind,
                    precopy_budget: None,
                    precopy_read: 0,
                    last_info: None,
                    bytes: 0,
                });
            }
        }
        Ok(())
    }

    fn migration_flags(&mut self, role: Role, expect: Option<&Expect>, key: &StepKey) -> Flow {
        self.started(role, "GET MIGRATION", "", key);
        let t0 = Instant::now();
        let r = self.role(role)?.dev.migration_flags();
        let got = r.map(|f| f.0 as i64);
        self.record(
            role,
            "GET MIGRATION",
            String::new(),
            step_return(&got),
            None,
            0,
            t0,
            key,
        );
        match r {
            Ok(f) => {
                self.check(
                    key,
                    Check::builtin(
                        "defined",
                        "V2-FEAT-10",
                        f.is_defined(),
                        "STOP_COPY, +P2P, +PRE_COPY or +P2P+PRE_COPY".into(),
                        migration_flag_names(f.0),
                    ),
                );
                if let Some((e, c)) = expect.and_then(|e| e.flags.as_ref().map(|c| (e, c))) {
                    self.check_cmp(key, "flags", e, c, f.0)?;
                }
            }
            Err(_) => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-FEAT-10",
                    false,
                    "GET MIGRATION succeeds".into(),
                    ret_text(&got),
                ),
            ),
        }
        Ok(())
    }

    pub(crate) fn data_size(
        &mut self,
        role: Role,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<Option<u64>, Abort> {
        self.started(role, "GET MIG_DATA_SIZE", "", key);
        let t0 = Instant::now();
        let ctx = self.role(role)?;
        let r = ctx.dev.stop_copy_length();
        let state = ctx.state;
        let got = r.map(|v| v as i64);
        self.record(
            role,
            "GET MIG_DATA_SIZE",
            String::new(),
            step_return(&got),
            state,
            0,
            t0,
            key,
        );
        match expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            Some((e, w)) => self.check_result(key, e, w, &got),
            None => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-SIZE-01",
                    r.is_ok(),
                    format!("GET works in {}", state.map_or("any state", MigState::name)),
                    ret_text(&got),
                ),
            ),
        }
        if let Ok(v) = r {
            self.vars.insert("stop_copy_length".into(), v);
            if let Some((e, c)) = expect.and_then(|e| e.stop_copy_length.as_ref().map(|c| (e, c))) {
                self.check_cmp(key, "stop_copy_length", e, c, v)?;
            }
        }
        Ok(r.ok())
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

    fn precopy_info(
        &mut self,
        role: Role,
        argsz: Option<u32>,
        in_flags: u32,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let fd = self.session_fd(role, SessionKind::Saving)?;
        let argsz = argsz.unwrap_or(VfioPrecopyInfo::SIZE as u32);
        let mut arg = VfioPrecopyInfo {
            argsz,
            flags: in_flags,
            ..Default::default()
        }
        .to_bytes();
        let args = format!("fd {fd}, argsz {argsz}, flags {in_flags:#x}");
        self.started(role, "VFIO_MIG_GET_PRECOPY_INFO", &args, key);
        let t0 = Instant::now();
        let ctx = self.role(role)?;
        let r = ctx.dev.data_ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut arg);
        let state = ctx.state;
        let v2 = ctx.precopy_info_v2;
        let got = r.map(i64::from);
        self.record(
            role,
            "VFIO_MIG_GET_PRECOPY_INFO",
            args,
            step_return(&got),
            state,
            0,
            t0,
            key,
        );
        let in_precopy = state.is_some_and(MigState::is_precopy);
        match expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            Some((e, w)) => self.check_result(key, e, w, &got),
            None if (argsz as usize) < VfioPrecopyInfo::SIZE => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-PRECOPY-03",
                    r == Err(Errno::EINVAL),
                    "EINVAL for argsz below 24".into(),
                    ret_text(&got),
                ),
            ),
            None if in_precopy => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-PRECOPY-01",
                    r.is_ok(),
                    "works in PRE_COPY states".into(),
                    ret_text(&got),
                ),
            ),
            None => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-PRECOPY-02",
                    r == Err(Errno::EINVAL),
                    format!(
                        "EINVAL outside PRE_COPY (in {})",
                        state.map_or("an unknown state", MigState::name)
                    ),
                    ret_text(&got),
                ),
            ),
        }
        if r.is_err() {
            return Ok(());
        }
        let info = VfioPrecopyInfo::from_bytes(&arg);
        self.vars.insert("initial_bytes".into(), info.initial_bytes);
        self.vars.insert("dirty_bytes".into(), info.dirty_bytes);
        if in_precopy {
            self.precopy_trend(role, &info, key)?;
        }
        if v2 && in_flags != 0 {
            self.check(
                key,
                Check::builtin(
                    "flags",
                    "V2-PRECOPY-09",
                    info.flags == 0 || info.flags == VFIO_PRECOPY_INFO_REINIT,
                    "output flags 0 or REINIT".into(),
                    format!("flags = {:#x}", info.flags),
                ),
            );
        } else if in_flags != 0 {
            self.note(format!("precopy info without MIG_PRECOPY_INFOv2: input flags {in_flags:#x}, output flags {:#x}", info.flags));
        }
        if let Some(e) = expect {
            for (kind, cmp, v) in [
                ("initial_bytes", &e.initial_bytes, info.initial_bytes),
                ("dirty_bytes", &e.dirty_bytes, info.dirty_bytes),
                ("flags", &e.flags, u64::from(info.flags)),
            ] {
                if let Some(c) = cmp {
                    self.check_cmp(key, kind, e, c, v)?;
                }
            }
        }
        Ok(())
    }

    /// `initial_bytes` starts non-zero and shrinks as data is read;
    /// `dirty_bytes` starts at 0 (V2-PRECOPY-04/05).
    fn precopy_trend(&mut self, role: Role, info: &VfioPrecopyInfo, key: &StepKey) -> Flow {
        let ctx = self.role(role)?;
        let Some(session) = ctx.session.as_mut() else {
            return Ok(());
        };
        let last = session.last_info;
        let read_so_far = session.bytes;
        session.last_info = Some((info.initial_bytes, info.dirty_bytes, read_so_far));
        session.precopy_budget = Some(info.initial_bytes.saturating_add(info.dirty_bytes));
        session.precopy_read = 0;
        match last {
            None => {
                self.check(
                    key,
                    Check::builtin(
                        "initial-bytes-start",
                        "V2-PRECOPY-04",
                        info.initial_bytes > 0,
                        "initial_bytes > 0 when PRE_COPY starts".into(),
                        format!("initial_bytes = {}", info.initial_bytes),
                    ),
                );
                self.check(
                    key,
                    Check::builtin(
                        "dirty-bytes-start",
                        "V2-PRECOPY-05",
                        info.dirty_bytes == 0,
                        "dirty_bytes = 0 when PRE_COPY starts".into(),
                        format!("dirty_bytes = {}", info.dirty_bytes),
                    ),
                );
            }
            Some((initial, _, read_then)) => {
                let read = read_so_far - read_then;
                let pass = info.initial_bytes <= initial
                    && (read == 0 || initial == 0 || info.initial_bytes < initial);
                self.check(
                    key,
                    Check::builtin(
                        "initial-bytes-falls",
                        "V2-PRECOPY-04",
                        pass,
                        format!("initial_bytes below {initial} after reading {read} bytes"),
                        format!("initial_bytes = {}", info.initial_bytes),
                    ),
                );
            }
        }
        Ok(())
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

    #[allow(clippy::too_many_arguments)]
    fn read_op(
        &mut self,
        role: Role,
        into: Option<&str>,
        chunk: u64,
        until: ReadUntil,
        max: Option<u64>,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let fd = self.session_fd(role, SessionKind::Saving)?;
        let state = self.role(role)?.state;
        let bound = max.unwrap_or_else(|| self.default_bound(role, until));
        let args = format!(
            "fd {fd}, chunk {chunk}, until {}",
            match until {
                ReadUntil::Eof => "eof",
                ReadUntil::EndOfPrecopy => "end_of_precopy",
                ReadUntil::Once => "once",
            }
        );
        self.started(role, "read", &args, key);
        let t0 = Instant::now();
        let (total, end, enomsg_seen) = self.read_loop(role, fd, chunk, until, bound, into)?;
        let ret = match end {
            End::Error(e) => StepReturn::Errno {
                name: errno_name(e),
                errno: e as i32,
            },
            End::Enomsg => StepReturn::Errno {
                name: "ENOMSG".into(),
                errno: Errno::ENOMSG as i32,
            },
            End::NotReady => StepReturn::TimedOut,
            _ => StepReturn::Ok(total as i64),
        };
        self.record(
            role,
            "read",
            format!("{args}: {}", end_text(end)),
            ret,
            state,
            total,
            t0,
            key,
        );
        if until == ReadUntil::Eof {
            let dur = nanos(t0.elapsed());
            let downtime = self.role(role)?.stopped_at.map(|s| nanos(s.elapsed()));
            if end == End::Eof && state == Some(MigState::StopCopy) {
                self.transfer(role, Direction::Save, total, dur, chunk, downtime);
            }
        }
        self.read_checks(role, fd, until, state, total, end, enomsg_seen, bound, key)?;
        if let Some(e) = expect {
            if let Some(w) = &e.result {
                let got = match end {
                    End::Error(err) => Err(err),
                    End::Enomsg => Err(Errno::ENOMSG),
                    _ => Ok(total as i64),
                };
                self.check_result(key, e, w, &got);
            }
            if let Some(c) = &e.bytes {
                self.check_cmp(key, "bytes", e, c, total)?;
            }
            if let Some(want) = e.end {
                let pass = matches!(
                    (want, end),
                    (EndExpect::Eof, End::Eof) | (EndExpect::Enomsg, End::Enomsg)
                );
                self.check(
                    key,
                    Check {
                        kind: "end",
                        ids: e.ids.clone(),
                        strength: e.strength,
                        pass,
                        expected: match want {
                            EndExpect::Eof => "read returns 0".into(),
                            EndExpect::Enomsg => "read fails with ENOMSG".into(),
                        },
                        observed: end_text(end),
                    },
                );
            }
        }
        if end == End::NotReady {
            return Err(Abort::Driver("the data fd never became readable".into()));
        }
        Ok(())
    }

    /// How many bytes a read loop may take before it is cut off.
    fn default_bound(&mut self, role: Role, until: ReadUntil) -> u64 {
        let budget = self
            .role(role)
            .ok()
            .and_then(|c| c.session.as_ref())
            .and_then(|s| s.precopy_budget);
        match (until, self.vars.get("stop_copy_length"), budget) {
            (ReadUntil::EndOfPrecopy, _, Some(b)) => b.saturating_mul(2).saturating_add(1 << 20),
            (ReadUntil::Eof, Some(&scl), _) => scl.saturating_mul(4).saturating_add(1 << 20),
            _ => 64 << 30,
        }
    }

    /// Reads until the end the step asks for; returns (bytes, how it
    /// ended, whether ENOMSG was seen).
    fn read_loop(
        &mut self,
        role: Role,
        fd: DataFd,
        chunk: u64,
        until: ReadUntil,
        bound: u64,
        into: Option<&str>,
    ) -> Result<(u64, End, bool), Abort> {
        let chunk = chunk as usize;
        self.reserve_buf(chunk);
        if let Some(name) = into {
            self.buffers
                .entry(name.to_string())
                .or_insert_with(|| StreamBuf::new(self.opts.spill_threshold));
        }
        let mut total = 0u64;
        let mut retries = 0u32;
        let mut enomsg_seen = false;
        let precopy = until == ReadUntil::EndOfPrecopy;
        let end = loop {
            if total >= bound {
                break End::Bound;
            }
            let events = PollFlags::POLLIN;
            if precopy {
                // At the temporary end of precopy data poll may say "not
                // readable"; read anyway to see ENOMSG.
                let _ = self
                    .role(role)?
                    .dev
                    .data_poll(fd, events, std::time::Duration::ZERO);
            } else {
                match self.wait_ready(role, fd, events)? {
                    Ok(ev) if ev.is_empty() => break End::NotReady,
                    Ok(_) => {}
                    Err(e) => break End::Error(e),
                }
            }
            let want = chunk
                .min(usize::try_from(bound - total).unwrap_or(usize::MAX))
                .max(1);
            let ctx = role_of(&mut self.roles, role)?;
            let r = ctx.dev.data_read(fd, &mut self.buf[..want]);
            match r {
                Ok(0) => break End::Eof,
                Ok(n) => {
                    total += n as u64;
                    if let Some(s) = ctx.session.as_mut() {
                        s.bytes += n as u64;
                        s.precopy_read += n as u64;
                    }
                    if let Some(name) = into {
                        let temp = &self.opts.temp_dir;
                        if let Err(e) = self
                            .buffers
                            .get_mut(name)
                            .expect("created above")
                            .append(&self.buf[..n], temp)
                        {
                            return Err(Abort::Harness(format!("cannot keep the stream: {e}")));
                        }
                    }
                    if until == ReadUntil::Once {
                        break End::Once(n);
                    }
                }
                Err(Errno::ENOMSG) => {
                    enomsg_seen = true;
                    break End::Enomsg;
                }
                Err(Errno::EAGAIN | Errno::EINTR) if retries < 1000 => retries += 1,
                Err(e) => break End::Error(e),
            }
        };
        Ok((total, end, enomsg_seen))
    }

    #[allow(clippy::too_many_arguments)]
    fn read_checks(
        &mut self,
        role: Role,
        fd: DataFd,
        until: ReadUntil,
        state: Option<MigState>,
        total: u64,
        end: End,
        enomsg_seen: bool,
        bound: u64,
        key: &StepKey,
    ) -> Flow {
        match until {
            ReadUntil::Eof => {
                if state == Some(MigState::StopCopy) {
                    self.check(
                        key,
                        Check::builtin(
                            "no-enomsg",
                            "V2-SAVE-02",
                            !enomsg_seen,
                            "ENOMSG never returned in STOP_COPY".into(),
                            end_text(end),
                        ),
                    );
                }
                if end == End::NotReady {
                    self.check(
                        key,
                        Check::builtin(
                            "ready",
                            "KERNEL-02",
                            false,
                            "the data fd becomes readable before the deadline".into(),
                            end_text(end),
                        ),
                    );
                    return Ok(());
                }
                self.check(
                    key,
                    Check::builtin(
                        "end",
                        "V2-SAVE-01",
                        end == End::Eof,
                        format!("read returns 0 within {bound} bytes"),
                        format!("{} after {total} bytes", end_text(end)),
                    ),
                );
                if end == End::Eof {
                    let ctx = role_of(&mut self.roles, role)?;
                    let again = ctx.dev.data_read(fd, &mut self.buf[..1]);
                    let ready = ctx
                        .dev
                        .data_poll(fd, PollFlags::POLLIN, std::time::Duration::ZERO);
                    self.check(
                        key,
                        Check::builtin(
                            "end-again",
                            "V2-SAVE-01",
                            again == Ok(0),
                            "read keeps returning 0".into(),
                            ret_text(&again.map(|n| n as i64)),
                        ),
                    );
                    self.check(
                        key,
                        Check::builtin(
                            "end-readable",
                            "V2-SAVE-01",
                            ready.is_ok_and(|r| r.contains(PollFlags::POLLIN)),
                            "poll reports readable at the end of stream".into(),
                            format!("{ready:?}"),
                        ),
                    );
                }
            }
            ReadUntil::EndOfPrecopy => {
                let observed = format!("{} after {total} bytes", end_text(end));
                self.check(
                    key,
                    Check::builtin(
                        "enomsg",
                        "V2-PRECOPY-06",
                        end == End::Enomsg,
                        "read fails with ENOMSG at the end of precopy data".into(),
                        observed,
                    ),
                );
                let budget = self
                    .role(role)?
                    .session
                    .as_ref()
                    .and_then(|s| s.precopy_budget.map(|b| (b, s.precopy_read)));
                if let Some((b, read)) = budget {
                    self.check(
                        key,
                        Check::builtin(
                            "announced",
                            "V2-PRECOPY-07",
                            read <= b,
                            format!("at most {b} bytes (initial_bytes + dirty_bytes)"),
                            format!("{read} bytes"),
                        ),
                    );
                } else if end == End::Bound {
                    self.check(
                        key,
                        Check::builtin(
                            "bounded",
                            "V2-PRECOPY-07",
                            false,
                            format!("precopy data ends within {bound} bytes"),
                            end_text(end),
                        ),
                    );
                }
            }
            ReadUntil::Once => {}
        }
        Ok(())
    }

    fn positioned(
        &mut self,
        role: Role,
        write: bool,
        offset: u64,
        len: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let kind = if write {
            SessionKind::Resuming
        } else {
            SessionKind::Saving
        };
        let fd = self.session_fd(role, kind)?;
        let len = len as usize;
        self.reserve_buf(len);
        let op = if write { "pwrite" } else { "pread" };
        let args = format!("fd {fd}, {len} bytes at offset {offset}");
        self.started(role, op, &args, key);
        let t0 = Instant::now();
        let ctx = role_of(&mut self.roles, role)?;
        let r = if write {
            ctx.dev.data_pwrite(fd, &self.buf[..len], offset)
        } else {
            ctx.dev.data_pread(fd, &mut self.buf[..len], offset)
        };
        let state = ctx.state;
        let got = r.map(|n| n as i64);
        self.record(role, op, args, step_return(&got), state, 0, t0, key);
        match expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            Some((e, w)) => self.check_result(key, e, w, &got),
            None => {
                let id = if write { "V2-RESUME-07" } else { "V2-SAVE-04" };
                self.check(
                    key,
                    Check::builtin(
                        "refused",
                        id,
                        r.is_err(),
                        format!("{op} fails (ESPIPE in known drivers)"),
                        ret_text(&got),
                    ),
                );
            }
        }
        Ok(())
    }

    /// Writes a saved stream (with its mutation) to the resuming fd.
    /// Returns the bytes accepted and the first error.
    pub(crate) fn write_stream(
        &mut self,
        role: Role,
        fd: DataFd,
        w: &WriteSpec,
    ) -> Result<(u64, Option<Errno>), Abort> {
        let mut stream = self
            .buffers
            .remove(&w.from)
            .ok_or_else(|| Abort::Driver(format!("buffer `{}` was never filled", w.from)))?;
        // No write is longer than the (mutated) stream, whatever the chunk.
        let total = stream.len().saturating_sub(w.mutation.truncate) + w.mutation.extra;
        let chunk = usize::try_from(w.chunk.min(total.max(1))).unwrap_or(usize::MAX);
        self.reserve_buf(chunk);
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            let mut reader = stream
                .reader(&w.mutation)
                .map_err(|e| Abort::Harness(format!("cannot read buffer `{}`: {e}", w.from)))?;
            let mut written = 0u64;
            loop {
                let data = reader
                    .next_chunk(&mut buf[..chunk])
                    .map_err(|e| Abort::Harness(format!("cannot read buffer `{}`: {e}", w.from)))?;
                if data.is_empty() {
                    return Ok((written, None));
                }
                let mut off = 0;
                while off < data.len() {
                    match self.wait_ready(role, fd, PollFlags::POLLOUT)? {
                        Ok(ev) if ev.is_empty() => return Ok((written, Some(Errno::ETIMEDOUT))),
                        Ok(_) => {}
                        Err(e) => return Ok((written, Some(e))),
                    }
                    let ctx = role_of(&mut self.roles, role)?;
                    match ctx.dev.data_write(fd, &data[off..]) {
                        Ok(0) => return Ok((written, Some(Errno::ENOSPC))),
                        Ok(k) => {
                            off += k;
                            written += k as u64;
                        }
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        Err(e) => return Ok((written, Some(e))),
                    }
                }
            }
        })();
        self.buf = buf;
        self.buffers.insert(w.from.clone(), stream);
        if let Ok((_, err)) = &result {
            self.role(role)?.resume_loaded = err.is_none() && w.mutation.is_none();
        }
        result
    }

    fn write_op(
        &mut self,
        role: Role,
        w: &WriteSpec,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<Option<Errno>, Abort> {
        let fd = self.session_fd(role, SessionKind::Resuming)?;
        let args = format!(
            "fd {fd}, `{}` in chunks of {}{}",
            w.from,
            w.chunk,
            mutation_text(&w.mutation)
        );
        self.started(role, "write", &args, key);
        let t0 = Instant::now();
        let (written, err) = self.write_stream(role, fd, w)?;
        let state = self.role(role)?.state;
        let got: Result<i64, Errno> = match err {
            Some(e) => Err(e),
            None => Ok(written as i64),
        };
        self.record(
            role,
            "write",
            args,
            step_return(&got),
            state,
            written,
            t0,
            key,
        );
        if err == Some(Errno::ETIMEDOUT) {
            self.check(
                key,
                Check::builtin(
                    "ready",
                    "KERNEL-02",
                    false,
                    "the data fd becomes writable before the deadline".into(),
                    "poll timed out".into(),
                ),
            );
            return Err(Abort::Driver("the data fd never became writable".into()));
        }
        if let Some(e) = expect {
            if let Some(wnt) = &e.result {
                self.check_result(key, e, wnt, &got);
            }
            if let Some(c) = &e.bytes {
                self.check_cmp(key, "bytes", e, c, written)?;
            }
        }
        Ok(err)
    }

    fn poll_op(
        &mut self,
        role: Role,
        readable: bool,
        writable: bool,
        timeout: std::time::Duration,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let ctx = self.role(role)?;
        let Some(fd) = ctx.session.as_ref().map(|s| s.fd) else {
            return Err(Abort::Harness(format!(
                "no data session is open on the {role}"
            )));
        };
        let mut events = PollFlags::empty();
        if readable {
            events |= PollFlags::POLLIN;
        }
        if writable {
            events |= PollFlags::POLLOUT;
        }
        let args = format!(
            "fd {fd}, {events:?}, {}",
            humantime::format_duration(timeout)
        );
        self.started(role, "poll", &args, key);
        let t0 = Instant::now();
        let limit = timeout.min(self.opts.io_timeout);
        let r = self.role(role)?.dev.data_poll(fd, events, limit);
        let state = self.role(role)?.state;
        let got = r.map(|ev| i64::from(ev.bits()));
        self.record(role, "poll", args, step_return(&got), state, 0, t0, key);
        if let Some((e, want)) = expect.and_then(|e| e.readable.map(|w| (e, w))) {
            let is = r.is_ok_and(|ev| ev.contains(PollFlags::POLLIN));
            self.check(
                key,
                Check {
                    kind: "readable",
                    ids: e.ids.clone(),
                    strength: e.strength,
                    pass: is == want,
                    expected: if want {
                        "readable".into()
                    } else {
                        "not readable".into()
                    },
                    observed: format!("{r:?}"),
                },
            );
        }
        Ok(())
    }

    fn data_ioctl(
        &mut self,
        role: Role,
        request: u64,
        argsz: u32,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let fd = self.session_fd(role, SessionKind::Saving)?;
        let mut arg = vec![0u8; (argsz as usize).max(VfioPrecopyInfo::SIZE)];
        put_u32(&mut arg, 0, argsz);
        let args = format!("fd {fd}, request {request:#x}, argsz {argsz}");
        self.started(role, "ioctl", &args, key);
        let t0 = Instant::now();
        let ctx = self.role(role)?;
        let r = ctx.dev.data_ioctl(fd, request, &mut arg);
        let state = ctx.state;
        let got = r.map(i64::from);
        self.record(role, "ioctl", args, step_return(&got), state, 0, t0, key);
        match expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            Some((e, w)) => self.check_result(key, e, w, &got),
            None if request != VFIO_MIG_GET_PRECOPY_INFO => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-PRECOPY-03",
                    r == Err(Errno::ENOTTY),
                    "ENOTTY for another ioctl number".into(),
                    ret_text(&got),
                ),
            ),
            None => {}
        }
        Ok(())
    }

    fn cloexec(&mut self, role: Role, key: &StepKey) -> Flow {
        let ctx = self.role(role)?;
        let Some(fd) = ctx.session.as_ref().map(|s| s.fd) else {
            return Err(Abort::Harness(format!(
                "no data session is open on the {role}"
            )));
        };
        let r = ctx.dev.data_cloexec(fd);
        self.check(
            key,
            Check::builtin(
                "cloexec",
                "V2-SAVE-06",
                r == Ok(true),
                "FD_CLOEXEC set".into(),
                format!("{r:?}"),
            ),
        );
        Ok(())
    }

    fn close_data_fd(&mut self, role: Role, key: &StepKey) -> Flow {
        let ctx = self.role(role)?;
        let Some(s) = ctx.session.take() else {
            return Err(Abort::Harness(format!(
                "no data session is open on the {role}"
            )));
        };
        let t0 = Instant::now();
        let r = ctx.dev.data_close(s.fd);
        let state = ctx.state;
        self.record(
            role,
            "close",
            format!("fd {}", s.fd),
            step_return(&r.map(|()| 0)),
            state,
            0,
            t0,
            key,
        );
        Ok(())
    }

    /// Probes the most recently ended session: it must not deliver device
    /// data any more, nor accept data.
    fn session_ended(&mut self, role: Role, key: &StepKey) -> Flow {
        let Some((fd, kind, by)) = self.role(role)?.ended.pop() else {
            return Err(Abort::Harness(format!(
                "no ended session on the {role} to probe"
            )));
        };
        self.probe_ended(role, fd, kind, by, key)
    }

    /// Reads (or writes) an ended session's fd, checks that nothing moves,
    /// and closes it. The requirement depends on what ended the session.
    fn probe_ended(
        &mut self,
        role: Role,
        fd: DataFd,
        kind: SessionKind,
        by: EndedBy,
        key: &StepKey,
    ) -> Flow {
        let probe_op = match kind {
            SessionKind::Saving => "read",
            SessionKind::Resuming => "write",
        };
        self.started(role, probe_op, &format!("fd {fd} of an ended session"), key);
        let ctx = role_of(&mut self.roles, role)?;
        let t0 = Instant::now();
        let (op, r) = match kind {
            SessionKind::Saving => {
                let _ = ctx
                    .dev
                    .data_poll(fd, PollFlags::POLLIN, std::time::Duration::ZERO);
                ("read", ctx.dev.data_read(fd, &mut self.buf[..4096]))
            }
            SessionKind::Resuming => ("write", ctx.dev.data_write(fd, &self.buf[..16])),
        };
        let _ = ctx.dev.data_close(fd);
        let state = ctx.state;
        let got = r.map(|n| n as i64);
        self.record(
            role,
            op,
            format!("fd {fd} of an ended session"),
            step_return(&got),
            state,
            0,
            t0,
            key,
        );
        let ids: &[&str] = match (by, kind) {
            (EndedBy::Transition, SessionKind::Saving) => &["V2-FSM-09", "V2-SAVE-05"],
            (EndedBy::Transition, SessionKind::Resuming) => &["V2-FSM-09"],
            (EndedBy::Reset, _) => &["V2-RESET-02"],
            (EndedBy::DeviceClosed, _) => &["V2-FSM-13"],
        };
        let (pass, expected) = match kind {
            SessionKind::Saving => (
                matches!(r, Ok(0) | Err(_)),
                "end of stream or an error, no data",
            ),
            SessionKind::Resuming => (r.is_err(), "writes fail"),
        };
        self.check(
            key,
            Check {
                kind: "ended",
                ids: ids.iter().map(|s| s.to_string()).collect(),
                strength: Strength::Must,
                pass,
                expected: expected.to_string(),
                observed: ret_text(&got),
            },
        );
        Ok(())
    }

    /// V2-RESET-03: ERROR is left only by reset. Applies only when the
    /// device is in ERROR.
    fn error_state(&mut self, role: Role, key: &StepKey) -> Flow {
        self.started(role, "GET MIG_DEVICE_STATE", "", key);
        let t0 = Instant::now();
        let g = self.role(role)?.dev.get_state();
        self.record(
            role,
            "GET MIG_DEVICE_STATE",
            String::new(),
            step_return(&g.map(|s| i64::from(s.raw()))),
            g.ok(),
            0,
            t0,
            key,
        );
        if g != Ok(MigState::Error) {
            self.note(format!(
                "V2-RESET-03 not applicable: the device is in {} (not ERROR)",
                g.map_or_else(
                    |e| format!("an unknown state ({})", errno_name(e)),
                    |s| s.name().to_string()
                )
            ));
            self.role(role)?.state = g.ok();
            return Ok(());
        }
        self.role(role)?.state = Some(MigState::Error);
        self.set_state(role, MigState::Running.raw(), None, key)?;
        self.reset(
            role,
            None,
            &StepKey {
                prefix: format!("{}-reset", key.prefix),
                loc: key.loc.clone(),
            },
        )
    }

    pub(crate) fn save(
        &mut self,
        role: Role,
        into: &str,
        chunk: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        self.buffers.remove(into);
        let from_stop = self.role(role)?.state == Some(MigState::Stop);
        let estimate = if from_stop {
            self.data_size(role, None, key)?
        } else {
            None
        };
        let set = self.set_state(role, MigState::StopCopy.raw(), None, key)?;
        if !set.ok {
            return Err(Abort::Driver("SET STOP_COPY failed".into()));
        }
        self.session_fd(role, SessionKind::Saving)?;
        let before = self.buffers.get(into).map_or(0, StreamBuf::len);
        self.read_op(role, Some(into), chunk, ReadUntil::Eof, None, None, key)?;
        let bytes = self.buffers.get(into).map_or(0, StreamBuf::len) - before;
        if let Some(scl) = estimate {
            self.check(
                key,
                Check::builtin(
                    "within-estimate",
                    "V2-SIZE-03",
                    bytes <= scl,
                    format!("at most stop_copy_length = {scl} bytes"),
                    format!("{bytes} bytes"),
                ),
            );
            self.check(
                key,
                Check::builtin(
                    "estimate-sane",
                    "V2-SIZE-04",
                    scl <= bytes.saturating_mul(2).saturating_add(4096),
                    format!("stop_copy_length at most 2 x {bytes} + 4096"),
                    format!("stop_copy_length = {scl}"),
                ),
            );
            if bytes > 0 {
                self.note(format!(
                    "stop_copy_length {scl} for {bytes} bytes read (ratio actual/estimate {:.3})",
                    bytes as f64 / scl.max(1) as f64
                ));
            }
        }
        self.set_state(role, MigState::Stop.raw(), None, key)?;
        if let Some((e, c)) = expect.and_then(|e| e.bytes.as_ref().map(|c| (e, c))) {
            self.check_cmp(key, "bytes", e, c, bytes)?;
        }
        Ok(())
    }

    /// STOP -> RESUMING, write the stream, RESUMING -> STOP.
    fn resume(
        &mut self,
        role: Role,
        w: &WriteSpec,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        if self.role(role)?.state != Some(MigState::Stop)
            && !self.set_state(role, MigState::Stop.raw(), None, key)?.ok
        {
            return Err(Abort::Driver("SET STOP failed before resuming".into()));
        }
        if !self
            .set_state(role, MigState::Resuming.raw(), None, key)?
            .ok
        {
            return Err(Abort::Driver("SET RESUMING failed".into()));
        }
        let fd = self.session_fd(role, SessionKind::Resuming)?;
        let args = format!(
            "fd {fd}, `{}` in chunks of {}{}",
            w.from,
            w.chunk,
            mutation_text(&w.mutation)
        );
        self.started(role, "write", &args, key);
        let t0 = Instant::now();
        let (written, err) = self.write_stream(role, fd, w)?;
        let got: Result<i64, Errno> = match err {
            Some(e) => Err(e),
            None => Ok(written as i64),
        };
        let state = self.role(role)?.state;
        self.record(
            role,
            "write",
            args,
            step_return(&got),
            state,
            written,
            t0,
            key,
        );
        self.transfer(
            role,
            Direction::Resume,
            written,
            nanos(t0.elapsed()),
            w.chunk,
            None,
        );
        if err == Some(Errno::ETIMEDOUT) {
            self.check(
                key,
                Check::builtin(
                    "ready",
                    "KERNEL-02",
                    false,
                    "the data fd becomes writable before the deadline".into(),
                    "poll timed out".into(),
                ),
            );
            return Err(Abort::Driver("the data fd never became writable".into()));
        }
        // RESUMING -> STOP is the driver's verdict on the data; it is judged
        // here (V2-RESUME-*), not as a plain arc of the model.
        let stop_key = StepKey {
            prefix: format!("{}-stop", key.prefix),
            loc: key.loc.clone(),
        };
        let stop = self.set_unjudged(role, MigState::Stop.raw(), &stop_key)?;
        let now = self.role(role)?.state;
        let accepted = err.is_none() && stop;
        let observed = match (err, stop) {
            (Some(e), _) => format!(
                "write failed with {} after {written} bytes; RESUMING -> STOP {}",
                errno_name(e),
                if stop { "succeeded" } else { "failed" }
            ),
            (None, true) => format!("{written} bytes written and RESUMING -> STOP succeeded"),
            (None, false) => format!("{written} bytes written; RESUMING -> STOP failed"),
        };
        let want = expect.and_then(|e| e.result.as_ref().map(|r| (e, r)));
        match want {
            None | Some((_, ResultExpect::Ok)) => {
                let (ids, strength) = match want {
                    Some((e, _)) => (e.ids.clone(), e.strength),
                    None => (
                        vec!["V2-RESUME-01".to_string()],
                        strength_of("V2-RESUME-01"),
                    ),
                };
                self.check(
                    key,
                    Check {
                        kind: "resumed",
                        ids,
                        strength,
                        pass: accepted,
                        expected: "stream accepted".into(),
                        observed,
                    },
                );
                if stop {
                    self.check(
                        &stop_key,
                        Check::builtin(
                            "state",
                            "V2-FSM-03",
                            now == Some(MigState::Stop),
                            "STOP after RESUMING -> STOP".into(),
                            now.map_or("unknown".into(), |s| s.name().to_string()),
                        ),
                    );
                }
            }
            Some((e, w)) => {
                let pass = match w {
                    ResultExpect::Errno(list) => err.is_some_and(|x| list.contains(&x)),
                    _ => !accepted,
                };
                let expected = match w {
                    ResultExpect::Errno(list) => format!(
                        "write() fails with {}",
                        list.iter()
                            .map(|e| errno_name(*e))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                    _ => "a write() error or RESUMING -> STOP failing".into(),
                };
                self.check(
                    key,
                    Check {
                        kind: "rejected",
                        ids: e.ids.clone(),
                        strength: e.strength,
                        pass,
                        expected,
                        observed,
                    },
                );
                if !stop {
                    self.check(
                        &stop_key,
                        Check::builtin(
                            "state-after-rejection",
                            "V2-RESUME-03",
                            matches!(now, Some(MigState::Resuming | MigState::Error)),
                            "RESUMING or ERROR".into(),
                            now.map_or("unknown".into(), |s| s.name().to_string()),
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// SET and GET, recorded, with the session bookkeeping but no checks:
    /// for arcs the caller judges itself.
    fn set_unjudged(&mut self, role: Role, target: u32, key: &StepKey) -> Result<bool, Abort> {
        let ctx = self.role(role)?;
        let cur = match ctx.state {
            Some(s) => s,
            None => ctx.dev.get_state().map_err(|e| {
                Abort::Harness(format!(
                    "GET MIG_DEVICE_STATE failed with {}",
                    errno_name(e)
                ))
            })?,
        };
        let model = model::expect_set(ctx.flags, cur, target);
        let args = format!("{cur} -> {}", state_name(target));
        self.started(role, "SET MIG_DEVICE_STATE", &args, key);
        let t0 = Instant::now();
        let r = self.role(role)?.dev.set_state(target);
        let took = nanos(t0.elapsed());
        let got: Result<i64, Errno> = r.result.map(|()| i64::from(r.data_fd));
        let g = self.role(role)?.dev.get_state_raw();
        let after = g.ok().and_then(|(s, _)| MigState::from_raw(s));
        self.record(
            role,
            "SET MIG_DEVICE_STATE",
            args,
            step_return(&got),
            after,
            0,
            t0,
            key,
        );
        if r.result.is_ok() {
            (self.sink)(Event::Latency {
                arc: format!("{cur}>{}", state_name(target)),
                ns: took,
            });
        }
        self.after_set(role, cur, &model, &r, after, t0)?;
        Ok(r.result.is_ok())
    }

    /// Saves on `role` and writes straight into `to` without keeping the
    /// stream (source STOP_COPY -> destination RESUMING).
    fn pipe(
        &mut self,
        role: Role,
        to: Role,
        chunk: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        for r in [role, to] {
            if self.role(r)?.state != Some(MigState::Stop)
                && !self.set_state(r, MigState::Stop.raw(), None, key)?.ok
            {
                return Err(Abort::Driver(format!("SET STOP failed on the {r}")));
            }
        }
        if !self.set_state(to, MigState::Resuming.raw(), None, key)?.ok
            || !self
                .set_state(role, MigState::StopCopy.raw(), None, key)?
                .ok
        {
            return Err(Abort::Driver("could not open both sessions".into()));
        }
        let src = self.session_fd(role, SessionKind::Saving)?;
        let dst = self.session_fd(to, SessionKind::Resuming)?;
        let chunk = chunk as usize;
        self.reserve_buf(chunk);
        let args = format!("fd {src} on {role} -> fd {dst} on {to}, chunks of {chunk}");
        self.started(role, "pipe", &args, key);
        let t0 = Instant::now();
        let mut total = 0u64;
        let mut failure = None;
        loop {
            match self.wait_ready(role, src, PollFlags::POLLIN)? {
                Ok(ev) if ev.is_empty() => {
                    failure = Some(format!("source not readable after {total} bytes"));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    failure = Some(format!("poll failed with {}", errno_name(e)));
                    break;
                }
            }
            let n = match role_of(&mut self.roles, role)?
                .dev
                .data_read(src, &mut self.buf[..chunk])
            {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    failure = Some(format!("read failed with {}", errno_name(e)));
                    break;
                }
            };
            let mut off = 0;
            while off < n {
                match role_of(&mut self.roles, to)?
                    .dev
                    .data_write(dst, &self.buf[off..n])
                {
                    Ok(0) => {
                        failure = Some("write returned 0".into());
                        break;
                    }
                    Ok(k) => off += k,
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(e) => {
                        failure = Some(format!("write failed with {}", errno_name(e)));
                        break;
                    }
                }
            }
            total += off as u64;
            if failure.is_some() {
                break;
            }
        }
        let state = self.role(role)?.state;
        self.record(
            role,
            "pipe",
            args,
            match &failure {
                Some(_) => StepReturn::Errno {
                    name: "EIO".into(),
                    errno: Errno::EIO as i32,
                },
                None => StepReturn::Ok(total as i64),
            },
            state,
            total,
            t0,
            key,
        );
        let downtime = self.role(role)?.stopped_at.map(|s| nanos(s.elapsed()));
        self.transfer(
            role,
            Direction::Save,
            total,
            nanos(t0.elapsed()),
            chunk as u64,
            downtime,
        );
        self.role(to)?.resume_loaded = failure.is_none();
        let stopped = self.set_state(to, MigState::Stop.raw(), None, key)?.ok;
        self.set_state(role, MigState::Stop.raw(), None, key)?;
        let pass = failure.is_none() && stopped;
        let observed = failure.unwrap_or_else(|| {
            format!(
                "{total} bytes; RESUMING -> STOP {}",
                if stopped { "succeeded" } else { "failed" }
            )
        });
        match expect {
            Some(e) => {
                if let Some(w) = &e.result {
                    self.check(
                        key,
                        Check {
                            kind: "resumed",
                            ids: e.ids.clone(),
                            strength: e.strength,
                            pass: pass == (*w == ResultExpect::Ok),
                            expected: "stream accepted".into(),
                            observed: observed.clone(),
                        },
                    );
                }
                if let Some(c) = &e.bytes {
                    self.check_cmp(key, "bytes", e, c, total)?;
                }
            }
            None => self.check(
                key,
                Check::builtin(
                    "resumed",
                    "V2-RESUME-01",
                    pass,
                    "stream accepted".into(),
                    observed,
                ),
            ),
        }
        Ok(())
    }

    fn compare(&mut self, a: &str, b: &str, expect: Option<&Expect>, key: &StepKey) -> Flow {
        let e = expect.ok_or_else(|| Abort::Harness("compare needs an expect".into()))?;
        let want = e.equal.unwrap_or(true);
        let mut ba = self
            .buffers
            .remove(a)
            .ok_or_else(|| Abort::Driver(format!("buffer `{a}` was never filled")))?;
        let diff = if a == b {
            Ok(None)
        } else {
            match self.buffers.get_mut(b) {
                Some(bb) => StreamBuf::first_difference(&mut ba, bb),
                None => {
                    self.buffers.insert(a.to_string(), ba);
                    return Err(Abort::Driver(format!("buffer `{b}` was never filled")));
                }
            }
        };
        let (la, lb) = (
            ba.len(),
            self.buffers.get(b).map_or(ba.len(), StreamBuf::len),
        );
        self.buffers.insert(a.to_string(), ba);
        let diff = diff.map_err(|err| Abort::Harness(format!("cannot compare streams: {err}")))?;
        let observed = match diff {
            None => format!("identical ({la} bytes)"),
            Some(at) => format!("differ at byte {at} (`{a}` {la} bytes, `{b}` {lb} bytes)"),
        };
        self.check(
            key,
            Check {
                kind: "equal",
                ids: e.ids.clone(),
                strength: e.strength,
                pass: diff.is_none() == want,
                expected: if want {
                    format!("`{a}` and `{b}` identical")
                } else {
                    format!("`{a}` and `{b}` differ")
                },
                observed,
            },
        );
        Ok(())
    }

    fn reset(&mut self, role: Role, expect: Option<&Expect>, key: &StepKey) -> Flow {
        self.started(role, "VFIO_DEVICE_RESET", "", key);
        let t0 = Instant::now();
        let had_session = self.role(role)?.session.is_some();
        let r = self.role(role)?.dev.reset();
        let got = r.map(|()| 0);
        let g = self.role(role)?.dev.get_state();
        self.record(
            role,
            "VFIO_DEVICE_RESET",
            String::new(),
            step_return(&got),
            g.ok(),
            0,
            t0,
            key,
        );
        match expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            Some((e, w)) => self.check_result(key, e, w, &got),
            None => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-RESET-01",
                    r.is_ok(),
                    "reset succeeds".into(),
                    ret_text(&got),
                ),
            ),
        }
        let want = match expect.and_then(|e| e.state.as_ref()) {
            Some(s) => self.resolve_state(s)?,
            None => MigState::Running.raw(),
        };
        self.check(
            key,
            Check::builtin(
                "running",
                "V2-RESET-01",
                g == Ok(MigState::from_raw(want).unwrap_or(MigState::Running)),
                format!("{} after reset", state_name(want)),
                format!("{g:?}"),
            ),
        );
        self.end_session(role, EndedBy::Reset)?;
        let ctx = self.role(role)?;
        ctx.state = g.ok();
        ctx.logging = false;
        ctx.stopped_at = None;
        if had_session {
            let probe = StepKey {
                prefix: format!("{}-session", key.prefix),
                loc: key.loc.clone(),
            };
            if let Some((fd, kind, by)) = self.role(role)?.ended.pop() {
                self.probe_ended(role, fd, kind, by, &probe)?;
            }
        }
        Ok(())
    }

    fn close_device(&mut self, role: Role, key: &StepKey) -> Flow {
        self.started(role, "close device fd", "", key);
        let t0 = Instant::now();
        let r = self.role(role)?.dev.close_device();
        self.record(
            role,
            "close device fd",
            String::new(),
            step_return(&r.map(|()| 0)),
            None,
            0,
            t0,
            key,
        );
        // The session cannot outlive the device file (V2-FSM-13).
        self.end_session(role, EndedBy::DeviceClosed)?;
        self.role(role)?.state = None;
        if let Err(e) = r {
            return Err(Abort::Harness(format!(
                "closing the device failed with {}",
                errno_name(e)
            )));
        }
        Ok(())
    }

    fn reopen(&mut self, role: Role, key: &StepKey) -> Flow {
        self.started(role, "open device", "", key);
        let t0 = Instant::now();
        let r = self.role(role)?.dev.reopen();
        let g = self.role(role)?.dev.get_state().ok();
        self.record(
            role,
            "open device",
            String::new(),
            step_return(&r.map(|()| 0)),
            g,
            0,
            t0,
            key,
        );
        if let Err(e) = r {
            return Err(Abort::Harness(format!(
                "reopening the device failed with {}",
                errno_name(e)
            )));
        }
        self.role(role)?.state = g;
        Ok(())
    }
}

fn mutation_text(m: &crate::scenario::Mutation) -> String {
    let mut parts = Vec::new();
    if m.truncate > 0 {
        parts.push(format!("last {} bytes dropped", m.truncate));
    }
    if !m.corrupt.is_empty() {
        parts.push(format!("bytes {:?} flipped", m.corrupt));
    }
    if m.extra > 0 {
        parts.push(format!("{} extra bytes", m.extra));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The payload size of a feature's struct, so a raw call is well formed
/// unless the scenario says otherwise.
fn default_payload(feature: u32) -> usize {
    match feature {
        VFIO_DEVICE_FEATURE_MIGRATION => VfioDeviceFeatureMigration::SIZE,
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => VfioDeviceFeatureMigState::SIZE,
        VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => VfioDeviceFeatureMigDataSize::SIZE,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START => VfioDeviceFeatureDmaLoggingControl::SIZE,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => VfioDeviceFeatureDmaLoggingReport::SIZE,
        _ => 0,
    }
}

fn op_names(flags: u32) -> String {
    let mut s = String::new();
    for (bit, name) in [
        (VFIO_DEVICE_FEATURE_GET, "|GET"),
        (VFIO_DEVICE_FEATURE_SET, "|SET"),
        (VFIO_DEVICE_FEATURE_PROBE, "|PROBE"),
    ] {
        if flags & bit != 0 {
            s.push_str(name);
        }
    }
    let unknown = flags
        & !(VFIO_DEVICE_FEATURE_MASK
            | VFIO_DEVICE_FEATURE_GET
            | VFIO_DEVICE_FEATURE_SET
            | VFIO_DEVICE_FEATURE_PROBE);
    if unknown != 0 {
        s.push_str(&format!("|{unknown:#x}"));
    }
    s
}
