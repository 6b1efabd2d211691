//! `vfio-migtest save` and `resume`: a device's migration state through a
//! file, so a migration between two hosts is a save, a copy and a resume.
//!
//! The device work is [`suite::migrate`], run in a child (`__save`,
//! `__resume`) under the command's deadline; the parent only reads its
//! lines and prints them. A child that had to be killed is followed by a
//! reset in a fresh child.
//!
//! The file format is [`suite::savefile`]: a header naming the source
//! (driver, device type, kernel, host, MIGRATION flags) with the stream's
//! length and XXH64 checksum, then the raw stream.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result};
use results::Grading;
use suite::device::DeviceSpec;
use suite::migrate::live::LiveSummary;
use suite::migrate::{self, fail, Fail, Failure, Job, Origin, Report, ResumeOptions, SaveSummary};
use suite::savefile::{self, SaveHeader};
use suite::scenario::Protocol;

use crate::case::{self, Harness};
use crate::cli::{ResumeArgs, SaveArgs, Then};
use crate::output::read_trimmed;
use crate::output::temp_path;
use crate::probe::NO_DEVICE_EXIT;
use crate::protocol::ChildLine;
use crate::signals;
use crate::supervise::{ChildProc, KillPolicy, Next, Termination};

/// The driver rejected the stream, or the device failed or hung.
const DRIVER_EXIT: i32 = 1;
/// Bad arguments, an unreadable or damaged file, a file for another device.
const FILE_EXIT: i32 = 2;
/// Time the child gets past its deadline to report on its own.
const GRACE: Duration = Duration::from_secs(2);
/// How often the parent looks for a signal while it waits.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// The exit code of a failed save or resume.
pub(crate) fn exit_code(kind: Failure) -> i32 {
    match kind {
        Failure::Open | Failure::Unsupported => NO_DEVICE_EXIT,
        Failure::File | Failure::Refused => FILE_EXIT,
        Failure::Driver | Failure::Peer => DRIVER_EXIT,
    }
}

/// The peak resident memory of this process, from /proc/self/status.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a save or resume job on the device of `spec` in this (child)
/// process, reporting each step as a line. Returns the exit status.
pub(crate) fn child_run(
    spec: &DeviceSpec,
    timeout: Duration,
    work: impl FnOnce(&mut Job) -> Result<ChildLine, Fail>,
) -> i32 {
    signals::restore_default();
    let origin = Origin {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
        host: read_trimmed("/proc/sys/kernel/hostname"),
        temp_path,
    };
    let mut report = |r: Report| {
        emit(match r {
            Report::Doing(what) => ChildLine::Doing(what),
            Report::Temp(path) => ChildLine::Temp(path),
            Report::Note(text) => ChildLine::Note(text),
        })
    };
    let status = match migrate::run(spec, Instant::now() + timeout, origin, &mut report, work) {
        Ok(line) => {
            emit(line);
            0
        }
        Err((f, restored)) => {
            emit(ChildLine::Failed {
                kind: f.kind,
                message: f.message,
            });
            if let Some(r) = restored {
                emit(ChildLine::Restored {
                    role: "device".into(),
                    error: r.err(),
                });
            }
            1
        }
    };
    if let Some(kib) = peak_rss_kib() {
        emit(ChildLine::PeakRss(kib));
    }
    status
}

/// A lost stdout means the parent is gone; the child still finishes and
/// leaves the device sane, so the error is not acted on.
fn emit(line: ChildLine) {
    let _ = line.emit();
}

/// `__save`: the device side of `save`.
pub fn save_child(args: &SaveArgs) -> i32 {
    child_run(&args.device, args.timeout, |job| {
        job.save(&args.file, args.chunk).map(ChildLine::Saved)
    })
}

/// `__resume`: the device side of `resume`.
pub fn resume_child(args: &ResumeArgs) -> i32 {
    let opts = ResumeOptions {
        file: args.file.clone(),
        chunk: args.chunk,
        force: args.force,
        then_running: args.then == Some(Then::Running),
        resave: args.resave.clone(),
    };
    child_run(&args.device, args.timeout, |job| {
        let (header, mut input) =
            open_save_file(&args.file).map_err(|e| fail(Failure::File, format!("{e:#}")))?;
        job.resume(&header, &mut input, &opts)
            .map(ChildLine::Resumed)
    })
}

/// Opens a save file and reads its header; the file is left at the stream.
fn open_save_file(path: &Path) -> Result<(SaveHeader, File)> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (header, _) = SaveHeader::read_from(&mut f).with_context(|| path.display().to_string())?;
    Ok((header, f))
}

