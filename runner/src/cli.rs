//! The command line.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use suite::device::DeviceSpec;
use suite::size::parse_size;

/// Conformance tests for Linux VFIO live-migration drivers.
///
/// With no subcommand, runs the suite (`run`); with no device, against the
/// built-in simulator.
#[derive(Debug, Parser)]
#[command(
    name = "vfio-migtest",
    version,
    args_conflicts_with_subcommands = true,
    after_help = TOP_EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

const TOP_EXAMPLES: &str = "\
Examples:
  vfio-migtest                           run every case on the built-in simulator
  vfio-migtest run --device 0000:3b:00.1 --destination 0000:3b:00.2
  vfio-migtest list                      the cases, with what each checks
  vfio-migtest report results.json --html report.html

Exit status: 0 pass, 1 a case failed (or passed against its expectations),
2 usage error, 4 nothing ran (no usable device). `vfio-migtest run --help`
explains the devices, expectations and output.";

const RUN_EXAMPLES: &str = "\
Examples:
  vfio-migtest run                                   the simulator, every case
  vfio-migtest run --device 0000:3b:00.1 --destination 0000:3b:00.2 \\
      --incompatible 0000:5e:00.1                    a PCI variant driver
  vfio-migtest run --device 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 \\
      --expect expectations/mtty.yaml                an mdev, known failures listed
  vfio-migtest run --device sim:fault=enomsg-in-stop-copy precopy
                                                     one case on a faulty simulator
  vfio-migtest run --format ktap --out /tmp/r > results.ktap
                                                     KTAP on stdout (kselftest)
  VFIO_MIGTEST_DEVICES=0000:3b:00.1 vfio-migtest run --list

