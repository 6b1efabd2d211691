//! PRE_COPY: VFIO_MIG_GET_PRECOPY_INFO and other ioctls on the saving fd.
#![forbid(unsafe_code)]

use super::*;

impl Exec<'_, '_> {
    pub(super) fn precopy_info(
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
        let call = self.start(role, "VFIO_MIG_GET_PRECOPY_INFO", args, key);
        let ctx = self.role(role)?;
        let r = ctx.dev.data_ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut arg);
        let state = ctx.state;
        let v2 = ctx.precopy_info_v2;
        let got = r.map(i64::from);
        self.record(call, Returned::of(&got).in_state(state), key);
        let in_precopy = state.is_some_and(MigState::is_precopy);
        if !self.expected_result(key, expect, &got) {
            if (argsz as usize) < VfioPrecopyInfo::SIZE {
                self.check(
                    key,
                    Check::builtin(
                        "result",
                        "V2-PRECOPY-03",
                        r == Err(Errno::EINVAL),
                        "EINVAL for argsz below 24".into(),
                        ret_text(&got),
                    ),
                );
            } else if in_precopy {
                self.check(
                    key,
                    Check::builtin(
                        "result",
                        "V2-PRECOPY-01",
                        r.is_ok(),
                        "works in PRE_COPY states".into(),
                        ret_text(&got),
                    ),
                );
            } else {
                self.check(
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
                );
            }
        }
        if r.is_err() {
            return Ok(());
        }
        let info = VfioPrecopyInfo::from_bytes(&arg);
        self.vars.insert("initial_bytes".into(), info.initial_bytes);
        self.vars.insert("dirty_bytes".into(), info.dirty_bytes);
        // With the opt-in flags is output; without it an input REINIT bit
        // may come back as the echo drivers give, so only a bit the input
        // did not have is a report.
        let reinit_bit = info.flags & VFIO_PRECOPY_INFO_REINIT != 0;
        let reinit = v2 && reinit_bit;
        if !v2 && reinit_bit && in_flags & VFIO_PRECOPY_INFO_REINIT == 0 {
            self.check(
                key,
                Check::builtin(
                    "reinit-opt-in",
                    "V2-PRECOPY-14",
                    false,
                    "REINIT only after the MIG_PRECOPY_INFOv2 opt-in of this open".into(),
                    format!(
                        "flags = {:#x} (input {in_flags:#x}) without the opt-in",
                        info.flags
                    ),
                ),
            );
        }
        if in_precopy {
            self.precopy_trend(role, &info, reinit, key)?;
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
                )
                .on(&["vfio_precopy_info.flags"]),
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

    /// After a MIG_PRECOPY_INFOv2 call: a device without PRE_COPY refuses
    /// it (V2-PRECOPY-12); a SET that succeeds opts this open in.
    pub(super) fn precopy_info_v2_feature(
        &mut self,
        role: Role,
        flags: u32,
        got: &Result<i64, Errno>,
        key: &StepKey,
    ) -> Flow {
        let ctx = self.role(role)?;
        if got.is_ok()
            && flags & VFIO_DEVICE_FEATURE_SET != 0
            && flags & VFIO_DEVICE_FEATURE_PROBE == 0
        {
            ctx.precopy_info_v2 = true;
        }
        if !ctx.flags.has_pre_copy() {
            self.check(
                key,
                Check::builtin(
                    "pre-copy-only",
                    "V2-PRECOPY-12",
                    got.is_err(),
                    "fails on a device without PRE_COPY (EINVAL, or ENOTTY before Linux 7.1)"
                        .into(),
                    ret_text(got),
                ),
            );
        }
        Ok(())
    }

    /// `initial_bytes` starts non-zero and shrinks as data is read, and
    /// rises only on a REINIT report (`reinit`: opted in and flagged),
    /// which has `dirty_bytes` 0; `dirty_bytes` starts at 0
    /// (V2-PRECOPY-04/05/15/16).
    pub(super) fn precopy_trend(
        &mut self,
        role: Role,
        info: &VfioPrecopyInfo,
        reinit: bool,
        key: &StepKey,
    ) -> Flow {
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
                    )
                    .on(&["vfio_precopy_info.initial_bytes"]),
                );
                self.check(
                    key,
                    Check::builtin(
                        "dirty-bytes-start",
                        "V2-PRECOPY-05",
                        info.dirty_bytes == 0,
                        "dirty_bytes = 0 when PRE_COPY starts".into(),
                        format!("dirty_bytes = {}", info.dirty_bytes),
                    )
                    .on(&["vfio_precopy_info.dirty_bytes"]),
                );
            }
            Some((initial, _, read_then)) if reinit => {
                let read = read_so_far - read_then;
                self.note(format!(
                    "REINIT: new initial data, initial_bytes {} (was {initial}, {read} bytes read since)",
                    info.initial_bytes
                ));
                self.check(
                    key,
                    Check::builtin(
                        "dirty-bytes-restart",
                        "V2-PRECOPY-16",
                        info.dirty_bytes == 0,
                        "dirty_bytes = 0 on a REINIT report".into(),
                        format!("dirty_bytes = {}", info.dirty_bytes),
                    ),
                );
            }
            Some((initial, _, _)) if info.initial_bytes > initial => {
                self.check(
                    key,
                    Check::builtin(
                        "initial-bytes-rise",
                        "V2-PRECOPY-15",
                        false,
                        format!("initial_bytes at most {initial} without a REINIT report"),
                        format!(
                            "initial_bytes = {} with flags {:#x}",
                            info.initial_bytes, info.flags
                        ),
                    ),
                );
            }
            Some((initial, _, read_then)) => {
                let read = read_so_far - read_then;
                let pass = read == 0 || initial == 0 || info.initial_bytes < initial;
                self.check(
                    key,
                    Check::builtin(
                        "initial-bytes-falls",
                        "V2-PRECOPY-04",
                        pass,
                        format!("initial_bytes below {initial} after reading {read} bytes"),
                        format!("initial_bytes = {}", info.initial_bytes),
                    )
                    .on(&["vfio_precopy_info.initial_bytes"]),
                );
            }
        }
        Ok(())
    }

    pub(super) fn data_ioctl(
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
        let call = self.start(role, "ioctl", args, key);
        let ctx = self.role(role)?;
        let r = ctx.dev.data_ioctl(fd, request, &mut arg);
        let state = ctx.state;
        let got = r.map(i64::from);
        self.record(call, Returned::of(&got).in_state(state), key);
        // The step's expectation is judged first; without one, another
        // ioctl number must fail with ENOTTY.
        if !self.expected_result(key, expect, &got) && request != VFIO_MIG_GET_PRECOPY_INFO {
            self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-PRECOPY-03",
                    r == Err(Errno::ENOTTY),
                    "ENOTTY for another ioctl number".into(),
                    ret_text(&got),
                ),
            );
        }
        Ok(())
    }
}
