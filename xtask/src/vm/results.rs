//! Getting the guest's `/results` back and judging them.
//!
//! The guest writes `tar | gzip | base64` between two marker lines to its
//! second serial port, which QEMU saves to a file: no network, no shared
//! filesystem, nothing but Debian's built-in serial driver.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The marker lines `init.sh` writes around the archive.
const BEGIN: &str = "--- vfio-migtest results begin ---";
const END: &str = "--- vfio-migtest results end ---";

/// The runs `init.sh` records in `exit-codes`, the exit code each must end
/// with (kselftest's 0 pass, 1 fail, 4 skip; 2 usage or file error), and
/// text its output must contain.
const EXPECTED_RUNS: &[(&str, i32, &str)] = &[
    // mtty migrates: every case passes, its known deviations are XFAIL.
    ("mtty", 0, "total:"),
    // The emulated NIC has no migration: every case is skipped.
    ("pci", 4, "does not support migration v2"),
    // A group another process holds is refused before anything runs.
    ("busy", 4, "already open (by PID"),
    // Region access on a real kernel: the NIC's config space matches sysfs.
    ("probe", 0, "8086:10d3 (= sysfs)"),
    // A live migration over loopback between the two mtty-2 devices, and
    // the same state saved again on both sides.
    ("migrate", 0, "downtime: "),
    ("receive", 0, "the device is in RUNNING"),
    ("live-resave-identical", 0, ""),
    ("save", 0, ""),
    ("resume", 0, ""),
    // The second mtty-2 device, saved again, gives the same stream.
    ("resave-identical", 0, ""),
    // An mtty-2 state for the mtty-1 device: refused by the file header...
    ("resume-foreign", 2, "device type"),
    // ... and with --force, by the driver (mtty's header check: EFAULT).
    ("resume-forced", 1, "EFAULT"),
];

/// Decodes the archive captured from the results port into `out`, using
/// `scratch` for the base64 text.
pub fn unpack(captured: &Path, scratch: &Path, out: &Path) -> Result<()> {
    let bytes = fs::read(captured).with_context(|| {
        format!(
            "cannot read the results port capture {}",
            captured.display()
        )
    })?;
    let base64 = archive_text(&String::from_utf8_lossy(&bytes))?;
    fs::write(scratch, base64)?;
    let mut decode = Command::new("base64");
    decode.arg("-d").arg(scratch);
    let mut untar = Command::new("tar");
    untar.arg("-xz").arg("-C").arg(out);
    cmd::pipeline(&mut [decode, untar], Stdio::inherit()).context("results could not be decoded")
}

/// The base64 text between the markers, without line breaks (the guest's
/// tty turns each `\n` into `\r\n`).
fn archive_text(captured: &str) -> Result<String> {
    let Some((_, rest)) = captured.split_once(BEGIN) else {
        bail!("the guest sent no results (no begin marker on its results port)");
    };
    let Some((text, _)) = rest.split_once(END) else {
        bail!("the guest's results are truncated (no end marker on its results port)");
    };
    Ok(text.split_whitespace().collect())
}

/// Checks the unpacked results: device setup worked, and every expected
/// suite run ended with an acceptable exit code.
pub fn judge(out: &Path) -> Result<()> {
    judge_without(out, &[])
}

/// The runs over the network, which a guest without networking skips.
pub const NETWORK_RUNS: [&str; 3] = ["migrate", "receive", "live-resave-identical"];

/// [`judge`], for a guest that does not make the runs in `skipped`.
pub fn judge_without(out: &Path, skipped: &[&str]) -> Result<()> {
    if let Ok(error) = fs::read_to_string(out.join("setup-error")) {
        bail!("guest could not set up its devices: {}", error.trim());
    }
    let expected: Vec<(&str, i32, &str)> = EXPECTED_RUNS
        .iter()
        .filter(|(run, _, _)| !skipped.contains(run))
        .copied()
        .collect();
    judge_runs(out, &expected)
}

/// Checks that each of `expected` (run, exit code, words of its log) ended
/// as it should.
pub fn judge_runs(out: &Path, expected: &[(&str, i32, &str)]) -> Result<()> {
    let path = out.join("exit-codes");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("the guest recorded no exit codes ({})", path.display()))?;
    let codes = parse_exit_codes(&text)?;
    let mut failed = Vec::new();
    for &(run, want, says) in expected {
        let log = fs::read_to_string(out.join(format!("{run}.log"))).unwrap_or_default();
        match codes.get(run) {
            Some(&code) if code == want && log.contains(says) => {
                println!("suite run {run}: exit code {code} (as expected)");
            }
            Some(&code) if code == want => {
                failed.push(format!("{run} did not say {says:?} ({run}.log)"))
            }
            Some(&code) => failed.push(format!("{run} exited with {code}, not {want}")),
            None => failed.push(format!("{run} recorded no exit code")),
        }
    }
    if !failed.is_empty() {
        bail!("suite runs in the guest failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Parses lines of `<run> <exit code>`.
fn parse_exit_codes(text: &str) -> Result<BTreeMap<String, i32>> {
    text.lines()
        .map(|line| {
            let parsed = line
                .split_once(' ')
                .and_then(|(run, code)| Some((run.to_owned(), code.trim().parse().ok()?)));
            parsed.with_context(|| format!("malformed line in exit-codes: {line:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_uses_the_same_markers() {
        let init = include_str!("init.sh");
        assert!(init.contains(&format!("RESULTS_BEGIN=\"{BEGIN}\"")));
        assert!(init.contains(&format!("RESULTS_END=\"{END}\"")));
    }

    #[test]
    fn archive_text_strips_console_line_endings() {
        let captured = format!("noise\r\n{BEGIN}\r\nQUJD\r\nREVG\r\n{END}\r\n");
        assert_eq!(archive_text(&captured).unwrap(), "QUJDREVG");
    }

    #[test]
    fn archive_text_rejects_a_truncated_capture() {
        let captured = format!("{BEGIN}\r\nQUJD\r\n");
        let err = archive_text(&captured).unwrap_err();
        assert!(err.to_string().contains("truncated"));
    }

    #[test]
    fn every_expected_run_is_in_the_init_script() {
        let init = include_str!("init.sh");
        for (run, _, _) in EXPECTED_RUNS {
            assert!(init.contains(&format!("suite {run} ")), "{run}");
        }
    }

    #[test]
    fn judge_wants_the_exit_code_and_the_words() {
        let dir = std::env::temp_dir().join(format!("vm-judge-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let codes: String = EXPECTED_RUNS
            .iter()
            .map(|(r, c, _)| format!("{r} {c}\n"))
            .collect();
        fs::write(dir.join("exit-codes"), &codes).unwrap();
        for (run, _, says) in EXPECTED_RUNS {
            fs::write(dir.join(format!("{run}.log")), says).unwrap();
        }
        judge(&dir).unwrap();
        fs::write(dir.join("busy.log"), "ran anyway").unwrap();
        assert!(judge(&dir)
            .unwrap_err()
            .to_string()
            .contains("busy did not say"));
        fs::write(dir.join("exit-codes"), codes.replace("pci 4", "pci 0")).unwrap();
        assert!(judge(&dir)
            .unwrap_err()
            .to_string()
            .contains("pci exited with 0, not 4"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exit_codes_parse_and_reject_garbage() {
        let codes = parse_exit_codes("mtty 0\npci 4\n").unwrap();
        assert_eq!(codes["mtty"], 0);
        assert_eq!(codes["pci"], 4);
        assert!(parse_exit_codes("mtty zero\n").is_err());
    }
}
