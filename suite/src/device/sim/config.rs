//! The simulator's options, as written after `sim:` on the command line.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::faults::{catalogue, Fault};
use crate::model::MigrationFlags;
use crate::size::parse_size;

/// When a v1 device freezes its state after `_RUNNING` is cleared (the
/// October 2021 question; see V1-STATE-06).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// At the `device_state` write that clears `_RUNNING`.
    Clear,
    /// At the first `pending_bytes` read after that write.
    Pending,
}

/// The longest `type=` name; the stream header has room for this many bytes.
pub const MAX_TYPE_LEN: usize = 32;

/// Page sizes the simulator accepts (multiples of 8, for the stream layout).
const MIN_PAGE: u64 = 64;
const MAX_PAGE: u64 = 64 << 20;
/// Bitmaps over the pages are kept in memory: bound them.
const MAX_PAGES: u64 = 1 << 28;

/// The IOVAs written after each DMA_LOGGING_START unless `dma=` says
/// otherwise: bit 35 of word 0 and bit 16 of word 1 of a 4 KiB-page REPORT
/// of the range at 1 MiB (bits 2 and 5 at 64 KiB), the second one not page
/// aligned; none on a bit a REPORT's caller presets (0 or 63).
const DMA_WRITES: [u64; 2] = [0x12_3000, 0x15_0010];

/// Every option of the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    v1: bool,
    v2: bool,
    flags: MigrationFlags,
    state_size: u64,
    page_size: u64,
    precopy: Option<u64>,
    dirty: u32,
    reinit: Option<u32>,
    deterministic: bool,
    device_type: String,
    seed: u64,
    logging: bool,
    latency: Duration,
    chunk: u64,
    region: u64,
    freeze: Freeze,
    faults: Vec<Fault>,
    dma_writes: Vec<u64>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            v1: true,
            v2: true,
            flags: MigrationFlags::ALL,
            state_size: 64 << 10,
            page_size: 4 << 10,
            precopy: None,
            dirty: 0,
            reinit: None,
            deterministic: true,
            device_type: "sim-a".to_string(),
            seed: 0x5eed,
            logging: true,
            latency: Duration::ZERO,
            chunk: 16 << 10,
            region: 64 << 10,
            freeze: Freeze::Clear,
            faults: Vec::new(),
            dma_writes: DMA_WRITES.to_vec(),
        }
    }
}

const VALID_OPTIONS: &str = "v1, v2, v1+v2, flags=stop_copy[+p2p][+pre_copy], size=SIZE, \
page=SIZE, precopy=SIZE, dirty=N, reinit=N, deterministic=true|false, type=NAME, seed=N, \
logging=true|false, latency=DURATION, chunk=SIZE, region=SIZE, freeze=clear|pending, fault=NAME, dma=IOVA[+IOVA...]|none";

