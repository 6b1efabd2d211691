//! The wire format of `vfio-migtest migrate` / `receive`: a live migration
//! stream between two hosts, framed so that either side can tell a peer of
//! another format version or for another device before it touches its own
//! device, and a damaged frame before its bytes reach the driver.
//!
//! Every frame is a 24-byte header and a payload, little-endian:
//!
//! ```text
//! offset  size  field
//!  0      1     kind (below)
//!  1      1     phase of a DATA frame: 1 PRE_COPY, 2 STOP_COPY; else 0
//!  2      2     reserved, 0
//!  4      4     payload length (at most 1 GiB + 64 KiB)
//!  8      8     XXH64 (seed 0) of the payload
//! 16      8     XXH64 of header bytes 0..16
//! ```
//!
//! | kind | name | from | payload |
//! |---|---|---|---|
//! | 1 | HELLO | both, first | magic `VFMTWIRE`, format version u32 (1), then a save-file header ([`crate::savefile`]) describing the sender's device: tool version, driver, device type, kernel release, host, device, MIGRATION flags (stream length and checksum 0) |
//! | 2 | REFUSE | either, instead of going on | why, UTF-8 |
//! | 3 | START | source | none: both HELLOs were accepted |
//! | 4 | READY | destination | its device is in RESUMING; 1 byte: 1 when it saves its device again before RUNNING (the source then waits for DONE until its deadline, not its idle timeout) |
//! | 5 | DATA | source | a piece of the stream, as read from the data fd |
//! | 6 | SWITCH | source | precopy iterations u64, precopy bytes u64: the source left PRE_COPY for STOP_COPY |
//! | 7 | END | source | stream length u64, XXH64 of the whole stream u64 |
//! | 8 | DONE | destination | none: RESUMING -> STOP -> RUNNING succeeded |
//! | 9 | ABORT | either | why, UTF-8: a failure after the devices were touched |
//! | 10 | SUMMARY | source | downtime in ns u64: from the source leaving RUNNING to DONE |
//!
//! The conversation: HELLO both ways (the destination answers the source's
//! HELLO with its own, or with REFUSE); START; READY; DATA (PRE_COPY)...;
//! SWITCH; DATA (STOP_COPY)...; END; DONE; SUMMARY. The first 8 bytes of a
//! HELLO payload and the frame header are the same in every version, so a
//! reader of any version can refuse another one by name.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};

use crate::savefile::{xxh64, SaveFileError, SaveHeader, Xxh64};
use crate::uapi::{get_u32, get_u64};

pub const MAGIC: [u8; 8] = *b"VFMTWIRE";
pub const VERSION: u32 = 1;
pub const FRAME_HEADER_LEN: usize = 24;
/// The largest payload: a 1 GiB chunk plus room for control frames.
pub const MAX_PAYLOAD: usize = (1 << 30) + (64 << 10);

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Refuse = 2,
    Start = 3,
    Ready = 4,
    Data = 5,
    Switch = 6,
    End = 7,
    Done = 8,
    Abort = 9,
    Summary = 10,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Refuse,
            3 => Kind::Start,
            4 => Kind::Ready,
            5 => Kind::Data,
            6 => Kind::Switch,
            7 => Kind::End,
            8 => Kind::Done,
            9 => Kind::Abort,
            10 => Kind::Summary,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "HELLO",
            Kind::Refuse => "REFUSE",
            Kind::Start => "START",
            Kind::Ready => "READY",
            Kind::Data => "DATA",
            Kind::Switch => "SWITCH",
            Kind::End => "END",
            Kind::Done => "DONE",
            Kind::Abort => "ABORT",
            Kind::Summary => "SUMMARY",
        }
    }
}

/// Which part of the stream a DATA frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    None = 0,
    PreCopy = 1,
    StopCopy = 2,
}

/// Why a peer's bytes cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("no data from the peer for {0}")]
    Silent(String),
    #[error("damaged frame: {0}")]
    Damaged(String),
    #[error("the peer is not vfio-migtest (no VFMTWIRE greeting)")]
    NotAPeer,
    #[error("the peer speaks wire format version {0}; this vfio-migtest speaks version {VERSION}")]
    Version(u32),
    #[error("the peer's HELLO: {0}")]
    Hello(SaveFileError),
    #[error("connection: {0}")]
    Io(io::Error),
}

/// One frame as received; its payload borrows the reader's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub phase: Phase,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.payload).into_owned()
    }
}

/// The 24-byte header of a frame with `payload`.
pub fn frame_header(kind: Kind, phase: Phase, payload: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0] = kind as u8;
    h[1] = phase as u8;
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&xxh64(payload).to_le_bytes());
    let check = xxh64(&h[..16]);
    h[16..24].copy_from_slice(&check.to_le_bytes());
    h
}

/// Writes one frame.
pub fn send(
    w: &mut (impl Write + ?Sized),
    kind: Kind,
    phase: Phase,
    payload: &[u8],
) -> io::Result<()> {
    w.write_all(&frame_header(kind, phase, payload))?;
    w.write_all(payload)?;
    w.flush()
}

fn io_error(e: io::Error, silent_for: &str) -> WireError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            WireError::Silent(silent_for.to_string())
        }
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => WireError::Closed,
        _ => WireError::Io(e),
    }
}

