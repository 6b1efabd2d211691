//! Test doubles: [`FakeSys`], an in-memory /dev/vfio (container, groups,
//! devices, data fds, /dev/iommu) answering the backend's system calls the
//! way drivers/vfio/{container,group,vfio_main,device_cdev}.c do, and
//! [`Tree`], a temporary sysfs + /dev + /proc tree.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::fcntl::OFlag;

use crate::device::PollFlags;
use crate::uapi::*;

use super::device::KernelDevice;
use super::open::open_device;
use super::sys::{Mapping, Pointee, Sys};
use super::sysfs::Paths;
use crate::device::spec::{DeviceSpec, OpenError};

/// What an fd of the double is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Container,
    Group,
    Device,
    Data,
    Iommufd,
}

#[derive(Debug)]
enum File {
    Container {
        groups: Vec<u32>,
        iommu: Option<u64>,
    },
    Group(u32),
    /// A device fd; one from a cdev is usable once bound to an iommufd.
    Device {
        name: String,
        usable: bool,
    },
    Data {
        stream: Vec<u8>,
        pos: usize,
        written: Vec<u8>,
    },
    Iommufd,
}

impl File {
    fn kind(&self) -> FdKind {
        match self {
            File::Container { .. } => FdKind::Container,
            File::Group(_) => FdKind::Group,
            File::Device { .. } => FdKind::Device,
            File::Data { .. } => FdKind::Data,
            File::Iommufd => FdKind::Iommufd,
        }
    }
}

/// A group of the double.
#[derive(Debug, Default)]
pub struct FakeGroup {
    pub viable: bool,
    pub devices: Vec<String>,
    open: bool,
    container: Option<RawFd>,
}

/// A device of the double: a migration driver with STOP_COPY, P2P and
/// PRE_COPY, two regions and DMA logging. Region 1 is a v1 migration region
/// (type capability 3/1) of [`V1_REGION_SIZE`] bytes whose data area (the
/// second page) is offered by sparse mmap when `mmap_offered`.
#[derive(Debug)]
pub struct FakeDevice {
    pub state: u32,
    /// What a new data fd reads in a saving session.
    pub stream: Vec<u8>,
    /// Errno GET_DEVICE_FD (or BIND_IOMMUFD) fails with.
    pub open_error: Option<Errno>,
    pub logged_ranges: Vec<VfioDeviceFeatureDmaLoggingRange>,
    /// Bytes written through pwrite on the device fd.
    pub region_writes: Vec<(u64, Vec<u8>)>,
    pub opens: u32,
    pub mmap_offered: bool,
    /// The data area of region 1, seen by pread/pwrite and mappings alike.
    pub area: Vec<u8>,
}

/// Region 1 of a device of the double: a header page and a data area page.
pub const V1_REGION_SIZE: u64 = 8192;
/// Device fd offset of region 1's data area.
pub const V1_AREA: u64 = (1 << 40) + 4096;
const V1_AREA_LEN: usize = 4096;

/// One VFIO_DEVICE_FEATURE as the double received it.
#[derive(Debug, Clone)]
pub struct FeatureSeen {
    /// The whole argument buffer (header, payload, padding).
    pub bytes: Vec<u8>,
    /// Address and length in bytes of the memory passed along with it.
    pub pointee: (u64, usize),
}

#[derive(Debug, Default)]
pub struct Kernel {
    dev: PathBuf,
    next_fd: RawFd,
    files: BTreeMap<RawFd, File>,
    fd_flags: BTreeMap<RawFd, OFlag>,
    pub groups: BTreeMap<u32, FakeGroup>,
    pub devices: BTreeMap<String, FakeDevice>,
    /// `vfioN` → device name.
    pub cdevs: BTreeMap<String, String>,
    /// Errnos `open` fails with, by path.
    pub open_errors: BTreeMap<PathBuf, Errno>,
    pub api_version: i32,
    /// Answer to CHECK_EXTENSION(TYPE1v2).
    pub type1v2: bool,
    /// Every system call, in order: "open vfio/12", "ioctl Group 0x3b67" ...
    pub calls: Vec<String>,
    pub features: Vec<FeatureSeen>,
    /// Kinds of the fds closed, in order.
    pub closed: Vec<FdKind>,
    interrupts: u32,
    last_arg_len: usize,
}

#[derive(Debug, Clone)]
pub struct FakeSys {
    kernel: Arc<Mutex<Kernel>>,
}

