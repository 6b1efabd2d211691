//! `--kernel lab`: the VM lab's debug guest kernel, built from Debian's
//! `linux-source-6.12` with `make tinyconfig` plus `lab/kernel/lab.config`
//! (iommufd and VFIO device cdevs, IOMMUFD_DRIVER, mtty built in, lockdep,
//! generic KASAN, list debugging, hung-task and soft-lockup detectors), and
//! mtty's lab-only faults (`lab/kernel/mtty-lab-faults.patch`).
//!
//! A build takes minutes, so its bzImage is cached by a hash of the source
//! package, the fragment, the patches and this recipe. As root the cache is
//! machine-wide (`/var/cache/vfio-migtest/lab-kernel/`): fresh clones, as CI
//! makes, reuse it. `VFIO_MIGTEST_KERNEL_CACHE` names another folder. The
//! build tree is kept there too, one per source package, so that a changed
//! fragment or patch, or an interrupted build, rebuilds only what changed.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use ::results::{CaseResult, DeviceResults, Outcome, RunResults, Verdict};
use anyhow::{bail, Context, Result};

use super::initramfs::install_executable;
use super::mtty::fnv1a64;
use super::packages;
use crate::cmd;

/// Sourced by the guest's `/init` on the lab kernel: the extra runs.
const LAB_SCRIPT: &str = include_str!("lab.sh");

/// Extra arguments of the guest's mtty runs on the lab kernel: with
/// IOMMUFD_DRIVER, DMA_LOGGING_REPORT reaches mtty, and mtty's known
/// deviations there are listed separately.
pub const SUITE_ARGS: [&str; 2] = ["--expect", "/expectations/mtty-iommufd-driver.yaml"];

/// Added to the lab kernel's command line: every KASAN report, not just the
/// first, so that one fault run does not blind the later ones.
pub const APPEND: &str = "kasan_multi_shot";

/// One of mtty's lab-only faults (`lab/kernel/mtty-lab-faults.patch`) and
/// the run `lab.sh` makes with it armed: `cases`, from the repository's
/// `cases/v2/`, of which only `fails` meets the fault.
struct Fault {
    name: &'static str,
    fails: &'static str,
    /// The kernel log line (KERNEL-01's evidence) the fault must produce;
    /// empty for a fault that shows as a stuck process (KERNEL-02).
    says: &'static str,
    cases: &'static [&'static str],
}

/// In the order `lab.sh` arms them. Lockdep turns itself off after its
/// first report, and a KASAN report taints the kernel, which turns lockdep
/// off too ("Disabling lock debugging due to kernel taint"): so lockdep
/// comes before KASAN, and the hang, which leaves a process stuck on the
/// device for a minute, last.
const FAULTS: [Fault; 4] = [
    Fault {
        name: "warn",
        fails: "data-fd-pre-copy-p2p",
        says: "lab fault: warn in PRE_COPY_P2P -> PRE_COPY",
        cases: &[
            "data-fd-pre-copy-p2p",
            "data-fd-pre-copy",
            "data-fd-stop-copy",
        ],
    },
    Fault {
        name: "lockdep",
        fails: "data-fd-pre-copy",
        says: "possible circular locking dependency",
        cases: &[
            "data-fd-pre-copy",
            "data-fd-pre-copy-p2p",
            "data-fd-stop-copy",
        ],
    },
    Fault {
        name: "kasan",
        fails: "precopy-info-framing",
        says: "BUG: KASAN: slab-out-of-bounds",
        cases: &[
            "precopy-info-framing",
            "data-fd-pre-copy-p2p",
            "data-fd-stop-copy",
        ],
    },
    Fault {
        name: "hang",
        fails: "data-fd-pre-copy-p2p",
        says: "",
        cases: &["data-fd-pre-copy-p2p", "data-fd-stop-copy"],
    },
];

const FRAGMENT: &str = include_str!("../../../lab/kernel/lab.config");

