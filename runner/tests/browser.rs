//! The report of a real run in a real browser: the simulator with one
//! driver bug next to a clean one, rendered by `vfio-migtest run` and loaded
//! in headless Chromium. The page must render without a console message
//! and show the failing case with its requirement, its errno and its state
//! timeline.
#![forbid(unsafe_code)]

#[path = "../../reports/tests/support/browser.rs"]
mod browser;

use std::process::Command;

#[test]
fn report_of_a_failing_run_renders_in_chromium() {
    let Some(chromium) = browser::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let status = Command::new(env!("CARGO_BIN_EXE_vfio-migtest"))
        .args([
            "run",
            "--device",
            "sim",
            "--device",
            "sim:fault=enomsg-in-stop-copy",
        ])
        .arg("--out")
        .arg(&out)
        .args(["--format", "terse", "stop-copy-read-to-end"])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    let page = out.join("report.html");

    let loaded = browser::load(&chromium, &page, dir.path()).unwrap();
    assert_eq!(loaded.console, Vec::<String>::new());
    assert!(
        loaded.dom.contains("data-script=\"ran\""),
        "the inline script did not finish"
    );
    for needle in ["V2-SAVE-02", "ENOMSG", "stop-copy-read-to-end", "<svg"] {
        assert!(loaded.dom.contains(needle), "the page lacks {needle}");
    }

    let png = dir.path().join("report.png");
    let console = browser::screenshot(&chromium, &page, dir.path(), &png, (1280, 1600)).unwrap();
    assert_eq!(console, Vec::<String>::new());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(browser::png_size(&bytes), Some((1280, 1600)));
    assert!(
        bytes.len() > 40_000,
        "the screenshot looks blank ({} bytes)",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("VFIO_MIGTEST_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
}
