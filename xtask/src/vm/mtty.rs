//! mtty.ko, the kernel's sample mdev driver, which implements VFIO migration
//! v2. Debian does not ship it (CONFIG_SAMPLES is off), so it is built out of
//! tree against the installed headers and cached by a hash of its source and
//! the kernel release.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::packages::Kernel;
use crate::cmd;

const SOURCE_TARBALL: &str = "*/usr/src/linux-source-6.12.tar.xz";
const MTTY_SOURCE: &str = "*/samples/vfio-mdev/mtty.c";

/// Returns the path of an mtty.ko that loads into `kernel`, building it only
/// when the cache has none for this source and kernel.
pub fn build(kernel: &Kernel, source_deb: &Path, cache: &Path) -> Result<PathBuf> {
    let source = extracted_source(source_deb, &cache.join("src"))?;
    let text = fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
    let key = cache_key(&text, &kernel.release);
    let dir = cache.join(format!("mtty-{key:016x}"));
    let module = dir.join("mtty.ko");
    if module.is_file() {
        println!("mtty.ko: cached {}", module.display());
        return Ok(module);
    }

    fs::create_dir_all(&dir)?;
    fs::write(dir.join("mtty.c"), &text)?;
    fs::write(dir.join("Makefile"), "obj-m := mtty.o\n")?;
    cmd::run(
        Command::new("make")
            .arg("-C")
            .arg(kernel.build_dir())
            .arg(format!("M={}", dir.display()))
            .arg("modules"),
    )?;
    if !module.is_file() {
        bail!("make succeeded but left no {}", module.display());
    }
    println!("mtty.ko: built {}", module.display());
    Ok(module)
}

/// Extracts `mtty.c` from the kernel source package. Reading it means
/// decompressing the whole 150 MB source tarball (about 12 s), so the file
/// is kept next to the other caches, per package file name.
fn extracted_source(source_deb: &Path, src_cache: &Path) -> Result<PathBuf> {
    let stem = source_deb
        .file_stem()
        .context("kernel source package has no file name")?;
    let dir = src_cache.join(stem);
    let source = dir.join("mtty.c");
    if source.is_file() {
        return Ok(source);
    }

    // Extract into a scratch directory first so that an interrupted run
    // never leaves a truncated mtty.c that looks cached.
    let scratch = dir.join("extract");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    fs::create_dir_all(&scratch)?;
    let mut fsys_tarfile = Command::new("dpkg-deb");
    fsys_tarfile.arg("--fsys-tarfile").arg(source_deb);
    let mut tarball = Command::new("tar");
    tarball.args(["-xO", "--wildcards", SOURCE_TARBALL]);
    let mut member = Command::new("tar");
    member
        .arg("-xJ")
        .arg("-C")
        .arg(&scratch)
        .args(["--wildcards", MTTY_SOURCE]);
    cmd::pipeline(&mut [fsys_tarfile, tarball, member], Stdio::inherit())?;

    let extracted = scratch.join("linux-source-6.12/samples/vfio-mdev/mtty.c");
    fs::rename(&extracted, &source)
        .with_context(|| format!("{} was not in the source tarball", extracted.display()))?;
    fs::remove_dir_all(&scratch)?;
    Ok(source)
}

pub(super) fn cache_key(source: &[u8], kernel_release: &str) -> u64 {
    // The NUL keeps "source + release" unambiguous.
    let input = source.iter().chain(b"\0").chain(kernel_release.as_bytes());
    fnv1a64(input.copied())
}

/// FNV-1a, 64 bit: enough to tell cache entries apart, and std-only.
pub(super) fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cache_key_depends_on_source_and_kernel() {
        let key = cache_key(b"int x;", "6.12.117+deb12-amd64");
        assert_ne!(key, cache_key(b"int y;", "6.12.117+deb12-amd64"));
        assert_ne!(key, cache_key(b"int x;", "6.12.115+deb12-amd64"));
    }
}
