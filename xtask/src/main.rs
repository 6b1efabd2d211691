//! Project automation, run as `cargo xtask <command>`.

mod cmd;
mod docs;
mod vm;

use std::env;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask vm [--kernel debian|lab] [--out DIR] [--timeout SECS] [--keep]
                      [-- SUITE-ARGS...]
       cargo xtask man [--out DIR]
       cargo xtask completions [--out DIR]

man writes vfio-migtest.1 and a page per subcommand (default: target/man);
completions writes bash, zsh and fish completions (default:
target/completions). Both come from the runner's command-line definition.

vm:

Runs vfio-migtest against real kernel drivers: builds the kernel's mtty
sample driver for a Debian 6.12 kernel, boots that kernel in QEMU with three
mtty mdevs and an emulated NIC bound to vfio-pci, runs the suite on them and
copies the results back. The v1 lane then loads the v1 reference driver
(xtask/drivers/v1mig) once per configuration and runs the v1 cases on its
devices (results in DIR/v1/). With --kernel lab the guest boots the lab's
debug kernel instead (no v1 lane: it loads no modules) and also runs the
catalogue through the iommufd cdevs, the cdev refusals and mtty's lab
faults. Installs the packages it needs (run as root).

options:
  --kernel K      debian (default): the host's Debian 6.12 kernel; lab: the
                  lab's debug build of Debian's linux-source-6.12 (iommufd
                  cdevs, DMA logging REPORT, lockdep, KASAN), built once and
                  cached (/var/cache/vfio-migtest/lab-kernel as root)
  --out DIR       results and console.log go here (default: target/vm/results)
  --timeout SECS  the guest must power off within this time (default: 900;
                  with --kernel lab 3000)
  --keep          keep the guest tree, initramfs and serial capture
                  (target/vm/work)
  -- ARGS         extra arguments for the suite's mtty run in the guest";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);
/// The lab kernel's guest runs the catalogue twice and the fault runs, with
/// KASAN and lockdep slowing every call, under TCG.
const LAB_DEFAULT_TIMEOUT: Duration = Duration::from_secs(3000);

fn main() -> Result<ExitCode> {
    let mut args = env::args().skip(1);
    match args.next().as_deref() {
        Some("vm") => match parse_vm_options(args)? {
            Some(options) => vm::run(options)?,
            None => println!("{USAGE}"),
        },
        Some(what @ ("man" | "completions")) => match parse_out(args)? {
            Some(out) => docs::generate(what, out)?,
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
    let mut timeout = None;
    let mut options = vm::Options {
        kernel: vm::GuestKernel::Debian,
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
                timeout = Some(Duration::from_secs(secs));
            }
            "--keep" => options.keep = true,
            "--kernel" => {
                options.kernel = match value_of("--kernel", &mut args)?.as_str() {
                    "debian" => vm::GuestKernel::Debian,
                    "lab" => vm::GuestKernel::Lab,
                    other => bail!("--kernel {other:?}: expected debian or lab"),
                }
            }
            "--" => options.suite_args.extend(args.by_ref()),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    options.timeout = timeout.unwrap_or(match options.kernel {
        vm::GuestKernel::Debian => DEFAULT_TIMEOUT,
        vm::GuestKernel::Lab => LAB_DEFAULT_TIMEOUT,
    });
    Ok(Some(options))
}

/// The `--out` of `man` and `completions`, or `None` if help was asked for.
fn parse_out(mut args: impl Iterator<Item = String>) -> Result<Option<Option<PathBuf>>> {
    let mut out = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = Some(value_of("--out", &mut args)?.into()),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(out))
}

/// The workspace's top directory.
fn workspace() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask is not inside a workspace")?
        .to_path_buf())
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/`.
fn target_dir() -> Result<PathBuf> {
    Ok(match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::path::absolute(dir)?,
        None => workspace()?.join("target"),
    })
}

fn value_of(option: &str, args: &mut impl Iterator<Item = String>) -> Result<String> {
    args.next()
        .with_context(|| format!("{option} needs a value"))
}
