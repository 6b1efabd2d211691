//! Unsafe code lives in one file of the workspace, suite/src/device/kernel/sys.rs,
//! and the compiler holds every other file to that: each crate root forbids
//! unsafe code (suite's denies it, letting only that module through), xtask
//! aside.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The one file with `unsafe`, from the workspace root.
const UNSAFE_FILE: &str = "suite/src/device/kernel/sys.rs";
/// Where the one `allow(unsafe_code)` sits, on that module's declaration.
const ALLOW_FILE: &str = "suite/src/device/kernel/mod.rs";
/// The crate whose library root denies unsafe code instead of forbidding it.
const DENY_ROOTS: &[&str] = &["vfio-migtest-suite"];
/// Project automation: only the scan holds it.
const EXEMPT: &[&str] = &["xtask"];

/// The identifiers of Rust source outside comments, string and char
/// literals.
fn code_identifiers(src: &str) -> Vec<String> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut idents = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if at(i) == '/' && at(i + 1) == '/' {
            while i < c.len() && at(i) != '\n' {
                i += 1;
            }
        } else if at(i) == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= c.len() {
                    break;
                } else {
                    i += 1;
                }
            }
        } else if at(i) == '"' {
            i += 1;
            while i < c.len() && at(i) != '"' {
                i += if at(i) == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if at(i) == '\'' {
            if at(i + 1) == '\\' {
                i += 3;
                while i < c.len() && at(i) != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1; // a lifetime or label
            }
        } else if at(i).is_alphabetic() || at(i) == '_' {
            let start = i;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let ident: String = c[start..i].iter().collect();
            let hashes = (i..).take_while(|&j| at(j) == '#').count();
            let raw_string = matches!(ident.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"';
            if raw_string {
                i += hashes + 1;
                while i < c.len() && !(at(i) == '"' && (1..=hashes).all(|h| at(i + h) == '#')) {
                    i += 1;
                }
                i += 1 + hashes;
            } else {
                idents.push(ident);
            }
        } else {
            i += 1;
        }
    }
    idents
}

/// The lint level given to `unsafe_code` at each mention of it.
fn unsafe_code_levels(idents: &[String]) -> Vec<&str> {
    const LEVELS: &[&str] = &["allow", "expect", "warn", "deny", "forbid"];
    idents
        .iter()
        .enumerate()
        .filter(|(_, i)| *i == "unsafe_code")
        .map(|(n, _)| {
            idents[..n]
                .iter()
                .rev()
                .find(|i| LEVELS.contains(&i.as_str()))
                .map_or("none", String::as_str)
        })
        .collect()
}

/// Every `.rs` file under `dir`, build output and hidden directories aside.
fn rust_files(dir: &Path, target: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || path == target {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, target, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `cargo metadata` of the workspace.
fn metadata() -> serde_json::Value {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn string(v: &serde_json::Value) -> &str {
    v.as_str().unwrap()
}

#[test]
fn the_scanner_skips_comments_and_literals() {
    let src = r##"
        // unsafe in a comment
        /* unsafe /* nested unsafe */ still unsafe */
        #![forbid(unsafe_code)]
        let s = "unsafe \" unsafe";
        let r = r#"unsafe " unsafe"#;
        let c = '"'; let l: &'a str = x; let e = '\'';
        fn f<'unsafe_lt>() {}
        let r#type = 1;
        code_after
    "##;
    let idents = code_identifiers(src);
    assert!(!idents.iter().any(|i| i == "unsafe"), "{idents:?}");
    assert!(idents.iter().any(|i| i == "code_after"), "{idents:?}");
    assert!(idents.iter().any(|i| i == "type"), "{idents:?}");
    assert!(code_identifiers("x; unsafe { y }").contains(&"unsafe".to_string()));
    let levels = code_identifiers(
        "#![forbid(unsafe_code)] #[allow(dead_code, unsafe_code)] mod m; // allow(unsafe_code)",
    );
    assert_eq!(unsafe_code_levels(&levels), ["forbid", "allow"]);
}

#[test]
fn one_file_of_the_workspace_has_unsafe_and_the_compiler_holds_the_rest() {
    let meta = metadata();
    let root = PathBuf::from(string(&meta["workspace_root"]));
    let target = PathBuf::from(string(&meta["target_directory"]));
    let mut files = Vec::new();
    rust_files(&root, &target, &mut files);
    let mut with_unsafe = Vec::new();
    let mut allowed = Vec::new();
    for file in &files {
        let idents = code_identifiers(&std::fs::read_to_string(file).unwrap());
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        if idents.iter().any(|i| i == "unsafe") {
            with_unsafe.push(name.clone());
        }
        for level in unsafe_code_levels(&idents) {
            if !matches!(level, "deny" | "forbid") {
                allowed.push(format!("{name}: {level}"));
            }
        }
    }
    // Every crate's sources are seen, tests and xtask included.
    for dir in [
        "results/src",
        "reports/tests",
        "runner/benches",
        "xtask/src",
    ] {
        assert!(
            files.iter().any(|f| f.starts_with(root.join(dir))),
            "nothing scanned under {dir}"
        );
    }
    assert_eq!(with_unsafe, [UNSAFE_FILE]);
    assert_eq!(allowed, [format!("{ALLOW_FILE}: allow")]);
    let declaration = std::fs::read_to_string(root.join(ALLOW_FILE)).unwrap();
    assert!(
        declaration.contains("#[allow(unsafe_code)]\npub mod sys;"),
        "the allow is not on `mod sys`"
    );

    let mut roots = 0;
    for package in meta["packages"].as_array().unwrap() {
        let name = string(&package["name"]);
        if EXEMPT.contains(&name) {
            continue;
        }
        for target in package["targets"].as_array().unwrap() {
            let path = PathBuf::from(string(&target["src_path"]));
            let kind = string(&target["kind"][0]);
            let level = if kind == "lib" && DENY_ROOTS.contains(&name) {
                "deny"
            } else {
                "forbid"
            };
            let attribute = format!("#![{level}(unsafe_code)]");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.lines().any(|l| l.trim() == attribute),
                "{}: no {attribute} at the crate root",
                path.display()
            );
            roots += 1;
        }
    }
    assert!(roots > 10, "found only {roots} crate roots");
}
