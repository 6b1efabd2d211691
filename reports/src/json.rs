//! `results.json`: the run's results, from which every other report can be
//! rendered again later.

use serde::Deserialize;

use results::{RunResults, SCHEMA_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("invalid results json at line {line}, column {column}: {message}")]
    Invalid {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("results json has schema version {found}; this version of vfio-migtest reads version {SCHEMA_VERSION}")]
    Schema { found: u32 },
}

impl From<serde_json::Error> for JsonError {
    fn from(e: serde_json::Error) -> JsonError {
        // serde_json's own text repeats the position; keep only the cause.
        let text = e.to_string();
        let message = match text.rfind(" at line ") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        JsonError::Invalid {
            line: e.line(),
            column: e.column(),
            message,
        }
    }
}

/// The results as pretty-printed JSON, newline-terminated.
pub fn write_json(results: &RunResults) -> String {
    // The model has only string map keys and derived impls: nothing in it
    // can fail to serialise.
    let mut text =
        serde_json::to_string_pretty(results).expect("the results model always serialises");
    text.push('\n');
    text
}

/// Reads `results.json` text, checking its schema version first so an old
/// or newer file gets a clear message rather than a missing-field error.
pub fn read_json(text: &str) -> Result<RunResults, JsonError> {
    #[derive(Deserialize)]
    struct Version {
        schema: u32,
    }
    let version: Version = serde_json::from_str(text)?;
    if version.schema != SCHEMA_VERSION {
        return Err(JsonError::Schema {
            found: version.schema,
        });
    }
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::fixture;

    #[test]
    fn round_trips() {
        let results = fixture();
        let text = write_json(&results);
        assert!(text.ends_with("}\n"));
        assert_eq!(read_json(&text).unwrap(), results);
    }

    #[test]
    fn json_snapshot() {
        insta::assert_snapshot!(write_json(&fixture()));
    }

    #[test]
    fn wrong_schema_is_named() {
        let text = write_json(&fixture()).replacen("\"schema\": 1", "\"schema\": 7", 1);
        let err = read_json(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "results json has schema version 7; this version of vfio-migtest reads version 1"
        );
    }

    #[test]
    fn syntax_errors_give_the_position() {
        let err = read_json("{\n  \"schema\": 1,\n  \"meta\": ]\n}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid results json at line 3, column 11: expected value"
        );
        let err = read_json("{\"schema\": 1}").unwrap_err();
        assert!(err.to_string().contains("missing field `meta`"), "{err}");
    }
}
