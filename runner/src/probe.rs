//! `vfio-migtest probe`: every VFIO device of the host (or the devices
//! given) and what each supports. Discovery reads sysfs only; each device
//! is opened by the `__probe` child under a deadline, so a device that hangs
//! or cannot be opened costs its own row, never the command.

use std::time::Duration;

use anyhow::{Context, Result};
use results::Grading;
use serde::{Deserialize, Serialize};
use suite::device::kernel::{discover, Discovered};
use suite::device::{Access, DeviceSpec};
use suite::uapi::migration_flag_names;

use crate::case::{self, Harness, ProbeFailure};
use crate::cli::ProbeCmd;
use crate::supervise::KillPolicy;

/// kselftest's "skip": there is no device to work with.
pub const NO_DEVICE_EXIT: i32 = 4;

/// What `probe --json` prints (stable: fields are only ever added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub tool_version: String,
    pub devices: Vec<ProbedDevice>,
}

/// One device: what sysfs says and what the device answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbedDevice {
    /// What to pass as `--device`.
    pub spec: String,
    /// The name the kernel knows (BDF, mdev UUID), `sim` for the simulator.
    pub name: String,
    pub driver: Option<String>,
    pub sysfs_path: Option<String>,
    /// `group`, `cdev` or `simulator`: how the device was opened.
    pub access: Option<Access>,
    pub iommu_group: Option<u32>,
    /// Whether VFIO can use the group (from sysfs; `None` when unknown).
    pub group_viable: Option<bool>,
    /// Devices of the group bound to non-VFIO drivers: `BDF (driver)`.
    pub group_blockers: Vec<String>,
    pub noiommu: bool,
    pub cdev: Option<String>,
    /// mdev type, PCI `vendor:device` or the simulator's type.
    pub device_type: Option<String>,
    /// Why the device could not be opened or probed.
    pub error: Option<String>,
    /// `v1`, `v2`: the migration protocols it speaks.
    pub protocols: Vec<String>,
    pub migration_flags: Option<u64>,
    /// The flags by name: `STOP_COPY|P2P|PRE_COPY`.
    pub migration_flag_names: Option<String>,
    /// Why GET MIGRATION failed (`ENOTTY`: no migration v2).
    pub migration_error: Option<String>,
    /// The state the device was found in.
    pub state: Option<String>,
    pub stop_copy_length: Option<u64>,
    /// DMA logging answers PROBE (`None` without migration v2).
    pub dma_logging: Option<bool>,
    /// MIG_PRECOPY_INFOv2 answers PROBE.
    pub precopy_info_v2: Option<bool>,
    pub v1_region: Option<V1Region>,
    /// PCI `vendor:device` read from config space through the region path.
    pub config_space_id: Option<String>,
    /// Why config space could not be read.
    pub config_space_error: Option<String>,
    /// PCI `vendor:device` as sysfs has it.
    pub sysfs_id: Option<String>,
    /// Whether config space and sysfs agree (when both are known).
    pub ids_match: Option<bool>,
}

/// The v1 migration region (type 3 / subtype 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Region {
    pub index: u32,
    pub size: u64,
    /// Sparse-mmap areas of the region: (offset, size). Empty: the data
    /// area is reached by read/write only.
    #[serde(default)]
    pub mmap_areas: Vec<(u64, u64)>,
}

impl V1Region {
    /// A line saying where the region is and how its data area is reached.
    fn describe(&self) -> String {
        let access = if self.mmap_areas.is_empty() {
            "read/write only".to_string()
        } else {
            let areas: Vec<String> = self
                .mmap_areas
                .iter()
                .map(|(offset, size)| format!("{size} bytes at {offset}"))
                .collect();
            format!("sparse mmap of {}", areas.join(", "))
        };
        format!(
            "v1 migration region: index {}, {} bytes; data area by {access}",
            self.index, self.size
        )
    }
}

type Probed = Result<(suite::device::DeviceDescription, suite::exec::DeviceCaps), ProbeFailure>;