/// Applied in this order with `patch -p1`; lab-only, never shipped.
const PATCHES: [(&str, &str); 1] = [(
    "mtty-lab-faults.patch",
    include_str!("../../../lab/kernel/mtty-lab-faults.patch"),
)];

/// Changing how the kernel is built changes the cache key too.
const RECIPE: &str = "tinyconfig + merge_config.sh -m + olddefconfig; make bzImage";

/// Host packages the kernel build needs besides make and xz-utils.
const BUILD_PACKAGES: [&str; 7] = [
    "gcc",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "patch",
];

const MACHINE_CACHE: &str = "/var/cache/vfio-migtest/lab-kernel";
const CACHE_ENV: &str = "VFIO_MIGTEST_KERNEL_CACHE";

const SOURCE_TARBALL: &str = "*/usr/src/linux-source-6.12.tar.xz";

/// A built lab kernel.
pub struct LabKernel {
    pub bzimage: PathBuf,
    /// `uname -r` in the guest.
    pub release: String,
}

/// Returns the cached lab kernel for this source and configuration,
/// building it first if there is none.
pub fn ensure(source_deb: &Path, fallback_cache: &Path) -> Result<LabKernel> {
    let deb_name = source_deb
        .file_name()
        .context("kernel source package has no file name")?
        .to_string_lossy()
        .into_owned();
    let key = cache_key(&deb_name);
    let cache = cache_root(fallback_cache)?;
    let entry = cache.join(format!("{key:016x}"));
    if let Some(kernel) = cached(&entry)? {
        println!(
            "lab kernel: cached {} ({})",
            kernel.bzimage.display(),
            kernel.release
        );
        return Ok(kernel);
    }
    // Held until the entry is stored; the build that waited finds it.
    let _lock = lock_cache(&cache)?;
    if let Some(kernel) = cached(&entry)? {
        println!(
            "lab kernel: cached {} ({}), built while waiting",
            kernel.bzimage.display(),
            kernel.release
        );
        return Ok(kernel);
    }
    packages::install_missing(&BUILD_PACKAGES)?;
    let tree = cache.join(format!("src-{:016x}", fnv1a64(deb_name.bytes())));
    let started = Instant::now();
    let release = build(source_deb, &tree)?;
    let seconds = started.elapsed().as_secs();

    // Filled beside the entry and renamed, so that an interrupted build
    // never leaves an entry that looks complete.
    let staging = cache.join(format!("{key:016x}.new"));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    fs::copy(tree.join("arch/x86/boot/bzImage"), staging.join("bzImage"))?;
    fs::copy(tree.join(".config"), staging.join("config"))?;
    fs::write(staging.join("release"), format!("{release}\n"))?;
    fs::write(
        staging.join("build-seconds"),
        format!("{seconds} s on {} jobs, from {deb_name}\n", jobs()),
    )?;
    fs::rename(&staging, &entry)?;
    println!("lab kernel: built {release} in {seconds} s");
    cached(&entry)?.context("the lab kernel build left no complete cache entry")
}

/// Takes the cache's build lock (an flock, released when the file is
/// dropped or the process dies), waiting for a build that holds it: two
/// builds in the shared source tree at once corrupt each other.
fn lock_cache(cache: &Path) -> Result<fs::File> {
    let path = cache.join("build.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            println!(
                "lab kernel: another build holds {}; waiting for it to finish",
                path.display()
            );
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    Ok(file)
}

fn cached(entry: &Path) -> Result<Option<LabKernel>> {
    let bzimage = entry.join("bzImage");
    let Ok(release) = fs::read_to_string(entry.join("release")) else {
        return Ok(None);
    };
    if !bzimage.is_file() {
        return Ok(None);
    }
    Ok(Some(LabKernel {
        bzimage,
        release: release.trim().to_owned(),
    }))
}

