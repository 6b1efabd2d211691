//! Runs one scenario on its devices and emits [`Event`]s: every operation
//! as a step record, every expectation as a check citing requirement IDs.
//!
//! The executor never blocks without a deadline: data-fd reads and writes
//! poll first, with the case deadline as the limit; loops are bounded by
//! the scenario (validated) or by the model.
#![forbid(unsafe_code)]

mod caps;
pub(crate) mod datafd;
mod judge;
mod logging;
mod region;
pub mod stream;
#[cfg(test)]
mod tests;
mod v1;
mod v2;
mod walk;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use results::{
    CheckRecord, Direction, Event, SourceLoc, StepRecord, StepReturn, Strength, Transfer, Verdict,
};

use crate::device::{DataFd, Device};
use crate::model::MigrationFlags;
use crate::requirements;
use crate::scenario::{Op, Protocol, Role, Scenario, StateRef, StateSet, Step};
use crate::uapi::{errno_name, Errno, MigState};

pub use caps::{applicable, probe_caps, restore, DeviceCaps, RunSettings};
use judge::CheckAgg;
pub(crate) use judge::{ret_text, strength_of, Call, Check, Returned, StepKey};
use stream::StreamBuf;

/// How a case runs.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Run arcs that hang kernels without the `vfio_mig_get_next_state()`
    /// fix (V2-FSM-05).
    pub include_dangerous: bool,
    /// The run's seed; each case derives its own from it and its name.
    pub seed: u64,
    /// When the case must be over; blocking waits never go past it. Without
    /// one, `io_timeout` bounds each wait.
    pub deadline: Option<Instant>,
    pub io_timeout: Duration,
    /// Size of the one reused buffer for data-fd reads and writes.
    pub buffer_size: usize,
    /// Saved streams larger than this go to a temporary file.
    pub spill_threshold: u64,
    pub temp_dir: PathBuf,
    /// A SET that takes longer is a SHOULD finding (V2-TIME-01).
    pub arc_latency_limit: Duration,
    /// The device's share of a migration's downtime beyond this is a
    /// SHOULD finding (V2-TIME-02); QEMU's default `downtime-limit`.
    pub downtime_budget: Duration,
}

/// `--arc-latency-limit` unless given.
pub const ARC_LATENCY_LIMIT: Duration = Duration::from_secs(1);
/// `--downtime-budget` unless given: QEMU's default `downtime-limit`.
pub const DOWNTIME_BUDGET: Duration = Duration::from_millis(300);
/// A loop stops starting rounds when less than this, or three times its
/// slowest round so far, is left before the case deadline, so that the
/// case ends with its findings instead of in a timeout.
const LOOP_RESERVE: Duration = Duration::from_secs(2);

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            include_dangerous: false,
            seed: 0,
            deadline: None,
            io_timeout: Duration::from_secs(10),
            buffer_size: 1 << 20,
            spill_threshold: 64 << 20,
            temp_dir: std::env::temp_dir(),
            arc_latency_limit: ARC_LATENCY_LIMIT,
            downtime_budget: DOWNTIME_BUDGET,
        }
    }
}

/// The devices of a case, by role.
pub struct Devices<'a> {
    pub device: &'a mut dyn Device,
    pub destination: Option<&'a mut dyn Device>,
    pub incompatible: Option<&'a mut dyn Device>,
}

/// The seed a case uses: the run seed mixed with the case name, so cases
/// differ from each other but every run with the same seed repeats.
pub fn case_seed(run_seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^ run_seed
}

/// Runs `scenario` and reports everything through `sink`. The last event is
/// always `CaseFinished`.
pub fn run(
    scenario: &Scenario,
    devices: Devices<'_>,
    opts: &ExecOptions,
    sink: &mut dyn FnMut(Event),
) {
    run_judging(scenario, devices, opts, sink);
}

