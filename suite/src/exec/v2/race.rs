//! Races, as cases: threads on one data fd while the main thread keeps
//! calling the device, as QEMU's multifd save and load threads do. The
//! workers use shared data fds ([`crate::device::DataFdOps`]); the main
//! thread's SET, reset and close run through the usual executor, with its
//! checks. Every wait on a worker is bounded by the step's `within`: a
//! driver that never lets a call return is a finding, not a hung case.
//!
//! Nothing here depends on timing: where a rule is about what happens
//! after the main thread acted, the worker stops on its own (after half
//! the stream, or at its end) and waits to be told; only then does it make
//! the call the rule judges.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier};
use std::thread;

use super::*;
use crate::device::{DataFdOps, SharedDataFd};
use crate::scenario::{Mutation, RaceKind};

/// One `race` step, resolved.
pub(super) struct Race<'s> {
    pub kind: RaceKind,
    pub from: Option<&'s str>,
    pub into: Option<&'s str>,
    pub to: Option<u32>,
    pub chunk: usize,
    pub within: Duration,
    /// Calls the workers made that returned: a worker is stuck only when
    /// none returned for `within`, however long the whole race takes.
    pub returned: Arc<AtomicU64>,
}

/// A shared data fd that counts the calls that returned.
struct Counted {
    fd: SharedDataFd,
    returned: Arc<AtomicU64>,
}

impl Counted {
    fn count<T>(&self, r: T) -> T {
        self.returned.fetch_add(1, Ordering::SeqCst);
        r
    }
}

impl DataFdOps for Counted {
    fn read(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        self.count(self.fd.read(buf))
    }

    fn write(&self, buf: &[u8]) -> Result<usize, Errno> {
        self.count(self.fd.write(buf))
    }

    fn poll(&self, events: PollFlags, timeout: Duration) -> Result<PollFlags, Errno> {
        self.count(self.fd.poll(events, timeout))
    }
}

/// One read or write a worker made.
#[derive(Debug)]
struct Io {
    /// Started after the main thread's action returned.
    late: bool,
    got: Result<usize, Errno>,
    data: Vec<u8>,
}

/// What a worker did.
#[derive(Debug, Default)]
struct Report {
    ios: Vec<Io>,
    /// The poll made after the main thread's action, before the late read.
    late_poll: Option<Result<PollFlags, Errno>>,
}

impl Report {
    fn bytes(&self) -> Vec<u8> {
        self.ios
            .iter()
            .flat_map(|io| io.data.iter().copied())
            .collect()
    }

    fn late(&self) -> Option<&Io> {
        self.ios.iter().find(|io| io.late)
    }
}

/// Tells a worker the main thread is done: the flag for calls not yet
/// started, the message for a worker waiting for it.
struct Late {
    flag: Arc<AtomicBool>,
    tx: Sender<()>,
}

impl Late {
    fn new() -> (Late, Arc<AtomicBool>, Receiver<()>) {
        let flag = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        (
            Late {
                flag: Arc::clone(&flag),
                tx,
            },
            flag,
            rx,
        )
    }

    fn announce(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A worker already done does not listen.
        let _ = self.tx.send(());
    }
}

/// How a reading worker goes about it.
struct ReadPlan {
    chunk: usize,
    /// Stop after this many bytes and wait for the main thread (so data
    /// is left when it acts).
    budget: Option<u64>,
    /// Wait for the main thread at the end (or budget), then poll (within
    /// this) and read once more.
    late: Option<(Arc<AtomicBool>, Receiver<()>, Duration)>,
}

fn reader(fd: SharedDataFd, plan: ReadPlan, started: Sender<()>) -> Report {
    let mut buf = vec![0u8; plan.chunk.max(1)];
    let mut report = Report::default();
    let mut read = 0u64;
    let mut started = Some(started);
    loop {
        let late = plan
            .late
            .as_ref()
            .is_some_and(|(flag, _, _)| flag.load(Ordering::SeqCst));
        if late {
            if let Some((_, _, within)) = &plan.late {
                report.late_poll = Some(fd.poll(PollFlags::POLLIN, *within));
            }
        }
        let got = fd.read(&mut buf);
        let n = *got.as_ref().unwrap_or(&0);
        report.ios.push(Io {
            late,
            got,
            data: buf[..n].to_vec(),
        });
        if let Some(s) = started.take() {
            let _ = s.send(());
        }
        read += n as u64;
        if late {
            return report;
        }
        // Let the other threads in between calls, as a copy to user
        // memory would.
        thread::yield_now();
        if n == 0 || plan.budget.is_some_and(|b| read >= b) {
            match &plan.late {
                Some((_, rx, _)) if rx.recv().is_ok() => continue,
                _ => return report,
            }
        }
    }
}

