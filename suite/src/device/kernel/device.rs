//! An open VFIO device: the [`Device`] operations as system calls on its
//! fds.
#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::OFlag;

use crate::device::{DataFd, Device, DeviceDescription, FeatureRequest, PollFlags, SharedDataFd};
use crate::uapi::*;

use super::arg::{self, FeatureCall};
use super::data::DataPath;
use super::sys::{Mapping, Pointee, Sys};
use crate::device::RegionInfo;

/// How the device fd was obtained, and what has to stay open for it.
pub enum Reach<S: Sys> {
    /// GET_DEVICE_FD on a group set to a container. Field order is drop
    /// order: the group leaves its container before the container closes.
    Group {
        /// The device name, NUL-terminated.
        name: Vec<u8>,
        group: S::Fd,
        container: S::Fd,
    },
    /// A device cdev bound to an iommufd and attached to the IOAS `ioas`
    /// (none for a no-IOMMU device, which has nothing to attach).
    Cdev {
        path: PathBuf,
        iommufd: S::Fd,
        ioas: Option<u32>,
    },
}

/// A VFIO device opened through real (or, in tests, doubled) fds.
pub struct KernelDevice<S: Sys> {
    // Field order is drop order: data fds, mappings, the device, then what
    // reached it (group, then container; or the iommufd).
    data: DataPath<S>,
    areas: Vec<MmapArea<S>>,
    device: Option<S::Fd>,
    reach: Reach<S>,
    desc: DeviceDescription,
    sys: S,
}

/// A sparse-mmap area of the v1 migration region, as region info offered
/// it: accesses inside it go through a mapping (made at the first one)
/// instead of pread/pwrite, as QEMU's do.
struct MmapArea<S: Sys> {
    /// Device fd offset of its first byte.
    start: u64,
    len: u64,
    map: Option<S::Map>,
}

impl<S: Sys> MmapArea<S> {
    /// The offset inside the area of an access of `n` bytes at `offset`,
    /// if it lies wholly inside.
    fn index(&self, offset: u64, n: usize) -> Option<usize> {
        let end = offset.checked_add(n as u64)?;
        (offset >= self.start && end <= self.start + self.len)
            .then(|| usize::try_from(offset - self.start).ok())
            .flatten()
    }
}

/// The step of attaching a cdev that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdevStep {
    Open,
    Bind,
    Attach,
}

/// VFIO_GROUP_GET_DEVICE_FD: a new device fd for `name` (NUL-terminated).
pub fn get_device_fd<S: Sys>(sys: &S, group: &S::Fd, name: &[u8]) -> Result<S::Fd, Errno> {
    let mut arg = name.to_vec();
    let raw = sys.ioctl(group, VFIO_GROUP_GET_DEVICE_FD, &mut arg, Pointee::None)?;
    sys.adopt(raw)
}

/// Opens a device cdev, binds it to `iommufd` and attaches it to `ioas`.
/// A no-IOMMU device (`ioas` None) is not attached: its `attach_ioas`
/// WARNs (vfio_iommufd_physical_attach_ioas()).
pub fn attach_cdev<S: Sys>(
    sys: &S,
    path: &std::path::Path,
    iommufd: &S::Fd,
    ioas: Option<u32>,
) -> Result<S::Fd, (CdevStep, Errno)> {
    let fd = sys
        .open(path, OFlag::O_RDWR | OFlag::O_CLOEXEC)
        .map_err(|e| (CdevStep::Open, e))?;
    let mut bind = VfioDeviceBindIommufd {
        argsz: size_u32(VfioDeviceBindIommufd::SIZE),
        flags: 0,
        iommufd: iommufd.as_raw_fd(),
        out_devid: 0,
    }
    .to_bytes();
    sys.ioctl(&fd, VFIO_DEVICE_BIND_IOMMUFD, &mut bind, Pointee::None)
        .map_err(|e| (CdevStep::Bind, e))?;
    if let Some(pt_id) = ioas {
        let mut attach = VfioDeviceAttachIommufdPt {
            argsz: size_u32(VfioDeviceAttachIommufdPt::SIZE),
            flags: 0,
            pt_id,
        }
        .to_bytes();
        sys.ioctl(
            &fd,
            VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            &mut attach,
            Pointee::None,
        )
        .map_err(|e| (CdevStep::Attach, e))?;
    }
    Ok(fd)
}

/// Struct sizes as `argsz` values.
pub fn size_u32(size: usize) -> u32 {
    u32::try_from(size).unwrap_or(u32::MAX)
}

