//! The simulated device state and its migration stream.
//!
//! The state is `pages` pages of `page_size` bytes (the last one may be
//! short), each with a generation that the running device bumps. A page's
//! bytes are a pure function of (seed, index, generation) and are generated
//! when they are saved or checked, so a 4 GiB state costs a few bitmaps,
//! never 4 GiB.
//!
//! Stream layout, little-endian:
//!
//! ```text
//! header   80 bytes  magic "VFMTSIM\0", version u32 (1), flags u32 (bit 0: nonce
//!                    present), state_size u64, page_size u32, type_len u32,
//!                    seed u64, nonce u64, device type [u8; 32] (NUL padded)
//! page     24 bytes  tag "PAGE" u32, length u32, index u64, generation u64,
//!                    then `length` bytes of page content
//! trailer  24 bytes  tag "END." u32, reserved u32 (0), page records u64,
//!                    XXH64 (seed 0) of every byte before the checksum
//! ```
//!
//! A page may appear more than once (sent during PRE_COPY, then again after
//! the device changed it); the last record wins. A stream is complete when
//! the trailer arrived and every page was seen at least once.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use crate::savefile::Xxh64;
use crate::uapi::{get_u32, get_u64, Errno};

pub const HEADER_LEN: usize = 80;
pub const RECORD_HEADER_LEN: usize = 24;
pub const TRAILER_LEN: usize = 24;
const MAGIC: [u8; 8] = *b"VFMTSIM\0";
const VERSION: u32 = 1;
const FLAG_NONCE: u32 = 1;
const TAG_PAGE: u32 = u32::from_le_bytes(*b"PAGE");
const TAG_END: u32 = u32::from_le_bytes(*b"END.");
const TYPE_AT: usize = 48;
const TYPE_LEN: usize = HEADER_LEN - TYPE_AT;

/// The shape of a device state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub state_size: u64,
    pub page_size: u64,
}

impl Geometry {
    pub fn pages(self) -> u64 {
        self.state_size.div_ceil(self.page_size)
    }

    pub fn page_len(self, index: u64) -> u64 {
        (self.state_size - index * self.page_size).min(self.page_size)
    }

    fn record_len(self, index: u64) -> u64 {
        RECORD_HEADER_LEN as u64 + self.page_len(index)
    }

    /// Content bytes of pages `from..to`.
    fn bytes_in(self, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        (to * self.page_size).min(self.state_size) - from * self.page_size
    }

    /// Bytes of the page records of pages `from..to`.
    fn records_len(self, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        (to - from) * RECORD_HEADER_LEN as u64 + self.bytes_in(from, to)
    }

    /// The length of a stream saved in one STOP_COPY session from STOP.
    pub fn stream_len(self) -> u64 {
        (HEADER_LEN + TRAILER_LEN) as u64 + self.records_len(0, self.pages())
    }
}

/// The device's internal state: a seed and the pages' generations (only
/// the non-zero ones are stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub seed: u64,
    pub geometry: Geometry,
    generations: BTreeMap<u64, u64>,
}

impl Content {
    pub fn new(seed: u64, geometry: Geometry) -> Content {
        Content {
            seed,
            geometry,
            generations: BTreeMap::new(),
        }
    }

    pub fn generation(&self, index: u64) -> u64 {
        self.generations.get(&index).copied().unwrap_or(0)
    }

    /// The device wrote to the page.
    pub fn touch(&mut self, index: u64) {
        *self.generations.entry(index).or_insert(0) += 1;
    }

    fn set_generation(&mut self, index: u64, generation: u64) {
        if generation == 0 {
            self.generations.remove(&index);
        } else {
            self.generations.insert(index, generation);
        }
    }
}

/// The splitmix64 finalizer: a fast, well-mixed bijection on u64.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn page_key(seed: u64, index: u64, generation: u64) -> u64 {
    mix64(seed ^ mix64(index.wrapping_mul(GOLDEN) ^ generation.rotate_left(32)))
}

/// The content of page (seed, index, generation), eight bytes at a time
/// (a short last word is cut).
fn page_words(seed: u64, index: u64, generation: u64) -> impl Iterator<Item = [u8; 8]> {
    let key = page_key(seed, index, generation);
    (1u64..).map(move |i| mix64(key.wrapping_add(GOLDEN.wrapping_mul(i))).to_le_bytes())
}

