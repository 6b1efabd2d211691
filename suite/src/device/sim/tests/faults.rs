//! Every fault breaks its rule, observably, and the clean simulator keeps it.

use std::sync::mpsc;
use std::thread;

use super::*;

/// `probe` tells whether the fault's rule holds: it must on the clean
/// simulator and must not with the fault injected.
fn check(name: &str, options: &str, probe: fn(&mut Simulator) -> bool) {
    assert!(
        Fault::from_name(name).is_some(),
        "{name} is not in the catalogue"
    );
    let faulty = if options.is_empty() {
        format!("fault={name}")
    } else {
        format!("{options},fault={name}")
    };
    assert!(
        probe(&mut sim(options)),
        "{name}: the clean simulator breaks the rule"
    );
    assert!(
        !probe(&mut sim(&faulty)),
        "{name}: the fault does not break the rule"
    );
}

fn stream() -> Vec<u8> {
    save_from_stop(&mut sim(""), 1 << 20)
}

fn precopy_info_flags(d: &mut Simulator, fd: DataFd, flags: u32) -> u32 {
    let mut arg = VfioPrecopyInfo {
        argsz: 24,
        flags,
        ..Default::default()
    }
    .to_bytes();
    d.data_ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut arg)
        .unwrap();
    VfioPrecopyInfo::from_bytes(&arg).flags
}

fn opt_in(d: &mut Simulator) {
    let mut req = FeatureRequest::new(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, SET, vec![]);
    d.feature(&mut req).unwrap();
}

macro_rules! fault_tests {
    ($( $test:ident: $name:literal, $options:literal, $probe:expr; )*) => {
        $(
            #[test]
            fn $test() {
                check($name, $options, $probe);
            }
        )*
        const TESTED: &[&str] = &[$($name),*];
    };
}

