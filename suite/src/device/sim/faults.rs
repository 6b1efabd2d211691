//! The catalogue of named faults: each one makes the simulator break one
//! uAPI rule the way real drivers have, so the suite can prove it notices.
#![forbid(unsafe_code)]

use crate::requirements::Strength;

/// What a run of the suite against the simulator with this fault must
/// report for the fault's requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expected {
    /// A MUST rule is broken: the checks citing it fail.
    Fail,
    /// A SHOULD rule is broken: a warning (a failure under `--strict`).
    Warn,
    /// A de facto rule is broken: reported as a note.
    Note,
    /// Nothing is broken; the fault only changes what is recorded.
    Pass,
    /// An operation never returns: the case hits its deadline.
    Timeout,
}

/// One named fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    EnomsgInStopCopy,
    ZeroAtEndOfPrecopy,
    ReadOffsetIgnored,
    ResumeOffsetIgnored,
    TruncatedResumeAccepted,
    CorruptHeaderAccepted,
    OversizeResumeAccepted,
    IncompatibleTypeAccepted,
    RefusedWriteLoaded,
    StopCopyLengthUnder,
    StopCopyLengthOver,
    PrecopyInfoOutsidePrecopy,
    InitialBytesStuck,
    DirtyBytesNeverZero,
    PrecopyMoreThanAnnounced,
    PrecopyFlagsEchoed,
    PrecopyInfoV2GetAccepted,
    PrecopyInfoV2WithoutPreCopy,
    PrecopyInfoV2SurvivesReopen,
    ReinitWithoutOptIn,
    InitialBytesRiseWithoutReinit,
    ReinitDirtyBytesKept,
    NewFdOnPrecopyToStopCopy,
    NoFdOnStopToStopCopy,
    StaleFdAfterSession,
    StagedDataAfterSession,
    DataFdNotCloexec,
    StateReportedEarly,
    SpontaneousStateChange,
    StopStateChanges,
    ResetNotRunning,
    ResetKeepsSession,
    SetErrorAccepted,
    UnsupportedStateAccepted,
    StopCopyToPreCopyAccepted,
    FeatureArgszUnchecked,
    FeatureGetSetAccepted,
    FeatureUnknownFlagsAccepted,
    DataSizeSetAccepted,
    LoggingStartTwice,
    LoggingRangesUnchecked,
    LoggingReportUnsupported,
    LoggingPageShiftReturned,
    LoggingReportPastRange,
    LoggingReportNextPage,
    SlowTransition,
    SlowStop,
    HangTransition,
    HangRead,
    ErrorOnResumeStays,
    SlowLoad,
    RefusedSetStops,
    RecoverSetFails,
    ResetKeepsError,
    FailedSetCopiesState,
    ReadPositionPerThread,
    WritePositionPerThread,
    PollMissesSessionEnd,
    CloseKeepsSession,
    StateTiedToSettingThread,
    V1PendingNeverZero,
    V1DataSizeBeyondRegion,
    V1InvalidStateAccepted,
    V1NotFrozen,
    V1DataOffsetUnstable,
    V1PendingSideEffect,
    V1ErrorLeftWithoutReset,
}

/// A fault as reports and the command line know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultInfo {
    pub fault: Fault,
    /// kebab-case, as in `sim:fault=NAME`.
    pub name: &'static str,
    /// The requirement the fault breaks (`V2-SAVE-02`).
    pub requirement: &'static str,
    /// That requirement's strength, which decides [`FaultInfo::expected`].
    pub strength: Strength,
    /// Which protocol the fault lives in; naming a v1 fault enables v1.
    pub v1: bool,
    /// One line: what the simulator does wrong.
    pub about: &'static str,
    /// The real driver bug class it mirrors, when there is one.
    pub mirrors: Option<&'static str>,
    pub expected: Expected,
}

