//! `vfio-migtest run`: probe the devices, one libtest-mimic trial per case
//! and device, each case in its own child process, results written as they
//! come and rendered at the end.
//!
//! Trials are named `<case>` on the first device and `<device-slug>::<case>`
//! on the others (the slug of the spec as given: `sim-v1::fsm-every-arc`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use libtest_mimic::{Completion, Failed, Trial};
use reports::summary::CheckStatus;
use results::{
    CaseResult, Consumer, DeviceResults, Grading, Outcome, RunMeta, RunResults, Verdict,
};
use serde::Deserialize;
use suite::device::{DeviceDescription, DeviceSpec};
use suite::exec::{self, DeviceCaps, RunSettings};

use crate::case::{self, CaseSpecs, Harness, ProbeFailure};
use crate::cases::{self, Case};
use crate::cli::{split_device_list, Format, RunArgs};
use crate::expect::{self, Expectations};
use crate::kmsg::{self, KmsgWatch};
use crate::output::{self, Journal, JournalLine};
use crate::progress::Progress;
use crate::supervise::KillPolicy;
use crate::usage::Usage;
use crate::{render, signals};

/// Deadline of probing or restoring a device.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a case child gets past its deadline to report on its own.
const CASE_GRACE: Duration = Duration::from_secs(2);

/// A device profile (`--profile`): what the suite cannot ask a real device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    /// Two saves of an unchanged device give the same bytes.
    #[serde(default = "yes")]
    deterministic_stream: bool,
}

fn yes() -> bool {
    true
}

fn load_profile(path: &Path) -> Result<Profile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the profile {}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| {
        Usage(format!(
            "{}: {}",
            path.display(),
            e.to_string().lines().next().unwrap_or("")
        ))
        .into()
    })
}

/// The devices to test: `--device`, else `VFIO_MIGTEST_DEVICES`, else `sim`.
fn device_specs(args: &RunArgs) -> Result<Vec<DeviceSpec>> {
    let mut specs = args.devices.clone();
    if specs.is_empty() {
        if let Ok(list) = std::env::var("VFIO_MIGTEST_DEVICES") {
            specs = split_device_list(&list).map_err(Usage)?;
        }
    }
    if specs.is_empty() {
        specs.push(DeviceSpec::Sim(String::new()));
    }
    let mut seen = BTreeSet::new();
    for spec in &specs {
        if !seen.insert(spec) {
            bail!(Usage(format!("device `{spec}` is given twice")));
        }
    }
    Ok(specs)
}

/// The destination of `spec`'s two-device cases.
fn destination_for(args: &RunArgs, spec: &DeviceSpec) -> Option<DeviceSpec> {
    args.destination
        .clone()
        .or_else(|| spec.is_sim().then(|| spec.clone()))
}

/// The device of another type for `spec`'s incompatible-stream cases: for
/// the simulator, the same options with another `type=`.
fn incompatible_for(args: &RunArgs, spec: &DeviceSpec) -> Option<DeviceSpec> {
    args.incompatible
        .clone()
        .or_else(|| spec.incompatible_sim())
}

/// Whether `spec`'s streams repeat byte for byte: the simulator says so
/// itself, real devices through `--profile`.
fn deterministic(spec: &DeviceSpec, profile: &Profile) -> bool {
    match spec.sim_config() {
        Some(c) => c.deterministic(),
        None => profile.deterministic_stream,
    }
}

fn trial_name(device_index: usize, spec: &DeviceSpec, case: &str) -> String {
    if device_index == 0 {
        case.to_string()
    } else {
        format!("{}::{case}", reports::summary::slug(&spec.to_string()))
    }
}