/// An fd of the double; dropping it closes it.
#[derive(Debug)]
pub struct FakeFd {
    raw: RawFd,
    kernel: Arc<Mutex<Kernel>>,
}

impl AsRawFd for FakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw
    }
}

impl Drop for FakeFd {
    fn drop(&mut self) {
        lock(&self.kernel).release(self.raw);
    }
}

/// A failed assertion inside the double poisons the lock; later drops must
/// not panic again while unwinding.
fn lock(kernel: &Mutex<Kernel>) -> MutexGuard<'_, Kernel> {
    kernel.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeSys {
    /// A double whose nodes live under `dev` (`dev/vfio/vfio`, `dev/vfio/N`,
    /// `dev/vfio/devices/vfioN`, `dev/iommu`).
    pub fn new(dev: impl Into<PathBuf>) -> FakeSys {
        FakeSys {
            kernel: Arc::new(Mutex::new(Kernel {
                dev: dev.into(),
                next_fd: 100,
                type1v2: true,
                ..Kernel::default()
            })),
        }
    }

    pub fn kernel(&self) -> MutexGuard<'_, Kernel> {
        lock(&self.kernel)
    }

    /// Adds IOMMU group `group` holding `devices`.
    pub fn group(&self, group: u32, viable: bool, devices: &[&str]) {
        let mut k = self.kernel();
        k.groups.insert(
            group,
            FakeGroup {
                viable,
                devices: devices.iter().map(|d| d.to_string()).collect(),
                ..FakeGroup::default()
            },
        );
        for d in devices {
            k.devices.insert(
                d.to_string(),
                FakeDevice {
                    state: MigState::Running.raw(),
                    stream: b"device state".to_vec(),
                    open_error: None,
                    logged_ranges: Vec::new(),
                    region_writes: Vec::new(),
                    opens: 0,
                    mmap_offered: true,
                    area: vec![0; V1_AREA_LEN],
                },
            );
        }
    }

    /// A data fd outside any device, reading `stream`.
    pub fn data_fd(&self, stream: Vec<u8>) -> FakeFd {
        let raw = self.kernel().install(
            File::Data {
                stream,
                pos: 0,
                written: Vec::new(),
            },
            OFlag::O_CLOEXEC,
        );
        FakeFd {
            raw,
            kernel: self.kernel.clone(),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.kernel().calls.clone()
    }

    pub fn interrupt_next_polls(&self, n: u32) {
        self.kernel().interrupts = n;
    }

    /// Length of the last ioctl argument buffer.
    pub fn last_arg_len(&self) -> usize {
        self.kernel().last_arg_len
    }

    pub fn open_fds(&self, kind: FdKind) -> usize {
        self.kernel()
            .files
            .values()
            .filter(|f| f.kind() == kind)
            .count()
    }

    /// Bytes written to data fds still open.
    pub fn written(&self) -> Vec<u8> {
        self.kernel()
            .files
            .values()
            .flat_map(|f| match f {
                File::Data { written, .. } => written.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn fd(&self, raw: RawFd) -> FakeFd {
        FakeFd {
            raw,
            kernel: self.kernel.clone(),
        }
    }
}

impl Kernel {
    fn install(&mut self, file: File, flags: OFlag) -> RawFd {
        let raw = self.next_fd;
        self.next_fd += 1;
        self.files.insert(raw, file);
        self.fd_flags.insert(raw, flags);
        raw
    }

    fn release(&mut self, raw: RawFd) {
        self.fd_flags.remove(&raw);
        let Some(file) = self.files.remove(&raw) else {
            return;
        };
        self.closed.push(file.kind());
        if let File::Group(n) = file {
            let g = self.groups.get_mut(&n).expect("group of an open fd");
            g.open = false;
            if let Some(c) = g.container.take() {
                if let Some(File::Container { groups, .. }) = self.files.get_mut(&c) {
                    groups.retain(|x| *x != n);
                }
            }
        }
    }

    fn open(&mut self, path: &Path, flags: OFlag) -> Result<RawFd, Errno> {
        if let Some(e) = self.open_errors.get(path) {
            return Err(*e);
        }
        let rel = path.strip_prefix(&self.dev).map_err(|_| Errno::ENOENT)?;
        let rel = rel.to_string_lossy().into_owned();
        self.calls.push(format!("open {rel}"));
        let file = if rel == "vfio/vfio" {
            File::Container {
                groups: Vec::new(),
                iommu: None,
            }
        } else if rel == "iommu" {
            File::Iommufd
        } else if let Some(cdev) = rel.strip_prefix("vfio/devices/") {
            let name = self.cdevs.get(cdev).ok_or(Errno::ENOENT)?.clone();
            File::Device {
                name,
                usable: false,
            }
        } else if let Some(n) = rel.strip_prefix("vfio/") {
            let n: u32 = n
                .trim_start_matches("noiommu-")
                .parse()
                .map_err(|_| Errno::ENOENT)?;
            let g = self.groups.get_mut(&n).ok_or(Errno::ENODEV)?;
            if g.open {
                return Err(Errno::EBUSY);
            }
            g.open = true;
            File::Group(n)
        } else {
            return Err(Errno::ENOENT);
        };
        Ok(self.install(file, flags))
    }

    fn ioctl(
        &mut self,
        raw: RawFd,
        request: u64,
        arg: &mut [u8],
        pointee: Pointee<'_>,
    ) -> Result<i32, Errno> {
        self.last_arg_len = arg.len();
        let kind = self.files.get(&raw).ok_or(Errno::EBADF)?.kind();
        self.calls.push(format!("ioctl {kind:?} {request:#x}"));
        match kind {
            FdKind::Group => self.group_ioctl(raw, request, arg),
            FdKind::Device => self.device_ioctl(raw, request, arg, pointee),
            FdKind::Data => self.data_ioctl(raw, request, arg),
            FdKind::Iommufd => {
                if request != IOMMU_IOAS_ALLOC {
                    return Err(Errno::ENOTTY);
                }
                if get_u32(arg, 0) < 12 {
                    return Err(Errno::EINVAL);
                }
                put_u32(arg, 8, 7);
                Ok(0)
            }
            // The container takes integers only (container.c).
            FdKind::Container => Err(Errno::EINVAL),
        }
    }

    fn ioctl_int(&mut self, raw: RawFd, request: u64, value: u64) -> Result<i32, Errno> {
        let kind = self.files.get(&raw).ok_or(Errno::EBADF)?.kind();
        self.calls
            .push(format!("ioctl {kind:?} {request:#x} {value}"));
        let api_version = self.api_version;
        let type1v2 = self.type1v2;
        match self.files.get_mut(&raw) {
            Some(File::Container { groups, iommu }) => match request {
                VFIO_GET_API_VERSION => Ok(api_version),
                VFIO_CHECK_EXTENSION => Ok(i32::from(value == VFIO_TYPE1V2_IOMMU && type1v2)),
                VFIO_SET_IOMMU => {
                    // vfio_ioctl_set_iommu(): a group first, and only once.
                    if groups.is_empty() || iommu.is_some() {
                        return Err(Errno::EINVAL);
                    }
                    if value != VFIO_TYPE1V2_IOMMU || !type1v2 {
                        return Err(Errno::ENODEV);
                    }
                    *iommu = Some(value);
                    Ok(0)
                }
                _ => Err(Errno::EINVAL),
            },
            Some(File::Device { usable: true, name }) if request == VFIO_DEVICE_RESET => {
                let name = name.clone();
                self.device_mut(&name).state = MigState::Running.raw();
                Ok(0)
            }
            Some(File::Device { .. }) => Err(Errno::EINVAL),
            _ => Err(Errno::ENOTTY),
        }
    }

    fn group_ioctl(&mut self, raw: RawFd, request: u64, arg: &mut [u8]) -> Result<i32, Errno> {
        let Some(File::Group(n)) = self.files.get(&raw) else {
            return Err(Errno::EBADF);
        };
        let n = *n;
        match request {
            VFIO_GROUP_GET_STATUS => {
                assert!(arg.len() >= 8, "GET_STATUS argument of {} bytes", arg.len());
                if get_u32(arg, 0) < 8 {
                    return Err(Errno::EINVAL);
                }
                let g = &self.groups[&n];
                let flags = if g.container.is_some() {
                    VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET
                } else if g.viable {
                    VFIO_GROUP_FLAGS_VIABLE
                } else {
                    0
                };
                put_u32(arg, 4, flags);
                Ok(0)
            }
            VFIO_GROUP_SET_CONTAINER => {
                assert_eq!(arg.len(), 4, "SET_CONTAINER takes a pointer to an int");
                let fd = i32::from_ne_bytes(arg[..4].try_into().unwrap());
                if self.groups[&n].container.is_some() {
                    return Err(Errno::EINVAL);
                }
                match self.files.get_mut(&fd) {
                    Some(File::Container { groups, .. }) => {
                        if !self.groups[&n].viable {
                            // iommu_group_claim_dma_owner()
                            return Err(Errno::EBUSY);
                        }
                        groups.push(n);
                    }
                    Some(_) => return Err(Errno::EBADFD),
                    None => return Err(Errno::EBADF),
                }
                self.groups.get_mut(&n).unwrap().container = Some(fd);
                Ok(0)
            }
            VFIO_GROUP_GET_DEVICE_FD => {
                let end = arg
                    .iter()
                    .position(|&b| b == 0)
                    .expect("NUL-terminated name");
                let name = String::from_utf8(arg[..end].to_vec()).unwrap();
                let g = &self.groups[&n];
                // vfio_df_group_open(): a container with an IOMMU set.
                let ready = g.container.is_some_and(|c| {
                    matches!(
                        self.files.get(&c),
                        Some(File::Container { iommu: Some(_), .. })
                    )
                });
                if !g.devices.contains(&name) {
                    return Err(Errno::ENODEV);
                }
                if !ready {
                    return Err(Errno::EINVAL);
                }
                let dev = self.device_mut(&name);
                if let Some(e) = dev.open_error {
                    return Err(e);
                }
                dev.opens += 1;
                Ok(self.install(File::Device { name, usable: true }, OFlag::O_CLOEXEC))
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    fn device_mut(&mut self, name: &str) -> &mut FakeDevice {
        self.devices.get_mut(name).expect("device of an open fd")
    }

    fn device_ioctl(
        &mut self,
        raw: RawFd,
        request: u64,
        arg: &mut [u8],
        pointee: Pointee<'_>,
    ) -> Result<i32, Errno> {
        let Some(File::Device { name, usable }) = self.files.get(&raw) else {
            return Err(Errno::EBADF);
        };
        let (name, usable) = (name.clone(), *usable);
        if request == VFIO_DEVICE_BIND_IOMMUFD {
            return self.bind(raw, &name, arg);
        }
        if !usable {
            return Err(Errno::EINVAL);
        }
        match request {
            VFIO_DEVICE_ATTACH_IOMMUFD_PT => {
                let a = VfioDeviceAttachIommufdPt::from_bytes(arg);
                if a.argsz < 12 || a.flags != 0 || a.pt_id != 7 {
                    return Err(Errno::EINVAL);
                }
                Ok(0)
            }
            VFIO_DEVICE_FEATURE => self.feature(&name, arg, pointee),
            VFIO_DEVICE_GET_INFO => {
                assert!(arg.len() >= 24.max(get_u32(arg, 0) as usize));
                put_u32(arg, 4, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
                put_u32(arg, 8, 2);
                put_u32(arg, 12, 1);
                Ok(0)
            }
            VFIO_DEVICE_GET_REGION_INFO => {
                let mmap = self.device_mut(&name).mmap_offered;
                Self::region_info(arg, mmap)
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    fn bind(&mut self, raw: RawFd, name: &str, arg: &mut [u8]) -> Result<i32, Errno> {
        let b = VfioDeviceBindIommufd::from_bytes(arg);
        if b.argsz < 16 || b.flags != 0 {
            return Err(Errno::EINVAL);
        }
        if !matches!(self.files.get(&b.iommufd), Some(File::Iommufd)) {
            return Err(Errno::EBADF);
        }
        // vfio_device_block_group(): not while the group is open.
        if self
            .groups
            .values()
            .any(|g| g.open && g.devices.iter().any(|d| d == name))
        {
            return Err(Errno::EBUSY);
        }
        if let Some(e) = self.device_mut(name).open_error {
            return Err(e);
        }
        // vfio_df_open(): only the group path opens a device twice.
        let bound_elsewhere = self.files.iter().any(|(&fd, file)| {
            fd != raw && matches!(file, File::Device { usable: true, name: n } if n == name)
        });
        if bound_elsewhere {
            return Err(Errno::EINVAL);
        }
        self.device_mut(name).opens += 1;
        put_u32(arg, 12, 1);
        if let Some(File::Device { usable, .. }) = self.files.get_mut(&raw) {
            *usable = true;
        }
        Ok(0)
    }

    /// Region 0: plain. Region 1: a type capability (3/1) and, with `mmap`,
    /// a sparse-mmap capability for its data area, the caller gets only
    /// with argsz >= 48 (80 with `mmap`); with less, argsz is raised and
    /// cap_offset is 0.
    fn region_info(arg: &mut [u8], mmap: bool) -> Result<i32, Errno> {
        let argsz = get_u32(arg, 0);
        assert!(
            arg.len() >= (argsz as usize).max(32),
            "region info argument too short"
        );
        if argsz < 32 {
            return Err(Errno::EINVAL);
        }
        let index = get_u32(arg, 8);
        if index > 1 {
            return Err(Errno::EINVAL);
        }
        put_u64(arg, 16, 4096);
        put_u64(arg, 24, u64::from(index) << 40);
        put_u32(
            arg,
            4,
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
        );
        if index == 1 {
            put_u64(arg, 16, V1_REGION_SIZE);
            let mut flags = get_u32(arg, 4) | VFIO_REGION_INFO_FLAG_CAPS;
            if mmap {
                flags |= VFIO_REGION_INFO_FLAG_MMAP;
            }
            put_u32(arg, 4, flags);
            let need = if mmap { 80 } else { 48 };
            if argsz < need {
                put_u32(arg, 0, need);
                put_u32(arg, 12, 0);
            } else {
                put_u32(arg, 12, 32);
                put(
                    arg,
                    32,
                    &VfioRegionInfoCapType {
                        id: VFIO_REGION_INFO_CAP_TYPE,
                        version: 1,
                        next: if mmap { 48 } else { 0 },
                        region_type: VFIO_REGION_TYPE_MIGRATION,
                        subtype: VFIO_REGION_SUBTYPE_MIGRATION,
                    }
                    .to_bytes(),
                );
                if mmap {
                    // vfio_region_info_cap_sparse_mmap: header, nr_areas,
                    // reserved, one area (offset, size).
                    put_u32(
                        arg,
                        48,
                        u32::from(VFIO_REGION_INFO_CAP_SPARSE_MMAP) | 1 << 16,
                    );
                    put_u32(arg, 52, 0);
                    put_u32(arg, 56, 1);
                    put_u32(arg, 60, 0);
                    put_u64(arg, 64, 4096);
                    put_u64(arg, 72, V1_AREA_LEN as u64);
                }
            }
        }
        Ok(0)
    }

    /// vfio_ioctl_device_feature() and the migration / logging handlers.
    fn feature(&mut self, name: &str, buf: &mut [u8], pointee: Pointee<'_>) -> Result<i32, Errno> {
        let argsz = get_u32(buf, 0) as usize;
        let flags = get_u32(buf, 4);
        // The backend's promise: the kernel never runs off our buffer.
        assert!(
            buf.len() >= argsz.max(8 + 32),
            "feature buffer of {} bytes",
            buf.len()
        );
        let seen_pointee = match &pointee {
            Pointee::None => (0, 0),
            Pointee::Bytes(b) => (pointee.addr(), b.len()),
            Pointee::Words(w) => (pointee.addr(), w.len() * 8),
        };
        self.features.push(FeatureSeen {
            bytes: buf.to_vec(),
            pointee: seen_pointee,
        });
        if argsz < 8 {
            return Err(Errno::EINVAL);
        }
        let known = VFIO_DEVICE_FEATURE_MASK
            | VFIO_DEVICE_FEATURE_GET
            | VFIO_DEVICE_FEATURE_SET
            | VFIO_DEVICE_FEATURE_PROBE;
        if flags & !known != 0 {
            return Err(Errno::EINVAL);
        }
        let probe = flags & VFIO_DEVICE_FEATURE_PROBE != 0;
        let get = flags & VFIO_DEVICE_FEATURE_GET != 0;
        let set = flags & VFIO_DEVICE_FEATURE_SET != 0;
        if !probe && get && set {
            return Err(Errno::EINVAL);
        }
        let payload_len = argsz - 8;
        let (ops, minsz) = match flags & VFIO_DEVICE_FEATURE_MASK {
            VFIO_DEVICE_FEATURE_MIGRATION => (VFIO_DEVICE_FEATURE_GET, 8),
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET, 8)
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START => (VFIO_DEVICE_FEATURE_SET, 24),
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => (VFIO_DEVICE_FEATURE_GET, 32),
            VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => (VFIO_DEVICE_FEATURE_GET, 8),
            _ => return Err(Errno::ENOTTY),
        };
        // vfio_check_feature()
        if flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET) & !ops != 0 {
            return Err(Errno::EINVAL);
        }
        if probe {
            return Ok(0);
        }
        if !get && !set {
            return Err(Errno::EINVAL);
        }
        if payload_len < minsz {
            return Err(Errno::EINVAL);
        }
        let payload = &mut buf[8..];
        match flags & VFIO_DEVICE_FEATURE_MASK {
            VFIO_DEVICE_FEATURE_MIGRATION => {
                put_u64(
                    payload,
                    0,
                    VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
                );
            }
            VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => {
                let len = self.device_mut(name).stream.len();
                put_u64(payload, 0, u64::try_from(len).unwrap());
            }
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE if get => {
                put_u32(payload, 0, self.device_mut(name).state);
                put_u32(payload, 4, u32::MAX);
            }
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                let target = get_u32(payload, 0);
                // A failed SET copies the struct back, with data_fd -1.
                put_u32(payload, 4, u32::MAX);
                let Some(to) = MigState::from_raw(target).filter(|s| *s != MigState::Error) else {
                    return Err(Errno::EINVAL);
                };
                let dev = self.device_mut(name);
                let from = MigState::from_raw(dev.state).unwrap();
                dev.state = target;
                let stream = dev.stream.clone();
                let opens_fd = matches!(
                    (from, to),
                    (MigState::Running, MigState::PreCopy)
                        | (MigState::Stop, MigState::StopCopy)
                        | (MigState::Stop, MigState::Resuming)
                );
                if opens_fd {
                    let stream = if to == MigState::Resuming {
                        Vec::new()
                    } else {
                        stream
                    };
                    let fd = self.install(
                        File::Data {
                            stream,
                            pos: 0,
                            written: Vec::new(),
                        },
                        OFlag::O_CLOEXEC,
                    );
                    put_u32(&mut buf[8..], 4, fd as u32);
                }
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START => {
                let control = VfioDeviceFeatureDmaLoggingControl::from_bytes(payload);
                if control.num_ranges == 0 {
                    return Err(Errno::EINVAL);
                }
                if control.num_ranges > LOG_MAX_RANGES {
                    return Err(Errno::E2BIG);
                }
                let Pointee::Bytes(ranges) = pointee else {
                    return Err(Errno::EFAULT);
                };
                assert_eq!(control.ranges, seen_pointee.0, "ranges pointer");
                let n = control.num_ranges as usize;
                assert!(
                    ranges.len() >= n * 16,
                    "the core would read past the ranges array"
                );
                let ranges = ranges
                    .chunks_exact(16)
                    .take(n)
                    .map(VfioDeviceFeatureDmaLoggingRange::from_bytes)
                    .collect();
                self.device_mut(name).logged_ranges = ranges;
                // The driver reports the page size it chose.
                put_u64(&mut buf[8..], 0, 8192);
            }
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => {
                let report = VfioDeviceFeatureDmaLoggingReport::from_bytes(payload);
                if report.page_size < 4096 || !report.page_size.is_power_of_two() {
                    return Err(Errno::EINVAL);
                }
                let Pointee::Words(bitmap) = pointee else {
                    return Err(Errno::EFAULT);
                };
                assert_eq!(report.bitmap, seen_pointee.0, "bitmap pointer");
                let last = (report.length - 1) / report.page_size;
                assert!(
                    bitmap.len() as u64 > last / 64,
                    "the core would write past the bitmap"
                );
                // The first and the last page are dirty.
                bitmap[0] |= 1;
                bitmap[(last / 64) as usize] |= 1 << (last % 64);
            }
            _ => unreachable!("features filtered above"),
        }
        Ok(0)
    }

    fn data_ioctl(&mut self, raw: RawFd, request: u64, arg: &mut [u8]) -> Result<i32, Errno> {
        let Some(File::Data { stream, pos, .. }) = self.files.get(&raw) else {
            return Err(Errno::EBADF);
        };
        if request != VFIO_MIG_GET_PRECOPY_INFO {
            return Err(Errno::ENOTTY);
        }
        assert!(arg.len() >= 24);
        if get_u32(arg, 0) < 24 {
            return Err(Errno::EINVAL);
        }
        put_u64(arg, 8, u64::try_from(stream.len() - pos).unwrap());
        put_u64(arg, 16, 0);
        Ok(0)
    }
}

mod syscalls;
mod tree;

pub use tree::{Lab, Tree, BDF, UUID};

#[cfg(test)]
mod tests;
