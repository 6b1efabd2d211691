//! Man pages and shell completions, generated from the command-line
//! definition itself so they never drift from it (`vfio-migtest
//! __generate man|completions --out DIR`, or `cargo xtask man|completions`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Artifact, Cli};

/// Writes `what` into `out`; returns the files written.
pub fn generate(what: Artifact, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    match what {
        Artifact::Man => man_pages(out),
        Artifact::Completions => completions(out),
    }
}

/// `vfio-migtest.1`, and `vfio-migtest-run.1` ... for every visible
/// subcommand (`man vfio-migtest-run`).
fn man_pages(out: &Path) -> Result<Vec<PathBuf>> {
    clap_mangen::generate_to(Cli::command(), out)
        .with_context(|| format!("cannot write man pages into {}", out.display()))?;
    let mut written: Vec<PathBuf> = std::fs::read_dir(out)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    written.retain(|p| p.extension().is_some_and(|e| e == "1"));
    written.sort();
    Ok(written)
}

/// The command as users see it: clap_complete would also offer the hidden
/// subcommands the runner uses for its children.
fn visible() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("vfio-migtest")
        .about(full.get_about().cloned().unwrap_or_default())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

fn completions(out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = visible();
        let path = clap_complete::generate_to(shell, &mut cmd, "vfio-migtest", out)
            .with_context(|| format!("cannot write {shell} completions into {}", out.display()))?;
        if shell == Shell::Bash {
            // clap_complete spells the state of a hyphenated binary two ways
            // (clap-rs/clap#6421), so options after a subcommand never
            // complete; use the spelling of its dispatch loop throughout.
            let text = std::fs::read_to_string(&path)?;
            std::fs::write(
                &path,
                text.replace("vfio__subcmd__migtest", "vfio__migtest"),
            )?;
        }
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn man_pages_cover_every_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(Artifact::Man, dir.path()).unwrap();
        assert_eq!(
            names(&written),
            [
                "vfio-migtest-faults.1",
                "vfio-migtest-list.1",
                "vfio-migtest-migrate.1",
                "vfio-migtest-probe.1",
                "vfio-migtest-receive.1",
                "vfio-migtest-report.1",
                "vfio-migtest-resume.1",
                "vfio-migtest-run.1",
                "vfio-migtest-save.1",
                "vfio-migtest-validate.1",
                "vfio-migtest.1"
            ]
        );
        let top = std::fs::read_to_string(dir.path().join("vfio-migtest.1")).unwrap();
        assert!(top.starts_with(".ie \\n(.g .ds Aq \\(aq"), "{top}");
        assert!(top.contains(".TH vfio-migtest 1"), "{top}");
        assert!(top.contains("Exit status"), "the examples are in the page");
        assert!(!top.contains("__case"), "hidden subcommands stay hidden");
        let run = std::fs::read_to_string(dir.path().join("vfio-migtest-run.1")).unwrap();
        assert!(run.contains("\\-\\-expect"), "{run}");
        assert!(
            run.contains("expectations/mtty.yaml"),
            "the examples are in the page"
        );
    }

    #[test]
    fn completions_for_three_shells() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(Artifact::Completions, dir.path()).unwrap();
        assert_eq!(
            names(&written),
            ["vfio-migtest.bash", "_vfio-migtest", "vfio-migtest.fish"]
        );
        let bash = std::fs::read_to_string(dir.path().join("vfio-migtest.bash")).unwrap();
        assert!(
            bash.contains("--expect") && bash.contains("--device"),
            "{bash}"
        );
        let fish = std::fs::read_to_string(dir.path().join("vfio-migtest.fish")).unwrap();
        assert!(fish.contains("complete -c vfio-migtest"), "{fish}");
        assert!(fish.contains("-a \"report\""), "{fish}");
        for script in [&bash, &fish] {
            assert!(
                !script.contains("__case"),
                "hidden subcommands are not offered"
            );
        }
        // Bash completes the options of a subcommand.
        let script = format!(
            "source '{}'; COMP_WORDS=(vfio-migtest run --ex); COMP_CWORD=2; \
             _vfio__migtest vfio-migtest --ex run; echo \"${{COMPREPLY[*]}}\"",
            dir.path().join("vfio-migtest.bash").display()
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "--expect --exact\n");
    }
}
