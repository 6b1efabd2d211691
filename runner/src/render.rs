//! The report files of a run, from the reports crate's renderers.

use results::RunResults;

/// Every report written at the end of a run, by file name.
pub fn files(results: &RunResults) -> Vec<(&'static str, String)> {
    vec![
        ("results.json", reports::write_json(results)),
        ("results.ktap", reports::ktap(results)),
        ("junit.xml", reports::junit(results)),
        ("report.html", reports::html(results)),
    ]
}
