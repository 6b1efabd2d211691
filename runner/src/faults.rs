//! `vfio-migtest faults`: the score of the case catalogue against the
//! simulator's fault catalogue. Every case runs against `sim:fault=NAME`
//! for each fault, through the same one-child-per-case machinery as `run`
//! (so a hanging fault gives TIMEOUT, not a hung command); a fault is
//! detected when the results show what its [`Expected`] outcome says. The
//! clean simulator must pass every case: a finding there is a false
//! positive.
//!
//! Only against a fault that hangs are deadlines cut to `--case-timeout`:
//! there most cases wait out their deadline, so it sets the command's
//! length. Everywhere else a case ends when its work is done, which takes
//! as long as the machine needs, so it keeps the deadline `run` gives it;
//! a short cut there would turn a slow machine into false findings.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use results::{CaseResult, Grading, Outcome, Verdict};
use serde::Serialize;
use suite::device::sim::{catalogue, Expected, Fault, FaultInfo};
use suite::device::DeviceSpec;
use suite::exec::{self, DeviceCaps, RunSettings};
use suite::requirements;

use crate::case::{self, CaseSpecs, Harness, ProbeFailure};
use crate::cases::Case;
use crate::cli::FaultsArgs;
use crate::signals;
use crate::supervise::KillPolicy;
use crate::usage::Usage;

/// Checked by the runner around every case, not by a scenario step.
const RUNNER_IDS: &[&str] = &["KERNEL-01"];
/// Deadline of a case without a `timeout:` of its own where nothing hangs:
/// `run`'s default `--timeout`.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of probing a simulator or resetting it after a killed case.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a case child gets past its deadline to report on its own.
const CASE_GRACE: Duration = Duration::from_secs(1);
/// Cases named in the table per fault.
const SHOWN: usize = 3;

/// What `faults --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct FaultsReport {
    pub tool_version: String,
    pub seed: u64,
    pub case_timeout_ms: u64,
    pub cases: usize,
    pub clean: CleanScore,
    pub faults: Vec<FaultScore>,
    pub detected: usize,
    pub total: usize,
    pub requirements_covered: usize,
    pub requirements_total: usize,
    /// Requirement IDs no case cites.
    pub uncovered: Vec<String>,
    pub duration_ms: u64,
    /// The signal that stopped the command early.
    pub interrupted: Option<String>,
}

/// The clean simulator's results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanScore {
    pub passed: usize,
    pub ignored: usize,
    /// `case: outcome` of every case that did not pass (false positives).
    pub failed: Vec<String>,
}

/// One fault's score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultScore {
    pub name: String,
    pub requirement: String,
    pub expected: String,
    pub detected: bool,
    /// The cases whose results show the fault.
    pub by: Vec<String>,
    /// How many cases ended how.
    pub outcomes: BTreeMap<String, usize>,
}

fn expected_name(e: Expected) -> &'static str {
    match e {
        Expected::Fail => "fail",
        Expected::Warn => "warn",
        Expected::Note => "note",
        Expected::Pass => "pass",
        Expected::Timeout => "timeout",
    }
}

/// Whether a failed check of `r` cites `id`.
fn cites(r: &CaseResult, id: &str) -> bool {
    r.checks
        .iter()
        .any(|c| c.verdict == Verdict::Fail && c.ids.iter().any(|i| i == id))
}

fn passed(r: &CaseResult) -> bool {
    matches!(r.outcome, Outcome::Pass | Outcome::Ignored)
}

