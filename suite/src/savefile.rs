//! The save file of `vfio-migtest save` / `resume`: a small header that says
//! where a migration stream came from, then the raw stream exactly as the
//! source's data fd delivered it.
//!
//! Layout, little-endian:
//!
//! ```text
//! offset  size  field
//!  0      8     magic "VFMTSAVE"
//!  8      4     format version (1)
//! 12      4     header length H: the stream starts at byte H (a multiple of 8)
//! 16      8     stream length in bytes
//! 24      8     stream checksum: XXH64 (seed 0) of the stream bytes
//! 32      8     the source's VFIO_DEVICE_FEATURE_MIGRATION flags
//! 40      8     when the save finished, Unix seconds
//! 48      8     header checksum: XXH64 of bytes 0..H with these 8 bytes zero
//! 56      ...   six strings, each a u16 length and that many UTF-8 bytes:
//!               tool version, source driver, device type, kernel release,
//!               host name, source device; then zero padding up to H
//!  H      ...   the stream
//! ```
//!
//! A file is valid when the magic, the version and the header checksum
//! agree, its size is exactly H + stream length, and the stream hashes to
//! the stream checksum. A reader refuses versions it does not know.
//!
//! A live migration (`migrate` / `receive`) sends the same header fields in
//! its HELLO frame; its framing is [`crate::wire`].
#![forbid(unsafe_code)]

use std::io::{self, Read};

use crate::uapi::{get_u32, get_u64};

pub const MAGIC: [u8; 8] = *b"VFMTSAVE";
pub const VERSION: u32 = 1;
/// The fixed part of the header, before the strings.
const FIXED_LEN: usize = 56;
const CHECKSUM_AT: usize = 48;
/// A header never needs more than this (six short strings); a larger
/// header length means a damaged file.
pub const MAX_HEADER_LEN: usize = 64 << 10;
/// The longest string a header holds.
const MAX_STRING: usize = 4096;

/// Why a save file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SaveFileError {
    #[error("not a vfio-migtest save file (no VFMTSAVE magic)")]
    NotASaveFile,
    #[error("save file format version {0}; this vfio-migtest reads version {VERSION}")]
    Version(u32),
    #[error("damaged save file: {0}")]
    Damaged(String),
    #[error("{what} is {len} bytes; at most {MAX_STRING} fit in a save file header")]
    TooLong { what: &'static str, len: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where a saved stream came from, and what it must hash to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveHeader {
    pub tool_version: String,
    /// The source's driver (`mlx5_vfio_pci`, `mtty`, `sim`); empty if unknown.
    pub driver: String,
    /// The source's device type (PCI `vendor:device`, mdev type, the
    /// simulator's `type=`); empty if unknown.
    pub device_type: String,
    pub kernel_release: String,
    pub host: String,
    /// The source device as the kernel names it (BDF, mdev UUID) or the spec.
    pub device: String,
    pub migration_flags: u64,
    pub saved_at: u64,
    pub stream_len: u64,
    pub stream_checksum: u64,
}

