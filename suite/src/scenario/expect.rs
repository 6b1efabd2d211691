//! Validating a step's `expect`: only what its operation observes, with
//! known requirement IDs and a strength.

use serde_saphyr::{Location, Spanned};

use super::raw::*;
use super::validate::*;
use super::*;
use crate::requirements;
use crate::uapi;

pub(super) fn expect(ctx: &Ctx, op: &Op, e: &Spanned<RawExpect>) -> R<Expect> {
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

pub(super) fn result_expect(ctx: &Ctx, raw: &RawExpect) -> R<Option<ResultExpect>> {
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

pub(super) fn cmp(ctx: &Ctx, raw: Option<&Spanned<RawScalar>>) -> R<Option<Cmp>> {
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