fn libtest_args(args: &RunArgs, threads: usize) -> libtest_mimic::Arguments {
    let mut a = libtest_mimic::Arguments {
        filter: args.filter.clone(),
        exact: args.exact,
        skip: args.skip.clone(),
        list: args.list,
        ignored: args.ignored,
        include_ignored: args.include_ignored || args.include_dangerous,
        quiet: args.quiet,
        test_threads: Some(threads),
        ..libtest_mimic::Arguments::default()
    };
    a.format = Some(match args.format {
        Format::Pretty | Format::Ktap => libtest_mimic::FormatSetting::Pretty,
        Format::Terse => libtest_mimic::FormatSetting::Terse,
        Format::Json => libtest_mimic::FormatSetting::Json,
    });
    a
}

/// One trial: a case on a device, and what is known before it runs.
struct Plan {
    name: String,
    device: usize,
    case: usize,
    specs: CaseSpecs,
    /// Not run, with why (not applicable, device unusable, dangerous).
    ignore: Option<String>,
    /// Cannot run: the device is wedged.
    error: Option<String>,
    dangerous: bool,
}

type Probed = Result<(DeviceDescription, DeviceCaps), ProbeFailure>;

/// Everything the trials share.
struct Ctx {
    harness: Harness,
    cases: Vec<Case>,
    plans: Vec<Plan>,
    device_specs: Vec<DeviceSpec>,
    default_timeout: Duration,
    results: Mutex<Vec<Option<CaseResult>>>,
    /// spec -> why no case may use it any more.
    wedged: Mutex<BTreeMap<DeviceSpec, String>>,
    /// One lock per real device: it never runs two cases at once.
    locks: BTreeMap<DeviceSpec, Mutex<()>>,
    journal: Journal,
    journal_failed: AtomicBool,
    /// Whether /dev/kmsg can be watched, else why not.
    kmsg: Result<(), String>,
    expectations: Expectations,
    /// The devices as probed, which expectations files match against.
    devices: Vec<DeviceResults>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    fn new_result(&self, i: usize) -> CaseResult {
        let s = &self.cases[self.plans[i].case].scenario;
        let mut r = CaseResult::new(&s.name, &s.file, s.protocol.as_str());
        r.about = s.about.clone();
        r
    }

    fn run_trial(&self, i: usize) -> Result<Completion, Failed> {
        let plan = &self.plans[i];
        if let Some(reason) = interrupted() {
            return self.finish(i, self.not_run(i, Outcome::Ignored, reason));
        }
        if let Some(reason) = &plan.ignore {
            return self.finish(i, self.not_run(i, Outcome::Ignored, reason.clone()));
        }
        if let Some(reason) = &plan.error {
            return self.finish(i, self.not_run(i, Outcome::Error, reason.clone()));
        }
        // Sorted: two-device cases take their locks in one global order.
        let specs: BTreeSet<&DeviceSpec> = plan.specs.roles().into_iter().map(|(_, s)| s).collect();
        let _guards: Vec<MutexGuard<'_, ()>> = specs
            .iter()
            .filter_map(|s| self.locks.get(*s))
            .map(lock)
            .collect();
        if let Some(reason) = interrupted() {
            return self.finish(i, self.not_run(i, Outcome::Ignored, reason));
        }
        if let Some(reason) = specs
            .iter()
            .find_map(|s| lock(&self.wedged).get(*s).cloned())
        {
            return self.finish(
                i,
                self.not_run(i, Outcome::Error, format!("device wedged: {reason}")),
            );
        }
        let case = &self.cases[plan.case];
        let timeout = case.scenario.timeout.unwrap_or(self.default_timeout);
        let real = specs.iter().any(|s| !s.is_sim());
        let mut watch = match (&self.kmsg, real) {
            (Ok(()), true) => KmsgWatch::start().ok(),
            _ => None,
        };
        let run = case::run_case(
            &self.harness,
            &case.scenario,
            &case.text,
            &plan.specs,
            timeout,
        );
        let mut result = run.result;
        if let Some(w) = &mut watch {
            let (check, lines) = kmsg::verdict(&w.read_new());
            result.kernel_log = lines;
            let failed = check.verdict == Verdict::Fail;
            result.checks.push(check);
            if failed && matches!(result.outcome, Outcome::Pass | Outcome::Warn) {
                result.outcome = Outcome::Fail;
            }
        } else if let (Err(note), true) = (&self.kmsg, real) {
            result.notes.push(note.clone());
        }
        {
            let mut wedged = lock(&self.wedged);
            for (spec, reason) in run.wedged {
                wedged.entry(spec).or_insert(reason);
            }
        }
        self.finish(i, result)
    }

