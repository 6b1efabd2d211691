//! What a device offers, whether a scenario applies to it, and bringing it
//! back to RUNNING after a case.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use crate::device::{Device, DeviceExt};
use crate::model::MigrationFlags;
use crate::scenario::{Protocol, Scenario};
use crate::uapi::*;

/// Capabilities found by probing, before any case runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCaps {
    /// `VFIO_DEVICE_FEATURE_MIGRATION` flags; `None` when GET failed.
    pub migration_flags: Option<u64>,
    /// Why GET MIGRATION failed (`ENOTTY`: no v2 migration).
    pub migration_error: Option<String>,
    /// The v1 migration region: (index, size), when present.
    pub v1_region: Option<(u32, u64)>,
    /// The v1 region's sparse-mmap areas (offset, size in the region).
    #[serde(default)]
    pub v1_mmap_areas: Vec<(u64, u64)>,
    /// DMA logging answers PROBE.
    pub logging: bool,
    /// IOVAs the device declares it writes after each START.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dma_writes: Vec<u64>,
    pub stop_copy_length: Option<u64>,
    /// MIG_PRECOPY_INFOv2 (feature 12) answers PROBE.
    pub precopy_info_v2: bool,
    pub state: Option<String>,
    /// PCI `vendor:device` read from config space through the region path
    /// (devices with VFIO_DEVICE_FLAGS_PCI).
    #[serde(default)]
    pub pci_config_id: Option<String>,
    /// Why config space could not be read on a PCI device.
    #[serde(default)]
    pub pci_config_error: Option<String>,
}

impl DeviceCaps {
    pub fn protocols(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.v1_region.is_some() {
            p.push("v1".to_string());
        }
        if self.migration_flags.is_some() {
            p.push("v2".to_string());
        }
        p
    }

    pub fn flags(&self) -> Option<MigrationFlags> {
        self.migration_flags.map(MigrationFlags)
    }
}

/// Asks the device what it supports; never changes its state.
pub fn probe_caps(dev: &mut dyn Device) -> DeviceCaps {
    let mut caps = DeviceCaps::default();
    match dev.migration_flags() {
        Ok(f) => caps.migration_flags = Some(f.0),
        Err(e) => caps.migration_error = Some(errno_name(e)),
    }
    if caps.migration_flags.is_some() {
        caps.dma_writes = dev.description().dma_writes.clone();
        caps.stop_copy_length = dev.stop_copy_length().ok();
        caps.state = dev.get_state().ok().map(|s| s.name().to_string());
        caps.logging = dev
            .probe_feature(
                VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                VFIO_DEVICE_FEATURE_SET,
            )
            .is_ok();
        caps.precopy_info_v2 = dev
            .probe_feature(
                VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2,
                VFIO_DEVICE_FEATURE_SET,
            )
            .is_ok();
    }
    if let Ok(Some(region)) = dev.find_migration_region() {
        caps.v1_region = Some((region.info.index, region.info.size));
        caps.v1_mmap_areas = region.sparse_mmap_areas();
    }
    if dev
        .device_info()
        .is_ok_and(|i| i.flags & VFIO_DEVICE_FLAGS_PCI != 0)
    {
        match dev.pci_config_ids() {
            Ok((vendor, device)) => caps.pci_config_id = Some(format!("{vendor:04x}:{device:04x}")),
            Err(e) => caps.pci_config_error = Some(errno_name(e)),
        }
    }
    caps
}

/// The run-wide settings that decide applicability.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunSettings {
    pub include_dangerous: bool,
    /// The device's streams repeat byte for byte (profile; `false` for
    /// devices that embed timestamps or nonces).
    pub deterministic_stream: bool,
}

