//! Scenario files: the YAML that describes a case, loaded with
//! `file:line:column` errors and validated against the model before any
//! device is touched.
//!
//! A scenario is a list of steps. Each step is one operation at the level of
//! the uAPI (`set_state: STOP_COPY`, `read: { chunk: 7, until: eof }`), run on
//! a device role (`on: destination`), with an optional `expect` that ties
//! what must be observed to requirement IDs. Operations also check what the
//! model implies on their own (a SET is checked against
//! `vfio_mig_get_next_state()`); those built-in checks cite their IDs too.
#![forbid(unsafe_code)]

mod args;
mod expect;
mod ops;
mod raw;
mod validate;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
pub use results::{SourceLoc, Strength};

use crate::size::parse_size;
pub use ops::{Op, OpInfo, Scope, OPERATIONS};
pub use validate::MAX_TIMEOUT;

/// Which protocol a scenario targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    V1,
    V2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V1 => "v1",
            Protocol::V2 => "v2",
        }
    }
}

/// What a device (and its peers) must offer for a scenario to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requires {
    /// `VFIO_MIGRATION_*` bits needed besides STOP_COPY.
    pub flags: u64,
    /// A second, compatible device to resume into.
    pub destination: bool,
    /// A device of another type, whose streams must be refused.
    pub incompatible: bool,
    /// DMA logging (features 6-8).
    pub logging: bool,
    /// The device declares DMA writes it makes after each START
    /// ([`crate::device::DeviceDescription::dma_writes`]), and the case
    /// keeps it from running while it logs: every REPORT then holds exactly
    /// those writes (V2-LOG-09).
    pub dma_writes: bool,
    /// Two saves of an unchanged device give the same bytes.
    pub deterministic_stream: bool,
    /// MIG_PRECOPY_INFOv2 (feature 12).
    pub precopy_info_v2: bool,
    /// A device without migration v2 (for the ENOTTY rules of V2-FEAT-08).
    pub without_v2: bool,
}

/// The device a step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The device under test (the source of two-device cases).
    Device,
    /// A compatible device that receives the source's stream.
    Destination,
    /// A device of another type.
    Incompatible,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Device, Role::Destination, Role::Incompatible];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Destination => "destination",
            Role::Incompatible => "incompatible",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A migration state as a step names it: a value (named or raw, so values
/// >= 8 can be sent) or a `for_each` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRef {
    Value(u32),
    Var(String),
}

/// The set of states a `for_each` variable ranges over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateSet {
    /// Every state SET may name on this device.
    Supported,
    /// All eight states, supported or not.
    All,
    /// Values SET must refuse on this device: ERROR, unsupported, 8, 99.
    Invalid,
    List(Vec<u32>),
}

/// What the threads of a `race` step do (see the README's reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaceKind {
    /// Two threads read one saving fd to its end at once.
    Readers,
    /// Two threads write one stream to a resuming fd, taking turns.
    Writers,
    /// A thread reads while the main thread SETs the state.
    SetDuringRead,
    /// A thread reads while the main thread resets the device.
    ResetDuringRead,
    /// A thread writes while the main thread resets the device.
    ResetDuringWrite,
    /// A thread reads while the main thread closes the device fd.
    CloseDuringRead,
    /// `vfio_multifd_save_complete_precopy_thread()`: a thread reads the
    /// STOP_COPY stream while the main thread queries MIG_DATA_SIZE.
    MultifdSave,
    /// `vfio_load_bufs_thread()`: a thread writes the stream while the
    /// main thread GETs the state.
    MultifdLoad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadUntil {
    /// read() returns 0 (STOP_COPY end of stream).
    Eof,
    /// read() fails with ENOMSG or returns 0 (PRE_COPY temporary end).
    EndOfPrecopy,
    /// A single read().
    Once,
}

/// How a stream is altered before it is written (to test rejection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mutation {
    /// Drop this many bytes from the end.
    pub truncate: u64,
    /// Flip every bit of the byte at each offset.
    pub corrupt: Vec<u64>,
    /// Append this many bytes past the end of the stream.
    pub extra: u64,
}

