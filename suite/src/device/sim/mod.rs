//! The reference simulator: an in-process [`Device`] that behaves as
//! `uapi-requirements.md`, `vfio_main.c` and a well-behaved driver (the
//! `mtty` sample) say, plus a catalogue of named [`Fault`]s that each break
//! one rule the way real drivers have.
//!
//! Where the uAPI leaves a choice, the simulator makes it like this:
//! - Data fds are numbers from 1000, never reused. A read on a saving fd
//!   whose session ended (the device left the saving group, reset, close)
//!   fails with ENODEV, as in `mtty`; so does a write on an ended resume fd.
//!   A data fd closed by the user does not end its session (the driver
//!   holds its own reference).
//! - The device runs (changes `dirty=` pages and DMA-writes two pages into
//!   the logged ranges per operation, i.e. per call of any [`Device`]
//!   method) in RUNNING, RUNNING_P2P, PRE_COPY and PRE_COPY_P2P and, with
//!   v1, while `_RUNNING` is set (or until the freeze point). Both protocols
//!   drive one device: it runs only when both say so. The IOVAs of `dma=`
//!   are written once right after each successful DMA_LOGGING_START, in
//!   any state, so that a REPORT's bit positions can be checked.
//! - VFIO_DEVICE_RESET moves to RUNNING (v1: `_RUNNING`), ends every
//!   session, stops DMA logging and keeps the internal state: a reset does
//!   not undo a resume. [`Device::reopen`] does the same.
//! - MIG_PRECOPY_INFOv2 is handled as vfio_main.c does (SET only, EINVAL
//!   without PRE_COPY, cleared when the device is closed). With `reinit=N`
//!   new initial data appears at the Nth VFIO_MIG_GET_PRECOPY_INFO of a
//!   saving session and is reported there, as mlx5 learns of it from the
//!   firmware state it queries in that ioctl.
//! - PCI identity in config space: vendor 0x1b36, device 0x0100,
//!   subsystem 0x1af4:0x1100, class 0xff0000. BARs and the ROM have size 0,
//!   index 8 (VGA) does not exist, index 9 is the v1 migration region.
#![forbid(unsafe_code)]

mod config;
mod faults;
mod fsm;
mod logging;
mod regions;
mod stream;
mod threads;
mod v1;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::thread::sleep;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Access, DataFd, DeviceDescription, FeatureRequest, PollFlags};
use crate::model::{next_state, MigrationFlags};
use crate::uapi::*;

pub use config::{Freeze, SimConfig};
pub use faults::{catalogue, Expected, Fault, FaultInfo};
pub use threads::Simulator;

use faults::FaultSet;
use logging::DmaLog;
use regions::config_space;
use stream::{mix64, Checks, Content, Geometry, Header, Loader, Phase, Saver};
use threads::Racy;
use v1::V1Region;

/// The first data fd number the simulator hands out.
const FIRST_DATA_FD: DataFd = 1000;
/// `slow-transition`: the time the first SET to STOP_COPY takes (over the
/// default --arc-latency-limit).
const SLOW_SET: Duration = Duration::from_millis(1200);
/// `slow-stop`, `slow-load`: the time the first stop of the running device
/// or the first load of a resumed stream takes (within the arc limit, over
/// the default --downtime-budget).
const SLOW_STOP: Duration = Duration::from_millis(400);
/// The precopy info query of a session at which the REINIT faults bring
/// new initial data: after the first query and the one once the initial
/// data is read, where a case sees initial_bytes at 0 first.
const FAULT_REINIT_QUERY: u32 = 3;
/// `spontaneous-state-change`: GETs in STOP before the device moves.
const GETS_BEFORE_MOVING: u32 = 3;
/// Number of regions of a vfio-pci device (BARs, ROM, config, VGA).
const PCI_REGIONS: u32 = 9;
const PCI_IRQS: u32 = 5;
const CONFIG_SPACE_SIZE: usize = 256;
/// vfio-pci's region offsets: `index << VFIO_PCI_OFFSET_SHIFT`.
const OFFSET_SHIFT: u32 = 40;
const MIGRATION_REGION_INDEX: u32 = 9;
/// What `poll` reports for a file without a poll method (an ended fd).
const DEFAULT_POLLMASK: PollFlags = PollFlags::POLLIN
    .union(PollFlags::POLLOUT)
    .union(PollFlags::POLLRDNORM)
    .union(PollFlags::POLLWRNORM);