impl ProbedDevice {
    fn new(spec: &DeviceSpec, sysfs: Option<&Discovered>, probed: &Probed) -> ProbedDevice {
        let mut d = ProbedDevice {
            spec: spec.to_string(),
            name: spec.to_string(),
            ..ProbedDevice::default()
        };
        if let Some(s) = sysfs {
            d.name = s.name.clone();
            d.driver = s.driver.clone();
            d.sysfs_path = Some(s.sysfs_path.clone());
            d.iommu_group = s.iommu_group;
            d.group_viable = Some(s.group_viable);
            d.group_blockers = s.group_blockers.clone();
            d.noiommu = s.noiommu;
            d.cdev = s.cdev.clone();
            d.device_type = s.mdev_type.clone().or_else(|| s.pci_id.clone());
            d.sysfs_id = s.pci_id.clone();
        }
        match probed {
            Ok((desc, caps)) => {
                d.name = desc.name.clone();
                d.driver = desc.driver.clone().or(d.driver);
                d.sysfs_path = desc.sysfs_path.clone().or(d.sysfs_path);
                d.access = Some(desc.access);
                d.iommu_group = desc.iommu_group.or(d.iommu_group);
                d.device_type = desc.device_type.clone().or(d.device_type);
                d.protocols = caps.protocols();
                d.migration_flags = caps.migration_flags;
                d.migration_flag_names = caps.migration_flags.map(migration_flag_names);
                d.migration_error = caps.migration_error.clone();
                d.state = caps.state.clone();
                d.stop_copy_length = caps.stop_copy_length;
                let v2 = caps.migration_flags.is_some();
                d.dma_logging = v2.then_some(caps.logging);
                d.precopy_info_v2 = v2.then_some(caps.precopy_info_v2);
                d.v1_region = caps.v1_region.map(|(index, size)| V1Region {
                    index,
                    size,
                    mmap_areas: caps.v1_mmap_areas.clone(),
                });
                d.config_space_id = caps.pci_config_id.clone();
                d.config_space_error = caps.pci_config_error.clone();
                if let (Some(a), Some(b)) = (&d.config_space_id, &d.sysfs_id) {
                    d.ids_match = Some(a == b);
                }
            }
            Err(ProbeFailure::Open(m)) => d.error = Some(m.clone()),
            Err(ProbeFailure::Wedged(m)) => d.error = Some(format!("wedged: {m}")),
        }
        d
    }

    /// Lines below the table: what is wrong with the device, if anything.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            // Open errors usually name the device already.
            let e = e.strip_prefix(&format!("{}: ", self.spec)).unwrap_or(e);
            out.push(format!("cannot be used: {e}"));
        }
        if self.group_viable == Some(false) {
            out.push(match (self.iommu_group, self.group_blockers.is_empty()) {
                (Some(g), false) => format!(
                    "IOMMU group {g} is not viable: {} must be unbound or bound to vfio-pci",
                    self.group_blockers.join(", ")
                ),
                (Some(g), true) => format!("IOMMU group {g} is not viable"),
                (None, _) => "no IOMMU group".to_string(),
            });
        }
        if self.ids_match == Some(false) {
            out.push(format!(
                "config space says {} but sysfs says {}: the region access path is wrong",
                self.config_space_id.as_deref().unwrap_or("?"),
                self.sysfs_id.as_deref().unwrap_or("?")
            ));
        }
        if let Some(e) = &self.config_space_error {
            out.push(format!("reading config space failed with {e}"));
        }
        out
    }
}

fn harness(timeout: Duration) -> Result<Harness> {
    Ok(Harness {
        exe: std::env::current_exe().context("cannot find this program's path")?,
        seed: 0,
        buffer_size: 1 << 20,
        arc_latency_limit: suite::exec::ARC_LATENCY_LIMIT,
        downtime_budget: suite::exec::DOWNTIME_BUDGET,
        include_dangerous: false,
        grading: Grading::default(),
        kill: KillPolicy::default(),
        device_timeout: timeout,
        grace: Duration::ZERO,
        progress: crate::progress::Progress::default(),
    })
}

/// The discovered device a spec names, if discovery found it.
fn sysfs_entry<'a>(known: &'a [Discovered], spec: &DeviceSpec) -> Option<&'a Discovered> {
    match spec {
        DeviceSpec::Pci(name) | DeviceSpec::Mdev(name) => known.iter().find(|d| &d.name == name),
        DeviceSpec::Cdev(path) => known.iter().find(|d| d.cdev.as_ref() == Some(path)),
        DeviceSpec::Sim(_) => None,
    }
}

