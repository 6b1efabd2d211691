//! The device under test at the level of the VFIO uAPI.
//!
//! A [`Device`] exposes the raw operations a migration driver answers: the
//! `VFIO_DEVICE_FEATURE` ioctl with caller-chosen `argsz` and `flags` (so
//! framing errors can be provoked), `VFIO_DEVICE_RESET`, region info and
//! region access, and the operations on the data fds it hands out. Typed
//! helpers (GET/SET state, MIGRATION flags, precopy info ...) are built on
//! those raw calls here, once, for every backend.
//!
//! Two backends: [`kernel`] (real fds, through the one module of system calls) and
//! [`sim`] (the in-process reference simulator).

pub mod kernel;
pub mod sim;
pub mod spec;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::MigrationFlags;
use crate::uapi::*;

pub use nix::poll::PollFlags;
pub use spec::{open, DeviceSpec, OpenError};

/// A data fd number as returned in `vfio_device_feature_mig_state.data_fd`.
/// For the kernel backend it is the real fd in this process; the simulator
/// hands out numbers of its own.
pub type DataFd = i32;

/// How the device was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// `/dev/vfio/vfio` container + `/dev/vfio/<group>` + GET_DEVICE_FD.
    Group,
    /// `/dev/vfio/devices/vfioN` bound to `/dev/iommu`.
    Cdev,
    Simulator,
}

/// What is known about a device before any migration ioctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDescription {
    /// The spec the user gave (`0000:3b:00.1`, a UUID, `sim:fault=...`).
    pub spec: String,
    /// The device name the kernel knows (BDF or mdev UUID; `sim` for the simulator).
    pub name: String,
    /// Bound driver (`vfio-pci`, `mlx5_vfio_pci`, `mtty`), or `sim`.
    pub driver: Option<String>,
    pub sysfs_path: Option<String>,
    pub iommu_group: Option<u32>,
    pub access: Access,
    /// What makes streams compatible: mdev type (`mtty-2`), PCI
    /// `vendor:device`, or the simulator's `type=`.
    pub device_type: Option<String>,
    /// IOVAs the device declares it DMA-writes once after each successful
    /// DMA_LOGGING_START (the simulator's `dma=`), so that a REPORT's bit
    /// positions can be judged. Kernel devices declare none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dma_writes: Vec<u64>,
}

/// One `VFIO_DEVICE_FEATURE` call, framed exactly as given.
///
/// `data` is the payload after the 8-byte header; the backend hands the
/// driver a buffer of at least `max(argsz, 8 + data.len())` bytes and copies
/// the payload back into `data` after the call, success or not (the core
/// copies the struct back on a failed SET, V2-FSM-10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureRequest {
    pub argsz: u32,
    pub flags: u32,
    pub data: Vec<u8>,
    /// What `dma_logging_control.ranges` points at (DMA_LOGGING_START). The
    /// backend makes the array at least `num_ranges` entries long.
    pub ranges: Vec<VfioDeviceFeatureDmaLoggingRange>,
    /// What `dma_logging_report.bitmap` points at (DMA_LOGGING_REPORT);
    /// the driver sets bits in it.
    pub bitmap: Vec<u64>,
}

impl FeatureRequest {
    /// A well-formed request: `argsz` covers header and payload.
    pub fn new(feature: u32, op: u32, data: Vec<u8>) -> FeatureRequest {
        FeatureRequest {
            argsz: (VfioDeviceFeature::SIZE + data.len()) as u32,
            flags: feature | op,
            data,
            ranges: Vec::new(),
            bitmap: Vec::new(),
        }
    }

    pub fn feature(&self) -> u32 {
        self.flags & VFIO_DEVICE_FEATURE_MASK
    }

    /// The payload length the driver may use: `argsz` minus the header.
    pub fn payload_len(&self) -> usize {
        (self.argsz as usize).saturating_sub(VfioDeviceFeature::SIZE)
    }
}