/// What every migration session needs to know besides the device content.
struct Streams {
    device_type: String,
    precopy: u64,
    deterministic: bool,
    nonce_base: u64,
    saves: Cell<u64>,
    faults: FaultSet,
}

impl Streams {
    /// A saving session of the current content.
    fn saver(&self, content: &Content, phase: Phase) -> Saver {
        self.saves.set(self.saves.get() + 1);
        let nonce = (!self.deterministic).then(|| mix64(self.nonce_base ^ self.saves.get()));
        Saver::new(&self.header(content, nonce), phase, self.precopy)
    }

    /// A resuming session into this device.
    fn loader(&self, content: &Content) -> Loader {
        let f = self.faults;
        let checks = Checks {
            header: !f.has(Fault::CorruptHeaderAccepted),
            device_type: !f.has(Fault::IncompatibleTypeAccepted),
            honour_offset: !f.has(Fault::ResumeOffsetIgnored),
            refuse_oversize: !f.has(Fault::OversizeResumeAccepted),
        };
        Loader::new(self.header(content, None), checks)
    }

    fn header(&self, content: &Content, nonce: Option<u64>) -> Header {
        Header {
            device_type: self.device_type.clone(),
            geometry: content.geometry,
            seed: content.seed,
            nonce,
        }
    }
}

enum SessionKind {
    Save(Box<Saver>),
    Resume(Box<Loader>),
}

/// The open migration session and the fd it was handed out on.
struct Session {
    fd: DataFd,
    kind: SessionKind,
}

/// A data fd the user holds.
struct DataFile {
    saving: bool,
    /// `stale-fd-after-session`: the saver keeps serving after its session.
    stale: Option<Box<Saver>>,
    /// `staged-data-after-session`: the rest of the record being read when
    /// the session ended.
    staged: Vec<u8>,
}

/// The simulated device's state, as one thread at a time changes it.
struct Core {
    desc: DeviceDescription,
    config: SimConfig,
    faults: FaultSet,
    /// The flags the state machine implements.
    flags: MigrationFlags,
    /// The flags MIGRATION GET reports (differ only under a fault).
    advertised: MigrationFlags,
    content: Content,
    streams: Streams,
    open: bool,
    state: MigState,
    session: Option<Session>,
    fds: BTreeMap<DataFd, DataFile>,
    next_fd: DataFd,
    ticks: u64,
    precopy_info_v2: bool,
    log: Option<DmaLog>,
    v1: Option<V1Region>,
    /// `state-reported-early`: the state before the last SET, for one GET.
    early: Option<MigState>,
    /// `spontaneous-state-change`: GETs since the last SET.
    stop_gets: u32,
    /// `slow-transition`: the slow SET has happened.
    slow_done: bool,
    /// `slow-stop`: the slow stop has happened.
    slow_stop_done: bool,
    /// `slow-load`: the slow load has happened.
    slow_load_done: bool,
    /// `recover-set-fails`: a SET failed and no reset came since.
    wedged: bool,
    /// `error-on-resume-stays`: ERROR came from a failed resume.
    resume_error: bool,
    /// `enomsg-in-stop-copy`: ENOMSG was returned once.
    enomsg_given: bool,
    /// The device's clock ([`Device::now`](super::Device::now)): the time it has taken.
    clock: Duration,
    /// What the race faults keep of the current session.
    racy: Racy,
}

