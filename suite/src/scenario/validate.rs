//! From the file as written to executable steps: every name resolved, every
//! size parsed, every reference checked, with the location of what is wrong.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::raw::*;
use super::*;
use crate::model::v1::V1State;
use crate::requirements;
use crate::uapi::{
    self, MigState, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
    VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY,
};

/// No case may ask for a deadline longer than this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bounds on loops a file may request, so a typo cannot run for days.
const MAX_REPEAT: u32 = 1_000_000;
const MAX_WALK: u64 = 100_000_000;
const MAX_V1_ITERATIONS: u64 = 100_000_000;

struct Ctx<'a> {
    file: &'a str,
    protocol: Protocol,
    requires: &'a Requires,
    /// `for_each` variables in scope.
    loop_vars: Vec<String>,
    /// Buffers filled so far (by `read into`, `save`, `v1_save`).
    buffers: BTreeSet<String>,
    /// Variables captured so far (`read_field into`, built-ins once set).
    vars: BTreeSet<String>,
}

type R<T> = Result<T, LoadError>;

impl Ctx<'_> {
    fn err(&self, at: &Location, message: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file.to_string(),
            line: at.line().max(1),
            column: at.column().max(1),
            message: message.into(),
            snippet: None,
        }
    }

    fn loc(&self, at: &Location) -> SourceLoc {
        SourceLoc {
            file: self.file.to_string(),
            line: u32::try_from(at.line()).unwrap_or(u32::MAX),
            column: u32::try_from(at.column()).unwrap_or(u32::MAX),
        }
    }
}

pub(super) fn scenario(raw: RawScenario, file: &str) -> R<Scenario> {
    let probe = Ctx {
        file,
        protocol: Protocol::V2,
        requires: &Requires::default(),
        loop_vars: Vec::new(),
        buffers: BTreeSet::new(),
        vars: BTreeSet::new(),
    };
    let name = raw.name.value.clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(probe.err(
            &raw.name.referenced,
            format!("case name `{name}` must be non-empty and use only letters, digits, `-` and `_` (it names KTAP and JUnit results)"),
        ));
    }
    if raw.about.value.trim().is_empty() {
        return Err(probe.err(
            &raw.about.referenced,
            "`about` must say what the case checks",
        ));
    }
    let (protocol, requires) = match &raw.requires {
        Some(r) => requires(&probe, r)?,
        None => (Protocol::V2, Requires::default()),
    };
    let timeout = match &raw.timeout {
        Some(t) => Some(timeout(&probe, t)?),
        None => None,
    };
    let mut ctx = Ctx {
        file,
        protocol,
        requires: &requires,
        loop_vars: Vec::new(),
        buffers: BTreeSet::new(),
        vars: BTreeSet::new(),
    };
    if raw.steps.value.is_empty() {
        return Err(ctx.err(&raw.steps.referenced, "a case needs at least one step"));
    }
    let steps = steps(&mut ctx, &raw.steps.value)?;
    Ok(Scenario {
        name,
        about: raw.about.value.trim().to_string(),
        file: file.to_string(),
        protocol,
        requires: requires.clone(),
        dangerous: raw.dangerous,
        timeout,
        steps,
    })
}

fn requires(ctx: &Ctx, r: &Spanned<RawRequires>) -> R<(Protocol, Requires)> {
    let raw = &r.value;
    let protocol = match &raw.protocol {
        None => Protocol::V2,
        Some(p) => match p.value.as_str() {
            "v1" => Protocol::V1,
            "v2" => Protocol::V2,
            other => {
                return Err(ctx.err(
                    &p.referenced,
                    format!("unknown protocol `{other}`: use v1 or v2"),
                ))
            }
        },
    };
    let mut flags = 0;
    for f in &raw.flags {
        flags |= match f.value.as_str() {
            "stop_copy" => 0,
            "p2p" => VFIO_MIGRATION_P2P,
            "pre_copy" => VFIO_MIGRATION_PRE_COPY,
            other => {
                return Err(ctx.err(
                    &f.referenced,
                    format!("unknown migration flag `{other}`: use stop_copy, p2p or pre_copy"),
                ))
            }
        };
    }
    if protocol == Protocol::V1 && flags != 0 {
        return Err(ctx.err(&r.referenced, "migration flags apply to protocol v2 only"));
    }
    let devices = raw.devices.as_ref().map(|d| (d.value, d.referenced));
    if let Some((n, at)) = devices {
        if !(1..=2).contains(&n) {
            return Err(ctx.err(
                &at,
                format!("`devices: {n}`: a case uses 1 or 2 compatible devices (add `incompatible: true` for a device of another type)"),
            ));
        }
    }
    Ok((
        protocol,
        Requires {
            flags,
            destination: devices.is_some_and(|(n, _)| n == 2),
            incompatible: raw.incompatible,
            logging: raw.logging,
            deterministic_stream: raw.deterministic_stream,
            precopy_info_v2: raw.precopy_info_v2,
            without_v2: raw.without_v2,
        },
    ))
}