impl SimConfig {
    /// Parses comma-separated options; the error names the bad option and
    /// lists the valid ones.
    pub fn parse(options: &str) -> Result<SimConfig, String> {
        let mut config = SimConfig::default();
        let mut protocols: Option<(bool, bool)> = None;
        for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (option, None),
            };
            let bad = |why: &str| format!("simulator option `{option}`: {why}");
            match (key, value) {
                ("v1", None) => protocols = Some((true, false)),
                ("v2", None) => protocols = Some((false, true)),
                ("v1+v2" | "v2+v1", None) => protocols = Some((true, true)),
                ("flags", Some(v)) => config.flags = parse_flags(v).map_err(|e| bad(&e))?,
                ("size", Some(v)) => config.state_size = parse_size(v).map_err(|e| bad(&e))?,
                ("page", Some(v)) => config.page_size = parse_size(v).map_err(|e| bad(&e))?,
                ("precopy", Some(v)) => config.precopy = Some(parse_size(v).map_err(|e| bad(&e))?),
                ("dirty", Some(v)) => {
                    config.dirty = v.parse().map_err(|_| bad("expected a number of pages"))?
                }
                ("reinit", Some(v)) => match v.parse() {
                    Ok(n) if n > 0 => config.reinit = Some(n),
                    _ => return Err(bad("expected the number (from 1) of the precopy info query that re-initialises")),
                },
                ("deterministic", Some(v)) => {
                    config.deterministic = parse_bool(v).map_err(|e| bad(&e))?
                }
                ("type", Some(v)) => config.device_type = parse_type(v).map_err(|e| bad(&e))?,
                ("seed", Some(v)) => {
                    config.seed = parse_u64(v).ok_or_else(|| bad("expected a number"))?
                }
                ("logging", Some(v)) => config.logging = parse_bool(v).map_err(|e| bad(&e))?,
                ("latency", Some(v)) => {
                    config.latency =
                        humantime::parse_duration(v).map_err(|e| bad(&e.to_string()))?
                }
                ("chunk", Some(v)) => config.chunk = parse_size(v).map_err(|e| bad(&e))?,
                ("region", Some(v)) => config.region = parse_size(v).map_err(|e| bad(&e))?,
                ("freeze", Some("clear")) => config.freeze = Freeze::Clear,
                ("freeze", Some("pending")) => config.freeze = Freeze::Pending,
                ("freeze", Some(_)) => return Err(bad("expected `clear` or `pending`")),
                ("dma", Some("none")) => config.dma_writes.clear(),
                ("dma", Some(v)) => {
                    config.dma_writes.clear();
                    for iova in v.split('+').map(str::trim) {
                        let iova = parse_u64(iova)
                            .or_else(|| parse_size(iova).ok())
                            .ok_or_else(|| bad(&format!("`{iova}` is not an IOVA")))?;
                        config.dma_writes.push(iova);
                    }
                }
                ("fault", Some(v)) => {
                    for name in v.split('+').map(str::trim) {
                        let fault = Fault::from_name(name).ok_or_else(|| {
                            let names: Vec<&str> = catalogue().iter().map(|f| f.name).collect();
                            format!(
                                "unknown simulator fault `{name}`; valid faults: {}",
                                names.join(", ")
                            )
                        })?;
                        if !config.faults.contains(&fault) {
                            config.faults.push(fault);
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown simulator option `{option}`; valid options: {VALID_OPTIONS}"
                    ))
                }
            }
        }
        // Without `v1`/`v2` the simulator speaks both, like a device whose
        // driver kept the region next to the feature ioctls.
        (config.v1, config.v2) = match protocols {
            None => (true, true),
            Some((v1, v2)) => {
                if let Some(f) = config.faults.iter().find(|f| f.info().v1 && !v1) {
                    return Err(format!(
                        "simulator fault `{f}` needs the v1 protocol (add `v1` or `v1+v2`)"
                    ));
                }
                if let Some(f) = config.faults.iter().find(|f| !f.info().v1 && !v2) {
                    return Err(format!(
                        "simulator fault `{f}` needs the v2 protocol (add `v2` or `v1+v2`)"
                    ));
                }
                (v1, v2)
            }
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.page_size & 7 != 0 || !(MIN_PAGE..=MAX_PAGE).contains(&self.page_size) {
            return Err(format!(
                "simulator option `page={}`: the page size must be a multiple of 8 between {MIN_PAGE} and {MAX_PAGE} bytes",
                self.page_size
            ));
        }
        if self.state_size == 0 {
            return Err("simulator option `size=0`: the state needs at least one byte".into());
        }
        if self.state_size.div_ceil(self.page_size) > MAX_PAGES {
            return Err(format!(
                "simulator option `size={}`: more than {MAX_PAGES} pages; use a larger `page=`",
                self.state_size
            ));
        }
        if self.chunk == 0 || self.region == 0 {
            return Err(
                "simulator options `chunk=` and `region=` must be at least one byte".into(),
            );
        }
        Ok(())
    }

    /// Whether two saves of an unchanged device produce the same bytes.
    pub fn deterministic(&self) -> bool {
        self.deterministic
    }

    /// (v1, v2): which migration protocols the device speaks.
    pub fn protocols(&self) -> (bool, bool) {
        (self.v1, self.v2)
    }

    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// The `VFIO_DEVICE_FEATURE_MIGRATION` flags the device implements.
    pub fn flags(&self) -> MigrationFlags {
        self.flags
    }

    pub fn device_type(&self) -> &str {
        &self.device_type
    }

    pub fn state_size(&self) -> u64 {
        self.state_size
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Bytes of state offered as initial precopy data.
    pub fn precopy(&self) -> u64 {
        self.precopy.unwrap_or(self.state_size).min(self.state_size)
    }

    /// Pages the running device changes per operation.
    pub fn dirty(&self) -> u32 {
        self.dirty
    }

    /// The VFIO_MIG_GET_PRECOPY_INFO of a saving session in PRE_COPY at
    /// which the device gets new initial data (mlx5's firmware re-init).
    pub fn reinit(&self) -> Option<u32> {
        self.reinit
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn logging(&self) -> bool {
        self.logging
    }

    /// IOVAs the device DMA-writes once after each DMA_LOGGING_START.
    pub fn dma_writes(&self) -> &[u64] {
        &self.dma_writes
    }

    /// How long every SET of MIG_DEVICE_STATE sleeps.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// v1: the most bytes staged per iteration.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// v1: the size of the data section of the migration region.
    pub fn region(&self) -> u64 {
        self.region
    }

    pub fn freeze(&self) -> Freeze {
        self.freeze
    }
}

fn parse_flags(value: &str) -> Result<MigrationFlags, String> {
    let mut flags = 0;
    for name in value.split('+').map(str::trim) {
        flags |= match name {
            "stop_copy" => crate::uapi::VFIO_MIGRATION_STOP_COPY,
            "p2p" => crate::uapi::VFIO_MIGRATION_P2P,
            "pre_copy" => crate::uapi::VFIO_MIGRATION_PRE_COPY,
            _ => {
                return Err(format!(
                    "unknown flag `{name}`; valid: stop_copy, p2p, pre_copy"
                ))
            }
        };
    }
    let flags = MigrationFlags(flags);
    if flags.is_defined() {
        Ok(flags)
    } else {
        Err("stop_copy is required (stop_copy, stop_copy+p2p, stop_copy+pre_copy, stop_copy+p2p+pre_copy)".into())
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_u64(value: &str) -> Option<u64> {
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

fn parse_type(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TYPE_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "a device type is 1 to {MAX_TYPE_LEN} characters of letters, digits, `-`, `_`, `.`, `:`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = SimConfig::parse("").unwrap();
        assert_eq!(c, SimConfig::default());
        assert_eq!(c.protocols(), (true, true));
        assert_eq!(c.flags(), MigrationFlags::ALL);
        assert_eq!(
            (c.state_size(), c.page_size(), c.precopy()),
            (65536, 4096, 65536)
        );
        assert_eq!((c.chunk(), c.region()), (16384, 65536));
        assert!(c.deterministic() && c.logging() && c.faults().is_empty());
        assert_eq!(c.dma_writes(), DMA_WRITES);
        assert!(SimConfig::parse("dma=none")
            .unwrap()
            .dma_writes()
            .is_empty());
        assert_eq!(
            (c.device_type(), c.dirty(), c.freeze()),
            ("sim-a", 0, Freeze::Clear)
        );
    }

    #[test]
    fn every_option() {
        let c = SimConfig::parse(
            "v1+v2, flags=stop_copy+pre_copy,size=4GiB,page=64KiB,precopy=1MiB,dirty=3,reinit=2,\
             deterministic=false,type=sim-b,seed=0x10,logging=false,latency=5ms,chunk=1K,\
             region=8KiB,freeze=pending,fault=hang-read+v1-not-frozen,fault=hang-read,\
             dma=0x101000+1MiB",
        )
        .unwrap();
        assert_eq!(c.protocols(), (true, true));
        assert_eq!(c.flags(), MigrationFlags::PRE_COPY);
        assert_eq!(c.state_size(), 4 << 30);
        assert_eq!((c.page_size(), c.precopy(), c.dirty()), (65536, 1 << 20, 3));
        assert_eq!(c.reinit(), Some(2));
        assert!(!c.deterministic() && !c.logging());
        assert_eq!((c.device_type(), c.seed()), ("sim-b", 16));
        assert_eq!(c.latency(), Duration::from_millis(5));
        assert_eq!(
            (c.chunk(), c.region(), c.freeze()),
            (1024, 8192, Freeze::Pending)
        );
        assert_eq!(c.faults(), &[Fault::HangRead, Fault::V1NotFrozen]);
        assert_eq!(c.dma_writes(), &[0x10_1000, 1 << 20]);
        assert_eq!(SimConfig::parse("v1").unwrap().protocols(), (true, false));
        assert_eq!(SimConfig::parse("precopy=1GiB").unwrap().precopy(), 65536);
    }

    #[test]
    fn faults_need_their_protocol() {
        let c = SimConfig::parse("fault=v1-not-frozen").unwrap();
        assert_eq!(c.protocols(), (true, true));
        let c = SimConfig::parse("fault=v1-not-frozen,fault=hang-read").unwrap();
        assert_eq!(c.protocols(), (true, true));
        let err = SimConfig::parse("v2,fault=v1-not-frozen").unwrap_err();
        assert!(
            err.contains("`v1-not-frozen` needs the v1 protocol"),
            "{err}"
        );
        let err = SimConfig::parse("v1,fault=hang-read").unwrap_err();
        assert!(err.contains("`hang-read` needs the v2 protocol"), "{err}");
    }

    #[test]
    fn errors_name_the_option_and_the_valid_ones() {
        let err = SimConfig::parse("v2,colour=red").unwrap_err();
        assert!(
            err.contains("`colour=red`") && err.contains("freeze=clear|pending"),
            "{err}"
        );
        let err = SimConfig::parse("fault=nope").unwrap_err();
        assert!(
            err.contains("`nope`") && err.contains("enomsg-in-stop-copy"),
            "{err}"
        );
        for (bad, needle) in [
            ("size=12XB", "`size=12XB`"),
            ("size=0", "`size=0`"),
            ("page=100", "multiple of 8"),
            ("flags=p2p", "stop_copy is required"),
            ("flags=stop_copy+x", "unknown flag `x`"),
            ("type=a b", "`type=a b`"),
            ("dirty=-1", "`dirty=-1`"),
            ("reinit=0", "`reinit=0`"),
            ("latency=soon", "`latency=soon`"),
            ("freeze=never", "`clear` or `pending`"),
            ("size=1TiB,page=64", "more than"),
            ("chunk=0", "chunk="),
            ("logging=maybe", "true or false"),
            ("dma=0x10+here", "`here` is not an IOVA"),
        ] {
            let err = SimConfig::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
