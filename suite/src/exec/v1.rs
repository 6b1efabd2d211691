//! Protocol v1: the migration region with `device_state`, `pending_bytes`,
//! `data_offset` and `data_size`, accessed with pread/pwrite at natural
//! width; plus region probing that applies to any device.
#![forbid(unsafe_code)]

use std::time::Instant;

use results::{Direction, Event, V1Iteration};

use super::stream::StreamBuf;
use super::*;
use crate::device::DeviceExt;
use crate::model::v1::{expect_write, V1State, V1Write};
use crate::scenario::{Expect, FieldAccess, FieldValue, Mutation, ResultExpect, V1Chunking};
use crate::uapi::{self, v1 as f};

/// Where the migration region sits in the device fd.
#[derive(Debug, Clone, Copy)]
pub(crate) struct V1Region {
    pub offset: u64,
    pub size: u64,
}

pub fn builtin_ids(op: &Op) -> &'static [&'static str] {
    match op {
        Op::ReadField { .. } => &["V1-REGION-02", "V1-REGION-03"],
        Op::WriteField { .. } => &[
            "V1-REGION-02",
            "V1-REGION-03",
            "V1-STATE-02",
            "V1-STATE-03",
            "V1-STATE-04",
            "V1-STATE-05",
        ],
        Op::V1Save { .. } => &[
            "V1-SAVE-01",
            "V1-SAVE-02",
            "V1-SAVE-03",
            "V1-SAVE-04",
            "V1-SAVE-05",
            "V1-SAVE-06",
            "V1-SAVE-07",
        ],
        Op::V1Resume { .. } => &["V1-RESUME-01", "V1-RESUME-02", "V1-RESUME-03"],
        Op::V1Freeze { .. } => &["V1-STATE-06"],
        _ => &[],
    }
}

