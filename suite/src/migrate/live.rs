//! Live migration of one device to a peer over a connection (`vfio-migtest
//! migrate` on the source, `receive` on the destination), in the wire
//! format of [`crate::wire`].
//!
//! The source runs the flow QEMU runs: PRE_COPY while the device keeps
//! running, precopy iterations (read until ENOMSG, VFIO_MIG_GET_PRECOPY_INFO)
//! until the initial data is sent and the dirty data left fits the
//! downtime limit at the rate measured so far, or `max_precopy` iterations
//! are done; then STOP_COPY to the end of the stream and STOP. The
//! destination enters RESUMING before the first byte, writes each chunk as
//! it arrives, and ends in RUNNING. Neither touches its device before both
//! HELLOs were accepted. Every wait on the peer is bounded by the idle
//! timeout and the job's deadline; a failure is sent to the peer as ABORT
//! (best effort) and the device, once touched, is reset by
//! [`super::run`].
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{fail, not_ready, Fail, Failure, Job, SaveSummary};
use crate::device::DeviceExt;
use crate::exec::datafd::{self, End, WriteEnd};
use crate::exec::nanos;
use crate::savefile::{shown, SaveHeader, Xxh64};
use crate::scenario::ReadUntil;
use crate::uapi::{errno_name, MigState};
use crate::wire::{self, Kind, Phase, WireError};

/// A connection to the peer whose waits can be bounded.
pub trait Link: Read + Write {
    /// Bounds every following read and write (`None`: wait forever).
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Link for TcpStream {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
}

impl Link for UnixStream {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)?;
        self.set_write_timeout(timeout)
    }
}

/// How to migrate.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Size of each read() (source) or the largest write() (destination).
    pub chunk: usize,
    /// The most precopy iterations before the switch to STOP_COPY.
    pub max_precopy: u32,
    /// The source switches once the dirty data left would take no longer
    /// than this at the throughput measured so far.
    pub downtime_limit: Duration,
    /// Longest wait for the peer.
    pub idle: Duration,
    /// After the migration, save the device into this file (the source
    /// from STOP; the destination from STOP, before RUNNING).
    pub resave: Option<PathBuf>,
}

/// What a finished live migration did, on one side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSummary {
    /// `source` or `destination`.
    pub role: String,
    pub device: String,
    pub driver: String,
    pub device_type: String,
    /// The peer's host and device, from its HELLO.
    pub peer: String,
    pub precopy_iterations: u64,
    pub precopy_bytes: u64,
    pub stop_copy_bytes: u64,
    /// From the first precopy byte to the switch.
    pub precopy_ns: u64,
    /// From the switch to the end of the stream.
    pub stop_copy_ns: u64,
    /// From the source leaving RUNNING until the destination was RUNNING,
    /// as the source measured it (on the destination: from the source's
    /// SUMMARY, if it arrived).
    pub downtime_ns: Option<u64>,
    /// Why the source switched to STOP_COPY.
    pub switch_reason: String,
    /// XXH64 of the whole stream.
    pub checksum: u64,
    /// From the first stream byte to the end of the migration.
    pub total_ns: u64,
    /// The state the device is left in.
    pub state: String,
    pub resaved: Option<SaveSummary>,
}

impl LiveSummary {
    pub fn bytes(&self) -> u64 {
        self.precopy_bytes + self.stop_copy_bytes
    }
}

fn peer_fail(message: impl Into<String>) -> Fail {
    fail(Failure::Peer, message)
}

/// The conversation with the peer: frames out, frames in, each wait bounded.
struct Conn<'l> {
    link: &'l mut dyn Link,
    buf: Vec<u8>,
    idle: Duration,
    deadline: Instant,
    /// Who the peer is, for messages.
    peer: &'static str,
    /// XXH64 of the DATA sent so far.
    sent: Xxh64,
}

