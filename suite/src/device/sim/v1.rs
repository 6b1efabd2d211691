//! Migration protocol v1: the migration region (Linux 5.8 to 5.17).
//!
//! Layout: `struct vfio_device_migration_info` (32 bytes) at offset 0, a
//! gap, and the data section at [`DATA_OFFSET`] (`region=` bytes). Header
//! fields are accessed at their natural width and alignment only. Saving
//! follows the a-f sequence of the old `vfio.h`: reading `pending_bytes`
//! starts an iteration (and ends the previous one), reading `data_offset`
//! stages the next chunk, `data_size` tells its length. Resuming: the user
//! writes a chunk into the data section and then its length to
//! `data_size`; the chunk is consumed before that write returns. The stream
//! is the same as v2's.
#![forbid(unsafe_code)]

use super::config::Freeze;
use super::faults::Fault;
use super::stream::{Content, Loader, Phase, Saver};
use super::Streams;
use crate::model::v1::{expect_write, V1State, V1Write};
use crate::uapi::v1::{
    DATA_OFFSET as DATA_OFFSET_FIELD, DATA_SIZE, DEVICE_STATE, PENDING_BYTES, RESERVED, STATE_MASK,
};
use crate::uapi::Errno;

/// Where the data section starts inside the region.
pub const DATA_OFFSET: u64 = 4096;

struct Save {
    saver: Saver,
    /// The chunk staged by the last `data_offset` read of this iteration.
    staged: Option<Vec<u8>>,
}

struct Resume {
    loader: Loader,
    section: Vec<u8>,
    data_size: u64,
}

/// The migration region's state.
pub struct V1Region {
    state: u32,
    /// `freeze=pending`: _RUNNING was cleared but the device still runs
    /// until the next `pending_bytes` read.
    awaiting_freeze: bool,
    save: Option<Save>,
    resume: Option<Resume>,
    data_offset_reads: u64,
    chunk: u64,
    section: u64,
    freeze: Freeze,
}

impl V1Region {
    pub fn new(chunk: u64, section: u64, freeze: Freeze) -> V1Region {
        V1Region {
            state: V1State::RUNNING.0,
            awaiting_freeze: false,
            save: None,
            resume: None,
            data_offset_reads: 0,
            chunk,
            section,
            freeze,
        }
    }

    /// The region's size: header, gap and data section.
    pub fn size(&self) -> u64 {
        DATA_OFFSET + self.section
    }

    /// Device reset: back to _RUNNING, sessions dropped.
    pub fn reset(&mut self) {
        *self = V1Region::new(self.chunk, self.section, self.freeze);
    }

    /// Whether the device runs as far as v1 is concerned.
    pub fn running(&self) -> bool {
        V1State(self.state).is_running() || self.awaiting_freeze
    }

    pub fn page_dirtied(&mut self, index: u64) {
        if let Some(save) = &mut self.save {
            save.saver.page_dirtied(index);
        }
    }

    /// In stop-and-copy, the highest page the save has not sent yet.
    pub fn unsent_in_stop_and_copy(&self) -> Option<u64> {
        let save = self.save.as_ref()?;
        (V1State(self.state).bits() == V1State::STOP_AND_COPY.0)
            .then(|| save.saver.highest_unsent())
            .flatten()
    }

    pub fn read(
        &mut self,
        offset: u64,
        buf: &mut [u8],
        content: &Content,
        streams: &Streams,
    ) -> Result<usize, Errno> {
        let value: u64 = match (offset, buf.len()) {
            (DEVICE_STATE, 4) => u64::from(self.state),
            (RESERVED, 4) => 0,
            (PENDING_BYTES, 8) => self.pending_bytes(content, streams),
            (DATA_OFFSET_FIELD, 8) => self.data_offset(content, streams),
            (DATA_SIZE, 8) => match (&self.save, &self.resume) {
                (Some(save), _) => save.staged.as_ref().map_or(0, |s| s.len() as u64),
                (None, Some(resume)) => resume.data_size,
                (None, None) => 0,
            },
            _ => {
                let at = self.section_index(offset, buf.len())?;
                let source: &[u8] = match (&self.save, &self.resume) {
                    (Some(save), _) => save.staged.as_deref().unwrap_or(&[]),
                    (None, Some(resume)) => &resume.section,
                    (None, None) => &[],
                };
                for (i, byte) in buf.iter_mut().enumerate() {
                    *byte = source.get(at + i).copied().unwrap_or(0);
                }
                return Ok(buf.len());
            }
        };
        buf.copy_from_slice(&value.to_le_bytes()[..buf.len()]);
        Ok(buf.len())
    }

    pub fn write(
        &mut self,
        offset: u64,
        buf: &[u8],
        content: &mut Content,
        streams: &Streams,
    ) -> Result<usize, Errno> {
        match (offset, buf.len()) {
            (DEVICE_STATE, 4) => {
                let value = u32::from_le_bytes(buf.try_into().expect("4 bytes"));
                self.set_state(value, content, streams)?;
            }
            (RESERVED, 4) => {}
            (DATA_SIZE, 8) => {
                let value = u64::from_le_bytes(buf.try_into().expect("8 bytes"));
                self.consume(value)?;
            }
            _ if offset < DATA_OFFSET => return Err(Errno::EINVAL),
            _ => {
                let at = self.section_index(offset, buf.len())?;
                let resume = self.resume.as_mut().ok_or(Errno::EINVAL)?;
                resume.section[at..at + buf.len()].copy_from_slice(buf);
            }
        }
        Ok(buf.len())
    }