fault_tests! {
    enomsg_in_stop_copy: "enomsg-in-stop-copy", "", |d| {
        go(d, Stop);
        let fd = go(d, StopCopy);
        let mut buf = vec![0u8; 4096];
        let (mut zeros, mut enomsg) = (0, false);
        while zeros < 3 {
            match d.data_read(fd, &mut buf) {
                Ok(0) => zeros += 1,
                Ok(_) => {}
                Err(Errno::ENOMSG) => enomsg = true,
                Err(e) => panic!("{e}"),
            }
        }
        !enomsg
    };
    zero_at_end_of_precopy: "zero-at-end-of-precopy", "", |d| {
        let fd = go(d, PreCopy);
        read_all(d, fd, 4096).1 == End::Errno(Errno::ENOMSG)
    };
    read_offset_ignored: "read-offset-ignored", "", |d| {
        let whole = save_from_stop(d, 1 << 20);
        assert_eq!(save_from_stop(d, 1 << 20), whole, "large reads are unaffected");
        save_from_stop(d, 7) == whole
    };
    resume_offset_ignored: "resume-offset-ignored", "", |d| {
        let s = stream();
        assert_eq!(resume(d, &s, s.len()), Ok(()), "one-shot writes resume");
        resume(d, &s, 13).is_ok()
    };
    truncated_resume_accepted: "truncated-resume-accepted", "", |d| {
        let s = stream();
        resume(d, &s[..s.len() - 1], 4096).is_err() && d.get_state() == Ok(Resuming)
    };
    corrupt_header_accepted: "corrupt-header-accepted", "", |d| {
        let mut s = stream();
        s[0] ^= 1;
        resume(d, &s, 4096).is_err()
    };
    oversize_resume_accepted: "oversize-resume-accepted", "", |d| {
        let mut s = stream();
        s.extend_from_slice(&[0; 16]);
        go(d, Stop);
        let fd = go(d, Resuming);
        write_all(d, fd, &s, s.len()).is_err()
    };
    incompatible_type_accepted: "incompatible-type-accepted", "", |d| {
        let foreign = save_from_stop(&mut sim("type=sim-b"), 1 << 20);
        resume(d, &foreign, 4096).is_err()
    };
    refused_write_loaded: "refused-write-loaded", "", |d| {
        let mut s = stream();
        s[0] ^= 1;
        go(d, Stop);
        let fd = go(d, Resuming);
        assert!(write_all(d, fd, &s, 4096).is_err(), "the header is refused");
        set(d, Stop).result.is_err() && d.get_state() == Ok(Resuming)
    };
    staged_data_after_session: "staged-data-after-session", "", |d| {
        go(d, Stop);
        let fd = go(d, StopCopy);
        d.data_read(fd, &mut [0; 7]).unwrap();
        go(d, Stop);
        d.data_read(fd, &mut [0; 4096]).is_err()
    };
    stop_copy_length_under: "stop-copy-length-under", "", |d| {
        let estimate = d.stop_copy_length().unwrap();
        save_from_stop(d, 1 << 20).len() as u64 <= estimate
    };
    stop_copy_length_over: "stop-copy-length-over", "", |d| {
        let estimate = d.stop_copy_length().unwrap();
        estimate <= 2 * save_from_stop(d, 1 << 20).len() as u64 + 4096
    };
    precopy_info_outside_precopy: "precopy-info-outside-precopy", "", |d| {
        let fd = go(d, PreCopy);
        go(d, StopCopy);
        d.precopy_info(fd).err() == Some(Errno::EINVAL)
    };
    initial_bytes_stuck: "initial-bytes-stuck", "", |d| {
        let fd = go(d, PreCopy);
        let first = d.precopy_info(fd).unwrap().initial_bytes;
        d.data_read(fd, &mut [0; 1000]).unwrap();
        let second = d.precopy_info(fd).unwrap().initial_bytes;
        read_all(d, fd, 4096);
        second < first && d.precopy_info(fd).unwrap().initial_bytes == 0
    };
    dirty_bytes_never_zero: "dirty-bytes-never-zero", "", |d| {
        let fd = go(d, PreCopy);
        d.precopy_info(fd).unwrap().dirty_bytes == 0
    };
    precopy_more_than_announced: "precopy-more-than-announced", "", |d| {
        let fd = go(d, PreCopy);
        let info = d.precopy_info(fd).unwrap();
        let (data, _) = read_all(d, fd, 4096);
        data.len() as u64 <= info.initial_bytes + info.dirty_bytes
    };
    precopy_flags_echoed: "precopy-flags-echoed", "", |d| {
        let fd = go(d, PreCopy);
        let mut req = FeatureRequest::new(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, SET, vec![]);
        d.feature(&mut req).unwrap();
        matches!(precopy_info_flags(d, fd, 0xfe), 0 | VFIO_PRECOPY_INFO_REINIT)
    };
    precopy_info_v2_get_accepted: "precopy-info-v2-get-accepted", "", |d| {
        let mut req = FeatureRequest::new(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, GET, vec![]);
        d.feature(&mut req) == Err(Errno::EINVAL)
    };
    precopy_info_v2_without_pre_copy: "precopy-info-v2-without-pre-copy", "flags=stop_copy+p2p", |d| {
        d.probe_feature(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, SET) == Err(Errno::EINVAL)
    };
    precopy_info_v2_survives_reopen: "precopy-info-v2-survives-reopen", "", |d| {
        opt_in(d);
        d.close_device().unwrap();
        d.reopen().unwrap();
        let fd = go(d, PreCopy);
        precopy_info_flags(d, fd, 0xfffe) == 0xfffe
    };
    reinit_without_opt_in: "reinit-without-opt-in", "reinit=2", |d| {
        let fd = go(d, PreCopy);
        d.precopy_info(fd).unwrap();
        precopy_info_flags(d, fd, 0) & VFIO_PRECOPY_INFO_REINIT == 0
    };
    initial_bytes_rise_without_reinit: "initial-bytes-rise-without-reinit", "reinit=2", |d| {
        opt_in(d);
        let fd = go(d, PreCopy);
        d.precopy_info(fd).unwrap();
        read_all(d, fd, 4096);
        let info = d.precopy_info(fd).unwrap();
        info.initial_bytes == 0 || info.flags & VFIO_PRECOPY_INFO_REINIT != 0
    };
    reinit_dirty_bytes_kept: "reinit-dirty-bytes-kept", "reinit=2", |d| {
        opt_in(d);
        let fd = go(d, PreCopy);
        d.precopy_info(fd).unwrap();
        let info = d.precopy_info(fd).unwrap();
        info.flags & VFIO_PRECOPY_INFO_REINIT != 0 && info.dirty_bytes == 0
    };
    new_fd_on_precopy_to_stop_copy: "new-fd-on-precopy-to-stop-copy", "", |d| {
        go(d, PreCopy);
        set(d, StopCopy).data_fd == -1
    };
    no_fd_on_stop_to_stop_copy: "no-fd-on-stop-to-stop-copy", "", |d| {
        go(d, Stop);
        set(d, StopCopy).data_fd >= 0
    };
    stale_fd_after_session: "stale-fd-after-session", "", |d| {
        let fd = go(d, PreCopy);
        d.data_read(fd, &mut [0; 100]).unwrap();
        go(d, Running);
        matches!(d.data_read(fd, &mut [0; 100]), Ok(0) | Err(_))
    };
    data_fd_not_cloexec: "data-fd-not-cloexec", "", |d| {
        let fd = go(d, PreCopy);
        d.data_cloexec(fd) == Ok(true)
    };
    state_reported_early: "state-reported-early", "", |d| {
        go(d, Stop);
        d.get_state() == Ok(Stop)
    };
    spontaneous_state_change: "spontaneous-state-change", "", |d| {
        go(d, Stop);
        (0..6).all(|_| d.get_state() == Ok(Stop))
    };
    stop_state_changes: "stop-state-changes", "", |d| {
        let first = save_from_stop(d, 4096);
        for _ in 0..3 {
            d.get_state().unwrap();
        }
        save_from_stop(d, 4096) == first
    };
    reset_not_running: "reset-not-running", "", |d| {
        go(d, Stop);
        d.reset().unwrap();
        d.get_state() == Ok(Running)
    };
    reset_keeps_session: "reset-keeps-session", "", |d| {
        let fd = go(d, PreCopy);
        d.reset().unwrap();
        matches!(d.data_read(fd, &mut [0; 64]), Ok(0) | Err(_))
    };
    set_error_accepted: "set-error-accepted", "", |d| {
        d.set_state(MigState::Error.raw()).result == Err(Errno::EINVAL) && d.get_state() == Ok(Running)
    };
    unsupported_state_accepted: "unsupported-state-accepted", "flags=stop_copy+pre_copy", |d| {
        let flags = d.migration_flags().unwrap();
        assert!(!flags.has_p2p());
        set(d, RunningP2p).result == Err(Errno::EINVAL) && d.get_state() == Ok(Running)
    };
    stop_copy_to_pre_copy_accepted: "stop-copy-to-pre-copy-accepted", "", |d| {
        go(d, StopCopy);
        set(d, PreCopy).result == Err(Errno::EINVAL) && d.get_state() == Ok(StopCopy)
    };
    feature_argsz_unchecked: "feature-argsz-unchecked", "", |d| {
        feature(d, 4, VFIO_DEVICE_FEATURE_MIGRATION | GET, vec![0; 8]).0 == Err(Errno::EINVAL)
    };
    feature_get_set_accepted: "feature-get-set-accepted", "", |d| {
        let flags = VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE | GET | SET;
        feature(d, 16, flags, vec![0; 8]).0 == Err(Errno::EINVAL)
    };
    feature_unknown_flags_accepted: "feature-unknown-flags-accepted", "", |d| {
        let flags = VFIO_DEVICE_FEATURE_MIGRATION | GET | (1 << 20);
        feature(d, 16, flags, vec![0; 8]).0 == Err(Errno::EINVAL)
    };
    data_size_set_accepted: "data-size-set-accepted", "", |d| {
        feature(d, 16, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE | SET, vec![0; 8]).0 == Err(Errno::EINVAL)
    };
    logging_start_twice: "logging-start-twice", "", |d| {
        logging_start(d, &[(0, 0x10000)]).unwrap();
        logging_start(d, &[(0, 0x10000)]).is_err()
    };
    logging_report_unsupported: "logging-report-unsupported", "", |d| {
        logging_start(d, &[(0, 0x10000)]).unwrap();
        logging_report(d, 0, 0x10000, 4096).is_ok()
    };
    logging_page_shift_returned: "logging-page-shift-returned", "", |d| {
        logging_start(d, &[(0, 0x10000)]) == Ok(4096)
    };
    logging_report_past_range: "logging-report-past-range", "", |d| {
        logging_start(d, &[(0, 0x10000)]).unwrap();
        // 10 pages: bit 10 is the page after the range.
        logging_report(d, 0, 0xa000, 4096).unwrap()[0] >> 10 == 0
    };
    logging_report_next_page: "logging-report-next-page", "dma=0x3000", |d| {
        go(d, Stop);
        logging_start(d, &[(0, 0x10000)]).unwrap();
        logging_report(d, 0, 0x10000, 4096).unwrap()[0] == 1 << 3
    };
    logging_ranges_unchecked: "logging-ranges-unchecked", "", |d| {
        let bad: [&[(u64, u64)]; 4] = [
            &[],
            &[(0x800, 0x1000)],
            &[(0, 0x2000), (0x1000, 0x1000)],
            &[(u64::MAX - 0xfff, 0x2000)],
        ];
        bad.iter().all(|ranges| {
            let refused = logging_start(d, ranges).is_err();
            d.reset().unwrap();
            refused
        })
    };
    error_on_resume_stays: "error-on-resume-stays", "", |d| {
        let s = stream();
        assert!(resume(d, &s[..100], 4096).is_err());
        d.get_state() != Ok(Error) || set(d, Running).result.is_err()
    };
    refused_set_stops: "refused-set-stops", "", |d| {
        go(d, PreCopy);
        set(d, Error).result == Err(Errno::EINVAL) && d.get_state() == Ok(PreCopy)
    };
    recover_set_fails: "recover-set-fails", "", |d| {
        go(d, Stop);
        assert_eq!(set(d, Error).result, Err(Errno::EINVAL));
        assert_eq!(d.get_state(), Ok(Stop), "the failed SET changed nothing");
        let recovered = set(d, Stop).result.is_ok() && set(d, Running).result.is_ok();
        d.reset().unwrap();
        recovered
    };
    reset_keeps_error: "reset-keeps-error", "", |d| {
        let s = stream();
        assert!(resume(d, &s[..100], 4096).is_err());
        d.reset().unwrap();
        d.get_state() == Ok(Running)
    };
    failed_set_copies_state: "failed-set-copies-state", "", |d| {
        go(d, Stop);
        set(d, Error).device_state == Error.raw()
    };
    read_position_per_thread: "read-position-per-thread", "", |d| {
        let reference = save_from_stop(d, 1 << 20);
        let fd = go(d, StopCopy);
        let shared = d.share_data_fd(fd).unwrap();
        assert_eq!(d.data_read(fd, &mut [0; 64]), Ok(64));
        let other = thread::spawn(move || {
            let mut b = [0u8; 64];
            shared.read(&mut b).map(|n| b[..n].to_vec())
        });
        other.join().unwrap().as_deref() == Ok(&reference[64..128])
    };
    write_position_per_thread: "write-position-per-thread", "", |d| {
        let s = stream();
        go(d, Stop);
        let fd = go(d, Resuming);
        let shared = d.share_data_fd(fd).unwrap();
        let half = s.len() / 2;
        assert_eq!(d.data_write(fd, &s[..half]), Ok(half));
        let rest = s[half..].to_vec();
        let other = thread::spawn(move || shared.write(&rest));
        other.join().unwrap() == Ok(s.len() - half) && set(d, Stop).result.is_ok()
    };
    poll_misses_session_end: "poll-misses-session-end", "", |d| {
        go(d, Stop);
        let fd = go(d, StopCopy);
        let shared = d.share_data_fd(fd).unwrap();
        go(d, Stop);
        // Not a timing check: the fault never reports the fd.
        !shared.poll(PollFlags::POLLIN, Duration::from_millis(10)).unwrap().is_empty()
    };
    close_keeps_session: "close-keeps-session", "", |d| {
        go(d, Stop);
        let fd = go(d, StopCopy);
        d.close_device().unwrap();
        matches!(d.data_read(fd, &mut [0; 64]), Ok(0) | Err(_))
    };
    state_tied_to_setting_thread: "state-tied-to-setting-thread", "", |d| {
        go(d, Stop);
        let fd = go(d, StopCopy);
        let shared = d.share_data_fd(fd).unwrap();
        thread::spawn(move || shared.read(&mut [0; 64])).join().unwrap() == Ok(64)
    };
    v1_pending_never_zero: "v1-pending-never-zero", "v1", |d| {
        let v1 = V1::new(d);
        v1.set(d, V1State::STOP_AND_COPY).unwrap();
        v1.drain(d, 1000).is_some()
    };
    v1_data_size_beyond_region: "v1-data-size-beyond-region", "v1", |d| {
        let v1 = V1::new(d);
        let size = d.find_migration_region().unwrap().unwrap().info.size;
        v1.set(d, V1State::STOP_AND_COPY).unwrap();
        (0..100).all(|_| {
            if v1.read64(d, PENDING_BYTES).unwrap() == 0 {
                return true;
            }
            let offset = v1.read64(d, DATA_OFFSET).unwrap();
            v1.read64(d, DATA_SIZE).unwrap() <= size - offset
        })
    };
    v1_invalid_state_accepted: "v1-invalid-state-accepted", "v1", |d| {
        let v1 = V1::new(d);
        v1.set(d, V1State(0b101)).is_err() && v1.state(d) == V1State::RUNNING
    };
    v1_not_frozen: "v1-not-frozen", "v1", |d| {
        let v1 = V1::new(d);
        v1.save(d) == v1.save(d)
    };
    v1_data_offset_unstable: "v1-data-offset-unstable", "v1", |d| {
        let v1 = V1::new(d);
        v1.set(d, V1State::STOP_AND_COPY).unwrap();
        v1.read64(d, PENDING_BYTES).unwrap();
        v1.read64(d, DATA_OFFSET) == v1.read64(d, DATA_OFFSET)
    };
    v1_pending_side_effect: "v1-pending-side-effect", "v1", |d| {
        let v1 = V1::new(d);
        v1.set(d, V1State::STOP_AND_COPY).unwrap();
        v1.read64(d, PENDING_BYTES) == v1.read64(d, PENDING_BYTES)
    };
    v1_error_left_without_reset: "v1-error-left-without-reset", "v1", |d| {
        let v1 = V1::new(d);
        v1.set(d, V1State::RESUMING).unwrap();
        d.region_write((9 << 40) + 4096, &[0xee; 128]).unwrap();
        assert_eq!(v1.write64(d, DATA_SIZE, 128), Err(Errno::EINVAL));
        assert_eq!(v1.state(d), V1State::ERROR);
        v1.set(d, V1State::RUNNING).is_err()
    };
}