/// Decides whether the results of every case against the simulator with
/// `info`'s fault show the fault.
pub fn score(info: &FaultInfo, results: &[CaseResult]) -> FaultScore {
    let id = info.requirement;
    let names = |keep: &dyn Fn(&CaseResult) -> bool| -> Vec<String> {
        results
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.name.clone())
            .collect()
    };
    let (detected, by) = match info.expected {
        Expected::Fail => {
            let by = names(&|r| r.outcome == Outcome::Fail && cites(r, id));
            (!by.is_empty(), by)
        }
        Expected::Warn => {
            let by = names(&|r| matches!(r.outcome, Outcome::Warn | Outcome::Fail) && cites(r, id));
            (!by.is_empty(), by)
        }
        Expected::Note => {
            let by = names(&|r| cites(r, id));
            (!by.is_empty(), by)
        }
        Expected::Timeout => {
            let by = names(&|r| r.outcome == Outcome::Timeout);
            (!by.is_empty(), by)
        }
        Expected::Pass => {
            let clean = results.iter().all(passed);
            (clean, Vec::new())
        }
    };
    let mut outcomes = BTreeMap::new();
    for r in results {
        *outcomes.entry(r.outcome.as_str().to_string()).or_insert(0) += 1;
    }
    FaultScore {
        name: info.name.to_string(),
        requirement: id.to_string(),
        expected: expected_name(info.expected).to_string(),
        detected,
        by,
        outcomes,
    }
}

fn clean_score(results: &[CaseResult]) -> CleanScore {
    let mut s = CleanScore::default();
    for r in results {
        match r.outcome {
            Outcome::Pass => s.passed += 1,
            Outcome::Ignored => s.ignored += 1,
            o => s.failed.push(format!("{}: {}", r.name, o.as_str())),
        }
    }
    s
}

/// (covered, total, uncovered IDs): requirements cited by at least one case
/// or checked by the runner.
fn coverage(cases: &[Case]) -> (usize, usize, Vec<String>) {
    let cited: BTreeSet<String> = cases
        .iter()
        .flat_map(|c| c.scenario.requirement_ids())
        .chain(RUNNER_IDS.iter().map(|s| s.to_string()))
        .collect();
    let all = requirements::all();
    let uncovered: Vec<String> = all
        .iter()
        .filter(|r| !cited.contains(&r.id))
        .map(|r| r.id.clone())
        .collect();
    (all.len() - uncovered.len(), all.len(), uncovered)
}

/// The simulator a row of the score runs against.
struct Target {
    spec: DeviceSpec,
    fault: Option<&'static FaultInfo>,
}

impl Target {
    /// The deadline of `case` here: its own, cut to `case_timeout` where
    /// the fault hangs.
    fn deadline(&self, case: &Case, case_timeout: Duration) -> Duration {
        let own = case.scenario.timeout.unwrap_or(CASE_TIMEOUT);
        match self.fault {
            Some(f) if f.expected == Expected::Timeout => own.min(case_timeout),
            _ => own,
        }
    }
}

fn select(names: &[String]) -> Result<Vec<&'static FaultInfo>> {
    if names.is_empty() {
        return Ok(catalogue().iter().collect());
    }
    let mut picked: Vec<&'static FaultInfo> = Vec::new();
    for name in names {
        let fault = Fault::from_name(name).ok_or_else(|| {
            let valid: Vec<&str> = catalogue().iter().map(|f| f.name).collect();
            Usage(format!(
                "unknown simulator fault `{name}`; valid faults: {}",
                valid.join(", ")
            ))
        })?;
        if !picked.iter().any(|i| i.fault == fault) {
            picked.push(fault.info());
        }
    }
    Ok(picked)
}

/// Runs `f` on every item, `threads` at a time, stopping early on a signal;
/// `done` gets each result as it arrives (under a lock, in completion order).
fn parallel<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
    done: impl FnMut(usize, R) + Send,
) {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(done);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1).min(items.len().max(1)) {
            scope.spawn(|| loop {
                if signals::received().is_some() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { return };
                let r = f(item);
                (done.lock().unwrap_or_else(|p| p.into_inner()))(i, r);
            });
        }
    });
}

/// The probed capabilities of a target: device and incompatible peer.
type TargetCaps = Result<(DeviceCaps, Option<DeviceCaps>), String>;