impl<S: Sys> KernelDevice<S> {
    pub fn new(sys: S, desc: DeviceDescription, reach: Reach<S>, device: S::Fd) -> KernelDevice<S> {
        KernelDevice {
            data: DataPath::new(sys.clone()),
            areas: Vec::new(),
            device: Some(device),
            reach,
            desc,
            sys,
        }
    }

    /// The device fd; EBADF after [`Device::close_device`].
    fn device(&self) -> Result<&S::Fd, Errno> {
        self.device.as_ref().ok_or(Errno::EBADF)
    }

    /// Remembers the sparse-mmap areas of a v1 migration region whose info
    /// the driver just returned in `buf`.
    fn offer_areas(&mut self, buf: &[u8]) {
        if buf.len() < VfioRegionInfo::SIZE {
            return;
        }
        let Ok(region) = RegionInfo::parse(buf) else {
            return;
        };
        if !region.is_v1_migration() {
            return;
        }
        for (offset, len) in region.sparse_mmap_areas() {
            let Some(start) = region.info.offset.checked_add(offset) else {
                continue;
            };
            if len > 0 && !self.areas.iter().any(|a| a.start == start && a.len == len) {
                self.areas.push(MmapArea {
                    start,
                    len,
                    map: None,
                });
            }
        }
    }

    /// The mapped area an access of `n` bytes at `offset` falls in, and the
    /// offset inside it; mapping the area on first use. A driver that
    /// offers an area and then refuses to map it answers with its errno.
    fn mapped(&mut self, offset: u64, n: usize) -> Result<Option<(&mut S::Map, usize)>, Errno> {
        let Some(i) = self.areas.iter().position(|a| a.index(offset, n).is_some()) else {
            return Ok(None);
        };
        let device = self.device.as_ref().ok_or(Errno::EBADF)?;
        let area = &mut self.areas[i];
        let at = area.index(offset, n).expect("found above");
        if area.map.is_none() {
            let len = usize::try_from(area.len).map_err(|_| Errno::ENOMEM)?;
            area.map = Some(self.sys.mmap(device, area.start, len)?);
        }
        Ok(area.map.as_mut().map(|m| (m, at)))
    }

    /// Whether `raw` is an fd this device already owns.
    fn holds(&self, raw: RawFd) -> bool {
        let reach = match &self.reach {
            Reach::Group {
                group, container, ..
            } => vec![group.as_raw_fd(), container.as_raw_fd()],
            Reach::Cdev { iommufd, .. } => vec![iommufd.as_raw_fd()],
        };
        self.data.owns(raw)
            || reach.contains(&raw)
            || self.device.as_ref().is_some_and(|d| d.as_raw_fd() == raw)
    }
}

impl<S: Sys> Device for KernelDevice<S> {
    fn description(&self) -> &DeviceDescription {
        &self.desc
    }

    fn feature(&mut self, req: &mut FeatureRequest) -> Result<(), Errno> {
        let device = self.device()?;
        let mut call = FeatureCall::new(req)?;
        let result = {
            let (buf, pointee) = call.parts(&mut req.bitmap);
            self.sys.ioctl(device, VFIO_DEVICE_FEATURE, buf, pointee)
        };
        // The fd number is read from what the kernel wrote, not from
        // `req.data`, which may be too short to hold it.
        let opens_session = result.is_ok()
            && req.feature() == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
            && req.flags & (VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE)
                == VFIO_DEVICE_FEATURE_SET;
        let data_fd = VfioDeviceFeatureMigState::from_bytes(call.payload()).data_fd;
        call.finish(req);
        result?;
        if opens_session && data_fd >= 0 && !self.holds(data_fd) {
            let fd = self.sys.adopt(data_fd)?;
            self.data.insert(fd);
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.sys
            .ioctl_int(self.device()?, VFIO_DEVICE_RESET, 0)
            .map(drop)
    }

    fn device_info_raw(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        let device = self.device()?;
        let need = arg::framed_len(buf, VfioDeviceInfo::SIZE);
        arg::with_room(buf, need, |b| {
            self.sys
                .ioctl(device, VFIO_DEVICE_GET_INFO, b, Pointee::None)
        })?
        .map(drop)
    }

    fn region_info_raw(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
        let device = self.device()?;
        let need = arg::framed_len(buf, VfioRegionInfo::SIZE);
        arg::with_room(buf, need, |b| {
            self.sys
                .ioctl(device, VFIO_DEVICE_GET_REGION_INFO, b, Pointee::None)
        })??;
        self.offer_areas(buf);
        Ok(())
    }

    fn region_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        if let Some((map, at)) = self.mapped(offset, buf.len())? {
            map.read_at(at, buf)?;
            return Ok(buf.len());
        }
        self.sys.pread(self.device()?, buf, offset)
    }