    /// The index into the data section of an access, if it fits there.
    fn section_index(&self, offset: u64, len: usize) -> Result<usize, Errno> {
        let end = offset.checked_add(len as u64).ok_or(Errno::EINVAL)?;
        if offset < DATA_OFFSET || end > DATA_OFFSET + self.section {
            return Err(Errno::EINVAL);
        }
        usize::try_from(offset - DATA_OFFSET).map_err(|_| Errno::EINVAL)
    }

    fn pending_bytes(&mut self, content: &Content, streams: &Streams) -> u64 {
        self.awaiting_freeze = false;
        let Some(save) = &mut self.save else {
            return 0;
        };
        // Reading pending_bytes after data_offset ends the iteration.
        save.staged = None;
        if streams.faults.has(Fault::V1PendingSideEffect) {
            let mut dropped = vec![0u8; self.chunk.min(self.section) as usize];
            save.saver.read(content, &mut dropped, false);
        }
        match save.saver.phase() {
            Phase::PreCopy => save.saver.initial_bytes() + save.saver.dirty_bytes(),
            Phase::StopCopy => match save.saver.remaining() {
                0 if streams.faults.has(Fault::V1PendingNeverZero) => {
                    save.saver.trailer().map_or(0, |t| t.len() as u64)
                }
                n => n,
            },
        }
    }

    fn data_offset(&mut self, content: &Content, streams: &Streams) -> u64 {
        self.data_offset_reads += 1;
        if let Some(save) = &mut self.save {
            if save.staged.is_none() {
                let cap = if streams.faults.has(Fault::V1DataSizeBeyondRegion) {
                    self.section + content.geometry.page_size
                } else {
                    self.chunk.min(self.section)
                };
                let mut chunk = vec![0u8; cap as usize];
                let n = save.saver.read(content, &mut chunk, false);
                chunk.truncate(n);
                if n == 0
                    && save.saver.phase() == Phase::StopCopy
                    && streams.faults.has(Fault::V1PendingNeverZero)
                {
                    chunk = save.saver.trailer().map(Vec::from).unwrap_or_default();
                }
                save.staged = Some(chunk);
            }
        }
        if streams.faults.has(Fault::V1DataOffsetUnstable) && self.data_offset_reads & 1 == 0 {
            DATA_OFFSET + 8
        } else {
            DATA_OFFSET
        }
    }

    /// A `data_size` write while resuming: feed the chunk to the loader.
    fn consume(&mut self, size: u64) -> Result<(), Errno> {
        let resume = self.resume.as_mut().ok_or(Errno::EINVAL)?;
        if size > self.section {
            return Err(Errno::EINVAL);
        }
        resume.data_size = size;
        let chunk = &resume.section[..size as usize];
        match resume.loader.write(chunk) {
            Ok(n) if n == chunk.len() => Ok(()),
            Ok(_) => Err(Errno::ENOSPC),
            Err(Errno::EINVAL) => {
                // The device failed to load the chunk: error state until reset.
                self.resume = None;
                self.state = (self.state & !STATE_MASK) | V1State::ERROR.0;
                Err(Errno::EINVAL)
            }
            Err(e) => Err(e),
        }
    }

    fn set_state(
        &mut self,
        value: u32,
        content: &mut Content,
        streams: &Streams,
    ) -> Result<(), Errno> {
        let faults = streams.faults;
        let cur = V1State(self.state);
        let new = V1State(value);
        match expect_write(cur, new) {
            V1Write::Accept => {}
            V1Write::RejectFromError if faults.has(Fault::V1ErrorLeftWithoutReset) => {}
            V1Write::RejectInvalid
                if !new.is_valid() && faults.has(Fault::V1InvalidStateAccepted) => {}
            V1Write::RejectFromError | V1Write::RejectInvalid => return Err(Errno::EINVAL),
        }
        let resuming = |s: V1State| s.bits() == V1State::RESUMING.0;
        if resuming(cur) && !resuming(new) {
            let resume = self.resume.take().ok_or(Errno::EINVAL)?;
            if !resume.loader.is_complete() {
                // Incomplete: the write fails and the device stays resuming.
                self.resume = Some(resume);
                return Err(Errno::EINVAL);
            }
            resume.loader.adopt(content);
        }
        if !new.is_saving() {
            self.save = None;
        }
        if resuming(new) && !resuming(cur) {
            self.resume = Some(Resume {
                loader: streams.loader(content),
                section: vec![0; self.section as usize],
                data_size: 0,
            });
        }
        if new.is_saving() {
            let phase = if new.is_running() {
                Phase::PreCopy
            } else {
                Phase::StopCopy
            };
            match &mut self.save {
                Some(save) => save.saver.set_phase(phase),
                None => {
                    self.save = Some(Save {
                        saver: streams.saver(content, phase),
                        staged: None,
                    })
                }
            }
        }
        if cur.is_running() && !new.is_running() && self.freeze == Freeze::Pending {
            self.awaiting_freeze = true;
        }
        if new.is_running() {
            self.awaiting_freeze = false;
        }
        self.state = value;
        Ok(())
    }
}
