//! The event stream a case emits while it runs (child process to runner, one
//! JSON object per line), and the fold that turns it into a [`CaseResult`].

use serde::{Deserialize, Serialize};

use crate::model::{
    CaseResult, CheckRecord, Grading, Outcome, SourceLoc, StepRecord, Strength, Transfer,
    V1Iteration, Verdict,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    CaseStarted {
        name: String,
        about: String,
        file: String,
        protocol: String,
        seed: Option<u64>,
    },
    /// Sent before an operation that may block, so a timeout can say where.
    StepStarted {
        index: u64,
        role: String,
        op: String,
        args: String,
        location: Option<SourceLoc>,
    },
    Step(StepRecord),
    Check(CheckRecord),
    Latency {
        arc: String,
        ns: u64,
    },
    Transfer(Transfer),
    V1Iteration(V1Iteration),
    Note {
        text: String,
    },
    /// The harness could not go on (not a driver failure).
    HarnessError {
        message: String,
    },
    CaseFinished {
        duration_ns: u64,
    },
}

/// Steps kept verbatim in a case's log: the first half and the last half of
/// this many; the rest are counted in `steps_elided`.
pub const MAX_LOGGED_STEPS: usize = 2000;

/// Folds events into a case result. The runner feeds it the child's events
/// as they arrive, so a killed child still leaves everything up to the step
/// it was stuck in.
#[derive(Debug, Clone)]
pub struct CaseFold {
    pub result: CaseResult,
    /// The last StepStarted not yet followed by its Step.
    pub in_flight: Option<String>,
    pub harness_error: Option<String>,
    pub finished: bool,
    tail: std::collections::VecDeque<StepRecord>,
}

impl CaseFold {
    pub fn new(result: CaseResult) -> CaseFold {
        CaseFold {
            result,
            in_flight: None,
            harness_error: None,
            finished: false,
            tail: std::collections::VecDeque::new(),
        }
    }

    pub fn apply(&mut self, event: Event) {
        match event {
            Event::CaseStarted {
                name,
                about,
                file,
                protocol,
                seed,
            } => {
                self.result.name = name;
                self.result.about = about;
                self.result.file = file;
                self.result.protocol = protocol;
                self.result.seed = seed;
            }
            Event::StepStarted {
                role,
                op,
                args,
                location,
                ..
            } => {
                let at = location.map(|l| format!(" at {l}")).unwrap_or_default();
                self.in_flight = Some(format!("{op} {args} on {role}{at}"));
            }
            Event::Step(step) => {
                self.in_flight = None;
                self.push_step(step);
            }
            // A check seen again (a loop merging its runs) replaces the earlier record.
            Event::Check(check) => {
                match self.result.checks.iter_mut().find(|c| c.name == check.name) {
                    Some(existing) => *existing = check,
                    None => self.result.checks.push(check),
                }
            }
            Event::Latency { arc, ns } => self.result.latencies.entry(arc).or_default().push(ns),
            Event::Transfer(t) => self.result.transfers.push(t),
            Event::V1Iteration(it) => self.result.v1_iterations.push(it),
            Event::Note { text } => self.result.notes.push(text),
            Event::HarnessError { message } => self.harness_error = Some(message),
            Event::CaseFinished { duration_ns } => {
                self.result.duration_ns = duration_ns;
                self.finished = true;
            }
        }
    }

    fn push_step(&mut self, step: StepRecord) {
        let head = MAX_LOGGED_STEPS / 2;
        if self.result.steps.len() < head {
            self.result.steps.push(step);
            return;
        }
        self.tail.push_back(step);
        if self.tail.len() > MAX_LOGGED_STEPS - head {
            self.tail.pop_front();
            self.result.steps_elided += 1;
        }
    }

    /// The case result with its outcome decided from the checks.
    pub fn finish(mut self, grading: Grading) -> CaseResult {
        self.result.steps.extend(self.tail.drain(..));
        self.result.outcome = case_outcome(&self.result.checks, grading);
        if let Some(message) = self.harness_error.take() {
            if !self.result.outcome.is_failure() {
                self.result.outcome = Outcome::Error;
            }
            self.result.reason = Some(message);
        }
        self.result
    }
}

