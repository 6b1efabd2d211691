//! Saved migration streams. Small streams stay in memory; past a threshold
//! the bytes go to an unlinked temporary file, so a multi-GiB device state
//! never has to fit in memory. Comparison streams both sides.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::scenario::Mutation;

/// One saved stream and the chunk sizes it arrived in (v1 resume replays
/// them, V1-RESUME-02).
#[derive(Debug)]
pub struct StreamBuf {
    mem: Vec<u8>,
    file: Option<File>,
    len: u64,
    /// (size, how many in a row): a device that returns 4 KiB per read
    /// still makes one entry, not one per read.
    chunks: Vec<(u64, u64)>,
    spill_at: u64,
}

impl StreamBuf {
    pub fn new(spill_at: u64) -> StreamBuf {
        StreamBuf {
            mem: Vec::new(),
            file: None,
            len: 0,
            chunks: Vec::new(),
            spill_at,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sizes of the reads (or v1 iterations) that produced the stream.
    pub fn chunks(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks
            .iter()
            .flat_map(|&(size, count)| std::iter::repeat_n(size, count as usize))
    }

    pub fn append(&mut self, data: &[u8], temp_dir: &Path) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.file.is_none() && self.len + data.len() as u64 > self.spill_at {
            let mut file = anonymous_file(temp_dir)?;
            file.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(f) => f.write_all(data)?,
            None => self.mem.extend_from_slice(data),
        }
        let size = data.len() as u64;
        self.len += size;
        match self.chunks.last_mut() {
            Some((last, count)) if *last == size => *count += 1,
            _ => self.chunks.push((size, 1)),
        }
        Ok(())
    }

    /// A reader over the stream from the start, with `mutation` applied.
    pub fn reader(&mut self, mutation: &Mutation) -> io::Result<StreamReader<'_>> {
        if let Some(f) = &mut self.file {
            f.flush()?;
            f.seek(SeekFrom::Start(0))?;
        }
        let len = self.len.saturating_sub(mutation.truncate) + mutation.extra;
        Ok(StreamReader {
            source: match &mut self.file {
                Some(f) => Source::File(f),
                None => Source::Mem(&self.mem),
            },
            pos: 0,
            end: len,
            source_len: self.len.saturating_sub(mutation.truncate),
            corrupt: mutation.corrupt.clone(),
        })
    }

    /// The offset of the first byte where `a` and `b` differ (the shorter
    /// length when one is a prefix of the other), or `None` when equal.
    pub fn first_difference(a: &mut StreamBuf, b: &mut StreamBuf) -> io::Result<Option<u64>> {
        const BLOCK: usize = 1 << 20;
        let none = Mutation::default();
        let (la, lb) = (a.len, b.len);
        let mut ra = a.reader(&none)?;
        let mut rb = b.reader(&none)?;
        let mut ba = vec![0u8; BLOCK];
        let mut bb = vec![0u8; BLOCK];
        let mut offset = 0u64;
        loop {
            let na = read_full(&mut ra, &mut ba)?;
            let nb = read_full(&mut rb, &mut bb)?;
            let n = na.min(nb);
            // Equal blocks (the common case) are compared as slices, which
            // is a memcmp; only a differing block is searched byte by byte.
            if ba[..n] != bb[..n] {
                let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y);
                return Ok(Some(offset + i.unwrap_or(n) as u64));
            }
            offset += n as u64;
            if na != nb || n == 0 {
                return Ok((la != lb).then_some(la.min(lb)));
            }
        }
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Creates a file in `dir` and unlinks it at once: it lives only as long as
/// its handle, so a killed run leaves nothing behind.
fn anonymous_file(dir: &Path) -> io::Result<File> {
    let pid = std::process::id();
    for attempt in 0..1000u32 {
        let path = dir.join(format!(".vfio-migtest-stream-{pid}-{attempt}"));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary file name",
    ))
}

enum Source<'a> {
    Mem(&'a [u8]),
    File(&'a mut File),
}

/// Reads a stream with truncation, corruption (bit flips) and extra bytes
/// applied on the fly.
pub struct StreamReader<'a> {
    source: Source<'a>,
    pos: u64,
    end: u64,
    source_len: u64,
    corrupt: Vec<u64>,
}

impl StreamReader<'_> {
    /// The next `buf.len()` bytes (fewer only at the end): where they lie
    /// when the stream is in memory and unaltered there, else copied into
    /// `buf`.
    pub fn next_chunk<'r>(&'r mut self, buf: &'r mut [u8]) -> io::Result<&'r [u8]> {
        let want = (buf.len() as u64).min(self.end.saturating_sub(self.pos));
        let (from, to) = (self.pos, self.pos + want);
        if let Source::Mem(m) = &self.source {
            let m: &[u8] = m;
            if to <= self.source_len && !self.corrupt.iter().any(|&c| c >= from && c < to) {
                self.pos = to;
                return Ok(&m[from as usize..to as usize]);
            }
        }
        let n = read_full(self, &mut buf[..want as usize])?;
        Ok(&buf[..n])
    }
}

