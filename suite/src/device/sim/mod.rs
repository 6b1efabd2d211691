//! The reference simulator (placeholder until it lands).
use super::{DataFd, Device, DeviceDescription, FeatureRequest, PollFlags};
use crate::uapi::Errno;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct SimConfig;

impl SimConfig {
    pub fn parse(_options: &str) -> Result<SimConfig, String> {
        Ok(SimConfig)
    }
}

pub struct Simulator {
    desc: DeviceDescription,
}

impl Simulator {
    pub fn new(spec: &str, _config: SimConfig) -> Simulator {
        Simulator {
            desc: DeviceDescription {
                spec: spec.into(),
                name: "sim".into(),
                driver: Some("sim".into()),
                sysfs_path: None,
                iommu_group: None,
                access: super::Access::Simulator,
                device_type: None,
            },
        }
    }
}

impl Device for Simulator {
    fn description(&self) -> &DeviceDescription {
        &self.desc
    }
    fn feature(&mut self, _req: &mut FeatureRequest) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }
    fn reset(&mut self) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }
    fn device_info_raw(&mut self, _buf: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }
    fn region_info_raw(&mut self, _buf: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }
    fn region_read(&mut self, _o: u64, _b: &mut [u8]) -> Result<usize, Errno> {
        Err(Errno::EINVAL)
    }
    fn region_write(&mut self, _o: u64, _b: &[u8]) -> Result<usize, Errno> {
        Err(Errno::EINVAL)
    }
    fn data_read(&mut self, _fd: DataFd, _b: &mut [u8]) -> Result<usize, Errno> {
        Err(Errno::EBADF)
    }
    fn data_write(&mut self, _fd: DataFd, _b: &[u8]) -> Result<usize, Errno> {
        Err(Errno::EBADF)
    }
    fn data_pread(&mut self, _fd: DataFd, _b: &mut [u8], _o: u64) -> Result<usize, Errno> {
        Err(Errno::EBADF)
    }
    fn data_pwrite(&mut self, _fd: DataFd, _b: &[u8], _o: u64) -> Result<usize, Errno> {
        Err(Errno::EBADF)
    }
    fn data_poll(&mut self, _fd: DataFd, _e: PollFlags, _t: Duration) -> Result<PollFlags, Errno> {
        Err(Errno::EBADF)
    }
    fn data_ioctl(&mut self, _fd: DataFd, _r: u64, _a: &mut [u8]) -> Result<i32, Errno> {
        Err(Errno::EBADF)
    }
    fn data_cloexec(&mut self, _fd: DataFd) -> Result<bool, Errno> {
        Err(Errno::EBADF)
    }
    fn data_close(&mut self, _fd: DataFd) -> Result<(), Errno> {
        Err(Errno::EBADF)
    }
    fn close_device(&mut self) -> Result<(), Errno> {
        Ok(())
    }
    fn reopen(&mut self) -> Result<(), Errno> {
        Ok(())
    }
}