/// [`run`], returning which output fields the case's checks judged.
pub(crate) fn run_judging(
    scenario: &Scenario,
    devices: Devices<'_>,
    opts: &ExecOptions,
    sink: &mut dyn FnMut(Event),
) -> Judged {
    let start = Instant::now();
    let seed = case_seed(opts.seed, &scenario.name);
    sink(Event::CaseStarted {
        name: scenario.name.clone(),
        about: scenario.about.clone(),
        file: scenario.file.clone(),
        protocol: scenario.protocol.as_str().to_string(),
        seed: Some(seed),
    });
    let mut exec = Exec::new(scenario.protocol, devices, opts, sink, start, seed);
    exec.exact_dma = scenario.requires.dma_writes;
    let outcome = exec
        .prepare()
        .and_then(|()| exec.steps(&scenario.steps, &mut Vec::new()));
    match outcome {
        Ok(()) => {}
        Err(Abort::Driver(reason)) => exec.note(format!("case stopped early: {reason}")),
        Err(Abort::Harness(message)) => (exec.sink)(Event::HarnessError { message }),
    }
    exec.finish();
    let judged = std::mem::take(&mut exec.judged);
    let duration_ns = nanos(start.elapsed());
    sink(Event::CaseFinished { duration_ns });
    judged
}

/// Why a case cannot go on.
#[derive(Debug)]
pub(crate) enum Abort {
    /// The device broke a rule that later steps depend on; the failed
    /// check is already recorded.
    Driver(String),
    /// The harness or the environment failed (not the driver's fault).
    Harness(String),
}

type Flow = Result<(), Abort>;

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RoleCtx<'_> {
    /// Nanoseconds on the device's clock since `t` (read from it earlier).
    pub(crate) fn since(&self, t: Duration) -> u64 {
        nanos(self.dev.now().saturating_sub(t))
    }

    /// The device's share of downtime so far, if it is stopped.
    pub(crate) fn downtime_so_far(&self) -> Option<u64> {
        self.stopped_at.map(|t| self.since(t))
    }
}

/// Nanoseconds as milliseconds with one decimal (`3000.2 ms`).
pub(crate) fn ms_text(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

/// What ended a data session, for the requirement its probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndedBy {
    /// A SET left the saving group or RESUMING (V2-FSM-09, V2-SAVE-05).
    Transition,
    /// VFIO_DEVICE_RESET (V2-RESET-02).
    Reset,
    /// The device fd was closed (V2-FSM-13).
    DeviceClosed,
}

/// A data session (the fd of a saving or resuming session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionKind {
    Saving,
    Resuming,
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub fd: DataFd,
    pub kind: SessionKind,
    /// `initial_bytes + dirty_bytes` of the last precopy info (V2-PRECOPY-07).
    pub precopy_budget: Option<u64>,
    /// Precopy bytes read since that info.
    pub precopy_read: u64,
    /// The last precopy info seen: (initial_bytes, dirty_bytes, bytes read so far).
    pub last_info: Option<(u64, u64, u64)>,
    /// Bytes read or written on this session.
    pub bytes: u64,
}

/// What the executor knows about one device.
pub(crate) struct RoleCtx<'d> {
    pub dev: &'d mut dyn Device,
    pub flags: MigrationFlags,
    /// The state the device is in, as far as the model and GETs tell.
    pub state: Option<MigState>,
    pub session: Option<Session>,
    /// Fds of ended sessions, still open so `session_ended` can probe them,
    /// with what ended them.
    pub ended: Vec<(DataFd, SessionKind, EndedBy)>,
    /// When, on the device's clock ([`Device::now`]), it last stopped
    /// running (downtime starts).
    pub stopped_at: Option<Duration>,
    /// How long the last SET took.
    pub last_set_ns: u64,
    /// The source's share of downtime in the last STOP_COPY stream read
    /// to its end, for the resume that follows.
    pub downtime_ns: Option<u64>,
    /// The destination's share of downtime so far: its SETs since it left
    /// RESUMING with a whole stream, until it is RUNNING.
    pub loaded_ns: Option<u64>,
    /// DMA logging started and not stopped.
    pub logging: bool,
    /// The ranges the START that began it logs.
    pub logged_ranges: Vec<(u64, u64)>,
    /// The pages (start, length at START's page size) of the device's
    /// declared DMA writes inside the logged ranges that no REPORT has
    /// returned yet.
    pub declared_pages: Vec<(u64, u64)>,
    /// MIG_PRECOPY_INFOv2 was enabled by a SET of feature 12.
    pub precopy_info_v2: bool,
    /// The v1 migration region, found when a v1 case starts.
    pub region: Option<v1::V1Region>,
    /// What the writes of the current RESUMING session delivered, which
    /// decides how leaving RESUMING must end.
    pub delivered: Delivered,
}