/// Writes `data` in chunks (each written to its end, as
/// `vfio_load_state_buffer_write()` does), stopping at `budget` to wait
/// for the main thread when `late` is given, then writing once more.
fn writer(
    fd: SharedDataFd,
    data: Arc<Vec<u8>>,
    chunk: usize,
    budget: Option<u64>,
    late: Option<(Arc<AtomicBool>, Receiver<()>)>,
    started: Sender<()>,
) -> Report {
    let mut report = Report::default();
    let mut at = 0usize;
    let mut started = Some(started);
    loop {
        let is_late = late
            .as_ref()
            .is_some_and(|(flag, _)| flag.load(Ordering::SeqCst));
        let end = (at + chunk.max(1)).min(data.len());
        let piece = if at < end {
            &data[at..end]
        } else {
            &data[..1.min(data.len())]
        };
        let got = fd.write(piece);
        report.ios.push(Io {
            late: is_late,
            got,
            data: Vec::new(),
        });
        if let Some(s) = started.take() {
            let _ = s.send(());
        }
        if is_late {
            return report;
        }
        match got {
            Ok(n) if n > 0 && at < data.len() => at += n,
            _ => at = data.len(),
        }
        if at >= data.len() || budget.is_some_and(|b| at as u64 >= b) {
            match &late {
                Some((_, rx)) if rx.recv().is_ok() => continue,
                _ => return report,
            }
        }
    }
}

/// One of two writers taking turns: chunk `i` is written by worker
/// `i % 2`, each waiting for the other's chunk to be written first.
fn turn_writer(
    fd: SharedDataFd,
    data: Arc<Vec<u8>>,
    chunk: usize,
    turn: Receiver<usize>,
    next: Sender<usize>,
) -> Report {
    let mut report = Report::default();
    while let Ok(i) = turn.recv() {
        let start = i.saturating_mul(chunk);
        if start >= data.len() {
            let _ = next.send(usize::MAX);
            break;
        }
        let end = (start + chunk).min(data.len());
        let mut at = start;
        while at < end {
            let got = fd.write(&data[at..end]);
            report.ios.push(Io {
                late: false,
                got,
                data: Vec::new(),
            });
            match got {
                Ok(n) if n > 0 => at += n,
                _ => {
                    let _ = next.send(usize::MAX);
                    return report;
                }
            }
        }
        let _ = next.send(i + 1);
    }
    report
}

/// Whether `stream` is an interleaving of the pieces of `a` and `b`, each
/// in its own order: what two readers of one stream must have got.
fn interleaves(stream: &[u8], a: &[&[u8]], b: &[&[u8]]) -> bool {
    let total: usize = a.iter().chain(b).map(|p| p.len()).sum();
    if total != stream.len() {
        return false;
    }
    // Positions (pieces of a taken, pieces of b taken) already seen to fail;
    // equal pieces can make both branches match.
    let mut dead = std::collections::HashSet::new();
    let mut todo = vec![(0usize, 0usize, 0usize)];
    while let Some((i, j, at)) = todo.pop() {
        if i == a.len() && j == b.len() {
            return true;
        }
        if !dead.insert((i, j)) {
            continue;
        }
        for (piece, next) in [(a.get(i), (i + 1, j)), (b.get(j), (i, j + 1))] {
            if let Some(p) = piece {
                if stream[at..].starts_with(p) {
                    todo.push((next.0, next.1, at + p.len()));
                }
            }
        }
    }
    false
}

fn as_slices(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(Vec::as_slice).collect()
}

