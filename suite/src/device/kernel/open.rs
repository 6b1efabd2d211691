//! Opening a device: the safety checks first (it exists, a VFIO driver owns
//! it, its group is viable and free), then the uAPI sequence of
//! drivers/vfio/group.c and container.c, or of device_cdev.c and iommufd.
//! Every refusal names the device and says what to do; the suite never
//! rebinds drivers or changes the system itself.
#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::OFlag;

use crate::device::spec::{DeviceSpec, OpenError};
use crate::device::{Access, DeviceDescription};
use crate::uapi::*;

use super::device::{attach_cdev, get_device_fd, size_u32, CdevStep, KernelDevice, Reach};
use super::sys::{Pointee, Sys};
use super::sysfs::{self, Bus, GroupNode, Paths, SysfsDevice};

/// Builds refusals for one device spec.
struct Refuse<'a>(&'a str);

impl Refuse<'_> {
    fn because(&self, message: impl Into<String>) -> OpenError {
        OpenError::Refused {
            device: self.0.to_string(),
            message: message.into(),
            errno: None,
        }
    }

    fn errno(&self, errno: Errno, message: impl Into<String>) -> OpenError {
        OpenError::Refused {
            device: self.0.to_string(),
            message: message.into(),
            errno: Some(errno),
        }
    }
}

const PROBE_HINT: &str = "`vfio-migtest probe` lists VFIO devices";
const NEVER_REBINDS: &str = "vfio-migtest never rebinds drivers itself";

/// Opens the device `parsed` (written `spec` by the user).
pub fn open_device<S: Sys>(
    sys: S,
    paths: &Paths,
    spec: &str,
    parsed: &DeviceSpec,
) -> Result<KernelDevice<S>, OpenError> {
    let refuse = Refuse(spec);
    match parsed {
        DeviceSpec::Pci(bdf) => {
            let dev = pci_device(paths, bdf, &refuse)?;
            open_group(sys, paths, spec, dev, &refuse)
        }
        DeviceSpec::Mdev(uuid) => {
            let dev = mdev_device(paths, uuid, &refuse)?;
            open_group(sys, paths, spec, dev, &refuse)
        }
        DeviceSpec::Cdev(path) => open_cdev(sys, paths, spec, path, &refuse),
        DeviceSpec::Sim(_) => Err(OpenError::BadSpec {
            spec: spec.to_string(),
            reason: "the simulator is not a kernel device".into(),
        }),
    }
}

fn pci_device(paths: &Paths, bdf: &str, refuse: &Refuse) -> Result<SysfsDevice, OpenError> {
    let path = paths.pci_device(bdf);
    if !path.exists() {
        return Err(refuse.because(format!(
            "no such PCI device (no {}); {PROBE_HINT}",
            path.display()
        )));
    }
    let dev = SysfsDevice::read(path, bdf, Bus::Pci);
    match dev.driver.as_deref() {
        Some(d) if sysfs::is_vfio_driver(d) => Ok(dev),
        Some(d) => Err(refuse.because(format!(
            "bound to `{d}`, which is not a VFIO driver; bind it to vfio-pci {}",
            bind_howto(paths, bdf, true)
        ))),
        None => Err(refuse.because(format!(
            "not bound to any driver; bind it to vfio-pci {}",
            bind_howto(paths, bdf, false)
        ))),
    }
}

/// How to bind a PCI device to vfio-pci by hand.
fn bind_howto(paths: &Paths, bdf: &str, bound: bool) -> String {
    let dev = paths.pci_device(bdf);
    let unbind = if bound {
        format!("echo {bdf} > {}/driver/unbind; ", dev.display())
    } else {
        String::new()
    };
    format!(
        "(or the vendor's VFIO variant driver, e.g. mlx5_vfio_pci, in its place): \
         `echo vfio-pci > {}/driver_override; {unbind}echo {bdf} > {}/bus/pci/drivers_probe` \
         (after `modprobe vfio-pci`); {NEVER_REBINDS}",
        dev.display(),
        paths.sysfs.display(),
    )
}

