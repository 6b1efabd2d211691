//! What sysfs, /dev and /proc say about VFIO devices and their groups.
//! Read-only, plain file access: no fd of a device is opened here.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where sysfs, /dev and /proc are (other roots in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub sysfs: PathBuf,
    pub dev: PathBuf,
    pub proc: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
        }
    }
}

impl Paths {
    pub fn pci_device(&self, bdf: &str) -> PathBuf {
        self.sysfs.join("bus/pci/devices").join(bdf)
    }

    pub fn mdev_device(&self, uuid: &str) -> PathBuf {
        self.sysfs.join("bus/mdev/devices").join(uuid)
    }

    pub fn vfio_dir(&self) -> PathBuf {
        self.dev.join("vfio")
    }

    pub fn container(&self) -> PathBuf {
        self.dev.join("vfio/vfio")
    }

    pub fn cdev_dir(&self) -> PathBuf {
        self.dev.join("vfio/devices")
    }

    pub fn iommufd(&self) -> PathBuf {
        self.dev.join("iommu")
    }

    pub fn iommu_group(&self, group: u32) -> PathBuf {
        self.sysfs
            .join("kernel/iommu_groups")
            .join(group.to_string())
    }

    /// A `/dev/...` path as the user wrote it, under our /dev root.
    pub fn under_dev(&self, path: &str) -> PathBuf {
        match Path::new(path).strip_prefix("/dev") {
            Ok(rest) => self.dev.join(rest),
            Err(_) => PathBuf::from(path),
        }
    }
}

/// What to do when there is no /dev/vfio at all.
pub fn no_dev_vfio(paths: &Paths) -> String {
    format!(
        "no {}: load the vfio and vfio-pci modules (modprobe vfio-pci) and bind a device",
        paths.vfio_dir().display()
    )
}

/// The bus a VFIO device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bus {
    Pci,
    Mdev,
    /// Platform, fsl-mc, CDX ...: reachable through its cdev.
    Other,
}

/// What sysfs says about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsDevice {
    /// BDF or mdev UUID: the name GET_DEVICE_FD takes.
    pub name: String,
    pub bus: Bus,
    pub path: PathBuf,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// Basename of `mdev_type` (`mtty-2`).
    pub mdev_type: Option<String>,
    /// `vendor:device` of a PCI device (`15b3:101e`).
    pub pci_id: Option<String>,
}

impl SysfsDevice {
    pub fn read(path: PathBuf, name: &str, bus: Bus) -> SysfsDevice {
        let pci_id = match (
            read_attr(&path.join("vendor")),
            read_attr(&path.join("device")),
        ) {
            (Some(v), Some(d)) if bus == Bus::Pci => Some(format!(
                "{}:{}",
                v.trim_start_matches("0x"),
                d.trim_start_matches("0x")
            )),
            _ => None,
        };
        SysfsDevice {
            name: name.to_string(),
            bus,
            driver: link_name(&path.join("driver")),
            iommu_group: link_name(&path.join("iommu_group")).and_then(|g| g.parse().ok()),
            mdev_type: link_name(&path.join("mdev_type")),
            pci_id,
            path,
        }
    }

    /// What makes migration streams compatible: the mdev type, else the
    /// PCI `vendor:device`.
    pub fn device_type(&self) -> Option<String> {
        self.mdev_type.clone().or_else(|| self.pci_id.clone())
    }
}

/// The device behind a cdev (`vfio3`), from `/sys/class/vfio-dev/vfio3/device`.
pub fn cdev_device(paths: &Paths, cdev: &str) -> Option<SysfsDevice> {
    let link = paths.sysfs.join("class/vfio-dev").join(cdev).join("device");
    let name = link_name(&link)?;
    let (path, bus) = if paths.pci_device(&name).exists() {
        (paths.pci_device(&name), Bus::Pci)
    } else if paths.mdev_device(&name).exists() {
        (paths.mdev_device(&name), Bus::Mdev)
    } else {
        (link, Bus::Other)
    };
    Some(SysfsDevice::read(path, &name, bus))
}

/// The basename of a symlink's target.
pub fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn read_attr(path: &Path) -> Option<String> {
    Some(std::fs::read_to_string(path).ok()?.trim().to_string())
}

/// Every in-tree VFIO driver has "vfio" in its name: vfio-pci and the
/// variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, pds_vfio_pci,
/// virtio_vfio_pci, qat_vfio_pci ...), vfio-platform, vfio-fsl-mc.
pub fn is_vfio_driver(driver: &str) -> bool {
    driver.contains("vfio")
}

