//! `vfio-migtest save` and `resume`: a device's migration state through a
//! file, so a migration between two hosts is a save, a copy and a resume.
//!
//! The device work runs in a child (`__save`, `__resume`) under the
//! command's deadline; the parent only reads its progress lines. A failure
//! after the device left its state resets the device (VFIO_DEVICE_RESET,
//! which ends any session and returns it to RUNNING); a child that had to be
//! killed is followed by a reset in a fresh child. The stream goes between
//! the data fd and the file in `--chunk` pieces and is never held whole.
//!
//! The file format is [`suite::savefile`]: a header naming the source
//! (driver, device type, kernel, host, MIGRATION flags) with the stream's
//! length and XXH64 checksum, then the raw stream.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use suite::device::{self, DataFd, Device, DeviceExt, DeviceSpec, PollFlags};
use suite::exec;
use suite::savefile::{self, SaveHeader, Xxh64};
use suite::scenario::{parse_size, Protocol};
use suite::uapi::{errno_name, Errno, MigState};

use crate::case::{self, Harness};
use crate::output::temp_path;
use crate::probe::NO_DEVICE_EXIT;
use crate::protocol::{emit_line, parse_line};
use crate::run::{is_sim, read_trimmed};
use crate::supervise::{ChildProc, KillPolicy, Next, Termination};
use crate::{signals, Usage};

/// The driver rejected the stream, or the device failed or hung.
const DRIVER_EXIT: i32 = 1;
/// Bad arguments, an unreadable or damaged file, a file for another device.
const FILE_EXIT: i32 = 2;
/// Time the child gets past its deadline to report on its own.
const GRACE: Duration = Duration::from_secs(2);
/// How often the parent looks for a signal while it waits.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);
/// A progress line per this many bytes, so a hang says where it stopped.
const PROGRESS_EVERY: u64 = 256 << 20;

#[derive(Debug, Clone, Args)]
pub struct SaveArgs {
    /// The source device: PCI address, mdev UUID, /dev/vfio/devices/vfioN,
    /// `sim` or `sim:OPTIONS`.
    #[arg(long, value_name = "SPEC")]
    pub device: String,
    /// The save file (written to a temporary file, then renamed).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Size of each read() on the data fd.
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk, default_value = "1MiB")]
    pub chunk: usize,
    /// Deadline of the whole save.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
}

/// The state to SET after a successful resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Then {
    Running,
}

#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// The destination device.
    #[arg(long, value_name = "SPEC")]
    pub device: String,
    /// A file written by `vfio-migtest save`.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Size of each write() on the data fd (1 byte to 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk, default_value = "1MiB")]
    pub chunk: usize,
    /// Deadline of the whole resume.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Resume even if the file was saved from another driver or device type.
    #[arg(long)]
    pub force: bool,
    /// After the resume, SET this state (default: leave the device in STOP).
    #[arg(long, value_enum, value_name = "STATE")]
    pub then: Option<Then>,
    /// After the resume, save the device again into FILE: for a
    /// deterministic device its stream equals the one resumed.
    #[arg(long, value_name = "FILE")]
    pub resave: Option<PathBuf>,
}

fn parse_chunk(text: &str) -> Result<usize, String> {
    let n = parse_size(text)?;
    if !(1..=1 << 30).contains(&n) {
        return Err(format!("{text}: a chunk is 1 byte to 1GiB"));
    }
    usize::try_from(n).map_err(|_| format!("{text}: too large"))
}

/// How a save or resume failed; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Failure {
    /// The device cannot be opened.
    Open,
    /// The device does not speak migration v2.
    Unsupported,
    /// The file cannot be read or written, or is damaged.
    File,
    /// The file comes from another driver or device type (no `--force`).
    Refused,
    /// The driver failed an operation or rejected the stream, or timed out.
    Driver,
}

impl Failure {
    fn exit_code(self) -> i32 {
        match self {
            Failure::Open | Failure::Unsupported => NO_DEVICE_EXIT,
            Failure::File | Failure::Refused => FILE_EXIT,
            Failure::Driver => DRIVER_EXIT,
        }
    }
}

/// A finished save.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SaveSummary {
    file: String,
    device: String,
    driver: String,
    device_type: String,
    /// The state the device was in before the save.
    from_state: String,
    bytes: u64,
    checksum: u64,
    /// MIG_DATA_SIZE before STOP_COPY, when the device answered.
    stop_copy_length: Option<u64>,
    duration_ns: u64,
}