/// Whether `bytes` is the content of page (seed, index, generation),
/// compared as it is generated (no copy of the page is made).
fn page_matches(seed: u64, index: u64, generation: u64, bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let mut expected = page_words(seed, index, generation);
    let mut diff = 0u64;
    for (chunk, word) in (&mut words).zip(&mut expected) {
        let got = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        diff |= got ^ u64::from_le_bytes(word);
    }
    let tail = words.remainder();
    diff == 0 && expected.next().is_some_and(|w| w[..tail.len()] == *tail)
}

/// The trailer checksum so far: XXH64 has no `Debug` of its own, and the
/// stream states that carry it are printed in test failures.
#[derive(Clone)]
struct Checksum(Xxh64);

impl std::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Checksum({:#018x})", self.0.digest())
    }
}

/// A fixed-size bit set over page indexes.
#[derive(Debug, Clone)]
struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    fn new(len: u64) -> Bitmap {
        Bitmap {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    fn get(&self, i: u64) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u64) {
        self.words[(i / 64) as usize] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: u64) {
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
    }

    /// Bits that exist in word `k` (the last word is partial).
    fn valid(&self, k: usize) -> u64 {
        let end = self.len - k as u64 * 64;
        if end >= 64 {
            !0
        } else {
            (1 << end) - 1
        }
    }

    /// The first index >= `from` whose bit is set in `word(k)`.
    fn find_from(&self, from: u64, word: impl Fn(usize) -> u64) -> Option<u64> {
        if from >= self.len {
            return None;
        }
        let first = (from / 64) as usize;
        for k in first..self.words.len() {
            let mut w = word(k) & self.valid(k);
            if k == first {
                w &= !0 << (from % 64);
            }
            if w != 0 {
                return Some(k as u64 * 64 + u64::from(w.trailing_zeros()));
            }
        }
        None
    }

    /// The first set index at or after `from`, wrapping around.
    fn find_set_wrapping(&self, from: u64) -> Option<u64> {
        let word = |k: usize| self.words[k];
        self.find_from(from, word)
            .or_else(|| self.find_from(0, word))
    }

    /// The highest clear index.
    fn last_clear(&self) -> Option<u64> {
        (0..self.words.len()).rev().find_map(|k| {
            let w = !self.words[k] & self.valid(k);
            (w != 0).then(|| k as u64 * 64 + 63 - u64::from(w.leading_zeros()))
        })
    }

    fn iter_set(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

/// What the stream header says about its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub device_type: String,
    pub geometry: Geometry,
    pub seed: u64,
    /// Present on non-deterministic devices: changes on every save.
    pub nonce: Option<u64>,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.nonce.is_some() { FLAG_NONCE } else { 0 };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.geometry.state_size.to_le_bytes());
        b[24..28].copy_from_slice(&(self.geometry.page_size as u32).to_le_bytes());
        let name = self.device_type.as_bytes();
        b[28..32].copy_from_slice(&(name.len() as u32).to_le_bytes());
        b[32..40].copy_from_slice(&self.seed.to_le_bytes());
        b[40..48].copy_from_slice(&self.nonce.unwrap_or(0).to_le_bytes());
        b[TYPE_AT..TYPE_AT + name.len()].copy_from_slice(name);
        b
    }

    /// Checks a received header against this (the destination's) one,
    /// except for the seed and nonce, which belong to the source; returns
    /// the source's seed.
    fn accept(&self, b: &[u8], check_type: bool) -> Result<u64, Errno> {
        let flags = get_u32(b, 12);
        let nonce = get_u64(b, 40);
        let type_len = get_u32(b, 28) as usize;
        let well_formed = b[..8] == MAGIC
            && get_u32(b, 8) == VERSION
            && flags & !FLAG_NONCE == 0
            && (flags & FLAG_NONCE != 0 || nonce == 0)
            && get_u64(b, 16) == self.geometry.state_size
            && u64::from(get_u32(b, 24)) == self.geometry.page_size
            && (1..=TYPE_LEN).contains(&type_len)
            && b[TYPE_AT + type_len..HEADER_LEN].iter().all(|&c| c == 0);
        if !well_formed {
            return Err(Errno::EINVAL);
        }
        if check_type && &b[TYPE_AT..TYPE_AT + type_len] != self.device_type.as_bytes() {
            return Err(Errno::EINVAL);
        }
        Ok(get_u64(b, 32))
    }
}