/// One device of an IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub name: String,
    pub driver: Option<String>,
    pub is_mdev: bool,
}

impl GroupMember {
    /// Whether this device lets VFIO claim the group's DMA ownership: the
    /// kernel refuses while a driver without `driver_managed_dma` is bound.
    /// VFIO drivers, pci-stub and pcieport (bridges) set it; an unbound
    /// device and an mdev (alone in its emulated group) need nothing.
    pub fn keeps_group_viable(&self) -> bool {
        match &self.driver {
            None => true,
            Some(d) => self.is_mdev || is_vfio_driver(d) || d == "pci-stub" || d == "pcieport",
        }
    }
}

impl fmt::Display for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.driver {
            Some(d) => write!(f, "{} ({d})", self.name),
            None => write!(f, "{} (no driver)", self.name),
        }
    }
}

/// The devices of IOMMU group `group`, sorted by name.
pub fn group_members(paths: &Paths, group: u32) -> Vec<GroupMember> {
    let dir = paths.iommu_group(group).join("devices");
    let mut members: Vec<GroupMember> = entry_names(&dir)
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            GroupMember {
                driver: link_name(&path.join("driver")),
                is_mdev: path.join("mdev_type").exists(),
                name,
            }
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members
}

/// The members that keep VFIO from using the group.
pub fn group_blockers(paths: &Paths, group: u32) -> Vec<GroupMember> {
    group_members(paths, group)
        .into_iter()
        .filter(|m| !m.keeps_group_viable())
        .collect()
}

/// A group's node: `/dev/vfio/N`, or `/dev/vfio/noiommu-N` for a group
/// vfio made up in no-IOMMU mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNode {
    pub path: PathBuf,
    pub noiommu: bool,
}

pub fn group_node(paths: &Paths, group: u32) -> Option<GroupNode> {
    let plain = paths.vfio_dir().join(group.to_string());
    if plain.exists() {
        return Some(GroupNode {
            path: plain,
            noiommu: false,
        });
    }
    let noiommu = paths.vfio_dir().join(format!("noiommu-{group}"));
    noiommu.exists().then_some(GroupNode {
        path: noiommu,
        noiommu: true,
    })
}

/// Whether vfio made group `group` up in no-IOMMU mode: its node is
/// `noiommu-N`, and the kernel names such groups `vfio-noiommu`.
pub fn is_noiommu_group(paths: &Paths, group: u32) -> bool {
    group_node(paths, group).is_some_and(|n| n.noiommu)
        || read_attr(&paths.iommu_group(group).join("name")).as_deref() == Some("vfio-noiommu")
}

/// A process with a file open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub cmdline: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PID {}, `{}`", self.pid, self.cmdline)
    }
}

/// The processes with `node` open, from their `/proc/PID/fd` links.
/// Processes we may not look into are skipped.
pub fn holders(paths: &Paths, node: &Path) -> Vec<Holder> {
    let mut found = Vec::new();
    for entry in entry_names(&paths.proc) {
        let Ok(pid) = entry.parse::<u32>() else {
            continue;
        };
        let dir = paths.proc.join(&entry);
        let fds = dir.join("fd");
        let holds = entry_names(&fds)
            .iter()
            .any(|fd| std::fs::read_link(fds.join(fd)).is_ok_and(|t| t == node));
        if holds {
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            found.push(Holder { pid, cmdline });
        }
    }
    found.sort_by_key(|h| h.pid);
    found
}