/// Runs `probe`; returns the exit code.
pub fn probe(args: &ProbeCmd) -> Result<i32> {
    let (specs, known) = if args.devices.is_empty() {
        match discover() {
            Err(why) => {
                eprintln!("no usable device: {why}");
                return Ok(NO_DEVICE_EXIT);
            }
            Ok(found) if found.is_empty() => {
                eprintln!(
                    "no usable device: no VFIO device on this host (bind one to vfio-pci or its \
                     variant driver, or create an mdev); `--device sim` probes the simulator"
                );
                return Ok(NO_DEVICE_EXIT);
            }
            Ok(found) => (found.iter().map(Discovered::spec).collect(), found),
        }
    } else {
        let real = args.devices.iter().any(|s| !s.is_sim());
        // Explicit real devices still get their sysfs view when discovery works.
        let known = if real {
            discover().unwrap_or_default()
        } else {
            Vec::new()
        };
        (args.devices.clone(), known)
    };
    let h = harness(args.timeout)?;
    let devices: Vec<ProbedDevice> = specs
        .iter()
        .map(|spec| {
            let probed = case::probe(&h, spec);
            let by_name = probed
                .as_ref()
                .ok()
                .and_then(|(desc, _)| known.iter().find(|d| d.name == desc.name));
            ProbedDevice::new(spec, sysfs_entry(&known, spec).or(by_name), &probed)
        })
        .collect();
    let report = ProbeReport {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        devices,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serialising the probe report")?
        );
    } else {
        print!("{}", table(&report.devices));
    }
    Ok(if report.devices.iter().any(|d| d.error.is_none()) {
        0
    } else {
        NO_DEVICE_EXIT
    })
}