impl Core {
    pub fn new(spec: &str, config: SimConfig) -> Core {
        let mut faults = FaultSet::default();
        config.faults().iter().for_each(|f| faults.insert(*f));
        let mut flags = config.flags();
        let mut advertised = flags;
        if faults.has(Fault::UnsupportedStateAccepted) {
            flags = MigrationFlags(flags.0 | VFIO_MIGRATION_P2P);
            advertised = MigrationFlags(flags.0 & !VFIO_MIGRATION_P2P);
        }
        if faults.has(Fault::PrecopyInfoV2WithoutPreCopy) {
            flags = MigrationFlags(flags.0 & !VFIO_MIGRATION_PRE_COPY);
            advertised = flags;
        }
        let geometry = Geometry {
            state_size: config.state_size(),
            page_size: config.page_size(),
        };
        let nonce_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let v1 = config
            .protocols()
            .0
            .then(|| V1Region::new(config.chunk(), config.region(), config.freeze()));
        Core {
            desc: DeviceDescription {
                spec: spec.to_string(),
                name: "sim".into(),
                driver: Some("sim".into()),
                sysfs_path: None,
                iommu_group: None,
                access: Access::Simulator,
                device_type: Some(config.device_type().to_string()),
                dma_writes: config.dma_writes().to_vec(),
            },
            faults,
            flags,
            advertised,
            content: Content::new(config.seed(), geometry),
            streams: Streams {
                device_type: config.device_type().to_string(),
                precopy: config.precopy(),
                deterministic: config.deterministic(),
                nonce_base,
                saves: Cell::new(0),
                faults,
            },
            open: true,
            state: MigState::Running,
            session: None,
            fds: BTreeMap::new(),
            next_fd: FIRST_DATA_FD,
            ticks: 0,
            precopy_info_v2: false,
            log: None,
            v1,
            early: None,
            stop_gets: 0,
            slow_done: false,
            slow_stop_done: false,
            slow_load_done: false,
            wedged: false,
            resume_error: false,
            clock: Duration::ZERO,
            enomsg_given: false,
            racy: Racy::default(),
            config,
        }
    }

    fn has(&self, fault: Fault) -> bool {
        self.faults.has(fault)
    }

    /// The precopy info query of a session that brings new initial data:
    /// `reinit=N`, or the third under a fault that needs one.
    fn reinit_at(&self) -> Option<u32> {
        let needs_one = [
            Fault::ReinitWithoutOptIn,
            Fault::InitialBytesRiseWithoutReinit,
            Fault::ReinitDirtyBytesKept,
        ]
        .into_iter()
        .any(|f| self.has(f));
        self.config
            .reinit()
            .or(needs_one.then_some(FAULT_REINIT_QUERY))
    }

    fn check_open(&self) -> Result<(), Errno> {
        if self.open {
            Ok(())
        } else {
            Err(Errno::EBADF)
        }
    }

    fn v2(&self) -> Result<(), Errno> {
        if self.config.protocols().1 {
            Ok(())
        } else {
            Err(Errno::ENOTTY)
        }
    }

    /// One operation's worth of device activity.
    fn tick(&mut self) {
        self.ticks += 1;
        let v2_running = matches!(
            self.state,
            MigState::Running | MigState::RunningP2p | MigState::PreCopy | MigState::PreCopyP2p
        );
        let running = v2_running && self.v1.as_ref().is_none_or(V1Region::running);
        let pages = if running {
            self.config.dirty()
        } else if self.has(Fault::StopStateChanges) && self.state == MigState::Stop {
            self.config.dirty().max(1)
        } else {
            0
        };
        let salt = self.config.seed() ^ self.ticks.rotate_left(24);
        for k in 0..u64::from(pages) {
            let index = mix64(salt ^ k) % self.content.geometry.pages();
            self.dirty_page(index);
        }
        if running {
            if let Some(log) = &mut self.log {
                log.dma(mix64(salt));
            }
        }
    }

    fn dirty_page(&mut self, index: u64) {
        self.content.touch(index);
        if let Some(Session {
            kind: SessionKind::Save(saver),
            ..
        }) = &mut self.session
        {
            saver.page_dirtied(index);
        }
        if let Some(v1) = &mut self.v1 {
            v1.page_dirtied(index);
        }
    }

    fn new_fd(&mut self, saving: bool) -> DataFd {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.fds.insert(
            fd,
            DataFile {
                saving,
                stale: None,
                staged: Vec::new(),
            },
        );
        fd
    }

    /// Ends the session; its fd then fails with ENODEV.
    fn end_session(&mut self) {
        self.racy = Racy::default();
        let Some(session) = self.session.take() else {
            return;
        };
        if let SessionKind::Save(saver) = session.kind {
            if let Some(file) = self.fds.get_mut(&session.fd) {
                if self.faults.has(Fault::StagedDataAfterSession) {
                    file.staged = saver.staged().to_vec();
                }
                if self.faults.has(Fault::StaleFdAfterSession) {
                    file.stale = Some(saver);
                }
            }
        }
    }

