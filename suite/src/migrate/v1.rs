//! `save` and `resume` of a device that speaks protocol v1 (the migration
//! region), for devices without migration v2.
//!
//! The v1 text asks the user to write the data "in the same order as
//! received and of the same transaction size at the source", so a v1 save
//! file keeps the source's chunks: its stream is, per chunk, a u64
//! (little-endian) length and the bytes. Its header's migration flags are
//! 0, which no v2 device has (STOP_COPY is mandatory): that is how resume
//! tells the two kinds of file apart.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use super::{fail, Fail, Failure, Job};
use crate::device::{DeviceExt, RegionInfo};
use crate::model::v1::V1State;
use crate::savefile::Xxh64;
use crate::uapi::v1 as f;
use crate::uapi::{errno_name, Errno};

/// The migration flags a v1 save file carries.
pub const V1_FILE_FLAGS: u64 = 0;

/// Bytes before each chunk in a v1 save file's stream.
const CHUNK_LEN_BYTES: u64 = 8;

/// The v1 migration region of a job's device.
pub struct Region {
    offset: u64,
    size: u64,
}

impl Region {
    pub fn of(info: &RegionInfo) -> Region {
        Region {
            offset: info.info.offset,
            size: info.info.size,
        }
    }
}

impl Job<'_> {
    /// The device's v1 migration region, if it has one.
    pub(super) fn v1_region(&mut self) -> Option<Region> {
        self.dev
            .find_migration_region()
            .ok()
            .flatten()
            .map(|r| Region::of(&r))
    }

    fn v1_read(&mut self, r: &Region, field: &str) -> Result<u64, Fail> {
        let (off, width) = f::field(field).expect("a header field");
        let mut b = [0u8; 8];
        match self.dev.region_read(r.offset + off, &mut b[..width]) {
            Ok(n) if n == width => Ok(u64::from_le_bytes(b)),
            Ok(n) => Err(driver(format!("reading {field} returned {n} bytes"))),
            Err(e) => Err(driver(format!(
                "reading {field} failed with {}",
                errno_name(e)
            ))),
        }
    }

    fn v1_write(&mut self, r: &Region, field: &str, value: u64) -> Result<(), Errno> {
        let (off, width) = f::field(field).expect("a header field");
        let bytes = value.to_le_bytes();
        match self.dev.region_write(r.offset + off, &bytes[..width]) {
            Ok(n) if n == width => Ok(()),
            Ok(_) => Err(Errno::EIO),
            Err(e) => Err(e),
        }
    }

    /// The v1 state, by name.
    pub(super) fn v1_state(&mut self, r: &Region) -> String {
        match self.v1_read(r, "device_state") {
            Ok(v) => V1State(v as u32).to_string(),
            Err(e) => format!("unknown ({})", e.message),
        }
    }

    /// Writes `device_state` keeping its reserved bits (V1-STATE-04).
    fn v1_set(&mut self, r: &Region, state: V1State) -> Result<(), Fail> {
        let from = V1State(self.v1_read(r, "device_state")? as u32);
        self.doing(format!("device_state {state} (from {from})"));
        self.touched = true;
        self.v1_write(r, "device_state", u64::from(from.with_bits_of(state).0))
            .map_err(|e| {
                let now = self.v1_state(r);
                driver(format!(
                    "writing device_state {state} from {from} failed with {}; it is now {now}",
                    errno_name(e)
                ))
            })
    }

    /// Stop-and-copy until `pending_bytes` reads 0, each chunk framed into
    /// `out`; then _STOP. Returns the state the device was in, the framed
    /// bytes written and their checksum.
    pub(super) fn v1_save_stream(
        &mut self,
        r: &Region,
        out: &mut dyn Write,
        file: &Path,
    ) -> Result<(String, u64, u64), Fail> {
        let file_err = |e: &dyn std::fmt::Display| {
            fail(
                Failure::File,
                format!("cannot write {}: {e}", file.display()),
            )
        };
        let mut hash = Xxh64::new(0);
        let from = self.v1_state(r);
        self.v1_set(r, V1State::STOP_AND_COPY)?;
        let mut total = 0u64;
        let mut chunks = 0u64;
        let mut buf = Vec::new();
        loop {
            let pending = self.v1_read(r, "pending_bytes")?;
            if pending == 0 {
                break;
            }
            if Instant::now() >= self.deadline {
                return Err(driver(format!(
                    "pending_bytes still {pending} after {chunks} chunks ({total} bytes) at the deadline: it must reach 0 (V1-SAVE-04)"
                )));
            }
            self.doing(format!("v1 chunk {chunks} after {total} bytes"));
            let data_offset = self.v1_read(r, "data_offset")?;
            let data_size = self.v1_read(r, "data_size")?;
            let fits = data_offset >= f::HEADER_SIZE
                && data_offset
                    .checked_add(data_size)
                    .is_some_and(|end| end <= r.size);
            if !fits || data_size == 0 {
                return Err(driver(format!(
                    "a chunk of {data_size} bytes at data_offset {data_offset} in a region of {} bytes: it must be non-empty and inside (V1-SAVE-03)",
                    r.size
                )));
            }
            buf.resize(
                usize::try_from(data_size).map_err(|_| driver("data_size too large".into()))?,
                0,
            );
            match self.dev.region_read(r.offset + data_offset, &mut buf) {
                Ok(n) if n == buf.len() => {}
                Ok(n) => {
                    return Err(driver(format!(
                        "reading a {data_size}-byte chunk returned {n} bytes"
                    )))
                }
                Err(e) => {
                    return Err(driver(format!(
                        "reading the data area failed with {}",
                        errno_name(e)
                    )))
                }
            }
            let len = data_size.to_le_bytes();
            for part in [&len[..], &buf] {
                out.write_all(part).map_err(|e| file_err(&e))?;
                hash.update(part);
            }
            total += CHUNK_LEN_BYTES + data_size;
            chunks += 1;
        }
        self.v1_set(r, V1State::STOP)?;
        Ok((from, total, hash.digest()))
    }

    /// _RESUMING, the framed chunks of `len` bytes from `input`, each
    /// written at `data_offset` and announced by a `data_size` write, then
    /// _STOP once they hash to `checksum`. Returns the chunks written.
    pub(super) fn v1_resume_stream(
        &mut self,
        r: &Region,
        input: &mut dyn Read,
        len: u64,
        checksum: u64,
        file: &Path,
    ) -> Result<u64, Fail> {
        let file_err = |e: &dyn std::fmt::Display| {
            fail(
                Failure::File,
                format!("cannot read {}: {e}", file.display()),
            )
        };
        let damaged = |done: u64, what: String| {
            fail(
                Failure::File,
                format!(
                    "{} holds a damaged v1 stream: {what} at byte {done} of {len}",
                    file.display()
                ),
            )
        };
        let mut hash = Xxh64::new(0);
        self.v1_set(r, V1State::STOP)?;
        self.v1_set(r, V1State::RESUMING)?;
        let mut done = 0u64;
        let mut chunks = 0u64;
        let mut buf = Vec::new();
        while done < len {
            if len - done < CHUNK_LEN_BYTES {
                return Err(damaged(done, "a cut chunk length".into()));
            }
            let mut size = [0u8; 8];
            input.read_exact(&mut size).map_err(|e| file_err(&e))?;
            hash.update(&size);
            let size = u64::from_le_bytes(size);
            if size == 0 || size > len - done - CHUNK_LEN_BYTES {
                return Err(damaged(done, format!("a chunk of {size} bytes")));
            }
            buf.resize(
                usize::try_from(size).map_err(|_| damaged(done, "a huge chunk".into()))?,
                0,
            );
            input.read_exact(&mut buf).map_err(|e| file_err(&e))?;
            hash.update(&buf);
            self.doing(format!("v1 chunk {chunks} at byte {done}"));
            let data_offset = self.v1_read(r, "data_offset")?;
            let fits = data_offset >= f::HEADER_SIZE
                && data_offset
                    .checked_add(size)
                    .is_some_and(|end| end <= r.size);
            if !fits {
                return Err(driver(format!(
                    "no room for a {size}-byte chunk at data_offset {data_offset} in a region of {} bytes (V1-RESUME-01)",
                    r.size
                )));
            }
            let rejected = |what: &str, e: Errno| {
                driver(format!(
                    "the driver rejected the stream: {what} of chunk {chunks} (at byte {done}) failed with {}",
                    errno_name(e)
                ))
            };
            match self.dev.region_write(r.offset + data_offset, &buf) {
                Ok(n) if n == buf.len() => {}
                Ok(_) => return Err(rejected("writing the data", Errno::EIO)),
                Err(e) => return Err(rejected("writing the data", e)),
            }
            self.v1_write(r, "data_size", size)
                .map_err(|e| rejected("the data_size write", e))?;
            done += CHUNK_LEN_BYTES + size;
            chunks += 1;
        }
        if hash.digest() != checksum {
            return Err(fail(
                Failure::File,
                format!("{} changed while it was resumed (its checksum no longer matches); the resume was abandoned", file.display()),
            ));
        }
        self.v1_set(r, V1State::STOP).map_err(|e| Fail {
            message: format!(
                "the driver rejected the stream: all {chunks} chunks were written, then {}",
                e.message
            ),
            ..e
        })?;
        Ok(chunks)
    }

    /// _RUNNING after a resume.
    pub(super) fn v1_run(&mut self, r: &Region) -> Result<(), Fail> {
        self.v1_set(r, V1State::RUNNING)
    }
}

fn driver(message: String) -> Fail {
    fail(Failure::Driver, message)
}
