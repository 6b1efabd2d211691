//! Device specs as users write them on the command line, and opening them.
#![forbid(unsafe_code)]

use std::fmt;

use super::{kernel, sim, Device};
use crate::uapi::Errno;

/// `0000:3b:00.1` (PCI), an mdev UUID, `/dev/vfio/devices/vfio3`, `sim`,
/// `sim:OPTIONS`.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Opens a device for testing.
pub fn open(spec: &str) -> Result<Box<dyn Device>, OpenError> {
    match DeviceSpec::parse(spec)? {
        DeviceSpec::Sim(options) => {
            let config = sim::SimConfig::parse(&options).map_err(|reason| OpenError::BadSpec {
                spec: spec.to_string(),
                reason,
            })?;
            Ok(Box::new(sim::Simulator::new(spec, config)))
        }
        other => kernel::open(spec, &other),
    }
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