/// Faults whose rule is a matter of time, tested below.
const TIMING: &[&str] = &[
    "slow-transition",
    "slow-stop",
    "slow-load",
    "hang-transition",
    "hang-read",
];

#[test]
fn every_fault_is_tested() {
    let mut tested: Vec<&str> = TESTED.iter().chain(TIMING).copied().collect();
    tested.sort_unstable();
    let mut all: Vec<&str> = catalogue().iter().map(|f| f.name).collect();
    all.sort_unstable();
    assert_eq!(tested, all);
}

#[test]
fn slow_transition() {
    // The delays are asked for, not timed: a loaded machine makes any SET slow.
    let none = Duration::ZERO;
    assert_eq!(sim("").core().set_delay(StopCopy.raw()), none);
    let slow = sim("fault=slow-transition");
    assert_eq!(
        slow.core().set_delay(Stop.raw()),
        none,
        "only STOP_COPY is slow"
    );
    assert_eq!(slow.core().set_delay(StopCopy.raw()), SLOW_SET);
    assert_eq!(
        slow.core().set_delay(StopCopy.raw()),
        none,
        "only the first time"
    );
    let stop = sim("fault=slow-stop");
    assert_eq!(
        stop.core().set_delay(StopCopy.raw()),
        none,
        "only STOP is slow"
    );
    assert_eq!(stop.core().set_delay(Stop.raw()), SLOW_STOP);
    assert_eq!(
        stop.core().set_delay(Stop.raw()),
        none,
        "only the first time"
    );
    // slow-load sleeps after a load succeeded: timed loosely from below.
    let s = stream();
    let mut load = sim("fault=slow-load");
    let start = Instant::now();
    resume(&mut load, &s, 4096).unwrap();
    assert!(start.elapsed() >= SLOW_STOP, "the first load is slow");
    assert_eq!(load.get_state(), Ok(Stop), "the rule still holds");
    let latency = Duration::from_millis(20);
    assert_eq!(sim("latency=20ms").core().set_delay(Stop.raw()), latency);
    // And the SET does wait that long.
    let mut slow = sim("fault=slow-transition");
    go(&mut slow, Stop);
    let start = Instant::now();
    go(&mut slow, StopCopy);
    assert!(start.elapsed() >= SLOW_SET);
    assert_eq!(slow.get_state(), Ok(StopCopy), "the rule still holds");
}