/// What the writes of a RESUMING session delivered. A stream is delivered
/// only when write() accepted every byte of it: a write that fails
/// delivers nothing (vfio.h: RESUMING -> STOP processes "the data
/// delivered by write()"), so after a refused write the driver holds at
/// most a part of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Not exactly one whole, unaltered stream (why): nothing, a part, an
    /// altered stream, or a stream with bytes beyond its end accepted.
    /// Every arc out of RESUMING must fail (V2-RESUME-03/04/05).
    Unfit(String),
    /// One whole unaltered stream, every byte accepted: leaving RESUMING
    /// must succeed (V2-RESUME-01).
    Stream,
    /// The whole unaltered stream was accepted and only bytes written
    /// beyond its end were refused: what write() delivered is the stream,
    /// so RESUMING -> STOP may load it; it may also refuse the session the
    /// user overfilled. Either way the overflow was rejected (V2-RESUME-05).
    StreamOverflowRefused,
}

impl Delivered {
    /// What `written` bytes accepted of a stream of `len` bytes altered by
    /// `m`, ending with `err`, delivered.
    pub fn of(m: &crate::scenario::Mutation, len: u64, written: u64, err: Option<Errno>) -> Self {
        let altered = m.truncate > 0 || !m.corrupt.is_empty();
        match err {
            _ if altered => Delivered::Unfit(format!(
                "an altered stream{}",
                match err {
                    Some(e) => format!(", refused with {} after {written} bytes", errno_name(e)),
                    None => format!(", {written} bytes accepted"),
                }
            )),
            None if m.extra == 0 => Delivered::Stream,
            None => Delivered::Unfit(format!(
                "all {written} bytes accepted, {} of them beyond the end of the {len}-byte stream",
                written.saturating_sub(len)
            )),
            Some(_) if m.extra > 0 && written == len => Delivered::StreamOverflowRefused,
            Some(e) if written < len => Delivered::Unfit(format!(
                "write failed with {} after {written} of the stream's {len} bytes",
                errno_name(e)
            )),
            Some(e) => Delivered::Unfit(format!(
                "{} bytes beyond the end of the {len}-byte stream accepted before write failed with {}",
                written - len,
                errno_name(e)
            )),
        }
    }
}

/// Ended-session fds kept open for probing; older ones are closed.
const MAX_ENDED_FDS: usize = 8;