fn mdev_device(paths: &Paths, uuid: &str, refuse: &Refuse) -> Result<SysfsDevice, OpenError> {
    let path = paths.mdev_device(uuid);
    if !path.exists() {
        return Err(refuse.because(format!(
            "no such mdev device (no {}); {PROBE_HINT}; create one by writing a UUID to \
             the parent's mdev_supported_types/<type>/create",
            path.display()
        )));
    }
    let dev = SysfsDevice::read(path, uuid, Bus::Mdev);
    // Any driver of an mdev is a VFIO driver (mtty, i915/kvmgt, ...).
    if dev.driver.is_none() {
        return Err(refuse.because(
            "mdev device is not bound to a driver: load its parent's vendor driver module \
             (for example `modprobe mtty`)",
        ));
    }
    Ok(dev)
}

fn describe(paths: &Paths, spec: &str, dev: &SysfsDevice, access: Access) -> DeviceDescription {
    DeviceDescription {
        spec: spec.to_string(),
        name: dev.name.clone(),
        driver: dev.driver.clone(),
        sysfs_path: Some(dev.path.display().to_string()),
        iommu_group: dev.iommu_group,
        access,
        device_type: dev.device_type(),
        dma_writes: dev
            .driver
            .as_deref()
            .map_or_else(Vec::new, |d| declared_dma_writes(paths, d)),
    }
}

