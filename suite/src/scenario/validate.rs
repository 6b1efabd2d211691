//! From the file as written to executable steps: every name resolved, every
//! size parsed, every reference checked, with the location of what is wrong.
//! An operation's arguments are checked in `args.rs`, its `expect` in
//! `expect.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::args::op_args;
use super::expect::expect;
use super::raw::*;
use super::*;
use crate::uapi::{MigState, VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY};

/// No case may ask for a deadline longer than this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) protocol: Protocol,
    pub(super) requires: &'a Requires,
    /// `for_each` variables in scope.
    pub(super) loop_vars: Vec<String>,
    /// Buffers filled so far (by `read into`, `save`, `v1_save`).
    pub(super) buffers: BTreeSet<String>,
    /// Variables captured so far (`read_field into`, built-ins once set).
    pub(super) vars: BTreeSet<String>,
}

pub(super) type R<T> = Result<T, LoadError>;

impl Ctx<'_> {
    pub(super) fn err(&self, at: &Location, message: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file.to_string(),
            line: at.line().max(1),
            column: at.column().max(1),
            message: message.into(),
            snippet: None,
        }
    }

    pub(super) fn loc(&self, at: &Location) -> SourceLoc {
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

pub(super) fn requires(ctx: &Ctx, r: &Spanned<RawRequires>) -> R<(Protocol, Requires)> {
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
            dma_writes: raw.dma_writes,
            deterministic_stream: raw.deterministic_stream,
            precopy_info_v2: raw.precopy_info_v2,
            without_v2: raw.without_v2,
        },
    ))
}

pub(super) fn timeout(ctx: &Ctx, t: &Spanned<String>) -> R<Duration> {
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

pub(super) fn steps(ctx: &mut Ctx, raw: &[Spanned<RawStep>]) -> R<Vec<Step>> {
    raw.iter().map(|s| step(ctx, s)).collect()
}

pub(super) fn step(ctx: &mut Ctx, s: &Spanned<RawStep>) -> R<Step> {
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

pub(super) fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) fn role(ctx: &Ctx, on: &Spanned<String>) -> R<Role> {
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
pub(super) fn check_protocol(ctx: &Ctx, op: &Op, at: &Location) -> R<()> {
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

pub(super) fn size(ctx: &Ctx, s: &Spanned<RawSize>) -> R<u64> {
    match &s.value {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(t) => parse_size(t).map_err(|m| ctx.err(&s.referenced, m)),
    }
}

/// An optional size, or `default` when the file leaves it out.
pub(super) fn opt_size(ctx: &Ctx, s: Option<&Spanned<RawSize>>, default: u64) -> R<u64> {
    s.map_or(Ok(default), |s| size(ctx, s))
}

pub(super) fn chunk(ctx: &Ctx, s: Option<&Spanned<RawSize>>, default: u64) -> R<u64> {
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
pub(super) const MAX_CHUNK: u64 = 1 << 30;
/// The default buffer for streaming reads and writes.
pub const DEFAULT_CHUNK: u64 = 1 << 20;

pub(super) fn state_ref(ctx: &Ctx, s: &Spanned<RawScalar>) -> R<StateRef> {
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

pub(super) fn buffer_name(ctx: &Ctx, s: &Spanned<String>) -> R<String> {
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

pub(super) fn used_buffer(ctx: &Ctx, s: &Spanned<String>) -> R<String> {
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

pub(super) fn op(ctx: &mut Ctx, raw: &Spanned<RawOp>) -> R<Op> {
    let op = op_args(ctx, raw)?;
    ctx.vars
        .extend(op.info().sets.iter().map(|v| v.to_string()));
    Ok(op)
}
