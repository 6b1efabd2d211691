//! Validating an operation's arguments: sizes, buffers, states, fields
//! and loops, each resolved to what the executor runs.

use serde_saphyr::{Location, Spanned};

use super::raw::*;
use super::validate::*;
use super::*;
use crate::model::v1::V1State;
use crate::uapi::{
    self, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

/// Bounds on loops a file may request, so a typo cannot run for days.
const MAX_REPEAT: u32 = 1_000_000;
const MAX_WALK: u64 = 100_000_000;
const MAX_V1_ITERATIONS: u64 = 100_000_000;

pub(super) fn write_spec(ctx: &Ctx, w: &RawWrite) -> R<WriteSpec> {
    Ok(WriteSpec {
        from: used_buffer(ctx, &w.from)?,
        chunk: chunk(ctx, w.chunk.as_ref(), DEFAULT_CHUNK)?,
        mutation: mutation(ctx, w.truncate.as_ref(), &w.corrupt, w.extra.as_ref())?,
    })
}

/// `race`: the kind decides which of `from`, `into` and `to` it needs.
fn race(ctx: &mut Ctx, r: &RawRace) -> R<Op> {
    let kind = match r.kind.value.as_str() {
        "readers" => RaceKind::Readers,
        "writers" => RaceKind::Writers,
        "set_during_read" => RaceKind::SetDuringRead,
        "reset_during_read" => RaceKind::ResetDuringRead,
        "reset_during_write" => RaceKind::ResetDuringWrite,
        "close_during_read" => RaceKind::CloseDuringRead,
        "multifd_save" => RaceKind::MultifdSave,
        "multifd_load" => RaceKind::MultifdLoad,
        other => {
            return Err(ctx.err(
                &r.kind.referenced,
                format!(
                    "unknown race `{other}`: use readers, writers, set_during_read, reset_during_read, reset_during_write, close_during_read, multifd_save or multifd_load"
                ),
            ))
        }
    };
    let needs_from = matches!(
        kind,
        RaceKind::Readers | RaceKind::Writers | RaceKind::ResetDuringWrite | RaceKind::MultifdLoad
    );
    let from = match (&r.from, needs_from) {
        (Some(f), true) => Some(used_buffer(ctx, f)?),
        (None, false) => None,
        (Some(f), false) => return Err(ctx.err(&f.referenced, "this race takes no `from`")),
        (None, true) => return Err(ctx.err(&r.kind.referenced, "this race needs `from: BUFFER`")),
    };
    let into = match (&r.into, kind == RaceKind::MultifdSave) {
        (Some(i), true) => {
            let name = buffer_name(ctx, i)?;
            ctx.buffers.insert(name.clone());
            Some(name)
        }
        (None, false) => None,
        (Some(i), false) => return Err(ctx.err(&i.referenced, "only multifd_save takes `into`")),
        (None, true) => {
            return Err(ctx.err(&r.kind.referenced, "multifd_save needs `into: BUFFER`"))
        }
    };
    let to = match (&r.to, kind == RaceKind::SetDuringRead) {
        (Some(t), true) => Some(state_ref(ctx, t)?),
        (None, false) => None,
        (Some(t), false) => return Err(ctx.err(&t.referenced, "only set_during_read takes `to`")),
        (None, true) => {
            return Err(ctx.err(&r.kind.referenced, "set_during_read needs `to: STATE`"))
        }
    };
    Ok(Op::Race {
        kind,
        from,
        into,
        to,
        chunk: chunk(ctx, r.chunk.as_ref(), RACE_CHUNK)?,
        within: match &r.within {
            Some(t) => timeout(ctx, t)?,
            None => RACE_WITHIN,
        },
    })
}

/// A race's reads and writes are small, so that many of them interleave.
const RACE_CHUNK: u64 = 4096;
/// How long a race's threads may take after the main thread is done.
const RACE_WITHIN: Duration = Duration::from_secs(10);

pub(super) fn mutation(
    ctx: &Ctx,
    truncate: Option<&Spanned<RawSize>>,
    corrupt: &[Spanned<RawSize>],
    extra: Option<&Spanned<RawSize>>,
) -> R<Mutation> {
    Ok(Mutation {
        truncate: truncate.map(|t| size(ctx, t)).transpose()?.unwrap_or(0),
        corrupt: corrupt.iter().map(|c| size(ctx, c)).collect::<R<_>>()?,
        extra: extra.map(|e| size(ctx, e)).transpose()?.unwrap_or(0),
    })
}

/// The buffer a reading step fills, now known to later steps.
fn filled_buffer(ctx: &mut Ctx, into: Option<&Spanned<String>>) -> R<Option<String>> {
    into.map(|b| {
        let name = buffer_name(ctx, b)?;
        ctx.buffers.insert(name.clone());
        Ok(name)
    })
    .transpose()
}

/// Reads QEMU's precopy loop makes at most, unless `rounds` says otherwise.
const QEMU_PRECOPY_ROUNDS: u32 = 100_000;

/// The operation with its arguments checked and resolved.
pub(super) fn op_args(ctx: &mut Ctx, raw: &Spanned<RawOp>) -> R<Op> {
    let at = raw.referenced;
    Ok(match &raw.value {
        RawOp::Plain(op) => op.clone(),
        RawOp::SetState(s) => Op::SetState(state_ref(ctx, s)?),
        RawOp::Feature(f) => feature(ctx, f)?,
        RawOp::PrecopyInfo(p) => Op::PrecopyInfo {
            argsz: p.argsz.as_ref().map(|a| a.value),
            flags: p.flags.as_ref().map_or(0, |f| f.value),
        },
        RawOp::Read(r) => {
            let until = match r.until.as_ref().map(|u| (u.value.as_str(), u.referenced)) {
                None | Some(("eof", _)) => ReadUntil::Eof,
                Some(("end_of_precopy", _)) => ReadUntil::EndOfPrecopy,
                Some(("once", _)) => ReadUntil::Once,
                Some((other, loc)) => {
                    return Err(ctx.err(
                        &loc,
                        format!("unknown `until: {other}`: use eof, end_of_precopy or once"),
                    ))
                }
            };
            Op::Read {
                into: filled_buffer(ctx, r.into.as_ref())?,
                chunk: chunk(ctx, r.chunk.as_ref(), DEFAULT_CHUNK)?,
                until,
                max: r.max.as_ref().map(|m| size(ctx, m)).transpose()?,
            }
        }
        RawOp::QemuStopCopy(q) => {
            if let Some(r) = &q.rounds {
                return Err(ctx.err(&r.referenced, "`rounds` belongs to qemu_precopy"));
            }
            Op::QemuStopCopy {
                into: filled_buffer(ctx, q.into.as_ref())?,
            }
        }
        RawOp::QemuPrecopy(q) => {
            let into = filled_buffer(ctx, q.into.as_ref())?;
            let rounds = match &q.rounds {
                Some(r) if r.value == 0 => {
                    return Err(ctx.err(&r.referenced, "`rounds` must be at least 1"))
                }
                Some(r) => r.value,
                None => QEMU_PRECOPY_ROUNDS,
            };
            Op::QemuPrecopy { into, rounds }
        }
        RawOp::Pread(p) => Op::Pread {
            offset: opt_size(ctx, p.offset.as_ref(), 0)?,
            len: chunk(ctx, p.len.as_ref(), 16)?,
        },
        RawOp::Pwrite(p) => Op::Pwrite {
            offset: opt_size(ctx, p.offset.as_ref(), 0)?,
            len: chunk(ctx, p.len.as_ref(), 16)?,
        },
        RawOp::Write(w) => Op::Write(write_spec(ctx, w)?),
        RawOp::Poll(p) => {
            let mut readable = false;
            let mut writable = false;
            for e in &p.events {
                match e.value.as_str() {
                    "in" => readable = true,
                    "out" => writable = true,
                    other => {
                        return Err(ctx.err(
                            &e.referenced,
                            format!("unknown poll event `{other}`: use in or out"),
                        ))
                    }
                }
            }
            if !readable && !writable {
                readable = true;
            }
            let timeout = match &p.timeout {
                Some(t) => timeout(ctx, t)?,
                None => Duration::from_millis(100),
            };
            Op::Poll {
                readable,
                writable,
                timeout,
            }
        }
        RawOp::DataIoctl(d) => Op::DataIoctl {
            request: match &d.request.value {
                RawScalar::Text(t) if t == "VFIO_MIG_GET_PRECOPY_INFO" => {
                    uapi::VFIO_MIG_GET_PRECOPY_INFO
                }
                RawScalar::Int(n) if (0..=i128::from(u32::MAX)).contains(n) => *n as u64,
                _ => {
                    return Err(ctx.err(
                        &d.request.referenced,
                        "request is VFIO_MIG_GET_PRECOPY_INFO or an ioctl number",
                    ))
                }
            },
            argsz: d.argsz.as_ref().map_or(24, |a| a.value),
        },
        RawOp::Save(s) => {
            let into = buffer_name(ctx, &s.into)?;
            ctx.buffers.insert(into.clone());
            Op::Save {
                into,
                chunk: chunk(ctx, s.chunk.as_ref(), DEFAULT_CHUNK)?,
            }
        }
        RawOp::Resume(w) => Op::Resume(write_spec(ctx, w)?),
        RawOp::Pipe(p) => Op::Pipe {
            to: role(ctx, &p.to)?,
            chunk: chunk(ctx, p.chunk.as_ref(), DEFAULT_CHUNK)?,
        },
        RawOp::Compare(c) => Op::Compare {
            a: used_buffer(ctx, &c.a)?,
            b: used_buffer(ctx, &c.b)?,
        },
        RawOp::Race(r) => race(ctx, r)?,
        RawOp::Sleep(d) => Op::Sleep(timeout(ctx, d)?),
        RawOp::Repeat(r) => {
            if r.times.value == 0 || r.times.value > MAX_REPEAT {
                return Err(ctx.err(
                    &r.times.referenced,
                    format!("repeat `times` must be between 1 and {MAX_REPEAT}"),
                ));
            }
            if r.steps.value.is_empty() {
                return Err(ctx.err(&r.steps.referenced, "repeat needs at least one step"));
            }
            Op::Repeat {
                times: r.times.value,
                steps: steps(ctx, &r.steps.value)?,
            }
        }
        RawOp::ForEach(f) => for_each(ctx, f, &at)?,
        RawOp::Walk(w) => {
            if w.steps.value == 0 || w.steps.value > MAX_WALK {
                return Err(ctx.err(
                    &w.steps.referenced,
                    format!("walk `steps` must be between 1 and {MAX_WALK}"),
                ));
            }
            Op::Walk {
                steps: w.steps.value,
                seed: w.seed.as_ref().map(|s| s.value),
                invalid: w.invalid,
            }
        }
        RawOp::LoggingStart(l) => {
            let page_size = opt_size(ctx, l.page_size.as_ref(), 4096)?;
            let ranges = l
                .ranges
                .iter()
                .map(|r| {
                    Ok((
                        size_value(ctx, &r.value.0, &r.referenced)?,
                        size_value(ctx, &r.value.1, &r.referenced)?,
                    ))
                })
                .collect::<R<Vec<_>>>()?;
            if ranges.len() > uapi::LOG_MAX_RANGES as usize + 1 {
                return Err(ctx.err(
                    &at,
                    format!(
                        "at most {} ranges may be listed; use `num_ranges` to claim more",
                        uapi::LOG_MAX_RANGES + 1
                    ),
                ));
            }
            let num_ranges = l.num_ranges.as_ref().map(|n| n.value);
            if num_ranges.is_some_and(|n| n > 1 << 20) {
                return Err(ctx.err(&at, "`num_ranges` is limited to 1048576"));
            }
            Op::LoggingStart {
                page_size,
                ranges,
                num_ranges,
            }
        }
        RawOp::LoggingReport(r) => {
            let iova = opt_size(ctx, r.iova.as_ref(), 0)?;
            let length = opt_size(ctx, r.length.as_ref(), 1 << 20)?;
            let page_size = opt_size(ctx, r.page_size.as_ref(), 4096)?;
            // The bitmap is allocated here: keep it at most 16 MiB.
            if page_size != 0 && length / page_size > (16 << 20) * 8 {
                return Err(ctx.err(
                    &at,
                    "the report's length/page_size needs a bitmap over 16MiB; ask for less",
                ));
            }
            Op::LoggingReport {
                iova,
                length,
                page_size,
            }
        }
        RawOp::ReadField(r) => {
            let access = field_access(ctx, &r.field, r.width.as_ref(), r.skew.as_ref())?;
            let into = match &r.into {
                Some(v) => {
                    let name = buffer_name(ctx, v)?;
                    ctx.vars.insert(name.clone());
                    Some(name)
                }
                None => None,
            };
            Op::ReadField { access, into }
        }
        RawOp::WriteField(w) => {
            let access = field_access(ctx, &w.field, w.width.as_ref(), w.skew.as_ref())?;
            let value = field_value(ctx, &access.field, &w.value)?;
            Op::WriteField { access, value }
        }
        RawOp::V1Save(s) => {
            let into = buffer_name(ctx, &s.into)?;
            ctx.buffers.insert(into.clone());
            let max_iterations = s.max_iterations.as_ref().map_or(100_000, |m| m.value);
            if max_iterations == 0 || max_iterations > MAX_V1_ITERATIONS {
                return Err(ctx.err(
                    &at,
                    format!("max_iterations must be between 1 and {MAX_V1_ITERATIONS}"),
                ));
            }
            Op::V1Save {
                into,
                max_iterations,
            }
        }
        RawOp::V1Resume(r) => Op::V1Resume {
            from: used_buffer(ctx, &r.from)?,
            chunk: match &r.chunk {
                None => V1Chunking::Source,
                Some(c) => match &c.value {
                    RawScalar::Text(t) if t == "source" => V1Chunking::Source,
                    RawScalar::Text(t) => {
                        V1Chunking::Fixed(parse_size(t).map_err(|m| ctx.err(&c.referenced, m))?)
                    }
                    RawScalar::Int(n) if *n > 0 && *n <= i128::from(MAX_CHUNK) => {
                        V1Chunking::Fixed(*n as u64)
                    }
                    _ => {
                        return Err(ctx.err(
                            &c.referenced,
                            "chunk is `source` or a size between 1 byte and 1GiB",
                        ))
                    }
                },
            },
            mutation: mutation(ctx, r.truncate.as_ref(), &r.corrupt, None)?,
            then_running: match r.then.as_ref().map(|t| (t.value.as_str(), t.referenced)) {
                None | Some(("stop", _)) => false,
                Some(("running", _)) => true,
                Some((other, at)) => {
                    return Err(ctx.err(&at, format!("`then: {other}`: use stop or running")))
                }
            },
        },
        RawOp::V1Freeze(f) => Op::V1Freeze {
            from: used_buffer(ctx, &f.from)?,
            touches: f.touches.as_ref().map_or(64, |t| t.value).clamp(1, 100_000),
        },
    })
}

pub(super) fn size_value(ctx: &Ctx, s: &RawSize, at: &Location) -> R<u64> {
    match s {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(t) => parse_size(t).map_err(|m| ctx.err(at, m)),
    }
}

pub(super) fn feature(ctx: &Ctx, f: &RawFeature) -> R<Op> {
    let feature = match &f.feature.value {
        RawScalar::Int(n) if (0..=0xffff).contains(n) => *n as u32,
        RawScalar::Text(t) => uapi::feature_index(t).ok_or_else(|| {
            ctx.err(
                &f.feature.referenced,
                format!(
                    "unknown feature `{t}`: use one of {} or a number",
                    uapi::FEATURE_NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?,
        _ => {
            return Err(ctx.err(
                &f.feature.referenced,
                "feature is a name (MIG_DEVICE_STATE) or an index 0..65535",
            ))
        }
    };
    let mut ops = 0;
    for o in &f.ops {
        ops |= match o.value.as_str() {
            "get" => VFIO_DEVICE_FEATURE_GET,
            "set" => VFIO_DEVICE_FEATURE_SET,
            "probe" => VFIO_DEVICE_FEATURE_PROBE,
            other => {
                return Err(ctx.err(
                    &o.referenced,
                    format!("unknown feature op `{other}`: use get, set or probe"),
                ))
            }
        };
    }
    let payload = f.payload.as_ref().map(|p| size(ctx, p)).transpose()?;
    if payload.is_some_and(|p| p > 1 << 20) {
        return Err(ctx.err(&f.feature.referenced, "payload is limited to 1MiB"));
    }
    Ok(Op::Feature {
        feature,
        ops,
        extra_flags: f.extra_flags.as_ref().map_or(0, |e| e.value),
        argsz: f.argsz.as_ref().map(|a| a.value),
        payload,
        state: f.state.as_ref().map(|s| state_ref(ctx, s)).transpose()?,
    })
}

pub(super) fn for_each(ctx: &mut Ctx, f: &RawForEach, at: &Location) -> R<Op> {
    if f.vars.is_empty() {
        return Err(ctx.err(
            at,
            "for_each needs at least one variable, e.g. `state: supported`",
        ));
    }
    let mut vars = Vec::new();
    for (name, set) in &f.vars {
        if !is_slug(&name.value) {
            return Err(ctx.err(
                &name.referenced,
                format!("variable name `{}` must be a slug", name.value),
            ));
        }
        if ctx.loop_vars.contains(&name.value) || vars.iter().any(|(n, _)| n == &name.value) {
            return Err(ctx.err(
                &name.referenced,
                format!("variable `{}` is already defined", name.value),
            ));
        }
        let set = match &set.value {
            OneOrMany::One(RawScalar::Text(t)) if t == "supported" => StateSet::Supported,
            OneOrMany::One(RawScalar::Text(t)) if t == "all" => StateSet::All,
            OneOrMany::One(RawScalar::Text(t)) if t == "invalid" => StateSet::Invalid,
            other => {
                let items = other.clone().into_vec();
                let mut values = Vec::new();
                for item in items {
                    let spanned = Spanned {
                        value: item,
                        referenced: set.referenced,
                        defined: set.defined,
                    };
                    match state_ref(ctx, &spanned)? {
                        StateRef::Value(v) => values.push(v),
                        StateRef::Var(_) => {
                            return Err(
                                ctx.err(&set.referenced, "a state set lists states, not variables")
                            )
                        }
                    }
                }
                StateSet::List(values)
            }
        };
        vars.push((name.value.clone(), set));
    }
    if f.steps.value.is_empty() {
        return Err(ctx.err(&f.steps.referenced, "for_each needs at least one step"));
    }
    let before = ctx.loop_vars.len();
    ctx.loop_vars.extend(vars.iter().map(|(n, _)| n.clone()));
    let body = steps(ctx, &f.steps.value);
    ctx.loop_vars.truncate(before);
    Ok(Op::ForEach { vars, steps: body? })
}

pub(super) fn field_access(
    ctx: &Ctx,
    field: &Spanned<String>,
    width: Option<&Spanned<u32>>,
    skew: Option<&Spanned<u32>>,
) -> R<FieldAccess> {
    let Some((_, natural)) = uapi::v1::field(&field.value) else {
        return Err(ctx.err(
            &field.referenced,
            format!(
                "unknown migration region field `{}`: use {}",
                field.value,
                uapi::v1::FIELD_NAMES.join(", ")
            ),
        ));
    };
    let width = width.map_or(natural as u32, |w| w.value);
    if ![1, 2, 4, 8].contains(&width) {
        return Err(ctx.err(
            &field.referenced,
            format!("access width {width} must be 1, 2, 4 or 8"),
        ));
    }
    let skew = skew.map_or(0, |s| s.value);
    if skew >= 8 {
        return Err(ctx.err(&field.referenced, "skew must be below 8"));
    }
    Ok(FieldAccess {
        field: field.value.clone(),
        width,
        skew,
    })
}

pub(super) fn field_value(
    ctx: &Ctx,
    field: &str,
    v: &Spanned<OneOrMany<RawScalar>>,
) -> R<FieldValue> {
    match &v.value {
        OneOrMany::One(RawScalar::Int(n)) => u64::try_from(*n)
            .map(FieldValue::Number)
            .map_err(|_| ctx.err(&v.referenced, format!("{n} is not a field value"))),
        OneOrMany::One(RawScalar::Text(t)) if t.starts_with('$') => {
            let name = &t[1..];
            if ctx.vars.contains(name) {
                Ok(FieldValue::Var(name.to_string()))
            } else {
                Err(ctx.err(&v.referenced, format!("`${name}` is not captured before this step")))
            }
        }
        OneOrMany::One(RawScalar::Text(t)) if field == "device_state" => V1State::from_name(t)
            .map(|s| FieldValue::StateBits(s.bits()))
            .ok_or_else(|| {
                ctx.err(
                    &v.referenced,
                    format!("unknown v1 state `{t}`: use stop, running, stop-and-copy, pre-copy, resuming, or a list of bits [running, saving, resuming]"),
                )
            }),
        OneOrMany::Many(bits) if field == "device_state" => {
            let mut names = Vec::new();
            for b in bits {
                match b {
                    RawScalar::Text(t) => names.push(t.as_str()),
                    _ => return Err(ctx.err(&v.referenced, "state bits are names: running, saving, resuming")),
                }
            }
            V1State::from_bit_names(names)
                .map(|s| FieldValue::StateBits(s.bits()))
                .ok_or_else(|| ctx.err(&v.referenced, "state bits are running, saving and resuming"))
        }
        _ => Err(ctx.err(&v.referenced, format!("`{field}` takes a number"))),
    }
}