pub(crate) struct Exec<'a, 'd> {
    pub opts: &'a ExecOptions,
    pub sink: &'a mut dyn FnMut(Event),
    pub protocol: Protocol,
    roles: [Option<RoleCtx<'d>>; 3],
    pub vars: HashMap<String, u64>,
    pub buffers: HashMap<String, StreamBuf>,
    start: Instant,
    step_index: u64,
    pub seed: u64,
    /// `for_each` bindings in scope.
    bindings: Vec<(String, u32)>,
    checks: Vec<CheckAgg>,
    check_index: HashMap<String, usize>,
    /// Scratch space for looking up a check's name without allocating.
    check_name: String,
    /// The reused data buffer (never zero-filled after allocation).
    pub buf: Vec<u8>,
    /// Any MUST/SHOULD check failed so far.
    pub failed: bool,
    /// (output field, requirement ID) of every check made on a field's form.
    judged: Judged,
    /// The case requires declared DMA writes (V2-LOG-09 on every REPORT).
    exact_dma: bool,
}

/// (output field, requirement ID) pairs a case judged.
pub(crate) type Judged = BTreeSet<(&'static str, String)>;

/// One role's context, borrowing only the roles (so the data buffer can be
/// borrowed alongside).
pub(crate) fn role_of<'r, 'd>(
    roles: &'r mut [Option<RoleCtx<'d>>; 3],
    role: Role,
) -> Result<&'r mut RoleCtx<'d>, Abort> {
    roles[role as usize]
        .as_mut()
        .ok_or_else(|| Abort::Harness(format!("no {role} device was given for this case")))
}

impl<'a, 'd> Exec<'a, 'd> {
    fn new(
        protocol: Protocol,
        devices: Devices<'d>,
        opts: &'a ExecOptions,
        sink: &'a mut dyn FnMut(Event),
        start: Instant,
        seed: u64,
    ) -> Self {
        let role = |dev: &'d mut dyn Device| RoleCtx {
            dev,
            flags: MigrationFlags(0),
            state: None,
            session: None,
            ended: Vec::new(),
            stopped_at: None,
            last_set_ns: 0,
            downtime_ns: None,
            loaded_ns: None,
            logging: false,
            logged_ranges: Vec::new(),
            declared_pages: Vec::new(),
            precopy_info_v2: false,
            region: None,
            delivered: Delivered::Unfit("no data written".into()),
        };
        Exec {
            opts,
            sink,
            protocol,
            roles: [
                Some(role(devices.device)),
                devices.destination.map(role),
                devices.incompatible.map(role),
            ],
            vars: HashMap::new(),
            buffers: HashMap::new(),
            start,
            step_index: 0,
            seed,
            bindings: Vec::new(),
            checks: Vec::new(),
            check_index: HashMap::new(),
            check_name: String::new(),
            buf: vec![0u8; opts.buffer_size.max(4096)],
            failed: false,
            judged: BTreeSet::new(),
            exact_dma: false,
        }
    }

    /// Reads each device's MIGRATION flags and state (v2) so the model can
    /// predict every step.
    fn prepare(&mut self) -> Flow {
        if self.protocol == Protocol::V1 {
            return self.prepare_v1();
        }
        for role in Role::ALL {
            let Some(ctx) = self.roles[role as usize].as_mut() else {
                continue;
            };
            use crate::device::DeviceExt;
            ctx.flags = ctx.dev.migration_flags().map_err(|e| {
                Abort::Harness(format!(
                    "{role}: GET MIGRATION failed with {}: the device does not support migration v2",
                    errno_name(e)
                ))
            })?;
            ctx.state = match ctx.dev.get_state() {
                Ok(s) => Some(s),
                Err(e) => {
                    return Err(Abort::Harness(format!(
                        "{role}: GET MIG_DEVICE_STATE failed with {}",
                        errno_name(e)
                    )))
                }
            };
        }
        Ok(())
    }

    /// Makes the data buffer at least `len` bytes. A larger buffer is a
    /// fresh zeroed allocation, not a grown and zero-filled one: its pages
    /// are the kernel's zero pages until data lands in them, so a huge
    /// chunk over a small stream costs neither time nor memory.
    pub fn reserve_buf(&mut self, len: usize) {
        if self.buf.len() < len {
            self.buf = vec![0u8; len];
        }
    }