Results: results.json, results.ktap, junit.xml and report.html in --out.
Exit status (kselftest): 0 pass, 1 fail, timeout, error or XPASS (a failure an
--expect file lists did not happen), 4 nothing ran; XFAIL does not fail.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scenarios on devices (the default).
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// List the scenarios: name, protocol, file and what each checks.
    List {
        /// Scenario directory instead of the built-in catalogue.
        #[arg(long, value_name = "DIR", env = "VFIO_MIGTEST_CASES")]
        cases: Option<PathBuf>,
    },
    /// Check scenario files without touching a device.
    Validate {
        /// Files or directories (default: the built-in catalogue).
        #[arg(value_name = "DIR|FILE")]
        paths: Vec<PathBuf>,
    },
    /// Render reports again from a run's results.
    Report {
        /// `results.json`, or the `results.jsonl` journal of a run that was killed.
        #[arg(value_name = "RESULTS")]
        results: PathBuf,
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        ktap: Option<PathBuf>,
        /// Write `results.json` (useful to turn a journal into one).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Apply these expectations instead of the run's (repeatable).
        #[arg(long = "expect", value_name = "FILE")]
        expect: Vec<PathBuf>,
        /// An earlier run's `results.json`: print (and render into --html
        /// and --junit) what changed since; exit 1 if a check newly fails.
        #[arg(long, value_name = "OLD")]
        baseline: Option<PathBuf>,
        /// With --baseline: list latency, throughput and downtime changes
        /// beyond this many percent.
        #[arg(long, value_name = "PERCENT", default_value_t = reports::DEFAULT_THRESHOLD_PERCENT, value_parser = parse_threshold)]
        threshold: f64,
    },
    /// Write the man pages or shell completions (for packagers).
    #[command(name = "__generate", hide = true)]
    Generate(GenerateArgs),
    /// List the VFIO devices of this host (or the given ones) and what each
    /// supports.
    #[command(name = "probe")]
    ProbeDevices(ProbeCmd),
    /// Save a device's migration state to a file: STOP, STOP_COPY, the
    /// stream to its end, STOP.
    Save(SaveArgs),
    /// Load a saved migration state into a device: STOP, RESUMING, the
    /// stream, STOP.
    Resume(ResumeArgs),
    /// Live-migrate a RUNNING device to `vfio-migtest receive` on another
    /// host: PRE_COPY iterations while it runs, then STOP_COPY.
    #[command(after_help = LIVE_EXAMPLES)]
    Migrate(MigrateArgs),
    /// Receive a live migration from `vfio-migtest migrate` into a device,
    /// resuming as the data arrives; the device ends RUNNING.
    #[command(after_help = LIVE_EXAMPLES)]
    Receive(ReceiveArgs),
    /// Score the cases against every fault of the simulator's catalogue.
    Faults(FaultsArgs),
    #[command(name = "__probe", hide = true)]
    Probe(ProbeArgs),
    #[command(name = "__save", hide = true)]
    SaveChild(SaveArgs),
    #[command(name = "__resume", hide = true)]
    ResumeChild(ResumeArgs),
    #[command(name = "__migrate", hide = true)]
    MigrateChild(MigrateArgs),
    #[command(name = "__receive", hide = true)]
    ReceiveChild(ReceiveArgs),
    #[command(name = "__case", hide = true)]
    Case(CaseArgs),
    #[command(name = "__restore", hide = true)]
    Restore(RestoreArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Pretty,
    Terse,
    Json,
    /// KTAP version 1 on stdout, rendered at the end; progress goes to stderr.
    Ktap,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Device under test: PCI address (0000:3b:00.1), mdev UUID,
    /// /dev/vfio/devices/vfioN, `sim` or `sim:OPTIONS`. Repeatable.
    /// [env: VFIO_MIGTEST_DEVICES, comma-separated] [default: sim]
    #[arg(long = "device", value_name = "SPEC", value_parser = device_spec)]
    pub devices: Vec<DeviceSpec>,
    /// A second device of the same type to resume into (default for the
    /// simulator: another simulator with the same options).
    #[arg(long, value_name = "SPEC", env = "VFIO_MIGTEST_DESTINATION", value_parser = device_spec)]
    pub destination: Option<DeviceSpec>,
    /// A device of another type, whose streams must be refused (default for
    /// the simulator: a simulator of another type).
    #[arg(long, value_name = "SPEC", env = "VFIO_MIGTEST_INCOMPATIBLE", value_parser = device_spec)]
    pub incompatible: Option<DeviceSpec>,
    /// Scenario directory instead of the built-in catalogue.
    #[arg(long, value_name = "DIR", env = "VFIO_MIGTEST_CASES")]
    pub cases: Option<PathBuf>,
    /// Where results.json, results.jsonl, results.ktap, junit.xml and
    /// report.html go (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        env = "VFIO_MIGTEST_OUT",
        default_value = "vfio-migtest-results"
    )]
    pub out: PathBuf,
    /// Progress output on the terminal.
    #[arg(long, value_enum, default_value_t = Format::Pretty)]
    pub format: Format,
    /// SHOULD failures fail the case.
    #[arg(long)]
    pub strict: bool,
    /// Grade for a consumer of the uAPI: with `qemu`, every deviation that
    /// breaks a QEMU migration fails its case, whatever its strength.
    #[arg(long, value_enum, value_name = "CONSUMER")]
    pub consumer: Option<ConsumerArg>,
    /// Known failures of the driver under test (YAML, see
    /// expectations/README.md): a listed failure is XFAIL, a listed one
    /// that no longer happens is XPASS. Repeatable.
    #[arg(
        long = "expect",
        value_name = "FILE",
        env = "VFIO_MIGTEST_EXPECT",
        value_delimiter = ','
    )]
    pub expect: Vec<PathBuf>,
    /// Also run cases that can hang kernels without the
    /// vfio_mig_get_next_state() fix.
    #[arg(long)]
    pub include_dangerous: bool,
    /// Deadline of a case whose file sets none.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Seed of every random choice (default: random, printed and recorded).
    #[arg(long, value_name = "N", env = "VFIO_MIGTEST_SEED")]
    pub seed: Option<u64>,
    /// Device profile (YAML: `deterministic_stream: bool`) for real devices.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Data-fd read/write buffer size.
    #[arg(long, value_name = "SIZE", value_parser = parse_buffer_size, default_value = "1MiB")]
    pub buffer_size: usize,
    /// A SET of the device state that takes longer is a warning (V2-TIME-01).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1s")]
    pub arc_latency_limit: Duration,
    /// The device's share of a migration's downtime beyond this is a
    /// warning (V2-TIME-02; QEMU's default downtime-limit).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "300ms")]
    pub downtime_budget: Duration,
    /// Run only cases whose trial name contains FILTER.
    #[arg(value_name = "FILTER")]
    pub filter: Option<String>,
    /// FILTER and --skip match whole trial names.
    #[arg(long)]
    pub exact: bool,
    /// Skip cases whose trial name contains this (repeatable).
    #[arg(long, value_name = "FILTER")]
    pub skip: Vec<String>,
    /// List the trials and exit, touching no device.
    #[arg(long)]
    pub list: bool,
    /// Run only the dangerous cases (they are the ignored trials).
    #[arg(long)]
    pub ignored: bool,
    /// Run the dangerous cases too (same as --include-dangerous).
    #[arg(long)]
    pub include_ignored: bool,
    /// Cases run at once (default: the number of CPUs for simulator-only
    /// runs, 1 with a real device; a device never runs two cases at once).
    #[arg(long, value_name = "N")]
    pub test_threads: Option<NonZeroUsize>,
    /// One character per case.
    #[arg(short, long)]
    pub quiet: bool,
}

