//! Loads an HTML report in Debian's headless Chromium: takes a screenshot
//! and collects every console message (an inline script that throws logs
//! `Uncaught ...`). Host resolution is switched off so the browser's own
//! background requests never leave the machine.
//!
//! Shared by test crates: include it with
//! `#[path = "<path to>/reports/tests/support/browser.rs"] mod browser;`.
//! It uses only the standard library.

#![allow(dead_code)] // each including test uses part of it

#[path = "tool.rs"]
pub mod tool;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `chromium` package installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// A Chromium run that takes longer is killed and reported; far more than
/// a page load needs on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(300);

/// What one page load showed.
#[derive(Debug)]
pub struct PageCheck {
    /// Console messages, as Chromium logged them (`"Uncaught Error: x", source: file:///... (12)`).
    pub console: Vec<String>,
    /// The DOM after scripts ran.
    pub dom: String,
}

/// The browser to use; `None` (after a warning on the terminal) when it is
/// not installed and `VFIO_MIGTEST_REQUIRE_TOOLS` is unset.
///
/// # Panics
/// When the browser is missing and `VFIO_MIGTEST_REQUIRE_TOOLS` is set.
pub fn chromium() -> Option<PathBuf> {
    let path = Path::new(CHROMIUM);
    tool::present(path.exists(), CHROMIUM, "apt-get install chromium").then(|| path.to_path_buf())
}

/// Runs Chromium headless on `page` with a fresh profile under `scratch`,
/// with `extra` arguments; returns (stdout, stderr).
fn run(
    browser: &Path,
    page: &Path,
    scratch: &Path,
    extra: &[String],
) -> Result<(String, String), String> {
    // A fresh profile per run: Chromium refuses a profile another instance holds.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let profile = scratch.join(format!("profile-{nanos}"));
    let out_path = scratch.join("chromium.out");
    let err_path = scratch.join("chromium.err");
    let open = |p: &Path| {
        std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
    };
    let page = page
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", page.display()))?;
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(open(&out_path)?)
        .stderr(open(&err_path)?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", browser.display()))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {DEADLINE:?}",
                    browser.display()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {}: {e}", browser.display())),
        }
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let (stdout, stderr) = (read(&out_path)?, read(&err_path)?);
    if !status.success() {
        return Err(format!(
            "{} failed ({status}):\n{stderr}",
            browser.display()
        ));
    }
    Ok((stdout, stderr))
}

/// Console messages in Chromium's stderr log
/// (`[..:INFO:CONSOLE:12] "message", source: file:///x.html (12)`).
fn console_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(|l| l.split_once("] ").map_or(l, |(_, m)| m).to_string())
        .collect()
}

/// Loads `page` and dumps its DOM after scripts ran.
pub fn load(browser: &Path, page: &Path, scratch: &Path) -> Result<PageCheck, String> {
    let (dom, stderr) = run(browser, page, scratch, &["--dump-dom".to_string()])?;
    Ok(PageCheck {
        console: console_lines(&stderr),
        dom,
    })
}

/// Takes a `width` x `height` screenshot of `page` into `png`; returns the
/// console messages of that load.
pub fn screenshot(
    browser: &Path,
    page: &Path,
    scratch: &Path,
    png: &Path,
    (width, height): (u32, u32),
) -> Result<Vec<String>, String> {
    let (_, stderr) = run(
        browser,
        page,
        scratch,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
        ],
    )?;
    Ok(console_lines(&stderr))
}

/// Width and height from a PNG's IHDR chunk; `None` if `bytes` is no PNG.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != MAGIC || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}
