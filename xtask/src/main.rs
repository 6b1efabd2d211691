//! Project automation, run as `cargo xtask <command>`.

mod cmd;
mod vm;

use std::env;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask vm [--out DIR] [--timeout SECS] [--keep] [-- SUITE-ARGS...]

Runs vfio-migtest against real kernel drivers: builds the kernel's mtty
sample driver for a Debian 6.12 kernel, boots that kernel in QEMU with three
mtty mdevs and an emulated NIC bound to vfio-pci, runs the suite on them and
copies the results back. Installs the packages it needs (run as root).

options:
  --out DIR       results and console.log go here (default: target/vm/results)
  --timeout SECS  the guest must power off within this time (default: 900)
  --keep          keep the guest tree, initramfs and serial capture
                  (target/vm/work)
  -- ARGS         extra arguments for the suite's mtty run in the guest";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

fn main() -> Result<ExitCode> {
    let mut args = env::args().skip(1);
    match args.next().as_deref() {
        Some("vm") => match parse_vm_options(args)? {
            Some(options) => vm::run(options)?,
            None => println!("{USAGE}"),
        },
        Some("-h" | "--help") => println!("{USAGE}"),
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
        None => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The options of `vm`, or `None` if help was asked for.
fn parse_vm_options(mut args: impl Iterator<Item = String>) -> Result<Option<vm::Options>> {
    let mut options = vm::Options {
        out: None,
        timeout: DEFAULT_TIMEOUT,
        keep: false,
        suite_args: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => options.out = Some(value_of("--out", &mut args)?.into()),
            "--timeout" => {
                let secs = value_of("--timeout", &mut args)?;
                let secs = secs
                    .parse()
                    .with_context(|| format!("--timeout {secs:?} is not a number of seconds"))?;
                options.timeout = Duration::from_secs(secs);
            }
            "--keep" => options.keep = true,
            "--" => options.suite_args.extend(args.by_ref()),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(options))
}

fn value_of(option: &str, args: &mut impl Iterator<Item = String>) -> Result<String> {
    args.next()
        .with_context(|| format!("{option} needs a value"))
}