/// The DMA writes a driver's lab-only `lab_dma_writes` module parameter
/// declares (lab/kernel/mtty-lab-faults.patch: comma-separated IOVAs, each
/// written once after every DMA_LOGGING_START); none without it.
fn declared_dma_writes(paths: &Paths, driver: &str) -> Vec<u64> {
    let param = paths
        .sysfs
        .join("module")
        .join(driver)
        .join("parameters/lab_dma_writes");
    std::fs::read_to_string(param)
        .map(|text| {
            text.trim()
                .split(',')
                .filter_map(|v| v.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The legacy path: group, container, Type1v2 (or no-IOMMU), GET_DEVICE_FD.
fn open_group<S: Sys>(
    sys: S,
    paths: &Paths,
    spec: &str,
    dev: SysfsDevice,
    refuse: &Refuse,
) -> Result<KernelDevice<S>, OpenError> {
    let Some(group) = dev.iommu_group else {
        return Err(refuse.because(
            "has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the \
             kernel command line), or use vfio's no-IOMMU mode, which gives no DMA isolation \
             (modprobe vfio enable_unsafe_noiommu_mode=1)",
        ));
    };
    if !paths.vfio_dir().is_dir() {
        return Err(refuse.because(sysfs::no_dev_vfio(paths)));
    }
    let Some(node) = sysfs::group_node(paths, group) else {
        return Err(refuse.because(format!(
            "IOMMU group {group} has no node {}: it appears when a VFIO driver binds a device \
             of the group; check the device's driver and that devtmpfs or udev creates /dev nodes",
            paths.vfio_dir().join(group.to_string()).display()
        )));
    };
    let rw = OFlag::O_RDWR | OFlag::O_CLOEXEC;
    let group_fd = sys
        .open(&node.path, rw)
        .map_err(|e| group_open_error(paths, group, &node, e, refuse))?;

    let mut status = VfioGroupStatus {
        argsz: size_u32(VfioGroupStatus::SIZE),
        flags: 0,
    }
    .to_bytes();
    sys.ioctl(&group_fd, VFIO_GROUP_GET_STATUS, &mut status, Pointee::None)
        .map_err(|e| {
            refuse.errno(
                e,
                format!("VFIO_GROUP_GET_STATUS on group {group} failed: {e}"),
            )
        })?;
    if VfioGroupStatus::from_bytes(&status).flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err(refuse.because(not_viable(paths, group)));
    }

    let container_path = paths.container();
    let container = sys
        .open(&container_path, rw)
        .map_err(|e| refuse.errno(e, format!("cannot open {}: {e}", container_path.display())))?;
    let version = sys
        .ioctl_int(&container, VFIO_GET_API_VERSION, 0)
        .map_err(|e| refuse.errno(e, format!("VFIO_GET_API_VERSION failed: {e}")))?;
    if version != VFIO_API_VERSION {
        return Err(refuse.because(format!(
            "{} reports VFIO API version {version}, not {VFIO_API_VERSION}: this kernel's VFIO \
             uAPI is not the one vfio-migtest knows",
            container_path.display()
        )));
    }
    let (iommu, iommu_name) = if node.noiommu {
        (VFIO_NOIOMMU_IOMMU, "no-IOMMU")
    } else {
        (VFIO_TYPE1V2_IOMMU, "Type1v2")
    };
    let supported = sys
        .ioctl_int(&container, VFIO_CHECK_EXTENSION, iommu)
        .map_err(|e| refuse.errno(e, format!("VFIO_CHECK_EXTENSION({iommu_name}) failed: {e}")))?;
    if supported <= 0 {
        return Err(refuse.because(if node.noiommu {
            "the VFIO container does not offer no-IOMMU mode: enable it with \
             `modprobe vfio enable_unsafe_noiommu_mode=1` (no DMA isolation)"
                .to_string()
        } else {
            "the VFIO container does not offer the Type1v2 IOMMU: load it with \
             `modprobe vfio_iommu_type1`"
                .to_string()
        }));
    }

    let mut container_fd = container.as_raw_fd().to_ne_bytes();
    sys.ioctl(
        &group_fd,
        VFIO_GROUP_SET_CONTAINER,
        &mut container_fd,
        Pointee::None,
    )
    .map_err(|e| {
        let why = match e {
            Errno::EPERM => " (a no-IOMMU group needs CAP_SYS_RAWIO: run as root)".to_string(),
            Errno::EBUSY => format!(
                " (a kernel driver or another user holds DMA ownership of group {group}: {})",
                not_viable(paths, group)
            ),
            _ => String::new(),
        };
        refuse.errno(
            e,
            format!("VFIO_GROUP_SET_CONTAINER on group {group} failed: {e}{why}"),
        )
    })?;
    sys.ioctl_int(&container, VFIO_SET_IOMMU, iommu)
        .map_err(|e| refuse.errno(e, format!("VFIO_SET_IOMMU({iommu_name}) failed: {e}")))?;

    let mut name = dev.name.clone().into_bytes();
    name.push(0);
    let device = get_device_fd(&sys, &group_fd, &name).map_err(|e| {
        let why = match e {
            Errno::EBUSY => format!(
                ": the device is in use (a VM or another program has it open, possibly \
                 through its cdev, or {} allows one open at a time); close the other user",
                dev.driver.as_deref().unwrap_or("its driver")
            ),
            Errno::ENODEV => format!(
                ": VFIO has no device {} in group {group}; rebind it to its VFIO driver",
                dev.name
            ),
            _ => String::new(),
        };
        refuse.errno(e, format!("VFIO_GROUP_GET_DEVICE_FD failed: {e}{why}"))
    })?;
    let desc = describe(paths, spec, &dev, Access::Group);
    Ok(KernelDevice::new(
        sys,
        desc,
        Reach::Group {
            name,
            group: group_fd,
            container,
        },
        device,
    ))
}

fn group_open_error(
    paths: &Paths,
    group: u32,
    node: &GroupNode,
    e: Errno,
    refuse: &Refuse,
) -> OpenError {
    let node_path = node.path.display();
    let message = match e {
        Errno::EBUSY => format!(
            "IOMMU group {group} ({node_path}) is already open{}; stop that process or choose \
             another device",
            holders_text(paths, &node.path)
        ),
        Errno::EPERM if node.noiommu => {
            format!("opening no-IOMMU group {node_path} needs CAP_SYS_RAWIO: run as root")
        }
        Errno::EACCES | Errno::EPERM => format!(
            "permission denied opening {node_path}: run as root, or give your user access to \
             {node_path} and {} (and a large enough RLIMIT_MEMLOCK)",
            paths.container().display()
        ),
        Errno::ENODEV | Errno::ENOENT => format!(
            "{node_path} went away ({e}): the device is being unbound; check its driver and retry"
        ),
        _ => format!("cannot open {node_path}: {e}"),
    };
    refuse.errno(e, message)
}

/// ` (by PID p, `cmdline`)` for the processes holding `node`.
fn holders_text(paths: &Paths, node: &Path) -> String {
    let holders = sysfs::holders(paths, node);
    let me = std::process::id();
    if holders.is_empty() {
        " by a process not visible in /proc (another PID namespace?), or one of its devices \
         is open through its cdev"
            .to_string()
    } else if holders.iter().all(|h| h.pid == me) {
        " in this process: two devices of one IOMMU group cannot be opened separately".to_string()
    } else {
        let list: Vec<String> = holders.iter().map(|h| h.to_string()).collect();
        format!(" (by {})", list.join("; "))
    }
}

/// ` (by PID p, `cmdline`)` for the other processes holding `node`, or
/// `None` if only this one does.
fn other_holders_text(paths: &Paths, node: &Path) -> Option<String> {
    let me = std::process::id();
    let list: Vec<String> = sysfs::holders(paths, node)
        .iter()
        .filter(|h| h.pid != me)
        .map(|h| h.to_string())
        .collect();
    (!list.is_empty()).then(|| format!(" (by {})", list.join("; ")))
}

fn not_viable(paths: &Paths, group: u32) -> String {
    let blockers = sysfs::group_blockers(paths, group);
    if blockers.is_empty() {
        return format!(
            "IOMMU group {group} is not viable although no device in {} has a non-VFIO driver: \
             another user (a VM through iommufd?) claimed its DMA ownership",
            paths.iommu_group(group).join("devices").display()
        );
    }
    let list: Vec<String> = blockers.iter().map(|m| m.to_string()).collect();
    format!(
        "IOMMU group {group} is not viable: every device in it must be bound to a VFIO driver \
         (or pci-stub) or be unbound; bind these to vfio-pci or unbind them: {}; {NEVER_REBINDS}",
        list.join(", ")
    )
}

/// The cdev path: /dev/vfio/devices/vfioN bound to /dev/iommu, attached to
/// a fresh IOAS.
fn open_cdev<S: Sys>(
    sys: S,
    paths: &Paths,
    spec: &str,
    path: &str,
    refuse: &Refuse,
) -> Result<KernelDevice<S>, OpenError> {
    let node = paths.under_dev(path);
    if !paths.vfio_dir().is_dir() {
        return Err(refuse.because(sysfs::no_dev_vfio(paths)));
    }
    if !paths.cdev_dir().is_dir() {
        return Err(refuse.because(format!(
            "no {}: this kernel has no VFIO device cdevs (CONFIG_VFIO_DEVICE_CDEV); open the \
             device by its PCI address or mdev UUID instead",
            paths.cdev_dir().display()
        )));
    }
    if !node.exists() {
        return Err(refuse.because(format!("no such VFIO device node; {PROBE_HINT}")));
    }
    let cdev = node
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(dev) = sysfs::cdev_device(paths, &cdev) else {
        return Err(refuse.because(format!(
            "no {}: the node is not a VFIO device cdev; {PROBE_HINT}",
            paths
                .sysfs
                .join("class/vfio-dev")
                .join(&cdev)
                .join("device")
                .display()
        )));
    };
    let iommu_path = paths.iommufd();
    if !iommu_path.exists() {
        return Err(refuse.because(format!(
            "no {}: a device cdev needs iommufd (CONFIG_IOMMUFD; `modprobe iommufd`); open the \
             device by its PCI address or mdev UUID instead",
            iommu_path.display()
        )));
    }
    let rw = OFlag::O_RDWR | OFlag::O_CLOEXEC;
    let iommufd = sys.open(&iommu_path, rw).map_err(|e| {
        let why = match e {
            Errno::EACCES | Errno::EPERM => ": run as root or give your user access to it",
            _ => "",
        };
        refuse.errno(e, format!("cannot open {}: {e}{why}", iommu_path.display()))
    })?;
    let noiommu = dev
        .iommu_group
        .is_some_and(|g| sysfs::is_noiommu_group(paths, g));
    let ioas = if noiommu {
        None
    } else {
        let mut alloc = IommuIoasAlloc {
            size: size_u32(IommuIoasAlloc::SIZE),
            flags: 0,
            out_ioas_id: 0,
        }
        .to_bytes();
        sys.ioctl(&iommufd, IOMMU_IOAS_ALLOC, &mut alloc, Pointee::None)
            .map_err(|e| refuse.errno(e, format!("IOMMU_IOAS_ALLOC failed: {e}")))?;
        Some(IommuIoasAlloc::from_bytes(&alloc).out_ioas_id)
    };

    let device = attach_cdev(&sys, &node, &iommufd, ioas).map_err(|(step, e)| {
        let message = match (step, e) {
            (CdevStep::Bind, Errno::EPERM) if noiommu => format!(
                "binding no-IOMMU device {} needs CAP_SYS_RAWIO: run as root",
                node.display()
            ),
            (CdevStep::Open, Errno::EACCES | Errno::EPERM) => format!(
                "permission denied opening {}: run as root or give your user access to it",
                node.display()
            ),
            (CdevStep::Open, _) => format!("cannot open {}: {e}", node.display()),
            (CdevStep::Bind, Errno::EBUSY) => {
                let held = dev
                    .iommu_group
                    .and_then(|g| sysfs::group_node(paths, g).map(|n| (g, n)));
                match held {
                    Some((g, n)) => format!(
                        "VFIO_DEVICE_BIND_IOMMUFD failed: {e}: IOMMU group {g} is open through \
                         {}{}; stop that process or choose another device",
                        n.path.display(),
                        holders_text(paths, &n.path)
                    ),
                    None => format!(
                        "VFIO_DEVICE_BIND_IOMMUFD failed: {e}: the device or its group is in use"
                    ),
                }
            }
            // vfio_df_open(): a cdev is bound by one user at a time.
            (CdevStep::Bind, Errno::EINVAL) => match other_holders_text(paths, &node) {
                Some(holders) => format!(
                    "VFIO_DEVICE_BIND_IOMMUFD failed: {e}: {} is already bound{holders}, and a \
                     device cdev has one user at a time; stop that process or choose another \
                     device",
                    node.display()
                ),
                None => format!("VFIO_DEVICE_BIND_IOMMUFD failed: {e}"),
            },
            (CdevStep::Bind, _) => format!("VFIO_DEVICE_BIND_IOMMUFD failed: {e}"),
            (CdevStep::Attach, _) => format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT failed: {e}"),
        };
        refuse.errno(e, message)
    })?;
    let desc = describe(paths, spec, &dev, Access::Cdev);
    Ok(KernelDevice::new(
        sys,
        desc,
        Reach::Cdev {
            path: node,
            iommufd,
            ioas,
        },
        device,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::kernel::fake::{FdKind, Lab, BDF, UUID};
    use crate::device::{Device, DeviceExt};

    #[test]
    fn opens_a_pci_device_through_its_group() {
        let lab = Lab::new();
        let mut dev = lab.open(BDF).unwrap();
        let desc = dev.description().clone();
        assert_eq!(desc.name, BDF);
        assert_eq!(desc.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(desc.iommu_group, Some(12));
        assert_eq!(desc.access, Access::Group);
        assert_eq!(desc.device_type.as_deref(), Some("15b3:101e"));
        assert_eq!(
            desc.sysfs_path,
            Some(lab.tree.paths.pci_device(BDF).display().to_string())
        );
        // The uAPI sequence, in order.
        let calls = lab.sys.calls();
        let expect = [
            "open vfio/12".to_string(),
            format!("ioctl Group {VFIO_GROUP_GET_STATUS:#x}"),
            "open vfio/vfio".to_string(),
            format!("ioctl Container {VFIO_GET_API_VERSION:#x} 0"),
            format!("ioctl Container {VFIO_CHECK_EXTENSION:#x} 3"),
            format!("ioctl Group {VFIO_GROUP_SET_CONTAINER:#x}"),
            format!("ioctl Container {VFIO_SET_IOMMU:#x} 3"),
            format!("ioctl Group {VFIO_GROUP_GET_DEVICE_FD:#x}"),
        ];
        assert_eq!(calls, expect);
        assert_eq!(dev.get_state(), Ok(MigState::Running));
        assert_eq!(lab.sys.open_fds(FdKind::Device), 1);
    }

    #[test]
    fn opens_an_mdev_by_uuid() {
        let lab = Lab::new();
        let dev = lab.open(UUID).unwrap();
        let desc = dev.description();
        assert_eq!(desc.name, UUID);
        assert_eq!(desc.driver.as_deref(), Some("mtty"));
        assert_eq!(desc.device_type.as_deref(), Some("mtty-2"));
        assert_eq!(desc.iommu_group, Some(3));
    }

    #[test]
    fn mtty_declares_the_writes_of_its_lab_parameter() {
        let lab = Lab::new();
        assert!(lab.open(UUID).unwrap().description().dma_writes.is_empty());
        let params = lab.tree.paths.sysfs.join("module/mtty/parameters");
        std::fs::create_dir_all(&params).unwrap();
        std::fs::write(params.join("lab_dma_writes"), "1191936,1376272\n").unwrap();
        let dev = lab.open(UUID).unwrap();
        assert_eq!(dev.description().dma_writes, [0x12_3000, 0x15_0010]);
    }

    #[test]
    fn opens_a_cdev_through_iommufd() {
        let lab = Lab::new().with_cdev();
        let mut dev = lab.open("/dev/vfio/devices/vfio0").unwrap();
        assert_eq!(dev.description().access, Access::Cdev);
        assert_eq!(dev.description().name, BDF);
        assert_eq!(dev.description().device_type.as_deref(), Some("15b3:101e"));
        let calls = lab.sys.calls();
        assert_eq!(calls[0], "open iommu");
        assert_eq!(calls[1], format!("ioctl Iommufd {IOMMU_IOAS_ALLOC:#x}"));
        assert_eq!(calls[2], "open vfio/devices/vfio0");
        assert_eq!(
            calls[3],
            format!("ioctl Device {VFIO_DEVICE_BIND_IOMMUFD:#x}")
        );
        assert_eq!(
            calls[4],
            format!("ioctl Device {VFIO_DEVICE_ATTACH_IOMMUFD_PT:#x}")
        );
        assert_eq!(dev.get_state(), Ok(MigState::Running));
        // Reopening binds and attaches again.
        dev.close_device().unwrap();
        assert_eq!(dev.get_state(), Err(Errno::EBADF));
        dev.reopen().unwrap();
        assert_eq!(dev.get_state(), Ok(MigState::Running));
        assert_eq!(lab.sys.kernel().devices[BDF].opens, 2);
    }

    #[test]
    fn a_noiommu_cdev_is_bound_but_not_attached() {
        let lab = Lab::new().with_cdev();
        lab.tree.pci(
            "0000:6f:00.0",
            Some("vfio-pci"),
            Some(30),
            "0x1af4",
            "0x1041",
        );
        lab.tree.node("vfio/noiommu-30");
        lab.tree
            .cdev("vfio1", &lab.tree.paths.pci_device("0000:6f:00.0"));
        lab.sys.group(30, true, &["0000:6f:00.0"]);
        lab.sys
            .kernel()
            .cdevs
            .insert("vfio1".into(), "0000:6f:00.0".into());
        let mut dev = lab.open("/dev/vfio/devices/vfio1").unwrap();
        let calls = lab.sys.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(
            calls[2],
            format!("ioctl Device {VFIO_DEVICE_BIND_IOMMUFD:#x}")
        );
        dev.reopen().unwrap();
        assert!(lab
            .sys
            .calls()
            .iter()
            .all(|c| !c.contains(&format!("{VFIO_DEVICE_ATTACH_IOMMUFD_PT:#x}"))));
    }

    #[test]
    fn refuses_devices_that_do_not_exist() {
        let lab = Lab::new().with_cdev();
        let (msg, errno) = lab.refusal("0000:3b:00.7");
        assert!(msg.starts_with("no such PCI device"), "{msg}");
        assert!(msg.contains("vfio-migtest probe"), "{msg}");
        assert_eq!(errno, None);
        let (msg, _) = lab.refusal("00000000-0000-0000-0000-000000000000");
        assert!(msg.starts_with("no such mdev device"), "{msg}");
        let (msg, _) = lab.refusal("/dev/vfio/devices/vfio9");
        assert!(msg.starts_with("no such VFIO device node"), "{msg}");
        assert!(lab.sys.calls().is_empty(), "nothing was opened");
    }

    #[test]
    fn refuses_a_device_without_a_vfio_driver() {
        let lab = Lab::new();
        lab.tree.pci(
            "0000:3b:00.0",
            Some("mlx5_core"),
            Some(11),
            "0x15b3",
            "0x101d",
        );
        let err = lab.open("3b:00.0").err().unwrap();
        let text = err.to_string();
        assert!(
            text.starts_with("3b:00.0: bound to `mlx5_core`, which is not a VFIO driver"),
            "{text}"
        );
        assert!(text.contains("driver_override"), "{text}");
        assert!(text.contains("echo 0000:3b:00.0 >"), "{text}");
        assert!(text.contains("driver/unbind"), "{text}");
        assert!(text.contains("drivers_probe"), "{text}");
        assert!(text.contains("never rebinds drivers itself"), "{text}");

        lab.tree
            .pci("0000:3b:00.2", None, Some(13), "0x15b3", "0x101d");
        let (msg, _) = lab.refusal("0000:3b:00.2");
        assert!(
            msg.starts_with("not bound to any driver; bind it to vfio-pci"),
            "{msg}"
        );
        assert!(!msg.contains("unbind"), "{msg}");

        // Variant drivers and mdev vendor drivers are fine.
        lab.tree.pci(
            "0000:3b:00.3",
            Some("hisi_acc_vfio_pci"),
            Some(14),
            "0x19e5",
            "0xa251",
        );
        lab.tree.node("vfio/14");
        lab.sys.group(14, true, &["0000:3b:00.3"]);
        assert!(lab.open("0000:3b:00.3").is_ok());
        assert!(lab.sys.calls().iter().all(|c| !c.contains("vfio/11")));
    }

    #[test]
    fn refuses_without_iommu_group_or_dev_vfio() {
        let lab = Lab::new();
        lab.tree
            .pci("0000:3b:00.4", Some("vfio-pci"), None, "0x15b3", "0x101e");
        let (msg, _) = lab.refusal("0000:3b:00.4");
        assert!(msg.starts_with("has no IOMMU group"), "{msg}");
        assert!(msg.contains("intel_iommu=on"), "{msg}");

        lab.tree.pci(
            "0000:3b:00.5",
            Some("vfio-pci"),
            Some(40),
            "0x15b3",
            "0x101e",
        );
        let (msg, _) = lab.refusal("0000:3b:00.5");
        assert!(msg.starts_with("IOMMU group 40 has no node"), "{msg}");

        std::fs::remove_dir_all(lab.tree.paths.dev.join("vfio")).unwrap();
        let (msg, _) = lab.refusal(BDF);
        assert_eq!(
            msg,
            format!(
                "no {}: load the vfio and vfio-pci modules (modprobe vfio-pci) and bind a device",
                lab.tree.paths.dev.join("vfio").display()
            )
        );
    }

    #[test]
    fn names_the_process_holding_the_group() {
        let lab = Lab::new();
        let node = lab.tree.paths.dev.join("vfio/12");
        lab.tree
            .process(4242, &["qemu-system-x86_64", "-name", "vm1"], &[&node]);
        let first = lab.open(BDF).unwrap();
        let (msg, errno) = lab.refusal(BDF);
        assert_eq!(errno, Some(Errno::EBUSY));
        assert_eq!(
            msg,
            format!(
                "IOMMU group 12 ({}) is already open (by PID 4242, `qemu-system-x86_64 -name vm1`); \
                 stop that process or choose another device",
                node.display()
            )
        );
        // Closing the first opener frees the group.
        drop(first);
        assert!(lab.open(BDF).is_ok());
    }

    #[test]
    fn a_busy_group_with_no_visible_holder_says_so() {
        let lab = Lab::new();
        let _first = lab.open(BDF).unwrap();
        let (msg, _) = lab.refusal(BDF);
        assert!(msg.contains("not visible in /proc"), "{msg}");
    }

    #[test]
    fn permission_problems_say_to_run_as_root() {
        let lab = Lab::new();
        let node = lab.tree.paths.dev.join("vfio/12");
        lab.sys.kernel().open_errors.insert(node, Errno::EACCES);
        let (msg, errno) = lab.refusal(BDF);
        assert_eq!(errno, Some(Errno::EACCES));
        assert!(msg.starts_with("permission denied opening"), "{msg}");
        assert!(msg.contains("run as root"), "{msg}");
    }

    #[test]
    fn a_non_viable_group_lists_the_offenders() {
        let lab = Lab::new();
        lab.tree.pci(
            "0000:5e:00.0",
            Some("vfio-pci"),
            Some(20),
            "0x8086",
            "0x10fb",
        );
        lab.tree
            .pci("0000:5e:00.1", Some("ixgbe"), Some(20), "0x8086", "0x10fb");
        lab.tree.pci(
            "0000:5e:00.2",
            Some("pci-stub"),
            Some(20),
            "0x8086",
            "0x10fb",
        );
        lab.tree.node("vfio/20");
        lab.sys.group(20, false, &["0000:5e:00.0"]);
        let (msg, _) = lab.refusal("0000:5e:00.0");
        assert!(msg.starts_with("IOMMU group 20 is not viable"), "{msg}");
        assert!(
            msg.contains("bind these to vfio-pci or unbind them: 0000:5e:00.1 (ixgbe);"),
            "{msg}"
        );
        assert!(!msg.contains("0000:5e:00.2"), "{msg}");
        // The refusal closed what it opened.
        assert_eq!(lab.sys.open_fds(FdKind::Group), 0);
    }

    #[test]
    fn container_problems_are_explained() {
        let lab = Lab::new();
        lab.sys.kernel().type1v2 = false;
        let (msg, _) = lab.refusal(BDF);
        assert!(msg.contains("modprobe vfio_iommu_type1"), "{msg}");
        lab.sys.kernel().type1v2 = true;
        lab.sys.kernel().api_version = 1;
        let (msg, _) = lab.refusal(BDF);
        assert!(msg.contains("reports VFIO API version 1, not 0"), "{msg}");
        assert_eq!(lab.sys.open_fds(FdKind::Container), 0);
        assert_eq!(lab.sys.open_fds(FdKind::Group), 0);
    }

    #[test]
    fn a_busy_device_is_explained() {
        let lab = Lab::new();
        lab.sys.kernel().devices.get_mut(BDF).unwrap().open_error = Some(Errno::EBUSY);
        let (msg, errno) = lab.refusal(BDF);
        assert_eq!(errno, Some(Errno::EBUSY));
        assert!(
            msg.starts_with("VFIO_GROUP_GET_DEVICE_FD failed: EBUSY"),
            "{msg}"
        );
        assert!(msg.contains("in use"), "{msg}");
    }

    #[test]
    fn noiommu_groups_need_the_noiommu_container() {
        let lab = Lab::new();
        lab.tree.pci(
            "0000:6f:00.0",
            Some("vfio-pci"),
            Some(30),
            "0x1af4",
            "0x1041",
        );
        lab.tree.node("vfio/noiommu-30");
        lab.sys.group(30, true, &["0000:6f:00.0"]);
        // The double offers Type1v2 only, like a kernel without noiommu.
        let (msg, _) = lab.refusal("0000:6f:00.0");
        assert!(msg.contains("enable_unsafe_noiommu_mode=1"), "{msg}");
        assert!(lab.sys.calls().contains(&format!(
            "ioctl Container {VFIO_CHECK_EXTENSION:#x} {VFIO_NOIOMMU_IOMMU}"
        )));
    }

    #[test]
    fn cdev_problems_are_explained() {
        let lab = Lab::new();
        let (msg, _) = lab.refusal("/dev/vfio/devices/vfio0");
        assert!(msg.contains("CONFIG_VFIO_DEVICE_CDEV"), "{msg}");
        let lab = Lab::new().with_cdev();
        std::fs::remove_file(lab.tree.paths.dev.join("iommu")).unwrap();
        let (msg, _) = lab.refusal("/dev/vfio/devices/vfio0");
        assert!(
            msg.starts_with(&format!(
                "no {}",
                lab.tree.paths.dev.join("iommu").display()
            )),
            "{msg}"
        );
        assert!(msg.contains("CONFIG_IOMMUFD"), "{msg}");

        // Bound elsewhere through the group: BIND_IOMMUFD says EBUSY.
        let lab = Lab::new().with_cdev();
        let node = lab.tree.paths.dev.join("vfio/12");
        lab.tree.process(31337, &["cloud-hypervisor"], &[&node]);
        let _group_user = lab.open(BDF).unwrap();
        let (msg, errno) = lab.refusal("/dev/vfio/devices/vfio0");
        assert_eq!(errno, Some(Errno::EBUSY));
        assert!(msg.contains("IOMMU group 12 is open through"), "{msg}");
        assert!(msg.contains("PID 31337, `cloud-hypervisor`"), "{msg}");
    }

    #[test]
    fn a_cdev_bound_elsewhere_names_its_holder() {
        let lab = Lab::new().with_cdev();
        let node = lab.tree.paths.dev.join("vfio/devices/vfio0");
        lab.tree
            .process(4243, &["qemu-system-x86_64", "-name", "vm2"], &[&node]);
        let first = lab.open("/dev/vfio/devices/vfio0").unwrap();
        let (msg, errno) = lab.refusal("/dev/vfio/devices/vfio0");
        assert_eq!(errno, Some(Errno::EINVAL));
        assert_eq!(
            msg,
            format!(
                "VFIO_DEVICE_BIND_IOMMUFD failed: EINVAL: Invalid argument: {} is already \
                 bound (by PID 4243, `qemu-system-x86_64 -name vm2`), and a device cdev has \
                 one user at a time; stop that process or choose another device",
                node.display()
            )
        );
        drop(first);
        assert!(lab.open("/dev/vfio/devices/vfio0").is_ok());
    }
}