impl SaveHeader {
    fn strings(&self) -> [(&'static str, &str); 6] {
        [
            ("the tool version", &self.tool_version),
            ("the driver name", &self.driver),
            ("the device type", &self.device_type),
            ("the kernel release", &self.kernel_release),
            ("the host name", &self.host),
            ("the device name", &self.device),
        ]
    }

    /// The encoded header; its length depends on the strings only, so a
    /// placeholder written before the stream is as long as the final one.
    pub fn encode(&self) -> Result<Vec<u8>, SaveFileError> {
        let mut b = vec![0u8; FIXED_LEN];
        for (what, s) in self.strings() {
            if s.len() > MAX_STRING {
                return Err(SaveFileError::TooLong { what, len: s.len() });
            }
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.resize(b.len().next_multiple_of(8), 0);
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let len = b.len() as u32;
        b[12..16].copy_from_slice(&len.to_le_bytes());
        b[16..24].copy_from_slice(&self.stream_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.stream_checksum.to_le_bytes());
        b[32..40].copy_from_slice(&self.migration_flags.to_le_bytes());
        b[40..48].copy_from_slice(&self.saved_at.to_le_bytes());
        let sum = xxh64(&b);
        b[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
        Ok(b)
    }

    /// Reads and checks the header at the start of `r`; returns it and its
    /// length (where the stream starts).
    pub fn read_from(r: &mut impl Read) -> Result<(SaveHeader, u64), SaveFileError> {
        let mut fixed = [0u8; FIXED_LEN];
        let mut got = 0;
        while got < FIXED_LEN {
            match r.read(&mut fixed[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if got < MAGIC.len() || fixed[0..8] != MAGIC {
            return Err(SaveFileError::NotASaveFile);
        }
        if got < FIXED_LEN {
            return Err(SaveFileError::Damaged(
                "the file is shorter than a header".into(),
            ));
        }
        let version = get_u32(&fixed, 8);
        if version != VERSION {
            return Err(SaveFileError::Version(version));
        }
        let len = get_u32(&fixed, 12) as usize;
        if !(FIXED_LEN..=MAX_HEADER_LEN).contains(&len) || len & 7 != 0 {
            return Err(SaveFileError::Damaged(format!(
                "header length {len} is impossible"
            )));
        }
        let mut b = fixed.to_vec();
        b.resize(len, 0);
        read_exact_or(r, &mut b[FIXED_LEN..], "cut inside its header")?;
        let stored = get_u64(&b, CHECKSUM_AT);
        b[CHECKSUM_AT..CHECKSUM_AT + 8].fill(0);
        if xxh64(&b) != stored {
            return Err(SaveFileError::Damaged(
                "the header checksum does not match".into(),
            ));
        }
        let mut at = FIXED_LEN;
        let mut next = || -> Result<String, SaveFileError> {
            let short = || SaveFileError::Damaged("header strings overrun the header".into());
            let n = b.get(at..at + 2).ok_or_else(short)?;
            let n = u16::from_le_bytes([n[0], n[1]]) as usize;
            let s = b.get(at + 2..at + 2 + n).ok_or_else(short)?;
            at += 2 + n;
            String::from_utf8(s.to_vec())
                .map_err(|_| SaveFileError::Damaged("a header string is not UTF-8".into()))
        };
        let header = SaveHeader {
            tool_version: next()?,
            driver: next()?,
            device_type: next()?,
            kernel_release: next()?,
            host: next()?,
            device: next()?,
            stream_len: get_u64(&b, 16),
            stream_checksum: get_u64(&b, 24),
            migration_flags: get_u64(&b, 32),
            saved_at: get_u64(&b, 40),
        };
        Ok((header, len as u64))
    }

    /// What differs between the source and a destination with this driver
    /// and device type; empty when the stream is meant for it.
    pub fn differences(&self, driver: Option<&str>, device_type: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        for (what, saved, here) in [
            ("driver", &self.driver, driver.unwrap_or("")),
            ("device type", &self.device_type, device_type.unwrap_or("")),
        ] {
            if saved != here {
                out.push(format!(
                    "{what}: the file was saved from {}, the destination is {}",
                    shown(saved),
                    shown(here)
                ));
            }
        }
        out
    }
}

/// A header string as messages show it: quoted, or `(unknown)` when empty.
pub(crate) fn shown(s: &str) -> String {
    if s.is_empty() {
        "(unknown)".into()
    } else {
        format!("`{s}`")
    }
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), SaveFileError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SaveFileError::Damaged(format!("the file is {what}")),
        _ => SaveFileError::Io(e),
    })
}

/// Reads the stream that follows a header to its end, checking its length
/// and checksum, in `buf_size` pieces (never the whole stream at once).
pub fn verify_stream(
    r: &mut impl Read,
    header: &SaveHeader,
    buf_size: usize,
) -> Result<(), SaveFileError> {
    let mut hash = Xxh64::new(0);
    let mut buf = vec![0u8; buf_size.max(1)];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hash.update(&buf[..n]);
        total += n as u64;
    }
    if total != header.stream_len {
        return Err(SaveFileError::Damaged(format!(
            "the header announces a {} byte stream, the file holds {total} bytes after the header",
            header.stream_len
        )));
    }
    let sum = hash.digest();
    if sum != header.stream_checksum {
        return Err(SaveFileError::Damaged(format!(
            "the stream checksum is {sum:#018x}, the header says {:#018x}",
            header.stream_checksum
        )));
    }
    Ok(())
}

/// XXH64 (seed 0) of `data`: a well-known checksum (`xxhsum -H1` prints
/// the same value for the bytes after the header), from a maintained crate
/// fast enough that hashing a multi-GiB stream costs little next to reading it.
pub fn xxh64(data: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(data, 0)
}

/// The streaming form of [`xxh64`], for streams too large to hold.
pub use xxhash_rust::xxh64::Xxh64;

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SaveHeader {
        SaveHeader {
            tool_version: "0.1.0".into(),
            driver: "mtty".into(),
            device_type: "mtty-2".into(),
            kernel_release: "6.12.0-1-amd64".into(),
            host: "src".into(),
            device: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into(),
            migration_flags: 7,
            saved_at: 1_700_000_000,
            stream_len: 3,
            stream_checksum: xxh64(b"abc"),
        }
    }

    /// Values from the reference implementation (`xxhsum -H1`).
    #[test]
    fn xxh64_matches_the_reference() {
        let long: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).chain(*b"xyz").collect();
        for (data, want) in [
            (&b""[..], 0xef46_db37_51d8_e999),
            (b"a", 0xd24e_c4f1_a98c_6e5b),
            (b"abc", 0x44bc_2cf5_ad77_0999),
            (
                b"Nobody inspects the spammish repetition",
                0xfbce_a83c_8a37_8bf1,
            ),
            (&[0u8; 100_000], 0x2c9f_d5b2_f34e_23db),
            (&long, 0xe146_cb31_b65b_c21a),
        ] {
            assert_eq!(xxh64(data), want, "{} bytes", data.len());
            // Any split into updates gives the same digest.
            for split in [1, 3, 31, 32, 33, 1000] {
                let mut h = Xxh64::new(0);
                data.chunks(split).for_each(|c| h.update(c));
                assert_eq!(h.digest(), want, "{} bytes in {split}s", data.len());
            }
        }
    }