    fn open_save(&mut self, phase: Phase) -> DataFd {
        self.end_session();
        let saver = self.streams.saver(&self.content, phase);
        self.racy.setter = Some(std::thread::current().id());
        if self.has(Fault::ReadPositionPerThread) {
            self.racy.start = Some(saver.clone());
        }
        let fd = self.new_fd(true);
        self.session = Some(Session {
            fd,
            kind: SessionKind::Save(Box::new(saver)),
        });
        fd
    }

    fn open_resume(&mut self) -> DataFd {
        self.end_session();
        let loader = self.streams.loader(&self.content);
        let fd = self.new_fd(false);
        self.session = Some(Session {
            fd,
            kind: SessionKind::Resume(Box::new(loader)),
        });
        fd
    }

    fn saver_mut(&mut self) -> Option<&mut Saver> {
        match &mut self.session {
            Some(Session {
                kind: SessionKind::Save(saver),
                ..
            }) => Some(saver),
            _ => None,
        }
    }

    /// RESUMING -> STOP: load the stream, or fail and stay in RESUMING.
    fn finish_resume(&mut self) -> Result<(), Errno> {
        let accepted = match &self.session {
            Some(Session {
                kind: SessionKind::Resume(loader),
                ..
            }) => {
                loader.is_complete()
                    || (self.has(Fault::TruncatedResumeAccepted) && !loader.has_failed())
                    || (self.has(Fault::RefusedWriteLoaded) && loader.has_failed())
            }
            _ => false,
        };
        if !accepted {
            // Both faults need a device that goes to ERROR here, as vfio.h
            // allows after a failed SET.
            if self.has(Fault::ErrorOnResumeStays) || self.has(Fault::ResetKeepsError) {
                self.end_session();
                self.state = MigState::Error;
                self.resume_error = true;
            }
            return Err(Errno::EINVAL);
        }
        if let Some(Session {
            kind: SessionKind::Resume(loader),
            ..
        }) = self.session.take()
        {
            loader.adopt(&mut self.content);
        }
        Ok(())
    }

    fn logging_start(&mut self, req: &mut FeatureRequest, input: &[u8]) -> Result<(), Errno> {
        let control = VfioDeviceFeatureDmaLoggingControl::from_bytes(input);
        let check = !self.has(Fault::LoggingRangesUnchecked);
        let mut log = DmaLog::start(&control, &req.ranges, check)?;
        // mlx5 and pds refuse a second START with EINVAL.
        if self.log.is_some() && !self.has(Fault::LoggingStartTwice) {
            return Err(Errno::EINVAL);
        }
        log.written(self.config.dma_writes());
        self.log = Some(log);
        let mut selected = control;
        if self.has(Fault::LoggingPageShiftReturned) {
            selected.page_size = u64::from(control.page_size.trailing_zeros());
        }
        reply_with(req, &selected.to_bytes());
        Ok(())
    }

    fn logging_report(&mut self, req: &mut FeatureRequest, input: &[u8]) -> Result<(), Errno> {
        let report = VfioDeviceFeatureDmaLoggingReport::from_bytes(input);
        if report.page_size < 4096 || !report.page_size.is_power_of_two() {
            return Err(Errno::EINVAL);
        }
        if report.iova.checked_add(report.length).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        let unsupported = self.has(Fault::LoggingReportUnsupported);
        let next_page = self.has(Fault::LoggingReportNextPage);
        let log = self.log.as_mut().ok_or(Errno::EINVAL)?;
        if unsupported {
            return Err(Errno::EOPNOTSUPP);
        }
        log.report(&report, &mut req.bitmap, next_page)?;
        if self.has(Fault::LoggingReportPastRange) {
            let past = report.length.div_ceil(report.page_size);
            if let Some(word) = usize::try_from(past / 64)
                .ok()
                .and_then(|w| req.bitmap.get_mut(w))
            {
                *word |= 1 << (past % 64);
            }
        }
        Ok(())
    }

    /// Back to `state` with no session (unless `keep_session`), no DMA
    /// logging, v1 at `_RUNNING`; the internal state stays.
    fn reset_device(&mut self, state: MigState, keep_session: bool) {
        self.state = state;
        if !keep_session {
            self.end_session();
        }
        self.log = None;
        if let Some(v1) = &mut self.v1 {
            v1.reset();
        }
        self.early = None;
        self.stop_gets = 0;
        self.resume_error = false;
        self.wedged = false;
    }
}

