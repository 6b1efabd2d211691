//! Real VFIO devices through /dev/vfio (placeholder until the backend lands).
use super::{spec::DeviceSpec, Device, OpenError};

pub fn open(spec: &str, _parsed: &DeviceSpec) -> Result<Box<dyn Device>, OpenError> {
    Err(OpenError::Refused {
        device: spec.to_string(),
        message: "kernel backend not built yet".into(),
        errno: None,
    })
}