    fn not_run(&self, i: usize, outcome: Outcome, reason: String) -> CaseResult {
        let mut r = self.new_result(i);
        r.outcome = outcome;
        r.reason = Some(reason);
        r
    }

    /// Applies the expectations, journals and keeps a case result; tells
    /// libtest-mimic how it went.
    fn finish(&self, i: usize, result: CaseResult) -> Result<Completion, Failed> {
        let result = expect::apply(
            &self.expectations,
            &self.devices[self.plans[i].device],
            result,
            self.harness.grading,
        );
        let device = self.device_specs[self.plans[i].device].to_string();
        let line = JournalLine::Case {
            device,
            result: result.clone(),
        };
        if let Err(e) = self.journal.append(&line) {
            if !self.journal_failed.swap(true, Ordering::SeqCst) {
                eprintln!("warning: {e:#}");
            }
        }
        let verdict = match result.outcome {
            Outcome::Pass | Outcome::Warn | Outcome::Xfail => Ok(Completion::Completed),
            Outcome::Ignored => Ok(Completion::ignored_with(
                result.reason.clone().unwrap_or_default(),
            )),
            _ => Err(Failed::from(failure_text(&result, self.harness.grading))),
        };
        lock(&self.results)[i] = Some(result);
        verdict
    }
}

fn interrupted() -> Option<String> {
    signals::received().map(|s| format!("interrupted ({s}) before the case started"))
}

/// The outcome, why, and the first checks that explain it (failed ones,
/// or for XPASS the ones that passed against expectations), each with the
/// rule it cites, for libtest-mimic's failure list.
fn failure_text(r: &CaseResult, grading: Grading) -> String {
    let mut out = r.outcome.as_str().to_uppercase();
    if let Some(reason) = &r.reason {
        out.push_str(": ");
        out.push_str(reason);
    }
    let explains = |c: &&results::CheckRecord| {
        matches!(
            CheckStatus::of(c, grading),
            CheckStatus::Fail | CheckStatus::Xpass
        )
    };
    let shown: Vec<_> = r.checks.iter().filter(explains).collect();
    for c in shown.iter().take(3) {
        let at = c
            .location
            .as_ref()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "\n  {} [{}]{at}: expected {}; observed {}",
            c.name,
            c.ids.join(", "),
            c.expected,
            c.observed
        ));
        for id in &c.ids {
            if let Some(req) = suite::requirements::find(id) {
                out.push_str(&format!(
                    "\n    {id} ({}): {}",
                    req.strength.as_str(),
                    req.summary
                ));
            }
        }
        if let Some(line) = reports::summary::impact_line(c, suite::requirements::all()) {
            out.push_str(&format!("\n    {line}"));
        }
    }
    if shown.len() > 3 {
        out.push_str(&format!("\n  ... and {} more", shown.len() - 3));
    }
    out
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    match File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
                ^ u64::from(std::process::id())
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// KTAP on the real stdout; everything else (libtest-mimic's progress
/// included) goes to stderr meanwhile.
fn divert_stdout() -> Result<File> {
    let saved = nix::unistd::dup(std::io::stdout()).context("dup(stdout)")?;
    nix::unistd::dup2_stdout(std::io::stderr()).context("dup2(stderr, stdout)")?;
    Ok(File::from(saved))
}