    fn region_write(&mut self, offset: u64, buf: &[u8]) -> Result<usize, Errno> {
        if let Some((map, at)) = self.mapped(offset, buf.len())? {
            map.write_at(at, buf)?;
            return Ok(buf.len());
        }
        self.sys.pwrite(self.device()?, buf, offset)
    }

    fn data_read(&mut self, fd: DataFd, buf: &mut [u8]) -> Result<usize, Errno> {
        self.data.read(fd, buf)
    }

    fn data_write(&mut self, fd: DataFd, buf: &[u8]) -> Result<usize, Errno> {
        self.data.write(fd, buf)
    }

    fn data_pread(&mut self, fd: DataFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        self.data.pread(fd, buf, offset)
    }

    fn data_pwrite(&mut self, fd: DataFd, buf: &[u8], offset: u64) -> Result<usize, Errno> {
        self.data.pwrite(fd, buf, offset)
    }

    fn data_poll(
        &mut self,
        fd: DataFd,
        events: PollFlags,
        timeout: Duration,
    ) -> Result<PollFlags, Errno> {
        self.data.poll(fd, events, timeout)
    }

    fn data_ioctl(&mut self, fd: DataFd, request: u64, arg: &mut [u8]) -> Result<i32, Errno> {
        self.data.ioctl(fd, request, arg)
    }

    fn data_cloexec(&mut self, fd: DataFd) -> Result<bool, Errno> {
        self.data.cloexec(fd)
    }

    fn data_close(&mut self, fd: DataFd) -> Result<(), Errno> {
        self.data.close(fd)
    }

    fn share_data_fd(&mut self, fd: DataFd) -> Result<SharedDataFd, Errno> {
        self.data.share(fd)
    }

    fn close_device(&mut self) -> Result<(), Errno> {
        let device = self.device.take().ok_or(Errno::EBADF)?;
        // A new open may back its areas anew; they are offered again.
        self.areas.clear();
        self.sys.close(device)
    }

    fn reopen(&mut self) -> Result<(), Errno> {
        self.areas.clear();
        if let Some(device) = self.device.take() {
            self.sys.close(device)?;
        }
        let device = match &self.reach {
            Reach::Group { name, group, .. } => get_device_fd(&self.sys, group, name)?,
            Reach::Cdev {
                path,
                iommufd,
                ioas,
            } => attach_cdev(&self.sys, path, iommufd, *ioas).map_err(|(_, e)| e)?,
        };
        self.device = Some(device);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::kernel::fake::{FakeSys, FdKind, Lab, BDF, V1_AREA};
    use crate::device::DeviceExt;

    fn opened() -> (Lab, KernelDevice<FakeSys>) {
        let lab = Lab::new();
        let dev = lab.open(BDF).unwrap();
        (lab, dev)
    }

    fn last_feature(lab: &Lab) -> Vec<u8> {
        lab.sys.kernel().features.last().unwrap().bytes.clone()
    }

    #[test]
    fn feature_calls_carry_header_payload_and_padding() {
        let (lab, mut dev) = opened();
        assert_eq!(
            dev.migration_flags().unwrap().0,
            VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY
        );
        let bytes = last_feature(&lab);
        assert_eq!(get_u32(&bytes, 0), 16);
        assert_eq!(
            get_u32(&bytes, 4),
            VFIO_DEVICE_FEATURE_MIGRATION | VFIO_DEVICE_FEATURE_GET
        );
        assert!(bytes.len() >= 8 + 32);

        // Framing errors reach the driver as written.
        let mut req = FeatureRequest {
            argsz: 4,
            flags: VFIO_DEVICE_FEATURE_MIGRATION | VFIO_DEVICE_FEATURE_GET,
            ..Default::default()
        };
        assert_eq!(dev.feature(&mut req), Err(Errno::EINVAL));
        assert_eq!(get_u32(&last_feature(&lab), 0), 4);
        // An argsz beyond the data gets zeroed room for all of it.
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
            VFIO_DEVICE_FEATURE_GET,
            Vec::new(),
        );
        req.argsz = 1000;
        dev.feature(&mut req).unwrap();
        assert_eq!(last_feature(&lab).len(), 1000);
        assert!(req.data.is_empty());
        assert_eq!(dev.stop_copy_length(), Ok(12));
        assert_eq!(
            dev.probe_feature(
                VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                VFIO_DEVICE_FEATURE_SET
            ),
            Ok(())
        );
        assert_eq!(dev.probe_feature(99, 0), Err(Errno::ENOTTY));
    }