/// The entry names of a directory; none when it cannot be read.
pub fn entry_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::kernel::fake::Tree;

    #[test]
    fn reads_pci_and_mdev_devices() {
        let tree = Tree::new();
        tree.pci(
            "0000:3b:00.1",
            Some("mlx5_vfio_pci"),
            Some(12),
            "0x15b3",
            "0x101e",
        );
        tree.mdev(
            "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
            Some("mtty"),
            Some(3),
            "mtty-2",
        );
        let pci = SysfsDevice::read(
            tree.paths.pci_device("0000:3b:00.1"),
            "0000:3b:00.1",
            Bus::Pci,
        );
        assert_eq!(pci.driver.as_deref(), Some("mlx5_vfio_pci"));
        assert_eq!(pci.iommu_group, Some(12));
        assert_eq!(pci.device_type().as_deref(), Some("15b3:101e"));
        let uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
        let mdev = SysfsDevice::read(tree.paths.mdev_device(uuid), uuid, Bus::Mdev);
        assert_eq!(mdev.driver.as_deref(), Some("mtty"));
        assert_eq!(mdev.iommu_group, Some(3));
        assert_eq!(mdev.device_type().as_deref(), Some("mtty-2"));
        let gone = SysfsDevice::read(
            tree.paths.pci_device("0000:00:00.0"),
            "0000:00:00.0",
            Bus::Pci,
        );
        assert_eq!(
            (gone.driver, gone.iommu_group, gone.pci_id),
            (None, None, None)
        );
    }

    #[test]
    fn group_viability_follows_the_kernel() {
        let tree = Tree::new();
        tree.pci(
            "0000:3b:00.0",
            Some("vfio-pci"),
            Some(7),
            "0x8086",
            "0x10fb",
        );
        tree.pci(
            "0000:3b:00.1",
            Some("pci-stub"),
            Some(7),
            "0x8086",
            "0x10fb",
        );
        tree.pci(
            "0000:00:1c.0",
            Some("pcieport"),
            Some(7),
            "0x8086",
            "0xa110",
        );
        tree.pci("0000:3b:00.2", None, Some(7), "0x8086", "0x10fb");
        assert!(group_blockers(&tree.paths, 7).is_empty());
        tree.pci("0000:3b:00.3", Some("ixgbe"), Some(7), "0x8086", "0x10fb");
        let blockers = group_blockers(&tree.paths, 7);
        assert_eq!(blockers.len(), 1);
        assert_eq!(blockers[0].to_string(), "0000:3b:00.3 (ixgbe)");
        assert_eq!(group_members(&tree.paths, 7).len(), 5);
        tree.mdev(
            "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
            Some("mtty"),
            Some(9),
            "mtty-1",
        );
        assert!(group_blockers(&tree.paths, 9).is_empty());
    }

    #[test]
    fn group_nodes_and_noiommu() {
        let tree = Tree::new();
        assert_eq!(group_node(&tree.paths, 4), None);
        tree.node("vfio/noiommu-4");
        assert_eq!(
            group_node(&tree.paths, 4),
            Some(GroupNode {
                path: tree.paths.dev.join("vfio/noiommu-4"),
                noiommu: true
            })
        );
        assert!(is_noiommu_group(&tree.paths, 4));
        tree.node("vfio/4");
        assert!(!group_node(&tree.paths, 4).unwrap().noiommu);
        assert!(!is_noiommu_group(&tree.paths, 4));
        std::fs::create_dir_all(tree.paths.iommu_group(4)).unwrap();
        std::fs::write(tree.paths.iommu_group(4).join("name"), "vfio-noiommu\n").unwrap();
        assert!(is_noiommu_group(&tree.paths, 4));
    }

    #[test]
    fn finds_the_processes_holding_a_node() {
        let tree = Tree::new();
        let node = tree.node("vfio/12");
        let other = tree.node("vfio/13");
        tree.process(
            4242,
            &["qemu-system-x86_64", "-name", "vm1"],
            &[&node, &other],
        );
        tree.process(77, &["bash"], &[&other]);
        let found = holders(&tree.paths, &node);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].to_string(),
            "PID 4242, `qemu-system-x86_64 -name vm1`"
        );
        assert_eq!(holders(&tree.paths, &other).len(), 2);
    }

    #[test]
    fn cdevs_map_to_their_devices() {
        let tree = Tree::new();
        tree.pci(
            "0000:3b:00.1",
            Some("vfio-pci"),
            Some(12),
            "0x15b3",
            "0x101e",
        );
        tree.cdev("vfio0", &tree.paths.pci_device("0000:3b:00.1"));
        let dev = cdev_device(&tree.paths, "vfio0").unwrap();
        assert_eq!((dev.name.as_str(), dev.bus), ("0000:3b:00.1", Bus::Pci));
        assert_eq!(dev.path, tree.paths.pci_device("0000:3b:00.1"));
        assert_eq!(cdev_device(&tree.paths, "vfio1"), None);
        let p = Paths::default();
        assert_eq!(
            p.under_dev("/dev/vfio/devices/vfio0"),
            PathBuf::from("/dev/vfio/devices/vfio0")
        );
        assert_eq!(
            tree.paths.under_dev("/dev/iommu"),
            tree.paths.dev.join("iommu")
        );
    }
}
