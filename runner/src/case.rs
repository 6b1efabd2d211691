//! The runner's side of a child: probing a device, running one case,
//! restoring a device; each under a deadline, turning whatever happened
//! (a finished case, a hang, a crash, a device that cannot be killed free)
//! into a typed result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use results::{CaseFold, CaseResult, CheckRecord, Event, Grading, Outcome, Strength, Verdict};
use suite::device::{DeviceDescription, DeviceSpec};
use suite::exec::DeviceCaps;
use suite::scenario::Scenario;

use crate::progress::Progress;
use crate::protocol::ChildLine;
use crate::supervise::{ChildProc, KillPolicy, Next, Termination};

/// What every child of a run shares.
#[derive(Debug, Clone)]
pub struct Harness {
    /// This binary, re-executed for each child.
    pub exe: PathBuf,
    pub seed: u64,
    pub buffer_size: usize,
    pub arc_latency_limit: Duration,
    pub downtime_budget: Duration,
    pub include_dangerous: bool,
    /// `--strict` and `--consumer`.
    pub grading: Grading,
    pub kill: KillPolicy,
    /// Deadline of a probe or a restore.
    pub device_timeout: Duration,
    /// Time a case child gets past its deadline to report its own
    /// timeouts (the executor stops waiting at the deadline itself).
    pub grace: Duration,
    /// The terminal's progress line (off unless stderr is a terminal).
    pub progress: Progress,
}

/// The devices of one case, by spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseSpecs {
    pub device: DeviceSpec,
    pub destination: Option<DeviceSpec>,
    pub incompatible: Option<DeviceSpec>,
}

impl CaseSpecs {
    /// Only simulated devices: nothing the case does can hang a kernel, so
    /// dangerous steps run without --include-dangerous.
    pub fn all_simulated(&self) -> bool {
        self.roles().iter().all(|(_, s)| s.is_sim())
    }

    /// (role, spec) of every device the case uses.
    pub fn roles(&self) -> Vec<(&'static str, &DeviceSpec)> {
        let mut v = vec![("device", &self.device)];
        if let Some(d) = &self.destination {
            v.push(("destination", d));
        }
        if let Some(i) = &self.incompatible {
            v.push(("incompatible", i));
        }
        v
    }
}

/// A case as it ended, and the devices it left wedged.
#[derive(Debug)]
pub struct CaseRun {
    pub result: CaseResult,
    /// (spec, why): devices no later case may use.
    pub wedged: Vec<(DeviceSpec, String)>,
}

/// Why a device cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// Opening failed; the message says what to do.
    Open(String),
    /// The probe hung or failed in a way that leaves the device unusable.
    Wedged(String),
}

fn command(h: &Harness, sub: &str) -> Command {
    let mut cmd = Command::new(&h.exe);
    cmd.arg(sub);
    cmd
}

/// Lines of a probe or restore child until it ends or the deadline passes.
struct Collected {
    lines: Vec<ChildLine>,
    /// Set when the child had to be stopped.
    stopped: Option<Termination>,
    /// Problems: unreadable lines, stderr, exit status.
    trouble: Vec<String>,
}

fn collect(h: &Harness, cmd: Command) -> Collected {
    let deadline = Instant::now() + h.device_timeout;
    let mut out = Collected {
        lines: Vec::new(),
        stopped: None,
        trouble: Vec::new(),
    };
    let mut child = match ChildProc::spawn(cmd, None) {
        Ok(c) => c,
        Err(e) => {
            out.trouble
                .push(format!("cannot start {}: {e}", h.exe.display()));
            return out;
        }
    };
    loop {
        match child.next_line(deadline) {
            Ok(Next::Line(l)) => match ChildLine::parse(&l) {
                Ok(line) => out.lines.push(line),
                Err(e) => out.trouble.push(e),
            },
            Ok(Next::Eof) => break,
            Ok(Next::Deadline) => {
                out.stopped = Some(child.terminate(h.kill));
                return out;
            }
            Err(e) => {
                out.trouble.push(format!("reading the child process: {e}"));
                break;
            }
        }
    }
    match child.wait_until(deadline) {
        Ok(Some(status)) if !status.success() => {
            out.trouble.push(format!("exited with {status}"));
        }
        Ok(Some(_)) => {}
        Ok(None) => out.stopped = Some(child.terminate(h.kill)),
        Err(e) => out
            .trouble
            .push(format!("waiting for the child process: {e}")),
    }
    let stderr = child.stderr_tail();
    if !stderr.is_empty() {
        out.trouble.push(stderr);
    }
    out
}

/// Opens `spec` in a child and asks what it supports.
pub fn probe(
    h: &Harness,
    spec: &DeviceSpec,
) -> Result<(DeviceDescription, DeviceCaps), ProbeFailure> {
    let mut cmd = command(h, "__probe");
    cmd.arg("--device").arg(spec.to_string());
    let c = collect(h, cmd);
    if let Some(t) = c.stopped {
        return Err(ProbeFailure::Wedged(stuck_message(
            "probing it",
            t,
            h.device_timeout,
        )));
    }
    for line in c.lines {
        match line {
            ChildLine::Probed { description, caps } => return Ok((description, caps)),
            ChildLine::OpenFailed { message, .. } => return Err(ProbeFailure::Open(message)),
            _ => {}
        }
    }
    Err(ProbeFailure::Open(format!(
        "{spec}: probing failed: {}",
        c.trouble.join("; ")
    )))
}