fn probe_target(h: &Harness, t: &Target) -> TargetCaps {
    let caps = |spec: &DeviceSpec| match case::probe(h, spec) {
        Ok((_, caps)) => Ok(caps),
        Err(ProbeFailure::Open(m) | ProbeFailure::Wedged(m)) => Err(format!("{spec}: {m}")),
    };
    let device = caps(&t.spec)?;
    let incompatible = match t.spec.incompatible_sim() {
        Some(spec) => Some(caps(&spec)?),
        None => None,
    };
    Ok((device, incompatible))
}

/// One case on one target, or why it does not run there.
fn run_one(
    h: &Harness,
    t: &Target,
    caps: &TargetCaps,
    case: &Case,
    case_timeout: Duration,
) -> CaseResult {
    let s = &case.scenario;
    let not_run = |outcome: Outcome, reason: String| {
        let mut r = CaseResult::new(&s.name, &s.file, s.protocol.as_str());
        r.outcome = outcome;
        r.reason = Some(reason);
        r
    };
    let (device, incompatible) = match caps {
        Ok(c) => c,
        Err(why) => return not_run(Outcome::Error, why.clone()),
    };
    let settings = RunSettings {
        include_dangerous: true,
        deterministic_stream: t.spec.sim_config().is_none_or(|c| c.deterministic()),
    };
    // The destination is another simulator with the same options.
    if let Err(why) = exec::applicable(s, device, Some(device), incompatible.as_ref(), settings) {
        return not_run(Outcome::Ignored, why);
    }
    let specs = CaseSpecs {
        device: t.spec.clone(),
        destination: s.requires.destination.then(|| t.spec.clone()),
        incompatible: if s.requires.incompatible {
            t.spec.incompatible_sim()
        } else {
            None
        },
    };
    let timeout = t.deadline(case, case_timeout);
    let mut r = case::run_case(h, s, &case.text, &specs, timeout).result;
    // The score needs outcomes, checks and latencies; a long v1 drain
    // records a hundred thousand iterations.
    r.steps = Vec::new();
    r.v1_iterations = Vec::new();
    r
}

/// A finished target.
#[derive(Debug, Clone)]
enum Scored {
    Clean(CleanScore),
    Fault(FaultScore),
}

/// Scores a target from its (case index, result) pairs.
fn score_target(t: &Target, mut results: Vec<(usize, CaseResult)>) -> Scored {
    results.sort_by_key(|(c, _)| *c);
    let results: Vec<CaseResult> = results.into_iter().map(|(_, r)| r).collect();
    match t.fault {
        Some(info) => Scored::Fault(score(info, &results)),
        None => Scored::Clean(clean_score(&results)),
    }
}

/// The table's columns: fault, requirement, expected, detected, by.
struct Table {
    widths: [usize; 4],
}

impl Table {
    fn new(faults: &[&FaultInfo]) -> Table {
        let mut widths = [
            "FAULT".len(),
            "REQUIREMENT".len(),
            "EXPECTED".len(),
            "DETECTED".len(),
        ];
        for f in faults {
            widths[0] = widths[0].max(f.name.len());
            widths[1] = widths[1].max(f.requirement.len());
        }
        Table { widths }
    }