fn cache_key(deb_name: &str) -> u64 {
    let mut input = Vec::new();
    for part in [deb_name, RECIPE, FRAGMENT] {
        input.extend_from_slice(part.as_bytes());
        input.push(0);
    }
    for (name, text) in PATCHES {
        input.extend_from_slice(name.as_bytes());
        input.push(0);
        input.extend_from_slice(text.as_bytes());
        input.push(0);
    }
    fnv1a64(input)
}

/// The machine-wide cache when it can be written (as root), else the
/// target directory's.
fn cache_root(fallback: &Path) -> Result<PathBuf> {
    if let Some(dir) = env::var_os(CACHE_ENV) {
        let dir = std::path::absolute(dir)?;
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {CACHE_ENV}={}", dir.display()))?;
        return Ok(dir);
    }
    let machine = Path::new(MACHINE_CACHE);
    let probe = machine.join(format!(".probe-{}", std::process::id()));
    if fs::create_dir_all(machine).is_ok() && fs::write(&probe, b"").is_ok() {
        fs::remove_file(&probe)?;
        return Ok(machine.to_path_buf());
    }
    let dir = fallback.join("lab-kernel");
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn jobs() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// Unpacks the source into `tree` unless an earlier build did, patches,
/// configures and builds it; returns the kernel release.
fn build(source_deb: &Path, tree: &Path) -> Result<String> {
    if !tree.join(UNPACKED).is_file() {
        unpack(source_deb, tree)?;
    }
    repatch(tree)?;
    configure(tree)?;
    cmd::run(make(tree).arg(format!("-j{}", jobs())).arg("bzImage"))?;
    let release = cmd::stdout_of(make(tree).args(["-s", "kernelrelease"]))?;
    Ok(release.trim().to_owned())
}

/// Marks a tree whose unpacking finished.
const UNPACKED: &str = ".vfio-migtest-unpacked";
/// The patches applied to a tree, kept so that they can be reverted.
const APPLIED: &str = ".vfio-migtest-patches";

fn unpack(source_deb: &Path, tree: &Path) -> Result<()> {
    if tree.exists() {
        fs::remove_dir_all(tree)?;
    }
    fs::create_dir_all(tree)?;
    let mut fsys_tarfile = Command::new("dpkg-deb");
    fsys_tarfile.arg("--fsys-tarfile").arg(source_deb);
    let mut tarball = Command::new("tar");
    tarball.args(["-xO", "--wildcards", SOURCE_TARBALL]);
    let mut unpack = Command::new("tar");
    unpack
        .arg("-xJ")
        .arg("--strip-components=1")
        .arg("-C")
        .arg(tree);
    cmd::pipeline(&mut [fsys_tarfile, tarball, unpack], Stdio::inherit())
        .context("cannot unpack the kernel source")?;
    fs::write(tree.join(UNPACKED), b"")?;
    Ok(())
}

/// Reverts the patches an earlier build applied (newest first) and applies
/// the current ones. When they are the same, nothing is touched, so that
/// make rebuilds nothing.
fn repatch(tree: &Path) -> Result<()> {
    let applied = tree.join(APPLIED);
    if applied.is_dir() {
        let mut old: Vec<PathBuf> = fs::read_dir(&applied)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        old.sort();
        let unchanged = old.len() == PATCHES.len()
            && old
                .iter()
                .zip(PATCHES)
                .all(|(path, (_, text))| fs::read_to_string(path).is_ok_and(|t| t == text));
        if unchanged {
            return Ok(());
        }
        for path in old.iter().rev() {
            run_patch(tree, path, true)?;
            fs::remove_file(path)?;
        }
    }
    fs::create_dir_all(&applied)?;
    for (i, (name, text)) in PATCHES.iter().enumerate() {
        let path = applied.join(format!("{i:02}-{name}"));
        fs::write(&path, text)?;
        run_patch(tree, &path, false)
            .with_context(|| format!("lab/kernel/{name} does not apply"))?;
    }
    Ok(())
}

fn run_patch(tree: &Path, patch: &Path, reverse: bool) -> Result<()> {
    let mut command = Command::new("patch");
    command.args(["-p1", "--batch", "--no-backup-if-mismatch"]);
    if reverse {
        command.arg("--reverse");
    }
    cmd::run(command.arg("-i").arg(patch).current_dir(tree))
}

/// `make tinyconfig`, the fragment, `make olddefconfig`; fails unless every
/// setting of the fragment holds.
fn configure(tree: &Path) -> Result<()> {
    let fragment = tree.join("lab.config");
    fs::write(&fragment, FRAGMENT)?;
    cmd::run(make(tree).arg("tinyconfig"))?;
    cmd::run(
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config"])
            .arg(&fragment)
            .current_dir(tree),
    )?;
    cmd::run(make(tree).arg("olddefconfig"))?;
    let config = fs::read_to_string(tree.join(".config"))?;
    let unmet = unmet_options(FRAGMENT, &config);
    if !unmet.is_empty() {
        bail!(
            "lab/kernel/lab.config asks for options the kernel configuration does not \
             take (a dependency is missing): {}",
            unmet.join(", ")
        );
    }
    Ok(())
}

fn make(tree: &Path) -> Command {
    let mut make = Command::new("make");
    make.current_dir(tree);
    make
}

/// The fragment's settings that the final `.config` does not hold. An
/// option that is "not set" may also be absent (its menu is off).
fn unmet_options(fragment: &str, config: &str) -> Vec<String> {
    let held: Vec<&str> = config.lines().map(str::trim).collect();
    fragment
        .lines()
        .map(str::trim)
        .filter_map(|line| {
            if let Some(name) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                let set = held.iter().any(|h| h.starts_with(&format!("{name}=")));
                return set.then(|| line.to_owned());
            }
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            (!held.contains(&line)).then(|| line.to_owned())
        })
        .collect()
}