/// What the parent saw of a child.
#[derive(Debug, Default)]
pub(crate) struct Supervised {
    pub(crate) lines: Vec<ChildLine>,
    /// The last thing the child said it was doing.
    doing: Option<String>,
    /// Temporary files to remove if the child did not finish.
    temps: Vec<PathBuf>,
    /// Set when the child had to be stopped.
    stopped: Option<Termination>,
    /// The signal that interrupted the command.
    interrupted: Option<nix::sys::signal::Signal>,
    /// Unreadable lines, exit status, stderr.
    trouble: Vec<String>,
}

/// Runs a child until it ends, the deadline (plus grace) passes or a
/// signal arrives.
pub(crate) fn supervise(cmd: Command, timeout: Duration) -> Supervised {
    let mut s = Supervised::default();
    let deadline = Instant::now() + timeout + GRACE;
    let mut child = match ChildProc::spawn(cmd, None) {
        Ok(c) => c,
        Err(e) => {
            s.trouble
                .push(format!("cannot start the child process: {e}"));
            return s;
        }
    };
    let kill = KillPolicy::default();
    loop {
        if let Some(sig) = signals::received() {
            s.interrupted = Some(sig);
            s.stopped = Some(child.terminate(kill));
            break;
        }
        let until = deadline.min(Instant::now() + SIGNAL_CHECK);
        match child.next_line(until) {
            Ok(Next::Line(l)) => match ChildLine::parse(&l) {
                Ok(line) => {
                    match &line {
                        ChildLine::Doing(what) => s.doing = Some(what.clone()),
                        // Who starts the source waits for this line.
                        ChildLine::Listening(addr) => announce(addr),
                        ChildLine::Temp(path) => s.temps.push(PathBuf::from(path)),
                        _ => {}
                    }
                    s.lines.push(line);
                }
                Err(e) => s.trouble.push(e),
            },
            Ok(Next::Eof) => break,
            Ok(Next::Deadline) if Instant::now() >= deadline => {
                s.stopped = Some(child.terminate(kill));
                break;
            }
            Ok(Next::Deadline) => {}
            Err(e) => {
                s.trouble.push(format!("reading the child process: {e}"));
                break;
            }
        }
    }
    if s.stopped.is_none() {
        match child.wait_until(Instant::now() + kill.kill_grace) {
            Ok(Some(status)) if !status.success() && !s.failed() => {
                s.trouble
                    .push(format!("the child process exited with {status}"));
            }
            Ok(Some(_)) => {}
            Ok(None) => s.stopped = Some(child.terminate(kill)),
            Err(e) => s
                .trouble
                .push(format!("waiting for the child process: {e}")),
        }
    }
    let stderr = child.stderr_tail();
    if !stderr.is_empty() {
        s.trouble.push(stderr);
    }
    if s.stopped.is_some() {
        for t in &s.temps {
            let _ = std::fs::remove_file(t);
        }
    }
    s
}

impl Supervised {
    fn failed(&self) -> bool {
        self.lines
            .iter()
            .any(|l| matches!(l, ChildLine::Failed { .. }))
    }
}

pub(crate) fn child_command(sub: &str) -> Result<Command> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut cmd = Command::new(exe);
    cmd.arg(sub);
    Ok(cmd)
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// One line about a save; `again` for the save after a resume.
fn describe_save(s: &SaveSummary, again: bool) -> String {
    let secs = s.duration_ns as f64 / 1e9;
    let estimate = s
        .stop_copy_length
        .map(|l| format!(", stop_copy_length said {l}"))
        .unwrap_or_default();
    let (verb, left) = if again {
        ("saved again", "")
    } else {
        ("saved", "; the device is left in STOP")
    };
    format!(
        "{verb} {} ({}, {}) from {} to {}: {} bytes{estimate} in {secs:.2}s ({:.1} MiB/s), checksum {:#018x}{left}",
        s.device,
        or_unknown(&s.driver),
        or_unknown(&s.device_type),
        s.from_state,
        s.file,
        s.bytes,
        mib(s.bytes) / secs.max(1e-9),
        s.checksum
    )
}

pub(crate) fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