impl Mutation {
    pub fn is_none(&self) -> bool {
        self.truncate == 0 && self.corrupt.is_empty() && self.extra == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSpec {
    pub from: String,
    pub chunk: u64,
    pub mutation: Mutation,
}

/// v1 region field access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldAccess {
    pub field: String,
    /// Bytes to access (default: natural width).
    pub width: u32,
    /// Added to the field offset (a misaligned access when not 0).
    pub skew: u32,
}

/// What a `write_field` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Number(u64),
    /// `device_state` bits by name (`[saving, running]`), keeping reserved
    /// bits as read (read-modify-write).
    StateBits(u32),
    /// A variable captured by `read_field ... into`.
    Var(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V1Chunking {
    /// Replay the chunk sizes the save saw (V1-RESUME-02).
    Source,
    Fixed(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    pub fn holds(self, lhs: u64, rhs: u64) -> bool {
        match self {
            CmpOp::Eq => lhs == rhs,
            CmpOp::Ne => lhs != rhs,
            CmpOp::Lt => lhs < rhs,
            CmpOp::Le => lhs <= rhs,
            CmpOp::Gt => lhs > rhs,
            CmpOp::Ge => lhs >= rhs,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Num(u64),
    /// `stop_copy_length`, `initial_bytes`, `dirty_bytes`, or a variable
    /// captured with `into`.
    Var(String),
    /// `len(BUFFER)`.
    Len(String),
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Num(n) => write!(f, "{n}"),
            Operand::Var(v) => f.write_str(v),
            Operand::Len(b) => write!(f, "len({b})"),
        }
    }
}

/// `">0"`, `"<= stop_copy_length"`, `0` (equality).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmp {
    pub op: CmpOp,
    pub rhs: Operand,
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.rhs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultExpect {
    Ok,
    /// Fails with one of these errnos.
    Errno(Vec<Errno>),
    /// Fails somehow: a write() error or a failing SET (resume), or any errno.
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdExpect {
    New,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndExpect {
    Eof,
    Enomsg,
}

/// What a step's `expect` asks for, tied to requirement IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub ids: Vec<String>,
    pub strength: Strength,
    pub loc: SourceLoc,
    pub result: Option<ResultExpect>,
    pub state: Option<StateRef>,
    pub data_fd: Option<FdExpect>,
    pub bytes: Option<Cmp>,
    pub initial_bytes: Option<Cmp>,
    pub dirty_bytes: Option<Cmp>,
    pub stop_copy_length: Option<Cmp>,
    pub flags: Option<Cmp>,
    pub value: Option<Cmp>,
    pub end: Option<EndExpect>,
    pub equal: Option<bool>,
    pub readable: Option<bool>,
    pub clean: Option<bool>,
    pub unchanged: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub op: Op,
    pub expect: Option<Expect>,
    pub role: Role,
    /// A name for the step's checks (`as:`), stable across edits elsewhere.
    pub label: Option<String>,
    pub loc: SourceLoc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Slug-safe and unique in a catalogue.
    pub name: String,
    pub about: String,
    /// As shown in reports (`v2/fsm-every-arc.yaml`).
    pub file: String,
    pub protocol: Protocol,
    pub requires: Requires,
    pub dangerous: bool,
    pub timeout: Option<Duration>,
    pub steps: Vec<Step>,
}

impl Scenario {
    /// Every requirement ID the scenario can check: its `expect` IDs and
    /// the built-in checks of its operations.
    pub fn requirement_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        collect_ids(&self.steps, self.protocol, &mut ids);
        ids.sort();
        ids.dedup();
        ids
    }
}

fn collect_ids(steps: &[Step], protocol: Protocol, ids: &mut Vec<String>) {
    for step in steps {
        if let Some(e) = &step.expect {
            ids.extend(e.ids.iter().cloned());
        }
        ids.extend(
            step.op
                .info()
                .builtin(protocol)
                .iter()
                .map(|s| s.to_string()),
        );
        match &step.op {
            Op::Repeat { steps, .. } | Op::ForEach { steps, .. } => {
                collect_ids(steps, protocol, ids)
            }
            _ => {}
        }
    }
}

/// A scenario file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct LoadError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
    /// The offending lines with a marker, when the parser provided them.
    pub snippet: Option<String>,
}

impl LoadError {
    /// An error about a file as a whole (it cannot be read, it is too big).
    pub fn whole_file(file: &str, message: String) -> LoadError {
        LoadError {
            file: file.to_string(),
            line: 1,
            column: 1,
            message,
            snippet: None,
        }
    }

    /// The error with its source snippet, as printed to a terminal.
    pub fn detailed(&self) -> String {
        match &self.snippet {
            Some(s) => format!("{self}\n{s}"),
            None => self.to_string(),
        }
    }
}

/// Loads and validates one scenario from text; `file` names it in errors
/// and reports.
pub fn load_str(text: &str, file: &str) -> Result<Scenario, LoadError> {
    let raw: raw::RawScenario = parse_yaml(text, file)?;
    validate::scenario(raw, file)
}

/// Parses the text of a small YAML file of the suite (a scenario, an
/// expectations file) into `T`, with `file:line:column` errors. Files over
/// [`MAX_FILE_SIZE`], alias bombs and deep nesting are refused.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, LoadError> {
    if text.len() > MAX_FILE_SIZE {
        return Err(too_large(file, text.len() as u64));
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 64,
            max_nodes: 100_000,
            max_aliases: 1_000,
            max_documents: 1,
        },
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        LoadError {
            file: file.to_string(),
            line,
            column,
            message: first_message(&e.to_string()),
            snippet: snippet_of(&e.to_string()),
        }
    })
}

