//! Every VFIO device on the host, from sysfs and /dev alone (nothing is
//! opened), for `vfio-migtest probe`.
#![forbid(unsafe_code)]

use serde::Serialize;

use super::sysfs::{self, Bus, Paths, SysfsDevice};
use crate::device::DeviceSpec;

/// One VFIO device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discovered {
    /// BDF or mdev UUID (for other buses, the name of the device).
    pub name: String,
    pub bus: Bus,
    pub driver: Option<String>,
    pub sysfs_path: String,
    pub iommu_group: Option<u32>,
    /// `/dev/vfio/N` or `/dev/vfio/noiommu-N`, when it exists.
    pub group_node: Option<String>,
    pub noiommu: bool,
    /// Whether VFIO can use the group: every device in it is bound to a
    /// VFIO driver (or pci-stub, pcieport) or unbound.
    pub group_viable: bool,
    /// The devices of the group that break viability: `BDF (driver)`.
    pub group_blockers: Vec<String>,
    /// `/dev/vfio/devices/vfioN`, when the kernel has device cdevs.
    pub cdev: Option<String>,
    pub mdev_type: Option<String>,
    /// PCI `vendor:device`.
    pub pci_id: Option<String>,
}

impl Discovered {
    /// What to pass as `--device`: the BDF or UUID, else the cdev (a
    /// device on another bus without one is named by itself, and opening it
    /// fails naming it).
    pub fn spec(&self) -> DeviceSpec {
        match (self.bus, &self.cdev) {
            (Bus::Pci, _) => DeviceSpec::Pci(self.name.clone()),
            (Bus::Mdev, _) => DeviceSpec::Mdev(self.name.clone()),
            (Bus::Other, Some(cdev)) => DeviceSpec::Cdev(cdev.clone()),
            (Bus::Other, None) => DeviceSpec::Cdev(self.name.clone()),
        }
    }

    fn from_sysfs(paths: &Paths, dev: SysfsDevice) -> Discovered {
        let node = dev.iommu_group.and_then(|g| sysfs::group_node(paths, g));
        let blockers: Vec<String> = dev
            .iommu_group
            .map(|g| sysfs::group_blockers(paths, g))
            .unwrap_or_default()
            .iter()
            .map(|m| m.to_string())
            .collect();
        Discovered {
            group_viable: dev.iommu_group.is_some() && blockers.is_empty(),
            group_blockers: blockers,
            group_node: node.as_ref().map(|n| n.path.display().to_string()),
            noiommu: node.is_some_and(|n| n.noiommu),
            cdev: None,
            sysfs_path: dev.path.display().to_string(),
            name: dev.name,
            bus: dev.bus,
            driver: dev.driver,
            iommu_group: dev.iommu_group,
            mdev_type: dev.mdev_type,
            pci_id: dev.pci_id,
        }
    }
}

/// Every VFIO device of this host. Fails, saying what is missing, when
/// there is no /dev/vfio or we are not root.
pub fn discover() -> Result<Vec<Discovered>, String> {
    discover_at(&Paths::default(), nix::unistd::geteuid().is_root())
}

pub(super) fn discover_at(paths: &Paths, root: bool) -> Result<Vec<Discovered>, String> {
    if !paths.vfio_dir().is_dir() {
        return Err(sysfs::no_dev_vfio(paths));
    }
    if !root {
        return Err(
            "not running as root: opening VFIO groups and devices needs root (or access to \
             /dev/vfio granted by udev rules, and a large RLIMIT_MEMLOCK); run vfio-migtest as root"
                .to_string(),
        );
    }
    Ok(scan(paths))
}

