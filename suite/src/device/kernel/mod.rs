//! Real VFIO devices through real file descriptors.
//!
//! Opening (PCI BDF, mdev UUID, `/dev/vfio/devices/vfioN`) checks first
//! that it is safe and possible, and refuses with a message saying what to
//! do; the suite never rebinds drivers. The opened device answers the
//! [`Device`] trait with one system call per method, the errno unchanged.
//!
//! All system calls go through the [`sys::Sys`] trait; `sys.rs` is the only
//! file of the project with `unsafe`. The rest is safe code, tested
//! against an in-memory double of /dev/vfio and a temporary sysfs tree.

mod arg;
mod data;
mod device;
mod discover;
#[cfg(test)]
mod fake;
mod open;
// The one module the crate's `deny(unsafe_code)` lets through.
#[allow(unsafe_code)]
pub mod sys;
mod sysfs;

pub use data::DataPath;
pub use discover::{discover, Discovered};
pub use sysfs::{Bus, Paths};

use super::spec::{DeviceSpec, OpenError};
use super::Device;

/// Opens a PCI, mdev or cdev device (`spec` as the user wrote it).
pub fn open(spec: &str, parsed: &DeviceSpec) -> Result<Box<dyn Device>, OpenError> {
    open_at(spec, parsed, &Paths::default())
}

/// [`open`] with sysfs, /dev and /proc elsewhere.
pub fn open_at(
    spec: &str,
    parsed: &DeviceSpec,
    paths: &Paths,
) -> Result<Box<dyn Device>, OpenError> {
    let device = open::open_device(sys::RealSys, paths, spec, parsed)?;
    Ok(Box::new(device))
}
