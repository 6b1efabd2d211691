//! The data fds a device handed out, and the operations on them.
//!
//! [`DataPath`] is what the kernel backend's `data_*` methods run: a lookup
//! of the fd number among the fds we own, then one system call on the
//! caller's buffer (no copy, no zero-filling). It can wrap any fd, so the
//! read path can be measured over a pipe or a file
//! ([`DataPath::over`]).
#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::{DataFd, DataFdOps, PollFlags, SharedDataFd};
use crate::uapi::Errno;

use super::arg;
use super::sys::{Pointee, RealSys, Sys};

/// Data fds owned by one device. An fd number we do not own is EBADF
/// without a system call; dropping the path closes every fd that no
/// other thread holds ([`DataPath::share`]); the last holder closes it.
pub struct DataPath<S: Sys = RealSys> {
    sys: S,
    /// A device has one or two data fds open at a time: a list beats a map.
    fds: Vec<Arc<S::Fd>>,
}

impl DataPath<RealSys> {
    /// A data path over any fd (a pipe, a file), for measuring the read
    /// path the kernel backend uses. Returns the number to pass as `fd`.
    pub fn over(fd: OwnedFd) -> (DataPath, DataFd) {
        let mut path = DataPath::new(RealSys);
        let number = path.insert(fd);
        (path, number)
    }
}

impl<S: Sys> DataPath<S> {
    pub fn new(sys: S) -> DataPath<S> {
        DataPath {
            sys,
            fds: Vec::new(),
        }
    }

    /// Takes ownership of `fd`; returns its number.
    pub fn insert(&mut self, fd: S::Fd) -> DataFd {
        let number = fd.as_raw_fd();
        self.fds.push(Arc::new(fd));
        number
    }

    /// Whether `fd` is one of ours.
    pub fn owns(&self, fd: DataFd) -> bool {
        self.fds.iter().any(|f| f.as_raw_fd() == fd)
    }

    fn get(&self, fd: DataFd) -> Result<&S::Fd, Errno> {
        self.fds
            .iter()
            .find(|f| f.as_raw_fd() == fd)
            .map(|f| &**f)
            .ok_or(Errno::EBADF)
    }

    /// `fd` for other threads: the same fd, its calls made directly.
    pub fn share(&self, fd: DataFd) -> Result<SharedDataFd, Errno> {
        let fd = self
            .fds
            .iter()
            .find(|f| f.as_raw_fd() == fd)
            .ok_or(Errno::EBADF)?;
        Ok(Arc::new(Shared {
            sys: self.sys.clone(),
            fd: Arc::clone(fd),
        }))
    }

    /// `read` into `buf`. Callers poll first; this may block otherwise.
    pub fn read(&self, fd: DataFd, buf: &mut [u8]) -> Result<usize, Errno> {
        self.sys.read(self.get(fd)?, buf)
    }

    pub fn write(&self, fd: DataFd, buf: &[u8]) -> Result<usize, Errno> {
        self.sys.write(self.get(fd)?, buf)
    }

    pub fn pread(&self, fd: DataFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        self.sys.pread(self.get(fd)?, buf, offset)
    }

    pub fn pwrite(&self, fd: DataFd, buf: &[u8], offset: u64) -> Result<usize, Errno> {
        self.sys.pwrite(self.get(fd)?, buf, offset)
    }

    /// `poll` until an event or the deadline `timeout` from now; a signal
    /// interrupting the wait does not shorten it. Empty when time is up.
    pub fn poll(
        &self,
        fd: DataFd,
        events: PollFlags,
        timeout: Duration,
    ) -> Result<PollFlags, Errno> {
        poll_through_signals(&self.sys, self.get(fd)?, events, timeout)
    }

    /// An ioctl with a pointer to `arg`, given room for whatever the
    /// request may touch (see [`arg::data_ioctl_len`]).
    pub fn ioctl(&self, fd: DataFd, request: u64, arg: &mut [u8]) -> Result<i32, Errno> {
        let fd = self.get(fd)?;
        let need = arg::data_ioctl_len(request, arg);
        arg::with_room(arg, need, |buf| {
            self.sys.ioctl(fd, request, buf, Pointee::None)
        })?
    }

    pub fn cloexec(&self, fd: DataFd) -> Result<bool, Errno> {
        self.sys.cloexec(self.get(fd)?)
    }

    /// `close`; the number is ours no more, whatever close says.
    pub fn close(&mut self, fd: DataFd) -> Result<(), Errno> {
        let at = self
            .fds
            .iter()
            .position(|f| f.as_raw_fd() == fd)
            .ok_or(Errno::EBADF)?;
        match Arc::try_unwrap(self.fds.swap_remove(at)) {
            Ok(owned) => self.sys.close(owned),
            // Another thread holds it: the fd closes when that thread is done.
            Err(_) => Ok(()),
        }
    }
}

