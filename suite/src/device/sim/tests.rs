//! The simulator driven through the [`Device`] / [`DeviceExt`] API, as the
//! suite drives any device.

mod faults;
mod v1;

use v1::V1;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::*;
use crate::device::{Device, DeviceExt, SetStateResult};
use crate::model::v1::V1State;
use crate::model::{expect_set, Expectation, MigrationFlags};
use crate::uapi::v1::{DATA_OFFSET, DATA_SIZE, DEVICE_STATE, PENDING_BYTES, RESERVED};

use MigState::*;

pub(super) fn sim(options: &str) -> Simulator {
    Simulator::new(
        &format!("sim:{options}"),
        SimConfig::parse(options).unwrap(),
    )
}

pub(super) fn set(d: &mut Simulator, state: MigState) -> SetStateResult {
    d.set_state(state.raw())
}

/// SET that must succeed; returns the data fd (or -1).
pub(super) fn go(d: &mut Simulator, state: MigState) -> DataFd {
    let r = set(d, state);
    assert_eq!(r.result, Ok(()), "SET {state}");
    r.data_fd
}

/// How a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Eof,
    Errno(Errno),
}

/// Reads in `chunk`-sized reads until 0 or an error.
pub(super) fn read_all(d: &mut Simulator, fd: DataFd, chunk: usize) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        match d.data_read(fd, &mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, End::Errno(e)),
        }
    }
}

/// STOP -> STOP_COPY, read to the end, -> STOP.
pub(super) fn save_from_stop(d: &mut Simulator, chunk: usize) -> Vec<u8> {
    go(d, Stop);
    let fd = go(d, StopCopy);
    assert!(fd >= FIRST_DATA_FD);
    let (stream, end) = read_all(d, fd, chunk);
    assert_eq!(end, End::Eof);
    go(d, Stop);
    stream
}

/// Writes all of `data` in `chunk`-sized writes, retrying short ones.
pub(super) fn write_all(
    d: &mut Simulator,
    fd: DataFd,
    data: &[u8],
    chunk: usize,
) -> Result<(), Errno> {
    for piece in data.chunks(chunk) {
        let mut at = 0;
        while at < piece.len() {
            at += d.data_write(fd, &piece[at..])?;
        }
    }
    Ok(())
}

/// STOP -> RESUMING, write the stream, RESUMING -> STOP: the first error.
pub(super) fn resume(d: &mut Simulator, stream: &[u8], chunk: usize) -> Result<(), Errno> {
    go(d, Stop);
    let fd = go(d, Resuming);
    write_all(d, fd, stream, chunk)?;
    set(d, Stop).result
}

fn feature(
    d: &mut Simulator,
    argsz: u32,
    flags: u32,
    data: Vec<u8>,
) -> (Result<(), Errno>, Vec<u8>) {
    let mut req = FeatureRequest {
        argsz,
        flags,
        data,
        ..Default::default()
    };
    let r = d.feature(&mut req);
    (r, req.data)
}

const GET: u32 = VFIO_DEVICE_FEATURE_GET;
const SET: u32 = VFIO_DEVICE_FEATURE_SET;
const PROBE: u32 = VFIO_DEVICE_FEATURE_PROBE;

