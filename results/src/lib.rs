//! The vocabulary every vfio-migtest crate shares: the events a case emits
//! while it runs, the results model that `results.json` holds, requirement
//! strengths and source locations. No I/O: `suite` emits into it, `reports`
//! renders it, the runner moves it between processes and files.
#![forbid(unsafe_code)]

pub mod event;
pub mod model;

pub use event::{case_outcome, CaseFold, Event, MAX_LOGGED_STEPS};
pub use model::*;
