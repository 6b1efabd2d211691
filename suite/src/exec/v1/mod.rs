//! Protocol v1: the migration region with `device_state`, `pending_bytes`,
//! `data_offset` and `data_size`, accessed with pread/pwrite at natural
//! width. Transfers are in `transfer.rs`.
#![forbid(unsafe_code)]

mod transfer;

use results::{Direction, Event, V1Iteration};

use super::stream::StreamBuf;
use super::*;
use crate::device::DeviceExt;
use crate::model::v1::{expect_write, V1State, V1Write};
use crate::scenario::{Expect, FieldAccess, FieldValue, Mutation, ResultExpect, V1Chunking};
use crate::uapi::v1 as f;

/// Where the migration region sits in the device fd.
#[derive(Debug, Clone, Copy)]
pub(crate) struct V1Region {
    pub offset: u64,
    pub size: u64,
}

impl Exec<'_, '_> {
    pub(super) fn prepare_v1(&mut self) -> Flow {
        for role in Role::ALL {
            let Some(ctx) = self.roles[role as usize].as_mut() else {
                continue;
            };
            let region = ctx
                .dev
                .find_migration_region()
                .map_err(|e| {
                    Abort::Harness(format!(
                        "{role}: region lookup failed with {}",
                        errno_name(e)
                    ))
                })?
                .ok_or_else(|| {
                    Abort::Harness(format!(
                        "{role}: no v1 migration region (type 3 / subtype 1)"
                    ))
                })?;
            ctx.region = Some(V1Region {
                offset: region.info.offset,
                size: region.info.size,
            });
        }
        Ok(())
    }

    pub(super) fn v1_op(&mut self, step: &Step, key: &StepKey) -> Flow {
        let role = step.role;
        let expect = step.expect.as_ref();
        match &step.op {
            Op::ReadField { access, into } => {
                self.read_field_op(role, access, into.as_deref(), expect, key)
            }
            Op::WriteField { access, value } => {
                self.write_field_op(role, access, value, expect, key)
            }
            Op::V1Save {
                into,
                max_iterations,
            } => self
                .v1_save(role, into, *max_iterations, expect, key)
                .map(|_| ()),
            Op::V1Resume {
                from,
                chunk,
                mutation,
                then_running,
            } => self
                .v1_resume(role, from, chunk, mutation, *then_running, expect, key)
                .map(|_| ()),
            Op::V1Freeze { from, touches } => self.v1_freeze(role, from, *touches, key),
            Op::Reset => self.v1_reset(role, key),
            Op::ErrorState => self.v1_error_state(role, key),
            other => Err(Abort::Harness(format!(
                "`{}` is not a v1 operation",
                other.name()
            ))),
        }
    }

    pub(super) fn region(&mut self, role: Role) -> Result<V1Region, Abort> {
        self.role(role)?
            .region
            .ok_or_else(|| Abort::Harness(format!("the {role} has no v1 migration region")))
    }

    /// One pread of `width` bytes at `off` in the region.
    pub(super) fn field_read(
        &mut self,
        role: Role,
        off: u64,
        width: usize,
        key: &StepKey,
        name: &str,
    ) -> Result<Result<u64, Errno>, Abort> {
        let region = self.region(role)?;
        let args = format!("{name} ({width} bytes at {off})");
        let call = self.start(role, "pread", args, key);
        let mut b = [0u8; 8];
        let r = self
            .role(role)?
            .dev
            .region_read(region.offset + off, &mut b[..width]);
        let value = r.and_then(|n| {
            if n == width {
                Ok(u64::from_le_bytes(b))
            } else {
                Err(Errno::EIO)
            }
        });
        self.record(call, Returned::of(&value.map(|v| v as i64)), key);
        Ok(value)
    }

    pub(super) fn field_write(
        &mut self,
        role: Role,
        off: u64,
        width: usize,
        value: u64,
        key: &StepKey,
        name: &str,
    ) -> Result<Result<(), Errno>, Abort> {
        let region = self.region(role)?;
        let args = format!("{name} = {value:#x} ({width} bytes at {off})");
        let call = self.start(role, "pwrite", args, key);
        let bytes = value.to_le_bytes();
        let r = self
            .role(role)?
            .dev
            .region_write(region.offset + off, &bytes[..width]);
        let r = r.and_then(|n| if n == width { Ok(()) } else { Err(Errno::EIO) });
        self.record(call, Returned::of(&r.map(|()| 0)), key);
        Ok(r)
    }

    /// Reads a header field at its natural width.
    pub(super) fn read_named(
        &mut self,
        role: Role,
        name: &str,
        key: &StepKey,
    ) -> Result<Result<u64, Errno>, Abort> {
        let (off, width) = f::field(name).expect("known field");
        self.field_read(role, off, width, key, name)
    }

    pub(super) fn device_state(
        &mut self,
        role: Role,
        key: &StepKey,
    ) -> Result<Result<V1State, Errno>, Abort> {
        Ok(self
            .read_named(role, "device_state", key)?
            .map(|v| V1State(v as u32)))
    }