/// Prints what a child reported and turns it into the exit code.
pub(crate) fn conclude(s: &Supervised, spec: &DeviceSpec, timeout: Duration, what: &str) -> i32 {
    let mut code = None;
    for line in &s.lines {
        match line {
            ChildLine::Doing(_)
            | ChildLine::Listening(_)
            | ChildLine::Temp(_)
            | ChildLine::Event(_)
            | ChildLine::Probed { .. }
            | ChildLine::OpenFailed { .. } => {}
            ChildLine::Note(n) => eprintln!("note: {n}"),
            ChildLine::Saved(summary) => {
                println!("{}", describe_save(summary, false));
                code = Some(0);
            }
            ChildLine::Resumed(r) => {
                let secs = r.duration_ns as f64 / 1e9;
                println!(
                    "resumed {}: the driver accepted all {} bytes ({} write() calls) in {secs:.2}s ({:.1} MiB/s) and RESUMING -> STOP succeeded; the device is in {}",
                    r.device,
                    r.bytes,
                    r.writes,
                    mib(r.bytes) / secs.max(1e-9),
                    r.state
                );
                if let Some(again) = &r.resaved {
                    println!("{}", describe_save(again, true));
                }
                code = Some(0);
            }
            ChildLine::Migrated(m) => {
                print!("{}", describe_live(m));
                code = Some(0);
            }
            ChildLine::Failed { kind, message } => {
                eprintln!("error: {message}");
                code = Some(exit_code(*kind));
            }
            ChildLine::Restored { error: None, .. } => {
                eprintln!("the device was reset (VFIO_DEVICE_RESET) and is RUNNING again");
            }
            ChildLine::Restored { error: Some(e), .. } => {
                eprintln!("the device could not be brought back to RUNNING: {e}");
            }
            ChildLine::PeakRss(kib) => {
                println!(
                    "peak memory of the {what} process: {:.1} MiB",
                    *kib as f64 / 1024.0
                );
            }
        }
    }
    if let Some(sig) = s.interrupted {
        eprintln!("error: interrupted ({sig}) during the {what}");
        reset_after_kill(spec);
        return signals::exit_code(sig);
    }
    if let Some(t) = s.stopped {
        let limit = humantime::format_duration(timeout);
        let at = s
            .doing
            .as_ref()
            .map(|d| format!(": stuck in {d}"))
            .unwrap_or_default();
        match t {
            Termination::Unkillable => eprintln!(
                "error: the {what} did not finish within {limit}{at}; the process could not be killed: it is stuck in the kernel and the device is unusable until it returns"
            ),
            _ => {
                eprintln!("error: the {what} did not finish within {limit}{at}");
                reset_after_kill(spec);
            }
        }
        return DRIVER_EXIT;
    }
    match code {
        Some(c) => c,
        None => {
            eprintln!(
                "error: the {what} process ended without a result: {}",
                s.trouble.join("; ")
            );
            DRIVER_EXIT
        }
    }
}

/// After a child was killed: reset the device in a fresh child. A
/// simulator lived in the killed process and needs none.
fn reset_after_kill(spec: &DeviceSpec) {
    if spec.is_sim() {
        return;
    }
    let h = Harness {
        exe: match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("cannot reset the device: cannot find this program's path: {e}");
                return;
            }
        },
        seed: 0,
        buffer_size: 1 << 20,
        arc_latency_limit: suite::exec::ARC_LATENCY_LIMIT,
        downtime_budget: suite::exec::DOWNTIME_BUDGET,
        include_dangerous: false,
        grading: Grading::default(),
        kill: KillPolicy::default(),
        device_timeout: Duration::from_secs(30),
        grace: Duration::ZERO,
        progress: crate::progress::Progress::default(),
    };
    match case::restore(&h, spec, Protocol::V2.as_str()) {
        Ok(()) => eprintln!("the device was reset (VFIO_DEVICE_RESET) and is RUNNING again"),
        Err(e) => eprintln!("the device could not be brought back to RUNNING: {e}"),
    }
}

/// `save`: returns the exit code.
pub fn save(args: &SaveArgs) -> Result<i32> {
    signals::install().context("cannot set up SIGINT/SIGTERM handling")?;
    let mut cmd = child_command("__save")?;
    cmd.arg("--device")
        .arg(args.device.to_string())
        .arg("--file")
        .arg(&args.file)
        .arg("--chunk")
        .arg(args.chunk.to_string())
        .arg("--timeout")
        .arg(format!("{}ms", args.timeout.as_millis()));
    let s = supervise(cmd, args.timeout);
    Ok(conclude(&s, &args.device, args.timeout, "save"))
}

