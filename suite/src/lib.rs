//! Everything about the VFIO migration uAPI and how to check it: the uAPI
//! itself, the reference model, devices (real and simulated), scenarios and
//! their execution.
// Not `forbid`: device/kernel/sys.rs, the one module that calls into libc,
// is allowed unsafe code, and only it (tests/unsafe_code.rs checks).
#![deny(unsafe_code)]

pub mod catalogue;
pub mod device;
pub mod exec;
pub mod migrate;
pub mod model;
pub mod requirements;
pub mod savefile;
pub mod scenario;
pub mod size;
pub mod uapi;
pub mod wire;
