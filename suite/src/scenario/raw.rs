//! The scenario file as written: serde types with source spans. Validation
//! into executable steps happens in `validate.rs`.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::ops::{Op, NAMES};

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub name: S<String>,
    pub about: S<String>,
    #[serde(default)]
    pub requires: Option<S<RawRequires>>,
    #[serde(default)]
    pub dangerous: bool,
    #[serde(default)]
    pub timeout: Option<S<String>>,
    pub steps: S<Vec<S<RawStep>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequires {
    #[serde(default)]
    pub protocol: Option<S<String>>,
    #[serde(default)]
    pub flags: Vec<S<String>>,
    #[serde(default)]
    pub devices: Option<S<u32>>,
    #[serde(default)]
    pub incompatible: bool,
    #[serde(default)]
    pub logging: bool,
    #[serde(default)]
    pub dma_writes: bool,
    #[serde(default)]
    pub deterministic_stream: bool,
    #[serde(default)]
    pub precopy_info_v2: bool,
    #[serde(default)]
    pub without_v2: bool,
}

/// A size: a plain byte count or a string with a unit (`7`, `4KiB`, `1MiB`).
#[derive(Debug, Clone)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, like 4096 or 1MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                u64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A number or a name: states (`STOP_COPY`, `99`, `$state`), errnos,
/// features, comparisons (`">0"`, `"<= stop_copy_length"`).
#[derive(Debug, Clone)]
pub enum RawScalar {
    Int(i128),
    Text(String),
    Bool,
}