/// Runs `op` on a thread; whether it finished within `wait`. A hung thread
/// is left behind (it sleeps until the test process exits). Only a hang
/// can be asked this: a slow machine may take longer than `wait` for
/// anything else.
fn finishes(mut d: Simulator, wait: Duration, op: fn(&mut Simulator)) -> bool {
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        op(&mut d);
        let _ = done.send(());
    });
    finished.recv_timeout(wait).is_ok()
}

#[test]
fn hang_transition() {
    let enter_stop_copy = |d: &mut Simulator| {
        go(d, Stop);
        set(d, StopCopy);
    };
    let wait = Duration::from_millis(300);
    enter_stop_copy(&mut sim(""));
    let mut d = sim("fault=hang-transition");
    go(&mut d, Stop);
    go(&mut d, Running);
    assert!(!finishes(d, wait, enter_stop_copy));
}

#[test]
fn hang_read() {
    let wait = Duration::from_millis(300);
    let read = |d: &mut Simulator| {
        go(d, Stop);
        let fd = go(d, StopCopy);
        d.data_read(fd, &mut [0; 16]).unwrap();
    };
    read(&mut sim(""));
    assert!(!finishes(sim("fault=hang-read"), wait, read));
    // poll never reports the fd readable: it waits out its timeout.
    let mut d = sim("fault=hang-read");
    go(&mut d, Stop);
    let fd = go(&mut d, StopCopy);
    let start = Instant::now();
    assert_eq!(
        d.data_poll(fd, PollFlags::POLLIN, Duration::from_millis(20)),
        Ok(PollFlags::empty())
    );
    assert!(start.elapsed() >= Duration::from_millis(20));
    let mut clean = sim("");
    go(&mut clean, Stop);
    let fd = go(&mut clean, StopCopy);
    assert_eq!(
        clean.data_poll(fd, PollFlags::POLLIN, Duration::from_secs(5)),
        Ok(PollFlags::POLLIN)
    );
}

#[test]
fn a_poll_in_another_thread_wakes_when_the_session_ends() {
    let mut d = sim("");
    let fd = go(&mut d, PreCopy);
    // Drain the precopy data: the fd then has nothing to poll for.
    let (_, end) = read_all(&mut d, fd, 1 << 20);
    assert_eq!(end, End::Errno(Errno::ENOMSG));
    let shared = d.share_data_fd(fd).unwrap();
    let poller = thread::spawn(move || shared.poll(PollFlags::POLLIN, Duration::from_secs(3600)));
    go(&mut d, Running);
    // Returns when the SET wakes it (or sees the ended fd at once).
    assert!(!poller.join().unwrap().unwrap().is_empty());
    assert_eq!(d.share_data_fd(9999).err(), Some(Errno::EBADF));
}
