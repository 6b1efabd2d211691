//! `vfio-migtest`: the command-line runner of the VFIO migration
//! conformance suite.
#![forbid(unsafe_code)]

mod case;
mod cases;
mod child;
mod cli;
mod expect;
mod faults;
mod generate;
mod kmsg;
mod live;
mod output;
mod probe;
mod progress;
mod protocol;
mod render;
mod run;
mod signals;
mod supervise;
mod transfer;
mod usage;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use cli::{Cli, Command};
use usage::Usage;

const USAGE_EXIT: i32 = 2;

fn main() -> ExitCode {
    drop_empty_env();
    let cli = Cli::parse();
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            USAGE_EXIT
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Lab harnesses (LAVA test parameters, CI variables) export parameters
/// left unset as empty variables: an empty `VFIO_MIGTEST_*` means unset,
/// not an empty device spec or path.
fn drop_empty_env() {
    for (name, value) in std::env::vars_os() {
        if value.is_empty() && name.to_string_lossy().starts_with("VFIO_MIGTEST_") {
            std::env::remove_var(name);
        }
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        None => run::run(&cli.run),
        Some(Command::Run(args)) => run::run(&args),
        Some(Command::List { cases }) => list(cases.as_deref()),
        Some(Command::Validate { paths }) => validate(&paths),
        Some(Command::Report {
            results,
            html,
            junit,
            ktap,
            json,
            expect,
            baseline,
            threshold,
        }) => report(
            &results,
            &[
                ("html", html),
                ("junit", junit),
                ("ktap", ktap),
                ("json", json),
            ],
            &expect,
            baseline.as_deref().map(|b| (b, threshold)),
        ),
        Some(Command::Generate(a)) => {
            for path in generate::generate(a.what, &a.out)? {
                println!("wrote {}", path.display());
            }
            Ok(0)
        }
        Some(Command::ProbeDevices(a)) => probe::probe(&a),
        Some(Command::Save(a)) => transfer::save(&a),
        Some(Command::Resume(a)) => transfer::resume(&a),
        Some(Command::Migrate(a)) => live::migrate(&a),
        Some(Command::Receive(a)) => live::receive(&a),
        Some(Command::MigrateChild(a)) => Ok(live::migrate_child(&a)),
        Some(Command::ReceiveChild(a)) => Ok(live::receive_child(&a)),
        Some(Command::Faults(a)) => faults::faults(&a),
        Some(Command::Probe(a)) => Ok(child::probe(&a)),
        Some(Command::SaveChild(a)) => Ok(transfer::save_child(&a)),
        Some(Command::ResumeChild(a)) => Ok(transfer::resume_child(&a)),
        Some(Command::Case(a)) => Ok(child::case(&a)),
        Some(Command::Restore(a)) => Ok(child::restore(&a)),
    }
}

fn load_or_report(dir: Option<&Path>) -> Result<Vec<cases::Case>> {
    cases::load(dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{}", e.detailed());
        }
        Usage(format!("{} invalid scenario file(s)", errors.len())).into()
    })
}

fn list(dir: Option<&Path>) -> Result<i32> {
    let cases = load_or_report(dir)?;
    let width = cases
        .iter()
        .map(|c| c.scenario.name.len())
        .max()
        .unwrap_or(0);
    let fwidth = cases
        .iter()
        .map(|c| c.scenario.file.len())
        .max()
        .unwrap_or(0);
    for c in &cases {
        let s = &c.scenario;
        let mut tags = vec![s.protocol.as_str().to_string()];
        if s.requires.destination {
            tags.push("2 devices".into());
        }
        if s.dangerous {
            tags.push("dangerous".into());
        }
        println!(
            "{:width$}  {:fwidth$}  [{}] {}",
            s.name,
            s.file,
            tags.join(", "),
            s.about
        );
    }
    Ok(0)
}

fn validate(paths: &[std::path::PathBuf]) -> Result<i32> {
    match cases::validate(paths) {
        Ok((files, cases)) => {
            println!("ok: {cases} case(s) in {files} file(s)");
            Ok(0)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{}", e.detailed());
            }
            Err(Usage(format!("{} invalid scenario file(s)", errors.len())).into())
        }
    }
}

/// Reads `results.json` or a `results.jsonl` journal.
fn read_results(path: &Path) -> Result<results::RunResults> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    if path.extension().is_some_and(|e| e == "jsonl") {
        output::read_journal(&text, &name)
    } else {
        Ok(reports::read_json(&text).with_context(|| name.clone())?)
    }
}

/// Renders reports from `results.json` or a `results.jsonl` journal, with
/// `expect` (if any) applied in place of the run's expectations, and
/// compared with a baseline run if one is given (exit 1 when a check
/// newly fails).
fn report(
    path: &Path,
    outputs: &[(&str, Option<std::path::PathBuf>)],
    expect: &[std::path::PathBuf],
    baseline: Option<(&Path, f64)>,
) -> Result<i32> {
    let mut results = read_results(path)?;
    if !expect.is_empty() {
        reapply(&mut results, expect)?;
    }
    let comparison = match baseline {
        Some((old, threshold)) => {
            let old = read_results(old).map_err(|e| Usage(format!("{e:#}")))?;
            Some(reports::compare(&results, &old, threshold))
        }
        None => None,
    };
    for (kind, target) in outputs {
        let Some(target) = target else { continue };
        let text = match (*kind, &comparison) {
            ("html", Some(c)) => reports::html_compared(&results, c),
            ("html", None) => reports::html(&results),
            ("junit", Some(c)) => reports::junit_compared(&results, c),
            ("junit", None) => reports::junit(&results),
            ("ktap", _) => reports::ktap(&results),
            _ => reports::write_json(&results),
        };
        output::write_atomic(target, text.as_bytes())
            .with_context(|| format!("cannot write {}", target.display()))?;
        println!("wrote {}", target.display());
    }
    print!("{}", reports::terminal_summary(&results));
    Ok(match comparison {
        Some(c) => {
            print!("{}", reports::comparison_text(&c));
            i32::from(c.newly_fails())
        }
        None => 0,
    })
}

/// Replaces the expectations a results file was made with. Case names are
/// checked against the built-in catalogue and the cases in the file.
fn reapply(results: &mut results::RunResults, paths: &[std::path::PathBuf]) -> Result<()> {
    let mut catalogue = cases::load(None)
        .map(|c| expect::case_ids(&c))
        .unwrap_or_default();
    for case in results.devices.iter().flat_map(|d| &d.cases) {
        catalogue
            .entry(case.name.clone())
            .or_default()
            .extend(case.checks.iter().flat_map(|c| c.ids.iter().cloned()));
    }
    let expectations = expect::load(paths, &catalogue).map_err(|errors| {
        for e in &errors {
            eprintln!("{}", e.detailed());
        }
        Usage(format!("{} invalid expectations file(s)", errors.len()))
    })?;
    let grading = results.meta.grading();
    for device in &mut results.devices {
        let cases = std::mem::take(&mut device.cases);
        device.cases = cases
            .into_iter()
            .map(|c| expect::apply(&expectations, device, expect::clear(c, grading), grading))
            .collect();
    }
    results
        .meta
        .notes
        .retain(|n| !n.starts_with(expect::NOTE_PREFIX));
    let notes = expect::notes(&expectations, &results.devices);
    results.meta.notes.extend(notes);
    Ok(())
}
