//! `cargo xtask vm`: runs the suite against real kernel drivers (the mtty
//! sample mdev driver and vfio-pci) in a QEMU guest running the host's Debian
//! 6.12 kernel, or with `--kernel lab` the lab's own debug build of it
//! (`labkernel`), and brings the results back.
//!
//! Layout under the target directory:
//! - `vm/cache/`: the kernel source .deb, extracted mtty.c, built mtty.ko
//!   (`mtty-<hash>/`) and v1mig.ko (`v1mig-<hash>/`), kept across runs;
//! - `vm/work/`: the guest tree, initramfs and raw serial capture of this
//!   run, deleted at the end unless `--keep`;
//! - `vm/results/`: the default `--out`.

mod initramfs;
mod labkernel;
mod mtty;
mod packages;
mod qemu;
mod results;
mod v1mig;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Lines of the console log shown when the guest fails.
const CONSOLE_TAIL_LINES: usize = 30;

/// Which kernel the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKernel {
    /// The host's Debian 6.12 kernel, mtty built out of tree.
    Debian,
    /// The debug lab kernel (`labkernel`), mtty built in.
    Lab,
}

pub struct Options {
    pub kernel: GuestKernel,
    pub out: Option<PathBuf>,
    pub timeout: Duration,
    pub keep: bool,
    /// Extra arguments for the suite's mtty run in the guest.
    pub suite_args: Vec<String>,
}

/// Where things live, derived from the workspace and target directories.
struct Layout {
    workspace: PathBuf,
    cache: PathBuf,
    work: PathBuf,
    target: PathBuf,
}

impl Layout {
    fn new() -> Result<Self> {
        let workspace = crate::workspace()?;
        let target = crate::target_dir()?;
        Ok(Self {
            cache: target.join("vm/cache"),
            work: target.join("vm/work"),
            workspace,
            target,
        })
    }
}

pub fn run(options: Options) -> Result<()> {
    let layout = Layout::new()?;
    let out = match options.out {
        Some(out) => std::path::absolute(out)?,
        None => layout.target.join("vm/results"),
    };
    // Checked first, so that a wrong --out fails before the slow steps.
    replace_results_dir(&out)?;

    let prepared = step("packages", || packages::ensure(&layout.cache.join("debs")))?;
    let lab = match options.kernel {
        GuestKernel::Debian => None,
        GuestKernel::Lab => Some(step("lab kernel", || {
            labkernel::ensure(&prepared.source_deb, &layout.cache)
        })?),
    };
    let mut suite_args = options.suite_args.clone();
    if lab.is_some() {
        suite_args.splice(0..0, labkernel::SUITE_ARGS.map(String::from));
    }
    let initrd = build_guest(&layout, &prepared, lab.is_some(), &suite_args)?;
    let image = match &lab {
        Some(lab) => lab.bzimage.clone(),
        None => prepared.kernel.vmlinuz(),
    };
    let boot = qemu::Boot {
        kernel: &image,
        append: if lab.is_some() { labkernel::APPEND } else { "" },
    };
    let outcome = boot_guest(&layout, &boot, &initrd, &out, options.timeout);
    if options.keep {
        println!("kept: {}", layout.work.display());
    } else {
        fs::remove_dir_all(&layout.work)?;
    }
    outcome?;
    println!("results: {}", out.display());
    if lab.is_some() {
        // The lab kernel has no networking (lab/kernel/lab.config).
        results::judge_without(&out, &results::NETWORK_RUNS)?;
    } else {
        results::judge(&out)?;
    }
    match lab {
        // The lab kernel has no module support: the v1 lane (v1mig.ko) runs
        // on Debian's kernel only.
        Some(_) => labkernel::judge(&out),
        None => v1mig::judge(&out, &layout.workspace),
    }
}

/// Builds mtty.ko and the suite, and packs them into a fresh initramfs in
/// the work directory; returns its path.
fn build_guest(
    layout: &Layout,
    prepared: &packages::Prepared,
    lab: bool,
    suite_args: &[String],
) -> Result<PathBuf> {
    let kernel = &prepared.kernel;
    let (mtty, v1mig) = if lab {
        (None, None)
    } else {
        let mtty = step("mtty.ko", || {
            mtty::build(kernel, &prepared.source_deb, &layout.cache)
        })?;
        let v1mig = step("v1mig.ko", || {
            v1mig::build(kernel, &layout.workspace, &layout.cache)
        })?;
        (Some(mtty), Some(v1mig))
    };
    let suite = step("vfio-migtest", || build_suite(layout))?;

    if layout.work.exists() {
        fs::remove_dir_all(&layout.work)?;
    }
    fs::create_dir_all(&layout.work)?;
    let initrd = layout.work.join("initrd.gz");
    let expectations = layout.workspace.join("expectations");
    let cases = layout.workspace.join("cases");
    let contents = initramfs::Contents {
        kernel,
        mtty: mtty.as_deref(),
        v1mig: v1mig.as_deref(),
        suite: &suite,
        suite_args,
        expectations: expectations.is_dir().then_some(expectations.as_path()),
        lab_cases: lab.then_some(cases.as_path()),
    };
    step("initramfs", || {
        initramfs::build(&contents, &layout.work.join("root"), &initrd)
    })?;
    Ok(initrd)
}

/// Boots the guest and unpacks its results into `out`, next to the
/// console log; shows the end of the console log if that fails.
fn boot_guest(
    layout: &Layout,
    boot: &qemu::Boot,
    initrd: &Path,
    out: &Path,
    timeout: Duration,
) -> Result<()> {
    let console = out.join("console.log");
    let captured = layout.work.join("results.serial");
    let serial = qemu::Serial {
        console: &console,
        results: &captured,
    };
    println!("console log: {}", console.display());
    let outcome = step("guest", || qemu::boot(boot, initrd, &serial, timeout))
        .and_then(|()| results::unpack(&captured, &layout.work.join("results.b64"), out));
    if outcome.is_err() {
        show_console_tail(&console);
    }
    outcome
}

/// Runs one named step, printing how long it took.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let started = Instant::now();
    let value = f().with_context(|| format!("step {name} failed"))?;
    println!("==> {name}: {:.1} s", started.elapsed().as_secs_f64());
    Ok(value)
}

/// Builds the suite binary for the guest, which runs the host's userland
/// libraries (the same Debian release), so a normal release build fits.
fn build_suite(layout: &Layout) -> Result<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    cmd::run(
        Command::new(cargo)
            .args(["build", "--release", "-p", "vfio-migtest"])
            .current_dir(&layout.workspace),
    )?;
    Ok(layout.target.join("release/vfio-migtest"))
}

/// Empties `out` for this run's results. Only a folder that is empty or
/// holds an earlier run's results (it has a console.log) is removed, so a
/// mistyped `--out` cannot delete anything else.
fn replace_results_dir(out: &Path) -> Result<()> {
    if out.exists() {
        let empty = fs::read_dir(out)?.next().is_none();
        if !empty && !out.join("console.log").is_file() {
            bail!(
                "{} is not empty and holds no earlier results; choose another --out",
                out.display()
            );
        }
        fs::remove_dir_all(out)?;
    }
    fs::create_dir_all(out)?;
    Ok(())
}

fn show_console_tail(console: &Path) {
    let Ok(bytes) = fs::read(console) else {
        return;
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..];
    eprintln!("--- last lines of {} ---", console.display());
    for line in tail {
        eprintln!("{line}");
    }
    eprintln!("---");
}
