//! The double's answers to the backend's system calls, and its mappings of
//! a v1 data area.
use super::*;

/// The part of a device's data area an access of `n` bytes at `offset`
/// covers, if it lies inside.
fn area_range(offset: u64, n: usize) -> Option<std::ops::Range<usize>> {
    let at = usize::try_from(offset.checked_sub(V1_AREA)?).ok()?;
    (at + n <= V1_AREA_LEN).then_some(at..at + n)
}

/// A mapping of a device's data area: memory accesses, no system calls.
#[derive(Debug)]
pub struct FakeMap {
    kernel: Arc<Mutex<Kernel>>,
    device: String,
    at: usize,
    len: usize,
}

impl FakeMap {
    fn range(&self, at: usize, n: usize) -> Result<std::ops::Range<usize>, Errno> {
        match at.checked_add(n) {
            Some(end) if end <= self.len => Ok(self.at + at..self.at + end),
            _ => Err(Errno::EINVAL),
        }
    }
}

impl Mapping for FakeMap {
    fn read_at(&self, at: usize, buf: &mut [u8]) -> Result<(), Errno> {
        let r = self.range(at, buf.len())?;
        buf.copy_from_slice(&lock(&self.kernel).device_mut(&self.device).area[r]);
        Ok(())
    }

    fn write_at(&mut self, at: usize, buf: &[u8]) -> Result<(), Errno> {
        let r = self.range(at, buf.len())?;
        lock(&self.kernel).device_mut(&self.device).area[r].copy_from_slice(buf);
        Ok(())
    }
}

impl Sys for FakeSys {
    type Fd = FakeFd;
    type Map = FakeMap;

    /// Only the data area of an mmap-offering device maps (whole or in part).
    fn mmap(&self, fd: &FakeFd, offset: u64, len: usize) -> Result<FakeMap, Errno> {
        let mut k = self.kernel();
        k.calls.push(format!("mmap {} {offset:#x} {len}", fd.raw));
        let Some(File::Device { usable: true, name }) = k.files.get(&fd.raw) else {
            return Err(Errno::EBADF);
        };
        let device = name.clone();
        let range = area_range(offset, len).filter(|r| !r.is_empty());
        match range {
            Some(r) if k.device_mut(&device).mmap_offered => Ok(FakeMap {
                kernel: self.kernel.clone(),
                device,
                at: r.start,
                len,
            }),
            _ => Err(Errno::EINVAL),
        }
    }

    fn open(&self, path: &Path, flags: OFlag) -> Result<FakeFd, Errno> {
        let raw = self.kernel().open(path, flags)?;
        Ok(self.fd(raw))
    }

    fn close(&self, fd: FakeFd) -> Result<(), Errno> {
        self.kernel().calls.push(format!("close {}", fd.raw));
        drop(fd);
        Ok(())
    }

    fn adopt(&self, raw: RawFd) -> Result<FakeFd, Errno> {
        if raw < 0 {
            return Err(Errno::EBADF);
        }
        Ok(self.fd(raw))
    }

    fn ioctl(
        &self,
        fd: &FakeFd,
        request: u64,
        arg: &mut [u8],
        pointee: Pointee<'_>,
    ) -> Result<i32, Errno> {
        self.kernel().ioctl(fd.raw, request, arg, pointee)
    }

    fn ioctl_int(&self, fd: &FakeFd, request: u64, value: u64) -> Result<i32, Errno> {
        self.kernel().ioctl_int(fd.raw, request, value)
    }

    fn read(&self, fd: &FakeFd, buf: &mut [u8]) -> Result<usize, Errno> {
        let mut k = self.kernel();
        k.calls.push(format!("read {}", fd.raw));
        match k.files.get_mut(&fd.raw) {
            Some(File::Data { stream, pos, .. }) => {
                let n = buf.len().min(stream.len() - *pos);
                buf[..n].copy_from_slice(&stream[*pos..*pos + n]);
                *pos += n;
                Ok(n)
            }
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::EBADF),
        }
    }

    fn write(&self, fd: &FakeFd, buf: &[u8]) -> Result<usize, Errno> {
        let mut k = self.kernel();
        k.calls.push(format!("write {}", fd.raw));
        match k.files.get_mut(&fd.raw) {
            Some(File::Data { written, .. }) => {
                written.extend_from_slice(buf);
                Ok(buf.len())
            }
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::EBADF),
        }
    }

    fn pread(&self, fd: &FakeFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        let mut k = self.kernel();
        k.calls.push(format!("pread {} {offset:#x}", fd.raw));
        match k.files.get(&fd.raw) {
            Some(File::Device { usable: true, name }) => {
                let name = name.clone();
                match area_range(offset, buf.len()) {
                    Some(r) => buf.copy_from_slice(&k.device_mut(&name).area[r]),
                    None => buf.fill(0xab),
                }
                Ok(buf.len())
            }
            Some(File::Data { .. }) => Err(Errno::ESPIPE),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::EBADF),
        }
    }

    fn pwrite(&self, fd: &FakeFd, buf: &[u8], offset: u64) -> Result<usize, Errno> {
        let mut k = self.kernel();
        k.calls.push(format!("pwrite {} {offset:#x}", fd.raw));
        let name = match k.files.get(&fd.raw) {
            Some(File::Device { usable: true, name }) => name.clone(),
            Some(File::Data { .. }) => return Err(Errno::ESPIPE),
            Some(_) => return Err(Errno::EINVAL),
            None => return Err(Errno::EBADF),
        };
        let dev = k.device_mut(&name);
        match area_range(offset, buf.len()) {
            Some(r) => dev.area[r].copy_from_slice(buf),
            None => dev.region_writes.push((offset, buf.to_vec())),
        }
        Ok(buf.len())
    }

    fn poll(&self, fd: &FakeFd, events: PollFlags, _timeout: Duration) -> Result<PollFlags, Errno> {
        let mut k = self.kernel();
        k.calls.push(format!("poll {}", fd.raw));
        if k.interrupts > 0 {
            k.interrupts -= 1;
            return Err(Errno::EINTR);
        }
        match k.files.get(&fd.raw) {
            // Data or end of stream: readable either way.
            Some(File::Data { .. }) => Ok(events & (PollFlags::POLLIN | PollFlags::POLLOUT)),
            Some(_) => Ok(PollFlags::POLLNVAL),
            None => Err(Errno::EBADF),
        }
    }

    fn cloexec(&self, fd: &FakeFd) -> Result<bool, Errno> {
        let k = self.kernel();
        let flags = k.fd_flags.get(&fd.raw).ok_or(Errno::EBADF)?;
        Ok(flags.contains(OFlag::O_CLOEXEC))
    }
}