impl RunArgs {
    /// Whether dangerous cases may run.
    pub fn dangerous_allowed(&self) -> bool {
        self.include_dangerous || self.ignored || self.include_ignored
    }
}

fn parse_threshold(text: &str) -> Result<f64, String> {
    match text.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!("{text}: a threshold is a percentage, 0 or more")),
    }
}

fn parse_buffer_size(text: &str) -> Result<usize, String> {
    let n = parse_size(text)?;
    if !(4096..=1 << 30).contains(&n) {
        return Err(format!("{text}: the buffer must be 4KiB to 1GiB"));
    }
    usize::try_from(n).map_err(|_| format!("{text}: too large"))
}

#[derive(Debug, Clone, Args)]
pub struct ProbeCmd {
    /// Probe this device instead of every VFIO device of the host: PCI
    /// address, mdev UUID, /dev/vfio/devices/vfioN, `sim` or `sim:OPTIONS`.
    /// Repeatable.
    #[arg(long = "device", value_name = "SPEC", value_parser = device_spec)]
    pub devices: Vec<DeviceSpec>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Deadline of opening and probing one device.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct SaveArgs {
    /// The source device: PCI address, mdev UUID, /dev/vfio/devices/vfioN,
    /// `sim` or `sim:OPTIONS`.
    #[arg(long, value_name = "SPEC", value_parser = device_spec)]
    pub device: DeviceSpec,
    /// The save file (written to a temporary file, then renamed).
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Size of each read() on the data fd.
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk, default_value = "1MiB")]
    pub chunk: usize,
    /// Deadline of the whole save.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
}

/// The state to SET after a successful resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Then {
    Running,
}

#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// The destination device.
    #[arg(long, value_name = "SPEC", value_parser = device_spec)]
    pub device: DeviceSpec,
    /// A file written by `vfio-migtest save`.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Size of each write() on the data fd (1 byte to 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk, default_value = "1MiB")]
    pub chunk: usize,
    /// Deadline of the whole resume.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Resume even if the file was saved from another driver or device type.
    #[arg(long)]
    pub force: bool,
    /// After the resume, SET this state (default: leave the device in STOP).
    #[arg(long, value_enum, value_name = "STATE")]
    pub then: Option<Then>,
    /// After the resume, save the device again into FILE: for a
    /// deterministic device its stream equals the one resumed.
    #[arg(long, value_name = "FILE")]
    pub resave: Option<PathBuf>,
}

fn parse_chunk(text: &str) -> Result<usize, String> {
    let n = parse_size(text)?;
    if !(1..=1 << 30).contains(&n) {
        return Err(format!("{text}: a chunk is 1 byte to 1GiB"));
    }
    usize::try_from(n).map_err(|_| format!("{text}: too large"))
}

