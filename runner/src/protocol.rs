//! What a child process (a case, a probe, a restore, a save or a resume)
//! tells the runner: one JSON object per stdout line, flushed as it
//! happens, so a child killed mid-case still leaves every line up to the
//! step it was stuck in.

use std::io::{self, Write};

use results::Event;
use serde::{Deserialize, Serialize};
use suite::device::DeviceDescription;
use suite::exec::DeviceCaps;
use suite::migrate::live::LiveSummary;
use suite::migrate::{Failure, ResumeSummary, SaveSummary};

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
    OpenFailed {
        role: String,
        message: String,
    },
    /// The device was reset after the case (`__case`, `__restore`) or after
    /// a failed save or resume; `error` says why it is not RUNNING again.
    Restored {
        role: String,
        error: Option<String>,
    },
    /// What a save or resume does now (`__save`, `__resume`); if it never
    /// reports again, it is stuck there.
    Doing(String),
    /// The temporary file a save writes before renaming it.
    Temp(String),
    /// Something the user should know that does not stop the command.
    Note(String),
    Saved(SaveSummary),
    Resumed(ResumeSummary),
    /// `__receive` listens on this address (the port resolved).
    Listening(String),
    /// One side of a live migration finished (`__migrate`, `__receive`).
    Migrated(LiveSummary),
    /// A save or resume failed; the kind decides the exit code.
    Failed {
        kind: Failure,
        message: String,
    },
    /// The child's peak resident memory (VmHWM), in KiB.
    PeakRss(u64),
}

impl ChildLine {
    /// Parses one line of a child's stdout.
    pub fn parse(line: &str) -> Result<ChildLine, String> {
        serde_json::from_str(line).map_err(|e| {
            let mut shown: String = line.chars().take(200).collect();
            if shown.len() < line.len() {
                shown.push_str("...");
            }
            format!("unreadable line from the child process ({e}): {shown}")
        })
    }

    /// Writes the line to stdout as JSON and flushes it.
    pub fn emit(&self) -> io::Result<()> {
        let mut text = serde_json::to_string(self).map_err(io::Error::other)?;
        text.push('\n');
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
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
            ChildLine::Doing("SET STOP_COPY (from STOP)".into()),
            ChildLine::Failed {
                kind: Failure::Driver,
                message: "write() failed with EFAULT".into(),
            },
            ChildLine::PeakRss(9000),
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