    pub fn role(&mut self, role: Role) -> Result<&mut RoleCtx<'d>, Abort> {
        role_of(&mut self.roles, role)
    }

    pub fn elapsed_ns(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.start))
    }

    /// How long a blocking wait may take now.
    pub fn wait_budget(&self) -> Duration {
        wait_budget(self.opts.deadline, self.opts.io_timeout)
    }

    /// Records a save or resume: bytes, time taken, chunk size, downtime.
    pub fn transfer(
        &mut self,
        role: Role,
        direction: Direction,
        bytes: u64,
        duration_ns: u64,
        chunk: u64,
        downtime_ns: Option<u64>,
    ) {
        (self.sink)(Event::Transfer(Transfer {
            role: role.as_str().to_string(),
            direction,
            bytes,
            duration_ns,
            chunk,
            downtime_ns,
        }));
    }

    pub fn note(&mut self, text: String) {
        (self.sink)(Event::Note { text });
    }

    /// Final records for merged checks, with how often they ran; closes
    /// every data fd the case still holds.
    fn finish(&mut self) {
        for agg in &mut self.checks {
            if agg.runs > 1 {
                agg.record.observed = if agg.failures > 0 {
                    format!(
                        "{} (failed {} of {} times)",
                        agg.record.observed, agg.failures, agg.runs
                    )
                } else {
                    format!("{} ({} times)", agg.record.observed, agg.runs)
                };
                (self.sink)(Event::Check(agg.record.clone()));
            }
        }
        for ctx in self.roles.iter_mut().flatten() {
            if let Some(s) = ctx.session.take() {
                let _ = ctx.dev.data_close(s.fd);
            }
            for (fd, _, _) in ctx.ended.drain(..) {
                let _ = ctx.dev.data_close(fd);
            }
        }
    }

    /// Ends the role's current session, keeping its fd open for probing.
    pub fn end_session(&mut self, role: Role, by: EndedBy) -> Result<(), Abort> {
        let ctx = self.role(role)?;
        if let Some(s) = ctx.session.take() {
            ctx.ended.push((s.fd, s.kind, by));
            if ctx.ended.len() > MAX_ENDED_FDS {
                let (old, _, _) = ctx.ended.remove(0);
                let _ = ctx.dev.data_close(old);
            }
        }
        Ok(())
    }

    /// The key that names a step's checks.
    fn key(&self, step: &Step, path: &[usize]) -> StepKey {
        let mut prefix = match &step.label {
            Some(l) => l.clone(),
            None => format!(
                "s{}",
                path.iter()
                    .map(|i| (i + 1).to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ),
        };
        for (_, v) in &self.bindings {
            prefix.push('-');
            prefix.push_str(&crate::uapi::state_name(*v));
        }
        StepKey {
            prefix,
            loc: Some(step.loc.clone()),
        }
    }

    pub fn resolve_state(&self, s: &StateRef) -> Result<u32, Abort> {
        match s {
            StateRef::Value(v) => Ok(*v),
            StateRef::Var(name) => self
                .bindings
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| Abort::Harness(format!("`${name}` is not bound"))),
        }
    }

    fn steps(&mut self, steps: &[Step], path: &mut Vec<usize>) -> Flow {
        for (i, step) in steps.iter().enumerate() {
            path.push(i);
            let r = self.step(step, path);
            path.pop();
            r?;
        }
        Ok(())
    }

    fn step(&mut self, step: &Step, path: &mut Vec<usize>) -> Flow {
        let key = self.key(step, path);
        match &step.op {
            Op::Repeat { times, steps } => {
                let mut rounds = LoopClock::new();
                for done in 0..*times {
                    if self.loop_cut(&key, "repeat", u64::from(done), u64::from(*times), &rounds) {
                        break;
                    }
                    self.steps(steps, path)?;
                    rounds.lap();
                }
                Ok(())
            }
            Op::ForEach { vars, steps } => self.for_each(step.role, vars, steps, path, &key),
            Op::Sleep(d) => {
                std::thread::sleep((*d).min(self.wait_budget()));
                Ok(())
            }
            Op::Walk {
                steps,
                seed,
                invalid,
            } => self.walk(step.role, *steps, *seed, *invalid, &key),
            op if op.is_v1()
                || (self.protocol == Protocol::V1 && matches!(op, Op::Reset | Op::ErrorState)) =>
            {
                self.v1_op(step, &key)
            }
            _ => self.v2_op(step, &key),
        }
    }

    fn for_each(
        &mut self,
        role: Role,
        vars: &[(String, StateSet)],
        steps: &[Step],
        path: &mut Vec<usize>,
        key: &StepKey,
    ) -> Flow {
        let flags = self.role(role)?.flags;
        let sets: Vec<Vec<u32>> = vars.iter().map(|(_, s)| state_set(flags, s)).collect();
        let mut idx = vec![0usize; sets.len()];
        if sets.iter().any(Vec::is_empty) {
            return Ok(());
        }
        let total: u64 = sets.iter().map(|s| s.len() as u64).product();
        let mut rounds = LoopClock::new();
        loop {
            if self.loop_cut(key, "for_each", rounds.rounds, total, &rounds) {
                return Ok(());
            }
            for (i, (name, _)) in vars.iter().enumerate() {
                self.bindings.push((name.clone(), sets[i][idx[i]]));
            }
            let r = self.steps(steps, path);
            self.bindings.truncate(self.bindings.len() - vars.len());
            r?;
            rounds.lap();
            // Odometer over the cartesian product, last variable fastest.
            let mut d = sets.len();
            loop {
                if d == 0 {
                    return Ok(());
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < sets[d].len() {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
}

/// Rounds of a loop and the slowest of them.
pub(crate) struct LoopClock {
    started: Instant,
    pub rounds: u64,
    slowest: Duration,
}

impl LoopClock {
    pub fn new() -> Self {
        LoopClock {
            started: Instant::now(),
            rounds: 0,
            slowest: Duration::ZERO,
        }
    }

    /// One round ended.
    pub fn lap(&mut self) {
        let now = Instant::now();
        self.slowest = self.slowest.max(now - self.started);
        self.started = now;
        self.rounds += 1;
    }
}

impl Exec<'_, '_> {
    /// Whether a loop must stop before round `done` of `total`: the case
    /// deadline is too close for another round and what follows. Says so
    /// in a note naming the loop and where it was cut.
    pub(crate) fn loop_cut(
        &mut self,
        key: &StepKey,
        what: &str,
        done: u64,
        total: u64,
        clock: &LoopClock,
    ) -> bool {
        let Some(deadline) = self.opts.deadline else {
            return false;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let reserve = LOOP_RESERVE.max(clock.slowest.saturating_mul(3));
        if left > reserve {
            return false;
        }
        let at = key
            .loc
            .as_ref()
            .map_or_else(|| format!("step {}", key.prefix), |l| l.to_string());
        self.note(format!(
            "{what} at {at} cut by time after {done} of {total} rounds: {} left before the case deadline, the slowest round took {}",
            humantime::format_duration(Duration::from_millis(left.as_millis() as u64)),
            humantime::format_duration(Duration::from_millis(clock.slowest.as_millis() as u64)),
        ));
        true
    }
}

/// How long a blocking wait may take now: until the deadline, or
/// `io_timeout` without one.
pub(crate) fn wait_budget(deadline: Option<Instant>, io_timeout: Duration) -> Duration {
    match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()),
        None => io_timeout,
    }
}

/// The states a `for_each` set stands for on a device with `flags`.
pub fn state_set(flags: MigrationFlags, set: &StateSet) -> Vec<u32> {
    match set {
        StateSet::Supported => flags.supported_states().iter().map(|s| s.raw()).collect(),
        StateSet::All => MigState::ALL.iter().map(|s| s.raw()).collect(),
        StateSet::Invalid => MigState::ALL
            .iter()
            .filter(|s| !flags.supports(**s))
            .map(|s| s.raw())
            .chain([8, 99])
            .collect(),
        StateSet::List(v) => v.clone(),
    }
}