    #[test]
    fn a_failed_set_copies_the_struct_back() {
        let (_lab, mut dev) = opened();
        let result = dev.set_state(9);
        assert_eq!(result.result, Err(Errno::EINVAL));
        assert_eq!((result.device_state, result.data_fd), (9, -1));
        assert_eq!(dev.get_state(), Ok(MigState::Running));
    }

    #[test]
    fn data_fds_are_owned_read_and_closed() {
        let (lab, mut dev) = opened();
        let stop = dev.set_state(MigState::Stop.raw());
        assert_eq!((stop.result, stop.data_fd), (Ok(()), -1));
        let copy = dev.set_state(MigState::StopCopy.raw());
        assert_eq!(copy.result, Ok(()));
        let fd = copy.data_fd;
        assert!(fd >= 0);
        assert_eq!(lab.sys.open_fds(FdKind::Data), 1);
        assert_eq!(dev.data_cloexec(fd), Ok(true));
        assert_eq!(
            dev.data_poll(fd, PollFlags::POLLIN, Duration::from_secs(1)),
            Ok(PollFlags::POLLIN)
        );
        let mut buf = [0u8; 7];
        assert_eq!(dev.data_read(fd, &mut buf), Ok(7));
        assert_eq!(&buf, b"device ");
        assert_eq!(dev.data_read(fd, &mut buf), Ok(5));
        assert_eq!(dev.data_read(fd, &mut buf), Ok(0));
        assert_eq!(dev.data_pread(fd, &mut buf, 0), Err(Errno::ESPIPE));
        assert_eq!(dev.data_pwrite(fd, &buf, 0), Err(Errno::ESPIPE));

        // Numbers we do not own never reach the system.
        let before = lab.sys.calls().len();
        assert_eq!(dev.data_read(fd + 1, &mut buf), Err(Errno::EBADF));
        assert_eq!(dev.data_close(fd + 1), Err(Errno::EBADF));
        assert_eq!(dev.data_cloexec(-1), Err(Errno::EBADF));
        assert_eq!(lab.sys.calls().len(), before);

        assert_eq!(dev.data_close(fd), Ok(()));
        assert_eq!(lab.sys.open_fds(FdKind::Data), 0);
        assert_eq!(dev.data_read(fd, &mut buf), Err(Errno::EBADF));
    }

    #[test]
    fn resuming_writes_and_precopy_info() {
        let (lab, mut dev) = opened();
        dev.set_state(MigState::Stop.raw()).result.unwrap();
        let resume = dev.set_state(MigState::Resuming.raw());
        assert_eq!(dev.data_write(resume.data_fd, b"abc"), Ok(3));
        assert_eq!(lab.sys.written(), b"abc");
        dev.reset().unwrap();
        assert_eq!(dev.get_state(), Ok(MigState::Running));
        let pre = dev.set_state(MigState::PreCopy.raw());
        let info = dev.precopy_info(pre.data_fd).unwrap();
        assert_eq!((info.initial_bytes, info.dirty_bytes), (12, 0));
        assert_eq!(
            dev.data_ioctl(pre.data_fd, 0x3b99, &mut [0u8; 8]),
            Err(Errno::ENOTTY)
        );
    }

    #[test]
    fn drop_closes_data_fds_device_group_container_in_order() {
        let (lab, mut dev) = opened();
        dev.set_state(MigState::Stop.raw()).result.unwrap();
        dev.set_state(MigState::StopCopy.raw()).result.unwrap();
        drop(dev);
        let closed = lab.sys.kernel().closed.clone();
        assert_eq!(
            closed,
            [
                FdKind::Data,
                FdKind::Device,
                FdKind::Group,
                FdKind::Container
            ]
        );
    }