/// `Ok` when the scenario can run with these devices, else why not (the
/// case is then reported as ignored with that reason).
pub fn applicable(
    s: &Scenario,
    device: &DeviceCaps,
    destination: Option<&DeviceCaps>,
    incompatible: Option<&DeviceCaps>,
    settings: RunSettings,
) -> Result<(), String> {
    if s.dangerous && !settings.include_dangerous {
        return Err(
            "dangerous: can hang kernels without the vfio_mig_get_next_state() fix; run with --include-dangerous"
                .into(),
        );
    }
    let speaks = |caps: &DeviceCaps| match s.protocol {
        Protocol::V1 => caps.v1_region.is_some(),
        Protocol::V2 => caps.migration_flags.is_some(),
    };
    if !speaks(device) {
        return Err(match s.protocol {
            Protocol::V1 => "device has no v1 migration region (type 3 / subtype 1)".to_string(),
            Protocol::V2 => format!(
                "device does not support migration v2 (GET MIGRATION: {})",
                device.migration_error.as_deref().unwrap_or("failed")
            ),
        });
    }
    let needs = s.requires.flags;
    let lacks = |caps: &DeviceCaps| caps.migration_flags.is_some_and(|f| f & needs != needs);
    if s.protocol == Protocol::V2 && lacks(device) {
        return Err(format!(
            "device lacks {} (MIGRATION flags {})",
            migration_flag_names(needs),
            migration_flag_names(device.migration_flags.unwrap_or(0))
        ));
    }
    if s.requires.destination {
        match destination {
            None => return Err("needs a second compatible device: give --destination".into()),
            Some(d) if !speaks(d) || (s.protocol == Protocol::V2 && lacks(d)) => {
                return Err("the destination does not support what this case needs".into())
            }
            Some(_) => {}
        }
    }
    if s.requires.incompatible && incompatible.is_none() {
        return Err("needs a device of another type: give --incompatible".into());
    }
    if s.requires.logging && !device.logging {
        return Err(
            "device does not support DMA logging (PROBE of DMA_LOGGING_START failed)".into(),
        );
    }
    if s.requires.dma_writes && device.dma_writes.is_empty() {
        return Err(
            "the device declares no DMA writes to find in a REPORT (the simulator's `dma=`)".into(),
        );
    }
    if s.requires.without_v2 && device.migration_flags.is_some() {
        return Err("for devices without migration v2; this one has it".into());
    }
    if s.requires.precopy_info_v2 && !device.precopy_info_v2 {
        return Err("device does not offer MIG_PRECOPY_INFOv2 (feature 12)".into());
    }
    if s.requires.deterministic_stream && !settings.deterministic_stream {
        return Err("the device profile says its streams are not deterministic".into());
    }
    Ok(())
}

/// After a case: VFIO_DEVICE_RESET and check the device is RUNNING again.
pub fn restore(dev: &mut dyn Device, protocol: Protocol) -> Result<(), String> {
    dev.reset()
        .map_err(|e| format!("VFIO_DEVICE_RESET failed with {}", errno_name(e)))?;
    match protocol {
        Protocol::V2 => match dev.get_state() {
            Ok(MigState::Running) => Ok(()),
            Ok(s) => Err(format!("device is {s} after reset, not RUNNING")),
            Err(e) => Err(format!(
                "GET MIG_DEVICE_STATE after reset failed with {}",
                errno_name(e)
            )),
        },
        Protocol::V1 => {
            let region = dev
                .find_migration_region()
                .map_err(|e| format!("migration region lookup failed with {}", errno_name(e)))?
                .ok_or("the migration region disappeared")?;
            let mut b = [0u8; 4];
            dev.region_read(region.info.offset + v1::DEVICE_STATE, &mut b)
                .map_err(|e| format!("reading device_state failed with {}", errno_name(e)))?;
            let state = u32::from_le_bytes(b) & v1::STATE_MASK;
            if state == v1::STATE_RUNNING {
                Ok(())
            } else {
                Err(format!(
                    "device_state is {state:03b} after reset, not running"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::open;

    #[test]
    fn probing_reads_the_pci_identity_through_the_config_region() {
        let mut dev = open("sim").unwrap();
        let caps = probe_caps(dev.as_mut());
        assert_eq!(caps.pci_config_id.as_deref(), Some("1b36:0100"));
        assert_eq!(caps.pci_config_error, None);
        assert_eq!(caps.protocols(), ["v1", "v2"]);
        assert_eq!(caps.state.as_deref(), Some("RUNNING"));
        // Results written before the field existed still load.
        let old: DeviceCaps = serde_json::from_str(
            r#"{"migration_flags":1,"migration_error":null,"v1_region":null,"logging":false,
                "stop_copy_length":4,"precopy_info_v2":false,"state":null}"#,
        )
        .unwrap();
        assert_eq!(old.pci_config_id, None);
    }
}
