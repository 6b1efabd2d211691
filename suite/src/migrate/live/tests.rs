//! Live migrations between two simulators in two threads, over a socket
//! pair, with a man in the middle where the test needs one.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::migrate::{run, Failed, Origin, Report};
use crate::savefile::SaveHeader;

fn temp_path(p: &Path) -> io::Result<PathBuf> {
    Ok(p.with_extension("part"))
}

fn origin(host: &str) -> Origin {
    Origin {
        tool_version: "test".into(),
        kernel_release: "6.12".into(),
        host: host.into(),
        temp_path,
    }
}

fn opts(resave: Option<PathBuf>) -> LiveOptions {
    LiveOptions {
        chunk: 1 << 20,
        max_precopy: 8,
        downtime_limit: Duration::from_millis(300),
        // A stalled peer is what some tests are about; a healthy one
        // answers at once.
        idle: Duration::from_secs(2),
        resave,
    }
}

/// Sees the bytes from the source at an offset, may change them, and says
/// whether they go on (false: the connection is cut there).
type Middle = Box<dyn FnMut(u64, &mut [u8]) -> bool + Send>;

type Side = (Result<LiveSummary, Failed>, Vec<String>);

fn side(
    spec: &'static str,
    source: bool,
    mut link: UnixStream,
    resave: Option<PathBuf>,
) -> thread::JoinHandle<Side> {
    thread::spawn(move || {
        let mut lines = Vec::new();
        let mut report = |r: Report| {
            if let Report::Note(n) = r {
                lines.push(n);
            }
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let o = opts(resave);
        let host = if source { "src" } else { "dst" };
        let spec = crate::device::DeviceSpec::parse(spec).unwrap();
        let r = run(&spec, deadline, origin(host), &mut report, |job| {
            if source {
                job.migrate(&mut link, &o)
            } else {
                job.receive(&mut link, &o)
            }
        });
        (r, lines)
    })
}

/// Runs a source and a destination; `middle` sees the source-to-destination
/// bytes and decides what reaches the destination.
fn migrate(
    src: &'static str,
    dst: &'static str,
    resave: Option<(PathBuf, PathBuf)>,
    middle: Option<Middle>,
) -> (Side, Side) {
    let (a, b) = UnixStream::pair().unwrap();
    let (src_resave, dst_resave) = resave.unzip();
    let (s, d) = match middle {
        None => (
            side(src, true, a, src_resave),
            side(dst, false, b, dst_resave),
        ),
        Some(mut decide) => {
            let (c, mut to_dst) = UnixStream::pair().unwrap();
            let mut from_src = b;
            let mut back_from_dst = to_dst.try_clone().unwrap();
            let mut back_to_src = from_src.try_clone().unwrap();
            // Destination to source, untouched.
            thread::spawn(move || {
                let _ = io::copy(&mut back_from_dst, &mut back_to_src);
            });
            // Source to destination, through `decide`.
            thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                let mut at = 0u64;
                loop {
                    let n = match from_src.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !decide(at, &mut buf[..n]) {
                        // Cut: hold both ends open and silent.
                        thread::sleep(Duration::from_secs(30));
                        break;
                    }
                    at += n as u64;
                    if to_dst.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            (
                side(src, true, a, src_resave),
                side(dst, false, c, dst_resave),
            )
        }
    };
    (s.join().unwrap(), d.join().unwrap())
}

fn stream_of(path: &Path) -> (SaveHeader, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let (h, len) = SaveHeader::read_from(&mut &bytes[..]).unwrap();
    (h, bytes[len as usize..].to_vec())
}

fn failed(side: &Side) -> &Failed {
    side.0.as_ref().expect_err("the side failed")
}

/// 1 MiB of initial precopy data, then about 3 MiB in STOP_COPY.
const SRC: &str = "sim:size=4MiB,page=64KiB,precopy=1MiB,dirty=2,seed=9";

#[test]
fn a_clean_live_migration_moves_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("src.save"), dir.path().join("dst.save"));
    let (s, d) = migrate(SRC, SRC, Some((a.clone(), b.clone())), None);
    let s = s.0.unwrap_or_else(|(f, _)| panic!("source: {}", f.message));
    let d =
        d.0.unwrap_or_else(|(f, _)| panic!("destination: {}", f.message));
    assert!(s.precopy_iterations >= 1, "{s:?}");
    assert!(s.precopy_bytes > 0 && s.stop_copy_bytes > 0, "{s:?}");
    assert_eq!(
        (
            d.precopy_bytes,
            d.stop_copy_bytes,
            d.checksum,
            d.precopy_iterations
        ),
        (
            s.precopy_bytes,
            s.stop_copy_bytes,
            s.checksum,
            s.precopy_iterations
        )
    );
    assert!(s.downtime_ns.is_some());
    assert_eq!(d.downtime_ns, s.downtime_ns);
    assert_eq!((s.state.as_str(), d.state.as_str()), ("STOP", "RUNNING"));
    assert!(!s.switch_reason.is_empty());
    assert_eq!(d.peer, "sim on src");
    // The destination holds the state the source stopped with.
    let (ha, sa) = stream_of(&a);
    let (hb, sb) = stream_of(&b);
    assert_eq!((ha.host.as_str(), hb.host.as_str()), ("src", "dst"));
    assert!(sa == sb, "the re-saved streams differ");
}

