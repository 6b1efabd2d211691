//! Device specs as users write them on the command line, and opening them.
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use super::sim::SimConfig;
use super::{kernel, sim, Device};
use crate::uapi::Errno;

/// `0000:3b:00.1` (PCI), an mdev UUID, `/dev/vfio/devices/vfio3`, `sim`,
/// `sim:OPTIONS`.
/// Its `Display` is the canonical spelling, which parses back to the same
/// spec (how a case process is told its devices).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceSpec {
    Pci(String),
    Mdev(String),
    Cdev(String),
    /// The simulator, with its comma-separated options (may be empty).
    Sim(String),
}

impl DeviceSpec {
    pub fn parse(spec: &str) -> Result<DeviceSpec, OpenError> {
        let bad = |reason: &str| OpenError::BadSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if spec == "sim" {
            return Ok(DeviceSpec::Sim(String::new()));
        }
        if let Some(options) = spec.strip_prefix("sim:") {
            return Ok(DeviceSpec::Sim(options.to_string()));
        }
        if spec.starts_with("/dev/vfio/devices/") {
            return Ok(DeviceSpec::Cdev(spec.to_string()));
        }
        if spec.starts_with('/') {
            return Err(bad(
                "not a VFIO device path: give /dev/vfio/devices/vfioN, a PCI address, an mdev UUID or `sim`",
            ));
        }
        if is_uuid(spec) {
            return Ok(DeviceSpec::Mdev(spec.to_ascii_lowercase()));
        }
        if let Some(bdf) = normalize_bdf(spec) {
            return Ok(DeviceSpec::Pci(bdf));
        }
        Err(bad(
            "expected a PCI address (0000:3b:00.1), an mdev UUID, /dev/vfio/devices/vfioN, `sim` or `sim:OPTIONS`",
        ))
    }

    pub fn is_sim(&self) -> bool {
        matches!(self, DeviceSpec::Sim(_))
    }

    /// The simulator options of a `sim` spec, when they parse.
    pub fn sim_config(&self) -> Option<SimConfig> {
        match self {
            DeviceSpec::Sim(options) => SimConfig::parse(options).ok(),
            _ => None,
        }
    }

    /// For a simulator, the same simulator with another `type=` (the last
    /// `type=` wins): a device whose streams this one must refuse.
    pub fn incompatible_sim(&self) -> Option<DeviceSpec> {
        let DeviceSpec::Sim(options) = self else {
            return None;
        };
        let other = match self.sim_config() {
            Some(c) if c.device_type() == "sim-b" => "sim-a",
            _ => "sim-b",
        };
        Some(DeviceSpec::Sim(if options.is_empty() {
            format!("type={other}")
        } else {
            format!("{options},type={other}")
        }))
    }

    /// Opens the device for testing.
    pub fn open(&self) -> Result<Box<dyn Device>, OpenError> {
        let name = self.to_string();
        match self {
            DeviceSpec::Sim(options) => {
                let config = SimConfig::parse(options).map_err(|reason| OpenError::BadSpec {
                    spec: name.clone(),
                    reason,
                })?;
                Ok(Box::new(sim::Simulator::new(&name, config)))
            }
            other => kernel::open(&name, other),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = OpenError;

    fn from_str(spec: &str) -> Result<DeviceSpec, OpenError> {
        DeviceSpec::parse(spec)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Pci(s) | DeviceSpec::Mdev(s) | DeviceSpec::Cdev(s) => f.write_str(s),
            DeviceSpec::Sim(o) if o.is_empty() => f.write_str("sim"),
            DeviceSpec::Sim(o) => write!(f, "sim:{o}"),
        }
    }
}

/// Why a device could not be opened. Messages name the device and say what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("device spec `{spec}`: {reason}")]
    BadSpec { spec: String, reason: String },
    /// The device exists but opening it could disturb the host, or cannot work.
    #[error("{device}: {message}")]
    Refused {
        device: String,
        message: String,
        errno: Option<Errno>,
    },
}