impl<'de> Deserialize<'de> for RawScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawScalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawScalar, E> {
                Ok(RawScalar::Int(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawScalar, E> {
                Ok(RawScalar::Int(v.into()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawScalar, E> {
                Ok(RawScalar::Bool)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawScalar, E> {
                Ok(RawScalar::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One value or a list of them (`errno: EINVAL` or `errno: [EINVAL, ENOTTY]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    #[serde(default)]
    pub ids: Vec<S<String>>,
    #[serde(default)]
    pub strength: Option<S<String>>,
    #[serde(default)]
    pub ok: Option<S<bool>>,
    #[serde(default)]
    pub errno: Option<S<OneOrMany<String>>>,
    #[serde(default)]
    pub rejected: Option<S<bool>>,
    #[serde(default)]
    pub state: Option<S<RawScalar>>,
    #[serde(default)]
    pub data_fd: Option<S<String>>,
    #[serde(default)]
    pub bytes: Option<S<RawScalar>>,
    #[serde(default)]
    pub initial_bytes: Option<S<RawScalar>>,
    #[serde(default)]
    pub dirty_bytes: Option<S<RawScalar>>,
    #[serde(default)]
    pub stop_copy_length: Option<S<RawScalar>>,
    #[serde(default)]
    pub flags: Option<S<RawScalar>>,
    #[serde(default)]
    pub value: Option<S<RawScalar>>,
    #[serde(default)]
    pub end: Option<S<String>>,
    #[serde(default)]
    pub equal: Option<S<bool>>,
    #[serde(default)]
    pub readable: Option<S<bool>>,
    #[serde(default)]
    pub clean: Option<S<bool>>,
    #[serde(default)]
    pub unchanged: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeature {
    pub feature: S<RawScalar>,
    #[serde(default)]
    pub ops: Vec<S<String>>,
    #[serde(default)]
    pub argsz: Option<S<u32>>,
    /// Extra bits ORed into `flags` (unknown flag bits, for V2-FEAT-02).
    #[serde(default)]
    pub extra_flags: Option<S<u32>>,
    /// Payload length in bytes (zero-filled) when no typed payload applies.
    #[serde(default)]
    pub payload: Option<S<RawSize>>,
    /// For MIG_DEVICE_STATE SET: the state to request.
    #[serde(default)]
    pub state: Option<S<RawScalar>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrecopyInfo {
    #[serde(default)]
    pub argsz: Option<S<u32>>,
    #[serde(default)]
    pub flags: Option<S<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRead {
    #[serde(default)]
    pub into: Option<S<String>>,
    #[serde(default)]
    pub chunk: Option<S<RawSize>>,
    #[serde(default)]
    pub until: Option<S<String>>,
    #[serde(default)]
    pub max: Option<S<RawSize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQemuPrecopy {
    #[serde(default)]
    pub into: Option<S<String>>,
    #[serde(default)]
    pub rounds: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWrite {
    pub from: S<String>,
    #[serde(default)]
    pub chunk: Option<S<RawSize>>,
    #[serde(default)]
    pub truncate: Option<S<RawSize>>,
    #[serde(default)]
    pub corrupt: Vec<S<RawSize>>,
    #[serde(default)]
    pub extra: Option<S<RawSize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPositioned {
    #[serde(default)]
    pub offset: Option<S<RawSize>>,
    #[serde(default)]
    pub len: Option<S<RawSize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    #[serde(default)]
    pub events: Vec<S<String>>,
    #[serde(default)]
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataIoctl {
    pub request: S<RawScalar>,
    #[serde(default)]
    pub argsz: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSave {
    pub into: S<String>,
    #[serde(default)]
    pub chunk: Option<S<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipe {
    pub to: S<String>,
    #[serde(default)]
    pub chunk: Option<S<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRace {
    pub kind: S<String>,
    /// The stream the workers write, or compare their reads with.
    #[serde(default)]
    pub from: Option<S<String>>,
    #[serde(default)]
    pub into: Option<S<String>>,
    #[serde(default)]
    pub to: Option<S<RawScalar>>,
    #[serde(default)]
    pub chunk: Option<S<RawSize>>,
    #[serde(default)]
    pub within: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    pub a: S<String>,
    pub b: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepeat {
    pub times: S<u32>,
    pub steps: S<Vec<S<RawStep>>>,
}

/// `for_each: { state: supported, target: all, steps: [...] }`: every key
/// but `steps` names a variable and the set of states it takes.
#[derive(Debug)]
pub struct RawForEach {
    pub vars: Vec<(S<String>, S<OneOrMany<RawScalar>>)>,
    pub steps: S<Vec<S<RawStep>>>,
}

impl<'de> Deserialize<'de> for RawForEach {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawForEach;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("variables with their state sets, and `steps`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawForEach, A::Error> {
                let mut vars = Vec::new();
                let mut steps = None;
                while let Some(key) = map.next_key::<S<String>>()? {
                    if key.value == "steps" {
                        steps = Some(map.next_value()?);
                    } else {
                        vars.push((key, map.next_value()?));
                    }
                }
                let steps = steps.ok_or_else(|| de::Error::missing_field("steps"))?;
                Ok(RawForEach { vars, steps })
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWalk {
    pub steps: S<u64>,
    #[serde(default)]
    pub seed: Option<S<u64>>,
    /// Also request values the device must refuse (ERROR, unsupported, >= 8).
    #[serde(default)]
    pub invalid: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoggingStart {
    #[serde(default)]
    pub page_size: Option<S<RawSize>>,
    #[serde(default)]
    pub ranges: Vec<S<(RawSize, RawSize)>>,
    /// Overrides `num_ranges` (more than the ranges given, for E2BIG).
    #[serde(default)]
    pub num_ranges: Option<S<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoggingReport {
    #[serde(default)]
    pub iova: Option<S<RawSize>>,
    #[serde(default)]
    pub length: Option<S<RawSize>>,
    #[serde(default)]
    pub page_size: Option<S<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReadField {
    pub field: S<String>,
    #[serde(default)]
    pub into: Option<S<String>>,
    /// Access width in bytes (default: the field's natural width).
    #[serde(default)]
    pub width: Option<S<u32>>,
    /// Byte offset added to the field's offset (misaligned accesses).
    #[serde(default)]
    pub skew: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWriteField {
    pub field: S<String>,
    pub value: S<OneOrMany<RawScalar>>,
    #[serde(default)]
    pub width: Option<S<u32>>,
    #[serde(default)]
    pub skew: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawV1Save {
    pub into: S<String>,
    #[serde(default)]
    pub max_iterations: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawV1Resume {
    pub from: S<String>,
    /// `source` (the chunk sizes the save saw) or a size.
    #[serde(default)]
    pub chunk: Option<S<RawScalar>>,
    #[serde(default)]
    pub truncate: Option<S<RawSize>>,
    #[serde(default)]
    pub corrupt: Vec<S<RawSize>>,
    /// The state to leave RESUMING for: `stop` (default) or `running`.
    #[serde(default)]
    pub then: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawV1Freeze {
    pub from: S<String>,
    #[serde(default)]
    pub touches: Option<S<u32>>,
}

/// The operation of one step, keyed by its name in the file.
#[derive(Debug)]
pub enum RawOp {
    /// An operation without arguments.
    Plain(Op),
    SetState(S<RawScalar>),
    Feature(RawFeature),
    PrecopyInfo(RawPrecopyInfo),
    Read(RawRead),
    QemuPrecopy(RawQemuPrecopy),
    QemuStopCopy(RawQemuPrecopy),
    Pread(RawPositioned),
    Write(RawWrite),
    Pwrite(RawPositioned),
    Poll(RawPoll),
    DataIoctl(RawDataIoctl),
    Save(RawSave),
    Resume(RawWrite),
    Pipe(RawPipe),
    Compare(RawCompare),
    Race(RawRace),
    Sleep(S<String>),
    Repeat(RawRepeat),
    ForEach(RawForEach),
    Walk(RawWalk),
    LoggingStart(RawLoggingStart),
    LoggingReport(RawLoggingReport),
    ReadField(RawReadField),
    WriteField(RawWriteField),
    V1Save(RawV1Save),
    V1Resume(RawV1Resume),
    V1Freeze(RawV1Freeze),
}

#[derive(Debug)]
pub struct RawStep {
    pub op: S<RawOp>,
    pub expect: Option<S<RawExpect>>,
    pub on: Option<S<String>>,
    pub label: Option<S<String>>,
}

/// An operation that takes no arguments may be written `reset:` or `reset: {}`.
#[derive(Debug)]
struct NoArgs;

impl<'de> Deserialize<'de> for NoArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NoArgs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("no arguments (write the operation name followed by a colon)")
            }
            fn visit_unit<E: de::Error>(self) -> Result<NoArgs, E> {
                Ok(NoArgs)
            }
            fn visit_none<E: de::Error>(self) -> Result<NoArgs, E> {
                Ok(NoArgs)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoArgs, A::Error> {
                match map.next_key::<String>()? {
                    None => Ok(NoArgs),
                    Some(k) => Err(de::Error::custom(format!(
                        "this operation takes no arguments, found `{k}`"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStep;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a step: one operation (like `set_state: STOP`) with optional `expect`, `on` and `as`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStep, A::Error> {
                let mut op: Option<S<RawOp>> = None;
                let mut expect = None;
                let mut on = None;
                let mut label = None;
                let mut first_name = String::new();
                while let Some(key) = map.next_key::<S<String>>()? {
                    let name = key.value.as_str();
                    match name {
                        "expect" => expect = Some(map.next_value()?),
                        "on" => on = Some(map.next_value()?),
                        "as" => label = Some(map.next_value()?),
                        _ => {
                            if let Some(first) = &op {
                                let _: IgnoredAny = map.next_value()?;
                                return Err(de::Error::custom(format!(
                                    "a step has exactly one operation; `{name}` (line {}) follows `{}` (line {})",
                                    key.referenced.line(),
                                    first_name,
                                    first.referenced.line()
                                )));
                            }
                            first_name = name.to_string();
                            let parsed = parse_op(name, &mut map)?;
                            op = Some(S {
                                value: parsed,
                                referenced: key.referenced,
                                defined: key.defined,
                            });
                        }
                    }
                }
                let op = op.ok_or_else(|| {
                    de::Error::custom(format!(
                        "a step needs an operation, one of: {}",
                        NAMES.join(", ")
                    ))
                })?;
                Ok(RawStep {
                    op,
                    expect,
                    on,
                    label,
                })
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_op<'de, A: MapAccess<'de>>(name: &str, map: &mut A) -> Result<RawOp, A::Error> {
    if let Some(op) = Op::without_args(name) {
        map.next_value::<NoArgs>()?;
        return Ok(RawOp::Plain(op));
    }
    Ok(match name {
        "set_state" => RawOp::SetState(map.next_value()?),
        "feature" => RawOp::Feature(map.next_value()?),
        "precopy_info" => RawOp::PrecopyInfo(
            map.next_value::<Option<RawPrecopyInfo>>()?
                .unwrap_or_default(),
        ),
        "read" => RawOp::Read(map.next_value::<Option<RawRead>>()?.unwrap_or_default()),
        "qemu_precopy" => RawOp::QemuPrecopy(
            map.next_value::<Option<RawQemuPrecopy>>()?
                .unwrap_or_default(),
        ),
        "qemu_stop_copy" => RawOp::QemuStopCopy(
            map.next_value::<Option<RawQemuPrecopy>>()?
                .unwrap_or_default(),
        ),
        "pread" => RawOp::Pread(
            map.next_value::<Option<RawPositioned>>()?
                .unwrap_or_default(),
        ),
        "write" => RawOp::Write(map.next_value()?),
        "pwrite" => RawOp::Pwrite(
            map.next_value::<Option<RawPositioned>>()?
                .unwrap_or_default(),
        ),
        "poll" => RawOp::Poll(map.next_value::<Option<RawPoll>>()?.unwrap_or_default()),
        "data_ioctl" => RawOp::DataIoctl(map.next_value()?),
        "save" => RawOp::Save(map.next_value()?),
        "resume" => RawOp::Resume(map.next_value()?),
        "pipe" => RawOp::Pipe(map.next_value()?),
        "compare" => RawOp::Compare(map.next_value()?),
        "race" => RawOp::Race(map.next_value()?),
        "sleep" => RawOp::Sleep(map.next_value()?),
        "repeat" => RawOp::Repeat(map.next_value()?),
        "for_each" => RawOp::ForEach(map.next_value()?),
        "walk" => RawOp::Walk(map.next_value()?),
        "logging_start" => RawOp::LoggingStart(
            map.next_value::<Option<RawLoggingStart>>()?
                .unwrap_or_default(),
        ),
        "logging_report" => RawOp::LoggingReport(
            map.next_value::<Option<RawLoggingReport>>()?
                .unwrap_or_default(),
        ),
        "read_field" => RawOp::ReadField(map.next_value()?),
        "write_field" => RawOp::WriteField(map.next_value()?),
        "v1_save" => RawOp::V1Save(map.next_value()?),
        "v1_resume" => RawOp::V1Resume(map.next_value()?),
        "v1_freeze" => RawOp::V1Freeze(map.next_value()?),
        other => return Err(de::Error::unknown_field(other, &NAMES)),
    })
}