/// The raw uAPI surface of one VFIO device. Every method is one syscall (or
/// its simulated equivalent) and returns the errno unchanged: for a
/// conformance tool the errno is the result.
pub trait Device: Send {
    fn description(&self) -> &DeviceDescription;

    /// `VFIO_DEVICE_FEATURE`.
    fn feature(&mut self, req: &mut FeatureRequest) -> Result<(), Errno>;

    /// `VFIO_DEVICE_RESET`.
    fn reset(&mut self) -> Result<(), Errno>;

    /// `VFIO_DEVICE_GET_INFO`; `buf` holds `vfio_device_info` with `argsz`
    /// set and room for capabilities.
    fn device_info_raw(&mut self, buf: &mut [u8]) -> Result<(), Errno>;

    /// `VFIO_DEVICE_GET_REGION_INFO`; `buf` holds `vfio_region_info` with
    /// `argsz` and `index` set and room for capabilities.
    fn region_info_raw(&mut self, buf: &mut [u8]) -> Result<(), Errno>;

    /// `pread` on the device fd at an absolute offset (region offset + field).
    fn region_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno>;

    /// `pwrite` on the device fd at an absolute offset.
    fn region_write(&mut self, offset: u64, buf: &[u8]) -> Result<usize, Errno>;

    /// `read` on a data fd. Callers poll first; this may block otherwise.
    fn data_read(&mut self, fd: DataFd, buf: &mut [u8]) -> Result<usize, Errno>;

    /// `write` on a data fd.
    fn data_write(&mut self, fd: DataFd, buf: &[u8]) -> Result<usize, Errno>;

    /// `pread` on a data fd (drivers must refuse: V2-SAVE-04).
    fn data_pread(&mut self, fd: DataFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno>;

    /// `pwrite` on a data fd (drivers must refuse: V2-RESUME-07).
    fn data_pwrite(&mut self, fd: DataFd, buf: &[u8], offset: u64) -> Result<usize, Errno>;

    /// `poll` on a data fd; returns `revents`, empty when `timeout` passed.
    fn data_poll(
        &mut self,
        fd: DataFd,
        events: PollFlags,
        timeout: Duration,
    ) -> Result<PollFlags, Errno>;

    /// An ioctl on a data fd with a pointer to `arg` (VFIO_MIG_GET_PRECOPY_INFO
    /// or any other request number, to test ENOTTY).
    fn data_ioctl(&mut self, fd: DataFd, request: u64, arg: &mut [u8]) -> Result<i32, Errno>;

    /// Whether FD_CLOEXEC is set on the data fd (V2-SAVE-06).
    fn data_cloexec(&mut self, fd: DataFd) -> Result<bool, Errno>;

    /// `close` on a data fd.
    fn data_close(&mut self, fd: DataFd) -> Result<(), Errno>;

    /// Closes the device fd only; data fds stay open (V2-FSM-13).
    fn close_device(&mut self) -> Result<(), Errno>;

    /// Opens the device fd again after [`Device::close_device`]; the device
    /// starts over as a fresh open (RUNNING).
    fn reopen(&mut self) -> Result<(), Errno>;

    /// The data fd `fd` for other threads: the same open file, so their
    /// reads, writes and polls race with each other and with this device's
    /// calls as QEMU's multifd threads do. EBADF for a fd the device did
    /// not hand out.
    fn share_data_fd(&mut self, fd: DataFd) -> Result<SharedDataFd, Errno>;

    /// The device's clock, which the timing rules read (V2-TIME-01/02): for
    /// a real device the host's monotonic clock. The simulator's advances
    /// only by the time it is configured to take, so that its timing
    /// findings do not depend on how loaded the host is.
    fn now(&self) -> Duration {
        host_now()
    }
}

/// The host's monotonic clock, from the first time it was read.
pub fn host_now() -> Duration {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed()
}

/// The calls another thread makes on a shared data fd.
pub trait DataFdOps: Send + Sync {
    /// `read`; may block (callers poll first).
    fn read(&self, buf: &mut [u8]) -> Result<usize, Errno>;

