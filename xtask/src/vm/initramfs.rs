//! The guest: an initramfs with busybox, the VFIO modules of the host's
//! Debian kernel plus mtty.ko, the suite binary with its shared libraries,
//! and `init.sh` as `/init`. There is no disk; everything runs from RAM.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::packages::Kernel;
use crate::cmd;

const INIT: &str = include_str!("init.sh");
const V1_LANE: &str = include_str!("v1.sh");

/// Modules the guest needs besides mtty.ko (whose own dependencies are read
/// from the built module). Their dependencies are added from modules.dep.
const GUEST_MODULES: [&str; 4] = ["vfio", "vfio_iommu_type1", "mdev", "vfio_pci"];

/// Where the suite binary lives in the guest (on the guest's PATH).
const GUEST_SUITE: &str = "usr/local/bin/vfio-migtest";

/// What goes into the guest.
pub struct Contents<'a> {
    pub kernel: &'a Kernel,
    /// `None` on the lab kernel, which has VFIO and mtty built in: the
    /// guest then gets no modules.
    pub mtty: Option<&'a Path>,
    /// The v1 reference driver, loaded by the v1 lane (`v1.sh`) itself;
    /// `None` on the lab kernel, which cannot load modules: no v1 lane.
    pub v1mig: Option<&'a Path>,
    pub suite: &'a Path,
    pub suite_args: &'a [String],
    /// The repository's `expectations/`, copied to `/expectations`.
    pub expectations: Option<&'a Path>,
    /// The repository's `cases/`, on the lab kernel: its extra runs
    /// (`labkernel::install_guest`) take their cases from there.
    pub lab_cases: Option<&'a Path>,
}

/// Fills `root` (emptied first) with the guest and packs it into `image`.
pub fn build(contents: &Contents, root: &Path, image: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    fs::create_dir_all(root)?;
    install_file(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    if let Some(mtty) = contents.mtty {
        install_modules(contents.kernel, mtty, &root.join("modules"))?;
    }
    install_program(contents.suite, root)?;
    install_executable(INIT, &root.join("init"))?;
    fs::write(root.join("v1.sh"), V1_LANE)?;
    fs::create_dir_all(root.join("etc"))?;
    let v1_configs = match contents.v1mig {
        Some(v1mig) => {
            install_file(v1mig, &root.join("drivers/v1mig.ko"))?;
            super::v1mig::configs_file()
        }
        None => String::new(),
    };
    fs::write(root.join("etc/v1-configs"), v1_configs)?;
    fs::write(
        root.join("etc/suite-args"),
        suite_args_file(contents.suite_args)?,
    )?;
    if let Some(expectations) = contents.expectations {
        copy_tree(expectations, &root.join("expectations"))?;
    }
    if let Some(cases) = contents.lab_cases {
        super::labkernel::install_guest(cases, root)?;
    }
    pack(root, image)
}

/// Copies the modules into `dir` as `NN-name.ko`, numbered in load order,
/// decompressed because busybox `insmod` takes plain ELF files.
fn install_modules(kernel: &Kernel, mtty: &Path, dir: &Path) -> Result<()> {
    let modules_dir = kernel.modules_dir();
    let dep_file = modules_dir.join("modules.dep");
    let dep_text = fs::read_to_string(&dep_file)
        .with_context(|| format!("cannot read {}", dep_file.display()))?;
    let deps = parse_modules_dep(&dep_text);
    let mut wanted: Vec<String> = GUEST_MODULES.map(String::from).to_vec();
    wanted.extend(declared_dependencies(mtty)?);

    fs::create_dir_all(dir)?;
    let order = load_order(&deps, &wanted)?;
    println!("guest modules: {}, mtty", order.join(", "));
    for (i, name) in order.iter().enumerate() {
        let source = modules_dir.join(&deps[name].path);
        decompress_module(&source, &dir.join(format!("{i:02}-{name}.ko")))?;
    }
    install_file(mtty, &dir.join(format!("{:02}-mtty.ko", order.len())))
}

/// One line of modules.dep: a module's path (relative to
/// `/lib/modules/$V`) and the names of all modules it needs.
#[derive(Debug)]
struct ModuleDep {
    path: String,
    needs: Vec<String>,
}

fn parse_modules_dep(text: &str) -> HashMap<String, ModuleDep> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(path, needs)| {
            let dep = ModuleDep {
                path: path.to_owned(),
                needs: needs.split_whitespace().map(module_name).collect(),
            };
            (module_name(path), dep)
        })
        .collect()
}

/// The module name for a path: `kernel/drivers/vfio/pci/vfio-pci.ko.xz` is
/// `vfio_pci` (the kernel treats `-` and `_` in module names alike).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The names of `wanted` and everything they need, each after its
/// dependencies.
fn load_order(deps: &HashMap<String, ModuleDep>, wanted: &[String]) -> Result<Vec<String>> {
    let mut order = Vec::new();
    for name in wanted {
        add_with_dependencies(deps, name, &mut order)?;
    }
    Ok(order)
}

fn add_with_dependencies(
    deps: &HashMap<String, ModuleDep>,
    name: &str,
    order: &mut Vec<String>,
) -> Result<()> {
    if order.iter().any(|n| n == name) {
        return Ok(());
    }
    let dep = deps
        .get(name)
        .with_context(|| format!("module {name} is not in modules.dep"))?;
    // depmod rejects dependency cycles, so this recursion ends.
    for need in &dep.needs {
        add_with_dependencies(deps, need, order)?;
    }
    order.push(name.to_owned());
    Ok(())
}