/// Whether the saver is in the precopy part of the stream or finishing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Offers the header, the initial pages, then pages changed since sent;
    /// runs dry when nothing is left (a temporary end).
    PreCopy,
    /// Offers every page not sent in its current generation, then the
    /// trailer; then the stream has ended.
    StopCopy,
}

/// What the record being read counts as in `vfio_precopy_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Initial,
    Dirty,
    Final,
}

/// Produces one stream, a record at a time, in O(page) memory.
#[derive(Debug, Clone)]
pub struct Saver {
    geometry: Geometry,
    header: [u8; HEADER_LEN],
    phase: Phase,
    header_sent: bool,
    precopy_pages: u64,
    initial_cursor: u64,
    scan_cursor: u64,
    dirty_cursor: u64,
    /// Pages sent at least once.
    sent: Bitmap,
    /// Sent pages changed since they were last sent.
    dirty: Bitmap,
    unsent_bytes: u64,
    dirty_bytes: u64,
    records: u64,
    hasher: Checksum,
    /// The record being read, and how far.
    buf: Vec<u8>,
    pos: usize,
    payload_at: usize,
    kind: Kind,
    trailer: Option<[u8; TRAILER_LEN]>,
    first_initial_bytes: u64,
    /// VFIO_MIG_GET_PRECOPY_INFO calls on this session in PRE_COPY.
    queries: u32,
}

impl Saver {
    /// A new session; `precopy` bytes of state are offered as initial
    /// precopy data.
    pub fn new(header: &Header, phase: Phase, precopy: u64) -> Saver {
        let geometry = header.geometry;
        let pages = geometry.pages();
        let mut saver = Saver {
            geometry,
            header: header.encode(),
            phase,
            header_sent: false,
            precopy_pages: precopy.div_ceil(geometry.page_size).min(pages),
            initial_cursor: 0,
            scan_cursor: 0,
            dirty_cursor: 0,
            sent: Bitmap::new(pages),
            dirty: Bitmap::new(pages),
            unsent_bytes: geometry.records_len(0, pages),
            dirty_bytes: 0,
            records: 0,
            hasher: Checksum(Xxh64::new(0)),
            buf: Vec::with_capacity(RECORD_HEADER_LEN + geometry.page_size as usize),
            pos: 0,
            payload_at: 0,
            kind: Kind::Final,
            trailer: None,
            first_initial_bytes: 0,
            queries: 0,
        };
        saver.first_initial_bytes = saver.initial_bytes();
        saver
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    /// The device changed a page: a page already sent must be sent again.
    pub fn page_dirtied(&mut self, index: u64) {
        if self.sent.get(index) && !self.dirty.get(index) {
            self.dirty.set(index);
            self.dirty_bytes += self.geometry.record_len(index);
        }
    }

    /// Counts a VFIO_MIG_GET_PRECOPY_INFO in PRE_COPY; how many so far.
    pub fn count_query(&mut self) -> u32 {
        self.queries += 1;
        self.queries
    }

    /// New initial data, as mlx5 reports it with REINIT: every page is
    /// offered again as initial data, and what was due as dirty data joins
    /// it (the rest of the record being read, and the changed pages, which
    /// count as not sent), so dirty_bytes restarts at 0.
    pub fn reinit(&mut self) {
        let changed: Vec<u64> = self.dirty.iter_set().collect();
        for index in changed {
            self.dirty.clear(index);
            self.sent.clear(index);
            self.unsent_bytes += self.geometry.record_len(index);
        }
        self.dirty_bytes = 0;
        if self.kind == Kind::Dirty {
            self.kind = Kind::Initial;
        }
        self.precopy_pages = self.geometry.pages();
        self.initial_cursor = 0;
    }

    /// The same new data for a user that did not opt in to REINIT (mlx5
    /// then saves it as an incremental chunk): every page sent counts as
    /// changed.
    pub fn reinit_as_dirty(&mut self) {
        for index in 0..self.geometry.pages() {
            self.page_dirtied(index);
        }
    }

    /// Copies the next bytes of the stream into `out`; 0 when the phase has
    /// nothing more. With `offset_ignored` (a fault) a read that starts
    /// inside a record copies from the record's start.
    pub fn read(&mut self, content: &Content, out: &mut [u8], offset_ignored: bool) -> usize {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.buf.len() && !self.next_record(content) {
                break;
            }
            let n = (self.buf.len() - self.pos).min(out.len() - done);
            let from = if offset_ignored && done == 0 {
                0
            } else {
                self.pos
            };
            out[done..done + n].copy_from_slice(&self.buf[from..from + n]);
            self.pos += n;
            done += n;
        }
        done
    }