#[test]
fn a_device_without_pre_copy_migrates_in_stop_copy_alone() {
    let spec = "sim:flags=stop_copy,size=1MiB";
    let (s, d) = migrate(spec, spec, None, None);
    let s = s.0.unwrap_or_else(|(f, _)| panic!("source: {}", f.message));
    assert!(d.0.is_ok());
    assert_eq!((s.precopy_iterations, s.precopy_bytes), (0, 0));
    assert!(
        s.switch_reason.contains("no PRE_COPY"),
        "{}",
        s.switch_reason
    );
}

#[test]
fn an_incompatible_destination_is_refused_before_either_device_is_touched() {
    let (s, d) = migrate(SRC, "sim:type=other,size=4MiB", None, None);
    for (side, peer) in [(&s, "destination"), (&d, "source")] {
        let (f, restored) = failed(side);
        assert_eq!(f.kind, Failure::Refused, "{}", f.message);
        assert!(restored.is_none(), "a device was touched: {}", f.message);
        assert!(f.message.contains("device type"), "{peer}: {}", f.message);
    }
    assert!(failed(&d)
        .0
        .message
        .starts_with("refused the source sim on src"));
    assert!(failed(&s)
        .0
        .message
        .starts_with("the destination refused the migration"));
}

#[test]
fn a_peer_of_another_format_version_is_refused_by_name() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let d = side(SRC, false, b, None);
    let mut hello = wire::hello(&SaveHeader::default()).unwrap();
    hello[8] = 9;
    wire::send(&mut a, Kind::Hello, Phase::None, &hello).unwrap();
    let mut buf = Vec::new();
    let frame = wire::recv(&mut a, &mut buf, "10s").unwrap();
    assert_eq!(frame.kind, Kind::Refuse);
    assert!(
        frame.text().contains("wire format version 9"),
        "{}",
        frame.text()
    );
    let d = d.join().unwrap();
    let (f, restored) = failed(&d);
    assert_eq!(f.kind, Failure::Refused);
    assert!(restored.is_none());
}

/// Past the HELLOs, inside the precopy data.
const MID_PRECOPY: u64 = 512 << 10;
/// Inside the STOP_COPY data.
const MID_STOP_COPY: u64 = 3 << 20;

#[test]
fn a_corrupted_chunk_is_caught_before_the_driver_sees_it() {
    let flip: Middle = Box::new(|at, data| {
        let end = at + data.len() as u64;
        if (at..end).contains(&MID_PRECOPY) {
            data[(MID_PRECOPY - at) as usize] ^= 0x01;
        }
        true
    });
    let (s, d) = migrate(SRC, SRC, None, Some(flip));
    let (f, restored) = failed(&d);
    assert_eq!(f.kind, Failure::Peer);
    assert!(f.message.contains("checksum"), "{}", f.message);
    assert_eq!(restored, &Some(Ok(())), "the destination is RUNNING again");
    let (f, restored) = failed(&s);
    assert_eq!(restored, &Some(Ok(())), "the source is RUNNING again");
    assert!(
        f.message.contains("checksum"),
        "the source says why: {}",
        f.message
    );
}

#[test]
fn a_cut_connection_fails_both_sides_and_resets_both_devices() {
    for cut_at in [MID_PRECOPY, MID_STOP_COPY] {
        let cut: Middle = Box::new(move |at, data| at + (data.len() as u64) < cut_at);
        let (s, d) = migrate(SRC, SRC, None, Some(cut));
        for (side, name) in [(&s, "source"), (&d, "destination")] {
            let (f, restored) = failed(side);
            assert_eq!(f.kind, Failure::Peer, "{name}: {}", f.message);
            assert_eq!(restored, &Some(Ok(())), "{name} at {cut_at}: {}", f.message);
        }
        assert!(
            failed(&d).0.message.contains("sent nothing for"),
            "{}",
            failed(&d).0.message
        );
    }
}

#[test]
fn a_source_that_goes_away_mid_stream_fails_the_destination() {
    let (mut a, b) = UnixStream::pair().unwrap();
    let d = side(SRC, false, b, None);
    let mut buf = Vec::new();
    let mine = SaveHeader {
        driver: "sim".into(),
        device_type: "sim-a".into(),
        device: "sim".into(),
        ..SaveHeader::default()
    };
    // The simulator's driver and type, as its own HELLO says.
    wire::send(
        &mut a,
        Kind::Hello,
        Phase::None,
        &wire::hello(&mine).unwrap(),
    )
    .unwrap();
    let frame = wire::recv(&mut a, &mut buf, "10s").unwrap();
    assert_eq!(frame.kind, Kind::Hello, "{}", frame.text());
    let theirs = wire::parse_hello(frame.payload).unwrap();
    assert_eq!(
        (theirs.driver.as_str(), theirs.device_type.as_str()),
        ("sim", "sim-a")
    );
    wire::send(&mut a, Kind::Start, Phase::None, b"").unwrap();
    assert_eq!(
        wire::recv(&mut a, &mut buf, "10s").unwrap().kind,
        Kind::Ready
    );
    // Gone after READY: the destination is in RESUMING.
    drop(a);
    let d = d.join().unwrap();
    let (f, restored) = failed(&d);
    assert_eq!(f.kind, Failure::Peer);
    assert!(f.message.contains("closed the connection"), "{}", f.message);
    assert_eq!(restored, &Some(Ok(())));
}