/// Adds the lab's files to the guest tree at `root`: `lab.sh`, and for
/// each fault run its cases under `/lab-cases/FAULT/`.
pub fn install_guest(cases: &Path, root: &Path) -> Result<()> {
    fs::create_dir_all(root)?;
    install_executable(LAB_SCRIPT, &root.join("lab.sh"))?;
    for fault in &FAULTS {
        let dir = root.join("lab-cases").join(fault.name);
        fs::create_dir_all(&dir)?;
        for case in fault.cases {
            let file = format!("{case}.yaml");
            fs::copy(cases.join("v2").join(&file), dir.join(&file))
                .with_context(|| format!("no case cases/v2/{file} for the {} fault", fault.name))?;
        }
    }
    Ok(())
}

/// The runs `lab.sh` records in `exit-codes`, as in `results::EXPECTED_RUNS`.
const EXPECTED_RUNS: &[(&str, i32, &str)] = &[
    // The whole catalogue through /dev/vfio/devices/vfioN.
    ("mtty-cdev", 0, "total:"),
    // The group is open elsewhere: binding its device's cdev is refused.
    ("busy-cdev-group", 4, "is open through"),
    // Another process has bound the cdev: refused, naming it.
    ("busy-cdev", 4, "(by PID"),
    ("fault-warn", 1, "KERNEL-01"),
    ("fault-kasan", 1, "KERNEL-01"),
    ("fault-lockdep", 1, "KERNEL-01"),
    ("fault-hang", 1, "KERNEL-02"),
];