    #[test]
    fn close_device_keeps_data_fds_and_reopen_gets_a_fresh_fd() {
        let (lab, mut dev) = opened();
        dev.set_state(MigState::Stop.raw()).result.unwrap();
        let fd = dev.set_state(MigState::StopCopy.raw()).data_fd;
        dev.close_device().unwrap();
        assert_eq!(dev.close_device(), Err(Errno::EBADF));
        assert_eq!(dev.reset(), Err(Errno::EBADF));
        assert_eq!(dev.region_read(0, &mut [0u8; 4]), Err(Errno::EBADF));
        let mut buf = [0u8; 4];
        assert_eq!(dev.data_read(fd, &mut buf), Ok(4));
        dev.reopen().unwrap();
        assert_eq!(lab.sys.kernel().devices[BDF].opens, 2);
        assert_eq!(lab.sys.open_fds(FdKind::Device), 1);
        // Reopening an open device replaces its fd.
        dev.reopen().unwrap();
        assert_eq!(lab.sys.open_fds(FdKind::Device), 1);
        assert_eq!(dev.region_write(0x10, &[1, 2]), Ok(2));
        assert_eq!(
            lab.sys.kernel().devices[BDF].region_writes,
            [(0x10, vec![1, 2])]
        );
        assert_eq!(dev.region_read(0x20, &mut buf), Ok(4));
        assert_eq!(buf, [0xab; 4]);
    }

    #[test]
    fn region_info_grows_for_capabilities() {
        let (lab, mut dev) = opened();
        let plain = dev.region_info(0).unwrap();
        assert!(plain.caps.is_empty());
        let calls = lab.sys.calls().len();
        let region = dev.region_info(1).unwrap();
        assert_eq!(
            lab.sys.calls().len(),
            calls + 2,
            "asked again with the argsz the driver wanted"
        );
        assert_eq!(region.type_cap(), Some((3, 1)));
        assert_eq!(region.info.offset, 1 << 40);
        assert_eq!(dev.find_migration_region().unwrap().unwrap().info.index, 1);
        assert_eq!(dev.region_info(5).err(), Some(Errno::EINVAL));

        // A buffer shorter than its argsz (or the struct) is padded.
        let mut short = vec![0u8; 12];
        put_u32(&mut short, 0, 48);
        put_u32(&mut short, 8, 1);
        dev.region_info_raw(&mut short).unwrap();
        assert_eq!(lab.sys.last_arg_len(), 48);
        assert_eq!(get_u32(&short, 12), 0, "cap_offset is past our 12 bytes");
        let mut info = vec![0u8; 4];
        put_u32(&mut info, 0, 4);
        dev.device_info_raw(&mut info).unwrap();
        assert_eq!(lab.sys.last_arg_len(), VfioDeviceInfo::SIZE);
        assert_eq!(dev.device_info().unwrap().num_regions, 2);
    }

    fn pread_calls(lab: &Lab) -> usize {
        lab.sys
            .calls()
            .iter()
            .filter(|c| c.starts_with("pread") || c.starts_with("pwrite"))
            .count()
    }

    #[test]
    fn the_v1_data_area_goes_through_mmap_when_offered() {
        let (lab, mut dev) = opened();
        let region = dev.find_migration_region().unwrap().unwrap();
        assert_eq!(region.sparse_mmap_areas(), [(4096, 4096)]);
        lab.sys.kernel().devices.get_mut(BDF).unwrap().area[..4].copy_from_slice(b"v1v1");
        let before = pread_calls(&lab);
        let mut buf = [0u8; 4];
        assert_eq!(dev.region_read(V1_AREA, &mut buf), Ok(4));
        assert_eq!(&buf, b"v1v1");
        // Odd offsets and lengths inside the area, reads and writes.
        assert_eq!(dev.region_write(V1_AREA + 4093, b"xyz"), Ok(3));
        assert_eq!(dev.region_read(V1_AREA + 4094, &mut buf[..2]), Ok(2));
        assert_eq!(&buf[..2], b"yz");
        assert_eq!(pread_calls(&lab), before, "no pread/pwrite inside the area");
        let maps = |lab: &Lab| {
            lab.sys
                .calls()
                .iter()
                .filter(|c| c.starts_with("mmap"))
                .count()
        };
        assert_eq!(maps(&lab), 1, "mapped once, at first use");
        // The header, and an access reaching past the area, use pread.
        assert_eq!(dev.region_read(1 << 40, &mut buf), Ok(4));
        assert_eq!(dev.region_read(V1_AREA + 4094, &mut buf), Ok(4));
        assert_eq!(pread_calls(&lab), before + 2);
        // After a reopen, nothing is mapped until the region is asked again.
        dev.reopen().unwrap();
        assert_eq!(dev.region_read(V1_AREA, &mut buf), Ok(4));
        assert_eq!(&buf, b"v1v1");
        assert_eq!(maps(&lab), 1);
        dev.find_migration_region().unwrap();
        assert_eq!(dev.region_read(V1_AREA + 4093, &mut buf[..3]), Ok(3));
        assert_eq!(&buf[..3], b"xyz");
        assert_eq!(maps(&lab), 2);
    }

