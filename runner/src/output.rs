//! Result files: the journal (`results.jsonl`, one line per finished case,
//! so a killed run leaves what it found) and the final reports, each
//! written atomically.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use results::{CaseResult, DeviceResults, RunMeta, RunResults, SCHEMA_VERSION};
use serde::{Deserialize, Serialize};

pub const JOURNAL: &str = "results.jsonl";

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalLine {
    /// First line: the run.
    Meta(RunMeta),
    /// A device, before its cases (its `cases` are empty here).
    Device(DeviceResults),
    /// A finished case, by the spec of its device.
    Case { device: String, result: CaseResult },
}

/// The journal of a run, appended to as cases finish.
pub struct Journal {
    file: Mutex<File>,
    path: PathBuf,
}

impl Journal {
    pub fn create(dir: &Path) -> Result<Journal> {
        let path = dir.join(JOURNAL);
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Journal {
            file: Mutex::new(file),
            path,
        })
    }

    /// Appends one line with a single write, so lines never interleave.
    pub fn append(&self, line: &JournalLine) -> Result<()> {
        let mut text = serde_json::to_string(line).context("serialising a journal line")?;
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

/// Rebuilds the results of a run from its journal. A last line cut short
/// by a kill is dropped.
pub fn read_journal(text: &str, name: &str) -> Result<RunResults> {
    let mut meta = None;
    let mut devices: Vec<DeviceResults> = Vec::new();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, line) in lines.iter().enumerate() {
        let parsed: JournalLine = match serde_json::from_str(line) {
            Ok(l) => l,
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => bail!("{name}:{}: not a journal line: {e}", i + 1),
        };
        match parsed {
            JournalLine::Meta(m) => meta = Some(m),
            JournalLine::Device(d) => match devices.iter_mut().find(|x| x.spec == d.spec) {
                Some(existing) => {
                    let cases = std::mem::take(&mut existing.cases);
                    *existing = DeviceResults { cases, ..d };
                }
                None => devices.push(d),
            },
            JournalLine::Case { device, result } => {
                match devices.iter_mut().find(|d| d.spec == device) {
                    Some(d) => d.cases.push(result),
                    None => devices.push(DeviceResults {
                        spec: device.clone(),
                        name: device,
                        cases: vec![result],
                        ..DeviceResults::default()
                    }),
                }
            }
        }
    }
    let Some(meta) = meta else {
        bail!("{name}: no run metadata line: not a vfio-migtest journal");
    };
    Ok(RunResults {
        schema: SCHEMA_VERSION,
        meta,
        requirements: suite::requirements::all().to_vec(),
        devices,
    })
}

/// Writes `contents` to `path` through a temporary file in the same
/// directory, synced before the rename: readers see the old file or the
/// whole new one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The temporary file `path` is written to before the rename: in the same
/// directory (a rename across file systems is not atomic), hidden, named
/// after this process.
pub fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{}: not a file name", path.display())))?;
    Ok(dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// A one-line file such as /proc/sys/kernel/osrelease, or `unknown`.
pub fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use results::Outcome;

    fn meta() -> RunMeta {
        RunMeta {
            tool_version: "0.1.0".into(),
            seed: 9,
            ..RunMeta::default()
        }
    }

    #[test]
    fn journal_rebuilds_the_run_and_drops_a_cut_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::create(dir.path()).unwrap();
        journal.append(&JournalLine::Meta(meta())).unwrap();
        journal
            .append(&JournalLine::Device(DeviceResults {
                spec: "sim".into(),
                name: "sim".into(),
                ..DeviceResults::default()
            }))
            .unwrap();
        for name in ["a", "b"] {
            let mut result = CaseResult::new(name, "v2/x.yaml", "v2");
            result.outcome = Outcome::Fail;
            journal
                .append(&JournalLine::Case {
                    device: "sim".into(),
                    result,
                })
                .unwrap();
        }
        let mut text = std::fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        assert_eq!(text.lines().count(), 4);
        text.push_str(r#"{"case":{"device":"sim","res"#);
        let run = read_journal(&text, "results.jsonl").unwrap();
        assert_eq!(run.meta.seed, 9);
        assert_eq!(run.devices.len(), 1);
        let names: Vec<&str> = run.devices[0]
            .cases
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(!run.requirements.is_empty());
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error() {
        let text = format!(
            "{}\nnot json\n{}\n",
            serde_json::to_string(&JournalLine::Meta(meta())).unwrap(),
            serde_json::to_string(&JournalLine::Meta(meta())).unwrap()
        );
        let e = read_journal(&text, "r.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("r.jsonl:2: not a journal line"), "{e}");
        let e = read_journal("", "r.jsonl").unwrap_err().to_string();
        assert!(e.contains("no run metadata"), "{e}");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["junit.xml"]);
        let missing = dir.path().join("no/such/dir/x");
        assert!(write_atomic(&missing, b"x").is_err());
    }
}