/// Resets `spec` in a child and checks it is RUNNING again.
pub fn restore(h: &Harness, spec: &DeviceSpec, protocol: &str) -> Result<(), String> {
    let mut cmd = command(h, "__restore");
    cmd.arg("--device")
        .arg(spec.to_string())
        .arg("--protocol")
        .arg(protocol);
    let c = collect(h, cmd);
    if let Some(t) = c.stopped {
        return Err(stuck_message("the reset", t, h.device_timeout));
    }
    for line in c.lines {
        match line {
            ChildLine::Restored { error: None, .. } => return Ok(()),
            ChildLine::Restored { error: Some(e), .. } => return Err(e),
            ChildLine::OpenFailed { message, .. } => return Err(message),
            _ => {}
        }
    }
    Err(format!(
        "the restore process failed: {}",
        c.trouble.join("; ")
    ))
}

fn stuck_message(what: &str, t: Termination, limit: Duration) -> String {
    let limit = humantime::format_duration(limit);
    match t {
        Termination::Unkillable => format!(
            "{what} did not finish within {limit} and the process could not be killed: it is stuck in the kernel"
        ),
        _ => format!("{what} did not finish within {limit}"),
    }
}

/// Where the case child stands.
enum Phase {
    /// Before `CaseFinished`: the case deadline applies.
    Case,
    /// After it: the child restores its devices under the device timeout.
    Restore,
    /// SIGINT or SIGTERM reached the runner: the case is cut.
    Interrupted,
}

/// How often a running case looks for SIGINT/SIGTERM to the runner.
const SIGNAL_POLL: Duration = Duration::from_millis(200);
/// After a signal, how long the reset of the case's devices may take: a
/// lab's watchdog gives 10 to 30 s before SIGKILL.
const INTERRUPTED_RESTORE: Duration = Duration::from_secs(5);

