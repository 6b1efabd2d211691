//! The renderers of vfio-migtest's results: `results.json`, KTAP, JUnit
//! XML, a self-contained HTML report and a terminal summary. Each is a pure
//! function of a [`results::RunResults`].
#![forbid(unsafe_code)]

pub mod diff;
pub mod stats;
pub mod summary;

mod html;
mod json;
mod junit;
mod ktap;
mod terminal;

#[cfg(test)]
mod fixture;

pub use diff::{compare, comparison_text, Comparison, DEFAULT_THRESHOLD_PERCENT};
pub use html::{html, html_compared};
pub use json::{read_json, write_json, JsonError};
pub use junit::{junit, junit_compared};
pub use ktap::{exit_code, ktap};
pub use terminal::terminal_summary;

use results::DeviceResults;

/// The device's MIGRATION flags as `NAMES (0xN)`, or hex alone when the
/// results carry no names.
fn flags_text(device: &DeviceResults) -> Option<String> {
    let flags = device.migration_flags?;
    Some(match &device.migration_flag_names {
        Some(names) => format!("{names} ({flags:#x})"),
        None => format!("{flags:#x}"),
    })
}