/// `resume`: checks the file, then resumes it in a child; returns the exit
/// code.
pub fn resume(args: &ResumeArgs) -> Result<i32> {
    // A damaged file is refused before any device is touched.
    let checked = open_save_file(&args.file).and_then(|(header, mut f)| {
        savefile::verify_stream(&mut f, &header, 1 << 20)
            .with_context(|| args.file.display().to_string())?;
        Ok(header)
    });
    let header = match checked {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(FILE_EXIT);
        }
    };
    let saved_at =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(header.saved_at));
    println!(
        "{}: {} bytes saved from {} ({}, {}) on {} (kernel {}, vfio-migtest {}) at {saved_at}; checksum {:#018x} verified",
        args.file.display(),
        header.stream_len,
        header.device,
        or_unknown(&header.driver),
        or_unknown(&header.device_type),
        header.host,
        header.kernel_release,
        header.tool_version,
        header.stream_checksum
    );
    signals::install().context("cannot set up SIGINT/SIGTERM handling")?;
    let mut cmd = child_command("__resume")?;
    cmd.arg("--device")
        .arg(args.device.to_string())
        .arg("--file")
        .arg(&args.file)
        .arg("--chunk")
        .arg(args.chunk.to_string())
        .arg("--timeout")
        .arg(format!("{}ms", args.timeout.as_millis()));
    if args.force {
        cmd.arg("--force");
    }
    if args.then == Some(Then::Running) {
        cmd.arg("--then").arg("running");
    }
    if let Some(path) = &args.resave {
        cmd.arg("--resave").arg(path);
    }
    let s = supervise(cmd, args.timeout);
    Ok(conclude(&s, &args.device, args.timeout, "resume"))
}

/// Prints the address `receive` listens on, at once: whoever starts the
/// source waits for this line.
fn announce(addr: &str) {
    println!("listening on {addr}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn rate(bytes: u64, ns: u64) -> String {
    format!("{:.1} MiB/s", mib(bytes) / secs(ns).max(1e-9))
}

/// What one side of a live migration prints: one fact a line, `name:
/// value`, so that scripts can pick them out.
fn describe_live(s: &LiveSummary) -> String {
    let mut out = String::new();
    let (verb, towards) = if s.role == "source" {
        ("migrated", "to")
    } else {
        ("received", "from")
    };
    out.push_str(&format!(
        "{verb} {} ({}, {}) {towards} {}: {} bytes, checksum {:#018x}\n",
        s.device,
        or_unknown(&s.driver),
        or_unknown(&s.device_type),
        s.peer,
        s.bytes(),
        s.checksum
    ));
    out.push_str(&format!("precopy iterations: {}\n", s.precopy_iterations));
    out.push_str(&format!(
        "precopy: {} bytes in {:.3}s ({})\n",
        s.precopy_bytes,
        secs(s.precopy_ns),
        rate(s.precopy_bytes, s.precopy_ns)
    ));
    out.push_str(&format!(
        "stop-copy: {} bytes in {:.3}s ({})\n",
        s.stop_copy_bytes,
        secs(s.stop_copy_ns),
        rate(s.stop_copy_bytes, s.stop_copy_ns)
    ));
    if !s.switch_reason.is_empty() {
        out.push_str(&format!("switch: {}\n", s.switch_reason));
    }
    match s.downtime_ns {
        Some(ns) => out.push_str(&format!(
            "downtime: {:.3} ms (from the source leaving RUNNING until the destination was RUNNING)\n",
            ns as f64 / 1e6
        )),
        None => out.push_str("downtime: unknown (the source's SUMMARY did not arrive)\n"),
    }
    out.push_str(&format!(
        "throughput: {} ({} bytes in {:.3}s)\n",
        rate(s.bytes(), s.total_ns),
        s.bytes(),
        secs(s.total_ns)
    ));
    if let Some(r) = &s.resaved {
        out.push_str(&format!(
            "saved again to {}: {} bytes, checksum {:#018x}\n",
            r.file, r.bytes, r.checksum
        ));
    }
    out.push_str(&format!("the device is in {}\n", s.state));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_documented_exit_codes() {
        assert_eq!(exit_code(Failure::Driver), 1);
        assert_eq!(exit_code(Failure::File), 2);
        assert_eq!(exit_code(Failure::Refused), 2);
        assert_eq!(exit_code(Failure::Open), 4);
        assert_eq!(exit_code(Failure::Unsupported), 4);
    }

    #[test]
    fn a_stuck_child_is_reported_where_it_stopped() {
        let sim = DeviceSpec::Sim(String::new());
        let s = Supervised {
            doing: Some("read() on the data fd after 0 bytes".into()),
            stopped: Some(Termination::Terminated),
            ..Supervised::default()
        };
        assert_eq!(
            conclude(&s, &sim, Duration::from_secs(1), "save"),
            DRIVER_EXIT
        );
        let s = Supervised {
            lines: vec![ChildLine::Failed {
                kind: Failure::Refused,
                message: "other type".into(),
            }],
            ..Supervised::default()
        };
        assert_eq!(
            conclude(&s, &sim, Duration::from_secs(1), "resume"),
            FILE_EXIT
        );
        let s = Supervised {
            trouble: vec!["exited with signal 11".into()],
            ..Supervised::default()
        };
        assert_eq!(
            conclude(&s, &sim, Duration::from_secs(1), "save"),
            DRIVER_EXIT
        );
    }
}