fn timeout(ctx: &Ctx, t: &Spanned<String>) -> R<Duration> {
    let d = humantime::parse_duration(&t.value).map_err(|e| {
        ctx.err(
            &t.referenced,
            format!("timeout `{}`: {e} (write e.g. 10s or 2m)", t.value),
        )
    })?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(ctx.err(
            &t.referenced,
            format!(
                "timeout `{}` is out of range: give between 1ms and {}",
                t.value,
                humantime::format_duration(MAX_TIMEOUT)
            ),
        ));
    }
    Ok(d)
}

fn steps(ctx: &mut Ctx, raw: &[Spanned<RawStep>]) -> R<Vec<Step>> {
    raw.iter().map(|s| step(ctx, s)).collect()
}

fn step(ctx: &mut Ctx, s: &Spanned<RawStep>) -> R<Step> {
    let raw = &s.value;
    let role = match &raw.on {
        None => Role::Device,
        Some(on) => role(ctx, on)?,
    };
    let label = match &raw.label {
        None => None,
        Some(l) if is_slug(&l.value) => Some(l.value.clone()),
        Some(l) => {
            return Err(ctx.err(
                &l.referenced,
                format!(
                    "step name `{}` must use only letters, digits, `-` and `_`",
                    l.value
                ),
            ))
        }
    };
    let at = raw.op.referenced;
    let op = op(ctx, &raw.op)?;
    check_protocol(ctx, &op, &at)?;
    let expect = match &raw.expect {
        None => None,
        Some(e) => Some(expect(ctx, &op, e)?),
    };
    Ok(Step {
        op,
        expect,
        role,
        label,
        loc: ctx.loc(&at),
    })
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn role(ctx: &Ctx, on: &Spanned<String>) -> R<Role> {
    let role = match on.value.as_str() {
        "device" | "source" => Role::Device,
        "destination" => Role::Destination,
        "incompatible" => Role::Incompatible,
        other => {
            return Err(ctx.err(
                &on.referenced,
                format!("unknown device role `{other}`: use device, destination or incompatible"),
            ))
        }
    };
    if role == Role::Destination && !ctx.requires.destination {
        return Err(ctx.err(
            &on.referenced,
            "this step runs on the destination: declare `requires: { devices: 2 }`",
        ));
    }
    if role == Role::Incompatible && !ctx.requires.incompatible {
        return Err(ctx.err(
            &on.referenced,
            "this step runs on the incompatible device: declare `requires: { incompatible: true }`",
        ));
    }
    Ok(role)
}

/// v1 operations need a v1 case, the v2 state machine a v2 case.
fn check_protocol(ctx: &Ctx, op: &Op, at: &Location) -> R<()> {
    let scope = op.info().scope;
    let v1_only = scope == Scope::V1;
    let v2_only = scope == Scope::V2;
    match ctx.protocol {
        Protocol::V2 if v1_only => Err(ctx.err(
            at,
            format!(
                "`{}` is a v1 operation: declare `requires: {{ protocol: v1 }}`",
                op.name()
            ),
        )),
        Protocol::V1 if v2_only => Err(ctx.err(
            at,
            format!(
                "`{}` belongs to protocol v2; this case declares v1",
                op.name()
            ),
        )),
        _ => Ok(()),
    }
}

/// Parses `4096`, `7`, `4KiB`, `1MiB`, `2GiB` (also `K`, `M`, `G`, `KB` as
/// binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}` is not a size (write e.g. 4096, 7, 4KiB or 1MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`: use KiB, MiB or GiB"
            ))
        }
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

fn size(ctx: &Ctx, s: &Spanned<RawSize>) -> R<u64> {
    match &s.value {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(t) => parse_size(t).map_err(|m| ctx.err(&s.referenced, m)),
    }
}