/// The modules a built `.ko` declares it needs (`modinfo`'s `depends`).
fn declared_dependencies(module: &Path) -> Result<Vec<String>> {
    let depends = cmd::stdout_of(Command::new("modinfo").args(["-F", "depends"]).arg(module))?;
    Ok(depends
        .trim()
        .split(',')
        .filter(|name| !name.is_empty())
        .map(module_name)
        .collect())
}

fn decompress_module(source: &Path, target: &Path) -> Result<()> {
    let name = source.to_string_lossy();
    if name.ends_with(".ko") {
        install_file(source, target)
    } else if name.ends_with(".ko.xz") {
        let mut xz = Command::new("xz");
        xz.arg("-dc").arg(source);
        cmd::pipeline(&mut [xz], Stdio::from(File::create(target)?))
    } else {
        bail!("{name}: unsupported module compression (expected .ko or .ko.xz)")
    }
}

/// Installs the program at `GUEST_SUITE`, with the shared libraries and
/// loader it needs at the same paths as on the host.
fn install_program(program: &Path, root: &Path) -> Result<()> {
    install_file(program, &root.join(GUEST_SUITE))?;
    for library in shared_libraries(program)? {
        let relative = library.strip_prefix("/").unwrap_or(&library);
        install_file(&library, &root.join(relative))?;
    }
    Ok(())
}

fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .context("cannot run ldd")?;
    // ldd fails for static executables, which need nothing else.
    if String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        bail!("ldd {} failed: {}", program.display(), output.status);
    }
    Ok(ldd_paths(&String::from_utf8_lossy(&output.stdout)))
}

/// The files in ldd output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn ldd_paths(ldd_output: &str) -> Vec<PathBuf> {
    ldd_output
        .lines()
        .filter_map(|line| {
            let file = line.split_once("=>").map_or(line, |(_, file)| file);
            let path = file.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn suite_args_file(args: &[String]) -> Result<String> {
    if let Some(arg) = args.iter().find(|arg| arg.contains('\n')) {
        bail!("suite argument {arg:?} contains a newline, which the guest cannot pass on");
    }
    Ok(args.iter().map(|arg| format!("{arg}\n")).collect())
}

/// Copies a regular file (following symlinks), creating parent directories.
fn install_file(source: &Path, target: &Path) -> Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(source, target)
        .with_context(|| format!("cannot copy {} to {}", source.display(), target.display()))?;
    Ok(())
}

pub(super) fn install_executable(text: &str, target: &Path) -> Result<()> {
    fs::write(target, text)?;
    fs::set_permissions(target, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn copy_tree(source: &Path, target: &Path) -> Result<()> {
    fs::create_dir_all(target)?;
    for entry in fs::read_dir(source)? {
        let entry = entry?;
        let to = target.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else {
            install_file(&entry.path(), &to)?;
        }
    }
    Ok(())
}

/// `find . | cpio -o -H newc | gzip`, run inside `root`, owned by root.
fn pack(root: &Path, image: &Path) -> Result<()> {
    let mut find = Command::new("find");
    find.arg(".").current_dir(root);
    let mut cpio = Command::new("cpio");
    cpio.args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(root);
    let gzip = Command::new("gzip");
    let image_file =
        File::create(image).with_context(|| format!("cannot create {}", image.display()))?;
    cmd::pipeline(&mut [find, cpio, gzip], Stdio::from(image_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/vfio/vfio.ko.xz:
kernel/drivers/vfio/vfio_iommu_type1.ko.xz: kernel/drivers/vfio/vfio.ko.xz
kernel/drivers/vfio/pci/vfio-pci-core.ko.xz: kernel/drivers/vfio/vfio.ko.xz kernel/virt/lib/irqbypass.ko.xz
kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/pci/vfio-pci-core.ko.xz kernel/drivers/vfio/vfio.ko.xz kernel/virt/lib/irqbypass.ko.xz
kernel/drivers/vfio/mdev/mdev.ko.xz:
kernel/virt/lib/irqbypass.ko.xz:
";

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let deps = parse_modules_dep(DEP);
        let wanted = GUEST_MODULES.map(String::from);
        let order = load_order(&deps, &wanted).unwrap();
        assert_eq!(
            order,
            [
                "vfio",
                "vfio_iommu_type1",
                "mdev",
                "irqbypass",
                "vfio_pci_core",
                "vfio_pci"
            ]
        );
    }

    #[test]
    fn load_order_names_a_missing_module() {
        let deps = parse_modules_dep(DEP);
        let err = load_order(&deps, &["e1000e".to_owned()]).unwrap_err();
        assert_eq!(err.to_string(), "module e1000e is not in modules.dep");
    }

    #[test]
    fn ldd_paths_skip_the_vdso() {
        let output = "\
\tlinux-vdso.so.1 (0x00007ffd5b3f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e1c8a0000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1c6bf000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1c9a6000)
";
        let paths = ldd_paths(output);
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn suite_args_are_one_per_line() {
        let args = ["--skip".to_owned(), "a b".to_owned()];
        assert_eq!(suite_args_file(&args).unwrap(), "--skip\na b\n");
        assert!(suite_args_file(&["a\nb".to_owned()]).is_err());
    }
}
