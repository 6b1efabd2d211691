//! Booting the guest in QEMU under a host-side deadline.
//!
//! TCG, not KVM: `/dev/kvm` exists on the lab machines but nested KVM fails
//! with emulation errors. TCG runs both vCPUs on one host thread: with one
//! thread per vCPU, boots on a busy host occasionally oopsed on an `int3`
//! left by the kernel's live code patching, because one vCPU went on running
//! code the other had just changed.
//!
//! q35 with an emulated Intel IOMMU gives the NIC an IOMMU group, which
//! vfio-pci requires (Debian builds no VFIO no-IOMMU mode); its interrupt
//! remapping, on by default, is what lets vfio_iommu_type1 accept the group.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Where the guest's two serial ports are written.
pub struct Serial<'a> {
    /// ttyS0: the kernel and `/init` console.
    pub console: &'a Path,
    /// ttyS1: the results archive, base64-encoded.
    pub results: &'a Path,
}

/// The kernel to boot.
pub struct Boot<'a> {
    pub kernel: &'a Path,
    /// Added to the kernel command line.
    pub append: &'a str,
}

/// Boots `boot.kernel` with `initrd` and waits for the guest to power off.
pub fn boot(boot: &Boot, initrd: &Path, serial: &Serial, timeout: Duration) -> Result<()> {
    let mut qemu = qemu_command(boot, initrd, serial);
    println!("+ {}", cmd::describe(&qemu));
    let child = qemu.spawn().context("cannot start qemu-system-x86_64")?;
    wait_until(child, timeout)
}

fn qemu_command(boot: &Boot, initrd: &Path, serial: &Serial) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=single", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        .args(["-machine", "q35", "-device", "intel-iommu"])
        // A NIC with no driver in the guest, to be bound to vfio-pci.
        // `romfile=` drops its boot ROM: nothing boots from the network.
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "e1000e,netdev=n0,romfile=",
        ])
        .arg("-kernel")
        .arg(boot.kernel)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1 reboots at once on a panic, and -no-reboot turns that
        // into QEMU exiting, so a crashed guest does not wait for the deadline.
        // no_timer_check: on a busy host the emulated timer can miss the boot
        // check, which with interrupt remapping is a panic.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 intel_iommu=on no_timer_check panic=-1 quiet {}",
            boot.append
        ))
        .arg("-serial")
        .arg(format!("file:{}", serial.console.display()))
        .arg("-serial")
        .arg(format!("file:{}", serial.results.display()))
        .stdin(Stdio::null());
    qemu
}

/// Waits for QEMU to exit, killing it (the process started here, by its
/// PID) once `timeout` has passed.
fn wait_until(mut qemu: Child, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = qemu.try_wait()? {
            if !status.success() {
                bail!("qemu-system-x86_64 failed: {status}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            qemu.kill().context("cannot stop qemu-system-x86_64")?;
            qemu.wait()?;
            bail!("guest did not finish in time ({} s)", timeout.as_secs());
        }
        thread::sleep(POLL_INTERVAL);
    }
}