    fn line(&self, cells: [&str; 5]) -> String {
        let [a, b, c, d] = self.widths;
        format!(
            "{:a$}  {:b$}  {:c$}  {:d$}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        )
        .trim_end()
        .to_string()
    }

    fn header(&self) -> String {
        self.line(["FAULT", "REQUIREMENT", "EXPECTED", "DETECTED", "BY"])
    }

    fn row(&self, s: &FaultScore) -> String {
        let by = if s.detected {
            let mut text =
                s.by.iter()
                    .take(SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
            if s.by.len() > SHOWN {
                text.push_str(&format!(" (+{})", s.by.len() - SHOWN));
            }
            if text.is_empty() {
                text = "every case passed".into();
            }
            text
        } else {
            let outcomes: Vec<String> =
                s.outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
            format!("not shown (cases: {})", outcomes.join(", "))
        };
        let detected = if s.detected { "yes" } else { "NO" };
        self.line([&s.name, &s.requirement, &s.expected, detected, &by])
    }
}

/// Runs `faults`; returns the exit code.
pub fn faults(args: &FaultsArgs) -> Result<i32> {
    let started = Instant::now();
    let selected = select(&args.faults)?;
    let cases = crate::load_or_report(args.cases.as_deref())?;
    signals::install().context("cannot set up SIGINT/SIGTERM handling")?;
    let threads = match args.test_threads {
        Some(n) => n.get(),
        None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
    };
    let h = Harness {
        exe: std::env::current_exe().context("cannot find this program's path")?,
        seed: args.seed,
        buffer_size: 1 << 20,
        arc_latency_limit: suite::exec::ARC_LATENCY_LIMIT,
        downtime_budget: suite::exec::DOWNTIME_BUDGET,
        include_dangerous: true,
        grading: Grading::default(),
        kill: KillPolicy::default(),
        device_timeout: DEVICE_TIMEOUT,
        grace: CASE_GRACE,
        progress: crate::progress::Progress::default(),
    };
    let targets: Vec<Target> = std::iter::once(Target {
        spec: DeviceSpec::Sim(String::new()),
        fault: None,
    })
    .chain(selected.iter().map(|f| Target {
        spec: DeviceSpec::Sim(format!("fault={}", f.name)),
        fault: Some(f),
    }))
    .collect();
    let table = Table::new(&selected);
    if !args.json {
        println!(
            "vfio-migtest {}: {} fault(s) x {} case(s), {threads} at a time, case timeout {} where a fault hangs, seed {}",
            env!("CARGO_PKG_VERSION"),
            selected.len(),
            cases.len(),
            humantime::format_duration(args.case_timeout),
            args.seed
        );
        println!("{}", table.header());
    }

    let mut caps: Vec<Option<TargetCaps>> = vec![None; targets.len()];
    parallel(
        threads,
        &targets,
        |t| probe_target(&h, t),
        |i, c| caps[i] = Some(c),
    );
    let jobs: Vec<(usize, usize)> = (0..targets.len())
        .flat_map(|t| (0..cases.len()).map(move |c| (t, c)))
        .collect();
    // A target is scored as soon as its cases are done and its results
    // dropped; rows are printed in catalogue order.
    let mut partial: Vec<Vec<(usize, CaseResult)>> = vec![Vec::new(); targets.len()];
    let mut left: Vec<usize> = vec![cases.len(); targets.len()];
    let mut scored: Vec<Option<Scored>> = vec![None; targets.len()];
    let mut printed = 0;
    parallel(
        threads,
        &jobs,
        |&(t, c)| {
            let tc = caps[t].as_ref()?;
            Some(run_one(&h, &targets[t], tc, &cases[c], args.case_timeout))
        },
        |i, r| {
            let (t, c) = jobs[i];
            if let Some(r) = r {
                partial[t].push((c, r));
            }
            left[t] -= 1;
            if left[t] == 0 {
                scored[t] = Some(score_target(&targets[t], std::mem::take(&mut partial[t])));
            }
            while let Some(Some(done)) = scored.get(printed) {
                if let (Scored::Fault(f), false) = (done, args.json) {
                    println!("{}", table.row(f));
                }
                printed += 1;
            }
        },
    );
    let interrupted = signals::received();
    // After a signal, the targets that did not finish count what ran.
    for (t, slot) in scored.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(score_target(&targets[t], std::mem::take(&mut partial[t])));
        }
    }
    let mut clean = CleanScore::default();
    let mut scores = Vec::new();
    for s in scored.into_iter().flatten() {
        match s {
            Scored::Clean(c) => clean = c,
            Scored::Fault(f) => scores.push(f),
        }
    }
    let detected = scores.iter().filter(|s| s.detected).count();
    let (covered, total_reqs, uncovered) = coverage(&cases);
    let report = FaultsReport {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        seed: args.seed,
        case_timeout_ms: u64::try_from(args.case_timeout.as_millis()).unwrap_or(u64::MAX),
        cases: cases.len(),
        clean,
        detected,
        total: scores.len(),
        faults: scores,
        requirements_covered: covered,
        requirements_total: total_reqs,
        uncovered,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        interrupted: interrupted.map(|s| s.to_string()),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serialising the score")?
        );
    } else {
        print!("{}", summary(&report));
    }
    Ok(match interrupted {
        Some(sig) => signals::exit_code(sig),
        None if report.detected == report.total && report.clean.failed.is_empty() => 0,
        None => 1,
    })
}

