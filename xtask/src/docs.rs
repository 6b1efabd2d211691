//! `cargo xtask man` and `cargo xtask completions`: the runner writes them
//! from its own command-line definition (`vfio-migtest __generate`), so
//! packagers get pages and completions that match the binary.

use std::env;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::cmd;

/// Writes `what` (`man` or `completions`) into `out`, by default
/// `target/man` or `target/completions`.
pub fn generate(what: &str, out: Option<PathBuf>) -> Result<()> {
    let out = match out {
        Some(out) => std::path::absolute(out)?,
        None => crate::target_dir()?.join(what),
    };
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cmd::run(
        Command::new(cargo)
            .args([
                "run",
                "--quiet",
                "-p",
                "vfio-migtest",
                "--",
                "__generate",
                what,
                "--out",
            ])
            .arg(&out)
            .current_dir(crate::workspace()?),
    )
}