    /// `write`.
    fn write(&self, buf: &[u8]) -> Result<usize, Errno>;

    /// `poll`; empty when `timeout` passed.
    fn poll(&self, events: PollFlags, timeout: Duration) -> Result<PollFlags, Errno>;
}

/// A data fd several threads hold.
pub type SharedDataFd = Arc<dyn DataFdOps>;

/// The result of a SET of MIG_DEVICE_STATE: the struct as copied back,
/// whether the ioctl failed or not (V2-FSM-10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetStateResult {
    pub result: Result<(), Errno>,
    pub device_state: u32,
    pub data_fd: DataFd,
}

/// Typed helpers over the raw calls, shared by every backend and by the
/// executor.
pub trait DeviceExt: Device {
    /// GET MIGRATION: the advertised flags.
    fn migration_flags(&mut self) -> Result<MigrationFlags, Errno> {
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_MIGRATION,
            VFIO_DEVICE_FEATURE_GET,
            VfioDeviceFeatureMigration::default().to_bytes(),
        );
        self.feature(&mut req)?;
        Ok(MigrationFlags(
            VfioDeviceFeatureMigration::from_bytes(&req.data).flags,
        ))
    }

    /// GET MIG_DEVICE_STATE: (device_state, data_fd) as returned.
    fn get_state_raw(&mut self) -> Result<(u32, DataFd), Errno> {
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_GET,
            VfioDeviceFeatureMigState::default().to_bytes(),
        );
        self.feature(&mut req)?;
        let s = VfioDeviceFeatureMigState::from_bytes(&req.data);
        Ok((s.device_state, s.data_fd))
    }

    /// GET MIG_DEVICE_STATE as a named state; an out-of-range value is EPROTO.
    fn get_state(&mut self) -> Result<MigState, Errno> {
        let (raw, _) = self.get_state_raw()?;
        MigState::from_raw(raw).ok_or(Errno::EPROTO)
    }

    /// SET MIG_DEVICE_STATE to a raw value.
    fn set_state(&mut self, target: u32) -> SetStateResult {
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_SET,
            VfioDeviceFeatureMigState {
                device_state: target,
                data_fd: -1,
            }
            .to_bytes(),
        );
        let result = self.feature(&mut req);
        let s = VfioDeviceFeatureMigState::from_bytes(&req.data);
        SetStateResult {
            result,
            device_state: s.device_state,
            data_fd: s.data_fd,
        }
    }

    /// GET MIG_DATA_SIZE: `stop_copy_length`.
    fn stop_copy_length(&mut self) -> Result<u64, Errno> {
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
            VFIO_DEVICE_FEATURE_GET,
            VfioDeviceFeatureMigDataSize::default().to_bytes(),
        );
        self.feature(&mut req)?;
        Ok(VfioDeviceFeatureMigDataSize::from_bytes(&req.data).stop_copy_length)
    }

    /// PROBE a feature, optionally with GET/SET bits: Ok when supported.
    fn probe_feature(&mut self, feature: u32, ops: u32) -> Result<(), Errno> {
        let mut req = FeatureRequest::new(feature, VFIO_DEVICE_FEATURE_PROBE | ops, Vec::new());
        self.feature(&mut req)
    }

    /// VFIO_MIG_GET_PRECOPY_INFO on a data fd, with `argsz` = 24.
    fn precopy_info(&mut self, fd: DataFd) -> Result<VfioPrecopyInfo, Errno> {
        let mut arg = VfioPrecopyInfo {
            argsz: VfioPrecopyInfo::SIZE as u32,
            ..Default::default()
        }
        .to_bytes();
        self.data_ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &mut arg)?;
        Ok(VfioPrecopyInfo::from_bytes(&arg))
    }

    /// VFIO_DEVICE_GET_INFO, growing the buffer when the driver asks for
    /// more room for capabilities.
    fn device_info(&mut self) -> Result<VfioDeviceInfo, Errno> {
        let mut buf = VfioDeviceInfo {
            argsz: VfioDeviceInfo::SIZE as u32,
            ..Default::default()
        }
        .to_bytes();
        self.device_info_raw(&mut buf)?;
        Ok(VfioDeviceInfo::from_bytes(&buf))
    }

    /// VFIO_DEVICE_GET_REGION_INFO for `index`, with its capability chain:
    /// when the driver reports an `argsz` larger than offered, query again
    /// with that size (the documented way to fetch capabilities).
    fn region_info(&mut self, index: u32) -> Result<RegionInfo, Errno> {
        let mut argsz = VfioRegionInfo::SIZE as u32;
        // A driver that keeps asking for more is broken; two rounds suffice.
        for _ in 0..3 {
            let mut buf = vec![0u8; argsz as usize];
            put_u32(&mut buf, 0, argsz);
            put_u32(&mut buf, 8, index);
            self.region_info_raw(&mut buf)?;
            let info = VfioRegionInfo::from_bytes(&buf);
            if info.argsz > argsz {
                if info.argsz > MAX_INFO_SIZE {
                    return Err(Errno::E2BIG);
                }
                argsz = info.argsz;
                continue;
            }
            return RegionInfo::parse(&buf);
        }
        Err(Errno::EPROTO)
    }

    /// The PCI vendor and device ID at the start of config space (region
    /// index 7), read through the region path. A short read is EIO.
    fn pci_config_ids(&mut self) -> Result<(u16, u16), Errno> {
        let region = self.region_info(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut b = [0u8; 4];
        if self.region_read(region.info.offset, &mut b)? != b.len() {
            return Err(Errno::EIO);
        }
        Ok((get_u16(&b, 0), get_u16(&b, 2)))
    }

    /// Index and info of the v1 migration region (type 3 / subtype 1), if any.
    fn find_migration_region(&mut self) -> Result<Option<RegionInfo>, Errno> {
        let dev = self.device_info()?;
        for index in 0..dev.num_regions {
            let region = match self.region_info(index) {
                Ok(r) => r,
                // Holes in the index space are allowed (EINVAL for unimplemented).
                Err(Errno::EINVAL) => continue,
                Err(e) => return Err(e),
            };
            if region.is_v1_migration() {
                return Ok(Some(region));
            }
        }
        Ok(None)
    }
}

