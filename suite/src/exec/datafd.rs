//! The two loops every transfer on a data fd needs, shared by the executor
//! and the save/resume job: read until the stream ends, and write a chunk
//! whole. Every wait is a poll bounded by the caller's budget, so neither
//! loop blocks past a deadline; neither judges what it saw.
#![forbid(unsafe_code)]

use std::time::Duration;

use crate::device::{DataFd, Device, PollFlags};
use crate::scenario::ReadUntil;
use crate::uapi::Errno;

/// How a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Eof,
    Enomsg,
    Error(Errno),
    /// The bound on bytes was reached before an end.
    Bound,
    /// poll() never reported the fd ready before the deadline.
    NotReady,
    /// `until: once`: one read done.
    Once(usize),
}

/// EAGAIN/EINTR retries before a read loop gives up on a fd that polls
/// ready but has nothing.
const READ_RETRIES: u32 = 1000;

/// Reads `fd` in `buf`-sized chunks until `until`, at most `bound` bytes,
/// handing each chunk to `data`; `budget` says how long a poll may wait
/// now. Returns the bytes read and how the loop ended, or the first error
/// of `data`.
pub(crate) fn read<E>(
    dev: &mut dyn Device,
    fd: DataFd,
    buf: &mut [u8],
    until: ReadUntil,
    bound: u64,
    budget: impl Fn() -> Duration,
    mut data: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(u64, End), E> {
    let mut total = 0u64;
    let mut retries = 0u32;
    let end = loop {
        if total >= bound {
            break End::Bound;
        }
        if until == ReadUntil::EndOfPrecopy {
            // At the temporary end of precopy data poll may say "not
            // readable"; read anyway to see ENOMSG.
            let _ = dev.data_poll(fd, PollFlags::POLLIN, Duration::ZERO);
        } else {
            match dev.data_poll(fd, PollFlags::POLLIN, budget()) {
                Ok(ev) if ev.is_empty() => break End::NotReady,
                Ok(_) => {}
                Err(e) => break End::Error(e),
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(bound - total).unwrap_or(usize::MAX))
            .max(1);
        match dev.data_read(fd, &mut buf[..want]) {
            Ok(0) => break End::Eof,
            Ok(n) => {
                total += n as u64;
                data(&buf[..n])?;
                if until == ReadUntil::Once {
                    break End::Once(n);
                }
            }
            Err(Errno::ENOMSG) => break End::Enomsg,
            Err(Errno::EAGAIN | Errno::EINTR) if retries < READ_RETRIES => retries += 1,
            Err(e) => break End::Error(e),
        }
    };
    Ok((total, end))
}

/// How writing a chunk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteEnd {
    Done,
    /// poll() never reported the fd writable before the deadline.
    NotReady,
    PollFailed(Errno),
    /// write() returned 0: the driver takes no more.
    Zero,
    Failed(Errno),
}

/// What writing a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// Bytes of the chunk the driver took.
    pub bytes: usize,
    /// write() calls made.
    pub calls: u64,
    pub end: WriteEnd,
}

impl Written {
    /// The error as the executor reports it: ETIMEDOUT for a fd that never
    /// became writable, ENOSPC for a write that took nothing.
    pub fn errno(&self) -> Option<Errno> {
        match self.end {
            WriteEnd::Done => None,
            WriteEnd::NotReady => Some(Errno::ETIMEDOUT),
            WriteEnd::Zero => Some(Errno::ENOSPC),
            WriteEnd::PollFailed(e) | WriteEnd::Failed(e) => Some(e),
        }
    }
}

/// Writes all of `data` to `fd`, polling for POLLOUT (within `budget`)
/// before every write.
pub(crate) fn write_all(
    dev: &mut dyn Device,
    fd: DataFd,
    data: &[u8],
    budget: impl Fn() -> Duration,
) -> Written {
    let mut w = Written {
        bytes: 0,
        calls: 0,
        end: WriteEnd::Done,
    };
    while w.bytes < data.len() {
        match dev.data_poll(fd, PollFlags::POLLOUT, budget()) {
            Ok(ev) if ev.is_empty() => w.end = WriteEnd::NotReady,
            Ok(_) => {}
            Err(e) => w.end = WriteEnd::PollFailed(e),
        }
        if w.end != WriteEnd::Done {
            break;
        }
        w.calls += 1;
        match dev.data_write(fd, &data[w.bytes..]) {
            Ok(0) => w.end = WriteEnd::Zero,
            Ok(k) => w.bytes += k,
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => w.end = WriteEnd::Failed(e),
        }
        if w.end != WriteEnd::Done {
            break;
        }
    }
    w
}