    /// The rest of the record being read (empty between records).
    pub fn staged(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn buffered(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn buffered_as(&self, kind: Kind) -> u64 {
        if self.kind == kind {
            self.buffered()
        } else {
            0
        }
    }

    /// Initial precopy data not read yet (`vfio_precopy_info.initial_bytes`).
    pub fn initial_bytes(&self) -> u64 {
        let header = if self.header_sent {
            0
        } else {
            HEADER_LEN as u64
        };
        header
            + self
                .geometry
                .records_len(self.initial_cursor, self.precopy_pages)
            + self.buffered_as(Kind::Initial)
    }

    /// The value of [`Saver::initial_bytes`] when the session started.
    pub fn first_initial_bytes(&self) -> u64 {
        self.first_initial_bytes
    }

    /// Like [`Saver::initial_bytes`], counting page content only.
    pub fn initial_payload_bytes(&self) -> u64 {
        let buffered = if self.kind == Kind::Initial {
            self.buf.len().saturating_sub(self.pos.max(self.payload_at)) as u64
        } else {
            0
        };
        self.geometry
            .bytes_in(self.initial_cursor, self.precopy_pages)
            + buffered
    }

    /// Data about pages changed since sent (`vfio_precopy_info.dirty_bytes`).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes + self.buffered_as(Kind::Dirty)
    }

    /// Every byte still to come until the end of the stream.
    pub fn remaining(&self) -> u64 {
        let header = if self.header_sent {
            0
        } else {
            HEADER_LEN as u64
        };
        let trailer = if self.trailer.is_some() {
            0
        } else {
            TRAILER_LEN as u64
        };
        self.buffered() + header + self.unsent_bytes + self.dirty_bytes + trailer
    }

    /// Whether a read in the current phase would deliver data.
    pub fn has_data(&self) -> bool {
        match self.phase {
            Phase::PreCopy => self.initial_bytes() + self.dirty_bytes() > 0,
            Phase::StopCopy => self.remaining() > 0,
        }
    }

    /// The highest page not sent yet.
    pub fn highest_unsent(&self) -> Option<u64> {
        self.sent.last_clear()
    }

    /// The record buffer's capacity: the save's whole memory footprint
    /// besides the bitmaps.
    #[cfg(test)]
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The trailer, once it was produced.
    pub fn trailer(&self) -> Option<[u8; TRAILER_LEN]> {
        self.trailer
    }

    /// Loads the next record into the buffer; false when the phase has none.
    fn next_record(&mut self, content: &Content) -> bool {
        self.buf.clear();
        self.pos = 0;
        if !self.header_sent {
            self.header_sent = true;
            self.buf.extend_from_slice(&self.header);
            self.hasher.0.update(&self.header);
            self.payload_at = HEADER_LEN;
            self.kind = Kind::Initial;
            return true;
        }
        let page = match self.phase {
            Phase::PreCopy if self.initial_cursor < self.precopy_pages => {
                self.initial_cursor += 1;
                Some((self.initial_cursor - 1, Kind::Initial))
            }
            Phase::PreCopy => self.next_dirty().map(|i| (i, Kind::Dirty)),
            Phase::StopCopy => self.next_pending().map(|i| (i, Kind::Final)),
        };
        match page {
            Some((index, kind)) => {
                self.emit_page(content, index, kind);
                true
            }
            None if self.phase == Phase::StopCopy && self.trailer.is_none() => {
                let mut trailer = [0u8; TRAILER_LEN];
                trailer[..4].copy_from_slice(&TAG_END.to_le_bytes());
                trailer[8..16].copy_from_slice(&self.records.to_le_bytes());
                self.hasher.0.update(&trailer[..16]);
                trailer[16..].copy_from_slice(&self.hasher.0.digest().to_le_bytes());
                self.trailer = Some(trailer);
                self.buf.extend_from_slice(&trailer);
                self.payload_at = TRAILER_LEN;
                self.kind = Kind::Final;
                true
            }
            None => false,
        }
    }

    fn next_dirty(&mut self) -> Option<u64> {
        let index = self.dirty.find_set_wrapping(self.dirty_cursor)?;
        self.dirty_cursor = index + 1;
        Some(index)
    }

    fn next_pending(&mut self) -> Option<u64> {
        let (sent, dirty) = (&self.sent.words, &self.dirty.words);
        let pending = |k: usize| !sent[k] | dirty[k];
        let index = self
            .sent
            .find_from(self.scan_cursor, pending)
            .or_else(|| self.sent.find_from(0, pending))?;
        self.scan_cursor = index + 1;
        Some(index)
    }

    fn emit_page(&mut self, content: &Content, index: u64, kind: Kind) {
        let record_len = self.geometry.record_len(index);
        if !self.sent.get(index) {
            self.sent.set(index);
            self.unsent_bytes -= record_len;
        } else if self.dirty.get(index) {
            self.dirty.clear(index);
            self.dirty_bytes -= record_len;
        }
        let len = self.geometry.page_len(index);
        let generation = content.generation(index);
        self.buf.extend_from_slice(&TAG_PAGE.to_le_bytes());
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        self.buf.extend_from_slice(&index.to_le_bytes());
        self.buf.extend_from_slice(&generation.to_le_bytes());
        // Generated straight into the record (no zero-fill first); a short
        // last word is cut off after. The buffer has room: pages are
        // multiples of 8 bytes, and only the last one may be shorter.
        let len = len as usize;
        for word in page_words(content.seed, index, generation).take(len.div_ceil(8)) {
            self.buf.extend_from_slice(&word);
        }
        self.buf.truncate(RECORD_HEADER_LEN + len);
        self.hasher.0.update(&self.buf);
        self.records += 1;
        self.payload_at = RECORD_HEADER_LEN;
        self.kind = kind;
    }
}

/// Which checks a [`Loader`] makes (faults switch some off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// Magic, version, geometry and the trailer checksum.
    pub header: bool,
    pub device_type: bool,
    /// Whether a write continuing a record lands where the last one ended.
    pub honour_offset: bool,
    /// Whether bytes past the end of a complete stream are refused.
    pub refuse_oversize: bool,
}