/// A finished resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ResumeSummary {
    device: String,
    bytes: u64,
    writes: u64,
    duration_ns: u64,
    /// The state the device is left in.
    state: String,
    resaved: Option<SaveSummary>,
}

/// What the `__save` and `__resume` children report, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    /// What the child does now; if it never reports again, it is stuck there.
    Doing(String),
    /// The temporary file a save writes before renaming it.
    Temp(String),
    /// Something the user should know that does not stop the command.
    Note(String),
    Saved(SaveSummary),
    Resumed(ResumeSummary),
    Failed {
        kind: Failure,
        message: String,
    },
    /// After a failure the device was reset; `error` says why it is not
    /// RUNNING again.
    Reset {
        error: Option<String>,
    },
    /// The child's peak resident memory (VmHWM), in KiB.
    PeakRss(u64),
}

/// A failure inside the child.
#[derive(Debug)]
struct Fail {
    kind: Failure,
    message: String,
}

fn fail(kind: Failure, message: impl Into<String>) -> Fail {
    Fail {
        kind,
        message: message.into(),
    }
}

/// A lost stdout means the parent is gone; the child still finishes and
/// leaves the device sane, so the error is not acted on.
fn emit(line: Line) {
    let _ = emit_line(&line);
}

/// The device side of a save or resume, with the device open.
struct Job<'a> {
    dev: &'a mut dyn Device,
    deadline: Instant,
    /// The device left the state it was found in: a failure must reset it.
    touched: bool,
}