/// Checks what only the lab kernel shows, beyond `results::judge`: which
/// path each mtty run opened its device through, DMA logging REPORT answered
/// by mtty, and each fault caught by the case that meets it and by no other.
pub fn judge(out: &Path) -> Result<()> {
    super::results::judge_runs(out, EXPECTED_RUNS)?;
    let mut failed = Vec::new();
    for (run, access) in [("mtty", "group"), ("mtty-cdev", "cdev")] {
        let results = load(out, run)?;
        for device in &results.devices {
            if device.access.as_deref() != Some(access) {
                failed.push(format!(
                    "{run}: {} was opened through {:?}, not {access}",
                    device.name, device.access
                ));
            }
        }
        match results.devices.first() {
            Some(device) => {
                if let Err(e) = report_reached_mtty(device) {
                    failed.push(format!("{run}: {e}"));
                }
            }
            None => failed.push(format!("{run}: no device in its results")),
        }
    }
    for fault in &FAULTS {
        let results = load(out, &format!("fault-{}", fault.name))?;
        if let Err(e) = judge_fault(fault, &results.devices) {
            failed.push(format!("fault-{}: {e}", fault.name));
        } else {
            println!("lab fault {}: caught in {} only", fault.name, fault.fails);
        }
    }
    if !failed.is_empty() {
        bail!("the lab kernel's runs went wrong: {}", failed.join("; "));
    }
    Ok(())
}

fn load(out: &Path, run: &str) -> Result<RunResults> {
    let path = out.join(run).join("results.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot decode {}", path.display()))
}

fn case<'a>(device: &'a DeviceResults, name: &str) -> Result<&'a CaseResult> {
    device
        .cases
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("{} ran no case {name}", device.name))
}

/// With IOMMUFD_DRIVER, mtty answers REPORT itself, and its known deviation
/// there (REPORT before START succeeds, V2-LOG-03) must show: on Debian's
/// kernel the core refuses every REPORT with EOPNOTSUPP before mtty is asked.
fn report_reached_mtty(device: &DeviceResults) -> Result<()> {
    let logging = case(device, "dma-logging")?;
    let met = logging.checks.iter().any(|c| {
        c.verdict == Verdict::Fail
            && c.known_failure.is_some()
            && c.ids.iter().any(|id| id == "V2-LOG-03")
    });
    if logging.outcome != Outcome::Xfail || !met {
        bail!(
            "dma-logging is {}, not XFAIL with its V2-LOG-03 failure: REPORT did not reach mtty",
            logging.outcome.as_str()
        );
    }
    // A REPORT that succeeded went through the kernel's iova_bitmap with
    // the suite's bitmap (one bit per page from iova, in u64 words), and
    // left the bits the suite had set.
    let kept = logging
        .checks
        .iter()
        .any(|c| c.name.contains("only-sets-bits") && c.verdict == Verdict::Pass);
    if !kept {
        bail!("no DMA_LOGGING_REPORT in dma-logging filled a bitmap (V2-LOG-05 never passed)");
    }
    Ok(())
}

fn judge_fault(fault: &Fault, devices: &[DeviceResults]) -> Result<()> {
    let mut hit = Vec::new();
    for device in devices {
        for name in fault.cases {
            let case = case(device, name)?;
            let caught = if fault.says.is_empty() {
                stuck(case)
            } else {
                kernel_log_caught(case, fault.says)
            };
            if caught {
                hit.push((device, *name));
            } else if *name != fault.fails
                && case.outcome.is_failure()
                && !wedged_after(device, case)
            {
                bail!(
                    "{} on {} is {} although the fault is not on its path: {}",
                    name,
                    device.name,
                    case.outcome.as_str(),
                    case.reason.as_deref().unwrap_or("")
                );
            }
        }
    }
    let want_devices = if fault.says.is_empty() {
        1
    } else {
        devices.len()
    };
    let right = hit.len() == want_devices && hit.iter().all(|(_, name)| *name == fault.fails);
    if !right {
        let hit: Vec<String> = hit
            .iter()
            .map(|(d, n)| format!("{n} on {}", d.name))
            .collect();
        bail!(
            "expected {} to be caught on {want_devices} device(s), caught: [{}]",
            fault.fails,
            hit.join(", ")
        );
    }
    if fault.says.is_empty() {
        let wedged: Vec<&DeviceResults> = devices.iter().filter(|d| d.wedged.is_some()).collect();
        if wedged.len() != 1 || devices.len() < 2 {
            bail!(
                "expected exactly one of two or more devices wedged, {} are",
                wedged.len()
            );
        }
    }
    Ok(())
}