impl Conn<'_> {
    fn bound(&mut self) -> Result<String, Fail> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(peer_fail(format!(
                "the deadline passed while waiting for the {}",
                self.peer
            )));
        }
        let wait = left.min(self.idle);
        self.link
            .set_timeout(Some(wait))
            .map_err(|e| peer_fail(format!("cannot bound the connection's waits: {e}")))?;
        Ok(humantime::format_duration(Duration::from_millis(
            u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        ))
        .to_string())
    }

    fn send(&mut self, kind: Kind, phase: Phase, payload: &[u8]) -> Result<(), Fail> {
        let wait = self.bound()?;
        wire::send(&mut *self.link, kind, phase, payload).map_err(|e| {
            // A peer that gave up usually said why before it closed.
            let said = self.peer_reason();
            let what = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("the {} took nothing for {wait}", self.peer)
                }
                _ => format!("sending {} to the {} failed: {e}", kind.name(), self.peer),
            };
            peer_fail(said.unwrap_or(what))
        })
    }

    /// Sends a piece of the stream.
    fn send_data(&mut self, phase: Phase, data: &[u8]) -> Result<(), Fail> {
        self.sent.update(data);
        self.send(Kind::Data, phase, data)
    }

    /// The reason in an ABORT or REFUSE the peer sent before it went away.
    fn peer_reason(&mut self) -> Option<String> {
        self.link.set_timeout(Some(Duration::from_secs(1))).ok()?;
        let frame = wire::recv(&mut *self.link, &mut self.buf, "1s").ok()?;
        matches!(frame.kind, Kind::Abort | Kind::Refuse)
            .then(|| format!("the {} gave up: {}", self.peer, frame.text()))
    }

    fn recv(&mut self) -> Result<wire::Frame<'_>, Fail> {
        let wait = self.bound()?;
        let peer = self.peer;
        wire::recv(&mut *self.link, &mut self.buf, &wait).map_err(|e| match e {
            WireError::Closed => peer_fail(format!(
                "the {peer} closed the connection in the middle of the migration"
            )),
            WireError::Silent(w) => peer_fail(format!(
                "the {peer} sent nothing for {w}: the connection is cut or the {peer} hangs"
            )),
            other => peer_fail(format!("from the {peer}: {other}")),
        })
    }

    /// Tells the peer why this side stops; it may be gone already.
    fn abort(&mut self, why: &str) {
        let _ = self.link.set_timeout(Some(Duration::from_secs(1)));
        let _ = wire::send(&mut *self.link, Kind::Abort, Phase::None, why.as_bytes());
    }
}

/// A frame the peer should not have sent now.
fn unexpected(frame: &wire::Frame, peer: &str, waiting_for: &str) -> Fail {
    match frame.kind {
        Kind::Refuse => fail(
            Failure::Refused,
            format!("the {peer} refused the migration: {}", frame.text()),
        ),
        Kind::Abort => peer_fail(format!("the {peer} gave up: {}", frame.text())),
        other => peer_fail(format!(
            "the {peer} sent {} while {waiting_for} was due",
            other.name()
        )),
    }
}

/// What differs between this device and the peer's; empty when the stream
/// can go from one to the other.
fn incompatibility(peer: &SaveHeader, mine: &SaveHeader, peer_role: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (what, theirs, ours) in [
        ("driver", &peer.driver, &mine.driver),
        ("device type", &peer.device_type, &mine.device_type),
    ] {
        if theirs != ours {
            out.push(format!(
                "{what}: the {peer_role} is {}, this side is {}",
                shown(theirs),
                shown(ours)
            ));
        }
    }
    out
}