    pub(super) fn read_field_op(
        &mut self,
        role: Role,
        a: &FieldAccess,
        into: Option<&str>,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let (off, natural) = f::field(&a.field).expect("validated");
        let odd = a.skew != 0 || a.width as usize != natural;
        let r = self.field_read(
            role,
            off + u64::from(a.skew),
            a.width as usize,
            key,
            &a.field,
        )?;
        let got = r.map(|v| v as i64);
        if !self.expected_result(key, expect, &got) {
            if odd {
                self.check(
                    key,
                    Check::builtin(
                        "refused",
                        "V1-REGION-02",
                        r.is_err(),
                        format!(
                            "a {}-byte access at offset {} of `{}` fails",
                            a.width,
                            off + u64::from(a.skew),
                            a.field
                        ),
                        ret_text(&got),
                    ),
                );
            } else {
                self.check(
                    key,
                    Check::builtin(
                        "result",
                        "V1-REGION-02",
                        r.is_ok(),
                        format!("reading `{}` at its natural width works", a.field),
                        ret_text(&got),
                    ),
                );
            }
        }
        let Ok(v) = r else { return Ok(()) };
        if a.field == "reserved" && !odd {
            self.check(
                key,
                Check::builtin(
                    "reserved-zero",
                    "V1-REGION-03",
                    v == 0,
                    "reserved reads 0".into(),
                    format!("{v:#x}"),
                )
                .on(&["vfio_device_migration_info.reserved"]),
            );
        }
        if let Some(name) = into {
            self.vars.insert(name.to_string(), v);
        }
        if let Some((e, c)) = expect.and_then(|e| e.value.as_ref().map(|c| (e, c))) {
            self.check_cmp(key, "value", e, c, v)?;
        }
        Ok(())
    }