fn ios_text(r: &Report) -> String {
    let ok: u64 = r
        .ios
        .iter()
        .map(|io| *io.got.as_ref().unwrap_or(&0) as u64)
        .sum();
    let errs: Vec<String> = r
        .ios
        .iter()
        .filter_map(|io| io.got.err().map(errno_name))
        .collect();
    format!(
        "{} calls, {ok} bytes{}",
        r.ios.len(),
        if errs.is_empty() {
            String::new()
        } else {
            format!(", errors {}", errs.join(" "))
        }
    )
}

impl Exec<'_, '_> {
    pub(super) fn race(&mut self, role: Role, race: &Race<'_>, key: &StepKey) -> Flow {
        let saving = !matches!(
            race.kind,
            RaceKind::Writers | RaceKind::ResetDuringWrite | RaceKind::MultifdLoad
        );
        let fd = self.session_fd(
            role,
            if saving {
                SessionKind::Saving
            } else {
                SessionKind::Resuming
            },
        )?;
        let fd_ops = self.role(role)?.dev.share_data_fd(fd).map_err(|e| {
            Abort::Harness(format!(
                "sharing data fd {fd} failed with {}",
                errno_name(e)
            ))
        })?;
        let shared: SharedDataFd = Arc::new(Counted {
            fd: fd_ops,
            returned: Arc::clone(&race.returned),
        });
        let from = match race.from {
            Some(name) => Some(Arc::new(self.buffer_bytes(name)?)),
            None => None,
        };
        let call = self.start(
            role,
            "race",
            format!("{:?}, fd {fd}, chunk {}", race.kind, race.chunk),
            key,
        );
        match race.kind {
            RaceKind::Readers => self.race_readers(race, shared, from, call, key),
            RaceKind::Writers => self.race_writers(role, race, shared, from, call, key),
            RaceKind::SetDuringRead | RaceKind::ResetDuringRead | RaceKind::CloseDuringRead => {
                self.race_end_read(role, race, shared, call, key)
            }
            RaceKind::ResetDuringWrite => {
                self.race_reset_write(role, race, shared, from, call, key)
            }
            RaceKind::MultifdSave => self.multifd_save(role, race, shared, call, key),
            RaceKind::MultifdLoad => self.multifd_load(role, race, shared, from, call, key),
        }
    }

    /// The bytes of a saved stream.
    fn buffer_bytes(&mut self, name: &str) -> Result<Vec<u8>, Abort> {
        let io = |e: std::io::Error| Abort::Harness(format!("buffer `{name}`: {e}"));
        let buf = self
            .buffers
            .get_mut(name)
            .ok_or_else(|| Abort::Harness(format!("buffer `{name}` is empty")))?;
        let mut reader = buf.reader(&Mutation::default()).map_err(io)?;
        let mut out = Vec::new();
        let mut block = vec![0u8; 1 << 20];
        loop {
            let piece = reader.next_chunk(&mut block).map_err(io)?;
            if piece.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(piece);
        }
    }