fn device_results(spec: &DeviceSpec, probed: Option<&Probed>) -> DeviceResults {
    let mut d = DeviceResults {
        spec: spec.to_string(),
        name: spec.to_string(),
        ..DeviceResults::default()
    };
    match probed {
        Some(Ok((desc, caps))) => {
            d.name = desc.name.clone();
            d.driver = desc.driver.clone();
            d.sysfs_path = desc.sysfs_path.clone();
            d.iommu_group = desc.iommu_group;
            d.access = serde_json::to_value(desc.access)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            d.device_type = desc.device_type.clone();
            d.protocols = caps.protocols();
            d.migration_flags = caps.migration_flags;
            d.migration_flag_names = caps.migration_flags.map(suite::uapi::migration_flag_names);
            d.stop_copy_length = caps.stop_copy_length;
        }
        Some(Err(ProbeFailure::Wedged(why))) => d.wedged = Some(why.clone()),
        Some(Err(ProbeFailure::Open(_))) | None => {}
    }
    d
}

/// A FILTER that selects no case is a mistake, most often a misspelt
/// subcommand (`vfio-migtest prob`): say so instead of running nothing.
fn check_filter(filter: &str, exact: bool, names: &[String]) -> Result<()> {
    let matches = |n: &String| {
        if exact {
            n == filter
        } else {
            n.contains(filter)
        }
    };
    if names.iter().any(matches) {
        return Ok(());
    }
    let hint = match crate::cli::subcommand_like(filter) {
        Some(sub) => format!("; did you mean the subcommand `vfio-migtest {sub}`?"),
        None => "; `vfio-migtest list` shows the cases".into(),
    };
    bail!(Usage(format!(
        "no case matches the filter `{filter}`{hint}"
    )))
}