/// Finds the saver a data fd reads from: the session's, or (under a fault)
/// the one left on an ended fd. EBADF for a fd that is not open for reading.
fn saver_of<'a>(
    session: &'a mut Option<Session>,
    fds: &'a mut BTreeMap<DataFd, DataFile>,
    fd: DataFd,
) -> Result<Option<&'a mut Saver>, Errno> {
    let file = fds.get_mut(&fd).ok_or(Errno::EBADF)?;
    if !file.saving {
        return Err(Errno::EBADF);
    }
    if let Some(Session {
        fd: session_fd,
        kind: SessionKind::Save(saver),
    }) = session
    {
        if *session_fd == fd {
            return Ok(Some(saver));
        }
    }
    Ok(file.stale.as_deref_mut())
}

/// Sleeps forever: the fault's operation never completes.
fn hang() -> ! {
    loop {
        sleep(Duration::from_secs(3600));
    }
}

/// `vfio_check_feature()`: Ok(false) for a PROBE that succeeds, Ok(true)
/// when the driver should do the GET or SET.
fn check_feature(flags: u32, argsz: usize, supported: u32, minsz: usize) -> Result<bool, Errno> {
    let ops = flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET);
    if ops & !supported != 0 {
        return Err(Errno::EINVAL);
    }
    if flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
        return Ok(false);
    }
    if ops == 0 || argsz < minsz {
        return Err(Errno::EINVAL);
    }
    Ok(true)
}

/// Writes a feature's result struct back into the caller's payload.
fn reply_with(req: &mut FeatureRequest, bytes: &[u8]) {
    if req.data.len() < bytes.len() {
        req.data.resize(bytes.len(), 0);
    }
    req.data[..bytes.len()].copy_from_slice(bytes);
}

/// The [`Device`](super::Device) calls, made by [`Simulator`] under its lock.
impl Core {
    fn description(&self) -> &DeviceDescription {
        &self.desc
    }

    fn now(&self) -> Duration {
        self.clock
    }

