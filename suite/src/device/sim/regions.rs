//! The simulator's regions: the PCI-like layout of BARs, config space and
//! the v1 migration region that VFIO_DEVICE_GET_REGION_INFO reports.

use super::*;

impl Core {
    pub(super) fn region_layout(
        &self,
        index: u32,
    ) -> Result<(VfioRegionInfo, Option<VfioRegionInfoCapType>), Errno> {
        let offset = u64::from(index) << OFFSET_SHIFT;
        let mut info = VfioRegionInfo {
            index,
            offset,
            ..Default::default()
        };
        match index {
            // BARs 0-5 and the ROM: not implemented, size 0.
            0..=6 => Ok((info, None)),
            VFIO_PCI_CONFIG_REGION_INDEX => {
                info.size = CONFIG_SPACE_SIZE as u64;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                Ok((info, None))
            }
            MIGRATION_REGION_INDEX => {
                let v1 = self.v1.as_ref().ok_or(Errno::EINVAL)?;
                info.size = v1.size();
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                let cap = VfioRegionInfoCapType {
                    id: VFIO_REGION_INFO_CAP_TYPE,
                    version: 1,
                    next: 0,
                    region_type: VFIO_REGION_TYPE_MIGRATION,
                    subtype: VFIO_REGION_SUBTYPE_MIGRATION,
                };
                Ok((info, Some(cap)))
            }
            // VGA (8) does not exist on this device, nor anything past the end.
            _ => Err(Errno::EINVAL),
        }
    }
}

pub(super) fn config_space() -> [u8; CONFIG_SPACE_SIZE] {
    let mut c = [0u8; CONFIG_SPACE_SIZE];
    put_u16(&mut c, 0x00, 0x1b36);
    put_u16(&mut c, 0x02, 0x0100);
    c[0x08] = 1; // revision
    c[0x0b] = 0xff; // class: unassigned
    put_u16(&mut c, 0x2c, 0x1af4);
    put_u16(&mut c, 0x2e, 0x1100);
    c
}
