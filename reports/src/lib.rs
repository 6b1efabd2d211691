//! The results model of vfio-migtest and its renderers: `results.json`,
//! KTAP, JUnit XML, a self-contained HTML report and a terminal summary.
//! Renderers are pure functions of [`model::RunResults`].
#![forbid(unsafe_code)]

// Lets the shared test fixture name this crate as `reports` both here and in
// the integration tests that include it.
#[cfg(test)]
extern crate self as reports;

pub mod event;
pub mod model;
pub mod stats;
pub mod summary;

mod html;
mod json;
mod junit;
mod ktap;
mod terminal;

#[cfg(test)]
mod fixture;

pub use event::{case_outcome, CaseFold, Event};
pub use html::html;
pub use json::{read_json, write_json, JsonError};
pub use junit::junit;
pub use ktap::{exit_code, ktap};
pub use model::*;
pub use terminal::terminal_summary;
