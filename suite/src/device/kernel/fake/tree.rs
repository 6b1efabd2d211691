//! A temporary sysfs + /dev + /proc tree, and a lab of devices in it.
use super::*;

/// A temporary sysfs, /dev and /proc, laid out like the kernel's.
pub struct Tree {
    _dir: tempfile::TempDir,
    pub paths: Paths,
}

impl Tree {
    pub fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            sysfs: dir.path().join("sys"),
            dev: dir.path().join("dev"),
            proc: dir.path().join("proc"),
        };
        for d in [&paths.sysfs, &paths.dev, &paths.proc] {
            std::fs::create_dir_all(d).unwrap();
        }
        Tree { _dir: dir, paths }
    }

    fn dir(&self, path: &Path) -> PathBuf {
        std::fs::create_dir_all(path).unwrap();
        path.to_path_buf()
    }

    fn link(&self, target: &Path, link: &Path) {
        self.dir(link.parent().unwrap());
        let _ = std::fs::remove_file(link);
        symlink(target, link).unwrap();
    }

    /// Links `dev` to its driver and IOMMU group the way sysfs does.
    fn attach(&self, dev: &Path, name: &str, bus: &str, driver: Option<&str>, group: Option<u32>) {
        if let Some(driver) = driver {
            let d = self.dir(
                &self
                    .paths
                    .sysfs
                    .join("bus")
                    .join(bus)
                    .join("drivers")
                    .join(driver),
            );
            self.link(&d, &dev.join("driver"));
        }
        if let Some(group) = group {
            let g = self.dir(&self.paths.iommu_group(group));
            self.link(&g, &dev.join("iommu_group"));
            self.link(dev, &g.join("devices").join(name));
        }
    }

    pub fn pci(
        &self,
        bdf: &str,
        driver: Option<&str>,
        group: Option<u32>,
        vendor: &str,
        device: &str,
    ) {
        let dev = self.dir(&self.paths.sysfs.join("devices/pci0000:00").join(bdf));
        std::fs::write(dev.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(dev.join("device"), format!("{device}\n")).unwrap();
        self.attach(&dev, bdf, "pci", driver, group);
        self.link(&dev, &self.paths.pci_device(bdf));
    }

    pub fn mdev(&self, uuid: &str, driver: Option<&str>, group: Option<u32>, mdev_type: &str) {
        let parent = self.dir(&self.paths.sysfs.join("devices/virtual/mtty/mtty"));
        let ty = self.dir(&parent.join("mdev_supported_types").join(mdev_type));
        let dev = self.dir(&parent.join(uuid));
        self.link(&ty, &dev.join("mdev_type"));
        self.attach(&dev, uuid, "mdev", driver, group);
        self.link(&dev, &self.paths.mdev_device(uuid));
    }

    /// A device node (a plain file) under /dev.
    pub fn node(&self, rel: &str) -> PathBuf {
        let path = self.paths.dev.join(rel);
        self.dir(path.parent().unwrap());
        std::fs::write(&path, b"").unwrap();
        path
    }

    /// `/dev/vfio/devices/<cdev>` for the device at `device`.
    pub fn cdev(&self, cdev: &str, device: &Path) -> PathBuf {
        let class = self.paths.sysfs.join("class/vfio-dev").join(cdev);
        self.link(
            &std::fs::canonicalize(device).unwrap(),
            &class.join("device"),
        );
        self.node(&format!("vfio/devices/{cdev}"))
    }

    /// A process `pid` running `argv` with `files` open.
    pub fn process(&self, pid: u32, argv: &[&str], files: &[&Path]) {
        let dir = self.dir(&self.paths.proc.join(pid.to_string()));
        let mut cmdline = argv.join("\0");
        cmdline.push('\0');
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
        for (i, f) in files.iter().enumerate() {
            self.link(f, &dir.join("fd").join((i + 3).to_string()));
        }
    }
}

pub const BDF: &str = "0000:3b:00.1";
pub const UUID: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

/// A host with one PCI device bound to vfio-pci, alone in IOMMU group 12,
/// and one mtty mdev in group 3; /dev/vfio is complete.
pub struct Lab {
    pub tree: Tree,
    pub sys: FakeSys,
}

impl Lab {
    pub fn new() -> Lab {
        let tree = Tree::new();
        tree.pci(BDF, Some("vfio-pci"), Some(12), "0x15b3", "0x101e");
        tree.mdev(UUID, Some("mtty"), Some(3), "mtty-2");
        tree.node("vfio/vfio");
        tree.node("vfio/12");
        tree.node("vfio/3");
        let sys = FakeSys::new(&tree.paths.dev);
        sys.group(12, true, &[BDF]);
        sys.group(3, true, &[UUID]);
        Lab { tree, sys }
    }

    /// Adds the cdev `vfio0` for the PCI device, and /dev/iommu.
    pub fn with_cdev(self) -> Lab {
        let node = self.tree.cdev("vfio0", &self.tree.paths.pci_device(BDF));
        self.tree.node("iommu");
        self.sys.kernel().cdevs.insert("vfio0".into(), BDF.into());
        assert!(node.ends_with("vfio/devices/vfio0"));
        self
    }

    pub fn open(&self, spec: &str) -> Result<KernelDevice<FakeSys>, OpenError> {
        let parsed = DeviceSpec::parse(spec)?;
        open_device(self.sys.clone(), &self.tree.paths, spec, &parsed)
    }

    /// The message of a refusal to open `spec`.
    pub fn refusal(&self, spec: &str) -> (String, Option<Errno>) {
        match self.open(spec) {
            Err(OpenError::Refused { message, errno, .. }) => (message, errno),
            Err(other) => panic!("{spec}: not a refusal: {other}"),
            Ok(_) => panic!("{spec}: opened"),
        }
    }
}