/// A case fails on any failed MUST check; SHOULD failures warn (fail under
/// `--strict`); DF and INFO deviations are notes. Under `--consumer qemu`
/// any failed check whose rule breaks a QEMU migration fails too.
pub fn case_outcome(checks: &[CheckRecord], grading: Grading) -> Outcome {
    let failed = |s: Strength| {
        checks
            .iter()
            .any(|c| c.verdict == Verdict::Fail && c.strength == s)
    };
    if checks
        .iter()
        .any(|c| c.verdict == Verdict::Fail && grading.fails(c))
    {
        Outcome::Fail
    } else if failed(Strength::Should) {
        Outcome::Warn
    } else {
        Outcome::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{QemuEffect, StepReturn};

    fn check(strength: Strength, verdict: Verdict) -> CheckRecord {
        CheckRecord {
            name: "c".into(),
            ids: vec!["V2-FSM-03".into()],
            strength,
            verdict,
            expected: String::new(),
            observed: String::new(),
            location: None,
            known_failure: None,
            qemu: None,
        }
    }

    fn step(index: u64) -> StepRecord {
        StepRecord {
            index,
            role: "device".into(),
            op: "GET MIG_DEVICE_STATE".into(),
            args: String::new(),
            ret: StepReturn::Ok(0),
            state: Some("RUNNING".into()),
            bytes: 0,
            start_ns: index,
            duration_ns: 1,
            location: None,
        }
    }

    #[test]
    fn outcome_follows_strength() {
        use Strength::*;
        use Verdict::*;
        let plain = Grading::default();
        let strict = Grading {
            strict: true,
            consumer: None,
        };
        assert_eq!(case_outcome(&[check(Must, Pass)], plain), Outcome::Pass);
        assert_eq!(case_outcome(&[check(Must, Fail)], plain), Outcome::Fail);
        assert_eq!(case_outcome(&[check(Should, Fail)], plain), Outcome::Warn);
        assert_eq!(case_outcome(&[check(Should, Fail)], strict), Outcome::Fail);
        assert_eq!(case_outcome(&[check(Df, Fail)], strict), Outcome::Pass);
        assert_eq!(case_outcome(&[check(Info, Fail)], plain), Outcome::Pass);
        assert_eq!(
            case_outcome(&[check(Must, NotApplicable)], plain),
            Outcome::Pass
        );
    }

    #[test]
    fn consumer_qemu_fails_what_breaks_a_qemu_migration() {
        use Strength::*;
        let qemu = Grading {
            strict: false,
            consumer: Some(crate::model::Consumer::Qemu),
        };
        let with = |strength, verdict, effect| CheckRecord {
            qemu: Some(effect),
            ..check(strength, verdict)
        };
        let never = with(Should, Verdict::Fail, QemuEffect::NeverConverges);
        let harmless = with(Should, Verdict::Fail, QemuEffect::None);
        let slower = with(Df, Verdict::Fail, QemuEffect::Slower);
        let aborts_df = with(Df, Verdict::Fail, QemuEffect::Aborts);
        assert_eq!(
            case_outcome(std::slice::from_ref(&never), Grading::default()),
            Outcome::Warn
        );
        assert_eq!(
            case_outcome(std::slice::from_ref(&never), qemu),
            Outcome::Fail
        );
        assert_eq!(
            case_outcome(std::slice::from_ref(&harmless), qemu),
            Outcome::Warn
        );
        assert_eq!(case_outcome(&[slower], qemu), Outcome::Pass);
        assert_eq!(case_outcome(&[aborts_df], qemu), Outcome::Fail);
        let passed = with(Should, Verdict::Pass, QemuEffect::NeverConverges);
        assert_eq!(case_outcome(&[passed, harmless], qemu), Outcome::Warn);
    }

    #[test]
    fn long_step_logs_keep_head_and_tail() {
        let mut fold = CaseFold::new(CaseResult::new("walk", "walks/w.yaml", "v2"));
        let n = (MAX_LOGGED_STEPS + 500) as u64;
        for i in 0..n {
            fold.apply(Event::Step(step(i)));
        }
        let result = fold.finish(Grading::default());
        assert_eq!(result.steps.len(), MAX_LOGGED_STEPS);
        assert_eq!(result.steps_elided, 500);
        assert_eq!(result.steps[0].index, 0);
        assert_eq!(result.steps.last().unwrap().index, n - 1);
        assert_eq!(
            result.steps[MAX_LOGGED_STEPS / 2].index,
            (MAX_LOGGED_STEPS / 2 + 500) as u64
        );
    }

    #[test]
    fn in_flight_step_is_known_until_it_finishes() {
        let mut fold = CaseFold::new(CaseResult::new("c", "f", "v2"));
        fold.apply(Event::StepStarted {
            index: 0,
            role: "device".into(),
            op: "SET MIG_DEVICE_STATE".into(),
            args: "STOP_COPY -> PRE_COPY".into(),
            location: Some(SourceLoc {
                file: "cases/v2/x.yaml".into(),
                line: 4,
                column: 5,
            }),
        });
        assert_eq!(
            fold.in_flight.as_deref(),
            Some("SET MIG_DEVICE_STATE STOP_COPY -> PRE_COPY on device at cases/v2/x.yaml:4:5")
        );
        fold.apply(Event::Step(step(0)));
        assert_eq!(fold.in_flight, None);
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        let e = Event::Latency {
            arc: "RUNNING>STOP".into(),
            ns: 42,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(line, r#"{"event":"latency","arc":"RUNNING>STOP","ns":42}"#);
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }
}