/// `poll` until an event or the deadline `timeout` from now; a signal
/// interrupting the wait does not shorten it.
fn poll_through_signals<S: Sys>(
    sys: &S,
    fd: &S::Fd,
    events: PollFlags,
    timeout: Duration,
) -> Result<PollFlags, Errno> {
    let deadline = Instant::now().checked_add(timeout);
    let mut left = timeout;
    loop {
        match sys.poll(fd, events, left) {
            Err(Errno::EINTR) => {
                left = match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()),
                    None => timeout,
                };
                if left.is_zero() {
                    return Ok(PollFlags::empty());
                }
            }
            other => return other,
        }
    }
}

/// A data fd another thread holds.
struct Shared<S: Sys> {
    sys: S,
    fd: Arc<S::Fd>,
}

impl<S: Sys> DataFdOps for Shared<S> {
    fn read(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        self.sys.read(&self.fd, buf)
    }

    fn write(&self, buf: &[u8]) -> Result<usize, Errno> {
        self.sys.write(&self.fd, buf)
    }

    fn poll(&self, events: PollFlags, timeout: Duration) -> Result<PollFlags, Errno> {
        poll_through_signals(&self.sys, &self.fd, events, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::kernel::fake::{FakeSys, FdKind};
    use crate::uapi::*;

    #[test]
    fn a_pipe_through_the_real_path() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (mut path, fd) = DataPath::over(r);
        assert_eq!(
            path.poll(fd, PollFlags::POLLIN, Duration::from_millis(1))
                .unwrap(),
            PollFlags::empty()
        );
        nix::unistd::write(&w, b"stream").unwrap();
        assert!(path
            .poll(fd, PollFlags::POLLIN, Duration::from_secs(5))
            .unwrap()
            .contains(PollFlags::POLLIN));
        let mut buf = [0u8; 4];
        assert_eq!(path.read(fd, &mut buf), Ok(4));
        assert_eq!(&buf, b"stre");
        assert_eq!(path.cloexec(fd), Ok(true));
        assert_eq!(path.pread(fd, &mut buf, 0), Err(Errno::ESPIPE));
        // Precopy info on a pipe: ENOTTY, and the short argument was padded.
        let mut info = VfioPrecopyInfo {
            argsz: 24,
            ..Default::default()
        }
        .to_bytes();
        assert_eq!(
            path.ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut info),
            Err(Errno::ENOTTY)
        );
        assert_eq!(path.read(fd + 1000, &mut buf), Err(Errno::EBADF));
        assert_eq!(path.close(fd), Ok(()));
        assert_eq!(path.close(fd), Err(Errno::EBADF));
        assert_eq!(path.read(fd, &mut buf), Err(Errno::EBADF));
    }

    #[test]
    fn a_shared_fd_serves_another_thread_and_outlives_close() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (mut path, fd) = DataPath::over(r);
        let shared = path.share(fd).unwrap();
        assert_eq!(path.share(fd + 1000).err(), Some(Errno::EBADF));
        // Our number is gone; the other thread's fd stays open until it is done.
        assert_eq!(path.close(fd), Ok(()));
        assert!(!path.owns(fd));
        nix::unistd::write(&w, b"multifd").unwrap();
        let reader = std::thread::spawn(move || {
            assert!(shared
                .poll(PollFlags::POLLIN, Duration::from_secs(60))
                .unwrap()
                .contains(PollFlags::POLLIN));
            let mut buf = [0u8; 16];
            let n = shared.read(&mut buf).unwrap();
            buf[..n].to_vec()
        });
        assert_eq!(reader.join().unwrap(), b"multifd");
    }

    #[test]
    fn unknown_fds_never_reach_the_system() {
        let sys = FakeSys::new("/nonexistent");
        let path = DataPath::new(sys.clone());
        let mut buf = [0u8; 8];
        assert_eq!(path.read(5, &mut buf), Err(Errno::EBADF));
        assert_eq!(path.write(5, &buf), Err(Errno::EBADF));
        assert_eq!(path.pread(5, &mut buf, 0), Err(Errno::EBADF));
        assert_eq!(path.pwrite(5, &buf, 0), Err(Errno::EBADF));
        assert_eq!(
            path.poll(5, PollFlags::POLLIN, Duration::ZERO),
            Err(Errno::EBADF)
        );
        assert_eq!(
            path.ioctl(5, VFIO_MIG_GET_PRECOPY_INFO, &mut buf),
            Err(Errno::EBADF)
        );
        assert_eq!(path.cloexec(5), Err(Errno::EBADF));
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn poll_survives_signals_and_ioctls_get_room() {
        let sys = FakeSys::new("/nonexistent");
        let fd = sys.data_fd(b"abc".to_vec());
        let mut path = DataPath::new(sys.clone());
        let fd = path.insert(fd);
        sys.interrupt_next_polls(2);
        assert_eq!(
            path.poll(fd, PollFlags::POLLIN, Duration::from_secs(1)),
            Ok(PollFlags::POLLIN)
        );
        let mut info = VfioPrecopyInfo {
            argsz: 24,
            ..Default::default()
        }
        .to_bytes();
        path.ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut info)
            .unwrap();
        assert_eq!(VfioPrecopyInfo::from_bytes(&info).initial_bytes, 3);
        assert_eq!(sys.last_arg_len(), arg::GENERIC_ARG_BYTES);
        assert!(path.owns(fd));
        drop(path);
        assert_eq!(sys.open_fds(FdKind::Data), 0);
    }
}