impl Checks {
    #[cfg(test)]
    pub const ALL: Checks = Checks {
        header: true,
        device_type: true,
        honour_offset: true,
        refuse_oversize: true,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Record,
    Payload { index: u64, generation: u64 },
    Done,
    Failed,
}

/// Parses and verifies a stream written in any chunking, in O(page) memory.
#[derive(Debug, Clone)]
pub struct Loader {
    own: Header,
    checks: Checks,
    stage: Stage,
    /// A header, record header or page split across writes, gathered.
    buf: Vec<u8>,
    filled: usize,
    hasher: Checksum,
    records: u64,
    seed: u64,
    received: Bitmap,
    received_count: u64,
    generations: BTreeMap<u64, u64>,
}

impl Loader {
    /// A loader for the destination described by `own`.
    pub fn new(own: Header, checks: Checks) -> Loader {
        let page = own.geometry.page_size as usize;
        let pages = own.geometry.pages();
        Loader {
            seed: own.seed,
            own,
            checks,
            stage: Stage::Header,
            buf: vec![0; page.max(HEADER_LEN)],
            filled: 0,
            hasher: Checksum(Xxh64::new(0)),
            records: 0,
            received: Bitmap::new(pages),
            received_count: 0,
            generations: BTreeMap::new(),
        }
    }

