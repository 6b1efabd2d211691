//! Region probing that applies to any device: the v1 migration region's
//! layout and the PCI IDs read through the config region.
#![forbid(unsafe_code)]

use super::v1::V1Region;
use super::*;
use crate::device::DeviceExt;
use crate::uapi::{self, v1 as f};

impl Exec<'_, '_> {
    /// Reads the PCI vendor and device ID from config space through the
    /// region path and compares them with sysfs where sysfs has them.
    pub(super) fn config_ids(&mut self, role: Role, key: &StepKey) -> Flow {
        let call = Call::quiet(role, "pread", "config space vendor/device ID".into());
        let r = self.role(role)?.dev.pci_config_ids();
        self.record(call, Returned::of(&r.map(|_| 4)).moved(4), key);
        let ids = r.map_err(|e| {
            Abort::Harness(format!(
                "reading config space failed with {}",
                errno_name(e)
            ))
        })?;
        let sysfs = self.role(role)?.dev.description().sysfs_path.clone();
        let from_sysfs = sysfs.as_deref().and_then(|p| {
            let read = |f: &str| std::fs::read_to_string(format!("{p}/{f}")).ok();
            let hex = |s: String| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
            Some((hex(read("vendor")?)?, hex(read("device")?)?))
        });
        match from_sysfs {
            Some(s) if s != ids => {
                return Err(Abort::Harness(format!(
                    "config space says {:04x}:{:04x} but sysfs says {:04x}:{:04x}: the region access path is wrong",
                    ids.0, ids.1, s.0, s.1
                )))
            }
            Some(_) => self.note(format!("config space IDs {:04x}:{:04x} match sysfs", ids.0, ids.1)),
            None => self.note(format!("config space IDs {:04x}:{:04x} (sysfs has no PCI IDs for this device)", ids.0, ids.1)),
        }
        Ok(())
    }

    /// V1-REGION-01: the migration region exists and is laid out as the
    /// uAPI says.
    pub(super) fn migration_region(&mut self, role: Role, key: &StepKey) -> Flow {
        let found = self.role(role)?.dev.find_migration_region();
        let region = match found {
            Ok(Some(r)) => r,
            other => {
                self.check(
                    key,
                    Check::builtin(
                        "present",
                        "V1-REGION-01",
                        false,
                        "a region with type capability 3 / subtype 1".into(),
                        format!("{other:?}"),
                    ),
                );
                return Err(Abort::Driver("no migration region".into()));
            }
        };
        let rw = uapi::VFIO_REGION_INFO_FLAG_READ | uapi::VFIO_REGION_INFO_FLAG_WRITE;
        self.check(
            key,
            Check::builtin(
                "layout",
                "V1-REGION-01",
                region.info.size > f::HEADER_SIZE && region.info.flags & rw == rw,
                format!(
                    "readable, writable, larger than the {}-byte header",
                    f::HEADER_SIZE
                ),
                format!(
                    "index {}, size {}, flags {:#x}",
                    region.info.index, region.info.size, region.info.flags
                ),
            ),
        );
        self.role(role)?.region = Some(V1Region {
            offset: region.info.offset,
            size: region.info.size,
        });
        let data_offset = self.read_named(role, "data_offset", key)?;
        self.check(
            key,
            Check::builtin(
                "data-offset",
                "V1-REGION-01",
                data_offset.is_ok_and(|o| o >= f::HEADER_SIZE && o < region.info.size),
                "data_offset past the header and inside the region".into(),
                format!("{data_offset:?}"),
            )
            .on(&["vfio_device_migration_info.data_offset"]),
        );
        Ok(())
    }
}