impl Job<'_> {
    fn name(&self) -> String {
        self.dev.description().name.clone()
    }

    fn doing(&self, what: String) {
        emit(Line::Doing(what));
    }

    fn time_left(&self, what: &str) -> Result<Duration, Fail> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(Failure::Driver, format!("the deadline passed {what}")));
        }
        Ok(left)
    }

    fn state(&mut self) -> String {
        match self.dev.get_state() {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown (GET failed with {})", errno_name(e)),
        }
    }

    /// MIGRATION flags, or why the device cannot be migrated with v2.
    fn migration_flags(&mut self) -> Result<u64, Fail> {
        self.dev.migration_flags().map(|f| f.0).map_err(|e| {
            fail(
                Failure::Unsupported,
                format!(
                    "{}: GET MIGRATION failed with {}: the device does not support migration v2",
                    self.name(),
                    errno_name(e)
                ),
            )
        })
    }

    /// SET `target`; returns the data fd it handed out (-1 for none).
    fn set(&mut self, target: MigState) -> Result<DataFd, Fail> {
        let from = self.state();
        self.doing(format!("SET {target} (from {from})"));
        self.touched = true;
        let r = self.dev.set_state(target.raw());
        match r.result {
            Ok(()) => Ok(r.data_fd),
            Err(e) => {
                let now = self.state();
                Err(fail(
                    Failure::Driver,
                    format!(
                        "SET {target} from {from} failed with {}; the device is now {now}",
                        errno_name(e)
                    ),
                ))
            }
        }
    }

    /// Brings the device to STOP; returns the state it was in.
    fn stop(&mut self) -> Result<String, Fail> {
        let from = self.dev.get_state().map_err(|e| {
            fail(
                Failure::Driver,
                format!("GET MIG_DEVICE_STATE failed with {}", errno_name(e)),
            )
        })?;
        if from != MigState::Stop {
            self.set(MigState::Stop)?;
        }
        Ok(from.to_string())
    }

    /// Waits until `fd` is ready for `events`, no later than the deadline.
    fn wait(&mut self, fd: DataFd, events: PollFlags, at: &str) -> Result<(), Fail> {
        let left = self.time_left(at)?;
        match self.dev.data_poll(fd, events, left) {
            Ok(ev) if ev.is_empty() => Err(fail(
                Failure::Driver,
                format!("the data fd was not ready {at} before the deadline"),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(fail(
                Failure::Driver,
                format!("poll() on the data fd failed with {} {at}", errno_name(e)),
            )),
        }
    }

    /// Saves the device into `file` (atomically): STOP, STOP_COPY, the
    /// stream to its end, STOP.
    fn save(&mut self, file: &Path, chunk: usize) -> Result<SaveSummary, Fail> {
        let t0 = Instant::now();
        let flags = self.migration_flags()?;
        let desc = self.dev.description().clone();
        let mut header = SaveHeader {
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            driver: desc.driver.clone().unwrap_or_default(),
            device_type: desc.device_type.clone().unwrap_or_default(),
            kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
            host: read_trimmed("/proc/sys/kernel/hostname"),
            device: desc.name.clone(),
            migration_flags: flags,
            ..SaveHeader::default()
        };
        let file_err = |e: &dyn std::fmt::Display| {
            fail(
                Failure::File,
                format!("cannot write {}: {e}", file.display()),
            )
        };
        let placeholder = header.encode().map_err(|e| file_err(&e))?;
        let temp = temp_path(file).map_err(|e| file_err(&e))?;
        emit(Line::Temp(temp.display().to_string()));
        let result = (|| {
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(|e| file_err(&e))?;
            out.write_all(&placeholder).map_err(|e| file_err(&e))?;
            let stop_copy_length = self.dev.stop_copy_length().ok();
            let from_state = self.stop()?;
            let fd = self.set(MigState::StopCopy)?;
            if fd < 0 {
                return Err(fail(
                    Failure::Driver,
                    "STOP -> STOP_COPY returned no data fd (data_fd = -1)",
                ));
            }
            let read = self.read_stream(fd, chunk, &mut out, file);
            let (bytes, checksum) = match read {
                Ok(r) => r,
                Err(e) => {
                    let _ = self.dev.data_close(fd);
                    return Err(e);
                }
            };
            self.set(MigState::Stop)?;
            // The session ended with the SET; a failing close changes nothing.
            let _ = self.dev.data_close(fd);
            header.stream_len = bytes;
            header.stream_checksum = checksum;
            header.saved_at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let final_header = header.encode().map_err(|e| file_err(&e))?;
            out.seek(SeekFrom::Start(0))
                .and_then(|_| out.write_all(&final_header))
                .and_then(|()| out.sync_all())
                .map_err(|e| file_err(&e))?;
            std::fs::rename(&temp, file).map_err(|e| file_err(&e))?;
            Ok(SaveSummary {
                file: file.display().to_string(),
                device: desc.name.clone(),
                driver: header.driver.clone(),
                device_type: header.device_type.clone(),
                from_state,
                bytes,
                checksum,
                stop_copy_length,
                duration_ns: nanos(t0.elapsed()),
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Reads the saving fd to end of stream into `out`; returns the bytes
    /// and their checksum.
    fn read_stream(
        &mut self,
        fd: DataFd,
        chunk: usize,
        out: &mut File,
        file: &Path,
    ) -> Result<(u64, u64), Fail> {
        let mut buf = vec![0u8; chunk];
        let mut hash = Xxh64::new(0);
        let mut total = 0u64;
        let mut next_progress = 0;
        loop {
            if total >= next_progress {
                self.doing(format!("read() on the data fd after {total} bytes"));
                next_progress += PROGRESS_EVERY;
            }
            self.wait(
                fd,
                PollFlags::POLLIN,
                &format!("for read() after {total} bytes"),
            )?;
            match self.dev.data_read(fd, &mut buf) {
                Ok(0) => return Ok((total, hash.digest())),
                Ok(n) => {
                    hash.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(|e| {
                        fail(Failure::File, format!("cannot write {}: {e}", file.display()))
                    })?;
                    total += n as u64;
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(Errno::ENOMSG) => {
                    return Err(fail(
                        Failure::Driver,
                        format!(
                            "read() after {total} bytes failed with ENOMSG: in STOP_COPY the stream ends with 0, never ENOMSG (V2-SAVE-02)"
                        ),
                    ))
                }
                Err(e) => {
                    return Err(fail(
                        Failure::Driver,
                        format!("read() after {total} bytes failed with {}", errno_name(e)),
                    ))
                }
            }
        }
    }

    /// Loads the stream that follows `header` in `input` into the device:
    /// STOP, RESUMING, the stream in `chunk` writes, STOP.
    fn resume(
        &mut self,
        header: &SaveHeader,
        input: &mut File,
        args: &ResumeArgs,
    ) -> Result<ResumeSummary, Fail> {
        let t0 = Instant::now();
        self.migration_flags()?;
        let desc = self.dev.description().clone();
        let differences = header.differences(desc.driver.as_deref(), desc.device_type.as_deref());
        if !differences.is_empty() {
            let text = differences.join("; ");
            if !args.force {
                return Err(fail(
                    Failure::Refused,
                    format!(
                        "{} is not meant for {}: {text}; give --force to let the driver decide",
                        args.file.display(),
                        desc.name
                    ),
                ));
            }
            emit(Line::Note(format!("resuming anyway (--force): {text}")));
        }
        self.stop()?;
        let fd = self.set(MigState::Resuming)?;
        if fd < 0 {
            return Err(fail(
                Failure::Driver,
                "STOP -> RESUMING returned no data fd (data_fd = -1)",
            ));
        }
        let written = self.write_stream(fd, header, input, args);
        let (bytes, writes) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = self.dev.data_close(fd);
                return Err(e);
            }
        };
        let left = self.set(MigState::Stop);
        let _ = self.dev.data_close(fd);
        left.map_err(|e| Fail {
            message: format!(
                "the driver rejected the stream: all {bytes} bytes were written, then {}",
                e.message
            ),
            ..e
        })?;
        let resaved = match &args.resave {
            Some(path) => Some(self.save(path, args.chunk)?),
            None => None,
        };
        if args.then == Some(Then::Running) {
            self.set(MigState::Running)?;
        }
        Ok(ResumeSummary {
            device: desc.name,
            bytes,
            writes,
            duration_ns: nanos(t0.elapsed()),
            state: self.state(),
            resaved,
        })
    }

    /// Writes the stream to the resuming fd, checking its checksum on the
    /// way; returns the bytes and the number of write() calls.
    fn write_stream(
        &mut self,
        fd: DataFd,
        header: &SaveHeader,
        input: &mut File,
        args: &ResumeArgs,
    ) -> Result<(u64, u64), Fail> {
        let file = args.file.display();
        let mut buf = vec![0u8; args.chunk];
        let mut hash = Xxh64::new(0);
        let mut total = 0u64;
        let mut writes = 0u64;
        let mut next_progress = 0;
        while total < header.stream_len {
            let want = (header.stream_len - total).min(args.chunk as u64) as usize;
            input
                .read_exact(&mut buf[..want])
                .map_err(|e| fail(Failure::File, format!("cannot read {file}: {e}")))?;
            hash.update(&buf[..want]);
            if total >= next_progress {
                self.doing(format!("write() on the data fd after {total} bytes"));
                next_progress += PROGRESS_EVERY;
            }
            let mut off = 0;
            while off < want {
                let at = total + off as u64;
                self.wait(fd, PollFlags::POLLOUT, &format!("for write() at byte {at}"))?;
                writes += 1;
                match self.dev.data_write(fd, &buf[off..want]) {
                    Ok(0) => {
                        return Err(fail(
                            Failure::Driver,
                            format!(
                                "the driver rejected the stream: write() at byte {at} of {} returned 0",
                                header.stream_len
                            ),
                        ))
                    }
                    Ok(n) => off += n,
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(e) => {
                        return Err(fail(
                            Failure::Driver,
                            format!(
                                "the driver rejected the stream: write() of {} bytes at byte {at} of {} failed with {}",
                                want - off,
                                header.stream_len,
                                errno_name(e)
                            ),
                        ))
                    }
                }
            }
            total += want as u64;
        }
        if hash.digest() != header.stream_checksum {
            return Err(fail(
                Failure::File,
                format!("{file} changed while it was resumed (its checksum no longer matches); the resume was abandoned"),
            ));
        }
        Ok((total, writes))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The peak resident memory of this process, from /proc/self/status.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Opens the device in the child and runs `work`; a failure after the
/// device left its state resets it. Returns the child's exit status.
fn child_run(
    spec: &str,
    timeout: Duration,
    work: impl FnOnce(&mut Job) -> Result<Line, Fail>,
) -> i32 {
    signals::restore_default();
    let deadline = Instant::now() + timeout;
    let mut dev = match device::open(spec) {
        Ok(d) => d,
        Err(e) => {
            emit(Line::Failed {
                kind: Failure::Open,
                message: e.to_string(),
            });
            return 1;
        }
    };
    let mut job = Job {
        dev: dev.as_mut(),
        deadline,
        touched: false,
    };
    let result = work(&mut job);
    let status = match result {
        Ok(line) => {
            emit(line);
            0
        }
        Err(f) => {
            emit(Line::Failed {
                kind: f.kind,
                message: f.message,
            });
            if job.touched {
                let error = exec::restore(job.dev, Protocol::V2).err();
                emit(Line::Reset { error });
            }
            1
        }
    };
    if let Some(kib) = peak_rss_kib() {
        emit(Line::PeakRss(kib));
    }
    status
}

/// `__save`: the device side of `save`.
pub fn save_child(args: &SaveArgs) -> i32 {
    child_run(&args.device, args.timeout, |job| {
        job.save(&args.file, args.chunk).map(Line::Saved)
    })
}

/// `__resume`: the device side of `resume`.
pub fn resume_child(args: &ResumeArgs) -> i32 {
    child_run(&args.device, args.timeout, |job| {
        let (header, mut input) =
            open_save_file(&args.file).map_err(|e| fail(Failure::File, format!("{e:#}")))?;
        job.resume(&header, &mut input, args).map(Line::Resumed)
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
struct Supervised {
    lines: Vec<Line>,
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
fn supervise(cmd: Command, timeout: Duration) -> Supervised {
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
            Ok(Next::Line(l)) => match parse_line::<Line>(&l) {
                Ok(line) => {
                    match &line {
                        Line::Doing(what) => s.doing = Some(what.clone()),
                        Line::Temp(path) => s.temps.push(PathBuf::from(path)),
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
        self.lines.iter().any(|l| matches!(l, Line::Failed { .. }))
    }
}

fn child_command(sub: &str) -> Result<Command> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut cmd = Command::new(exe);
    cmd.arg(sub);
    Ok(cmd)
}

fn check_spec(spec: &str) -> Result<()> {
    DeviceSpec::parse(spec).map_err(|e| Usage(e.to_string()))?;
    Ok(())
}

fn mib(bytes: u64) -> f64 {
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

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

/// Prints what a child reported and turns it into the exit code.
fn conclude(s: &Supervised, spec: &str, timeout: Duration, what: &str) -> i32 {
    let mut code = None;
    for line in &s.lines {
        match line {
            Line::Doing(_) | Line::Temp(_) => {}
            Line::Note(n) => eprintln!("note: {n}"),
            Line::Saved(summary) => {
                println!("{}", describe_save(summary, false));
                code = Some(0);
            }
            Line::Resumed(r) => {
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
            Line::Failed { kind, message } => {
                eprintln!("error: {message}");
                code = Some(kind.exit_code());
            }
            Line::Reset { error: None } => {
                eprintln!("the device was reset (VFIO_DEVICE_RESET) and is RUNNING again");
            }
            Line::Reset { error: Some(e) } => {
                eprintln!("the device could not be brought back to RUNNING: {e}");
            }
            Line::PeakRss(kib) => {
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
fn reset_after_kill(spec: &str) {
    if is_sim(spec) {
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
        include_dangerous: false,
        strict: false,
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
    check_spec(&args.device)?;
    signals::install().context("cannot set up SIGINT/SIGTERM handling")?;
    let mut cmd = child_command("__save")?;
    cmd.arg("--device")
        .arg(&args.device)
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
    check_spec(&args.device)?;
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
        .arg(&args.device)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_one_byte_to_one_gib() {
        assert_eq!(parse_chunk("13"), Ok(13));
        assert_eq!(parse_chunk("1MiB"), Ok(1 << 20));
        assert!(parse_chunk("0").is_err());
        assert!(parse_chunk("2GiB").is_err());
        assert!(parse_chunk("lots").is_err());
    }

    #[test]
    fn failures_map_to_the_documented_exit_codes() {
        assert_eq!(Failure::Driver.exit_code(), 1);
        assert_eq!(Failure::File.exit_code(), 2);
        assert_eq!(Failure::Refused.exit_code(), 2);
        assert_eq!(Failure::Open.exit_code(), 4);
        assert_eq!(Failure::Unsupported.exit_code(), 4);
    }

    #[test]
    fn child_lines_round_trip() {
        let lines = [
            Line::Doing("SET STOP_COPY (from STOP)".into()),
            Line::Failed {
                kind: Failure::Driver,
                message: "write() failed with EFAULT".into(),
            },
            Line::Reset { error: None },
            Line::PeakRss(9000),
        ];
        for line in lines {
            let text = serde_json::to_string(&line).unwrap();
            assert_eq!(parse_line::<Line>(&text).unwrap(), line);
        }
    }

    #[test]
    fn a_stuck_child_is_reported_where_it_stopped() {
        let s = Supervised {
            doing: Some("read() on the data fd after 0 bytes".into()),
            stopped: Some(Termination::Terminated),
            ..Supervised::default()
        };
        assert_eq!(
            conclude(&s, "sim", Duration::from_secs(1), "save"),
            DRIVER_EXIT
        );
        let s = Supervised {
            lines: vec![Line::Failed {
                kind: Failure::Refused,
                message: "other type".into(),
            }],
            ..Supervised::default()
        };
        assert_eq!(
            conclude(&s, "sim", Duration::from_secs(1), "resume"),
            FILE_EXIT
        );
        let s = Supervised {
            trouble: vec!["exited with signal 11".into()],
            ..Supervised::default()
        };
        assert_eq!(
            conclude(&s, "sim", Duration::from_secs(1), "save"),
            DRIVER_EXIT
        );
    }
}