impl<D: Device + ?Sized> DeviceExt for D {}

/// Refuse capability chains bigger than this (a broken driver's argsz).
const MAX_INFO_SIZE: u32 = 1 << 20;

/// One capability from a region info chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionCap {
    pub id: u16,
    pub version: u16,
    /// The capability's bytes after its 8-byte header, up to the next one.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    pub info: VfioRegionInfo,
    pub caps: Vec<RegionCap>,
}

impl RegionInfo {
    /// The struct and its capability chain as the driver filled `buf`.
    pub fn parse(buf: &[u8]) -> Result<RegionInfo, Errno> {
        let info = VfioRegionInfo::from_bytes(buf);
        let caps = if info.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
            parse_caps(buf, info.cap_offset)?
        } else {
            Vec::new()
        };
        Ok(RegionInfo { info, caps })
    }

    /// Whether this is the v1 migration region (type 3 / subtype 1).
    pub fn is_v1_migration(&self) -> bool {
        self.type_cap() == Some((VFIO_REGION_TYPE_MIGRATION, VFIO_REGION_SUBTYPE_MIGRATION))
    }

    /// The (offset, size) pairs of `VFIO_REGION_INFO_CAP_SPARSE_MMAP`,
    /// relative to the region, when the region says it can be mmapped
    /// (`VFIO_REGION_INFO_FLAG_MMAP`); a truncated list is cut where it
    /// ends.
    pub fn sparse_mmap_areas(&self) -> Vec<(u64, u64)> {
        if self.info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Vec::new();
        }
        let Some(cap) = self
            .caps
            .iter()
            .find(|c| c.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP)
        else {
            return Vec::new();
        };
        if cap.body.len() < 8 {
            return Vec::new();
        }
        let nr_areas = get_u32(&cap.body, 0) as usize;
        cap.body[8..]
            .chunks_exact(16)
            .take(nr_areas)
            .map(|a| (get_u64(a, 0), get_u64(a, 8)))
            .collect()
    }

    /// The (type, subtype) of `VFIO_REGION_INFO_CAP_TYPE`, if present.
    pub fn type_cap(&self) -> Option<(u32, u32)> {
        self.caps
            .iter()
            .find(|c| c.id == VFIO_REGION_INFO_CAP_TYPE)
            .map(|c| (get_u32(&c.body, 0), get_u32(&c.body, 4)))
    }
}