    #[test]
    fn the_v1_data_area_goes_through_pread_without_mmap() {
        let (lab, mut dev) = opened();
        lab.sys.kernel().devices.get_mut(BDF).unwrap().mmap_offered = false;
        let region = dev.find_migration_region().unwrap().unwrap();
        assert!(region.sparse_mmap_areas().is_empty());
        let before = pread_calls(&lab);
        assert_eq!(dev.region_write(V1_AREA + 1, b"ab"), Ok(2));
        let mut buf = [0u8; 3];
        assert_eq!(dev.region_read(V1_AREA, &mut buf), Ok(3));
        assert_eq!(&buf, b"\0ab");
        assert_eq!(pread_calls(&lab), before + 2);
        assert!(!lab.sys.calls().iter().any(|c| c.starts_with("mmap")));
    }

    #[test]
    fn an_offered_area_the_driver_will_not_map_fails_the_access() {
        let (lab, mut dev) = opened();
        dev.find_migration_region().unwrap();
        // Offered when asked, refused when mapped.
        lab.sys.kernel().devices.get_mut(BDF).unwrap().mmap_offered = false;
        assert_eq!(dev.region_read(V1_AREA, &mut [0u8; 8]), Err(Errno::EINVAL));
        // A plain region's accesses are untouched.
        assert_eq!(dev.region_read(0x20, &mut [0u8; 8]), Ok(8));
    }

    #[test]
    fn dma_logging_pointers_reach_the_driver() {
        let (lab, mut dev) = opened();
        let control = VfioDeviceFeatureDmaLoggingControl {
            page_size: 4096,
            num_ranges: 2,
            reserved: 0,
            ranges: 0,
        };
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            VFIO_DEVICE_FEATURE_SET,
            control.to_bytes(),
        );
        req.ranges = vec![
            VfioDeviceFeatureDmaLoggingRange {
                iova: 0,
                length: 0x10000,
            },
            VfioDeviceFeatureDmaLoggingRange {
                iova: 0x100000,
                length: 0x1000,
            },
        ];
        dev.feature(&mut req).unwrap();
        let seen = lab.sys.kernel().features.last().unwrap().clone();
        assert_eq!(get_u64(&seen.bytes, 8 + 16), seen.pointee.0);
        assert_eq!(seen.pointee.1, 32);
        assert_eq!(lab.sys.kernel().devices[BDF].logged_ranges, req.ranges);
        let back = VfioDeviceFeatureDmaLoggingControl::from_bytes(&req.data);
        assert_eq!(
            back.page_size, 8192,
            "the driver's page size is copied back"
        );
        assert_eq!(back.ranges, 0, "our pointer is not");

        // num_ranges beyond the ranges given: zero-filled entries.
        put_u32(&mut req.data, 8, 3);
        dev.feature(&mut req).unwrap();
        assert_eq!(lab.sys.kernel().devices[BDF].logged_ranges.len(), 3);

        let report = VfioDeviceFeatureDmaLoggingReport {
            iova: 0,
            length: 100 * 4096,
            page_size: 4096,
            bitmap: 0,
        };
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
            VFIO_DEVICE_FEATURE_GET,
            report.to_bytes(),
        );
        dev.feature(&mut req).unwrap();
        let seen = lab.sys.kernel().features.last().unwrap().clone();
        assert_eq!(get_u64(&seen.bytes, 8 + 24), seen.pointee.0);
        assert_eq!(seen.pointee.1, req.bitmap.len() * 8);
        assert_eq!(req.bitmap[0], 1);
        assert_eq!(req.bitmap[1], 1 << (99 - 64));
        assert_eq!(get_u64(&req.data, 24), 0);

        // A bitmap we cannot give: refused here, the driver never sees it.
        let calls = lab.sys.calls().len();
        put_u64(&mut req.data, 8, 0);
        assert_eq!(dev.feature(&mut req), Err(Errno::E2BIG));
        assert_eq!(lab.sys.calls().len(), calls);
    }
}
