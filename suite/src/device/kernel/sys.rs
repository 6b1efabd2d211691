//! The system calls of the kernel backend, behind one trait.
//!
//! This is the only file of the project with `unsafe`. Everything above it
//! (opening, marshalling, data fds) is safe code generic over [`Sys`], unit
//! tested against an in-memory double of /dev/vfio. [`RealSys`] is the
//! implementation over nix/libc; its callers uphold two rules that the
//! `SAFETY` comments below rely on:
//!
//! - an ioctl argument buffer is at least as long as anything the kernel
//!   reads or writes for that request (the backend sizes it from `argsz`
//!   and the request's struct, see `arg.rs`), and any pointer embedded in
//!   it points into the [`Pointee`] passed along with it;
//! - [`Sys::adopt`] gets only fd numbers the kernel has just installed for
//!   this process and that nothing owns yet;
//! - a [`Mapping`] is read and written only inside its length (checked
//!   here too, so a wrong caller gets EINVAL, not a fault).

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use nix::libc;
use nix::poll::PollFlags;
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::stat::Mode;

/// Memory that an ioctl argument points at: the kernel follows the pointer
/// stored in the argument, so the memory stays borrowed across the call.
#[derive(Debug)]
pub enum Pointee<'a> {
    None,
    /// Read by the kernel (`dma_logging_control.ranges`).
    Bytes(&'a [u8]),
    /// Written by the kernel (`dma_logging_report.bitmap`).
    Words(&'a mut [u64]),
}

impl Pointee<'_> {
    /// The user address the argument carries for this memory.
    pub fn addr(&self) -> u64 {
        let addr = match self {
            Pointee::None => 0,
            Pointee::Bytes(b) => b.as_ptr().addr(),
            Pointee::Words(w) => w.as_ptr().addr(),
        };
        usize_to_u64(addr)
    }
}

/// A shared mapping of part of a device fd (a sparse-mmap area of a
/// region); dropping it unmaps it.
pub trait Mapping: Send {
    /// Copies `buf.len()` bytes from offset `at` of the mapping.
    fn read_at(&self, at: usize, buf: &mut [u8]) -> Result<(), Errno>;
    /// Copies `buf` to offset `at` of the mapping.
    fn write_at(&mut self, at: usize, buf: &[u8]) -> Result<(), Errno>;
}