impl Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.end - self.pos) as usize;
        let n = if self.pos < self.source_len {
            let from_source = want.min((self.source_len - self.pos) as usize);
            match &mut self.source {
                Source::Mem(m) => {
                    let start = self.pos as usize;
                    buf[..from_source].copy_from_slice(&m[start..start + from_source]);
                    from_source
                }
                Source::File(f) => f.read(&mut buf[..from_source])?,
            }
        } else {
            // Past the saved stream: filler bytes that no valid stream ends with.
            buf[..want].fill(0xa5);
            want
        };
        for &c in &self.corrupt {
            if c >= self.pos && c < self.pos + n as u64 {
                buf[(c - self.pos) as usize] ^= 0xff;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(spill_at: u64, parts: &[&[u8]]) -> StreamBuf {
        let mut b = StreamBuf::new(spill_at);
        for p in parts {
            b.append(p, &std::env::temp_dir()).unwrap();
        }
        b
    }

    fn all(b: &mut StreamBuf, m: &Mutation) -> Vec<u8> {
        let mut out = Vec::new();
        b.reader(m).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn spills_to_a_file_and_reads_back() {
        let mut b = filled(4, &[b"abc", b"defgh", b"ij"]);
        assert!(b.file.is_some());
        assert!(b.mem.is_empty());
        assert_eq!(b.len(), 10);
        assert_eq!(b.chunks().collect::<Vec<_>>(), [3, 5, 2]);
        assert_eq!(all(&mut b, &Mutation::default()), b"abcdefghij");
        // A second reader starts over.
        assert_eq!(all(&mut b, &Mutation::default()), b"abcdefghij");
    }

    #[test]
    fn chunk_sizes_are_kept_as_runs() {
        let mut b = StreamBuf::new(1 << 20);
        for part in [&[1u8; 4][..], &[2; 4], &[3; 4], &[4; 2], &[5; 4]] {
            b.append(part, &std::env::temp_dir()).unwrap();
        }
        assert_eq!(b.chunks, [(4, 3), (2, 1), (4, 1)]);
        assert_eq!(b.chunks().collect::<Vec<_>>(), [4, 4, 4, 2, 4]);
    }

    #[test]
    fn mutations_apply_on_the_fly() {
        for spill in [4, 1 << 20] {
            let mut b = filled(spill, &[b"abcdef"]);
            let m = Mutation {
                truncate: 2,
                corrupt: vec![0, 3],
                extra: 0,
            };
            assert_eq!(all(&mut b, &m), vec![b'a' ^ 0xff, b'b', b'c', b'd' ^ 0xff]);
            let m = Mutation {
                truncate: 0,
                corrupt: vec![],
                extra: 3,
            };
            assert_eq!(all(&mut b, &m), b"abcdef\xa5\xa5\xa5");
        }
    }

    #[test]
    fn chunks_come_from_memory_or_through_the_buffer() {
        for spill in [4, 1 << 20] {
            let mut b = filled(spill, &[b"abcdefgh"]);
            let m = Mutation {
                truncate: 1,
                corrupt: vec![5],
                extra: 2,
            };
            let mut r = b.reader(&m).unwrap();
            let mut buf = [0u8; 3];
            let at = buf.as_ptr();
            let mut got = Vec::new();
            loop {
                let chunk = r.next_chunk(&mut buf).unwrap();
                if chunk.is_empty() {
                    break;
                }
                // In memory, an unaltered chunk is not copied.
                let copied = chunk.as_ptr() == at;
                got.push((chunk.to_vec(), copied));
            }
            let in_memory = spill > 8;
            assert_eq!(
                got,
                [
                    (b"abc".to_vec(), !in_memory),
                    (vec![b'd', b'e', b'f' ^ 0xff], true),
                    (vec![b'g', 0xa5, 0xa5], true),
                ]
            );
        }
    }

    #[test]
    fn first_difference_streams_both_sides() {
        let mut a = filled(2, &[b"hello", b"world"]);
        let mut b = filled(1 << 20, &[b"hellowor", b"ld"]);
        assert_eq!(StreamBuf::first_difference(&mut a, &mut b).unwrap(), None);
        let mut c = filled(1 << 20, &[b"hellOworld"]);
        assert_eq!(
            StreamBuf::first_difference(&mut a, &mut c).unwrap(),
            Some(4)
        );
        let mut d = filled(1 << 20, &[b"hello"]);
        assert_eq!(
            StreamBuf::first_difference(&mut a, &mut d).unwrap(),
            Some(5)
        );
        let mut e = StreamBuf::new(8);
        let mut f = StreamBuf::new(8);
        assert_eq!(StreamBuf::first_difference(&mut e, &mut f).unwrap(), None);
    }
}