/// An optional size, or `default` when the file leaves it out.
fn opt_size(ctx: &Ctx, s: Option<&Spanned<RawSize>>, default: u64) -> R<u64> {
    s.map_or(Ok(default), |s| size(ctx, s))
}

fn chunk(ctx: &Ctx, s: Option<&Spanned<RawSize>>, default: u64) -> R<u64> {
    let Some(s) = s else { return Ok(default) };
    let n = size(ctx, s)?;
    if n == 0 || n > MAX_CHUNK {
        return Err(ctx.err(
            &s.referenced,
            format!("chunk must be between 1 byte and 1GiB, not {n}"),
        ));
    }
    Ok(n)
}

/// A single read or write never asks for more than this.
const MAX_CHUNK: u64 = 1 << 30;
/// The default buffer for streaming reads and writes.
pub const DEFAULT_CHUNK: u64 = 1 << 20;

fn state_ref(ctx: &Ctx, s: &Spanned<RawScalar>) -> R<StateRef> {
    match &s.value {
        RawScalar::Int(n) => u32::try_from(*n).map(StateRef::Value).map_err(|_| {
            ctx.err(
                &s.referenced,
                format!("state value {n} does not fit in a u32"),
            )
        }),
        RawScalar::Text(t) => {
            if let Some(var) = t.strip_prefix('$') {
                if ctx.loop_vars.iter().any(|v| v == var) {
                    return Ok(StateRef::Var(var.to_string()));
                }
                return Err(ctx.err(
                    &s.referenced,
                    format!("`${var}` is not a `for_each` variable in scope"),
                ));
            }
            MigState::from_name(t)
                .map(|st| StateRef::Value(st.raw()))
                .ok_or_else(|| {
                    ctx.err(
                        &s.referenced,
                        format!(
                            "unknown state `{t}`: use ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, a number, or a `$variable`"
                        ),
                    )
                })
        }
        RawScalar::Bool => Err(ctx.err(&s.referenced, "a state is a name or a number")),
    }
}

fn buffer_name(ctx: &Ctx, s: &Spanned<String>) -> R<String> {
    if is_slug(&s.value) {
        Ok(s.value.clone())
    } else {
        Err(ctx.err(
            &s.referenced,
            format!(
                "buffer name `{}` must use only letters, digits, `-` and `_`",
                s.value
            ),
        ))
    }
}

fn used_buffer(ctx: &Ctx, s: &Spanned<String>) -> R<String> {
    if ctx.buffers.contains(&s.value) {
        Ok(s.value.clone())
    } else {
        Err(ctx.err(
            &s.referenced,
            format!(
                "buffer `{}` is never filled before this step (fill it with `save`, `v1_save` or `read: {{ into: {} }}`)",
                s.value, s.value
            ),
        ))
    }
}