    /// Consumes bytes; fails where invalid data is detected (EINVAL, and
    /// every later write fails too) or past the end (ENOSPC). A write that
    /// straddles the end is short.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, Errno> {
        let mut used = 0;
        while used < data.len() {
            match self.stage {
                Stage::Failed => return Err(Errno::EINVAL),
                Stage::Done if !self.checks.refuse_oversize => return Ok(data.len()),
                Stage::Done if used > 0 => return Ok(used),
                Stage::Done => return Err(Errno::ENOSPC),
                _ => {}
            }
            let want = self.stage_len();
            let n = (want - self.filled).min(data.len() - used);
            let result = if self.filled == 0 && n == want {
                // The whole unit is in `data`: check it where it is.
                used += n;
                self.complete(&data[used - n..used])
            } else {
                let at = if self.checks.honour_offset || used > 0 {
                    self.filled
                } else {
                    0
                };
                self.buf[at..at + n].copy_from_slice(&data[used..used + n]);
                self.filled += n;
                used += n;
                if self.filled < want {
                    continue;
                }
                self.filled = 0;
                let buf = std::mem::take(&mut self.buf);
                let result = self.complete(&buf[..want]);
                self.buf = buf;
                result
            };
            if let Err(e) = result {
                self.stage = Stage::Failed;
                return Err(e);
            }
        }
        Ok(used)
    }

    fn stage_len(&self) -> usize {
        match self.stage {
            Stage::Header => HEADER_LEN,
            Stage::Record => RECORD_HEADER_LEN,
            Stage::Payload { index, .. } => self.own.geometry.page_len(index) as usize,
            Stage::Done | Stage::Failed => 0,
        }
    }

    /// Takes in one whole unit of the current stage.
    fn complete(&mut self, unit: &[u8]) -> Result<(), Errno> {
        let geometry = self.own.geometry;
        match self.stage {
            Stage::Header => {
                let header = unit;
                self.hasher.0.update(header);
                if self.checks.header {
                    self.seed = self.own.accept(header, self.checks.device_type)?;
                }
                self.stage = Stage::Record;
            }
            Stage::Record => {
                let record = unit;
                match get_u32(record, 0) {
                    TAG_PAGE => {
                        let index = get_u64(record, 8);
                        if index >= geometry.pages()
                            || u64::from(get_u32(record, 4)) != geometry.page_len(index)
                        {
                            return Err(Errno::EINVAL);
                        }
                        self.hasher.0.update(record);
                        self.stage = Stage::Payload {
                            index,
                            generation: get_u64(record, 16),
                        };
                    }
                    TAG_END => {
                        self.hasher.0.update(&record[..16]);
                        let sound = get_u32(record, 4) == 0
                            && get_u64(record, 8) == self.records
                            && self.received_count == geometry.pages();
                        let checksum_ok =
                            !self.checks.header || get_u64(record, 16) == self.hasher.0.digest();
                        if !(sound && checksum_ok) {
                            return Err(Errno::EINVAL);
                        }
                        self.stage = Stage::Done;
                    }
                    _ => return Err(Errno::EINVAL),
                }
            }
            Stage::Payload { index, generation } => {
                if !page_matches(self.seed, index, generation, unit) {
                    return Err(Errno::EINVAL);
                }
                self.hasher.0.update(unit);
                self.records += 1;
                if !self.received.get(index) {
                    self.received.set(index);
                    self.received_count += 1;
                }
                if generation == 0 {
                    self.generations.remove(&index);
                } else {
                    self.generations.insert(index, generation);
                }
                self.stage = Stage::Record;
            }
            // `write` takes no bytes in these stages.
            Stage::Done | Stage::Failed => {}
        }
        Ok(())
    }

    /// Whether a complete, valid stream arrived.
    pub fn is_complete(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Whether invalid data was detected.
    pub fn has_failed(&self) -> bool {
        self.stage == Stage::Failed
    }

    /// Makes `content` the state the stream carried. An incomplete stream
    /// (accepted only by a fault) loads the pages that arrived.
    pub fn adopt(self, content: &mut Content) {
        content.seed = self.seed;
        if self.is_complete() {
            content.generations = self.generations;
            return;
        }
        for index in self.received.iter_set() {
            content.set_generation(index, self.generations.get(&index).copied().unwrap_or(0));
        }
    }
}

#[cfg(test)]
mod tests;