/// The system calls the backend makes. Each method is one call and returns
/// the errno unchanged.
pub trait Sys: Send + Sync + Clone + 'static {
    /// An open fd; dropping it closes the fd. Several threads may make
    /// calls on one fd at once (shared data fds).
    type Fd: AsRawFd + Send + Sync;
    type Map: Mapping;

    fn open(&self, path: &Path, flags: OFlag) -> Result<Self::Fd, Errno>;

    /// `close`, reporting its errno (dropping the fd would swallow it).
    fn close(&self, fd: Self::Fd) -> Result<(), Errno>;

    /// Takes ownership of an fd number the kernel has just installed (the
    /// result of GET_DEVICE_FD, the `data_fd` of a successful SET). Negative
    /// numbers are EBADF.
    fn adopt(&self, raw: RawFd) -> Result<Self::Fd, Errno>;

    /// `ioctl(fd, request, arg)`: returns the ioctl's non-negative result.
    fn ioctl(
        &self,
        fd: &Self::Fd,
        request: u64,
        arg: &mut [u8],
        pointee: Pointee<'_>,
    ) -> Result<i32, Errno>;

    /// `ioctl(fd, request, value)` for requests taking an integer argument.
    fn ioctl_int(&self, fd: &Self::Fd, request: u64, value: u64) -> Result<i32, Errno>;

    fn read(&self, fd: &Self::Fd, buf: &mut [u8]) -> Result<usize, Errno>;
    fn write(&self, fd: &Self::Fd, buf: &[u8]) -> Result<usize, Errno>;
    fn pread(&self, fd: &Self::Fd, buf: &mut [u8], offset: u64) -> Result<usize, Errno>;
    fn pwrite(&self, fd: &Self::Fd, buf: &[u8], offset: u64) -> Result<usize, Errno>;

    /// `poll` on one fd: `revents`, empty when `timeout` passed.
    fn poll(&self, fd: &Self::Fd, events: PollFlags, timeout: Duration)
        -> Result<PollFlags, Errno>;

    /// Whether FD_CLOEXEC is set (`fcntl(F_GETFD)`).
    fn cloexec(&self, fd: &Self::Fd) -> Result<bool, Errno>;

    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset)`.
    fn mmap(&self, fd: &Self::Fd, offset: u64, len: usize) -> Result<Self::Map, Errno>;
}

/// A mapping made by [`RealSys::mmap`].
#[derive(Debug)]
pub struct RealMap {
    addr: NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value alone (no
// thread-local state); moving it to another thread moves that ownership.
unsafe impl Send for RealMap {}

impl RealMap {
    /// Whether `[at, at + n)` lies inside the mapping.
    fn check(&self, at: usize, n: usize) -> Result<(), Errno> {
        match at.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }
}

impl Mapping for RealMap {
    fn read_at(&self, at: usize, buf: &mut [u8]) -> Result<(), Errno> {
        self.check(at, buf.len())?;
        // SAFETY: `[at, at + buf.len())` is inside the live mapping (checked
        // above), which is readable (PROT_READ) and cannot alias `buf`, a
        // Rust-owned buffer. The driver changes the memory only while it
        // serves a system call of ours, and this thread makes none now.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.addr.as_ptr().cast::<u8>().add(at),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    fn write_at(&mut self, at: usize, buf: &[u8]) -> Result<(), Errno> {
        self.check(at, buf.len())?;
        // SAFETY: as in `read_at`; the mapping is writable (PROT_WRITE) and
        // borrowed exclusively.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                self.addr.as_ptr().cast::<u8>().add(at),
                buf.len(),
            );
        }
        Ok(())
    }
}

impl Drop for RealMap {
    fn drop(&mut self) {
        // SAFETY: `addr` and `len` are exactly what mmap returned and asked
        // for, and nothing refers to the mapping after its owner is gone.
        // munmap of a valid mapping does not fail; there is no one to tell.
        let _ = unsafe { nix::sys::mman::munmap(self.addr, self.len) };
    }
}

/// The real system calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealSys;

impl Sys for RealSys {
    type Fd = OwnedFd;
    type Map = RealMap;

    fn open(&self, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
        nix::fcntl::open(path, flags, Mode::empty())
    }

    fn close(&self, fd: OwnedFd) -> Result<(), Errno> {
        nix::unistd::close(fd)
    }

    fn adopt(&self, raw: RawFd) -> Result<OwnedFd, Errno> {
        if raw < 0 {
            return Err(Errno::EBADF);
        }
        // SAFETY: per this trait's contract `raw` was just installed by the
        // kernel as a new fd of this process (GET_DEVICE_FD's result or the
        // data_fd of a successful SET of MIG_DEVICE_STATE) and no other
        // owner exists, so the OwnedFd is its only owner; it is not -1.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    fn ioctl(
        &self,
        fd: &OwnedFd,
        request: u64,
        arg: &mut [u8],
        _pointee: Pointee<'_>,
    ) -> Result<i32, Errno> {
        let request = request_number(request)?;
        // SAFETY: `arg` is an exclusively borrowed buffer of `arg.len()`
        // bytes that lives across the call, and the caller sized it to
        // cover every byte the kernel reads or writes for this request. A
        // user pointer embedded in it points into `_pointee`, a parameter
        // and so borrowed (mutably when the kernel writes through it) until
        // this function returns; the kernel keeps no pointer after the call.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg.as_mut_ptr()) };
        Errno::result(ret)
    }

    fn ioctl_int(&self, fd: &OwnedFd, request: u64, value: u64) -> Result<i32, Errno> {
        let request = request_number(request)?;
        let value = libc::c_ulong::try_from(value).map_err(|_| Errno::EINVAL)?;
        // SAFETY: the argument is a plain integer (VFIO_CHECK_EXTENSION,
        // VFIO_SET_IOMMU, VFIO_GET_API_VERSION, VFIO_DEVICE_RESET take no
        // pointer), so the kernel dereferences no memory of ours.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, value) };
        Errno::result(ret)
    }

    fn read(&self, fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, Errno> {
        nix::unistd::read(fd, buf)
    }

    fn write(&self, fd: &OwnedFd, buf: &[u8]) -> Result<usize, Errno> {
        nix::unistd::write(fd, buf)
    }

    fn pread(&self, fd: &OwnedFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        nix::sys::uio::pread(fd, buf, file_offset(offset)?)
    }

    fn pwrite(&self, fd: &OwnedFd, buf: &[u8], offset: u64) -> Result<usize, Errno> {
        nix::sys::uio::pwrite(fd, buf, file_offset(offset)?)
    }

    fn poll(&self, fd: &OwnedFd, events: PollFlags, timeout: Duration) -> Result<PollFlags, Errno> {
        // libc's pollfd rather than nix's PollFd: nix maps `revents` with
        // bits it does not know (POLLRDHUP, POLLMSG) to None, and a
        // driver's poll answer is an observable we must not lose.
        let mut pfd = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: events.bits(),
            revents: 0,
        };
        // SAFETY: `pfd` is one live, exclusively borrowed pollfd and nfds
        // is 1, so the kernel writes only its `revents`; the fd is borrowed
        // from `fd` for the duration of the call.
        let ret = unsafe { libc::poll(&mut pfd, 1, poll_millis(timeout)) };
        Errno::result(ret)?;
        Ok(PollFlags::from_bits_retain(pfd.revents))
    }

    fn cloexec(&self, fd: &OwnedFd) -> Result<bool, Errno> {
        let flags = nix::fcntl::fcntl(fd, FcntlArg::F_GETFD)?;
        Ok(FdFlag::from_bits_retain(flags).contains(FdFlag::FD_CLOEXEC))
    }

    fn mmap(&self, fd: &OwnedFd, offset: u64, len: usize) -> Result<RealMap, Errno> {
        let length = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a new shared mapping at an address the kernel picks
        // (addr None) replaces nothing of ours; the fd is borrowed for the
        // call. The result is owned by the RealMap, which unmaps it once.
        let addr = unsafe {
            nix::sys::mman::mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                file_offset(offset)?,
            )
        }?;
        Ok(RealMap { addr, len })
    }
}

/// VFIO request numbers fit every libc's ioctl request type; anything else
/// is refused before the call.
fn request_number(request: u64) -> Result<nix::sys::ioctl::ioctl_num_type, Errno> {
    nix::sys::ioctl::ioctl_num_type::try_from(request).map_err(|_| Errno::EINVAL)
}

/// The kernel refuses negative file offsets with EINVAL; so do we, without
/// the call.
fn file_offset(offset: u64) -> Result<libc::off_t, Errno> {
    libc::off_t::try_from(offset).map_err(|_| Errno::EINVAL)
}

/// Milliseconds for poll(2), rounded up so a short timeout still waits,
/// saturating at what poll accepts.
fn poll_millis(timeout: Duration) -> libc::c_int {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX)
}

fn usize_to_u64(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pipe_round_trip_through_real_calls() {
        let sys = RealSys;
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(
            sys.poll(&r, PollFlags::POLLIN, Duration::ZERO).unwrap(),
            PollFlags::empty()
        );
        assert_eq!(sys.write(&w, b"abc").unwrap(), 3);
        assert_eq!(
            sys.poll(&r, PollFlags::POLLIN, Duration::from_secs(1))
                .unwrap(),
            PollFlags::POLLIN
        );
        let mut buf = [0u8; 8];
        assert_eq!(sys.read(&r, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(sys.pread(&r, &mut buf, 0), Err(Errno::ESPIPE));
        assert_eq!(sys.pwrite(&w, b"x", 0), Err(Errno::ESPIPE));
        assert_eq!(sys.pread(&r, &mut buf, u64::MAX), Err(Errno::EINVAL));
        // An ioctl a pipe does not know is ENOTTY, with or without a pointer.
        let vfio_reset = crate::uapi::VFIO_DEVICE_RESET;
        assert_eq!(sys.ioctl_int(&r, vfio_reset, 0), Err(Errno::ENOTTY));
        let mut arg = [0u8; 16];
        assert_eq!(
            sys.ioctl(&r, vfio_reset, &mut arg, Pointee::None),
            Err(Errno::ENOTTY)
        );
        assert_eq!(sys.close(w), Ok(()));
        assert_eq!(
            sys.poll(&r, PollFlags::POLLIN, Duration::from_secs(1))
                .unwrap(),
            PollFlags::POLLHUP
        );
        assert_eq!(sys.read(&r, &mut buf).unwrap(), 0);
    }

    #[test]
    fn open_cloexec_and_adopt() {
        let sys = RealSys;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"0123456789")
            .unwrap();
        let fd = sys.open(&path, OFlag::O_RDWR | OFlag::O_CLOEXEC).unwrap();
        assert!(sys.cloexec(&fd).unwrap());
        let mut buf = [0u8; 4];
        assert_eq!(sys.pread(&fd, &mut buf, 6).unwrap(), 4);
        assert_eq!(&buf, b"6789");
        assert_eq!(sys.pwrite(&fd, b"ab", 0).unwrap(), 2);
        let plain = sys.open(&path, OFlag::O_RDONLY).unwrap();
        assert!(!sys.cloexec(&plain).unwrap());
        assert_eq!(
            sys.open(&dir.path().join("missing"), OFlag::O_RDONLY).err(),
            Some(Errno::ENOENT)
        );
        assert_eq!(sys.adopt(-1).err(), Some(Errno::EBADF));
        // Handing a raw number back and adopting it keeps one owner.
        let raw = std::os::fd::IntoRawFd::into_raw_fd(plain);
        let again = sys.adopt(raw).unwrap();
        assert_eq!(again.as_raw_fd(), raw);
        assert_eq!(sys.close(again), Ok(()));
    }

    #[test]
    fn a_file_mapping_reads_and_writes_the_file_within_bounds() {
        let sys = RealSys;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 8192]).unwrap();
        let fd = sys.open(&path, OFlag::O_RDWR).unwrap();
        assert_eq!(sys.mmap(&fd, 0, 0).err(), Some(Errno::EINVAL));
        assert_eq!(sys.mmap(&fd, 1, 4096).err(), Some(Errno::EINVAL));
        let mut map = sys.mmap(&fd, 4096, 4096).unwrap();
        let mut buf = [0u8; 4];
        map.read_at(4092, &mut buf).unwrap();
        assert_eq!(buf, [7; 4]);
        map.write_at(10, b"abc").unwrap();
        assert_eq!(map.read_at(4093, &mut buf), Err(Errno::EINVAL));
        assert_eq!(map.write_at(usize::MAX, b"a"), Err(Errno::EINVAL));
        drop(map);
        let mut back = [0u8; 3];
        assert_eq!(sys.pread(&fd, &mut back, 4096 + 10).unwrap(), 3);
        assert_eq!(&back, b"abc");
    }

    #[test]
    fn pointee_addresses_its_memory() {
        let bytes = [0u8; 32];
        let p = Pointee::Bytes(&bytes);
        assert_eq!(p.addr(), usize_to_u64(bytes.as_ptr().addr()));
        assert_ne!(p.addr(), 0);
        let mut words = [0u64; 3];
        let addr = usize_to_u64(words.as_ptr().addr());
        assert_eq!(Pointee::Words(&mut words).addr(), addr);
        assert_eq!(Pointee::None.addr(), 0);
    }

    #[test]
    fn poll_timeouts_round_up_and_saturate() {
        assert_eq!(poll_millis(Duration::ZERO), 0);
        assert_eq!(poll_millis(Duration::from_micros(1)), 1);
        assert_eq!(poll_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(poll_millis(Duration::MAX), libc::c_int::MAX);
    }
}
