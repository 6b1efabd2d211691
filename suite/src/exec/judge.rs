//! Judging: naming and recording steps and checks, explicit expectations
//! against what happened, and the catalogue strength of built-in checks.
#![forbid(unsafe_code)]

use std::time::Instant;

use super::*;
use crate::scenario::{Cmp, Expect, Operand, ResultExpect};

/// A check being aggregated: loops repeat the same check name.
pub(super) struct CheckAgg {
    pub record: CheckRecord,
    pub runs: u64,
    pub failures: u64,
}

/// Names the checks of one step: `as:` label or position, plus loop values.
#[derive(Debug, Clone)]
pub(crate) struct StepKey {
    pub prefix: String,
    pub loc: Option<SourceLoc>,
}

impl StepKey {
    pub fn name(&self, kind: &str) -> String {
        format!("{}-{kind}", self.prefix)
    }
}

/// One expectation outcome to record.
pub(crate) struct Check<'s> {
    pub kind: &'s str,
    pub ids: Vec<String>,
    pub strength: Strength,
    pub pass: bool,
    pub expected: String,
    pub observed: String,
    /// The output fields (`uapi::OUTPUT_FIELDS`) whose form this judges.
    pub fields: &'static [&'static str],
}

impl<'s> Check<'s> {
    /// Names the output fields this check judges the form of.
    pub fn on(self, fields: &'static [&'static str]) -> Self {
        debug_assert!(
            fields
                .iter()
                .all(|f| crate::uapi::OUTPUT_FIELDS.contains(f)),
            "{fields:?}"
        );
        Check { fields, ..self }
    }

    /// A built-in check: strength from the catalogue.
    pub fn builtin(
        kind: &'s str,
        id: &str,
        pass: bool,
        expected: String,
        observed: String,
    ) -> Self {
        Check {
            kind,
            ids: vec![id.to_string()],
            strength: strength_of(id),
            pass,
            expected,
            observed,
            fields: &[],
        }
    }

    /// A check of the step's own expectation: its IDs and strength.
    pub fn expected(
        e: &Expect,
        kind: &'s str,
        pass: bool,
        expected: String,
        observed: String,
    ) -> Self {
        Check {
            kind,
            ids: e.ids.clone(),
            strength: e.strength,
            pass,
            expected,
            observed,
            fields: &[],
        }
    }
}

/// The catalogue strength of a requirement (MUST for unknown IDs, which
/// validation rules out for scenario IDs).
pub(crate) fn strength_of(id: &str) -> Strength {
    requirements::find(id).map_or(Strength::Must, |r| r.strength)
}

pub(crate) fn ret_text(r: &Result<i64, Errno>) -> String {
    match r {
        Ok(v) => format!("returned {v}"),
        Err(e) => format!("failed with {}", errno_name(*e)),
    }
}

pub(crate) fn step_return(r: &Result<i64, Errno>) -> StepReturn {
    match r {
        Ok(v) => StepReturn::Ok(*v),
        Err(e) => StepReturn::Errno {
            name: errno_name(*e),
            errno: *e as i32,
        },
    }
}

/// What a recorded step returned, the state after it and the bytes it moved.
pub(crate) struct Returned {
    pub ret: StepReturn,
    pub state: Option<MigState>,
    pub bytes: u64,
}

impl Returned {
    pub fn of(r: &Result<i64, Errno>) -> Self {
        Returned::ret(step_return(r))
    }

    pub fn ret(ret: StepReturn) -> Self {
        Returned {
            ret,
            state: None,
            bytes: 0,
        }
    }

    pub fn in_state(self, state: Option<MigState>) -> Self {
        Returned { state, ..self }
    }

    pub fn moved(self, bytes: u64) -> Self {
        Returned { bytes, ..self }
    }
}

/// A step under way: recorded by [`Exec::record`] with what it returned.
pub(crate) struct Call {
    role: Role,
    op: &'static str,
    args: String,
    t0: Instant,
}

impl Call {
    /// Records the step with other arguments than it was announced with
    /// (what a loop found out).
    pub fn set_args(&mut self, args: String) {
        self.args = args;
    }

    /// A step recorded without announcing it first (the GET that follows
    /// a SET, a call that cannot hang).
    pub fn quiet(role: Role, op: &'static str, args: String) -> Call {
        Call {
            role,
            op,
            args,
            t0: Instant::now(),
        }
    }
}

impl Exec<'_, '_> {
    /// Announces a step, so a hang shows where it is, and starts its clock.
    pub fn start(&mut self, role: Role, op: &'static str, args: String, key: &StepKey) -> Call {
        (self.sink)(Event::StepStarted {
            index: self.step_index,
            role: role.as_str().to_string(),
            op: op.to_string(),
            args: args.clone(),
            location: key.loc.clone(),
        });
        Call::quiet(role, op, args)
    }

