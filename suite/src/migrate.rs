//! Saving a device's migration state into a file and resuming it from one
//! (`vfio-migtest save` and `resume`): the device side, run in a child
//! process that the runner supervises and whose reports it prints.
//!
//! The stream goes between the data fd and the file in chunks, through the
//! executor's data-fd loops, and is never held whole. A failure after the
//! device left its state resets it (VFIO_DEVICE_RESET, which ends any
//! session and returns it to RUNNING). The file format is
//! [`crate::savefile`].
#![forbid(unsafe_code)]

pub mod live;
mod v1;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::device::{DataFd, Device, DeviceExt, DeviceSpec};
use crate::exec::datafd::{self, End, WriteEnd};
use crate::exec::{self, nanos};
use crate::savefile::{SaveHeader, Xxh64};
use crate::scenario::{Protocol, ReadUntil};
use crate::uapi::{errno_name, Errno, MigState};

/// A progress report per this many bytes, so a hang says where it stopped.
const PROGRESS_EVERY: u64 = 256 << 20;

/// What a job reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// What the job does now; if it never reports again, it is stuck there.
    Doing(String),
    /// The temporary file a save writes before renaming it.
    Temp(String),
    /// Something the user should know that does not stop the job.
    Note(String),
}

/// Where a save file's header says the stream comes from, beyond the
/// device, and where a save writes before it renames.
pub struct Origin {
    pub tool_version: String,
    pub kernel_release: String,
    pub host: String,
    /// The temporary path a save into a file writes first.
    pub temp_path: fn(&Path) -> io::Result<PathBuf>,
}

/// How to resume.
#[derive(Debug, Clone)]
pub struct ResumeOptions {
    /// The save file, for messages.
    pub file: PathBuf,
    /// Size of each write() on the data fd.
    pub chunk: usize,
    /// Resume even if the file was saved from another driver or device type.
    pub force: bool,
    /// SET RUNNING after the resume (else the device stays in STOP).
    pub then_running: bool,
    /// Save the device again into this file after the resume.
    pub resave: Option<PathBuf>,
}

/// How a save or resume failed; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
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
    /// The peer of a live migration went away, fell silent, failed, or
    /// sent damaged data.
    Peer,
}

/// A finished save.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveSummary {
    pub file: String,
    pub device: String,
    pub driver: String,
    pub device_type: String,
    /// The state the device was in before the save.
    pub from_state: String,
    pub bytes: u64,
    pub checksum: u64,
    /// MIG_DATA_SIZE before STOP_COPY, when the device answered.
    pub stop_copy_length: Option<u64>,
    pub duration_ns: u64,
}

/// A finished resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeSummary {
    pub device: String,
    pub bytes: u64,
    pub writes: u64,
    pub duration_ns: u64,
    /// The state the device is left in.
    pub state: String,
    pub resaved: Option<SaveSummary>,
}

/// A failure inside the child.
#[derive(Debug)]
pub struct Fail {
    pub kind: Failure,
    pub message: String,
}

pub fn fail(kind: Failure, message: impl Into<String>) -> Fail {
    Fail {
        kind,
        message: message.into(),
    }
}

/// The device side of a save or resume, with the device open.
pub struct Job<'a> {
    pub dev: &'a mut dyn Device,
    pub deadline: Instant,
    /// The device left the state it was found in: a failure must reset it.
    pub touched: bool,
    /// Where the host's and the tool's part of a save file's header come from.
    pub origin: Origin,
    /// What the job is doing, as it goes.
    pub report: &'a mut dyn FnMut(Report),
}