/// The case failed KERNEL-01 and its kernel log has the fault's line.
fn kernel_log_caught(case: &CaseResult, says: &str) -> bool {
    case.outcome == Outcome::Fail
        && case
            .checks
            .iter()
            .any(|c| c.verdict == Verdict::Fail && c.ids.iter().any(|id| id == "KERNEL-01"))
        && case.kernel_log.iter().any(|line| line.contains(says))
}

/// The case timed out stuck in the kernel (KERNEL-02).
fn stuck(case: &CaseResult) -> bool {
    case.outcome == Outcome::Timeout
        && case
            .checks
            .iter()
            .any(|c| c.verdict == Verdict::Fail && c.ids.iter().any(|id| id == "KERNEL-02"))
}

/// A case not run because an earlier case left its device wedged.
fn wedged_after(device: &DeviceResults, case: &CaseResult) -> bool {
    device.wedged.is_some()
        && case.outcome == Outcome::Error
        && case
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("device wedged"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_asks_for_what_the_lab_needs() {
        for option in [
            "CONFIG_IOMMUFD=y",
            "CONFIG_IOMMUFD_DRIVER=y",
            "CONFIG_VFIO_DEVICE_CDEV=y",
            "CONFIG_VFIO_GROUP=y",
            "CONFIG_VFIO_CONTAINER=y",
            "CONFIG_SAMPLE_VFIO_MDEV_MTTY=y",
            "CONFIG_PROVE_LOCKING=y",
            "CONFIG_KASAN_GENERIC=y",
            "CONFIG_DEBUG_LIST=y",
            "CONFIG_DETECT_HUNG_TASK=y",
            "CONFIG_SOFTLOCKUP_DETECTOR=y",
        ] {
            assert!(FRAGMENT.lines().any(|l| l == option), "{option}");
        }
    }

    #[test]
    fn unmet_options_lists_what_the_config_lacks() {
        let fragment = "# comment\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n\
                        # CONFIG_D is not set\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n";
        assert_eq!(
            unmet_options(fragment, config),
            ["CONFIG_B=y", "# CONFIG_C is not set"]
        );
        assert!(unmet_options(fragment, "CONFIG_A=y\nCONFIG_B=y\n").is_empty());
    }

    #[test]
    fn one_build_at_a_time_holds_the_cache() {
        let dir = std::env::temp_dir().join(format!("lab-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let held = lock_cache(&dir).unwrap();
        // A second open file description is refused while the first holds it.
        let other = fs::File::open(dir.join("build.lock")).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(fs::TryLockError::WouldBlock)
        ));
        drop(held);
        other.try_lock().unwrap();
        drop(other);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cache_key_follows_the_source_package() {
        assert_ne!(
            cache_key("linux-source-6.12_6.12.118-1~deb12u1_all.deb"),
            cache_key("linux-source-6.12_6.12.119-1~deb12u1_all.deb")
        );
    }

    #[test]
    fn the_patches_touch_only_samples() {
        for (name, text) in PATCHES {
            for line in text.lines().filter(|l| l.starts_with("+++ ")) {
                assert!(line.starts_with("+++ b/samples/"), "{name}: {line}");
            }
        }
    }

    #[test]
    fn every_lab_run_and_fault_is_in_the_lab_script() {
        for (run, _, _) in EXPECTED_RUNS {
            let by_name = LAB_SCRIPT.contains(&format!("suite {run} "));
            let by_fault = run
                .strip_prefix("fault-")
                .is_some_and(|f| LAB_SCRIPT.contains(&format!("run_fault {f} ")));
            assert!(by_name || by_fault, "{run}");
        }
        for fault in &FAULTS {
            assert!(LAB_SCRIPT.contains(&format!("run_fault {} ", fault.name)));
            assert!(fault.cases.contains(&fault.fails), "{}", fault.name);
            assert!(EXPECTED_RUNS
                .iter()
                .any(|(r, _, _)| *r == format!("fault-{}", fault.name)));
        }
    }

    #[test]
    fn every_fault_case_is_in_the_catalogue() {
        let root = std::env::temp_dir().join(format!("lab-guest-{}", std::process::id()));
        let cases = crate::workspace().unwrap().join("cases");
        install_guest(&cases, &root).unwrap();
        for fault in &FAULTS {
            for case in fault.cases {
                let file = root.join(format!("lab-cases/{}/{case}.yaml", fault.name));
                assert!(file.is_file(), "{}", file.display());
            }
        }
        assert!(root.join("lab.sh").is_file());
        fs::remove_dir_all(&root).unwrap();
    }

    fn check(ids: &str, verdict: Verdict) -> ::results::CheckRecord {
        ::results::CheckRecord {
            name: ids.to_lowercase(),
            ids: vec![ids.into()],
            strength: ::results::Strength::Must,
            verdict,
            expected: String::new(),
            observed: String::new(),
            location: None,
            known_failure: None,
            qemu: None,
        }
    }

    fn device(name: &str, cases: Vec<CaseResult>) -> DeviceResults {
        DeviceResults {
            name: name.into(),
            cases,
            ..DeviceResults::default()
        }
    }

    fn caught_by_kernel_log(name: &str, line: &str) -> CaseResult {
        let mut case = CaseResult::new(name, "", "v2");
        case.outcome = Outcome::Fail;
        case.checks.push(check("KERNEL-01", Verdict::Fail));
        case.kernel_log.push(format!("[ 12.5] {line}"));
        case
    }

    #[test]
    fn a_fault_must_fail_its_case_with_the_kernel_line_and_no_other() {
        let warn = &FAULTS[0];
        let passing = |name: &str| CaseResult::new(name, "", "v2");
        let right = vec![
            caught_by_kernel_log(warn.fails, warn.says),
            passing(warn.cases[1]),
            passing(warn.cases[2]),
        ];
        judge_fault(warn, &[device("a", right.clone())]).unwrap();

        // The line is a different one: the fault was not what failed it.
        let mut other_line = right.clone();
        other_line[0] = caught_by_kernel_log(warn.fails, "WARNING: elsewhere");
        let e = judge_fault(warn, &[device("a", other_line)]).unwrap_err();
        assert!(e.to_string().contains("caught: []"), "{e}");

        // A case off the fault's path fails too.
        let mut spread = right.clone();
        spread[1].outcome = Outcome::Fail;
        let e = judge_fault(warn, &[device("a", spread)]).unwrap_err();
        assert!(e.to_string().contains("not on its path"), "{e}");

        // A case that did not run at all.
        let e = judge_fault(warn, &[device("a", right[..2].to_vec())]).unwrap_err();
        assert!(e.to_string().contains("ran no case"), "{e}");
    }

    #[test]
    fn the_hang_wedges_one_device_and_the_run_goes_on() {
        let hang = &FAULTS[3];
        let mut stuck = CaseResult::new(hang.fails, "", "v2");
        stuck.outcome = Outcome::Timeout;
        stuck.checks.push(check("KERNEL-02", Verdict::Fail));
        let mut skipped = CaseResult::new(hang.cases[1], "", "v2");
        skipped.outcome = Outcome::Error;
        skipped.reason = Some("device wedged: the process of case ... is stuck".into());
        let mut wedged = device("a", vec![stuck, skipped]);
        wedged.wedged = Some("stuck".into());
        let fine = device(
            "b",
            hang.cases
                .iter()
                .map(|c| CaseResult::new(c, "", "v2"))
                .collect(),
        );
        judge_fault(hang, &[wedged.clone(), fine.clone()]).unwrap();

        // Alone, a wedged device proves nothing about the run going on.
        let e = judge_fault(hang, std::slice::from_ref(&wedged)).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        // Not wedged: the stuck process was not noticed.
        let mut unwedged = wedged;
        unwedged.wedged = None;
        assert!(judge_fault(hang, &[unwedged, fine]).is_err());
    }
}
