//! Tests that need a program from outside the workspace (headless
//! Chromium, python3) never pass quietly without it. A missing program
//! fails the test when [`REQUIRE_ENV`] is set, as CI sets it; otherwise the
//! test stops early after a warning written straight to the terminal, past
//! the test harness's output capture, so `cargo test` shows it although
//! the test is reported `ok`.
//!
//! Shared by test crates: include it with
//! `#[path = "<path to>/reports/tests/support/tool.rs"] mod tool;`.
//! It uses only the standard library.

#![allow(dead_code)] // each including test uses part of it

use std::io::Write;

/// When set (CI sets it), a missing program fails the test needing it.
pub const REQUIRE_ENV: &str = "VFIO_MIGTEST_REQUIRE_TOOLS";

/// Whether the test may go on: `found` says whether `program` is there;
/// `install` says how to get it.
///
/// # Panics
/// When the program is missing and [`REQUIRE_ENV`] is set.
pub fn present(found: bool, program: &str, install: &str) -> bool {
    let required = std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty());
    // Not eprintln!: the harness would capture it and show nothing.
    check(found, program, install, required, &mut std::io::stderr())
}

/// [`present`] with the requirement given and the warning written to `out`.
pub fn check(
    found: bool,
    program: &str,
    install: &str,
    required: bool,
    out: &mut dyn Write,
) -> bool {
    if found {
        return true;
    }
    if required {
        panic!("{program} is missing and {REQUIRE_ENV} is set: {install}");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(
        out,
        "warning: NOT RUN: {test}: {program} is missing ({install}; \
         set {REQUIRE_ENV}=1 to make this a failure)"
    );
    false
}