#[test]
fn feature_framing_errnos() {
    use Errno::*;
    let mig = VFIO_DEVICE_FEATURE_MIGRATION;
    let state = VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;
    let size = VFIO_DEVICE_FEATURE_MIG_DATA_SIZE;
    // (what, argsz, flags, payload length, result)
    type Case = (&'static str, u32, u32, usize, Result<(), Errno>);
    let cases: &[Case] = &[
        ("argsz below the header", 4, mig | GET, 8, Err(EINVAL)),
        ("argsz 0", 0, mig | GET, 8, Err(EINVAL)),
        (
            "unknown flag bit",
            16,
            mig | GET | (1 << 19),
            8,
            Err(EINVAL),
        ),
        (
            "GET|SET without PROBE",
            16,
            state | GET | SET,
            8,
            Err(EINVAL),
        ),
        (
            "GET|SET with PROBE",
            8,
            state | GET | SET | PROBE,
            0,
            Ok(()),
        ),
        ("bare PROBE", 8, mig | PROBE, 0, Ok(())),
        (
            "PROBE of an unsupported op",
            8,
            mig | SET | PROBE,
            0,
            Err(EINVAL),
        ),
        ("SET on MIGRATION", 16, mig | SET, 8, Err(EINVAL)),
        ("SET on MIG_DATA_SIZE", 16, size | SET, 8, Err(EINVAL)),
        (
            "GET on LOGGING_START",
            32,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START | GET,
            24,
            Err(EINVAL),
        ),
        ("no op", 16, mig, 8, Err(EINVAL)),
        ("short payload", 12, mig | GET, 4, Err(EINVAL)),
        ("short payload for SET", 12, state | SET, 4, Err(EINVAL)),
        ("unknown feature", 16, 99 | GET, 8, Err(ENOTTY)),
        ("unknown feature PROBE", 8, 99 | PROBE, 0, Err(ENOTTY)),
        ("PCI_VF_TOKEN", 24, SET, 16, Err(ENOTTY)),
        (
            "PRECOPY_INFOv2 SET",
            8,
            VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2 | SET,
            0,
            Ok(()),
        ),
        (
            "PRECOPY_INFOv2 GET",
            8,
            VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2 | GET,
            0,
            Err(EINVAL),
        ),
        (
            "LOGGING_STOP SET",
            8,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP | SET,
            0,
            Ok(()),
        ),
    ];
    let mut d = sim("");
    for (what, argsz, flags, len, want) in cases {
        let (got, data) = feature(&mut d, *argsz, *flags, vec![0xaa; *len]);
        assert_eq!(got, *want, "{what}");
        if flags & PROBE != 0 {
            assert_eq!(data, vec![0xaa; *len], "{what}: PROBE transfers nothing");
        }
    }
    // Only the first argsz - 8 bytes count: a longer buffer changes nothing.
    let (r, data) = feature(&mut d, 16, mig | GET, vec![0; 64]);
    assert_eq!(r, Ok(()));
    assert_eq!(get_u64(&data, 0), MigrationFlags::ALL.0);
    assert_eq!(d.get_state_raw(), Ok((Running.raw(), -1)));
    assert_eq!(
        d.stop_copy_length(),
        Ok(stream::Geometry {
            state_size: 65536,
            page_size: 4096
        }
        .stream_len())
    );

    // Without v2, migration features are ENOTTY even with PROBE.
    let mut v1_only = sim("v1");
    for f in [mig, state, size, VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2] {
        assert_eq!(feature(&mut v1_only, 8, f | PROBE, vec![]).0, Err(ENOTTY));
    }
    assert_eq!(
        v1_only.probe_feature(VFIO_DEVICE_FEATURE_DMA_LOGGING_START, SET),
        Ok(())
    );
    // Without logging, the logging features are ENOTTY.
    let mut no_log = sim("logging=false");
    for f in 6..=8 {
        assert_eq!(feature(&mut no_log, 8, f | PROBE, vec![]).0, Err(ENOTTY));
    }
}

/// Brings a fresh device to `state`; RESUMING gets a complete stream
/// written so that leaving it succeeds.
fn device_in(options: &str, state: MigState, stream: &[u8]) -> (Simulator, DataFd) {
    let mut d = sim(options);
    let fd = go(&mut d, state);
    if state == Resuming {
        write_all(&mut d, fd, stream, 1 << 20).unwrap();
    }
    assert_eq!(d.get_state(), Ok(state));
    (d, fd)
}

#[test]
fn every_set_matches_the_model_for_every_flag_set() {
    for (flags, options) in [
        (MigrationFlags::STOP_COPY, "flags=stop_copy"),
        (MigrationFlags::P2P, "flags=stop_copy+p2p"),
        (MigrationFlags::PRE_COPY, "flags=stop_copy+pre_copy"),
        (MigrationFlags::ALL, "flags=stop_copy+p2p+pre_copy"),
    ] {
        let stream = save_from_stop(&mut sim(options), 1 << 20);
        assert_eq!(sim(options).migration_flags(), Ok(flags));
        for cur in flags.supported_states() {
            for target in 0..=9u32 {
                let (mut d, old_fd) = device_in(options, cur, &stream);
                let r = d.set_state(target);
                let what = format!("{options}: {cur} -> {}", state_name(target));
                assert_eq!(
                    r.device_state, target,
                    "{what}: requested state copied back"
                );
                match expect_set(flags, cur, target) {
                    Expectation::NoOp => {
                        assert_eq!((r.result, r.data_fd), (Ok(()), -1), "{what}");
                        assert_eq!(d.get_state(), Ok(cur), "{what}");
                    }
                    Expectation::Refused(_) => {
                        assert_eq!((r.result, r.data_fd), (Err(Errno::EINVAL), -1), "{what}");
                        assert_eq!(d.get_state(), Ok(cur), "{what}");
                    }
                    Expectation::Moves {
                        new_data_fd,
                        ends_session,
                        ..
                    } => {
                        assert_eq!(r.result, Ok(()), "{what}");
                        assert_eq!(d.get_state_raw(), Ok((target, -1)), "{what}");
                        if new_data_fd {
                            assert!(
                                r.data_fd > old_fd.max(FIRST_DATA_FD - 1),
                                "{what}: new fd {}",
                                r.data_fd
                            );
                        } else {
                            assert_eq!(r.data_fd, -1, "{what}");
                        }
                        if ends_session {
                            let mut b = [0u8; 1];
                            let ended = if cur == Resuming {
                                d.data_write(old_fd, &b)
                            } else {
                                d.data_read(old_fd, &mut b)
                            };
                            assert_eq!(ended, Err(Errno::ENODEV), "{what}: old fd");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn precopy_info_then_enomsg_then_stop_copy_then_eof_forever() {
    let mut d = sim("");
    let fd = go(&mut d, PreCopy);
    let first = d.precopy_info(fd).unwrap();
    assert!(first.initial_bytes > 0);
    assert_eq!((first.dirty_bytes, first.flags), (0, 0));
    let mut stream = Vec::new();
    let mut buf = vec![0u8; 1000];
    let n = d.data_read(fd, &mut buf).unwrap();
    stream.extend_from_slice(&buf[..n]);
    assert_eq!(
        d.precopy_info(fd).unwrap().initial_bytes,
        first.initial_bytes - 1000
    );
    let (rest, end) = read_all(&mut d, fd, 777);
    stream.extend_from_slice(&rest);
    assert_eq!(end, End::Errno(Errno::ENOMSG));
    assert_eq!(stream.len() as u64, first.initial_bytes);
    let info = d.precopy_info(fd).unwrap();
    assert_eq!((info.initial_bytes, info.dirty_bytes), (0, 0));
    assert_eq!(
        d.data_poll(fd, PollFlags::POLLIN, Duration::ZERO),
        Ok(PollFlags::empty())
    );
    assert_eq!(go(&mut d, PreCopyP2p), -1);
    assert_eq!(d.precopy_info(fd).map(|i| i.initial_bytes), Ok(0));
    assert_eq!(go(&mut d, StopCopy), -1);
    assert_eq!(
        d.data_poll(fd, PollFlags::POLLIN, Duration::ZERO),
        Ok(PollFlags::POLLIN)
    );
    assert_eq!(d.precopy_info(fd).err(), Some(Errno::EINVAL));
    let (rest, end) = read_all(&mut d, fd, 1 << 20);
    assert_eq!(end, End::Eof);
    stream.extend_from_slice(&rest);
    for _ in 0..3 {
        assert_eq!(d.data_read(fd, &mut buf), Ok(0));
        assert_eq!(
            d.data_poll(fd, PollFlags::POLLIN, Duration::ZERO),
            Ok(PollFlags::POLLIN)
        );
    }
    // The whole stream is what a save from STOP gives, and it resumes.
    go(&mut d, Stop);
    let mut dest = sim("");
    resume(&mut dest, &stream, 13).unwrap();
    assert_eq!(
        save_from_stop(&mut dest, 4096),
        save_from_stop(&mut d, 4096)
    );
    assert_eq!(stream, save_from_stop(&mut d, 4096));
}

#[test]
fn a_busy_device_reports_dirty_bytes_and_resumes_its_final_state() {
    let mut d = sim("dirty=2,precopy=16KiB");
    let fd = go(&mut d, PreCopy);
    let info = d.precopy_info(fd).unwrap();
    assert_eq!(info.initial_bytes, 80 + 4 * (24 + 4096));
    let mut stream = Vec::new();
    let mut buf = vec![0u8; 4096];
    while d.precopy_info(fd).unwrap().initial_bytes > 0 {
        let n = d.data_read(fd, &mut buf).unwrap();
        stream.extend_from_slice(&buf[..n]);
    }
    // Pages sent already keep being changed by the running device.
    let mut dirty = 0;
    for _ in 0..20 {
        dirty = dirty.max(d.precopy_info(fd).unwrap().dirty_bytes);
    }
    assert!(dirty > 0);
    let n = d.data_read(fd, &mut buf).unwrap();
    stream.extend_from_slice(&buf[..n]);
    go(&mut d, StopCopy);
    let (rest, end) = read_all(&mut d, fd, 1 << 16);
    assert_eq!(end, End::Eof);
    stream.extend_from_slice(&rest);
    go(&mut d, Stop);
    let mut dest = sim("dirty=2");
    resume(&mut dest, &stream, 1).unwrap();
    assert_eq!(
        save_from_stop(&mut dest, 1 << 20),
        save_from_stop(&mut d, 1 << 20)
    );
}

/// `reinit=2`: the second precopy info brings new initial data. Opted in,
/// it is REINIT with every page offered again and dirty_bytes 0; without
/// the opt-in the same data is dirty data. Either way the stream resumes
/// the device's final state.
#[test]
fn reinit_offers_new_initial_data_as_mlx5_does() {
    for opted_in in [true, false] {
        let mut d = sim("reinit=2,dirty=2,precopy=16KiB");
        if opted_in {
            let mut req = FeatureRequest::new(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, SET, vec![]);
            d.feature(&mut req).unwrap();
        }
        let fd = go(&mut d, PreCopy);
        let first = d.precopy_info(fd).unwrap();
        let mut stream = vec![0u8; 5000];
        let n = d.data_read(fd, &mut stream).unwrap();
        stream.truncate(n);
        let info = d.precopy_info(fd).unwrap();
        // 16 records of a 4 KiB page.
        let whole = 16 * (24 + 4096);
        if opted_in {
            assert_eq!(info.flags, VFIO_PRECOPY_INFO_REINIT);
            assert_eq!(info.dirty_bytes, 0);
            // Every page again, and the rest of the record being read.
            assert!(info.initial_bytes > whole && info.initial_bytes > first.initial_bytes);
        } else {
            assert_eq!(info.flags, 0);
            assert_eq!(info.initial_bytes, first.initial_bytes - n as u64);
            assert!(info.dirty_bytes > 0);
        }
        // Only the second query re-initialises; the new initial data is
        // read like the first (the busy device never runs dry).
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        loop {
            let now = d.precopy_info(fd).unwrap();
            assert_eq!(now.flags, 0);
            if now.initial_bytes == 0 {
                break;
            }
            let n = d.data_read(fd, &mut buf).unwrap();
            stream.extend_from_slice(&buf[..n]);
            read += n as u64;
        }
        assert!(read >= info.initial_bytes.min(whole));
        go(&mut d, StopCopy);
        let (rest, end) = read_all(&mut d, fd, 1 << 16);
        assert_eq!(end, End::Eof);
        stream.extend_from_slice(&rest);
        go(&mut d, Stop);
        let mut dest = sim("dirty=2");
        resume(&mut dest, &stream, 13).unwrap();
        assert_eq!(
            save_from_stop(&mut dest, 1 << 20),
            save_from_stop(&mut d, 1 << 20)
        );
    }
}

/// MIG_PRECOPY_INFOv2 needs PRE_COPY and lasts for one open of the device.
#[test]
fn precopy_info_v2_scope() {
    let mut d = sim("flags=stop_copy+p2p");
    assert_eq!(
        d.probe_feature(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, SET),
        Err(Errno::EINVAL)
    );
    let mut d = sim("");
    let mut req = FeatureRequest::new(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, SET, vec![]);
    d.feature(&mut req).unwrap();
    let fd = go(&mut d, PreCopy);
    let flags = |d: &mut Simulator, fd| {
        let mut arg = VfioPrecopyInfo {
            argsz: 24,
            flags: 6,
            ..Default::default()
        }
        .to_bytes();
        d.data_ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut arg)
            .unwrap();
        VfioPrecopyInfo::from_bytes(&arg).flags
    };
    assert_eq!(flags(&mut d, fd), 0);
    d.close_device().unwrap();
    d.reopen().unwrap();
    let fd = go(&mut d, PreCopy);
    assert_eq!(flags(&mut d, fd), 6);
}

#[test]
fn saves_from_stop_are_identical_in_any_chunking_and_as_long_as_announced() {
    let mut d = sim("dirty=3");
    for _ in 0..10 {
        d.get_state().unwrap();
    }
    let length = d.stop_copy_length().unwrap();
    let whole = save_from_stop(&mut d, 1 << 20);
    assert_eq!(whole.len() as u64, length);
    for chunk in [1, 7] {
        // STOP does not change the device, even with dirty=3 (V2-FSM-12).
        assert_eq!(save_from_stop(&mut d, chunk), whole, "chunk {chunk}");
    }
    for state in [Running, PreCopy, Stop] {
        go(&mut d, state);
        assert_eq!(d.stop_copy_length(), Ok(length), "{state}");
    }
    // A non-deterministic device embeds a nonce: saves differ, both resume.
    let mut nd = sim("deterministic=false");
    let (a, b) = (save_from_stop(&mut nd, 4096), save_from_stop(&mut nd, 4096));
    assert_ne!(a, b);
    assert_eq!(a.len(), b.len());
    for s in [a, b] {
        resume(&mut sim(""), &s, 4096).unwrap();
    }
}

#[test]
fn resume_in_any_chunking_then_save_reproduces_the_source() {
    let mut src = sim("dirty=2");
    for _ in 0..25 {
        src.get_state().unwrap();
    }
    let stream = save_from_stop(&mut src, 1 << 20);
    for chunk in [1, 13, stream.len()] {
        let mut dest = sim("seed=99");
        assert_ne!(save_from_stop(&mut dest, 1 << 20), stream);
        resume(&mut dest, &stream, chunk).unwrap();
        assert_eq!(dest.get_state(), Ok(Stop));
        assert_eq!(save_from_stop(&mut dest, 1 << 20), stream, "chunk {chunk}");
        // A reset does not undo the resume.
        dest.reset().unwrap();
        assert_eq!(save_from_stop(&mut dest, 4096), stream);
    }
}

#[test]
fn bad_streams_are_refused() {
    let stream = save_from_stop(&mut sim(""), 1 << 20);
    // Truncated: writes succeed, RESUMING -> STOP fails, still RESUMING.
    let mut d = sim("");
    assert_eq!(
        resume(&mut d, &stream[..stream.len() - 1], 4096),
        Err(Errno::EINVAL)
    );
    assert_eq!(d.get_state(), Ok(Resuming));
    assert_eq!(set(&mut d, Running).result, Err(Errno::EINVAL));
    assert_eq!(d.get_state(), Ok(Resuming));
    // VFIO_DEVICE_RESET aborts the resume (V2-RESUME-06).
    d.reset().unwrap();
    assert_eq!(d.get_state(), Ok(Running));
    go(&mut d, Stop);
    // Corrupt header: the write carrying it fails; so does leaving RESUMING.
    for at in [0, 9, 20, 50] {
        let mut bad = stream.clone();
        bad[at] ^= 0x10;
        let mut d = sim("");
        go(&mut d, Stop);
        let fd = go(&mut d, Resuming);
        assert_eq!(
            d.data_write(fd, &bad[..100]),
            Err(Errno::EINVAL),
            "byte {at}"
        );
        assert_eq!(d.data_write(fd, &bad[100..]), Err(Errno::EINVAL));
        assert_eq!(set(&mut d, Stop).result, Err(Errno::EINVAL));
    }
    // Corrupt page content or trailer.
    for at in [200, stream.len() - 1] {
        let mut bad = stream.clone();
        bad[at] ^= 1;
        assert_eq!(
            resume(&mut sim(""), &bad, 4096),
            Err(Errno::EINVAL),
            "byte {at}"
        );
    }
    // Another device type.
    let foreign = save_from_stop(&mut sim("type=sim-b"), 1 << 20);
    assert_eq!(resume(&mut sim(""), &foreign, 1 << 20), Err(Errno::EINVAL));
    // Another geometry.
    let bigger = save_from_stop(&mut sim("size=128KiB"), 1 << 20);
    assert_eq!(resume(&mut sim(""), &bigger, 1 << 20), Err(Errno::EINVAL));
    // Oversize: past the end, ENOSPC; the stream itself still resumes.
    let mut d = sim("");
    go(&mut d, Stop);
    let fd = go(&mut d, Resuming);
    let mut longer = stream.clone();
    longer.extend_from_slice(&[0; 16]);
    assert_eq!(d.data_write(fd, &longer), Ok(stream.len()));
    assert_eq!(
        d.data_write(fd, &longer[stream.len()..]),
        Err(Errno::ENOSPC)
    );
    assert_eq!(d.data_write(fd, &[0]), Err(Errno::ENOSPC));
    assert_eq!(set(&mut d, Stop).result, Ok(()));
}

/// Reads a save of a large state through in 1 MiB chunks; content is
/// generated on the fly, so memory stays at one page. Debug builds use
/// 64 MiB to keep the test fast; release builds save 4 GiB.
#[test]
fn large_states_stream_without_materialising() {
    let size = if cfg!(debug_assertions) {
        "64MiB"
    } else {
        "4GiB"
    };
    let mut d = sim(&format!("size={size}"));
    let length = d.stop_copy_length().unwrap();
    go(&mut d, Stop);
    let fd = go(&mut d, StopCopy);
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut last) = (0u64, Vec::new());
    loop {
        let n = d.data_read(fd, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        last = buf[..n].to_vec();
    }
    assert_eq!(total, length);
    assert_eq!(&last[last.len() - 24..last.len() - 20], b"END.");
    let mut core = d.core();
    let saver = core.saver_mut().unwrap();
    assert!(
        saver.buffer_capacity() <= 24 + 4096,
        "{}",
        saver.buffer_capacity()
    );
}

#[test]
fn data_fd_semantics() {
    let mut d = sim("");
    let fd = go(&mut d, PreCopy);
    assert_eq!(fd, FIRST_DATA_FD);
    let mut b = [0u8; 8];
    assert_eq!(d.data_pread(fd, &mut b, 0), Err(Errno::ESPIPE));
    assert_eq!(d.data_pwrite(fd, &b, 0), Err(Errno::ESPIPE));
    assert_eq!(d.data_cloexec(fd), Ok(true));
    assert_eq!(d.data_write(fd, &b), Err(Errno::EBADF));
    assert_eq!(
        d.data_ioctl(fd, VFIO_DEVICE_RESET, &mut [0; 24]),
        Err(Errno::ENOTTY)
    );
    let mut short = VfioPrecopyInfo {
        argsz: 16,
        ..Default::default()
    }
    .to_bytes();
    assert_eq!(
        d.data_ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut short),
        Err(Errno::EINVAL)
    );
    // Without PRECOPY_INFOv2 the input flags are echoed; with it, 0.
    let mut arg = VfioPrecopyInfo {
        argsz: 24,
        flags: 6,
        ..Default::default()
    }
    .to_bytes();
    d.data_ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut arg)
        .unwrap();
    assert_eq!(VfioPrecopyInfo::from_bytes(&arg).flags, 6);
    d.probe_feature(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, 0)
        .unwrap();
    let mut req = FeatureRequest::new(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2, SET, vec![]);
    d.feature(&mut req).unwrap();
    d.data_ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut arg)
        .unwrap();
    assert_eq!(VfioPrecopyInfo::from_bytes(&arg).flags, 0);
    for bad in [999, -1] {
        assert_eq!(d.data_read(bad, &mut b), Err(Errno::EBADF));
        assert_eq!(
            d.data_poll(bad, PollFlags::POLLIN, Duration::ZERO),
            Err(Errno::EBADF)
        );
        assert_eq!(d.data_cloexec(bad), Err(Errno::EBADF));
        assert_eq!(d.data_close(bad), Err(Errno::EBADF));
    }
    // Leaving the saving group ends the session: ENODEV, poll readable.
    go(&mut d, Running);
    assert_eq!(d.data_read(fd, &mut b), Err(Errno::ENODEV));
    assert!(d
        .data_poll(fd, PollFlags::POLLIN, Duration::ZERO)
        .unwrap()
        .contains(PollFlags::POLLIN));
    assert_eq!(d.precopy_info(fd).err(), Some(Errno::EINVAL));
    // Numbers are never reused; a closed fd is gone.
    d.data_close(fd).unwrap();
    assert_eq!(d.data_read(fd, &mut b), Err(Errno::EBADF));
    go(&mut d, Stop);
    let rfd = go(&mut d, Resuming);
    assert_eq!(rfd, FIRST_DATA_FD + 1);
    assert_eq!(d.data_read(rfd, &mut b), Err(Errno::EBADF));
    assert_eq!(
        d.data_ioctl(rfd, VFIO_MIG_GET_PRECOPY_INFO, &mut arg),
        Err(Errno::ENOTTY)
    );
    assert_eq!(
        d.data_poll(rfd, PollFlags::POLLOUT, Duration::ZERO),
        Ok(PollFlags::POLLOUT)
    );
    assert_eq!(d.data_pwrite(rfd, &b, 0), Err(Errno::ESPIPE));
    // A user close does not end the session: RESUMING -> STOP still checks it.
    d.data_close(rfd).unwrap();
    assert_eq!(set(&mut d, Stop).result, Err(Errno::EINVAL));
    // A poll that finds nothing waits for its timeout.
    d.reset().unwrap();
    let fd = go(&mut d, PreCopy);
    read_all(&mut d, fd, 1 << 20);
    let start = Instant::now();
    assert_eq!(
        d.data_poll(fd, PollFlags::POLLIN, Duration::from_millis(30)),
        Ok(PollFlags::empty())
    );
    assert!(start.elapsed() >= Duration::from_millis(30));
}

#[test]
fn reset_and_close_end_sessions() {
    let stream = save_from_stop(&mut sim(""), 1 << 20);
    for state in [
        Stop, Running, RunningP2p, PreCopy, PreCopyP2p, StopCopy, Resuming,
    ] {
        let (mut d, fd) = device_in("", state, &stream);
        d.reset().unwrap();
        assert_eq!(d.get_state_raw(), Ok((Running.raw(), -1)), "{state}");
        if fd >= 0 {
            let mut b = [0u8; 4];
            let r = if state == Resuming {
                d.data_write(fd, &b)
            } else {
                d.data_read(fd, &mut b)
            };
            assert_eq!(r, Err(Errno::ENODEV), "{state}");
        }
    }
    let mut d = sim("");
    let fd = go(&mut d, PreCopy);
    d.close_device().unwrap();
    assert_eq!(d.close_device(), Err(Errno::EBADF));
    assert_eq!(d.get_state().err(), Some(Errno::EBADF));
    assert_eq!(d.reset(), Err(Errno::EBADF));
    assert_eq!(d.device_info().err(), Some(Errno::EBADF));
    assert_eq!(d.data_read(fd, &mut [0; 4]), Err(Errno::ENODEV));
    d.reopen().unwrap();
    assert_eq!(d.reopen(), Err(Errno::EBUSY));
    assert_eq!(d.get_state(), Ok(Running));
    assert_eq!(d.data_read(fd, &mut [0; 4]), Err(Errno::ENODEV));
    assert_eq!(go(&mut d, PreCopy), FIRST_DATA_FD + 1);
}

/// START with a 4096-byte hint; the page size the device selected.
fn logging_start(d: &mut Simulator, ranges: &[(u64, u64)]) -> Result<u64, Errno> {
    let control = VfioDeviceFeatureDmaLoggingControl {
        page_size: 4096,
        num_ranges: ranges.len() as u32,
        ..Default::default()
    };
    let mut req = FeatureRequest::new(
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
        SET,
        control.to_bytes(),
    );
    req.ranges = ranges
        .iter()
        .map(|&(iova, length)| VfioDeviceFeatureDmaLoggingRange { iova, length })
        .collect();
    d.feature(&mut req)
        .map(|()| VfioDeviceFeatureDmaLoggingControl::from_bytes(&req.data).page_size)
}

fn logging_report(
    d: &mut Simulator,
    iova: u64,
    length: u64,
    page_size: u64,
) -> Result<Vec<u64>, Errno> {
    let report = VfioDeviceFeatureDmaLoggingReport {
        iova,
        length,
        page_size,
        bitmap: 0,
    };
    let mut req = FeatureRequest::new(
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
        GET,
        report.to_bytes(),
    );
    req.bitmap = vec![0; 4];
    d.feature(&mut req).map(|()| req.bitmap)
}

#[test]
fn dma_logging() {
    let mut d = sim("");
    let stop = |d: &mut Simulator| {
        d.feature(&mut FeatureRequest::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
            SET,
            vec![],
        ))
    };
    assert_eq!(stop(&mut d), Ok(()));
    assert_eq!(logging_report(&mut d, 0, 1 << 20, 4096), Err(Errno::EINVAL));
    assert_eq!(logging_start(&mut d, &[]), Err(Errno::EINVAL));
    assert_eq!(
        logging_start(&mut d, &[(0x1000, 0x800)]),
        Err(Errno::EINVAL)
    );
    logging_start(&mut d, &[(0x100000, 0x40000)]).unwrap();
    assert_eq!(
        logging_start(&mut d, &[(0x100000, 0x40000)]),
        Err(Errno::EINVAL)
    );
    for bad in [0, 1000, 4097, 6000] {
        assert_eq!(
            logging_report(&mut d, 0x100000, 0x40000, bad),
            Err(Errno::EINVAL),
            "{bad}"
        );
    }
    assert_eq!(
        logging_report(&mut d, u64::MAX - 10, 0x1000, 4096),
        Err(Errno::EOVERFLOW)
    );
    // The running device writes pages; the report shows them once.
    let first = logging_report(&mut d, 0x100000, 0x40000, 4096).unwrap();
    assert!(first.iter().any(|w| *w != 0));
    // Stopped, the device does no DMA: a second report is clean.
    go(&mut d, Stop);
    logging_report(&mut d, 0x100000, 0x40000, 4096).unwrap();
    assert_eq!(
        logging_report(&mut d, 0x100000, 0x40000, 4096).unwrap(),
        vec![0; 4]
    );
    // Reset stops logging.
    d.reset().unwrap();
    assert_eq!(
        logging_report(&mut d, 0x100000, 0x40000, 4096),
        Err(Errno::EINVAL)
    );
    logging_start(&mut d, &[(0, 0x1000)]).unwrap();
    stop(&mut d).unwrap();
    assert_eq!(logging_report(&mut d, 0, 0x1000, 4096), Err(Errno::EINVAL));
}

#[test]
fn device_and_region_info() {
    let mut d = sim("v2");
    let info = d.device_info().unwrap();
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    let mut short = vec![0u8; 24];
    put_u32(&mut short, 0, 8);
    assert_eq!(d.device_info_raw(&mut short), Err(Errno::EINVAL));
    assert_eq!(d.find_migration_region(), Ok(None));
    let config = d.region_info(VFIO_PCI_CONFIG_REGION_INDEX).unwrap();
    assert_eq!((config.info.size, config.info.offset), (256, 7 << 40));
    let mut id = [0u8; 4];
    d.region_read(7 << 40, &mut id).unwrap();
    assert_eq!(id, [0x36, 0x1b, 0x00, 0x01]);
    assert_eq!(d.region_read((7 << 40) + 254, &mut id), Err(Errno::EINVAL));
    assert_eq!(d.region_write(7 << 40, &id), Ok(4));
    assert_eq!(d.region_info(0).unwrap().info.size, 0);
    assert_eq!(d.region_info(8).err(), Some(Errno::EINVAL));
    assert_eq!(d.region_info(9).err(), Some(Errno::EINVAL));
    assert_eq!(d.region_read(9 << 40, &mut id), Err(Errno::EINVAL));

    let mut d = sim("v1");
    assert_eq!(d.device_info().unwrap().num_regions, 10);
    // A buffer too small for the capability: argsz grows, CAPS set, no chain.
    let mut buf = VfioRegionInfo {
        argsz: 32,
        index: 9,
        ..Default::default()
    }
    .to_bytes();
    d.region_info_raw(&mut buf).unwrap();
    let info = VfioRegionInfo::from_bytes(&buf);
    assert_eq!((info.argsz, info.cap_offset), (48, 0));
    assert_ne!(info.flags & VFIO_REGION_INFO_FLAG_CAPS, 0);
    let region = d.find_migration_region().unwrap().unwrap();
    assert_eq!(region.info.index, 9);
    assert_eq!(region.type_cap(), Some((3, 1)));
    assert_eq!(region.info.size, 4096 + 65536);
    assert_eq!(
        region.info.flags,
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_CAPS
    );
    let mut buf = vec![0u8; 8];
    assert_eq!(d.region_info_raw(&mut buf), Err(Errno::EINVAL));
}

#[test]
fn fd_numbers_are_never_reused() {
    let mut d = sim("");
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        for s in [PreCopy, StopCopy] {
            let fd = go(&mut d, s);
            if fd >= 0 {
                assert!(seen.insert(fd));
                d.data_close(fd).unwrap();
            }
        }
        go(&mut d, Stop);
        assert!(seen.insert(go(&mut d, Resuming)));
        d.reset().unwrap();
    }
    assert_eq!(seen.len(), 10);
}