/// Reads one frame into `buf` (reused between frames, grown as needed,
/// never cleared); `silent_for` names the read timeout in a message. Every
/// header and payload is checked before it is returned.
pub fn recv<'a>(
    r: &mut (impl Read + ?Sized),
    buf: &'a mut Vec<u8>,
    silent_for: &str,
) -> Result<Frame<'a>, WireError> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut h).map_err(|e| io_error(e, silent_for))?;
    if xxh64(&h[..16]) != get_u64(&h, 16) {
        return Err(WireError::Damaged(
            "the frame header checksum does not match".into(),
        ));
    }
    let kind = Kind::from_u8(h[0])
        .ok_or_else(|| WireError::Damaged(format!("unknown frame kind {}", h[0])))?;
    let phase = match h[1] {
        0 => Phase::None,
        1 => Phase::PreCopy,
        2 => Phase::StopCopy,
        p => return Err(WireError::Damaged(format!("unknown phase {p}"))),
    };
    let len = get_u32(&h, 4) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::Damaged(format!(
            "a {len}-byte payload is too long"
        )));
    }
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let payload = &mut buf[..len];
    r.read_exact(payload).map_err(|e| io_error(e, silent_for))?;
    if xxh64(payload) != get_u64(&h, 8) {
        return Err(WireError::Damaged(format!(
            "the checksum of a {len}-byte {} payload does not match: the data was changed on the way",
            kind.name()
        )));
    }
    Ok(Frame {
        kind,
        phase,
        payload,
    })
}

/// A HELLO payload describing the sender's device.
pub fn hello(device: &SaveHeader) -> Result<Vec<u8>, SaveFileError> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&device.encode()?);
    Ok(b)
}

/// Reads a HELLO payload: the peer's device, or why it cannot be talked to.
pub fn parse_hello(payload: &[u8]) -> Result<SaveHeader, WireError> {
    if payload.len() < 12 || payload[..8] != MAGIC {
        return Err(WireError::NotAPeer);
    }
    let version = get_u32(payload, 8);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let (header, _) = SaveHeader::read_from(&mut &payload[12..]).map_err(WireError::Hello)?;
    Ok(header)
}

/// Two u64s, the payload of SWITCH and END.
pub fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&a.to_le_bytes());
    p[8..].copy_from_slice(&b.to_le_bytes());
    p
}

/// The two u64s of a SWITCH or END payload.
pub fn parse_pair(frame: &Frame) -> Result<(u64, u64), WireError> {
    if frame.payload.len() != 16 {
        return Err(WireError::Damaged(format!(
            "a {} payload of {} bytes (16 expected)",
            frame.kind.name(),
            frame.payload.len()
        )));
    }
    Ok((get_u64(frame.payload, 0), get_u64(frame.payload, 8)))
}

/// The running checksum of the stream, as END carries it.
pub fn stream_hash() -> Xxh64 {
    Xxh64::new(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> SaveHeader {
        SaveHeader {
            tool_version: "0.1.0".into(),
            driver: "sim".into(),
            device_type: "sim-a".into(),
            kernel_release: "6.12".into(),
            host: "src".into(),
            device: "sim".into(),
            migration_flags: 5,
            ..SaveHeader::default()
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut wire = Vec::new();
        send(&mut wire, Kind::Data, Phase::PreCopy, b"abc").unwrap();
        send(&mut wire, Kind::End, Phase::None, &pair(3, 7)).unwrap();
        send(&mut wire, Kind::Start, Phase::None, b"").unwrap();
        let mut r = &wire[..];
        let mut buf = Vec::new();
        let f = recv(&mut r, &mut buf, "1s").unwrap();
        assert_eq!(
            (f.kind, f.phase, f.payload),
            (Kind::Data, Phase::PreCopy, &b"abc"[..])
        );
        let f = recv(&mut r, &mut buf, "1s").unwrap();
        assert_eq!(parse_pair(&f).unwrap(), (3, 7));
        assert_eq!(recv(&mut r, &mut buf, "1s").unwrap().kind, Kind::Start);
        assert!(matches!(
            recv(&mut r, &mut buf, "1s"),
            Err(WireError::Closed)
        ));
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let mut wire = Vec::new();
        send(&mut wire, Kind::Data, Phase::StopCopy, &[7u8; 100]).unwrap();
        for at in 0..wire.len() {
            let mut w = wire.clone();
            w[at] ^= 0x10;
            let e = recv(&mut &w[..], &mut Vec::new(), "1s").unwrap_err();
            assert!(matches!(e, WireError::Damaged(_)), "byte {at}: {e}");
            if at >= FRAME_HEADER_LEN {
                assert!(
                    e.to_string()
                        .contains("checksum of a 100-byte DATA payload"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn hello_carries_the_device_and_refuses_other_versions() {
        let h = hello(&device()).unwrap();
        assert_eq!(parse_hello(&h).unwrap(), device());
        let mut other = h.clone();
        other[8] = 2;
        assert_eq!(
            parse_hello(&other).unwrap_err().to_string(),
            "the peer speaks wire format version 2; this vfio-migtest speaks version 1"
        );
        assert!(matches!(
            parse_hello(b"GET / HTTP/1.1"),
            Err(WireError::NotAPeer)
        ));
        let mut damaged = h;
        let last = damaged.len() - 1;
        damaged[last - 8] ^= 1;
        assert!(matches!(parse_hello(&damaged), Err(WireError::Hello(_))));
    }

    #[test]
    fn an_overlong_length_is_refused_before_reading() {
        let mut h = frame_header(Kind::Data, Phase::PreCopy, b"");
        h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let check = xxh64(&h[..16]);
        h[16..24].copy_from_slice(&check.to_le_bytes());
        let e = recv(&mut &h[..], &mut Vec::new(), "1s").unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
    }
}