/// Runs `scenario` (whose file text is `text`) in a child under `timeout`.
pub fn run_case(
    h: &Harness,
    scenario: &Scenario,
    text: &str,
    specs: &CaseSpecs,
    timeout: Duration,
) -> CaseRun {
    let start = Instant::now();
    let mut fold = CaseFold::new(CaseResult::new(
        &scenario.name,
        &scenario.file,
        scenario.protocol.as_str(),
    ));
    fold.result.about = scenario.about.clone();
    let mut cmd = command(h, "__case");
    cmd.arg("--device").arg(specs.device.to_string());
    if let Some(d) = &specs.destination {
        cmd.arg("--destination").arg(d.to_string());
    }
    if let Some(i) = &specs.incompatible {
        cmd.arg("--incompatible").arg(i.to_string());
    }
    cmd.arg("--file")
        .arg(&scenario.file)
        .arg("--seed")
        .arg(h.seed.to_string())
        .arg("--timeout")
        .arg(format!("{}ms", timeout.as_millis()))
        .arg("--buffer-size")
        .arg(h.buffer_size.to_string())
        .arg("--arc-latency-limit")
        .arg(format!("{}ms", h.arc_latency_limit.as_millis()))
        .arg("--downtime-budget")
        .arg(format!("{}ms", h.downtime_budget.as_millis()));
    if h.include_dangerous || specs.all_simulated() {
        cmd.arg("--include-dangerous");
    }
    let mut child = match ChildProc::spawn(cmd, Some(text.as_bytes())) {
        Ok(c) => c,
        Err(e) => {
            let mut result = fold.finish(h.grading);
            result.outcome = Outcome::Error;
            result.reason = Some(format!("cannot start {}: {e}", h.exe.display()));
            return CaseRun {
                result,
                wedged: Vec::new(),
            };
        }
    };

    let mut shown = h.progress.case(&scenario.name);
    let mut phase = Phase::Case;
    let mut deadline = start + timeout + h.grace;
    let mut open_failed: Option<String> = None;
    let mut restored: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut trouble: Vec<String> = Vec::new();
    let mut overran: Option<Phase> = None;
    loop {
        match child.next_line(deadline.min(Instant::now() + SIGNAL_POLL)) {
            Ok(Next::Deadline) if Instant::now() < deadline => {
                if crate::signals::received().is_some() {
                    overran = Some(Phase::Interrupted);
                    break;
                }
            }
            Ok(Next::Line(l)) => match ChildLine::parse(&l) {
                Ok(ChildLine::Event(e)) => {
                    shown.event(&e);
                    let finished = matches!(e, Event::CaseFinished { .. });
                    fold.apply(e);
                    if finished {
                        phase = Phase::Restore;
                        deadline = Instant::now() + h.device_timeout;
                    }
                }
                Ok(ChildLine::OpenFailed { message, .. }) => open_failed = Some(message),
                Ok(ChildLine::Restored { role, error }) => {
                    restored.insert(role, error);
                }
                Ok(ChildLine::Probed { .. }) => {}
                Ok(other) => {
                    trouble.push(format!("unexpected line from the case process: {other:?}"))
                }
                Err(e) => trouble.push(e),
            },
            Ok(Next::Eof) => break,
            Ok(Next::Deadline) => {
                overran = Some(phase);
                break;
            }
            Err(e) => {
                trouble.push(format!("reading the case process: {e}"));
                break;
            }
        }
    }
    let mut termination = None;
    let interrupted = matches!(overran, Some(Phase::Interrupted));
    let h = &Harness {
        device_timeout: if interrupted {
            INTERRUPTED_RESTORE.min(h.device_timeout)
        } else {
            h.device_timeout
        },
        ..h.clone()
    };
    if overran.is_none() {
        // Stdout closed: the child is exiting; a few seconds at most.
        match child.wait_until(Instant::now() + h.kill.kill_grace) {
            Ok(Some(status)) if !status.success() && open_failed.is_none() => {
                trouble.push(format!("the case process exited with {status}"));
            }
            Ok(Some(_)) => {}
            Ok(None) => termination = Some(child.terminate(h.kill)),
            Err(e) => trouble.push(format!("waiting for the case process: {e}")),
        }
    } else {
        termination = Some(child.terminate(h.kill));
    }
    let stderr = child.stderr_tail();

    let stuck_in = fold.in_flight.clone();
    let finished = fold.finished;
    let mut result = fold.finish(h.grading);
    if result.duration_ns == 0 {
        result.duration_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    }
    if let Some(message) = &open_failed {
        result.outcome = Outcome::Error;
        result.reason = Some(message.clone());
    } else if interrupted {
        result.outcome = Outcome::Error;
        let signal = crate::signals::received().map_or("a signal".into(), |s| s.to_string());
        result.reason = Some(match &stuck_in {
            Some(step) => format!("interrupted ({signal}) while running {step}: the case was cut"),
            None => format!("interrupted ({signal}): the case was cut"),
        });
        result.stuck_in = stuck_in.clone();
    } else if matches!(overran, Some(Phase::Case)) {
        result.outcome = Outcome::Timeout;
        result.stuck_in = stuck_in.clone();
        let limit = humantime::format_duration(timeout);
        result.reason = Some(match &stuck_in {
            Some(step) => format!("did not finish within {limit}: stuck in {step}"),
            None => format!("did not finish within {limit}"),
        });
        result.checks.push(deadline_check(&stuck_in, timeout));
    } else if !finished {
        result.outcome = Outcome::Error;
        let mut why = result
            .reason
            .take()
            .unwrap_or_else(|| "the case process ended before the case finished".into());
        for t in trouble.iter().chain(std::iter::once(&stderr)) {
            if !t.is_empty() {
                why.push_str("; ");
                why.push_str(t);
            }
        }
        result.reason = Some(why);
    } else if !trouble.is_empty() {
        result.notes.extend(trouble.iter().cloned());
    }
    if matches!(overran, Some(Phase::Restore)) {
        result.notes.push(format!(
            "the reset after the case did not finish within {}",
            humantime::format_duration(h.device_timeout)
        ));
    }

    let mut wedged = Vec::new();
    if termination == Some(Termination::Unkillable) {
        let at = stuck_in.map(|s| format!(" in {s}")).unwrap_or_default();
        let reason = format!(
            "the process of case {} is stuck in the kernel{at} and could not be killed",
            scenario.name
        );
        for (_, spec) in specs.roles() {
            wedged.push((spec.clone(), reason.clone()));
        }
    } else if open_failed.is_none() {
        let killed = termination.is_some();
        for (role, spec) in specs.roles() {
            let own = restored.get(role);
            if let Some(Some(e)) = own {
                result
                    .notes
                    .push(format!("reset of the {role} after the case failed: {e}"));
            }
            if killed || !matches!(own, Some(None)) {
                if let Err(e) = restore(h, spec, scenario.protocol.as_str()) {
                    wedged.push((
                        spec.clone(),
                        format!(
                            "could not be brought back to RUNNING after case {}: {e}",
                            scenario.name
                        ),
                    ));
                }
            }
        }
    }
    CaseRun { result, wedged }
}

/// KERNEL-02: an operation blocked past the case's deadline.
fn deadline_check(stuck_in: &Option<String>, timeout: Duration) -> CheckRecord {
    CheckRecord {
        name: "deadline".into(),
        ids: vec!["KERNEL-02".into()],
        strength: Strength::Must,
        verdict: Verdict::Fail,
        expected: format!(
            "every operation returns before the case deadline ({})",
            humantime::format_duration(timeout)
        ),
        observed: match stuck_in {
            Some(step) => format!("still blocked in {step}"),
            None => "the case was still running".into(),
        },
        location: None,
        known_failure: None,
        qemu: suite::requirements::qemu_effect(&["KERNEL-02"]),
    }
}
