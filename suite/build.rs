//! Embeds the scenario catalogue (`cases/**/*.yaml` at the workspace root)
//! into the library, so the binary runs without a `cases/` directory.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../cases");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.is_dir() {
        walk(&root, &mut files);
    }
    files.sort();
    let mut out = String::from("&[\n");
    for path in &files {
        // Directories are watched too, so added or removed files are seen.
        println!("cargo:rerun-if-changed={}", path.display());
        let display = path
            .strip_prefix(&root)
            .expect("walked under the root")
            .to_string_lossy()
            .replace('\\', "/");
        let absolute = path.canonicalize().expect("a file just listed exists");
        writeln!(
            out,
            "    ({display:?}, include_str!({:?})),",
            absolute.display()
        )
        .expect("writing to a String");
    }
    out.push(']');
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("catalogue.rs");
    std::fs::write(&dest, out).expect("OUT_DIR is writable");
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}