    #[test]
    fn header_round_trips_and_its_length_depends_on_strings_only() {
        let h = header();
        let bytes = h.encode().unwrap();
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(&bytes[..8], b"VFMTSAVE");
        let mut other = h.clone();
        other.stream_len = u64::MAX;
        other.stream_checksum = 1;
        assert_eq!(other.encode().unwrap().len(), bytes.len());
        let mut file = bytes.clone();
        file.extend_from_slice(b"abc");
        let mut r = &file[..];
        let (back, len) = SaveHeader::read_from(&mut r).unwrap();
        assert_eq!(back, h);
        assert_eq!(len, bytes.len() as u64);
        verify_stream(&mut r, &back, 2).unwrap();
    }

    #[test]
    fn damaged_headers_are_refused() {
        let good = header().encode().unwrap();
        let read = |b: &[u8]| SaveHeader::read_from(&mut &b[..]).unwrap_err().to_string();
        assert!(read(b"#!/bin/sh\n").contains("not a vfio-migtest save file"));
        assert!(read(b"").contains("not a vfio-migtest save file"));
        assert!(read(&good[..20]).contains("shorter than a header"));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(read(&b).contains("not a vfio-migtest save file"));
        let mut b = good.clone();
        b[8] = 2;
        assert!(read(&b).contains("format version 2"), "{}", read(&b));
        // Any flipped byte past the version breaks the header checksum.
        for at in [12usize, 16, 33, 60, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x40;
            let e = read(&b);
            assert!(e.starts_with("damaged save file"), "byte {at}: {e}");
        }
        assert!(read(&good[..good.len() - 4]).contains("cut inside its header"));
    }

    #[test]
    fn streams_are_checked_for_length_and_checksum() {
        let h = header();
        let err = |s: &[u8]| {
            verify_stream(&mut &s[..], &h, 4096)
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"abd").contains("checksum"), "{}", err(b"abd"));
        assert!(err(b"ab").contains("holds 2 bytes"), "{}", err(b"ab"));
        assert!(err(b"abcd").contains("holds 4 bytes"), "{}", err(b"abcd"));
    }

    #[test]
    fn differences_name_what_differs() {
        let h = header();
        assert!(h.differences(Some("mtty"), Some("mtty-2")).is_empty());
        assert_eq!(
            h.differences(Some("mtty"), Some("mtty-1")),
            ["device type: the file was saved from `mtty-2`, the destination is `mtty-1`"]
        );
        assert_eq!(h.differences(None, Some("mtty-2")).len(), 1);
        assert!(h.differences(None, None)[0].contains("(unknown)"));
    }

    #[test]
    fn overlong_strings_are_refused() {
        let h = SaveHeader {
            host: "h".repeat(MAX_STRING + 1),
            ..header()
        };
        assert!(h.encode().unwrap_err().to_string().contains("host name"));
    }
}