/// The lines after the table; the last two are the score.
fn summary(r: &FaultsReport) -> String {
    let mut out = String::new();
    if let Some(sig) = &r.interrupted {
        out += &format!("interrupted ({sig}): the score covers the cases that ran\n");
    }
    let c = &r.clean;
    if c.failed.is_empty() {
        out += &format!(
            "clean simulator: {} passed, {} ignored, no false positive\n",
            c.passed, c.ignored
        );
    } else {
        out += &format!(
            "clean simulator: FALSE POSITIVES in {} case(s): {}\n",
            c.failed.len(),
            c.failed.join(", ")
        );
    }
    if !r.uncovered.is_empty() {
        out += &format!("no case cites: {}\n", r.uncovered.join(", "));
    }
    out += &format!("finished in {:.1}s\n", r.duration_ms as f64 / 1000.0);
    out += &format!("detected: {}/{}\n", r.detected, r.total);
    out += &format!(
        "requirements covered: {}/{}\n",
        r.requirements_covered, r.requirements_total
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use results::{CheckRecord, Strength};

    fn case(name: &str, outcome: Outcome, failed_ids: &[&str]) -> CaseResult {
        let mut r = CaseResult::new(name, "v2/x.yaml", "v2");
        r.outcome = outcome;
        for id in failed_ids {
            r.checks.push(CheckRecord {
                name: "c".into(),
                ids: vec![id.to_string()],
                strength: Strength::Must,
                verdict: Verdict::Fail,
                expected: String::new(),
                observed: String::new(),
                location: None,
                known_failure: None,
                qemu: None,
            });
        }
        r
    }

    fn info(name: &str) -> &'static FaultInfo {
        Fault::from_name(name).unwrap().info()
    }

    #[test]
    fn fail_needs_a_failed_case_citing_the_requirement() {
        let f = info("enomsg-in-stop-copy");
        let s = score(
            f,
            &[
                case("a", Outcome::Pass, &[]),
                case("b", Outcome::Fail, &["V2-SAVE-02"]),
                case("c", Outcome::Fail, &["V2-FSM-03"]),
            ],
        );
        assert!(s.detected);
        assert_eq!(s.by, ["b"]);
        assert_eq!(s.outcomes.get("fail"), Some(&2));
        // A failure that cites another rule does not count, nor does a warning.
        let s = score(
            f,
            &[
                case("c", Outcome::Fail, &["V2-FSM-03"]),
                case("d", Outcome::Warn, &["V2-SAVE-02"]),
            ],
        );
        assert!(!s.detected);
    }

    #[test]
    fn warn_and_note_accept_what_their_strength_produces() {
        let warn = info("zero-at-end-of-precopy");
        assert!(score(warn, &[case("p", Outcome::Warn, &["V2-PRECOPY-06"])]).detected);
        assert!(score(warn, &[case("p", Outcome::Fail, &["V2-PRECOPY-06"])]).detected);
        assert!(!score(warn, &[case("p", Outcome::Pass, &[])]).detected);
        let note = info("precopy-flags-echoed");
        assert!(score(note, &[case("i", Outcome::Pass, &["V2-PRECOPY-09"])]).detected);
        assert!(!score(note, &[case("i", Outcome::Pass, &["V2-PRECOPY-05"])]).detected);
    }

    #[test]
    fn timeouts() {
        let hang = info("hang-read");
        assert!(score(hang, &[case("a", Outcome::Timeout, &["KERNEL-02"])]).detected);
        assert!(!score(hang, &[case("a", Outcome::Fail, &["KERNEL-02"])]).detected);
    }

    #[test]
    fn clean_results_list_false_positives() {
        let s = clean_score(&[
            case("a", Outcome::Pass, &[]),
            case("b", Outcome::Ignored, &[]),
            case("c", Outcome::Timeout, &[]),
        ]);
        assert_eq!((s.passed, s.ignored), (1, 1));
        assert_eq!(s.failed, ["c: timeout"]);
    }

    #[test]
    fn the_builtin_catalogue_covers_every_requirement() {
        let cases = crate::cases::load(None).unwrap();
        let (covered, total, uncovered) = coverage(&cases);
        assert_eq!(total, requirements::all().len());
        assert_eq!((covered, uncovered), (total, Vec::<String>::new()));
        let (covered, _, uncovered) = coverage(&cases[..1]);
        assert!(covered < total && uncovered.len() == total - covered);
    }

    #[test]
    fn only_hanging_faults_cut_the_deadline() {
        let cases = crate::cases::load(None).unwrap();
        let case = |name: &str| cases.iter().find(|c| c.scenario.name == name).unwrap();
        let (walk, fresh) = (case("walk"), case("fresh-device"));
        let target = |fault: Option<&str>| Target {
            spec: DeviceSpec::Sim(String::new()),
            fault: fault.map(info),
        };
        let cut = Duration::from_secs(3);
        let own = walk.scenario.timeout.unwrap();
        assert!(own > cut);
        assert_eq!(fresh.scenario.timeout, None);
        for t in [target(None), target(Some("slow-transition"))] {
            assert_eq!(t.deadline(walk, cut), own);
            assert_eq!(t.deadline(fresh, cut), CASE_TIMEOUT);
        }
        for t in [target(Some("hang-read")), target(Some("hang-transition"))] {
            assert_eq!(t.deadline(walk, cut), cut);
            assert_eq!(t.deadline(fresh, cut), cut);
            assert_eq!(t.deadline(walk, own * 2), own);
        }
    }

    #[test]
    fn faults_are_selected_by_name() {
        assert_eq!(select(&[]).unwrap().len(), catalogue().len());
        let picked = select(&["hang-read".into(), "hang-read".into()]).unwrap();
        assert_eq!(picked.len(), 1);
        let e = select(&["nope".into()]).unwrap_err();
        assert!(e.downcast_ref::<Usage>().is_some());
        assert!(e.to_string().contains("`nope`") && e.to_string().contains("hang-read"));
    }

    #[test]
    fn table_rows_line_up_and_say_what_was_seen() {
        let faults = [info("hang-read"), info("enomsg-in-stop-copy")];
        let t = Table::new(&faults);
        let yes = score(
            faults[1],
            &(0..5)
                .map(|i| case(&format!("c{i}"), Outcome::Fail, &["V2-SAVE-02"]))
                .collect::<Vec<_>>(),
        );
        let no = score(faults[0], &[case("a", Outcome::Pass, &[])]);
        let header = t.header();
        let row = t.row(&yes);
        assert_eq!(header.find("DETECTED"), row.find("yes"));
        assert!(row.ends_with("c0, c1, c2 (+2)"), "{row}");
        let row = t.row(&no);
        assert!(
            row.contains("NO") && row.ends_with("not shown (cases: 1 pass)"),
            "{row}"
        );
    }

    #[test]
    fn parallel_hands_every_result_over_with_its_index() {
        let mut seen = Vec::new();
        parallel(3, &[1, 2, 3, 4, 5], |x| x * 10, |i, r| seen.push((i, r)));
        seen.sort_unstable();
        assert_eq!(seen, [(0, 10), (1, 20), (2, 30), (3, 40), (4, 50)]);
    }
}