    /// Records a finished step.
    pub fn record(&mut self, call: Call, out: Returned, key: &StepKey) {
        let rec = StepRecord {
            index: self.step_index,
            role: call.role.as_str().to_string(),
            op: call.op.to_string(),
            args: call.args,
            ret: out.ret,
            state: out.state.map(|s| s.name().to_string()),
            bytes: out.bytes,
            start_ns: self.elapsed_ns(call.t0),
            duration_ns: nanos(call.t0.elapsed()),
            location: key.loc.clone(),
        };
        self.step_index += 1;
        (self.sink)(Event::Step(rec));
    }

    /// Start, call, record: runs `f` as one announced step and records what
    /// it says it returned.
    pub fn call<T>(
        &mut self,
        role: Role,
        op: &'static str,
        args: String,
        key: &StepKey,
        f: impl FnOnce(&mut Self) -> Result<(T, Returned), Abort>,
    ) -> Result<T, Abort> {
        let call = self.start(role, op, args, key);
        let (value, out) = f(self)?;
        self.record(call, out, key);
        Ok(value)
    }

    /// Judges a call's result by the step's `result` expectation if it has
    /// one; returns false when it has none, for the caller's built-in check.
    pub fn expected_result(
        &mut self,
        key: &StepKey,
        expect: Option<&Expect>,
        got: &Result<i64, Errno>,
    ) -> bool {
        match expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            Some((e, want)) => {
                self.check_result(key, e, want, got);
                true
            }
            None => false,
        }
    }

    /// Records a check; the same name seen again (in a loop) is merged
    /// into one record that fails if any run failed.
    pub fn check(&mut self, key: &StepKey, c: Check) {
        let verdict = if c.pass { Verdict::Pass } else { Verdict::Fail };
        if !c.pass && matches!(c.strength, Strength::Must | Strength::Should) {
            self.failed = true;
        }
        for field in c.fields {
            for id in &c.ids {
                self.judged.insert((field, id.clone()));
            }
        }
        if let Some(i) = self.check_slot(key, c.kind) {
            let agg = &mut self.checks[i];
            agg.runs += 1;
            if !c.pass {
                agg.failures += 1;
                if agg.record.verdict != Verdict::Fail {
                    agg.record.verdict = Verdict::Fail;
                    agg.record.expected = c.expected;
                    agg.record.observed = c.observed;
                    (self.sink)(Event::Check(agg.record.clone()));
                }
            }
            return;
        }
        let name = key.name(c.kind);
        let qemu = requirements::qemu_effect(&c.ids);
        let record = CheckRecord {
            name: name.clone(),
            ids: c.ids,
            strength: c.strength,
            verdict,
            expected: c.expected,
            observed: c.observed,
            location: key.loc.clone(),
            known_failure: None,
            qemu,
        };
        (self.sink)(Event::Check(record.clone()));
        self.check_index.insert(name, self.checks.len());
        self.checks.push(CheckAgg {
            record,
            runs: 1,
            failures: u64::from(!c.pass),
        });
    }

    /// [`Exec::check`] for checks that loops repeat: `build` makes the
    /// texts only when they are recorded (a first run, a failure), not for
    /// every passing repeat. `kind` and `pass` are those `build` returns.
    pub fn check_lazy<'s>(
        &mut self,
        key: &StepKey,
        kind: &str,
        pass: bool,
        build: impl FnOnce() -> Check<'s>,
    ) {
        if pass {
            if let Some(i) = self.check_slot(key, kind) {
                self.checks[i].runs += 1;
                return;
            }
        }
        let c = build();
        debug_assert!(c.kind == kind && c.pass == pass);
        self.check(key, c);
    }

    /// Where the check `kind` of `key` is aggregated, if it ran before.
    pub(super) fn check_slot(&mut self, key: &StepKey, kind: &str) -> Option<usize> {
        self.check_name.clear();
        self.check_name.push_str(&key.prefix);
        self.check_name.push('-');
        self.check_name.push_str(kind);
        self.check_index.get(self.check_name.as_str()).copied()
    }

    /// A check that could not apply on this device, with why.
    pub fn not_applicable(&mut self, key: &StepKey, kind: &str, id: &str, why: String) {
        let name = key.name(kind);
        if self.check_index.contains_key(&name) {
            return;
        }
        let record = CheckRecord {
            name,
            ids: vec![id.to_string()],
            strength: strength_of(id),
            verdict: Verdict::NotApplicable,
            expected: String::new(),
            observed: why,
            location: key.loc.clone(),
            known_failure: None,
            qemu: requirements::qemu_effect(&[id]),
        };
        (self.sink)(Event::Check(record));
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
            Check::expected(e, "result", pass, expected, ret_text(got)),
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
            Check::expected(
                e,
                kind,
                cmp.op.holds(lhs, rhs),
                format!(
                    "{kind} {cmp}{}",
                    if matches!(cmp.rhs, Operand::Num(_)) {
                        String::new()
                    } else {
                        format!(" ({rhs})")
                    }
                ),
                format!("{kind} = {lhs}"),
            ),
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
}