fn scan(paths: &Paths) -> Vec<Discovered> {
    let mut found = Vec::new();
    let pci_dir = paths.sysfs.join("bus/pci/devices");
    for bdf in sysfs::entry_names(&pci_dir) {
        let dev = SysfsDevice::read(pci_dir.join(&bdf), &bdf, Bus::Pci);
        if dev.driver.as_deref().is_some_and(sysfs::is_vfio_driver) {
            found.push(Discovered::from_sysfs(paths, dev));
        }
    }
    let mdev_dir = paths.sysfs.join("bus/mdev/devices");
    for uuid in sysfs::entry_names(&mdev_dir) {
        let dev = SysfsDevice::read(mdev_dir.join(&uuid), &uuid, Bus::Mdev);
        found.push(Discovered::from_sysfs(paths, dev));
    }
    for cdev in sysfs::entry_names(&paths.cdev_dir()) {
        if !cdev.starts_with("vfio") {
            continue;
        }
        let Some(dev) = sysfs::cdev_device(paths, &cdev) else {
            continue;
        };
        let path = paths.cdev_dir().join(&cdev).display().to_string();
        match found.iter_mut().find(|d| d.name == dev.name) {
            Some(known) => known.cdev = Some(path),
            None => {
                let mut other = Discovered::from_sysfs(paths, dev);
                other.cdev = Some(path);
                found.push(other);
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::kernel::fake::Tree;

    const UUID: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

    #[test]
    fn lists_vfio_pci_mdev_and_cdev_devices() {
        let tree = Tree::new();
        tree.pci(
            "0000:3b:00.1",
            Some("mlx5_vfio_pci"),
            Some(12),
            "0x15b3",
            "0x101e",
        );
        tree.pci(
            "0000:3b:00.0",
            Some("mlx5_core"),
            Some(11),
            "0x15b3",
            "0x101d",
        );
        tree.pci(
            "0000:5e:00.0",
            Some("vfio-pci"),
            Some(20),
            "0x8086",
            "0x10fb",
        );
        tree.pci("0000:5e:00.1", Some("ixgbe"), Some(20), "0x8086", "0x10fb");
        tree.pci(
            "0000:6f:00.0",
            Some("vfio-pci"),
            Some(30),
            "0x1af4",
            "0x1041",
        );
        tree.mdev(UUID, Some("mtty"), Some(3), "mtty-2");
        tree.node("vfio/12");
        tree.node("vfio/3");
        tree.node("vfio/noiommu-30");
        tree.cdev("vfio0", &tree.paths.pci_device("0000:3b:00.1"));

        let found = discover_at(&tree.paths, true).unwrap();
        let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["0000:3b:00.1", "0000:5e:00.0", "0000:6f:00.0", UUID]
        );

        let mlx = &found[0];
        assert_eq!(mlx.bus, Bus::Pci);
        assert_eq!(mlx.driver.as_deref(), Some("mlx5_vfio_pci"));
        assert_eq!(mlx.iommu_group, Some(12));
        assert_eq!(
            mlx.group_node,
            Some(tree.paths.dev.join("vfio/12").display().to_string())
        );
        assert!(mlx.group_viable && !mlx.noiommu);
        assert_eq!(
            mlx.cdev,
            Some(
                tree.paths
                    .dev
                    .join("vfio/devices/vfio0")
                    .display()
                    .to_string()
            )
        );
        assert_eq!(mlx.pci_id.as_deref(), Some("15b3:101e"));
        assert_eq!(mlx.spec().to_string(), "0000:3b:00.1");

        let shared = &found[1];
        assert!(!shared.group_viable);
        assert_eq!(shared.group_blockers, ["0000:5e:00.1 (ixgbe)"]);
        assert_eq!(shared.group_node, None);

        assert!(found[2].noiommu);

        let mdev = &found[3];
        assert_eq!(mdev.bus, Bus::Mdev);
        assert_eq!(mdev.mdev_type.as_deref(), Some("mtty-2"));
        assert!(mdev.group_viable);
        assert_eq!(mdev.spec().to_string(), UUID);
    }

    #[test]
    fn a_cdev_of_another_bus_is_listed_by_its_node() {
        let tree = Tree::new();
        let platform = tree.paths.sysfs.join("devices/platform/fff51000.ethernet");
        std::fs::create_dir_all(&platform).unwrap();
        tree.cdev("vfio2", &platform);
        let found = discover_at(&tree.paths, true).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bus, Bus::Other);
        assert_eq!(found[0].name, "fff51000.ethernet");
        assert_eq!(
            found[0].spec().to_string(),
            tree.paths
                .dev
                .join("vfio/devices/vfio2")
                .display()
                .to_string()
        );
    }

    #[test]
    fn says_what_is_missing() {
        let tree = Tree::new();
        let err = discover_at(&tree.paths, true).unwrap_err();
        assert!(
            err.starts_with("no ") && err.contains("modprobe vfio-pci"),
            "{err}"
        );
        tree.node("vfio/vfio");
        let err = discover_at(&tree.paths, false).unwrap_err();
        assert!(err.contains("root"), "{err}");
        assert_eq!(discover_at(&tree.paths, true), Ok(Vec::new()));
    }
}