/// Runs the suite; returns the exit code.
pub fn run(args: &RunArgs) -> Result<i32> {
    let specs = device_specs(args)?;
    let cases = match cases::load(args.cases.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}", e.detailed());
            }
            bail!(Usage(format!("{} invalid scenario file(s)", errors.len())));
        }
    };
    let expectations = if args.expect.is_empty() {
        Expectations::default()
    } else {
        expect::load(&args.expect, &expect::case_ids(&cases)).map_err(|errors| {
            for e in &errors {
                eprintln!("{}", e.detailed());
            }
            Usage(format!("{} invalid expectations file(s)", errors.len()))
        })?
    };
    let profile = match &args.profile {
        Some(p) => load_profile(p)?,
        None => Profile {
            deterministic_stream: true,
        },
    };
    let all_sim = specs
        .iter()
        .chain(&args.destination)
        .chain(&args.incompatible)
        .all(|s| s.is_sim());
    let threads = match args.test_threads {
        Some(n) => n.get(),
        None if all_sim => std::thread::available_parallelism().map_or(1, |n| n.get()),
        None => 1,
    };
    let targs = libtest_args(args, threads);
    let names: Vec<String> = specs
        .iter()
        .enumerate()
        .flat_map(|(di, spec)| {
            cases
                .iter()
                .map(move |c| trial_name(di, spec, &c.scenario.name))
        })
        .collect();
    if let Some(filter) = &args.filter {
        check_filter(filter, args.exact, &names)?;
    }

    if args.list {
        let trials = specs
            .iter()
            .enumerate()
            .flat_map(|(di, spec)| {
                cases.iter().map(move |c| {
                    Trial::test(trial_name(di, spec, &c.scenario.name), || Ok(()))
                        .with_ignored_flag(c.scenario.dangerous)
                })
            })
            .collect();
        let _listed = libtest_mimic::run(&targs, trials);
        return Ok(0);
    }

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let journal = Journal::create(&args.out)?;
    signals::install().context("cannot set up SIGINT/SIGTERM handling")?;
    let ktap_out = match args.format {
        Format::Ktap => Some(divert_stdout()?),
        _ => None,
    };
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut meta = RunMeta {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: output::read_trimmed("/proc/sys/kernel/osrelease"),
        host: output::read_trimmed("/proc/sys/kernel/hostname"),
        started: now_rfc3339(),
        finished: None,
        command_line: std::env::args().collect(),
        seed,
        strict: args.strict,
        include_dangerous: args.dangerous_allowed(),
        consumer: args.consumer.map(Consumer::from),
        interrupted: None,
        notes: Vec::new(),
    };
    // libtest-mimic's JSON owns stdout; the runner's own lines go to stderr.
    let say = |text: String| match args.format {
        Format::Json => eprintln!("{text}"),
        _ => println!("{text}"),
    };
    say(format!(
        "vfio-migtest {}: {} case(s) on {} device(s), seed {seed} (repeat with --seed {seed})",
        meta.tool_version,
        cases.len(),
        specs.len()
    ));
    journal.append(&JournalLine::Meta(meta.clone()))?;
    let kmsg = if all_sim {
        Ok(())
    } else {
        let k = KmsgWatch::available();
        if let Err(note) = &k {
            eprintln!("note: {note}");
            meta.notes.push(note.clone());
        }
        k
    };

    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let harness = Harness {
        exe,
        seed,
        buffer_size: args.buffer_size,
        arc_latency_limit: args.arc_latency_limit,
        downtime_budget: args.downtime_budget,
        include_dangerous: args.dangerous_allowed(),
        grading: Grading {
            strict: args.strict,
            consumer: args.consumer.map(Consumer::from),
        },
        kill: KillPolicy::default(),
        device_timeout: DEVICE_TIMEOUT,
        grace: CASE_GRACE,
        progress: Progress::for_terminal(),
    };

    // Probe every device once, in a child, before any case.
    let mut probed: BTreeMap<DeviceSpec, Probed> = BTreeMap::new();
    for spec in &specs {
        let peers = [destination_for(args, spec), incompatible_for(args, spec)];
        for s in std::iter::once(spec.clone()).chain(peers.into_iter().flatten()) {
            // A device that cannot be used needs no peers.
            let device_failed = probed.get(spec).is_some_and(|p| p.is_err());
            if probed.contains_key(&s) || device_failed || signals::received().is_some() {
                continue;
            }
            let p = case::probe(&harness, &s);
            match &p {
                // Open errors name the device and say what to do.
                Err(ProbeFailure::Open(m)) => eprintln!("device not usable: {m}"),
                Err(ProbeFailure::Wedged(m)) => eprintln!("device wedged: {s}: {m}"),
                Ok(_) => {}
            }
            probed.insert(s, p);
        }
    }

    let mut devices: Vec<DeviceResults> = specs
        .iter()
        .map(|s| {
            let mut d = device_results(s, probed.get(s));
            if let Some(dest) = destination_for(args, s) {
                d.peers.insert("destination".into(), dest.to_string());
            }
            if let Some(inc) = incompatible_for(args, s) {
                d.peers.insert("incompatible".into(), inc.to_string());
            }
            d
        })
        .collect();
    for d in &devices {
        let _ = journal.append(&JournalLine::Device(d.clone()));
    }
    for note in expect::notes(&expectations, &devices) {
        eprintln!("note: {note}");
        meta.notes.push(note);
    }

    let mut plans = Vec::new();
    for (di, spec) in specs.iter().enumerate() {
        let settings = RunSettings {
            include_dangerous: args.dangerous_allowed(),
            deterministic_stream: deterministic(spec, &profile),
        };
        for (ci, c) in cases.iter().enumerate() {
            let s = &c.scenario;
            let case_specs = CaseSpecs {
                device: spec.clone(),
                destination: s
                    .requires
                    .destination
                    .then(|| destination_for(args, spec))
                    .flatten(),
                incompatible: s
                    .requires
                    .incompatible
                    .then(|| incompatible_for(args, spec))
                    .flatten(),
            };
            // A simulator has no kernel to hang: its dangerous cases always run.
            let simulated = case_specs.all_simulated();
            let settings = RunSettings {
                include_dangerous: settings.include_dangerous || simulated,
                ..settings
            };
            let mut plan = Plan {
                name: trial_name(di, spec, &s.name),
                device: di,
                case: ci,
                specs: case_specs,
                ignore: None,
                error: None,
                dangerous: s.dangerous && !simulated,
            };
            decide(&mut plan, s, &probed, settings);
            plans.push(plan);
        }
    }

    let ctx = Arc::new(Ctx {
        harness,
        results: Mutex::new(vec![None; plans.len()]),
        plans,
        cases,
        device_specs: specs.clone(),
        default_timeout: args.timeout,
        wedged: Mutex::new(BTreeMap::new()),
        locks: specs
            .iter()
            .chain(&args.destination)
            .chain(&args.incompatible)
            .filter(|s| !s.is_sim())
            .map(|s| (s.clone(), Mutex::new(())))
            .collect(),
        journal,
        journal_failed: AtomicBool::new(false),
        kmsg,
        expectations,
        devices: devices.clone(),
    });
    let trials: Vec<Trial> = (0..ctx.plans.len())
        .map(|i| {
            let c = Arc::clone(&ctx);
            Trial::ignorable_test(ctx.plans[i].name.clone(), move || c.run_trial(i))
                .with_ignored_flag(ctx.plans[i].dangerous)
        })
        .collect();
    let trials_selected: Vec<bool> = trials.iter().map(|t| !targs.is_filtered_out(t)).collect();
    let progress = &ctx.harness.progress;
    progress.set_total(
        ctx.plans
            .iter()
            .zip(&trials_selected)
            .filter(|(p, &selected)| selected && will_run(p, args))
            .count(),
    );
    let mut targs = targs;
    let capture = progress.capture_stdout().context("cannot route stdout")?;
    if capture.is_some() && std::env::var_os("NO_COLOR").is_none() {
        // libtest-mimic now writes into a pipe; the terminal is still there.
        targs.color = Some(libtest_mimic::ColorSetting::Always);
    }
    // The exit code comes from the results, which know more outcomes.
    let _conclusion = libtest_mimic::run(&targs, trials);
    if let Some(capture) = capture {
        capture.finish().context("cannot restore stdout")?;
    }
    progress.clear();

    let signal = signals::received();
    let mut stored = std::mem::take(&mut *lock(&ctx.results));
    for (i, slot) in stored.iter_mut().enumerate() {
        if slot.is_none() && trials_selected[i] {
            // Trials libtest-mimic did not start: ignored ones (dangerous)
            // or, after a signal, the rest.
            let plan = &ctx.plans[i];
            let reason = match (interrupted(), &plan.ignore) {
                (Some(r), _) => r,
                (None, Some(r)) => r.clone(),
                (None, None) => "not run".into(),
            };
            *slot = Some(ctx.not_run(i, Outcome::Ignored, reason));
        }
    }
    let wedged = lock(&ctx.wedged).clone();
    for (i, r) in stored.into_iter().enumerate() {
        if let Some(r) = r {
            devices[ctx.plans[i].device].cases.push(r);
        }
    }
    for (d, spec) in devices.iter_mut().zip(&specs) {
        if let Some(w) = wedged.get(spec) {
            d.wedged.get_or_insert_with(|| w.clone());
        }
        d.downtime_ns = d
            .cases
            .iter()
            .flat_map(|c| &c.transfers)
            .filter(|t| t.role == "device")
            .filter_map(|t| t.downtime_ns)
            .max();
    }
    meta.finished = Some(now_rfc3339());
    meta.interrupted = signal.map(|s| format!("{s}"));
    let results = RunResults {
        schema: results::SCHEMA_VERSION,
        meta,
        requirements: suite::requirements::all().to_vec(),
        devices,
    };

    let mut written = Vec::new();
    for (name, text) in render::files(&results) {
        let path = args.out.join(name);
        match output::write_atomic(&path, text.as_bytes()) {
            Ok(()) => written.push(path),
            Err(e) => eprintln!("error: cannot write {}: {e}", path.display()),
        }
    }
    say(format!(
        "\n{}",
        reports::terminal_summary(&results).trim_end()
    ));
    say(format!(
        "results: {} (journal {})",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        args.out.join(output::JOURNAL).display()
    ));
    if let Some(mut out) = ktap_out {
        out.write_all(reports::ktap(&results).as_bytes())
            .and_then(|()| out.flush())
            .context("writing KTAP to stdout")?;
    }
    Ok(match signal {
        Some(s) => signals::exit_code(s),
        None => reports::exit_code(&results),
    })
}