    fn feature(&mut self, req: &mut FeatureRequest) -> Result<(), Errno> {
        self.check_open()?;
        self.tick();
        let unchecked = self.has(Fault::FeatureArgszUnchecked);
        if req.argsz < VfioDeviceFeature::SIZE as u32 && !unchecked {
            return Err(Errno::EINVAL);
        }
        let known = VFIO_DEVICE_FEATURE_MASK
            | VFIO_DEVICE_FEATURE_GET
            | VFIO_DEVICE_FEATURE_SET
            | VFIO_DEVICE_FEATURE_PROBE;
        if req.flags & !known != 0 && !self.has(Fault::FeatureUnknownFlagsAccepted) {
            return Err(Errno::EINVAL);
        }
        let get_and_set = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET;
        if req.flags & VFIO_DEVICE_FEATURE_PROBE == 0
            && req.flags & get_and_set == get_and_set
            && !self.has(Fault::FeatureGetSetAccepted)
        {
            return Err(Errno::EINVAL);
        }
        let argsz = if unchecked {
            req.data.len()
        } else {
            req.payload_len()
        };
        let input = req.data[..argsz.min(req.data.len())].to_vec();
        let flags = req.flags;
        let (get, set) = (VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_SET);
        match req.feature() {
            VFIO_DEVICE_FEATURE_MIGRATION => {
                self.v2()?;
                if check_feature(flags, argsz, get, VfioDeviceFeatureMigration::SIZE)? {
                    let reply = VfioDeviceFeatureMigration {
                        flags: self.advertised.0,
                    };
                    reply_with(req, &reply.to_bytes());
                }
                Ok(())
            }
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                self.v2()?;
                if check_feature(flags, argsz, get | set, VfioDeviceFeatureMigState::SIZE)? {
                    self.mig_device_state(req, &input)?;
                }
                Ok(())
            }
            VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => {
                self.v2()?;
                let ops = if self.has(Fault::DataSizeSetAccepted) {
                    get | set
                } else {
                    get
                };
                if check_feature(flags, argsz, ops, VfioDeviceFeatureMigDataSize::SIZE)?
                    && flags & get != 0
                {
                    let reply = VfioDeviceFeatureMigDataSize {
                        stop_copy_length: self.announced_length(),
                    };
                    reply_with(req, &reply.to_bytes());
                }
                Ok(())
            }
            VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2 => {
                self.v2()?;
                // vfio_main.c refuses it before looking at the flags.
                if !self.flags.has_pre_copy() && !self.has(Fault::PrecopyInfoV2WithoutPreCopy) {
                    return Err(Errno::EINVAL);
                }
                let ops = if self.has(Fault::PrecopyInfoV2GetAccepted) {
                    get | set
                } else {
                    set
                };
                if check_feature(flags, argsz, ops, 0)? && flags & set != 0 {
                    self.precopy_info_v2 = true;
                }
                Ok(())
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START
            | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
            | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
                if !self.config.logging() =>
            {
                Err(Errno::ENOTTY)
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START => {
                if check_feature(flags, argsz, set, VfioDeviceFeatureDmaLoggingControl::SIZE)? {
                    self.logging_start(req, &input)?;
                }
                Ok(())
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => {
                if check_feature(flags, argsz, set, 0)? {
                    self.log = None;
                }
                Ok(())
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => {
                if check_feature(flags, argsz, get, VfioDeviceFeatureDmaLoggingReport::SIZE)? {
                    self.logging_report(req, &input)?;
                }
                Ok(())
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.check_open()?;
        self.tick();
        let state = if self.has(Fault::ResetNotRunning) {
            MigState::Stop
        } else if self.state == MigState::Error && self.has(Fault::ResetKeepsError) {
            MigState::Error
        } else {
            MigState::Running
        };
        self.reset_device(state, self.has(Fault::ResetKeepsSession));
        Ok(())
    }

    fn device_info_raw(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        self.check_open()?;
        self.tick();
        let argsz = get_u32(buf, 0) as usize;
        // minsz is offsetofend(struct vfio_device_info, num_irqs).
        if argsz < 16 {
            return Err(Errno::EINVAL);
        }
        let info = VfioDeviceInfo {
            argsz: argsz as u32,
            flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
            num_regions: PCI_REGIONS + u32::from(self.v1.is_some()),
            num_irqs: PCI_IRQS,
            cap_offset: 0,
            pad: 0,
        };
        let bytes = info.to_bytes();
        let n = argsz.min(bytes.len()).min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    }

    fn region_info_raw(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        self.check_open()?;
        self.tick();
        let argsz = get_u32(buf, 0);
        if (argsz as usize) < VfioRegionInfo::SIZE {
            return Err(Errno::EINVAL);
        }
        let (mut info, cap) = self.region_layout(get_u32(buf, 8))?;
        info.argsz = argsz;
        if let Some(cap) = cap {
            // As vfio-pci: FLAG_CAPS, and either the chain or the size needed.
            let needed = (VfioRegionInfo::SIZE + VfioRegionInfoCapType::SIZE) as u32;
            info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
            if argsz < needed {
                info.argsz = needed;
                info.cap_offset = 0;
            } else {
                info.cap_offset = VfioRegionInfo::SIZE as u32;
                put(buf, VfioRegionInfo::SIZE, &cap.to_bytes());
            }
        }
        put(buf, 0, &info.to_bytes());
        Ok(())
    }

    fn region_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        self.check_open()?;
        self.tick();
        let (index, at) = (offset >> OFFSET_SHIFT, offset & ((1 << OFFSET_SHIFT) - 1));
        match index as u32 {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                let at = at as usize;
                let space = config_space();
                let bytes = space.get(at..at + buf.len()).ok_or(Errno::EINVAL)?;
                buf.copy_from_slice(bytes);
                Ok(buf.len())
            }
            MIGRATION_REGION_INDEX if self.v1.is_some() => {
                if at == crate::uapi::v1::PENDING_BYTES && self.has(Fault::V1NotFrozen) {
                    if let Some(index) =
                        self.v1.as_ref().and_then(V1Region::unsent_in_stop_and_copy)
                    {
                        self.dirty_page(index);
                    }
                }
                let v1 = self.v1.as_mut().ok_or(Errno::EINVAL)?;
                v1.read(at, buf, &self.content, &self.streams)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn region_write(&mut self, offset: u64, buf: &[u8]) -> Result<usize, Errno> {
        self.check_open()?;
        self.tick();
        let (index, at) = (offset >> OFFSET_SHIFT, offset & ((1 << OFFSET_SHIFT) - 1));
        match index as u32 {
            // Config space writes are virtualised away.
            VFIO_PCI_CONFIG_REGION_INDEX
                if (at as usize).saturating_add(buf.len()) <= CONFIG_SPACE_SIZE =>
            {
                Ok(buf.len())
            }
            MIGRATION_REGION_INDEX if self.v1.is_some() => {
                let v1 = self.v1.as_mut().ok_or(Errno::EINVAL)?;
                v1.write(at, buf, &mut self.content, &self.streams)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn data_read(&mut self, fd: DataFd, buf: &mut [u8]) -> Result<usize, Errno> {
        self.tick();
        let faults = self.faults;
        let live = matches!(&self.session, Some(Session { fd: s, kind: SessionKind::Save(_) }) if *s == fd);
        if live
            && faults.has(Fault::StateTiedToSettingThread)
            && self.racy.setter != Some(std::thread::current().id())
        {
            return Ok(0);
        }
        if live && faults.has(Fault::ReadPositionPerThread) && !self.racy.is_first() {
            let content = &self.content;
            return Ok(self
                .racy
                .saver()
                .map_or(0, |saver| saver.read(content, buf, false)));
        }
        let saver = saver_of(&mut self.session, &mut self.fds, fd)?;
        if faults.has(Fault::HangRead) {
            hang();
        }
        let Some(saver) = saver else {
            let file = self.fds.get_mut(&fd).ok_or(Errno::EBADF)?;
            if file.staged.is_empty() {
                return Err(Errno::ENODEV);
            }
            let n = file.staged.len().min(buf.len());
            buf[..n].copy_from_slice(&file.staged[..n]);
            file.staged.drain(..n);
            return Ok(n);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = saver.read(&self.content, buf, faults.has(Fault::ReadOffsetIgnored));
        if n > 0 {
            return Ok(n);
        }
        match saver.phase() {
            Phase::PreCopy if faults.has(Fault::ZeroAtEndOfPrecopy) => Ok(0),
            Phase::PreCopy => Err(Errno::ENOMSG),
            Phase::StopCopy if faults.has(Fault::EnomsgInStopCopy) && !self.enomsg_given => {
                self.enomsg_given = true;
                Err(Errno::ENOMSG)
            }
            Phase::StopCopy => Ok(0),
        }
    }

    fn data_write(&mut self, fd: DataFd, buf: &[u8]) -> Result<usize, Errno> {
        self.tick();
        let file = self.fds.get(&fd).ok_or(Errno::EBADF)?;
        if file.saving {
            return Err(Errno::EBADF);
        }
        match &mut self.session {
            Some(Session {
                fd: session_fd,
                kind: SessionKind::Resume(loader),
            }) if *session_fd == fd => {
                if self.faults.has(Fault::WritePositionPerThread) && !self.racy.is_first() {
                    let (streams, content) = (&self.streams, &self.content);
                    return self.racy.loader(|| streams.loader(content)).write(buf);
                }
                loader.write(buf)
            }
            _ => Err(Errno::ENODEV),
        }
    }

    fn data_pread(&mut self, fd: DataFd, _buf: &mut [u8], _offset: u64) -> Result<usize, Errno> {
        self.tick();
        self.fds.get(&fd).ok_or(Errno::EBADF)?;
        Err(Errno::ESPIPE)
    }

    fn data_pwrite(&mut self, fd: DataFd, _buf: &[u8], _offset: u64) -> Result<usize, Errno> {
        self.tick();
        self.fds.get(&fd).ok_or(Errno::EBADF)?;
        Err(Errno::ESPIPE)
    }

    fn data_poll(
        &mut self,
        fd: DataFd,
        events: PollFlags,
        timeout: Duration,
    ) -> Result<PollFlags, Errno> {
        self.tick();
        let file = self.fds.get(&fd).ok_or(Errno::EBADF)?;
        let ready = if !file.saving {
            let live = matches!(&self.session, Some(Session { fd: s, .. }) if *s == fd);
            if live {
                PollFlags::POLLOUT | PollFlags::POLLWRNORM
            } else {
                DEFAULT_POLLMASK
            }
        } else if self.has(Fault::HangRead) {
            PollFlags::empty()
        } else {
            match saver_of(&mut self.session, &mut self.fds, fd)? {
                Some(saver) if saver.phase() == Phase::StopCopy || saver.has_data() => {
                    PollFlags::POLLIN | PollFlags::POLLRDNORM
                }
                Some(_) => PollFlags::empty(),
                None if self.faults.has(Fault::PollMissesSessionEnd) => PollFlags::empty(),
                None => DEFAULT_POLLMASK,
            }
        };
        let ready = ready & (events | PollFlags::POLLERR | PollFlags::POLLHUP);
        if ready.is_empty() {
            self.take(timeout);
        }
        Ok(ready)
    }

    fn data_ioctl(&mut self, fd: DataFd, request: u64, arg: &mut [u8]) -> Result<i32, Errno> {
        self.tick();
        let file = self.fds.get(&fd).ok_or(Errno::EBADF)?;
        if !file.saving || request != VFIO_MIG_GET_PRECOPY_INFO {
            return Err(Errno::ENOTTY);
        }
        if arg.len() < VfioPrecopyInfo::SIZE {
            return Err(Errno::EFAULT);
        }
        let mut info = VfioPrecopyInfo::from_bytes(arg);
        if (info.argsz as usize) < VfioPrecopyInfo::SIZE {
            return Err(Errno::EINVAL);
        }
        if !self.state.is_precopy() && !self.has(Fault::PrecopyInfoOutsidePrecopy) {
            return Err(Errno::EINVAL);
        }
        let faults = self.faults;
        let v2_flags = self.precopy_info_v2 && !faults.has(Fault::PrecopyFlagsEchoed);
        let reinit_at = self.reinit_at();
        let opted_in = self.precopy_info_v2;
        let in_precopy = self.state.is_precopy();
        let saver = saver_of(&mut self.session, &mut self.fds, fd)?.ok_or(Errno::ENODEV)?;
        // mlx5 learns of new initial data from the firmware state it
        // queries here, and reports it here.
        let mut reinit_reported = false;
        if in_precopy && Some(saver.count_query()) == reinit_at {
            let as_initial = opted_in
                || faults.has(Fault::ReinitWithoutOptIn)
                || faults.has(Fault::InitialBytesRiseWithoutReinit);
            if as_initial {
                saver.reinit();
            } else {
                saver.reinit_as_dirty();
            }
            reinit_reported = as_initial && !faults.has(Fault::InitialBytesRiseWithoutReinit);
        }
        info.initial_bytes = if faults.has(Fault::InitialBytesStuck) {
            saver.first_initial_bytes()
        } else if faults.has(Fault::PrecopyMoreThanAnnounced) {
            saver.initial_payload_bytes()
        } else {
            saver.initial_bytes()
        };
        info.dirty_bytes = saver.dirty_bytes();
        if faults.has(Fault::DirtyBytesNeverZero) {
            info.dirty_bytes += stream::RECORD_HEADER_LEN as u64 + self.content.geometry.page_size;
        }
        if v2_flags {
            info.flags = 0;
        }
        if reinit_reported {
            info.flags |= VFIO_PRECOPY_INFO_REINIT;
            if faults.has(Fault::ReinitDirtyBytesKept) {
                info.dirty_bytes +=
                    stream::RECORD_HEADER_LEN as u64 + self.content.geometry.page_size;
            }
        }
        arg[..VfioPrecopyInfo::SIZE].copy_from_slice(&info.to_bytes());
        Ok(0)
    }

    fn data_cloexec(&mut self, fd: DataFd) -> Result<bool, Errno> {
        self.fds.get(&fd).ok_or(Errno::EBADF)?;
        Ok(!self.has(Fault::DataFdNotCloexec))
    }

    fn data_close(&mut self, fd: DataFd) -> Result<(), Errno> {
        self.fds.remove(&fd).map(drop).ok_or(Errno::EBADF)
    }

    fn close_device(&mut self) -> Result<(), Errno> {
        self.check_open()?;
        self.open = false;
        // vfio_df_device_last_close() clears the opt-in.
        if !self.has(Fault::PrecopyInfoV2SurvivesReopen) {
            self.precopy_info_v2 = false;
        }
        self.reset_device(MigState::Running, self.has(Fault::CloseKeepsSession));
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), Errno> {
        if self.open {
            return Err(Errno::EBUSY);
        }
        self.open = true;
        self.reset_device(MigState::Running, false);
        Ok(())
    }
}