/// Walks a capability chain; offsets are from the start of the info struct.
/// Loops, backwards links and out-of-bounds offsets are EPROTO: the driver
/// produced a chain the uAPI does not allow.
fn parse_caps(buf: &[u8], first: u32) -> Result<Vec<RegionCap>, Errno> {
    let mut caps = Vec::new();
    let mut at = first as usize;
    let mut min_next = VfioRegionInfo::SIZE;
    while at != 0 {
        if at < min_next || at + VfioInfoCapHeader::SIZE > buf.len() {
            return Err(Errno::EPROTO);
        }
        let hdr = VfioInfoCapHeader::from_bytes(&buf[at..]);
        let next = hdr.next as usize;
        let end = if next == 0 {
            buf.len()
        } else {
            next.min(buf.len())
        };
        if next != 0 && next <= at {
            return Err(Errno::EPROTO);
        }
        caps.push(RegionCap {
            id: hdr.id,
            version: hdr.version,
            body: buf[at + VfioInfoCapHeader::SIZE..end.max(at + VfioInfoCapHeader::SIZE)].to_vec(),
        });
        min_next = at + VfioInfoCapHeader::SIZE;
        at = next;
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Vec<u8> {
        let mut buf = VfioRegionInfo {
            argsz: 64,
            flags: VFIO_REGION_INFO_FLAG_CAPS,
            index: 9,
            cap_offset: 32,
            size: 4096,
            offset: 9 << 40,
        }
        .to_bytes();
        buf.extend(
            VfioRegionInfoCapType {
                id: VFIO_REGION_INFO_CAP_TYPE,
                version: 1,
                next: 48,
                region_type: 3,
                subtype: 1,
            }
            .to_bytes(),
        );
        buf.extend(
            VfioInfoCapHeader {
                id: 99,
                version: 1,
                next: 0,
            }
            .to_bytes(),
        );
        buf.extend([0xaa; 8]);
        buf
    }

    #[test]
    fn capability_chain_is_walked() {
        let buf = chain();
        let caps = parse_caps(&buf, 32).unwrap();
        assert_eq!(caps.len(), 2);
        let region = RegionInfo {
            info: VfioRegionInfo::from_bytes(&buf),
            caps,
        };
        assert_eq!(region.type_cap(), Some((3, 1)));
        assert_eq!(region.caps[1].body, vec![0xaa; 8]);
    }

    #[test]
    fn broken_chains_are_refused() {
        let mut buf = chain();
        put_u32(&mut buf, 32 + 4, 32); // points back at itself
        assert_eq!(parse_caps(&buf, 32), Err(Errno::EPROTO));
        let buf = chain();
        assert_eq!(parse_caps(&buf, 4), Err(Errno::EPROTO));
        assert_eq!(parse_caps(&buf, 4000), Err(Errno::EPROTO));
    }

    #[test]
    fn feature_request_framing() {
        let req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_SET,
            vec![0; 8],
        );
        assert_eq!(req.argsz, 16);
        assert_eq!(req.feature(), VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
        assert_eq!(req.payload_len(), 8);
    }
}