impl Job<'_> {
    fn name(&self) -> String {
        self.dev.description().name.clone()
    }

    fn doing(&mut self, what: String) {
        (self.report)(Report::Doing(what));
    }

    pub fn state(&mut self) -> String {
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

    /// The save-file header fields that describe this device and host.
    fn device_header(&self, flags: u64) -> SaveHeader {
        let desc = self.dev.description();
        SaveHeader {
            tool_version: self.origin.tool_version.clone(),
            driver: desc.driver.clone().unwrap_or_default(),
            device_type: desc.device_type.clone().unwrap_or_default(),
            kernel_release: self.origin.kernel_release.clone(),
            host: self.origin.host.clone(),
            device: desc.name.clone(),
            migration_flags: flags,
            ..SaveHeader::default()
        }
    }

    /// The device's v1 migration region when it has no migration v2
    /// (then `None`); the v2 error when it has neither.
    fn protocol(&mut self) -> Result<Option<v1::Region>, Fail> {
        match self.migration_flags() {
            Ok(_) => Ok(None),
            Err(e) => self.v1_region().map(Some).ok_or(Fail {
                message: format!("{} and has no v1 migration region", e.message),
                ..e
            }),
        }
    }

    /// Saves the device into `file` (atomically): STOP, STOP_COPY, the
    /// stream to its end, STOP; for a v1 device, stop-and-copy until
    /// `pending_bytes` is 0, then _STOP.
    pub fn save(&mut self, file: &Path, chunk: usize) -> Result<SaveSummary, Fail> {
        let t0 = Instant::now();
        let v1 = self.protocol()?;
        let flags = match v1 {
            Some(_) => v1::V1_FILE_FLAGS,
            None => self.migration_flags()?,
        };
        let desc = self.dev.description().clone();
        let mut header = self.device_header(flags);
        let file_err = |e: &dyn std::fmt::Display| {
            fail(
                Failure::File,
                format!("cannot write {}: {e}", file.display()),
            )
        };
        let placeholder = header.encode().map_err(|e| file_err(&e))?;
        let temp = (self.origin.temp_path)(file).map_err(|e| file_err(&e))?;
        (self.report)(Report::Temp(temp.display().to_string()));
        let result = (|| {
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(|e| file_err(&e))?;
            out.write_all(&placeholder).map_err(|e| file_err(&e))?;
            let (stop_copy_length, from_state, bytes, checksum) = match &v1 {
                Some(region) => {
                    let (from, bytes, checksum) = self.v1_save_stream(region, &mut out, file)?;
                    (None, from, bytes, checksum)
                }
                None => {
                    let stop_copy_length = self.dev.stop_copy_length().ok();
                    let from_state = self.stop()?;
                    let (bytes, checksum) = self.v2_save_stream(chunk, &mut out, file)?;
                    (stop_copy_length, from_state, bytes, checksum)
                }
            };
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

    /// STOP_COPY, the data fd to its end into `out`, STOP; returns the
    /// bytes and their checksum.
    fn v2_save_stream(
        &mut self,
        chunk: usize,
        out: &mut File,
        file: &Path,
    ) -> Result<(u64, u64), Fail> {
        let fd = self.set(MigState::StopCopy)?;
        if fd < 0 {
            return Err(fail(
                Failure::Driver,
                "STOP -> STOP_COPY returned no data fd (data_fd = -1)",
            ));
        }
        let read = self.read_stream(fd, chunk, out, file);
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
        Ok((bytes, checksum))
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
        let mut next_progress = PROGRESS_EVERY;
        self.doing("read() on the data fd after 0 bytes".into());
        let deadline = self.deadline;
        let report = &mut *self.report;
        let (_, end) = datafd::read(
            &mut *self.dev,
            fd,
            &mut buf,
            ReadUntil::Eof,
            u64::MAX,
            || deadline.saturating_duration_since(Instant::now()),
            |data| {
                hash.update(data);
                out.write_all(data).map_err(|e| {
                    fail(
                        Failure::File,
                        format!("cannot write {}: {e}", file.display()),
                    )
                })?;
                total += data.len() as u64;
                if total >= next_progress {
                    report(Report::Doing(format!(
                        "read() on the data fd after {total} bytes"
                    )));
                    next_progress += PROGRESS_EVERY;
                }
                Ok(())
            },
        )?;
        let at = format!("for read() after {total} bytes");
        Err(match end {
            End::Eof => return Ok((total, hash.digest())),
            End::NotReady => not_ready(&at),
            End::Enomsg => fail(
                Failure::Driver,
                format!(
                    "read() after {total} bytes failed with ENOMSG: in STOP_COPY the stream ends with 0, never ENOMSG (V2-SAVE-02)"
                ),
            ),
            End::Error(e) => fail(
                Failure::Driver,
                format!("read() after {total} bytes failed with {}", errno_name(e)),
            ),
            End::Bound | End::Once(_) => unreachable!("no bound, until end of stream"),
        })
    }

    /// Loads the stream that follows `header` in `input` into the device:
    /// STOP, RESUMING, the stream in `chunk` writes, STOP.
    pub fn resume(
        &mut self,
        header: &SaveHeader,
        input: &mut File,
        opts: &ResumeOptions,
    ) -> Result<ResumeSummary, Fail> {
        let t0 = Instant::now();
        let v1 = self.protocol()?;
        let from_v1 = header.migration_flags == v1::V1_FILE_FLAGS;
        if from_v1 != v1.is_some() {
            let (file_kind, device_kind) = if from_v1 {
                ("protocol v1", "migration v2")
            } else {
                ("migration v2", "protocol v1 only")
            };
            return Err(fail(
                Failure::Refused,
                format!(
                    "{} was saved with {file_kind} and {} speaks {device_kind}",
                    opts.file.display(),
                    self.name()
                ),
            ));
        }
        let desc = self.dev.description().clone();
        let differences = header.differences(desc.driver.as_deref(), desc.device_type.as_deref());
        if !differences.is_empty() {
            let text = differences.join("; ");
            if !opts.force {
                return Err(fail(
                    Failure::Refused,
                    format!(
                        "{} is not meant for {}: {text}; give --force to let the driver decide",
                        opts.file.display(),
                        desc.name
                    ),
                ));
            }
            (self.report)(Report::Note(format!("resuming anyway (--force): {text}")));
        }
        if let Some(region) = &v1 {
            let chunks = self.v1_resume_stream(
                region,
                input,
                header.stream_len,
                header.stream_checksum,
                &opts.file,
            )?;
            let resaved = match &opts.resave {
                Some(path) => Some(self.save(path, opts.chunk)?),
                None => None,
            };
            if opts.then_running {
                self.v1_run(region)?;
            }
            return Ok(ResumeSummary {
                device: desc.name,
                bytes: header.stream_len,
                writes: chunks,
                duration_ns: nanos(t0.elapsed()),
                state: self.v1_state(region),
                resaved,
            });
        }
        self.stop()?;
        let fd = self.set(MigState::Resuming)?;
        if fd < 0 {
            return Err(fail(
                Failure::Driver,
                "STOP -> RESUMING returned no data fd (data_fd = -1)",
            ));
        }
        let written = self.write_stream(fd, header, input, opts);
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
        let resaved = match &opts.resave {
            Some(path) => Some(self.save(path, opts.chunk)?),
            None => None,
        };
        if opts.then_running {
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
        opts: &ResumeOptions,
    ) -> Result<(u64, u64), Fail> {
        let file = opts.file.display();
        let mut buf = vec![0u8; opts.chunk];
        let mut hash = Xxh64::new(0);
        let mut total = 0u64;
        let mut writes = 0u64;
        let mut next_progress = 0;
        let len = header.stream_len;
        while total < len {
            let want = (len - total).min(opts.chunk as u64) as usize;
            input
                .read_exact(&mut buf[..want])
                .map_err(|e| fail(Failure::File, format!("cannot read {file}: {e}")))?;
            hash.update(&buf[..want]);
            if total >= next_progress {
                self.doing(format!("write() on the data fd after {total} bytes"));
                next_progress += PROGRESS_EVERY;
            }
            let deadline = self.deadline;
            let w = datafd::write_all(&mut *self.dev, fd, &buf[..want], || {
                deadline.saturating_duration_since(Instant::now())
            });
            writes += w.calls;
            let at = total + w.bytes as u64;
            let rejected = |what: String| {
                fail(
                    Failure::Driver,
                    format!("the driver rejected the stream: {what}"),
                )
            };
            match w.end {
                WriteEnd::Done => {}
                WriteEnd::NotReady => return Err(not_ready(&format!("for write() at byte {at}"))),
                WriteEnd::PollFailed(e) => {
                    return Err(poll_failed(e, &format!("for write() at byte {at}")))
                }
                WriteEnd::Zero => {
                    return Err(rejected(format!(
                        "write() at byte {at} of {len} returned 0"
                    )))
                }
                WriteEnd::Failed(e) => {
                    return Err(rejected(format!(
                        "write() of {} bytes at byte {at} of {len} failed with {}",
                        want - w.bytes,
                        errno_name(e)
                    )))
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

fn not_ready(at: &str) -> Fail {
    fail(
        Failure::Driver,
        format!("the data fd was not ready {at} before the deadline"),
    )
}

fn poll_failed(e: Errno, at: &str) -> Fail {
    fail(
        Failure::Driver,
        format!("poll() on the data fd failed with {} {at}", errno_name(e)),
    )
}

/// A job that failed, and after it the reset of a device it had moved:
/// `None` when the device was never touched, else whether it is RUNNING
/// again (or why not).
pub type Failed = (Fail, Option<Result<(), String>>);

/// Opens the device of `spec` and runs `work` on it until `deadline`; a
/// failure after the device left its state resets it.
pub fn run<T>(
    spec: &DeviceSpec,
    deadline: Instant,
    origin: Origin,
    report: &mut dyn FnMut(Report),
    work: impl FnOnce(&mut Job) -> Result<T, Fail>,
) -> Result<T, Failed> {
    let mut dev = spec
        .open()
        .map_err(|e| (fail(Failure::Open, e.to_string()), None))?;
    let mut job = Job {
        dev: dev.as_mut(),
        deadline,
        touched: false,
        origin,
        report,
    };
    work(&mut job).map_err(|f| {
        let restored = job.touched.then(|| {
            let protocol = if job.dev.migration_flags().is_ok() {
                Protocol::V2
            } else {
                Protocol::V1
            };
            exec::restore(job.dev, protocol)
        });
        (f, restored)
    })
}
