//! What the end-to-end tests share.
#![forbid(unsafe_code)]

use std::process::Command;

/// The built binary, free of the caller's VFIO_MIGTEST_* settings.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-migtest"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("VFIO_MIGTEST") {
            cmd.env_remove(name);
        }
    }
    cmd
}
