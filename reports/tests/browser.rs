//! The HTML report in a real browser: it renders, its script runs without
//! a console message, and a script error would be caught.
#![forbid(unsafe_code)]

#[path = "support/browser.rs"]
mod browser;
#[path = "../src/fixture.rs"]
mod fixture;

use std::path::{Path, PathBuf};

fn write_report(dir: &Path) -> PathBuf {
    let path = dir.join("report.html");
    std::fs::write(&path, reports::html(&fixture::fixture())).unwrap();
    path
}

#[test]
fn report_renders_without_console_messages() {
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = write_report(dir.path());

    let loaded = browser::load(&chromium, &page, dir.path()).unwrap();
    assert_eq!(loaded.console, Vec::<String>::new());
    assert!(
        loaded.dom.contains("data-script=\"ran\""),
        "the inline script did not finish"
    );
    // The script reveals the expand/collapse buttons.
    assert!(loaded.dom.contains("<span class=\"tools\" id=\"tools\">"));

    let png = dir.path().join("report.png");
    let console = browser::screenshot(&chromium, &page, dir.path(), &png, (1280, 2000)).unwrap();
    assert_eq!(console, Vec::<String>::new());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(browser::png_size(&bytes), Some((1280, 2000)));
    // A blank page compresses to a few KiB; this one has text and charts.
    assert!(
        bytes.len() > 100_000,
        "screenshot is only {} bytes",
        bytes.len()
    );

    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    std::fs::copy(&png, &kept).unwrap();
    std::fs::copy(&page, kept.with_extension("html")).unwrap();
    println!("screenshot: {}", kept.display());
}

#[test]
fn a_throwing_script_is_detected() {
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = write_report(dir.path());
    let text = std::fs::read_to_string(&page).unwrap();
    let broken = text.replacen(
        "</body>",
        "<script>throw new Error(\"injected failure\");</script></body>",
        1,
    );
    assert_ne!(broken, text);
    std::fs::write(&page, broken).unwrap();

    let loaded = browser::load(&chromium, &page, dir.path()).unwrap();
    assert!(
        loaded
            .console
            .iter()
            .any(|m| m.contains("Uncaught Error: injected failure")),
        "not detected: {:?}",
        loaded.console
    );
}

#[test]
fn a_missing_browser_skips_unless_required() {
    let nowhere = Path::new("/nonexistent/chromium");
    assert_eq!(browser::locate(nowhere, false), None);
    assert!(std::panic::catch_unwind(|| browser::locate(nowhere, true)).is_err());
    assert_eq!(
        browser::locate(Path::new("/bin/sh"), true),
        Some(PathBuf::from("/bin/sh"))
    );
}
