//! The results model of vfio-migtest and its renderers: `results.json`,
//! KTAP, JUnit XML, a self-contained HTML report and a terminal summary.
//! Renderers are pure functions of [`model::RunResults`].
#![forbid(unsafe_code)]

pub mod event;
pub mod model;
pub mod stats;
pub mod summary;

pub use event::{case_outcome, CaseFold, Event};
pub use model::*;