/// How long a `v1_save` in pre-copy may go on when the device keeps
/// producing data (pre-copy never has to drain).
const PRECOPY_ITERATION_CAP: u64 = 10_000;

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

    fn region(&mut self, role: Role) -> Result<V1Region, Abort> {
        self.role(role)?
            .region
            .ok_or_else(|| Abort::Harness(format!("the {role} has no v1 migration region")))
    }

    /// One pread of `width` bytes at `off` in the region.
    fn field_read(
        &mut self,
        role: Role,
        off: u64,
        width: usize,
        key: &StepKey,
        name: &str,
    ) -> Result<Result<u64, Errno>, Abort> {
        let region = self.region(role)?;
        let args = format!("{name} ({width} bytes at {off})");
        self.started(role, "pread", &args, key);
        let t0 = Instant::now();
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
        self.record(
            role,
            "pread",
            args,
            step_return(&value.map(|v| v as i64)),
            None,
            0,
            t0,
            key,
        );
        Ok(value)
    }

    fn field_write(
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
        self.started(role, "pwrite", &args, key);
        let t0 = Instant::now();
        let bytes = value.to_le_bytes();
        let r = self
            .role(role)?
            .dev
            .region_write(region.offset + off, &bytes[..width]);
        let r = r.and_then(|n| if n == width { Ok(()) } else { Err(Errno::EIO) });
        self.record(
            role,
            "pwrite",
            args,
            step_return(&r.map(|()| 0)),
            None,
            0,
            t0,
            key,
        );
        Ok(r)
    }

    /// Reads a header field at its natural width.
    fn read_named(
        &mut self,
        role: Role,
        name: &str,
        key: &StepKey,
    ) -> Result<Result<u64, Errno>, Abort> {
        let (off, width) = f::field(name).expect("known field");
        self.field_read(role, off, width, key, name)
    }

    fn device_state(&mut self, role: Role, key: &StepKey) -> Result<Result<V1State, Errno>, Abort> {
        Ok(self
            .read_named(role, "device_state", key)?
            .map(|v| V1State(v as u32)))
    }

    fn read_field_op(
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
        match expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            Some((e, w)) => self.check_result(key, e, w, &got),
            None if odd => self.check(
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
            ),
            None => self.check(
                key,
                Check::builtin(
                    "result",
                    "V1-REGION-02",
                    r.is_ok(),
                    format!("reading `{}` at its natural width works", a.field),
                    ret_text(&got),
                ),
            ),
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
                ),
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

    fn write_field_op(
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
                    Check {
                        kind: "value",
                        ids: e.ids.clone(),
                        strength: e.strength,
                        pass: false,
                        expected: format!("{} {c}", a.field),
                        observed: format!("reading it failed with {}", errno_name(err)),
                    },
                ),
            }
        }
        Ok(())
    }

    /// What a `device_state` write must do, per the v1 encoding.
    fn state_write_checks(
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
                    ),
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
                    ),
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

    /// The v1 save sequence (a-f): iterate until `pending_bytes` reads 0.
    /// Appends the data to `into`; returns the bytes saved.
    fn v1_save(
        &mut self,
        role: Role,
        into: &str,
        max_iterations: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<u64, Abort> {
        let region = self.region(role)?;
        let state = self.device_state(role, key)?.ok();
        let stop_and_copy = state.is_some_and(|s| s.bits() == V1State::STOP_AND_COPY.bits());
        let bound = if stop_and_copy {
            max_iterations
        } else {
            max_iterations.min(PRECOPY_ITERATION_CAP)
        };
        self.buffers
            .entry(into.to_string())
            .or_insert_with(|| StreamBuf::new(self.opts.spill_threshold));
        self.started(
            role,
            "v1 save",
            &format!("into `{into}`, at most {bound} iterations"),
            key,
        );
        let t0 = Instant::now();
        let mut total = 0u64;
        let mut iterations = 0u64;
        let mut pending_stable = true;
        let mut staging_stable = true;
        let mut within_region = true;
        let mut exact_decrease = true;
        let mut last_pending: Option<(u64, u64)> = None;
        let mut failure: Option<String> = None;
        let drained = loop {
            let pending = match self.read_named(role, "pending_bytes", key)? {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(format!(
                        "reading pending_bytes failed with {}",
                        errno_name(e)
                    ));
                    break false;
                }
            };
            let again = self.read_named(role, "pending_bytes", key)?;
            if again != Ok(pending) {
                pending_stable = false;
            }
            if let Some((p, size)) = last_pending {
                if pending != 0 && p.saturating_sub(size) != pending {
                    exact_decrease = false;
                }
            }
            if pending == 0 {
                break true;
            }
            if iterations >= bound {
                break false;
            }
            // A stream that never ends is a V1-SAVE-04 failure at the case
            // deadline, not a case that overruns it.
            if self.opts.deadline.is_some_and(|d| Instant::now() >= d) {
                failure = Some(format!(
                    "pending_bytes still {pending} after {iterations} iterations when the case deadline came"
                ));
                break false;
            }
            let data_offset = self.read_named(role, "data_offset", key)?;
            let data_size = self.read_named(role, "data_size", key)?;
            let (Ok(data_offset), Ok(data_size)) = (data_offset, data_size) else {
                failure = Some(format!(
                    "reading data_offset/data_size failed: {data_offset:?} {data_size:?}"
                ));
                break false;
            };
            if self.read_named(role, "data_offset", key)? != Ok(data_offset)
                || self.read_named(role, "data_size", key)? != Ok(data_size)
            {
                staging_stable = false;
            }
            (self.sink)(Event::V1Iteration(V1Iteration {
                pending_bytes: pending,
                data_offset,
                data_size,
            }));
            let fits = data_offset >= f::HEADER_SIZE
                && data_offset
                    .checked_add(data_size)
                    .is_some_and(|end| end <= region.size);
            if !fits || data_size == 0 {
                within_region = false;
                failure = Some(format!("chunk at data_offset {data_offset} of {data_size} bytes in a region of {} bytes", region.size));
                break false;
            }
            if let Err(e) = self.region_to_buffer(role, region, data_offset, data_size, into) {
                failure = Some(format!(
                    "reading the data section failed with {}",
                    errno_name(e)
                ));
                break false;
            }
            total += data_size;
            iterations += 1;
            last_pending = Some((pending, data_size));
        };
        self.record(
            role,
            "v1 save",
            format!("{iterations} iterations into `{into}`"),
            StepReturn::Ok(total as i64),
            None,
            total,
            t0,
            key,
        );
        self.transfer(role, Direction::Save, total, nanos(t0.elapsed()), 0, None);
        self.check(
            key,
            Check::builtin(
                "pending-stable",
                "V1-SAVE-01",
                pending_stable,
                "repeated pending_bytes reads give the same value".into(),
                if pending_stable {
                    "stable".into()
                } else {
                    "changed between two reads".into()
                },
            ),
        );
        if iterations > 0 {
            self.check(
                key,
                Check::builtin(
                    "staging-stable",
                    "V1-SAVE-02",
                    staging_stable,
                    "data_offset and data_size repeat until pending_bytes is read again".into(),
                    if staging_stable {
                        "stable".into()
                    } else {
                        "changed on a second read".into()
                    },
                ),
            );
        }
        self.check(
            key,
            Check::builtin(
                "within-region",
                "V1-SAVE-03",
                within_region,
                "each chunk is non-empty and lies inside the data section".into(),
                failure
                    .clone()
                    .unwrap_or_else(|| "all chunks inside".into()),
            ),
        );
        if stop_and_copy {
            self.check(
                key,
                Check::builtin(
                    "drains",
                    "V1-SAVE-04",
                    drained,
                    format!("pending_bytes reaches 0 within {bound} iterations"),
                    failure
                        .clone()
                        .unwrap_or_else(|| format!("{iterations} iterations, {total} bytes")),
                ),
            );
        } else {
            self.check(
                key,
                Check::builtin(
                    "pre-copy",
                    "V1-SAVE-06",
                    failure.is_none(),
                    "pre-copy iterations work, even when they transfer nothing".into(),
                    failure
                        .clone()
                        .unwrap_or_else(|| format!("{iterations} iterations, {total} bytes")),
                ),
            );
        }
        if iterations > 1 && !exact_decrease {
            self.note("pending_bytes did not fall by exactly data_size each iteration (allowed: V1-SAVE-05)".into());
        }
        if let Some((e, c)) = expect.and_then(|e| e.bytes.as_ref().map(|c| (e, c))) {
            self.check_cmp(key, "bytes", e, c, total)?;
        }
        if failure.is_some() && stop_and_copy {
            return Err(Abort::Driver("the v1 save could not complete".into()));
        }
        Ok(total)
    }

    /// Copies `size` bytes of the data section into a buffer, in reads of
    /// the executor's buffer size.
    fn region_to_buffer(
        &mut self,
        role: Role,
        region: V1Region,
        data_offset: u64,
        size: u64,
        into: &str,
    ) -> Result<(), Errno> {
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(self.buf.len() as u64) as usize;
            let ctx = role_of(&mut self.roles, role).map_err(|_| Errno::ENODEV)?;
            let got = ctx
                .dev
                .region_read(region.offset + data_offset + done, &mut self.buf[..n])?;
            if got == 0 {
                return Err(Errno::EIO);
            }
            let temp = &self.opts.temp_dir;
            self.buffers
                .get_mut(into)
                .expect("created by caller")
                .append(&self.buf[..got], temp)
                .map_err(|_| Errno::EIO)?;
            done += got as u64;
        }
        // The stream's chunks are the data_size units, for replay.
        Ok(())
    }

    /// The v1 resume sequence: _RESUMING, then per chunk read
    /// `data_offset`, write the data there and write `data_size`; then
    /// leave _RESUMING. Returns whether the device accepted the stream.
    #[allow(clippy::too_many_arguments)]
    fn v1_resume(
        &mut self,
        role: Role,
        from: &str,
        chunk: &V1Chunking,
        mutation: &Mutation,
        then_running: bool,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<bool, Abort> {
        let region = self.region(role)?;
        let mut stream = self
            .buffers
            .remove(from)
            .ok_or_else(|| Abort::Driver(format!("buffer `{from}` was never filled")))?;
        let sizes = chunk_sizes(&stream, chunk, mutation);
        let result = self.v1_resume_stream(
            role,
            region,
            &mut stream,
            &sizes,
            mutation,
            then_running,
            key,
        );
        self.buffers.insert(from.to_string(), stream);
        let (accepted, observed) = result?;
        match expect.filter(|e| {
            matches!(
                e.result,
                Some(ResultExpect::Rejected | ResultExpect::Errno(_))
            )
        }) {
            Some(e) => self.check(
                key,
                Check {
                    kind: "rejected",
                    ids: e.ids.clone(),
                    strength: e.strength,
                    pass: !accepted,
                    expected: "a data_size write or leaving _RESUMING fails".into(),
                    observed,
                },
            ),
            None => {
                let (ids, strength) = match expect {
                    Some(e) => (e.ids.clone(), e.strength),
                    None => (
                        vec!["V1-RESUME-02".to_string()],
                        strength_of("V1-RESUME-02"),
                    ),
                };
                self.check(
                    key,
                    Check {
                        kind: "resumed",
                        ids,
                        strength,
                        pass: accepted,
                        expected: "stream accepted and _RESUMING left".into(),
                        observed,
                    },
                );
            }
        }
        Ok(accepted)
    }

    #[allow(clippy::too_many_arguments)]
    fn v1_resume_stream(
        &mut self,
        role: Role,
        region: V1Region,
        stream: &mut StreamBuf,
        sizes: &[u64],
        mutation: &Mutation,
        then_running: bool,
        key: &StepKey,
    ) -> Result<(bool, String), Abort> {
        let write_state = |exec: &mut Self, bits: V1State| -> Result<Result<(), Errno>, Abort> {
            let before = exec.device_state(role, key)?.ok();
            let raw = before.map_or(bits, |b| b.with_bits_of(bits)).0;
            exec.field_write(
                role,
                f::DEVICE_STATE,
                4,
                u64::from(raw),
                key,
                "device_state",
            )
        };
        if let Err(e) = write_state(self, V1State::RESUMING)? {
            return Ok((
                false,
                format!("entering _RESUMING failed with {}", errno_name(e)),
            ));
        }
        let mut reader = stream
            .reader(mutation)
            .map_err(|e| Abort::Harness(format!("cannot read the stream: {e}")))?;
        let t0 = Instant::now();
        let mut written = 0u64;
        for &size in sizes {
            let data_offset = match self.read_named(role, "data_offset", key)? {
                Ok(o) => o,
                Err(e) => {
                    return Ok((
                        false,
                        format!(
                            "reading data_offset failed with {} after {written} bytes",
                            errno_name(e)
                        ),
                    ))
                }
            };
            if data_offset < f::HEADER_SIZE
                || data_offset
                    .checked_add(size)
                    .is_none_or(|end| end > region.size)
            {
                self.check(
                    key,
                    Check::builtin(
                        "fits",
                        "V1-RESUME-01",
                        false,
                        format!("room for a {size}-byte chunk at data_offset"),
                        format!(
                            "data_offset {data_offset} in a region of {} bytes",
                            region.size
                        ),
                    ),
                );
                return Ok((
                    false,
                    format!("no room for a {size}-byte chunk at data_offset {data_offset}"),
                ));
            }
            let mut done = 0u64;
            while done < size {
                let n = (size - done).min(self.buf.len() as u64) as usize;
                let got = stream::read_full(&mut reader, &mut self.buf[..n])
                    .map_err(|e| Abort::Harness(format!("cannot read the stream: {e}")))?;
                if got == 0 {
                    break;
                }
                let ctx = role_of(&mut self.roles, role)?;
                if let Err(e) = ctx
                    .dev
                    .region_write(region.offset + data_offset + done, &self.buf[..got])
                {
                    return Ok((
                        false,
                        format!(
                            "writing the data section failed with {} after {written} bytes",
                            errno_name(e)
                        ),
                    ));
                }
                done += got as u64;
            }
            if let Err(e) = self.field_write(role, f::DATA_SIZE, 8, done, key, "data_size")? {
                return Ok((
                    false,
                    format!(
                        "writing data_size = {done} failed with {} after {written} bytes",
                        errno_name(e)
                    ),
                ));
            }
            written += done;
        }
        self.transfer(
            role,
            Direction::Resume,
            written,
            nanos(t0.elapsed()),
            0,
            None,
        );
        let leave = if then_running {
            V1State::RUNNING
        } else {
            V1State::STOP
        };
        match write_state(self, leave)? {
            Ok(()) => Ok((
                true,
                format!("{written} bytes in {} chunks; left _RESUMING", sizes.len()),
            )),
            Err(e) => Ok((
                false,
                format!(
                    "{written} bytes written; leaving _RESUMING failed with {}",
                    errno_name(e)
                ),
            )),
        }
    }

    /// Which freeze point the device shows, and that a stopped device
    /// stays frozen (V1-STATE-06).
    fn v1_freeze(&mut self, role: Role, from: &str, touches: u32, key: &StepKey) -> Flow {
        let mut saves = Vec::new();
        for (trial, k) in [(0u32, 0u32), (1, touches)] {
            let tk = StepKey {
                prefix: format!("{}-trial{trial}", key.prefix),
                loc: key.loc.clone(),
            };
            self.v1_reset(role, &tk)?;
            if !self.v1_resume(
                role,
                from,
                &V1Chunking::Source,
                &Mutation::default(),
                true,
                None,
                &tk,
            )? {
                return Err(Abort::Driver(
                    "the freeze probe could not resume the saved state".into(),
                ));
            }
            self.v1_write_state(role, V1State::STOP_AND_COPY, &tk)?;
            // Accesses that a device still running would see as time passing.
            for _ in 0..k {
                let _ = self.read_named(role, "reserved", &tk)?;
            }
            let first = format!("freeze-{trial}-a");
            let second = format!("freeze-{trial}-b");
            self.buffers.remove(&first);
            self.buffers.remove(&second);
            self.v1_save(role, &first, 100_000, None, &tk)?;
            self.v1_write_state(role, V1State::STOP, &tk)?;
            self.v1_write_state(role, V1State::STOP_AND_COPY, &tk)?;
            self.v1_save(role, &second, 100_000, None, &tk)?;
            let diff = self.first_difference(&first, &second)?;
            self.check(
                &tk,
                Check::builtin(
                    "frozen",
                    "V1-STATE-06",
                    diff.is_none(),
                    "two stop-and-copy saves after the first pending_bytes read are identical"
                        .into(),
                    diff.map_or("identical".into(), |at| format!("differ at byte {at}")),
                ),
            );
            saves.push(first);
            self.v1_write_state(role, V1State::STOP, &tk)?;
        }
        let point = match self.first_difference(&saves[0], &saves[1])? {
            None => "when _RUNNING is cleared".to_string(),
            Some(at) => format!("at the first pending_bytes read after _RUNNING is cleared ({touches} region accesses in between changed the state from byte {at})"),
        };
        self.note(format!("v1 freeze point: the device state freezes {point}"));
        Ok(())
    }

    fn first_difference(&mut self, a: &str, b: &str) -> Result<Option<u64>, Abort> {
        let mut ba = self
            .buffers
            .remove(a)
            .ok_or_else(|| Abort::Harness(format!("buffer `{a}` missing")))?;
        let r = match self.buffers.get_mut(b) {
            Some(bb) => StreamBuf::first_difference(&mut ba, bb),
            None => Ok(Some(0)),
        };
        self.buffers.insert(a.to_string(), ba);
        r.map_err(|e| Abort::Harness(format!("cannot compare streams: {e}")))
    }

    /// Writes `device_state` (keeping reserved bits); a failure stops the case.
    fn v1_write_state(&mut self, role: Role, state: V1State, key: &StepKey) -> Flow {
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

    fn v1_reset(&mut self, role: Role, key: &StepKey) -> Flow {
        self.started(role, "VFIO_DEVICE_RESET", "", key);
        let t0 = Instant::now();
        let was = self.device_state(role, key)?.ok();
        let r = self.role(role)?.dev.reset();
        self.record(
            role,
            "VFIO_DEVICE_RESET",
            String::new(),
            step_return(&r.map(|()| 0)),
            None,
            0,
            t0,
            key,
        );
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
    fn v1_error_state(&mut self, role: Role, key: &StepKey) -> Flow {
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

    /// Reads the PCI vendor and device ID from config space through the
    /// region path and compares them with sysfs where sysfs has them.
    pub(super) fn config_ids(&mut self, role: Role, key: &StepKey) -> Flow {
        let t0 = Instant::now();
        let r = self.role(role)?.dev.pci_config_ids();
        self.record(
            role,
            "pread",
            "config space vendor/device ID".into(),
            step_return(&r.map(|_| 4)),
            None,
            4,
            t0,
            key,
        );
        let ids = r.map_err(|e| {
            Abort::Harness(format!(
                "reading config space failed with {}",
                errno_name(e)
            ))
        })?;
        let sysfs = self.role(role)?.dev.description().sysfs_path.clone();
        let from_sysfs = sysfs.as_deref().and_then(|p| {
            let read = |f: &str| std::fs::read_to_string(format!("{p}/{f}")).ok();
            let hex = |s: String| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
            Some((hex(read("vendor")?)?, hex(read("device")?)?))
        });
        match from_sysfs {
            Some(s) if s != ids => {
                return Err(Abort::Harness(format!(
                    "config space says {:04x}:{:04x} but sysfs says {:04x}:{:04x}: the region access path is wrong",
                    ids.0, ids.1, s.0, s.1
                )))
            }
            Some(_) => self.note(format!("config space IDs {:04x}:{:04x} match sysfs", ids.0, ids.1)),
            None => self.note(format!("config space IDs {:04x}:{:04x} (sysfs has no PCI IDs for this device)", ids.0, ids.1)),
        }
        Ok(())
    }

    /// V1-REGION-01: the migration region exists and is laid out as the
    /// uAPI says.
    pub(super) fn migration_region(&mut self, role: Role, key: &StepKey) -> Flow {
        let found = self.role(role)?.dev.find_migration_region();
        let region = match found {
            Ok(Some(r)) => r,
            other => {
                self.check(
                    key,
                    Check::builtin(
                        "present",
                        "V1-REGION-01",
                        false,
                        "a region with type capability 3 / subtype 1".into(),
                        format!("{other:?}"),
                    ),
                );
                return Err(Abort::Driver("no migration region".into()));
            }
        };
        let rw = uapi::VFIO_REGION_INFO_FLAG_READ | uapi::VFIO_REGION_INFO_FLAG_WRITE;
        self.check(
            key,
            Check::builtin(
                "layout",
                "V1-REGION-01",
                region.info.size > f::HEADER_SIZE && region.info.flags & rw == rw,
                format!(
                    "readable, writable, larger than the {}-byte header",
                    f::HEADER_SIZE
                ),
                format!(
                    "index {}, size {}, flags {:#x}",
                    region.info.index, region.info.size, region.info.flags
                ),
            ),
        );
        self.role(role)?.region = Some(V1Region {
            offset: region.info.offset,
            size: region.info.size,
        });
        let data_offset = self.read_named(role, "data_offset", key)?;
        self.check(
            key,
            Check::builtin(
                "data-offset",
                "V1-REGION-01",
                data_offset.is_ok_and(|o| o >= f::HEADER_SIZE && o < region.info.size),
                "data_offset past the header and inside the region".into(),
                format!("{data_offset:?}"),
            ),
        );
        Ok(())
    }
}

/// The chunk sizes to replay: the source's (V1-RESUME-02) or fixed, cut to
/// the mutated stream's length.
fn chunk_sizes(stream: &StreamBuf, chunk: &V1Chunking, m: &Mutation) -> Vec<u64> {
    let total = stream.len().saturating_sub(m.truncate) + m.extra;
    let mut sizes = Vec::new();
    let mut left = total;
    let mut push = |s: u64, left: &mut u64| {
        let s = s.min(*left);
        if s > 0 {
            sizes.push(s);
            *left -= s;
        }
    };
    match chunk {
        V1Chunking::Source => {
            for c in stream.chunks() {
                push(c, &mut left);
            }
            push(left, &mut left);
        }
        V1Chunking::Fixed(n) => {
            while left > 0 {
                push(*n, &mut left);
            }
        }
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;
    use results::{CaseFold, CaseResult, Verdict};

    #[test]
    fn a_drain_that_never_ends_fails_at_the_case_deadline() {
        let (file, text) = crate::catalogue::builtin()
            .iter()
            .find(|(f, _)| f.ends_with("v1-stop-and-copy.yaml"))
            .unwrap();
        let scenario = crate::scenario::load_str(text, file).unwrap();
        let mut dev = crate::device::open("sim:fault=v1-pending-never-zero").unwrap();
        // Already past: the drain meets it on its first turn, at any machine
        // speed (a later one would race the iteration bound).
        let opts = ExecOptions {
            deadline: Some(Instant::now()),
            ..ExecOptions::default()
        };
        let mut fold = CaseFold::new(CaseResult::new("c", file, "v1"));
        run(
            &scenario,
            Devices {
                device: dev.as_mut(),
                destination: None,
                incompatible: None,
            },
            &opts,
            &mut |e| fold.apply(e),
        );
        let r = fold.finish(false);
        let drains = r
            .checks
            .iter()
            .find(|c| c.name.ends_with("drains"))
            .unwrap();
        assert_eq!(drains.verdict, Verdict::Fail);
        assert!(
            drains.observed.contains("when the case deadline came"),
            "{}",
            drains.observed
        );
    }

    #[test]
    fn replayed_chunks_follow_the_source_and_the_mutation() {
        let mut s = StreamBuf::new(1 << 20);
        let dir = std::env::temp_dir();
        for part in [&b"abcd"[..], b"ef", b"ghij"] {
            s.append(part, &dir).unwrap();
        }
        assert_eq!(
            chunk_sizes(&s, &V1Chunking::Source, &Mutation::default()),
            vec![4, 2, 4]
        );
        let cut = Mutation {
            truncate: 5,
            ..Default::default()
        };
        assert_eq!(chunk_sizes(&s, &V1Chunking::Source, &cut), vec![4, 1]);
        assert_eq!(
            chunk_sizes(&s, &V1Chunking::Fixed(3), &Mutation::default()),
            vec![3, 3, 3, 1]
        );
    }
}
