//! Debian packages the lab needs: one 6.12 kernel (image, for its modules and
//! `vmlinuz`; headers, to build mtty), QEMU, the guest's userland, and the
//! kernel source package, which is only read for `mtty.c`.
//!
//! Idempotent: a kernel whose headers and image are already installed wins
//! over a newer one from the archive, and apt is not touched at all when
//! nothing is missing, so reruns are fast and work offline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Host tools used to build and boot the guest. `make` and `xz-utils` are
/// not pulled in by the kernel headers but are needed to build mtty.ko and
/// to decompress Debian's `.ko.xz` modules.
const TOOLS: [&str; 5] = [
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "make",
    "xz-utils",
];

const SOURCE_PACKAGE: &str = "linux-source-6.12";

/// A Debian 6.12 kernel release string, e.g. `6.12.117+deb12-amd64`.
pub struct Kernel {
    pub release: String,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        PathBuf::from(format!("/boot/vmlinuz-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        PathBuf::from(format!("/lib/modules/{}", self.release))
    }

    pub fn build_dir(&self) -> PathBuf {
        self.modules_dir().join("build")
    }

    fn headers_package(&self) -> String {
        format!("linux-headers-{}", self.release)
    }

    fn image_package(&self) -> String {
        format!("linux-image-{}", self.release)
    }

    /// Debian ships the same kernel signed and unsigned; either provides
    /// `vmlinuz` and the modules.
    fn image_installed(&self) -> Result<bool> {
        Ok(is_installed(&self.image_package())?
            || is_installed(&format!("{}-unsigned", self.image_package()))?)
    }
}

/// Everything the later steps need from the package step.
pub struct Prepared {
    pub kernel: Kernel,
    pub source_deb: PathBuf,
}

/// Installs what is missing and downloads the kernel source package into
/// `deb_cache`.
pub fn ensure(deb_cache: &Path) -> Result<Prepared> {
    let installed_kernel = newest_installed_kernel()?;
    let cached_source = cached_source_deb(deb_cache)?;
    let mut missing = not_installed(&TOOLS.map(String::from))?;

    if installed_kernel.is_none() || !missing.is_empty() || cached_source.is_none() {
        cmd::run(apt_get().arg("update"))?;
    }
    let kernel = match installed_kernel {
        Some(kernel) => kernel,
        None => newest_offered_kernel()?,
    };
    println!("kernel: {}", kernel.release);
    missing.extend(not_installed(&[kernel.headers_package()])?);
    if !kernel.image_installed()? {
        missing.push(kernel.image_package());
    }

    if missing.is_empty() {
        println!("packages: all installed");
    } else {
        cmd::run(
            apt_get()
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    let source_deb = match cached_source {
        Some(deb) => deb,
        None => download_source(deb_cache)?,
    };
    println!("kernel source: {}", source_deb.display());
    Ok(Prepared { kernel, source_deb })
}

/// Installs those of `packages` that are missing; apt is not touched when
/// none is.
pub fn install_missing(packages: &[&str]) -> Result<()> {
    let missing = not_installed(&packages.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(apt_get().arg("update"))?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

fn apt_get() -> Command {
    let mut apt = Command::new("apt-get");
    apt.env("DEBIAN_FRONTEND", "noninteractive");
    apt
}

fn is_installed(package: &str) -> Result<bool> {
    // dpkg-query fails for packages it has never heard of; that is a plain
    // "not installed", so only the printed status matters.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    Ok(output.stdout == b"install ok installed")
}

fn not_installed(packages: &[String]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for package in packages {
        if !is_installed(package)? {
            missing.push(package.clone());
        }
    }
    Ok(missing)
}

/// The patch level of a plain Debian 12 6.12 release (`6.12.117+deb12-amd64`
/// gives 117); `None` for anything else, such as `-rt` or `-cloud` flavours.
fn patch_level(release: &str) -> Option<u32> {
    release
        .strip_prefix("6.12.")?
        .strip_suffix("+deb12-amd64")?
        .parse()
        .ok()
}

fn newest(releases: impl Iterator<Item = String>) -> Option<Kernel> {
    releases
        .filter_map(|release| Some((patch_level(&release)?, release)))
        .max()
        .map(|(_, release)| Kernel { release })
}

fn newest_installed_kernel() -> Result<Option<Kernel>> {
    let listed = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\n", "linux-headers-6.12.*"])
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    let mut complete = Vec::new();
    for package in String::from_utf8_lossy(&listed.stdout).lines() {
        let Some(release) = package.strip_prefix("linux-headers-") else {
            continue;
        };
        let kernel = Kernel {
            release: release.to_owned(),
        };
        if patch_level(release).is_some() && is_installed(package)? && kernel.image_installed()? {
            complete.push(kernel.release);
        }
    }
    Ok(newest(complete.into_iter()))
}

fn newest_offered_kernel() -> Result<Kernel> {
    let listed = cmd::stdout_of(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-headers-6\.12\.[0-9]+\+deb12-amd64$",
    ]))?;
    let releases = listed.lines().filter_map(|line| {
        let package = line.split_whitespace().next()?;
        Some(package.strip_prefix("linux-headers-")?.to_owned())
    });
    newest(releases).context("apt offers no linux-headers-6.12.*+deb12-amd64 package")
}

fn cached_source_deb(deb_cache: &Path) -> Result<Option<PathBuf>> {
    if !deb_cache.is_dir() {
        return Ok(None);
    }
    let prefix = format!("{SOURCE_PACKAGE}_");
    let mut debs = Vec::new();
    for entry in fs::read_dir(deb_cache)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            debs.push(path);
        }
    }
    debs.sort();
    Ok(debs.pop())
}

fn download_source(deb_cache: &Path) -> Result<PathBuf> {
    fs::create_dir_all(deb_cache)?;
    cmd::run(
        apt_get()
            .args(["download", SOURCE_PACKAGE])
            .current_dir(deb_cache),
    )?;
    match cached_source_deb(deb_cache)? {
        Some(deb) => Ok(deb),
        None => bail!(
            "apt-get download {SOURCE_PACKAGE} left no .deb in {}",
            deb_cache.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_level_accepts_only_plain_amd64_releases() {
        assert_eq!(patch_level("6.12.117+deb12-amd64"), Some(117));
        assert_eq!(patch_level("6.12.9+deb12-amd64"), Some(9));
        assert_eq!(patch_level("6.12.117+deb12-rt-amd64"), None);
        assert_eq!(patch_level("6.1.0-28-amd64"), None);
    }

    #[test]
    fn newest_compares_patch_levels_numerically() {
        let releases = [
            "6.12.9+deb12-amd64",
            "6.12.117+deb12-amd64",
            "6.12.41+deb12-amd64",
        ];
        let kernel = newest(releases.iter().map(|r| r.to_string())).unwrap();
        assert_eq!(kernel.release, "6.12.117+deb12-amd64");
    }
}