    pub(super) fn write_field_op(
        &mut self,
        role: Role,
        a: &FieldAccess,
        value: &FieldValue,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let (off, natural) = f::field(&a.field).expect("validated");
        let odd = a.skew != 0 || a.width as usize != natural;
        let before = if a.field == "device_state" {
            self.device_state(role, key)?.ok()
        } else {
            None
        };
        let raw = match value {
            FieldValue::Number(n) => *n,
            FieldValue::Var(v) => self.operand(&crate::scenario::Operand::Var(v.clone()))?,
            // Read-modify-write: the reserved bits stay as read (V1-STATE-04).
            FieldValue::StateBits(bits) => {
                u64::from(before.map_or(*bits, |b| b.with_bits_of(V1State(*bits)).0))
            }
        };
        let r = self.field_write(
            role,
            off + u64::from(a.skew),
            a.width as usize,
            raw,
            key,
            &a.field,
        )?;
        let got = r.map(|()| 0);
        if let Some((e, w)) = expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            self.check_result(key, e, w, &got);
        } else if odd {
            self.check(
                key,
                Check::builtin(
                    "refused",
                    "V1-REGION-02",
                    r.is_err(),
                    format!(
                        "a {}-byte write at offset {} of `{}` fails",
                        a.width,
                        off + u64::from(a.skew),
                        a.field
                    ),
                    ret_text(&got),
                ),
            );
        } else {
            match a.field.as_str() {
                "pending_bytes" | "data_offset" => self.check(
                    key,
                    Check::builtin(
                        "read-only",
                        "V1-REGION-03",
                        r.is_err(),
                        format!("writing the read-only `{}` fails", a.field),
                        ret_text(&got),
                    ),
                ),
                "reserved" => {
                    let now = self.read_named(role, "reserved", key)?;
                    self.check(
                        key,
                        Check::builtin(
                            "reserved-ignored",
                            "V1-REGION-03",
                            now == Ok(0),
                            "reserved still reads 0 after a write".into(),
                            format!("{now:?}"),
                        ),
                    );
                }
                "device_state" => {
                    self.state_write_checks(role, before, V1State(raw as u32), r, key)?
                }
                _ => {}
            }
        }
        if let Some((e, c)) = expect.and_then(|e| e.value.as_ref().map(|c| (e, c))) {
            let now = self.field_read(role, off, natural, key, &a.field)?;
            match now {
                Ok(v) => self.check_cmp(key, "value", e, c, v)?,
                Err(err) => self.check(
                    key,
                    Check::expected(
                        e,
                        "value",
                        false,
                        format!("{} {c}", a.field),
                        format!("reading it failed with {}", errno_name(err)),
                    ),
                ),
            }
        }
        Ok(())
    }

    /// What a `device_state` write must do, per the v1 encoding.
    pub(super) fn state_write_checks(
        &mut self,
        role: Role,
        before: Option<V1State>,
        requested: V1State,
        r: Result<(), Errno>,
        key: &StepKey,
    ) -> Flow {
        let Some(before) = before else { return Ok(()) };
        let after = self.device_state(role, key)?;
        let got = r.map(|()| 0);
        let after_text = after.map_or_else(
            |e| format!("reading device_state failed with {}", errno_name(e)),
            |s| s.to_string(),
        );
        match expect_write(before, requested) {
            V1Write::RejectInvalid => {
                self.check(
                    key,
                    Check::builtin(
                        "result",
                        "V1-STATE-02",
                        r.is_err(),
                        format!("writing {requested} fails"),
                        ret_text(&got),
                    ),
                );
                self.check(
                    key,
                    Check::builtin(
                        "kept",
                        "V1-STATE-02",
                        after.is_ok_and(|a| a.bits() == before.bits()),
                        format!("device_state stays {before}"),
                        after_text,
                    )
                    .on(&["vfio_device_migration_info.device_state"]),
                );
            }
            V1Write::RejectFromError => {
                self.check(
                    key,
                    Check::builtin(
                        "from-error",
                        "V1-STATE-05",
                        after.is_ok_and(|a| a.is_error()),
                        "only a reset leaves the error state".into(),
                        format!("write {}; now {after_text}", ret_text(&got)),
                    ),
                );
            }
            V1Write::Accept if r.is_ok() => {
                self.check(
                    key,
                    Check::builtin(
                        "applied",
                        "V1-STATE-03",
                        after.is_ok_and(|a| a.bits() == requested.bits()),
                        format!("device_state reads {requested}"),
                        after_text.clone(),
                    )
                    .on(&["vfio_device_migration_info.device_state"]),
                );
                if requested.reserved() != 0 {
                    self.check(
                        key,
                        Check::builtin(
                            "reserved-kept",
                            "V1-STATE-04",
                            after.is_ok_and(|a| a.reserved() == requested.reserved()),
                            format!("reserved bits {:#x} preserved", requested.reserved()),
                            after_text.clone(),
                        ),
                    );
                }
            }
            V1Write::Accept => {
                // A refused transition leaves the previous state or the error state.
                self.check(
                    key,
                    Check::builtin(
                        "failed-transition",
                        "V1-STATE-03",
                        after.is_ok_and(|a| a.bits() == before.bits() || a.is_error()),
                        format!("after a failed write: {before} or error"),
                        format!("write {}; now {after_text}", ret_text(&got)),
                    ),
                );
            }
        }
        Ok(())
    }

    /// Writes `device_state` (keeping reserved bits); a failure stops the case.
    pub(super) fn v1_write_state(&mut self, role: Role, state: V1State, key: &StepKey) -> Flow {
        let before = self.device_state(role, key)?.ok();
        let raw = before.map_or(state, |b| b.with_bits_of(state)).0;
        match self.field_write(
            role,
            f::DEVICE_STATE,
            4,
            u64::from(raw),
            key,
            "device_state",
        )? {
            Ok(()) => Ok(()),
            Err(e) => {
                self.check(
                    key,
                    Check::builtin(
                        "transition",
                        "V1-STATE-03",
                        false,
                        format!("writing {state} works"),
                        format!("failed with {}", errno_name(e)),
                    ),
                );
                Err(Abort::Driver(format!(
                    "writing device_state {state} failed"
                )))
            }
        }
    }

    pub(super) fn v1_reset(&mut self, role: Role, key: &StepKey) -> Flow {
        let call = self.start(role, "VFIO_DEVICE_RESET", String::new(), key);
        let was = self.device_state(role, key)?.ok();
        let r = self.role(role)?.dev.reset();
        self.record(call, Returned::of(&r.map(|()| 0)), key);
        let now = self.device_state(role, key)?;
        let id = if was.is_some_and(|s| s.is_error()) {
            "V1-STATE-05"
        } else {
            "V1-STATE-01"
        };
        self.check(
            key,
            Check::builtin(
                "running",
                id,
                r.is_ok() && now.is_ok_and(|s| s.bits() == V1State::RUNNING.bits()),
                "device_state reads running after reset".into(),
                format!("reset {}; device_state {now:?}", ret_text(&r.map(|()| 0))),
            ),
        );
        Ok(())
    }

    /// If the device is in the error state, writes must not leave it and
    /// reset must (V1-STATE-05); otherwise the check does not apply.
    pub(super) fn v1_error_state(&mut self, role: Role, key: &StepKey) -> Flow {
        let now = self.device_state(role, key)?;
        if !now.is_ok_and(|s| s.is_error()) {
            self.note(format!(
                "V1-STATE-05 not applicable: device_state is {now:?}, not error"
            ));
            return Ok(());
        }
        let r = self.field_write(
            role,
            f::DEVICE_STATE,
            4,
            u64::from(V1State::RUNNING.0),
            key,
            "device_state",
        )?;
        let after = self.device_state(role, key)?;
        self.check(
            key,
            Check::builtin(
                "stays",
                "V1-STATE-05",
                after.is_ok_and(|s| s.is_error()),
                "writing running does not leave the error state".into(),
                format!("write {}; now {after:?}", ret_text(&r.map(|()| 0))),
            ),
        );
        self.v1_reset(role, key)
    }
}