impl Fault {
    pub fn info(self) -> &'static FaultInfo {
        // The catalogue lists the faults in declaration order (tested).
        &CATALOGUE[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_name(name: &str) -> Option<Fault> {
        CATALOGUE
            .iter()
            .find(|info| info.name == name)
            .map(|info| info.fault)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every fault the simulator can inject.
pub fn catalogue() -> &'static [FaultInfo] {
    &CATALOGUE
}

/// A set of faults, cheap to copy and test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultSet(u128);

impl FaultSet {
    pub fn insert(&mut self, fault: Fault) {
        self.0 |= 1 << fault as u32;
    }

    pub fn has(self, fault: Fault) -> bool {
        self.0 & (1 << fault as u32) != 0
    }
}

const _: () = assert!(CATALOGUE.len() <= 128, "FaultSet holds 128 faults");

use Expected::{Fail, Note, Timeout, Warn};
use Strength::{Df, Must, Should};

const fn v2(
    fault: Fault,
    name: &'static str,
    requirement: &'static str,
    strength: Strength,
    expected: Expected,
    about: &'static str,
    mirrors: Option<&'static str>,
) -> FaultInfo {
    FaultInfo {
        fault,
        name,
        requirement,
        strength,
        v1: false,
        about,
        mirrors,
        expected,
    }
}

const fn v1(
    fault: Fault,
    name: &'static str,
    requirement: &'static str,
    strength: Strength,
    expected: Expected,
    about: &'static str,
    mirrors: Option<&'static str>,
) -> FaultInfo {
    FaultInfo {
        v1: true,
        ..v2(fault, name, requirement, strength, expected, about, mirrors)
    }
}

static CATALOGUE: [FaultInfo; 67] = [
    v2(
        Fault::EnomsgInStopCopy,
        "enomsg-in-stop-copy",
        "V2-SAVE-02",
        Must,
        Fail,
        "the first read at the end of the STOP_COPY stream fails with ENOMSG (0 after that)",
        Some("the PRE_COPY end-of-data path reused in STOP_COPY"),
    ),
    v2(
        Fault::ZeroAtEndOfPrecopy,
        "zero-at-end-of-precopy",
        "V2-PRECOPY-06",
        Should,
        Warn,
        "read() at the temporary end of PRE_COPY data returns 0 instead of failing with ENOMSG",
        Some("mtty sample driver (mtty_save_read returns 0 when no data is left)"),
    ),
    v2(
        Fault::ReadOffsetIgnored,
        "read-offset-ignored",
        "V2-SAVE-03",
        Must,
        Fail,
        "a read that starts inside a record copies from the record's start, so chunked reads yield other bytes than one large read",
        Some("read handler copying from its buffer start instead of buffer + *pos"),
    ),
    v2(
        Fault::ResumeOffsetIgnored,
        "resume-offset-ignored",
        "V2-RESUME-01",
        Must,
        Fail,
        "a write that continues a record lands at the record buffer's start, so only one-shot writes resume",
        Some("resume write handler ignoring *pos within its staging buffer"),
    ),
    v2(
        Fault::TruncatedResumeAccepted,
        "truncated-resume-accepted",
        "V2-RESUME-03",
        Must,
        Fail,
        "RESUMING->STOP succeeds on a truncated stream, loading only the pages that arrived",
        Some("load path that never checks the received length against the expected size"),
    ),
    v2(
        Fault::CorruptHeaderAccepted,
        "corrupt-header-accepted",
        "V2-RESUME-04",
        Must,
        Fail,
        "the stream header and the trailer checksum are not validated",
        Some("resume path loading the payload without checking magic, version or checksum"),
    ),
    v2(
        Fault::OversizeResumeAccepted,
        "oversize-resume-accepted",
        "V2-RESUME-05",
        Must,
        Fail,
        "bytes written after a complete stream are accepted and dropped instead of failing with ENOSPC",
        None,
    ),
    v2(
        Fault::IncompatibleTypeAccepted,
        "incompatible-type-accepted",
        "V2-RESUME-04",
        Must,
        Fail,
        "a stream from another device type is accepted",
        Some("no device-type or firmware-version compatibility check on resume"),
    ),
    v2(
        Fault::RefusedWriteLoaded,
        "refused-write-loaded",
        "V2-RESUME-04",
        Must,
        Fail,
        "a write() refused for invalid data still counts its bytes, and RESUMING->STOP loads what arrived",
        Some("mtty sample driver (mtty_resume_write() adds a refused write's length to filled_size; mtty_load_state() checks only the size)"),
    ),
    v2(
        Fault::StopCopyLengthUnder,
        "stop-copy-length-under",
        "V2-SIZE-03",
        Should,
        Warn,
        "MIG_DATA_SIZE reports half of what a STOP_COPY session from STOP delivers",
        Some("estimate that leaves out the driver's own headers or a part of the state"),
    ),
    v2(
        Fault::StopCopyLengthOver,
        "stop-copy-length-over",
        "V2-SIZE-04",
        Should,
        Warn,
        "MIG_DATA_SIZE reports eight times what a STOP_COPY session from STOP delivers",
        Some("estimate from a worst-case buffer size rather than the state"),
    ),
    v2(
        Fault::PrecopyInfoOutsidePrecopy,
        "precopy-info-outside-precopy",
        "V2-PRECOPY-02",
        Should,
        Warn,
        "VFIO_MIG_GET_PRECOPY_INFO succeeds in STOP_COPY instead of failing with EINVAL",
        Some("precopy ioctl that checks the file, not the device state"),
    ),
    v2(
        Fault::InitialBytesStuck,
        "initial-bytes-stuck",
        "V2-PRECOPY-04",
        Should,
        Warn,
        "initial_bytes keeps its first value however much precopy data is read",
        Some("initial_bytes computed once at session start"),
    ),
    v2(
        Fault::DirtyBytesNeverZero,
        "dirty-bytes-never-zero",
        "V2-PRECOPY-05",
        Should,
        Warn,
        "dirty_bytes starts and stays one record above the real value",
        Some("dirty_bytes reporting the device's total tracked size instead of the change"),
    ),
    v2(
        Fault::PrecopyMoreThanAnnounced,
        "precopy-more-than-announced",
        "V2-PRECOPY-07",
        Should,
        Warn,
        "initial_bytes counts page payload only, so reads deliver the stream and record headers on top",
        Some("precopy sizes that leave out the driver's own framing"),
    ),
    v2(
        Fault::PrecopyFlagsEchoed,
        "precopy-flags-echoed",
        "V2-PRECOPY-09",
        Df,
        Note,
        "with PRECOPY_INFOv2 enabled, the output flags still echo the input flags",
        Some("drivers that predate PRECOPY_INFOv2 and never write flags"),
    ),
    v2(
        Fault::PrecopyInfoV2GetAccepted,
        "precopy-info-v2-get-accepted",
        "V2-PRECOPY-11",
        Must,
        Fail,
        "a GET of MIG_PRECOPY_INFOv2 succeeds instead of failing with EINVAL",
        Some("a driver's own device_feature handling feature 12 without vfio_check_feature()"),
    ),
    v2(
        Fault::PrecopyInfoV2WithoutPreCopy,
        "precopy-info-v2-without-pre-copy",
        "V2-PRECOPY-12",
        Must,
        Fail,
        "a device without PRE_COPY (it offers STOP_COPY and P2P only) accepts PROBE and SET of MIG_PRECOPY_INFOv2",
        Some("feature 12 enabled without the core's VFIO_MIGRATION_PRE_COPY check"),
    ),
    v2(
        Fault::PrecopyInfoV2SurvivesReopen,
        "precopy-info-v2-survives-reopen",
        "V2-PRECOPY-13",
        Df,
        Note,
        "the MIG_PRECOPY_INFOv2 opt-in is kept when the device is closed and opened again",
        Some("the opt-in kept in driver state that close_device does not clear"),
    ),
    v2(
        Fault::ReinitWithoutOptIn,
        "reinit-without-opt-in",
        "V2-PRECOPY-14",
        Must,
        Fail,
        "at the third precopy info of a session (or `reinit=N`) the device gets new initial data and reports REINIT whether or not the user opted in",
        Some("a driver that reports REINIT from the firmware state without checking the opt-in"),
    ),
    v2(
        Fault::InitialBytesRiseWithoutReinit,
        "initial-bytes-rise-without-reinit",
        "V2-PRECOPY-15",
        Should,
        Warn,
        "at the third precopy info of a session (or `reinit=N`) the device gets new initial data and initial_bytes rises, but REINIT is never set",
        Some("new initial data from a device reconfiguration reported as before PRECOPY_INFOv2"),
    ),
    v2(
        Fault::ReinitDirtyBytesKept,
        "reinit-dirty-bytes-kept",
        "V2-PRECOPY-16",
        Should,
        Warn,
        "a REINIT report also counts the new chunk's record in dirty_bytes instead of restarting it at 0",
        Some("the new initial chunk accounted like an incremental save (mlx5's dirty_bytes path)"),
    ),
    v2(
        Fault::NewFdOnPrecopyToStopCopy,
        "new-fd-on-precopy-to-stop-copy",
        "V2-FSM-08",
        Must,
        Fail,
        "PRE_COPY(_P2P)->STOP_COPY returns a new data fd carrying the rest of the stream; the old fd ends",
        Some("a new migration file opened for the final stop-copy chunk"),
    ),
    v2(
        Fault::NoFdOnStopToStopCopy,
        "no-fd-on-stop-to-stop-copy",
        "V2-FSM-08",
        Must,
        Fail,
        "STOP->STOP_COPY starts a session but returns data_fd -1",
        None,
    ),
    v2(
        Fault::StaleFdAfterSession,
        "stale-fd-after-session",
        "V2-SAVE-05",
        Must,
        Fail,
        "a saving fd keeps delivering its unread data after its session ended (observable when data was left unread)",
        Some("migration file not disabled when the device leaves the saving group"),
    ),
    v2(
        Fault::StagedDataAfterSession,
        "staged-data-after-session",
        "V2-FSM-09",
        Must,
        Fail,
        "a saving fd whose session ended in the middle of a record still delivers the rest of that record (observable only after a partial read)",
        Some("read handler that serves its staged buffer before checking that the file was disabled"),
    ),
    v2(
        Fault::DataFdNotCloexec,
        "data-fd-not-cloexec",
        "V2-SAVE-06",
        Must,
        Fail,
        "data fds are created without close-on-exec",
        Some("anon inode fd installed without O_CLOEXEC"),
    ),
    v2(
        Fault::StateReportedEarly,
        "state-reported-early",
        "V2-FSM-03",
        Must,
        Fail,
        "the first GET after a SET that moved the device reports the previous state",
        Some("SET returning before an asynchronous transition completes"),
    ),
    v2(
        Fault::SpontaneousStateChange,
        "spontaneous-state-change",
        "V2-FSM-11",
        Must,
        Fail,
        "after three GETs in STOP the device moves to RUNNING by itself",
        Some("firmware resuming the function on its own after a watchdog"),
    ),
    v2(
        Fault::StopStateChanges,
        "stop-state-changes",
        "V2-FSM-12",
        Must,
        Fail,
        "the device keeps changing its internal state in STOP, so two saves from STOP differ",
        Some("STOP that quiesces DMA but not the device's internal engines"),
    ),
    v2(
        Fault::ResetNotRunning,
        "reset-not-running",
        "V2-RESET-01",
        Must,
        Fail,
        "VFIO_DEVICE_RESET leaves the device in STOP",
        None,
    ),
    v2(
        Fault::ResetKeepsSession,
        "reset-keeps-session",
        "V2-RESET-02",
        Must,
        Fail,
        "VFIO_DEVICE_RESET does not end the data session; its fd keeps working",
        Some("reset handler that does not disable the migration files"),
    ),
    v2(
        Fault::SetErrorAccepted,
        "set-error-accepted",
        "V2-FSM-04",
        Must,
        Fail,
        "SET to ERROR succeeds and moves the device to ERROR",
        None,
    ),
    v2(
        Fault::UnsupportedStateAccepted,
        "unsupported-state-accepted",
        "V2-FSM-04",
        Must,
        Fail,
        "MIGRATION does not advertise P2P, yet SET RUNNING_P2P (and PRE_COPY_P2P) succeeds",
        Some("advertised flags out of sync with the states the driver implements"),
    ),
    v2(
        Fault::StopCopyToPreCopyAccepted,
        "stop-copy-to-pre-copy-accepted",
        "V2-FSM-05",
        Must,
        Fail,
        "STOP_COPY->PRE_COPY(_P2P) succeeds and the session goes back to precopy",
        Some("kernels without the vfio_mig_get_next_state() fix for blocked arcs"),
    ),
    v2(
        Fault::FeatureArgszUnchecked,
        "feature-argsz-unchecked",
        "V2-FEAT-01",
        Must,
        Fail,
        "VFIO_DEVICE_FEATURE ignores argsz: short or missing payloads are accepted",
        Some("device_feature handlers that skip vfio_check_feature()"),
    ),
    v2(
        Fault::FeatureGetSetAccepted,
        "feature-get-set-accepted",
        "V2-FEAT-03",
        Must,
        Fail,
        "GET|SET without PROBE is accepted (MIG_DEVICE_STATE then does a GET)",
        Some("device_feature handlers that skip vfio_check_feature()"),
    ),
    v2(
        Fault::FeatureUnknownFlagsAccepted,
        "feature-unknown-flags-accepted",
        "V2-FEAT-02",
        Must,
        Fail,
        "flag bits outside index/GET/SET/PROBE are ignored",
        Some("device_feature handlers that skip vfio_check_feature()"),
    ),
    v2(
        Fault::DataSizeSetAccepted,
        "data-size-set-accepted",
        "V2-SIZE-02",
        Must,
        Fail,
        "SET on MIG_DATA_SIZE succeeds and does nothing",
        None,
    ),
    v2(
        Fault::LoggingStartTwice,
        "logging-start-twice",
        "V2-LOG-02",
        Must,
        Fail,
        "a second DMA_LOGGING_START without STOP succeeds and replaces the ranges",
        Some("log_start without a 'tracker already active' check"),
    ),
    v2(
        Fault::LoggingRangesUnchecked,
        "logging-ranges-unchecked",
        "V2-LOG-01",
        Must,
        Fail,
        "DMA_LOGGING_START accepts zero, too many, unaligned, overlapping and overflowing ranges",
        Some("a logging entry point that bypasses the core's range validation"),
    ),
    v2(
        Fault::LoggingReportUnsupported,
        "logging-report-unsupported",
        "V2-LOG-06",
        Should,
        Warn,
        "DMA_LOGGING_START succeeds, every DMA_LOGGING_REPORT fails with EOPNOTSUPP",
        Some("mtty on kernels without CONFIG_IOMMUFD_DRIVER (iova_bitmap_alloc() is a stub)"),
    ),
    v2(
        Fault::LoggingPageShiftReturned,
        "logging-page-shift-returned",
        "V2-LOG-07",
        Must,
        Fail,
        "DMA_LOGGING_START copies back the page shift it tracks at (12) where the page size belongs",
        Some("log_start() storing ilog2() of its granularity into *page_size"),
    ),
    v2(
        Fault::LoggingReportPastRange,
        "logging-report-past-range",
        "V2-LOG-08",
        Must,
        Fail,
        "DMA_LOGGING_REPORT also sets the bit of the page after the range's last one",
        Some("an inclusive end (iova + length) where the last page is iova + length - page_size"),
    ),
    v2(
        Fault::LoggingReportNextPage,
        "logging-report-next-page",
        "V2-LOG-09",
        Must,
        Fail,
        "DMA_LOGGING_REPORT sets the bit of the page after each page the device wrote",
        Some("a tracker that records where a write ends (addr + len) and passes that to iova_bitmap_set()"),
    ),
    v2(
        Fault::SlowTransition,
        "slow-transition",
        "V2-TIME-01",
        Should,
        Warn,
        "the first SET to STOP_COPY takes 1.2 s; the transition itself is right",
        Some("a first save that quiesces firmware or allocates large buffers"),
    ),
    v2(
        Fault::SlowStop,
        "slow-stop",
        "V2-TIME-02",
        Should,
        Warn,
        "the first stop of the running device takes 400 ms: within --arc-latency-limit, over the downtime budget",
        Some("a stop that waits for in-flight work or a firmware quiesce command"),
    ),
    v2(
        Fault::HangTransition,
        "hang-transition",
        "KERNEL-02",
        Must,
        Timeout,
        "the first SET that enters STOP_COPY never returns",
        Some("firmware command that never completes"),
    ),
    v2(
        Fault::HangRead,
        "hang-read",
        "KERNEL-02",
        Must,
        Timeout,
        "read() on a saving fd never returns and poll() never reports it readable",
        Some("read waiting on a device completion that never comes"),
    ),
    v2(
        Fault::ErrorOnResumeStays,
        "error-on-resume-stays",
        "V2-RESET-03",
        Must,
        Fail,
        "a failed RESUMING->STOP moves to ERROR, and SET then leaves ERROR without a reset",
        None,
    ),
    v2(
        Fault::SlowLoad,
        "slow-load",
        "V2-TIME-02",
        Should,
        Warn,
        "the first SET that loads a resumed stream (out of RESUMING) takes 400 ms: within --arc-latency-limit, over the downtime budget",
        Some("a load that replays the state into the hardware or waits for a firmware command"),
    ),
    v2(
        Fault::RefusedSetStops,
        "refused-set-stops",
        "V2-FSM-04",
        Must,
        Fail,
        "a SET the device refuses (EINVAL) leaves it in STOP, its data session ended, instead of where it was",
        Some("an error path that quiesces the device before it checks the request"),
    ),
    v2(
        Fault::RecoverSetFails,
        "recover-set-fails",
        "V2-FSM-14",
        Must,
        Fail,
        "after a failed SET every SET fails with EIO until VFIO_DEVICE_RESET, though GET reports the state the device stayed in",
        Some("an error path that returns without clearing the driver's in-transition flag"),
    ),
    v2(
        Fault::ResetKeepsError,
        "reset-keeps-error",
        "V2-RESET-01",
        Must,
        Fail,
        "a failed RESUMING->STOP moves to ERROR, and VFIO_DEVICE_RESET then leaves it in ERROR",
        Some("a reset handler that only resets a device whose migration state is valid"),
    ),
    v2(
        Fault::FailedSetCopiesState,
        "failed-set-copies-state",
        "V2-FSM-10",
        Must,
        Fail,
        "a failed SET copies the device's current state back in device_state instead of the requested one",
        Some("the draft v2 uAPI, which returned the current state on failure"),
    ),
    v2(
        Fault::ReadPositionPerThread,
        "read-position-per-thread",
        "V2-RACE-01",
        Must,
        Fail,
        "every thread reading a saving fd has its own stream position: a second reader gets the stream again from its start",
        Some("qat's f_pos race: the position read and written back outside the file's lock"),
    ),
    v2(
        Fault::WritePositionPerThread,
        "write-position-per-thread",
        "V2-RACE-02",
        Must,
        Fail,
        "every thread writing a resuming fd has its own stream position: writes from a second thread start a stream of their own",
        Some("qat's f_pos race in the resume write path"),
    ),
    v2(
        Fault::PollMissesSessionEnd,
        "poll-misses-session-end",
        "V2-RACE-03",
        Must,
        Fail,
        "poll() on a saving fd whose session ended never reports it: a thread waiting on it sleeps until its timeout",
        Some("a file disabled without waking its poll queue"),
    ),
    v2(
        Fault::CloseKeepsSession,
        "close-keeps-session",
        "V2-FSM-13",
        Must,
        Fail,
        "closing the device fd leaves the saving session alive: its data fd keeps delivering device data",
        Some("the release path not disabling the migration file (use after close)"),
    ),
    v2(
        Fault::StateTiedToSettingThread,
        "state-tied-to-setting-thread",
        "V2-RACE-04",
        Must,
        Fail,
        "a saving fd read by a thread other than the one whose SET opened the session gives end of stream at once",
        Some("session context kept per task instead of per file"),
    ),
    v1(
        Fault::V1PendingNeverZero,
        "v1-pending-never-zero",
        "V1-SAVE-04",
        Must,
        Fail,
        "in stop-and-copy pending_bytes never reaches 0: the trailer is offered again forever",
        Some("dirty tracking that never quiesces in stop-and-copy"),
    ),
    v1(
        Fault::V1DataSizeBeyondRegion,
        "v1-data-size-beyond-region",
        "V1-SAVE-03",
        Must,
        Fail,
        "staged chunks are not capped at the data section: data_size exceeds region size - data_offset",
        Some("chunk size taken from the device buffer instead of the region"),
    ),
    v1(
        Fault::V1InvalidStateAccepted,
        "v1-invalid-state-accepted",
        "V1-STATE-02",
        Must,
        Fail,
        "writing 101 or 111 to device_state succeeds and reads back",
        Some("drivers without a VFIO_DEVICE_STATE_VALID() check"),
    ),
    v1(
        Fault::V1NotFrozen,
        "v1-not-frozen",
        "V1-STATE-06",
        Should,
        Warn,
        "in stop-and-copy each pending_bytes read changes a page not yet saved, so two saves differ",
        Some("clearing _RUNNING only quiesces (the Oct 2021 v1 discussion)"),
    ),
    v1(
        Fault::V1DataOffsetUnstable,
        "v1-data-offset-unstable",
        "V1-SAVE-02",
        Should,
        Warn,
        "data_offset alternates between two values on every read",
        None,
    ),
    v1(
        Fault::V1PendingSideEffect,
        "v1-pending-side-effect",
        "V1-SAVE-01",
        Should,
        // A user reading pending_bytes twice then sees empty chunks and a
        // stream that never completes: the MUST rules of V1-SAVE-03/04 break.
        Fail,
        "every pending_bytes read consumes up to a chunk of data",
        Some("chunk preparation done in the pending_bytes read handler"),
    ),
    v1(
        Fault::V1ErrorLeftWithoutReset,
        "v1-error-left-without-reset",
        "V1-STATE-05",
        Must,
        Fail,
        "device_state writes succeed in the error state",
        None,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requirements;

    #[test]
    fn catalogue_is_in_declaration_order_with_unique_names() {
        for (i, info) in catalogue().iter().enumerate() {
            assert_eq!(info.fault as usize, i, "{}", info.name);
            assert_eq!(Fault::from_name(info.name), Some(info.fault));
            assert_eq!(info.fault.to_string(), info.name);
        }
        let mut names: Vec<&str> = catalogue().iter().map(|i| i.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), catalogue().len());
        assert_eq!(Fault::from_name("no-such-fault"), None);
    }

    #[test]
    fn faults_cite_known_requirements_with_their_strength() {
        for info in catalogue() {
            let req = requirements::find(info.requirement)
                .unwrap_or_else(|| panic!("{}: unknown {}", info.name, info.requirement));
            assert_eq!(req.strength, info.strength, "{}", info.name);
            let by_strength = match info.strength {
                Must => Fail,
                Should => Warn,
                Df => Note,
                Strength::Info => Expected::Pass,
            };
            assert!(
                info.expected == by_strength
                    || matches!(info.expected, Expected::Pass | Timeout)
                    || (info.fault == Fault::V1PendingSideEffect && info.expected == Fail),
                "{}: {:?} for a {:?} rule",
                info.name,
                info.expected,
                info.strength
            );
            assert_eq!(info.v1, info.name.starts_with("v1-"), "{}", info.name);
            assert!(!info.about.is_empty() && !info.about.ends_with('.'));
        }
    }

    #[test]
    fn fault_sets() {
        let mut set = FaultSet::default();
        assert!(!set.has(Fault::HangRead));
        set.insert(Fault::HangRead);
        set.insert(Fault::V1ErrorLeftWithoutReset);
        assert!(set.has(Fault::HangRead) && set.has(Fault::V1ErrorLeftWithoutReset));
        assert!(!set.has(Fault::EnomsgInStopCopy));
    }
}