fn or_dash<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// The aligned table, then one line per problem.
fn table(devices: &[ProbedDevice]) -> String {
    let header = [
        "DEVICE",
        "DRIVER",
        "GROUP",
        "PROTOCOLS",
        "MIGRATION FLAGS",
        "STOP_COPY_LENGTH",
        "DMA LOGGING",
        "PRECOPY_INFOv2",
        "TYPE",
        "CONFIG ID",
    ];
    let rows: Vec<[String; 10]> = devices
        .iter()
        .map(|d| {
            let group = match (d.iommu_group, d.group_viable, d.noiommu) {
                (Some(g), _, true) => format!("noiommu-{g}"),
                (Some(g), Some(false), _) => format!("{g} (not viable)"),
                (g, _, _) => or_dash(&g),
            };
            let config = match (&d.config_space_id, d.ids_match) {
                (Some(id), Some(true)) => format!("{id} (= sysfs)"),
                (Some(id), Some(false)) => format!("{id} (!= sysfs)"),
                (id, _) => or_dash(id),
            };
            let protocols = if d.protocols.is_empty() {
                "-".to_string()
            } else {
                d.protocols.join(",")
            };
            let flags = match (&d.migration_flag_names, &d.migration_error) {
                (Some(f), _) => f.clone(),
                (None, Some(e)) if d.error.is_none() => format!("({e})"),
                _ => "-".into(),
            };
            [
                d.spec.clone(),
                or_dash(&d.driver),
                group,
                protocols,
                flags,
                or_dash(&d.stop_copy_length),
                yes_no(d.dma_logging),
                yes_no(d.precopy_info_v2),
                or_dash(&d.device_type),
                config,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header);
    for row in &rows {
        out += &line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let regions: Vec<String> = devices
        .iter()
        .filter_map(|d| Some(format!("{}: {}", d.spec, d.v1_region.as_ref()?.describe())))
        .collect();
    if !regions.is_empty() {
        out.push('\n');
        for line in regions {
            out += &line;
            out.push('\n');
        }
    }
    let problems: Vec<String> = devices
        .iter()
        .flat_map(|d| {
            d.problems()
                .into_iter()
                .map(move |p| format!("{}: {p}", d.spec))
        })
        .collect();
    if !problems.is_empty() {
        out.push('\n');
        for p in problems {
            out += &p;
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use suite::device::kernel::Bus;
    use suite::device::DeviceDescription;
    use suite::exec::DeviceCaps;

    fn discovered() -> Discovered {
        Discovered {
            name: "0000:5e:00.0".into(),
            bus: Bus::Pci,
            driver: Some("vfio-pci".into()),
            sysfs_path: "/sys/bus/pci/devices/0000:5e:00.0".into(),
            iommu_group: Some(20),
            group_node: None,
            noiommu: false,
            group_viable: false,
            group_blockers: vec!["0000:5e:00.1 (ixgbe)".into()],
            cdev: Some("/dev/vfio/devices/vfio2".into()),
            mdev_type: None,
            pci_id: Some("8086:10fb".into()),
        }
    }

    fn probed(config_id: &str) -> Probed {
        let desc = DeviceDescription {
            spec: "0000:5e:00.0".into(),
            name: "0000:5e:00.0".into(),
            driver: Some("vfio-pci".into()),
            sysfs_path: None,
            iommu_group: Some(20),
            access: Access::Cdev,
            device_type: Some("8086:10fb".into()),
            dma_writes: Vec::new(),
        };
        let caps = DeviceCaps {
            migration_flags: Some(3),
            stop_copy_length: Some(4096),
            logging: true,
            pci_config_id: Some(config_id.into()),
            ..DeviceCaps::default()
        };
        Ok((desc, caps))
    }

    #[test]
    fn sysfs_and_the_device_answers_combine() {
        let sysfs = discovered();
        let d = ProbedDevice::new(
            &DeviceSpec::Pci("0000:5e:00.0".into()),
            Some(&sysfs),
            &probed("8086:10fb"),
        );
        assert_eq!(d.migration_flag_names.as_deref(), Some("STOP_COPY|P2P"));
        assert_eq!(
            (d.dma_logging, d.precopy_info_v2),
            (Some(true), Some(false))
        );
        assert_eq!(d.ids_match, Some(true));
        assert_eq!(d.sysfs_path.as_deref(), Some(sysfs.sysfs_path.as_str()));
        assert_eq!(
            d.problems(),
            ["IOMMU group 20 is not viable: 0000:5e:00.1 (ixgbe) must be unbound or bound to vfio-pci"]
        );
        let bad = ProbedDevice::new(
            &DeviceSpec::Pci("0000:5e:00.0".into()),
            Some(&sysfs),
            &probed("1234:5678"),
        );
        assert_eq!(bad.ids_match, Some(false));
        assert!(bad.problems()[1].contains("config space says 1234:5678 but sysfs says 8086:10fb"));
    }

    #[test]
    fn a_device_that_cannot_be_opened_keeps_its_sysfs_view() {
        let sysfs = discovered();
        let failed: Probed = Err(ProbeFailure::Open("0000:5e:00.0: group 20 is busy".into()));
        let d = ProbedDevice::new(
            &DeviceSpec::Pci("0000:5e:00.0".into()),
            Some(&sysfs),
            &failed,
        );
        assert_eq!(d.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(d.device_type.as_deref(), Some("8086:10fb"));
        assert_eq!(d.migration_flags, None);
        assert_eq!(d.dma_logging, None);
        assert_eq!(d.problems()[0], "cannot be used: group 20 is busy");
        let text = table(&[d]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("DEVICE") && lines[0].ends_with("CONFIG ID"));
        assert!(lines[1].contains("20 (not viable)"), "{text}");
        assert_eq!(lines[0].find("DRIVER"), lines[1].find("vfio-pci"), "{text}");
        assert_eq!(lines[3], "0000:5e:00.0: cannot be used: group 20 is busy");
    }

    #[test]
    fn specs_find_their_sysfs_entry() {
        let known = [discovered()];
        assert!(sysfs_entry(&known, &crate::cli::device_spec("5e:00.0").unwrap()).is_some());
        assert!(sysfs_entry(
            &known,
            &crate::cli::device_spec("/dev/vfio/devices/vfio2").unwrap()
        )
        .is_some());
        assert!(sysfs_entry(
            &known,
            &crate::cli::device_spec("/dev/vfio/devices/vfio3").unwrap()
        )
        .is_none());
        assert!(sysfs_entry(&known, &crate::cli::device_spec("sim").unwrap()).is_none());
    }
}