#[derive(Debug, Clone, Args)]
pub struct FaultsArgs {
    /// Scenario directory instead of the built-in catalogue.
    #[arg(long, value_name = "DIR", env = "VFIO_MIGTEST_CASES")]
    pub cases: Option<PathBuf>,
    /// Score only this fault (repeatable; default: every fault).
    #[arg(long = "fault", value_name = "NAME")]
    pub faults: Vec<String>,
    /// Deadline of every case against a fault that hangs (a case's own
    /// longer timeout is cut to this); elsewhere a case keeps its own
    /// timeout (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "3s")]
    pub case_timeout: Duration,
    /// Cases run at once (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub test_threads: Option<NonZeroUsize>,
    /// Seed of every random choice.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The visible subcommand a word resembles: one it begins, or one within
/// two edits of it (`prob`, `repotr`, `fualts`).
pub fn subcommand_like(word: &str) -> Option<String> {
    use clap::CommandFactory;
    let word = word.to_ascii_lowercase();
    let cli = Cli::command();
    let names: Vec<&str> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name())
        .collect();
    let begins = names
        .iter()
        .find(|n| word.len() >= 2 && n.starts_with(word.as_str()));
    let near = || {
        names
            .iter()
            .map(|n| (edit_distance(&word, n), *n))
            .filter(|(d, _)| *d <= 2 && word.len() > 2)
            .min()
            .map(|(_, n)| n)
    };
    begins.copied().or_else(near).map(str::to_string)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The value parser of every device option: a spec as users write it, with
/// the spec's own error text.
pub fn device_spec(text: &str) -> Result<DeviceSpec, String> {
    DeviceSpec::parse(text).map_err(|e| e.to_string())
}

/// Splits and parses `VFIO_MIGTEST_DEVICES`. Simulator specs carry
/// comma-separated options (`sim:v1,fault=x`), so a piece that does not
/// start a spec continues the one before it.
pub fn split_device_list(list: &str) -> Result<Vec<DeviceSpec>, String> {
    let mut specs: Vec<String> = Vec::new();
    for piece in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let starts_spec = piece == "sim"
            || piece.starts_with("sim:")
            || DeviceSpec::parse(piece).is_ok_and(|s| !s.is_sim());
        match specs.last_mut() {
            Some(last) if !starts_spec && last.starts_with("sim") => {
                last.push(if last == "sim" { ':' } else { ',' });
                last.push_str(piece);
            }
            _ => specs.push(piece.to_string()),
        }
    }
    specs
        .iter()
        .map(|s| device_spec(s).map_err(|e| format!("VFIO_MIGTEST_DEVICES: {e}")))
        .collect()
}

const LIVE_EXAMPLES: &str = "\
Examples:
  dst$ vfio-migtest receive --device 0000:3b:00.2 --listen 0.0.0.0:47000
  src$ vfio-migtest migrate --device 0000:3b:00.1 --to dst:47000 --json src.json

Both sides print bytes per phase, precopy iterations, the downtime (the
source leaving RUNNING until the destination is RUNNING) and throughput, and
record them with --json. A refused peer (another wire format version, another
driver or device type) is refused before either device is touched. On any
failure each device that was touched is reset to RUNNING. Exit status: 0
done, 1 the driver or the peer failed, 2 refused or usage error, 4 the device
cannot be used.";

/// What both sides of a live migration take.
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    /// The device: PCI address, mdev UUID, /dev/vfio/devices/vfioN, `sim`
    /// or `sim:OPTIONS`.
    #[arg(long, value_name = "SPEC", value_parser = device_spec)]
    pub device: DeviceSpec,
    /// Size of each read() on the source's data fd, and so of each DATA
    /// frame (1 byte to 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_chunk, default_value = "1MiB")]
    pub chunk: usize,
    /// Deadline of the whole migration, waiting for the peer included.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10m")]
    pub timeout: Duration,
    /// Longest time the peer may stay silent (a cut connection, a hung peer).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "30s")]
    pub idle_timeout: Duration,
    /// After the migration, save the device into FILE (source: from STOP;
    /// destination: from STOP before RUNNING); for a deterministic device
    /// the two streams are equal.
    #[arg(long, value_name = "FILE")]
    pub resave: Option<PathBuf>,
    /// Record the outcome and the figures in FILE (JSON).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// Where `vfio-migtest receive` listens.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// The most precopy iterations before the switch to STOP_COPY.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_precopy: u32,
    /// Switch to STOP_COPY once the initial data is sent and the dirty data
    /// would take no longer than this at the measured throughput.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "300ms")]
    pub downtime_limit: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// Address to listen on (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
}

/// What `__generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Artifact {
    /// `vfio-migtest.1` and one page per subcommand.
    Man,
    /// bash, zsh and fish completion scripts.
    Completions,
}

/// `__generate`: man pages or completions from this definition.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[arg(value_enum)]
    pub what: Artifact,
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `__probe`: open one device, print its description and capabilities.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    #[arg(long, value_parser = device_spec)]
    pub device: DeviceSpec,
}

/// `__case`: run one scenario (its text on stdin), streaming events.
#[derive(Debug, Clone, Args)]
pub struct CaseArgs {
    #[arg(long, value_parser = device_spec)]
    pub device: DeviceSpec,
    #[arg(long, value_parser = device_spec)]
    pub destination: Option<DeviceSpec>,
    #[arg(long, value_parser = device_spec)]
    pub incompatible: Option<DeviceSpec>,
    /// The scenario's display path.
    #[arg(long)]
    pub file: String,
    #[arg(long)]
    pub seed: u64,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long)]
    pub buffer_size: usize,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub arc_latency_limit: Duration,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub downtime_budget: Duration,
    #[arg(long)]
    pub include_dangerous: bool,
}

