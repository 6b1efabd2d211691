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
fn a_missing_tool_warns_unless_required() {
    use browser::tool::check;
    let mut out = Vec::new();
    assert!(check(
        true,
        "chromium",
        "apt-get install chromium",
        true,
        &mut out
    ));
    assert!(out.is_empty());
    assert!(!check(
        false,
        "chromium",
        "apt-get install chromium",
        false,
        &mut out
    ));
    let warning = String::from_utf8(out).unwrap();
    assert!(
        warning.starts_with(
            "warning: NOT RUN: a_missing_tool_warns_unless_required: chromium is missing"
        ) && warning.contains("VFIO_MIGTEST_REQUIRE_TOOLS=1"),
        "{warning}"
    );
    let required = std::panic::catch_unwind(|| {
        check(
            false,
            "chromium",
            "apt-get install chromium",
            true,
            &mut Vec::new(),
        )
    });
    assert!(required.is_err());
}