impl Job<'_> {
    /// Checks the peer's HELLO: its format version and its device.
    fn check_hello(
        &mut self,
        conn: &mut Conn,
        payload: Result<SaveHeader, WireError>,
        mine: &SaveHeader,
    ) -> Result<SaveHeader, Fail> {
        let peer = conn.peer;
        let refuse = |conn: &mut Conn, why: String| {
            let _ = conn.send(Kind::Refuse, Phase::None, why.as_bytes());
            fail(Failure::Refused, why)
        };
        let theirs = match payload {
            Ok(h) => h,
            Err(e) => return Err(refuse(conn, format!("refused the {peer}: {e}"))),
        };
        let diff = incompatibility(&theirs, mine, peer);
        if !diff.is_empty() {
            return Err(refuse(
                conn,
                format!(
                    "refused the {peer} {} on {}: its stream is not for {}: {}",
                    theirs.device,
                    theirs.host,
                    mine.device,
                    diff.join("; ")
                ),
            ));
        }
        self.doing(format!(
            "talking to the {peer} {} on {} ({}, {})",
            theirs.device, theirs.host, theirs.driver, theirs.device_type
        ));
        Ok(theirs)
    }

    /// The source side: migrates the RUNNING device to the destination on
    /// `link`. On success the device is left in STOP, as after a migration.
    pub fn migrate(
        &mut self,
        link: &mut dyn Link,
        opts: &LiveOptions,
    ) -> Result<LiveSummary, Fail> {
        self.over(link, opts, "destination", Job::migrate_on)
    }

    /// Runs one side on a connection to `peer`; a failure other than a
    /// refusal (which the peer was already told) is sent to the peer.
    fn over(
        &mut self,
        link: &mut dyn Link,
        opts: &LiveOptions,
        peer: &'static str,
        side: fn(&mut Self, &mut Conn, &LiveOptions) -> Result<LiveSummary, Fail>,
    ) -> Result<LiveSummary, Fail> {
        let mut conn = Conn {
            link,
            buf: Vec::new(),
            idle: opts.idle,
            deadline: self.deadline,
            peer,
            sent: wire::stream_hash(),
        };
        let result = side(self, &mut conn, opts);
        if let Err(f) = &result {
            if f.kind != Failure::Refused {
                conn.abort(&f.message);
            }
        }
        result
    }

    fn migrate_on(&mut self, conn: &mut Conn, opts: &LiveOptions) -> Result<LiveSummary, Fail> {
        let flags = self.migration_flags()?;
        let mine = self.device_header(flags);
        let hello = wire::hello(&mine).map_err(|e| fail(Failure::File, e.to_string()))?;
        self.doing("HELLO to the destination".into());
        conn.send(Kind::Hello, Phase::None, &hello)?;
        let frame = conn.recv()?;
        if frame.kind != Kind::Hello {
            return Err(unexpected(&frame, "destination", "its HELLO"));
        }
        let parsed = wire::parse_hello(frame.payload);
        let theirs = self.check_hello(conn, parsed, &mine)?;
        // Checked before the destination leaves its state.
        let from = self.dev.get_state().map_err(|e| {
            fail(
                Failure::Driver,
                format!("GET MIG_DEVICE_STATE failed with {}", errno_name(e)),
            )
        })?;
        if !matches!(from, MigState::Running | MigState::RunningP2p) {
            return Err(fail(
                Failure::Driver,
                format!("the device is in {from}; a live migration starts from RUNNING"),
            ));
        }
        conn.send(Kind::Start, Phase::None, b"")?;
        self.doing("waiting for the destination to enter RESUMING".into());
        let frame = conn.recv()?;
        if frame.kind != Kind::Ready {
            return Err(unexpected(&frame, "destination", "READY"));
        }
        let peer_resaves = frame.payload.first() == Some(&1);

        let mut buf = vec![0u8; opts.chunk];
        let t0 = Instant::now();
        let mut s = LiveSummary {
            role: "source".into(),
            device: mine.device.clone(),
            driver: mine.driver.clone(),
            device_type: mine.device_type.clone(),
            peer: format!("{} on {}", theirs.device, theirs.host),
            precopy_iterations: 0,
            precopy_bytes: 0,
            stop_copy_bytes: 0,
            precopy_ns: 0,
            stop_copy_ns: 0,
            downtime_ns: None,
            switch_reason: String::new(),
            checksum: 0,
            total_ns: 0,
            state: String::new(),
            resaved: None,
        };
        let precopy = crate::model::MigrationFlags(flags).has_pre_copy();
        let (fd, stopped_at) = if precopy {
            let fd = self.set(MigState::PreCopy)?;
            if fd < 0 {
                return Err(fail(
                    Failure::Driver,
                    "RUNNING -> PRE_COPY returned no data fd (data_fd = -1)",
                ));
            }
            let r = self.precopy(conn, fd, &mut buf, &mut s, opts);
            if let Err(e) = r {
                let _ = self.dev.data_close(fd);
                return Err(e);
            }
            s.precopy_ns = nanos(t0.elapsed());
            let at = Instant::now();
            if let Err(e) = self.set(MigState::StopCopy) {
                let _ = self.dev.data_close(fd);
                return Err(e);
            }
            (fd, at)
        } else {
            s.switch_reason = "the device has no PRE_COPY: STOP_COPY only".into();
            let at = Instant::now();
            self.set(MigState::Stop)?;
            let fd = self.set(MigState::StopCopy)?;
            if fd < 0 {
                return Err(fail(
                    Failure::Driver,
                    "STOP -> STOP_COPY returned no data fd (data_fd = -1)",
                ));
            }
            (fd, at)
        };
        let streamed = (|| {
            conn.send(
                Kind::Switch,
                Phase::None,
                &wire::pair(s.precopy_iterations, s.precopy_bytes),
            )?;
            let t_stop = Instant::now();
            s.stop_copy_bytes = self
                .stream_out(
                    conn,
                    fd,
                    &mut buf,
                    Phase::StopCopy,
                    ReadUntil::Eof,
                    u64::MAX,
                )?
                .0;
            s.stop_copy_ns = nanos(t_stop.elapsed());
            self.set(MigState::Stop)
        })();
        let _ = self.dev.data_close(fd);
        streamed?;
        s.checksum = conn.sent.digest();
        conn.send(Kind::End, Phase::None, &wire::pair(s.bytes(), s.checksum))?;
        self.doing("waiting for the destination to reach RUNNING".into());
        if peer_resaves {
            // It saves a whole state before RUNNING and says nothing meanwhile.
            conn.idle = self.deadline.saturating_duration_since(Instant::now());
        }
        let frame = conn.recv()?;
        if frame.kind != Kind::Done {
            return Err(unexpected(&frame, "destination", "DONE"));
        }
        let downtime = nanos(stopped_at.elapsed());
        s.downtime_ns = Some(downtime);
        s.total_ns = nanos(t0.elapsed());
        // The destination is RUNNING: a lost SUMMARY costs it a figure only.
        let _ = conn.send(Kind::Summary, Phase::None, &downtime.to_le_bytes());
        if let Some(path) = &opts.resave {
            s.resaved = Some(self.save(path, opts.chunk)?);
        }
        s.state = self.state();
        Ok(s)
    }

    /// Precopy iterations until the switch; fills the summary's precopy part.
    fn precopy(
        &mut self,
        conn: &mut Conn,
        fd: crate::device::DataFd,
        buf: &mut [u8],
        s: &mut LiveSummary,
        opts: &LiveOptions,
    ) -> Result<(), Fail> {
        let t0 = Instant::now();
        let mut info = self.precopy_info(fd, 0)?;
        loop {
            // An iteration reads what PRECOPY_INFO announced, as QEMU does:
            // a device dirtying faster than it is read never ends its data.
            let announced = info.initial_bytes.saturating_add(info.dirty_bytes);
            let (bytes, end) = self.stream_out(
                conn,
                fd,
                buf,
                Phase::PreCopy,
                ReadUntil::EndOfPrecopy,
                announced.max(1),
            )?;
            s.precopy_bytes += bytes;
            s.precopy_iterations += 1;
            if end == End::Eof {
                (self.report)(super::Report::Note(format!(
                    "precopy iteration {}: read() returned 0 where ENOMSG ends the precopy data (V2-PRECOPY-06)",
                    s.precopy_iterations
                )));
            }
            info = self.precopy_info(fd, s.precopy_iterations)?;
            let secs = t0.elapsed().as_secs_f64().max(1e-6);
            let rate = s.precopy_bytes as f64 / secs;
            let left = info.dirty_bytes as f64 / rate.max(1.0);
            if info.initial_bytes == 0 && left <= opts.downtime_limit.as_secs_f64() {
                s.switch_reason = format!(
                    "after {} iteration(s) the initial data was sent and {} dirty bytes fit the {} downtime limit",
                    s.precopy_iterations,
                    info.dirty_bytes,
                    humantime::format_duration(opts.downtime_limit)
                );
                return Ok(());
            }
            if s.precopy_iterations >= u64::from(opts.max_precopy) {
                s.switch_reason = format!(
                    "--max-precopy {} reached with initial_bytes {} and dirty_bytes {}",
                    opts.max_precopy, info.initial_bytes, info.dirty_bytes
                );
                return Ok(());
            }
            self.doing(format!(
                "precopy iteration {}: initial_bytes {}, dirty_bytes {}",
                s.precopy_iterations + 1,
                info.initial_bytes,
                info.dirty_bytes
            ));
        }
    }

    /// VFIO_MIG_GET_PRECOPY_INFO after `iterations` precopy iterations.
    fn precopy_info(
        &mut self,
        fd: crate::device::DataFd,
        iterations: u64,
    ) -> Result<crate::uapi::VfioPrecopyInfo, Fail> {
        self.dev.precopy_info(fd).map_err(|e| {
            fail(
                Failure::Driver,
                format!(
                    "VFIO_MIG_GET_PRECOPY_INFO after {iterations} precopy iteration(s) failed with {}",
                    errno_name(e)
                ),
            )
        })
    }

    /// Reads the data fd until `until` or `bound` bytes, sending every
    /// piece as DATA.
    fn stream_out(
        &mut self,
        conn: &mut Conn,
        fd: crate::device::DataFd,
        buf: &mut [u8],
        phase: Phase,
        until: ReadUntil,
        bound: u64,
    ) -> Result<(u64, End), Fail> {
        let deadline = self.deadline;
        let (bytes, end) = datafd::read(
            &mut *self.dev,
            fd,
            buf,
            until,
            bound,
            || deadline.saturating_duration_since(Instant::now()),
            |data| conn.send_data(phase, data),
        )?;
        let at = format!("for read() after {bytes} bytes");
        match (end, until) {
            (End::Eof, _) | (End::Enomsg | End::Bound, ReadUntil::EndOfPrecopy) => {
                Ok((bytes, end))
            }
            (End::NotReady, _) => Err(not_ready(&at)),
            (End::Enomsg, _) => Err(fail(
                Failure::Driver,
                format!(
                    "read() after {bytes} bytes failed with ENOMSG: in STOP_COPY the stream ends with 0, never ENOMSG (V2-SAVE-02)"
                ),
            )),
            (End::Error(e), _) => Err(fail(
                Failure::Driver,
                format!("read() after {bytes} bytes failed with {}", errno_name(e)),
            )),
            (End::Bound | End::Once(_), _) => unreachable!("STOP_COPY reads to the end"),
        }
    }

    /// The destination side: receives a live migration on `link` into the
    /// device and leaves it RUNNING.
    pub fn receive(
        &mut self,
        link: &mut dyn Link,
        opts: &LiveOptions,
    ) -> Result<LiveSummary, Fail> {
        self.over(link, opts, "source", Job::receive_on)
    }

    fn receive_on(&mut self, conn: &mut Conn, opts: &LiveOptions) -> Result<LiveSummary, Fail> {
        self.doing("waiting for the source's HELLO".into());
        let frame = conn.recv()?;
        if frame.kind != Kind::Hello {
            return Err(unexpected(&frame, "source", "its HELLO"));
        }
        let parsed = wire::parse_hello(frame.payload);
        let flags = match self.migration_flags() {
            Ok(f) => f,
            Err(e) => {
                let _ = conn.send(Kind::Refuse, Phase::None, e.message.as_bytes());
                return Err(e);
            }
        };
        let mine = self.device_header(flags);
        let theirs = self.check_hello(conn, parsed, &mine)?;
        let hello = wire::hello(&mine).map_err(|e| fail(Failure::File, e.to_string()))?;
        conn.send(Kind::Hello, Phase::None, &hello)?;
        let frame = conn.recv()?;
        if frame.kind != Kind::Start {
            return Err(unexpected(&frame, "source", "START"));
        }
        self.stop()?;
        let fd = self.set(MigState::Resuming)?;
        if fd < 0 {
            return Err(fail(
                Failure::Driver,
                "STOP -> RESUMING returned no data fd (data_fd = -1)",
            ));
        }
        let mut s = LiveSummary {
            role: "destination".into(),
            device: mine.device.clone(),
            driver: mine.driver.clone(),
            device_type: mine.device_type.clone(),
            peer: format!("{} on {}", theirs.device, theirs.host),
            precopy_iterations: 0,
            precopy_bytes: 0,
            stop_copy_bytes: 0,
            precopy_ns: 0,
            stop_copy_ns: 0,
            downtime_ns: None,
            switch_reason: String::new(),
            checksum: 0,
            total_ns: 0,
            state: String::new(),
            resaved: None,
        };
        let written = conn
            .send(Kind::Ready, Phase::None, &[u8::from(opts.resave.is_some())])
            .and_then(|()| self.stream_in(conn, fd, &mut s));
        let left = written.and_then(|()| self.set(MigState::Stop));
        let _ = self.dev.data_close(fd);
        left.map_err(|e| match e.kind {
            Failure::Driver => Fail {
                message: format!("the driver rejected the stream: {}", e.message),
                ..e
            },
            _ => e,
        })?;
        if let Some(path) = &opts.resave {
            s.resaved = Some(self.save(path, opts.chunk)?);
        }
        self.set(MigState::Running)?;
        conn.send(Kind::Done, Phase::None, b"")?;
        // The device is RUNNING and the migration done: the source's
        // figure is welcome, not required.
        if let Ok(frame) = conn.recv() {
            if frame.kind == Kind::Summary && frame.payload.len() == 8 {
                s.downtime_ns = Some(crate::uapi::get_u64(frame.payload, 0));
            }
        }
        s.state = self.state();
        Ok(s)
    }

    /// Writes DATA frames to the resuming fd until END, checking the
    /// stream's length and checksum there.
    fn stream_in(
        &mut self,
        conn: &mut Conn,
        fd: crate::device::DataFd,
        s: &mut LiveSummary,
    ) -> Result<(), Fail> {
        let mut hash = wire::stream_hash();
        let t0 = Instant::now();
        let mut switched: Option<Instant> = None;
        let mut next_progress = 0u64;
        loop {
            let deadline = self.deadline;
            let frame = conn.recv()?;
            match frame.kind {
                Kind::Data => {
                    hash.update(frame.payload);
                    let at = s.bytes();
                    if at >= next_progress {
                        (self.report)(super::Report::Doing(format!(
                            "write() on the data fd after {at} bytes"
                        )));
                        next_progress += super::PROGRESS_EVERY;
                    }
                    let w = datafd::write_all(&mut *self.dev, fd, frame.payload, || {
                        deadline.saturating_duration_since(Instant::now())
                    });
                    let len = frame.payload.len() as u64;
                    if frame.phase == Phase::StopCopy {
                        s.stop_copy_bytes += len;
                    } else {
                        s.precopy_bytes += len;
                    }
                    let byte = at + w.bytes as u64;
                    match w.end {
                        WriteEnd::Done => {}
                        WriteEnd::NotReady => {
                            return Err(not_ready(&format!("for write() at byte {byte}")))
                        }
                        WriteEnd::PollFailed(e) => {
                            return Err(super::poll_failed(
                                e,
                                &format!("for write() at byte {byte}"),
                            ))
                        }
                        WriteEnd::Zero => {
                            return Err(fail(
                                Failure::Driver,
                                format!("write() at byte {byte} returned 0"),
                            ))
                        }
                        WriteEnd::Failed(e) => {
                            return Err(fail(
                                Failure::Driver,
                                format!("write() at byte {byte} failed with {}", errno_name(e)),
                            ))
                        }
                    }
                }
                Kind::Switch => {
                    let (iterations, _) =
                        wire::parse_pair(&frame).map_err(|e| peer_fail(e.to_string()))?;
                    s.precopy_iterations = iterations;
                    s.precopy_ns = nanos(t0.elapsed());
                    switched = Some(Instant::now());
                    self.doing("the source is in STOP_COPY".into());
                }
                Kind::End => {
                    let (len, sum) =
                        wire::parse_pair(&frame).map_err(|e| peer_fail(e.to_string()))?;
                    let (got_len, got_sum) = (s.bytes(), hash.digest());
                    if len != got_len {
                        return Err(peer_fail(format!(
                            "the source says it sent {len} bytes, {got_len} arrived"
                        )));
                    }
                    if sum != got_sum {
                        return Err(peer_fail(format!(
                            "the stream checksum is {got_sum:#018x}, the source's END says {sum:#018x}"
                        )));
                    }
                    s.checksum = sum;
                    s.stop_copy_ns = switched.map_or(0, |t| nanos(t.elapsed()));
                    s.total_ns = nanos(t0.elapsed());
                    return Ok(());
                }
                _ => return Err(unexpected(&frame, "source", "DATA or END")),
            }
        }
    }
}

#[cfg(test)]
mod tests;