/// Scenario files larger than this are refused before parsing.
pub const MAX_FILE_SIZE: usize = 1 << 20;

/// Loads one scenario file; `display` is the name used in reports.
pub fn load_file(path: &Path, display: &str) -> Result<Scenario, LoadError> {
    load_str(&read_limited(path, display)?, display)
}

fn too_large(file: &str, size: u64) -> LoadError {
    LoadError::whole_file(
        file,
        format!("file is {size} bytes; the suite's YAML files are limited to {MAX_FILE_SIZE}"),
    )
}

/// Reads a scenario file, refusing one too large to be a scenario.
fn read_limited(path: &Path, display: &str) -> Result<String, LoadError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| LoadError::whole_file(display, format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_SIZE as u64 {
        return Err(too_large(display, meta.len()));
    }
    std::fs::read_to_string(path)
        .map_err(|e| LoadError::whole_file(display, format!("cannot read: {e}")))
}

/// Loads every scenario of a set of (name, text) files and checks that case
/// names are unique. All errors are returned, not just the first.
pub fn load_all<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Scenario>, Vec<LoadError>> {
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        match load_str(text, file) {
            Ok(s) => {
                if let Some(other) = scenarios.iter().find(|o| o.name == s.name) {
                    errors.push(LoadError::whole_file(
                        file,
                        format!("case name `{}` is already used by {}", s.name, other.file),
                    ));
                } else {
                    scenarios.push(s);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(scenarios)
    } else {
        Err(errors)
    }
}

/// Reads every `*.yaml` under `dir` (recursively, sorted) as (display
/// name, text); display names are relative to `dir`.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let mut files = Vec::new();
    walk_yaml(dir, dir, &mut files).map_err(|e| {
        LoadError::whole_file(
            &dir.display().to_string(),
            format!("cannot read the cases directory: {e}"),
        )
    })?;
    files.sort();
    files
        .into_iter()
        .map(|(display, path)| Ok((display.clone(), read_limited(&path, &display)?)))
        .collect()
}

fn walk_yaml(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::path::PathBuf)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk_yaml(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let display = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push((display, path));
        }
    }
    Ok(())
}

/// serde-saphyr renders `error: line L column C: message` followed by a
/// snippet; keep the message and the snippet apart.
fn first_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("line ") => rest.to_string(),
        _ => first.to_string(),
    }
}

fn snippet_of(rendered: &str) -> Option<String> {
    let rest: Vec<&str> = rendered.lines().skip(1).collect();
    (!rest.is_empty()).then(|| rest.join("\n"))
}

#[cfg(test)]
mod tests;