/// `__restore`: reset one device and check it is running again.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    #[arg(long, value_parser = device_spec)]
    pub device: DeviceSpec,
    #[arg(long, value_parser = ["v1", "v2"])]
    pub protocol: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("vfio-migtest").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_runs_with_defaults() {
        let cli = parse(&[]);
        assert!(cli.command.is_none());
        assert!(cli.run.devices.is_empty());
        assert_eq!(cli.run.out, PathBuf::from("vfio-migtest-results"));
        assert_eq!(cli.run.timeout, Duration::from_secs(60));
        assert_eq!(cli.run.buffer_size, 1 << 20);
        assert_eq!(cli.run.format, Format::Pretty);
    }

    #[test]
    fn run_options_and_selection() {
        let cli = parse(&[
            "run",
            "--device",
            "sim:v1",
            "--device",
            "0000:3b:00.1",
            "--timeout",
            "1m 30s",
            "--buffer-size",
            "64KiB",
            "--format",
            "ktap",
            "--skip",
            "walk",
            "--exact",
            "--test-threads",
            "2",
            "--seed",
            "7",
            "fsm",
        ]);
        let Some(Command::Run(run)) = cli.command else {
            panic!("not run");
        };
        assert_eq!(
            run.devices,
            [
                DeviceSpec::Sim("v1".into()),
                DeviceSpec::Pci("0000:3b:00.1".into())
            ]
        );
        assert_eq!(run.timeout, Duration::from_secs(90));
        assert_eq!(run.buffer_size, 65536);
        assert_eq!(run.format, Format::Ktap);
        assert_eq!(run.filter.as_deref(), Some("fsm"));
        assert_eq!(run.skip, ["walk"]);
        assert_eq!(run.test_threads.map(NonZeroUsize::get), Some(2));
        assert_eq!(run.seed, Some(7));
        assert!(run.exact && !run.dangerous_allowed());
    }

    #[test]
    fn a_top_level_filter_is_not_a_subcommand() {
        let cli = parse(&["--list", "precopy"]);
        assert!(cli.command.is_none());
        assert!(cli.run.list);
        assert_eq!(cli.run.filter.as_deref(), Some("precopy"));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["--timeout", "soon"][..],
            &["--buffer-size", "12"],
            &["--format", "tap"],
            &["report"],
        ] {
            let argv = std::iter::once("vfio-migtest").chain(args.iter().copied());
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn chunks_are_one_byte_to_one_gib() {
        assert_eq!(parse_chunk("13"), Ok(13));
        assert_eq!(parse_chunk("1MiB"), Ok(1 << 20));
        assert!(parse_chunk("0").is_err());
        assert!(parse_chunk("2GiB").is_err());
        assert!(parse_chunk("lots").is_err());
    }

    #[test]
    fn misspelt_subcommands_are_recognised() {
        for (word, sub) in [
            ("prob", Some("probe")),
            ("repotr", Some("report")),
            ("fualts", Some("faults")),
            ("VALIDATE", Some("validate")),
            ("fsm-every-arc", None),
            ("walk", None),
            ("r", None),
            ("__case", None),
        ] {
            assert_eq!(subcommand_like(word).as_deref(), sub, "{word}");
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn device_list_keeps_simulator_options_together() {
        let specs = split_device_list(
            "sim:v1,fault=hang-transition, 0000:3b:00.1,sim,type=b,/dev/vfio/devices/vfio3",
        )
        .unwrap();
        let texts: Vec<String> = specs.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "sim:v1,fault=hang-transition",
                "0000:3b:00.1",
                "sim:type=b",
                "/dev/vfio/devices/vfio3"
            ]
        );
        assert_eq!(split_device_list(""), Ok(Vec::new()));
        let e = split_device_list("eth0,sim").unwrap_err();
        assert!(
            e.starts_with("VFIO_MIGTEST_DEVICES: device spec `eth0`"),
            "{e}"
        );
    }
}

/// `--consumer`: whose migration the grading speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsumerArg {
    /// QEMU (hw/vfio/migration.c): see the `qemu:` impacts in suite/requirements.yaml.
    Qemu,
}

impl From<ConsumerArg> for results::Consumer {
    fn from(c: ConsumerArg) -> results::Consumer {
        match c {
            ConsumerArg::Qemu => results::Consumer::Qemu,
        }
    }
}