fn mutation(
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

fn write_spec(ctx: &Ctx, w: &RawWrite) -> R<WriteSpec> {
    Ok(WriteSpec {
        from: used_buffer(ctx, &w.from)?,
        chunk: chunk(ctx, w.chunk.as_ref(), DEFAULT_CHUNK)?,
        mutation: mutation(ctx, w.truncate.as_ref(), &w.corrupt, w.extra.as_ref())?,
    })
}

fn op(ctx: &mut Ctx, raw: &Spanned<RawOp>) -> R<Op> {
    let op = op_args(ctx, raw)?;
    ctx.vars
        .extend(op.info().sets.iter().map(|v| v.to_string()));
    Ok(op)
}

/// The operation with its arguments checked and resolved.
fn op_args(ctx: &mut Ctx, raw: &Spanned<RawOp>) -> R<Op> {
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
            let into = match &r.into {
                Some(b) => {
                    let name = buffer_name(ctx, b)?;
                    ctx.buffers.insert(name.clone());
                    Some(name)
                }
                None => None,
            };
            Op::Read {
                into,
                chunk: chunk(ctx, r.chunk.as_ref(), DEFAULT_CHUNK)?,
                until,
                max: r.max.as_ref().map(|m| size(ctx, m)).transpose()?,
            }
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

fn size_value(ctx: &Ctx, s: &RawSize, at: &Location) -> R<u64> {
    match s {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(t) => parse_size(t).map_err(|m| ctx.err(at, m)),
    }
}

fn feature(ctx: &Ctx, f: &RawFeature) -> R<Op> {
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

fn for_each(ctx: &mut Ctx, f: &RawForEach, at: &Location) -> R<Op> {
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

fn field_access(
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

fn field_value(ctx: &Ctx, field: &str, v: &Spanned<OneOrMany<RawScalar>>) -> R<FieldValue> {
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

fn expect(ctx: &Ctx, op: &Op, e: &Spanned<RawExpect>) -> R<Expect> {
    let raw = &e.value;
    let allowed = op.info().observes;
    let used: [(&str, Option<Location>); 17] = [
        ("ok", raw.ok.as_ref().map(|v| v.referenced)),
        ("errno", raw.errno.as_ref().map(|v| v.referenced)),
        ("rejected", raw.rejected.as_ref().map(|v| v.referenced)),
        ("state", raw.state.as_ref().map(|v| v.referenced)),
        ("data_fd", raw.data_fd.as_ref().map(|v| v.referenced)),
        ("bytes", raw.bytes.as_ref().map(|v| v.referenced)),
        (
            "initial_bytes",
            raw.initial_bytes.as_ref().map(|v| v.referenced),
        ),
        (
            "dirty_bytes",
            raw.dirty_bytes.as_ref().map(|v| v.referenced),
        ),
        (
            "stop_copy_length",
            raw.stop_copy_length.as_ref().map(|v| v.referenced),
        ),
        ("flags", raw.flags.as_ref().map(|v| v.referenced)),
        ("value", raw.value.as_ref().map(|v| v.referenced)),
        ("end", raw.end.as_ref().map(|v| v.referenced)),
        ("equal", raw.equal.as_ref().map(|v| v.referenced)),
        ("readable", raw.readable.as_ref().map(|v| v.referenced)),
        ("clean", raw.clean.as_ref().map(|v| v.referenced)),
        ("unchanged", raw.unchanged.as_ref().map(|v| v.referenced)),
        ("strength", None),
    ];
    let mut any = false;
    for (key, at) in used {
        if let Some(at) = at {
            any = true;
            if !allowed.contains(&key) {
                return Err(ctx.err(
                    &at,
                    if allowed.is_empty() {
                        format!("`{}` observes nothing to expect", op.name())
                    } else {
                        format!(
                            "`{}` cannot observe `{key}`; it can observe: {}",
                            op.name(),
                            allowed.join(", ")
                        )
                    },
                ));
            }
        }
    }
    if !any {
        return Err(ctx.err(&e.referenced, "an `expect` must say what to observe"));
    }
    if raw.ids.is_empty() {
        return Err(ctx.err(
            &e.referenced,
            "an `expect` must cite the requirement IDs it checks (`ids: [V2-FSM-03]`)",
        ));
    }
    let mut ids = Vec::new();
    let mut strongest = Strength::Info;
    for id in &raw.ids {
        let Some(req) = requirements::find(&id.value) else {
            return Err(ctx.err(
                &id.referenced,
                format!(
                    "unknown requirement ID `{}` (see suite/requirements.yaml)",
                    id.value
                ),
            ));
        };
        strongest = strongest.min(req.strength);
        ids.push(id.value.clone());
    }
    let strength = match &raw.strength {
        None => strongest,
        Some(s) => match s.value.to_ascii_lowercase().as_str() {
            "must" => Strength::Must,
            "should" => Strength::Should,
            "df" => Strength::Df,
            "info" => Strength::Info,
            other => {
                return Err(ctx.err(
                    &s.referenced,
                    format!("unknown strength `{other}`: use must, should, df or info"),
                ))
            }
        },
    };
    let result = result_expect(ctx, raw)?;
    Ok(Expect {
        ids,
        strength,
        loc: ctx.loc(&e.referenced),
        result,
        state: raw.state.as_ref().map(|s| state_ref(ctx, s)).transpose()?,
        data_fd: match &raw.data_fd {
            None => None,
            Some(d) => Some(match d.value.as_str() {
                "new" => FdExpect::New,
                "none" | "-1" => FdExpect::None,
                other => {
                    return Err(ctx.err(
                        &d.referenced,
                        format!("`data_fd: {other}`: use new or none"),
                    ))
                }
            }),
        },
        bytes: cmp(ctx, raw.bytes.as_ref())?,
        initial_bytes: cmp(ctx, raw.initial_bytes.as_ref())?,
        dirty_bytes: cmp(ctx, raw.dirty_bytes.as_ref())?,
        stop_copy_length: cmp(ctx, raw.stop_copy_length.as_ref())?,
        flags: cmp(ctx, raw.flags.as_ref())?,
        value: cmp(ctx, raw.value.as_ref())?,
        end: match &raw.end {
            None => None,
            Some(d) => Some(match d.value.as_str() {
                "eof" | "0" => EndExpect::Eof,
                "ENOMSG" | "enomsg" => EndExpect::Enomsg,
                other => {
                    return Err(ctx.err(&d.referenced, format!("`end: {other}`: use eof or ENOMSG")))
                }
            }),
        },
        equal: raw.equal.as_ref().map(|v| v.value),
        readable: raw.readable.as_ref().map(|v| v.value),
        clean: raw.clean.as_ref().map(|v| v.value),
        unchanged: raw.unchanged.as_ref().map(|v| v.value),
    })
}

fn result_expect(ctx: &Ctx, raw: &RawExpect) -> R<Option<ResultExpect>> {
    let given = [
        raw.ok.is_some(),
        raw.errno.is_some(),
        raw.rejected.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        let at = raw
            .errno
            .as_ref()
            .map(|e| e.referenced)
            .or(raw.rejected.as_ref().map(|r| r.referenced))
            .unwrap_or(Location::UNKNOWN);
        return Err(ctx.err(&at, "give only one of `ok`, `errno` and `rejected`"));
    }
    if let Some(ok) = &raw.ok {
        return Ok(Some(if ok.value {
            ResultExpect::Ok
        } else {
            ResultExpect::Rejected
        }));
    }
    if let Some(r) = &raw.rejected {
        return Ok(Some(if r.value {
            ResultExpect::Rejected
        } else {
            ResultExpect::Ok
        }));
    }
    if let Some(e) = &raw.errno {
        let mut errnos = Vec::new();
        for name in e.value.clone().into_vec() {
            let errno = uapi::errno_from_name(&name).ok_or_else(|| {
                ctx.err(
                    &e.referenced,
                    format!("unknown errno `{name}` (write e.g. EINVAL)"),
                )
            })?;
            errnos.push(errno);
        }
        return Ok(Some(ResultExpect::Errno(errnos)));
    }
    Ok(None)
}

fn cmp(ctx: &Ctx, raw: Option<&Spanned<RawScalar>>) -> R<Option<Cmp>> {
    let Some(raw) = raw else { return Ok(None) };
    let bad = |m: String| ctx.err(&raw.referenced, m);
    match &raw.value {
        RawScalar::Int(n) => u64::try_from(*n)
            .map(|n| {
                Some(Cmp {
                    op: CmpOp::Eq,
                    rhs: Operand::Num(n),
                })
            })
            .map_err(|_| bad(format!("{n} cannot be compared with a byte count"))),
        RawScalar::Bool => Err(bad("expected a number or a comparison like \">0\"".into())),
        RawScalar::Text(t) => {
            let t = t.trim();
            let (op, rest) = [
                ("<=", CmpOp::Le),
                (">=", CmpOp::Ge),
                ("==", CmpOp::Eq),
                ("!=", CmpOp::Ne),
                ("<", CmpOp::Lt),
                (">", CmpOp::Gt),
            ]
            .iter()
            .find_map(|(p, op)| t.strip_prefix(p).map(|r| (*op, r.trim())))
            .unwrap_or((CmpOp::Eq, t));
            let rhs = if let Ok(n) = parse_size(rest) {
                Operand::Num(n)
            } else if let Some(buf) = rest.strip_prefix("len(").and_then(|r| r.strip_suffix(')')) {
                if !ctx.buffers.contains(buf) {
                    return Err(bad(format!(
                        "buffer `{buf}` is never filled before this step"
                    )));
                }
                Operand::Len(buf.to_string())
            } else if let Some(setter) = OPERATIONS.iter().find(|o| o.sets.contains(&rest)) {
                if !ctx.vars.contains(rest) {
                    return Err(bad(format!(
                        "`{rest}` is not known before this step (run `{}` first)",
                        setter.name
                    )));
                }
                Operand::Var(rest.to_string())
            } else if ctx.vars.contains(rest) {
                Operand::Var(rest.to_string())
            } else {
                return Err(bad(format!(
                    "cannot compare with `{rest}`: use a number, a size, len(BUFFER), stop_copy_length, initial_bytes, dirty_bytes or a captured variable"
                )));
            };
            Ok(Some(Cmp { op, rhs }))
        }
    }
}
