//! What a child process tells the runner: one JSON object per stdout line,
//! flushed as it happens, so a child killed mid-case still leaves every
//! line up to the step it was stuck in.

use std::io::{self, Write};

use results::Event;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use suite::device::DeviceDescription;
use suite::exec::DeviceCaps;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildLine {
    /// An event of the case (`__case`).
    Event(Event),
    /// The device as found (`__probe`); probing never changes its state.
    Probed {
        description: DeviceDescription,
        caps: DeviceCaps,
    },
    /// A device could not be opened; the message says what to do.
    OpenFailed { role: String, message: String },
    /// The device was reset after the case (`__case`, `__restore`); `error`
    /// says why it is not RUNNING again.
    Restored { role: String, error: Option<String> },
}

impl ChildLine {
    pub fn parse(line: &str) -> Result<ChildLine, String> {
        parse_line(line)
    }

    /// Writes the line to stdout and flushes it.
    pub fn emit(&self) -> io::Result<()> {
        emit_line(self)
    }
}

/// Parses one line of a child's stdout (of any child line type).
pub fn parse_line<T: DeserializeOwned>(line: &str) -> Result<T, String> {
    serde_json::from_str(line).map_err(|e| {
        let mut shown: String = line.chars().take(200).collect();
        if shown.len() < line.len() {
            shown.push_str("...");
        }
        format!("unreadable line from the child process ({e}): {shown}")
    })
}

/// Writes one line to stdout as JSON and flushes it.
pub fn emit_line<T: Serialize>(line: &T) -> io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(io::Error::other)?;
    text.push('\n');
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let lines = [
            ChildLine::Event(Event::Note { text: "n".into() }),
            ChildLine::OpenFailed {
                role: "device".into(),
                message: "0000:3b:00.1: group 12 is busy".into(),
            },
            ChildLine::Restored {
                role: "destination".into(),
                error: Some("VFIO_DEVICE_RESET failed with EIO".into()),
            },
        ];
        for line in lines {
            let text = serde_json::to_string(&line).unwrap();
            assert!(!text.contains('\n'));
            assert_eq!(ChildLine::parse(&text).unwrap(), line);
        }
        assert_eq!(
            serde_json::to_string(&ChildLine::Event(Event::CaseFinished { duration_ns: 1 }))
                .unwrap(),
            r#"{"event":{"event":"case_finished","duration_ns":1}}"#
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_line() {
        let e = ChildLine::parse("thread 'main' panicked").unwrap_err();
        assert!(e.contains("thread 'main' panicked"), "{e}");
    }
}
