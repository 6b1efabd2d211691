//! The simulator as several threads see it: one driver state behind a
//! lock (a driver's `migf->lock` and state mutex in one), data fds that
//! other threads may use while the owner keeps calling the device, and a
//! poll that sleeps without the lock and wakes when the device changes
//! (a driver's `wake_up_interruptible()` on its poll queue).
//!
//! The race faults live here too: a per-thread stream position (an f_pos
//! read and written outside the lock, as in the qat resume-write race, in
//! its one deterministic extreme: every thread keeps its own) and a save
//! session tied to the thread that set the state.
#![forbid(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use super::stream::{Loader, Saver};
use super::{Core, SimConfig};
use crate::device::{
    DataFd, DataFdOps, Device, DeviceDescription, FeatureRequest, PollFlags, SharedDataFd,
};
use crate::uapi::Errno;

/// The simulated device: the driver state shared with the data-fd handles
/// other threads hold.
pub struct Simulator {
    desc: DeviceDescription,
    shared: Arc<Shared>,
}

struct Shared {
    core: Mutex<Core>,
    /// Notified after every call that may change what a poll reports.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panicking thread leaves the state as a crashed driver would:
        // still there; the case reports the panic.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One call on the device, then a wake-up of the pollers.
    fn call<T>(&self, f: impl FnOnce(&mut Core) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_all();
        out
    }

    /// `poll` until `events` (or an error/hangup) or `timeout`, sleeping
    /// without the lock.
    fn poll(&self, fd: DataFd, events: PollFlags, timeout: Duration) -> Result<PollFlags, Errno> {
        let deadline = Instant::now().checked_add(timeout);
        let mut core = self.lock();
        loop {
            let ready = core.data_poll(fd, events, Duration::ZERO)?;
            let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            if !ready.is_empty() || left.is_zero() {
                drop(core);
                self.changed.notify_all();
                return Ok(ready);
            }
            core = self
                .changed
                .wait_timeout(core, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Simulator {
    pub fn new(spec: &str, config: SimConfig) -> Simulator {
        let core = Core::new(spec, config);
        Simulator {
            desc: core.description().clone(),
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                changed: Condvar::new(),
            }),
        }
    }
}

#[cfg(test)]
impl Simulator {
    /// The driver state, for tests of what the uAPI does not show.
    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        self.shared.lock()
    }
}

impl Device for Simulator {
    fn description(&self) -> &DeviceDescription {
        &self.desc
    }

    fn feature(&mut self, req: &mut FeatureRequest) -> Result<(), Errno> {
        self.shared.call(|c| c.feature(req))
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.shared.call(|c| c.reset())
    }

    fn device_info_raw(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        self.shared.call(|c| c.device_info_raw(buf))
    }

    fn region_info_raw(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        self.shared.call(|c| c.region_info_raw(buf))
    }

    fn region_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        self.shared.call(|c| c.region_read(offset, buf))
    }

    fn region_write(&mut self, offset: u64, buf: &[u8]) -> Result<usize, Errno> {
        self.shared.call(|c| c.region_write(offset, buf))
    }

    fn data_read(&mut self, fd: DataFd, buf: &mut [u8]) -> Result<usize, Errno> {
        self.shared.call(|c| c.data_read(fd, buf))
    }

    fn data_write(&mut self, fd: DataFd, buf: &[u8]) -> Result<usize, Errno> {
        self.shared.call(|c| c.data_write(fd, buf))
    }

    fn data_pread(&mut self, fd: DataFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        self.shared.call(|c| c.data_pread(fd, buf, offset))
    }

    fn data_pwrite(&mut self, fd: DataFd, buf: &[u8], offset: u64) -> Result<usize, Errno> {
        self.shared.call(|c| c.data_pwrite(fd, buf, offset))
    }

    fn data_poll(
        &mut self,
        fd: DataFd,
        events: PollFlags,
        timeout: Duration,
    ) -> Result<PollFlags, Errno> {
        self.shared.poll(fd, events, timeout)
    }

    fn data_ioctl(&mut self, fd: DataFd, request: u64, arg: &mut [u8]) -> Result<i32, Errno> {
        self.shared.call(|c| c.data_ioctl(fd, request, arg))
    }

    fn data_cloexec(&mut self, fd: DataFd) -> Result<bool, Errno> {
        self.shared.call(|c| c.data_cloexec(fd))
    }

    fn data_close(&mut self, fd: DataFd) -> Result<(), Errno> {
        self.shared.call(|c| c.data_close(fd))
    }

    fn close_device(&mut self) -> Result<(), Errno> {
        self.shared.call(|c| c.close_device())
    }

    fn reopen(&mut self) -> Result<(), Errno> {
        self.shared.call(|c| c.reopen())
    }

    fn now(&self) -> Duration {
        self.shared.lock().now()
    }

    fn share_data_fd(&mut self, fd: DataFd) -> Result<SharedDataFd, Errno> {
        if !self.shared.lock().fds.contains_key(&fd) {
            return Err(Errno::EBADF);
        }
        Ok(Arc::new(SimDataFd {
            shared: Arc::clone(&self.shared),
            fd,
        }))
    }
}

/// A data fd another thread holds: the same file, the same driver state.
struct SimDataFd {
    shared: Arc<Shared>,
    fd: DataFd,
}

impl DataFdOps for SimDataFd {
    fn read(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        self.shared.call(|c| c.data_read(self.fd, buf))
    }

    fn write(&self, buf: &[u8]) -> Result<usize, Errno> {
        self.shared.call(|c| c.data_write(self.fd, buf))
    }

    fn poll(&self, events: PollFlags, timeout: Duration) -> Result<PollFlags, Errno> {
        self.shared.poll(self.fd, events, timeout)
    }
}

/// What the race faults keep of the current session.
#[derive(Default)]
pub(super) struct Racy {
    /// `state-tied-to-setting-thread`: the thread whose SET opened the
    /// saving session.
    pub setter: Option<ThreadId>,
    /// The first thread that read or wrote the session's fd: it uses the
    /// session's own stream position.
    pub first: Option<ThreadId>,
    /// `read-position-per-thread`: the stream as the session started, and
    /// every other reader's own copy of it.
    pub start: Option<Saver>,
    pub savers: Vec<(ThreadId, Saver)>,
    /// `write-position-per-thread`: every other writer's own parser.
    pub loaders: Vec<(ThreadId, Loader)>,
}

impl Racy {
    /// Whether the calling thread is the session's first user (and makes
    /// it so when nobody used it yet).
    pub fn is_first(&mut self) -> bool {
        let me = std::thread::current().id();
        *self.first.get_or_insert(me) == me
    }

    /// The calling thread's own saver, started from the session's start.
    pub fn saver(&mut self) -> Option<&mut Saver> {
        let me = std::thread::current().id();
        if !self.savers.iter().any(|(t, _)| *t == me) {
            let start = self.start.clone()?;
            self.savers.push((me, start));
        }
        self.savers
            .iter_mut()
            .find(|(t, _)| *t == me)
            .map(|(_, s)| s)
    }

    /// The calling thread's own loader, made by `fresh` on first use.
    pub fn loader(&mut self, fresh: impl FnOnce() -> Loader) -> &mut Loader {
        let me = std::thread::current().id();
        let at = match self.loaders.iter().position(|(t, _)| *t == me) {
            Some(at) => at,
            None => {
                self.loaders.push((me, fresh()));
                self.loaders.len() - 1
            }
        };
        &mut self.loaders[at].1
    }
}