    /// Waits for a worker's report while its calls keep returning: a worker
    /// none of whose calls returned for `within` (or by the case deadline)
    /// is a finding against `id`, and the case stops (the thread is left to
    /// the process exit).
    fn join(
        &mut self,
        rx: &Receiver<Report>,
        race: &Race<'_>,
        within: Duration,
        id: &str,
        what: &str,
        key: &StepKey,
    ) -> Result<Report, Abort> {
        let mut seen = race.returned.load(Ordering::SeqCst);
        loop {
            let bound = within.min(self.wait_budget());
            match rx.recv_timeout(bound) {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Timeout)
                    if !bound.is_zero() && race.returned.load(Ordering::SeqCst) != seen =>
                {
                    seen = race.returned.load(Ordering::SeqCst);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    self.check(
                        key,
                        Check::builtin(
                            "returns",
                            id,
                            false,
                            format!("the {what} returns"),
                            format!(
                                "still in the kernel: no call returned for {}",
                                ms_text(nanos(bound))
                            ),
                        ),
                    );
                    return Err(Abort::Driver(format!("a {what} did not return")));
                }
            }
        }
    }

    /// Calls `work` on this thread, over and over, until the worker
    /// reports; as in [`Self::join`], the worker is stuck only when none of
    /// its calls returned for `within` (or by the case deadline).
    fn alongside(
        &mut self,
        worker: &Receiver<Report>,
        race: &Race<'_>,
        what: &str,
        key: &StepKey,
        mut work: impl FnMut(&mut Self) -> Result<(), Abort>,
    ) -> Result<Report, Abort> {
        let mut seen = race.returned.load(Ordering::SeqCst);
        let mut since = Instant::now();
        loop {
            match worker.try_recv() {
                Ok(r) => return Ok(r),
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(Abort::Harness(format!("the {what} panicked")))
                }
                Err(mpsc::TryRecvError::Empty) => {
                    let now = race.returned.load(Ordering::SeqCst);
                    if now != seen {
                        (seen, since) = (now, Instant::now());
                    } else if since.elapsed() >= race.within || self.wait_budget().is_zero() {
                        return self.join(worker, race, Duration::ZERO, "KERNEL-02", what, key);
                    }
                    work(self)?;
                    thread::yield_now();
                }
            }
        }
    }

    /// Starts a worker thread; its report comes on the returned channel.
    fn spawn(work: impl FnOnce() -> Report + Send + 'static) -> Receiver<Report> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(work());
        });
        rx
    }

    fn race_readers(
        &mut self,
        race: &Race<'_>,
        shared: SharedDataFd,
        reference: Option<Arc<Vec<u8>>>,
        call: Call,
        key: &StepKey,
    ) -> Flow {
        // Both start reading together, so their reads overlap.
        let together = Arc::new(Barrier::new(2));
        let workers: Vec<Receiver<Report>> = (0..2)
            .map(|_| {
                let fd = Arc::clone(&shared);
                let together = Arc::clone(&together);
                let (started, _) = mpsc::channel();
                let plan = ReadPlan {
                    chunk: race.chunk,
                    budget: None,
                    late: None,
                };
                Self::spawn(move || {
                    together.wait();
                    reader(fd, plan, started)
                })
            })
            .collect();
        let mut reports = Vec::new();
        for rx in &workers {
            reports.push(self.join(
                rx,
                race,
                race.within,
                "KERNEL-02",
                "reader thread's read",
                key,
            )?);
        }
        let (a, b) = (&reports[0], &reports[1]);
        let total = a.bytes().len() + b.bytes().len();
        self.record(
            call,
            Returned::ret(StepReturn::Ok(total as i64)).moved(total as u64),
            key,
        );
        let pieces = |r: &Report| -> Vec<Vec<u8>> {
            r.ios
                .iter()
                .filter(|io| !io.data.is_empty())
                .map(|io| io.data.clone())
                .collect()
        };
        let (pa, pb) = (pieces(a), pieces(b));
        let reference = reference.unwrap_or_default();
        let ok = interleaves(&reference, &as_slices(&pa), &as_slices(&pb));
        let errors: Vec<String> = reports
            .iter()
            .flat_map(|r| r.ios.iter().filter_map(|io| io.got.err().map(errno_name)))
            .collect();
        self.check(
            key,
            Check::builtin(
                "one-stream",
                "V2-RACE-01",
                ok && errors.is_empty(),
                format!(
                    "the two readers' pieces interleave into the {}-byte stream one reader got, and both end with read() = 0",
                    reference.len()
                ),
                format!(
                    "reader 1: {}; reader 2: {}; {total} bytes in all",
                    ios_text(a),
                    ios_text(b)
                ),
            ),
        );
        Ok(())
    }

    fn race_writers(
        &mut self,
        role: Role,
        race: &Race<'_>,
        shared: SharedDataFd,
        from: Option<Arc<Vec<u8>>>,
        call: Call,
        key: &StepKey,
    ) -> Flow {
        let data = from.unwrap_or_default();
        let (to_a, turn_a) = mpsc::channel();
        let (to_b, turn_b) = mpsc::channel();
        let workers = [
            {
                let (fd, data, next) = (Arc::clone(&shared), Arc::clone(&data), to_b.clone());
                let chunk = race.chunk.max(1);
                Self::spawn(move || turn_writer(fd, data, chunk, turn_a, next))
            },
            {
                let (fd, data, next) = (Arc::clone(&shared), Arc::clone(&data), to_a.clone());
                let chunk = race.chunk.max(1);
                Self::spawn(move || turn_writer(fd, data, chunk, turn_b, next))
            },
        ];
        let _ = to_a.send(0);
        drop((to_a, to_b));
        let mut reports = Vec::new();
        for rx in &workers {
            reports.push(self.join(
                rx,
                race,
                race.within,
                "KERNEL-02",
                "writer thread's write",
                key,
            )?);
        }
        let written: u64 = reports
            .iter()
            .flat_map(|r| &r.ios)
            .map(|io| *io.got.as_ref().unwrap_or(&0) as u64)
            .sum();
        let error = reports
            .iter()
            .flat_map(|r| &r.ios)
            .find_map(|io| io.got.err());
        self.record(
            call,
            Returned::of(&error.map_or(Ok(written as i64), Err)).moved(written),
            key,
        );
        let all = error.is_none() && written == data.len() as u64;
        self.check(
            key,
            Check::builtin(
                "writes-accepted",
                "V2-RACE-02",
                all,
                format!(
                    "write() accepts the {}-byte stream written by two threads in turn",
                    data.len()
                ),
                format!(
                    "writer 1: {}; writer 2: {}",
                    ios_text(&reports[0]),
                    ios_text(&reports[1])
                ),
            ),
        );
        let ctx = self.role(role)?;
        ctx.delivered = if all {
            Delivered::Stream
        } else {
            Delivered::Unfit(format!("{written} bytes accepted from two writers"))
        };
        if let Some(s) = &mut ctx.session {
            s.bytes += written;
        }
        Ok(())
    }

    /// A reader runs into the main thread's SET, reset or close: it stops
    /// half-way, the main thread acts, then it polls and reads once more.
    fn race_end_read(
        &mut self,
        role: Role,
        race: &Race<'_>,
        shared: SharedDataFd,
        call: Call,
        key: &StepKey,
    ) -> Flow {
        let budget = match self.role(role)?.dev.stop_copy_length() {
            Ok(len) if len > 1 => len / 2,
            _ => race.chunk as u64,
        };
        let (late, flag, rx) = Late::new();
        let plan = ReadPlan {
            chunk: race.chunk,
            budget: Some(budget),
            // Half the bound, so the join sees a poll that waited it all.
            late: Some((flag, rx, race.within / 2)),
        };
        let (started_tx, started) = mpsc::channel();
        let worker = Self::spawn(move || reader(shared, plan, started_tx));
        if started
            .recv_timeout(race.within.min(self.wait_budget()))
            .is_err()
        {
            self.record(call, Returned::ret(StepReturn::Ok(0)), key);
            return self
                .join(
                    &worker,
                    race,
                    Duration::ZERO,
                    "KERNEL-02",
                    "reader thread's first read",
                    key,
                )
                .map(drop);
        }
        self.record(call, Returned::ret(StepReturn::Ok(0)), key);
        let (id, what) = match race.kind {
            RaceKind::SetDuringRead => {
                let to = race.to.unwrap_or(MigState::Stop.raw());
                self.set_state(role, to, None, key)?;
                (
                    "V2-RACE-03",
                    format!("SET {}", MigState::from_raw(to).map_or("?", MigState::name)),
                )
            }
            RaceKind::ResetDuringRead => {
                self.reset(role, None, key)?;
                ("V2-RESET-02", "VFIO_DEVICE_RESET".to_string())
            }
            _ => {
                self.close_device(role, key)?;
                ("V2-FSM-13", "closing the device fd".to_string())
            }
        };
        late.announce();
        let report = self.join(
            &worker,
            race,
            race.within,
            id,
            "data fd read after the session ended",
            key,
        )?;
        if race.kind == RaceKind::SetDuringRead {
            let poll = report.late_poll.unwrap_or(Ok(PollFlags::empty()));
            self.check(
                key,
                Check::builtin(
                    "poll-wakes",
                    "V2-RACE-03",
                    !matches!(poll, Ok(p) if p.is_empty()),
                    format!("poll() on the data fd reports the ended session at once after {what}"),
                    match poll {
                        Ok(p) if p.is_empty() => {
                            format!("nothing within {}", ms_text(nanos(race.within)))
                        }
                        Ok(p) => format!("{p:?}"),
                        Err(e) => errno_name(e),
                    },
                ),
            );
        }
        let late_read = report.late();
        let delivered = late_read.map_or(0, |io| io.data.len());
        self.check(
            key,
            Check::builtin(
                "no-data-after-end",
                id,
                delivered == 0,
                format!("a read() started after {what} returned delivers no data (0 or an error)"),
                match late_read.map(|io| io.got) {
                    Some(Ok(n)) => format!("{n} bytes"),
                    Some(Err(e)) => errno_name(e),
                    None => "no read was made".into(),
                },
            ),
        );
        Ok(())
    }

    fn race_reset_write(
        &mut self,
        role: Role,
        race: &Race<'_>,
        shared: SharedDataFd,
        from: Option<Arc<Vec<u8>>>,
        call: Call,
        key: &StepKey,
    ) -> Flow {
        let data = from.unwrap_or_default();
        let budget = (data.len() as u64 / 2).max(1);
        let (late, flag, rx) = Late::new();
        let (started_tx, started) = mpsc::channel();
        let chunk = race.chunk;
        let worker = Self::spawn(move || {
            writer(
                shared,
                data,
                chunk,
                Some(budget),
                Some((flag, rx)),
                started_tx,
            )
        });
        let first = started.recv_timeout(race.within.min(self.wait_budget()));
        self.record(call, Returned::ret(StepReturn::Ok(0)), key);
        if first.is_err() {
            return self
                .join(
                    &worker,
                    race,
                    Duration::ZERO,
                    "KERNEL-02",
                    "writer thread's first write",
                    key,
                )
                .map(drop);
        }
        self.reset(role, None, key)?;
        late.announce();
        let report = self.join(
            &worker,
            race,
            race.within,
            "V2-RESET-02",
            "data fd write after the reset",
            key,
        )?;
        let late_write = report.late().map(|io| io.got);
        self.check(
            key,
            Check::builtin(
                "write-refused-after-reset",
                "V2-RESET-02",
                matches!(late_write, Some(Err(_))),
                "a write() started after VFIO_DEVICE_RESET returned fails".into(),
                match late_write {
                    Some(Ok(n)) => format!("accepted {n} bytes"),
                    Some(Err(e)) => errno_name(e),
                    None => "no write was made".into(),
                },
            ),
        );
        Ok(())
    }

    /// `vfio_multifd_save_complete_precopy_thread()`: a save thread reads
    /// buffers of min(1 MiB, stop_copy_length) until read() returns 0,
    /// while this thread queries MIG_DATA_SIZE.
    fn multifd_save(
        &mut self,
        role: Role,
        race: &Race<'_>,
        shared: SharedDataFd,
        call: Call,
        key: &StepKey,
    ) -> Flow {
        let stop_copy = self.role(role)?.dev.stop_copy_length();
        let buffer = stop_copy.map_or(1 << 20, |l| l.clamp(1, 1 << 20)) as usize;
        let (started_tx, _) = mpsc::channel();
        let plan = ReadPlan {
            chunk: buffer,
            budget: None,
            late: None,
        };
        let worker = Self::spawn(move || reader(shared, plan, started_tx));
        let mut queries = 0u64;
        let mut query_errors = Vec::new();
        let report = self.alongside(&worker, race, "save thread's read", key, |x| {
            queries += 1;
            if let Err(e) = x.role(role)?.dev.stop_copy_length() {
                query_errors.push(errno_name(e));
            }
            Ok(())
        })?;
        let stream = report.bytes();
        let end = report.ios.last().map(|io| io.got);
        self.record(
            call,
            Returned::of(&end.unwrap_or(Ok(0)).map(|_| stream.len() as i64))
                .moved(stream.len() as u64),
            key,
        );
        let expected_data = *stop_copy.as_ref().unwrap_or(&0) > 0;
        self.check(
            key,
            Check::builtin(
                "save-thread",
                "V2-RACE-04",
                matches!(end, Some(Ok(0))) && (!expected_data || !stream.is_empty()) && query_errors.is_empty(),
                "a thread that did not SET STOP_COPY reads the stream to read() = 0 while MIG_DATA_SIZE is queried, and gets data when stop_copy_length > 0".into(),
                format!(
                    "save thread: {}, ended with {}; stop_copy_length {}; {queries} MIG_DATA_SIZE queries meanwhile{}",
                    ios_text(&report),
                    match end {
                        Some(Ok(n)) => format!("read() = {n}"),
                        Some(Err(e)) => errno_name(e),
                        None => "nothing".into(),
                    },
                    stop_copy.map_or_else(errno_name, |l| l.to_string()),
                    if query_errors.is_empty() { String::new() } else { format!(", failed: {}", query_errors.join(" ")) }
                ),
            ),
        );
        let mut buf = StreamBuf::new(self.opts.spill_threshold);
        buf.append(&stream, &self.opts.temp_dir)
            .map_err(|e| Abort::Harness(format!("saving the stream: {e}")))?;
        if let Some(name) = race.into {
            self.buffers.insert(name.to_string(), buf);
        }
        if let Some(s) = &mut self.role(role)?.session {
            s.bytes += stream.len() as u64;
        }
        Ok(())
    }

    /// `vfio_load_bufs_thread()`: a load thread writes the stream, each
    /// buffer to its end, while this thread GETs the state.
    fn multifd_load(
        &mut self,
        role: Role,
        race: &Race<'_>,
        shared: SharedDataFd,
        from: Option<Arc<Vec<u8>>>,
        call: Call,
        key: &StepKey,
    ) -> Flow {
        let data = from.unwrap_or_default();
        let len = data.len() as u64;
        let (started_tx, _) = mpsc::channel();
        let chunk = race.chunk;
        let worker = Self::spawn(move || writer(shared, data, chunk, None, None, started_tx));
        let mut gets = 0u64;
        let mut wrong = Vec::new();
        let report = self.alongside(&worker, race, "load thread's write", key, |x| {
            gets += 1;
            match x.role(role)?.dev.get_state() {
                Ok(MigState::Resuming) => {}
                Ok(s) => wrong.push(s.name().to_string()),
                Err(e) => wrong.push(errno_name(e)),
            }
            Ok(())
        })?;
        let written: u64 = report
            .ios
            .iter()
            .map(|io| *io.got.as_ref().unwrap_or(&0) as u64)
            .sum();
        let error = report.ios.iter().find_map(|io| io.got.err());
        self.record(
            call,
            Returned::of(&error.map_or(Ok(written as i64), Err)).moved(written),
            key,
        );
        let all = error.is_none() && written == len && wrong.is_empty();
        self.check(
            key,
            Check::builtin(
                "load-thread",
                "V2-RACE-04",
                all,
                format!("a thread that did not SET RESUMING writes the {len}-byte stream while GET MIG_DEVICE_STATE stays RESUMING"),
                format!(
                    "load thread: {}; {gets} GETs meanwhile{}",
                    ios_text(&report),
                    if wrong.is_empty() { String::new() } else { format!(", answered {}", wrong.join(" ")) }
                ),
            ),
        );
        let ctx = self.role(role)?;
        ctx.delivered = if error.is_none() && written == len {
            Delivered::Stream
        } else {
            Delivered::Unfit(format!("the load thread wrote {written} of {len} bytes"))
        };
        if let Some(s) = &mut ctx.session {
            s.bytes += written;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::interleaves;

    #[test]
    fn interleavings_of_two_readers() {
        let s = b"abcdefgh";
        assert!(interleaves(s, &[b"ab", b"ef"], &[b"cd", b"gh"]));
        assert!(interleaves(s, &[b"abcdefgh"], &[]));
        // A byte read twice, or lost.
        assert!(!interleaves(s, &[b"ab", b"cd"], &[b"ab", b"efgh"]));
        assert!(!interleaves(s, &[b"ab"], &[b"defgh"]));
        // Each reader's own order must hold.
        assert!(!interleaves(s, &[b"ef", b"ab"], &[b"cd", b"gh"]));
        // Equal pieces: the search tries both.
        assert!(interleaves(b"aaab", &[b"a", b"ab"], &[b"a"]));
    }
}