/// Opens the device a spec names, as [`DeviceSpec::open`].
pub fn open(spec: &str) -> Result<Box<dyn Device>, OpenError> {
    DeviceSpec::parse(spec)?.open()
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `3b:00.1` or `0000:3b:00.1` -> `0000:3b:00.1` (lowercase, as sysfs names it).
fn normalize_bdf(s: &str) -> Option<String> {
    let s = s.to_ascii_lowercase();
    let (rest, func) = s.rsplit_once('.')?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (domain, bus, dev) = match parts.as_slice() {
        [bus, dev] => ("0000", *bus, *dev),
        [domain, bus, dev] => (*domain, *bus, *dev),
        _ => return None,
    };
    let hex = |p: &str, max_len: usize| {
        !p.is_empty() && p.len() <= max_len && p.chars().all(|c| c.is_ascii_hexdigit())
    };
    let func_ok = func.len() == 1 && func.chars().all(|c| ('0'..='7').contains(&c));
    if !(hex(domain, 4) && hex(bus, 2) && hex(dev, 2) && func_ok) {
        return None;
    }
    let dev_num = u8::from_str_radix(dev, 16).ok()?;
    if dev_num > 0x1f {
        return None;
    }
    Some(format!("{:0>4}:{:0>2}:{:0>2}.{}", domain, bus, dev, func))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spec_kind() {
        assert_eq!(
            DeviceSpec::parse("sim").unwrap(),
            DeviceSpec::Sim(String::new())
        );
        assert_eq!(
            DeviceSpec::parse("sim:v1,fault=x").unwrap(),
            DeviceSpec::Sim("v1,fault=x".into())
        );
        assert_eq!(
            DeviceSpec::parse("3b:00.1").unwrap(),
            DeviceSpec::Pci("0000:3b:00.1".into())
        );
        assert_eq!(
            DeviceSpec::parse("0000:3B:00.1").unwrap(),
            DeviceSpec::Pci("0000:3b:00.1".into())
        );
        assert_eq!(
            DeviceSpec::parse("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001").unwrap(),
            DeviceSpec::Mdev("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into())
        );
        assert_eq!(
            DeviceSpec::parse("/dev/vfio/devices/vfio3").unwrap(),
            DeviceSpec::Cdev("/dev/vfio/devices/vfio3".into())
        );
    }

    #[test]
    fn display_parses_back_to_the_same_spec() {
        for text in [
            "sim",
            "sim:v1,fault=x",
            "3b:00.1",
            "83B8F4F2-509F-382F-3C1E-E6BFE0FA1001",
            "/dev/vfio/devices/vfio3",
        ] {
            let spec: DeviceSpec = text.parse().unwrap();
            assert_eq!(
                spec.to_string().parse::<DeviceSpec>().unwrap(),
                spec,
                "{text}"
            );
        }
    }

    #[test]
    fn a_simulator_has_an_incompatible_twin() {
        let sim = |o: &str| DeviceSpec::Sim(o.into());
        assert_eq!(sim("").incompatible_sim(), Some(sim("type=sim-b")));
        assert_eq!(
            sim("v1,type=sim-b").incompatible_sim(),
            Some(sim("v1,type=sim-b,type=sim-a"))
        );
        let twin = sim("v1").incompatible_sim().unwrap();
        assert_ne!(
            twin.sim_config().unwrap().device_type(),
            sim("v1").sim_config().unwrap().device_type()
        );
        assert_eq!(
            DeviceSpec::Pci("0000:3b:00.1".into()).incompatible_sim(),
            None
        );
        assert_eq!(sim("fault=no-such-fault").sim_config().map(|_| ()), None);
    }

    #[test]
    fn rejects_what_is_not_a_device() {
        for bad in [
            "/dev/sda",
            "0000:3b:20.1",
            "3b:00.8",
            "eth0",
            "",
            "12345678-1234",
        ] {
            let err = DeviceSpec::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }
}