/// Whether a selected trial will run a case (for the progress count).
fn will_run(plan: &Plan, args: &RunArgs) -> bool {
    let dangerous_ok = if args.ignored {
        plan.dangerous
    } else {
        !plan.dangerous || args.dangerous_allowed()
    };
    plan.ignore.is_none() && plan.error.is_none() && dangerous_ok
}

/// Decides, before the run, whether a trial can run.
fn decide(
    plan: &mut Plan,
    s: &suite::scenario::Scenario,
    probed: &BTreeMap<DeviceSpec, Probed>,
    settings: RunSettings,
) {
    let caps_of =
        |spec: &Option<DeviceSpec>, role: &str| -> Result<Option<DeviceCaps>, (bool, String)> {
            match spec {
                None => Ok(None),
                Some(spec) => match probed.get(spec) {
                    Some(Ok((_, caps))) => Ok(Some(caps.clone())),
                    Some(Err(ProbeFailure::Open(m))) => {
                        Err((false, format!("the {role} {spec} cannot be used: {m}")))
                    }
                    Some(Err(ProbeFailure::Wedged(m))) => {
                        Err((true, format!("the {role} {spec} is wedged: {m}")))
                    }
                    None => Err((false, interrupted().unwrap_or_else(|| "not probed".into()))),
                },
            }
        };
    let found = (|| {
        let device = caps_of(&Some(plan.specs.device.clone()), "device")?.unwrap_or_default();
        let destination = caps_of(&plan.specs.destination, "destination")?;
        let incompatible = caps_of(&plan.specs.incompatible, "incompatible device")?;
        Ok((device, destination, incompatible))
    })();
    match found {
        Err((true, why)) => plan.error = Some(format!("device wedged: {why}")),
        Err((false, why)) => plan.ignore = Some(why),
        Ok((device, destination, incompatible)) => {
            if let Err(why) = exec::applicable(
                s,
                &device,
                destination.as_ref(),
                incompatible.as_ref(),
                settings,
            ) {
                plan.ignore = Some(why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> DeviceSpec {
        crate::cli::device_spec(text).unwrap()
    }

    fn spec_text(s: Option<DeviceSpec>) -> Option<String> {
        s.map(|s| s.to_string())
    }

    #[test]
    fn trial_names_prefix_only_later_devices() {
        assert_eq!(trial_name(0, &spec("sim"), "fsm"), "fsm");
        assert_eq!(
            trial_name(1, &spec("sim:v1,fault=x"), "fsm"),
            "sim-v1-fault-x::fsm"
        );
        assert_eq!(
            trial_name(2, &spec("0000:3b:00.1"), "fsm"),
            "0000-3b-00-1::fsm"
        );
    }

    #[test]
    fn simulator_peers_default_and_real_devices_have_none() {
        let args = crate::cli::RunArgs {
            destination: None,
            incompatible: None,
            ..parse_run(&[])
        };
        assert_eq!(
            spec_text(destination_for(&args, &spec("sim:v1"))).as_deref(),
            Some("sim:v1")
        );
        assert_eq!(
            spec_text(incompatible_for(&args, &spec("sim"))).as_deref(),
            Some("sim:type=sim-b")
        );
        assert_eq!(
            spec_text(incompatible_for(&args, &spec("sim:v1,type=sim-b"))).as_deref(),
            Some("sim:v1,type=sim-b,type=sim-a")
        );
        assert!(deterministic(
            &spec("sim"),
            &Profile {
                deterministic_stream: false
            }
        ));
        assert!(!deterministic(
            &spec("sim:deterministic=false"),
            &Profile {
                deterministic_stream: true
            }
        ));
        assert_eq!(destination_for(&args, &spec("0000:3b:00.1")), None);
        assert_eq!(incompatible_for(&args, &spec("0000:3b:00.1")), None);
        let args = parse_run(&["--destination", "0000:3b:00.2"]);
        assert_eq!(
            spec_text(destination_for(&args, &spec("sim"))).as_deref(),
            Some("0000:3b:00.2")
        );
    }

    use clap::Parser;

    fn parse_run(extra: &[&str]) -> RunArgs {
        let argv = ["vfio-migtest"].iter().chain(extra).copied();
        crate::cli::Cli::try_parse_from(argv).unwrap().run
    }

    #[test]
    fn devices_come_from_the_command_line_then_the_default() {
        assert_eq!(device_specs(&parse_run(&[])).unwrap(), [spec("sim")]);
        let e = device_specs(&parse_run(&["--device", "sim", "--device", "sim"])).unwrap_err();
        assert!(e.downcast_ref::<Usage>().is_some(), "{e}");
        let e = crate::cli::Cli::try_parse_from(["vfio-migtest", "--device", "eth0"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("device spec `eth0`"), "{e}");
    }

    #[test]
    fn a_filter_that_selects_nothing_says_so() {
        let names = ["fsm-every-arc".to_string(), "sim-v1::walk".to_string()];
        assert!(check_filter("walk", false, &names).is_ok());
        assert!(check_filter("fsm-every-arc", true, &names).is_ok());
        let e = check_filter("fsm", true, &names).unwrap_err();
        assert!(e.downcast_ref::<Usage>().is_some());
        assert_eq!(
            e.to_string(),
            "no case matches the filter `fsm`; `vfio-migtest list` shows the cases"
        );
        let e = check_filter("prob", false, &names).unwrap_err().to_string();
        assert!(
            e.ends_with("did you mean the subcommand `vfio-migtest probe`?"),
            "{e}"
        );
    }

    #[test]
    fn profile_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, "deterministic_stream: false\n").unwrap();
        assert!(!load_profile(&p).unwrap().deterministic_stream);
        std::fs::write(&p, "{}\n").unwrap();
        assert!(load_profile(&p).unwrap().deterministic_stream);
        std::fs::write(&p, "deterministic: false\n").unwrap();
        let e = load_profile(&p).unwrap_err().to_string();
        assert!(e.contains("p.yaml") && e.contains("deterministic"), "{e}");
    }

    #[test]
    fn failure_text_names_the_failed_must_checks() {
        let mut r = CaseResult::new("c", "v2/c.yaml", "v2");
        r.outcome = Outcome::Fail;
        r.checks
            .push(kmsg::verdict(&[kmsg::parse("4,1,1,-;WARNING: x").unwrap()]).0);
        let text = failure_text(&r, Grading::default());
        assert!(
            text.starts_with("FAIL\n  kernel-log [KERNEL-01]: expected"),
            "{text}"
        );
        assert!(
            text.contains("\n    KERNEL-01 (MUST): no kernel log line of class WARNING"),
            "{text}"
        );
    }

    #[test]
    fn failure_text_of_an_xpass_names_the_passing_check() {
        let mut r = CaseResult::new("dma-logging", "v2/dma-logging.yaml", "v2");
        r.outcome = Outcome::Xpass;
        r.reason = Some("mtty.yaml:3:5: mtty_log_start() returns 0".into());
        let mut fixed = kmsg::verdict(&[]).0;
        fixed.name = "s8-result".into();
        fixed.known_failure = Some("mtty_log_start() returns 0".into());
        r.checks.push(fixed);
        let text = failure_text(&r, Grading::default());
        assert!(
            text.starts_with(
                "XPASS: mtty.yaml:3:5: mtty_log_start() returns 0\n  s8-result [KERNEL-01]"
            ),
            "{text}"
        );
    }
}
