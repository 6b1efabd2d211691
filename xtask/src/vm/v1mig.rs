//! The v1 lane: `v1mig.ko`, the project's reference driver for migration
//! protocol v1 (`xtask/drivers/v1mig/`), built against the installed headers
//! and loaded in the guest once per [`CONFIGS`] entry, each time with two
//! `v1mig-a` devices (device under test and destination) and a `v1mig-b`
//! one (incompatible). The guest side is `v1.sh`; what each configuration
//! must show is judged here from its `results.json` and the driver's
//! counters.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use results::{Outcome, RunResults, Verdict};

use super::mtty::cache_key;
use super::packages::Kernel;

/// The driver's source directory in the workspace.
const SOURCE_DIR: &str = "xtask/drivers/v1mig";

/// How a configuration moves the data area, as the driver counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Mmap,
    ReadWrite,
}

#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Every v1 case runs and passes; the data goes through `path`; the
    /// freeze probe reports `freeze`.
    AllPass {
        path: DataPath,
        freeze: &'static str,
    },
    /// `case` fails a check citing `id`.
    Fails {
        case: &'static str,
        id: &'static str,
    },
}

/// One load of the driver.
pub struct Config {
    pub name: &'static str,
    /// Module parameters for insmod.
    pub params: &'static str,
    /// Extra arguments for `vfio-migtest run`.
    pub args: &'static str,
    /// Also run `probe`, `save` and `resume` ([`TOOL_RUNS`]) on the devices.
    pub tools: bool,
    pub expect: Expect,
}

/// The tool runs of `v1.sh` (`v1-<config>-<run>`), the exit code each must
/// end with, and text its output must contain.
const TOOL_RUNS: &[(&str, i32, &str)] = &[
    ("probe", 0, "v1 migration region: index 2"),
    ("save", 0, ""),
    ("resume", 0, ""),
    // The destination, saved again, gives the same chunks.
    ("resave-identical", 0, ""),
    // A v1mig-a state into the v1mig-b device: the driver's stream header
    // check refuses it at the first data_size write.
    (
        "resume-foreign",
        1,
        "the driver rejected the stream: the data_size write",
    ),
];

/// Freeze statements of the suite's v1-freeze case.
const FROZEN_AT_CLEAR: &str = "when _RUNNING is cleared";
const FROZEN_AT_PENDING: &str = "at the first pending_bytes read";

pub const CONFIGS: &[Config] = &[
    Config {
        name: "default",
        params: "",
        args: "",
        tools: true,
        expect: Expect::AllPass {
            path: DataPath::Mmap,
            freeze: FROZEN_AT_CLEAR,
        },
    },
    // The other choices v1 drivers made, with chunks that are not a
    // divisor of anything and a state whose last block is short.
    Config {
        name: "rw",
        params: "mmap=0 freeze=pending pending=constant data_size=1000 state_size=20000",
        args: "",
        tools: true,
        expect: Expect::AllPass {
            path: DataPath::ReadWrite,
            freeze: FROZEN_AT_PENDING,
        },
    },
    // One broken rule each, and the case that must catch it.
    Config {
        name: "bug-pending-never-zero",
        params: "bug_pending_never_zero=1",
        // The drain ends at the case deadline; no need to wait a minute.
        args: "--exact v1-stop-and-copy --timeout 30s",
        tools: false,
        expect: Expect::Fails {
            case: "v1-stop-and-copy",
            id: "V1-SAVE-04",
        },
    },
    Config {
        name: "bug-data-size-beyond",
        params: "bug_data_size_beyond=1",
        args: "--exact v1-stop-and-copy",
        tools: false,
        expect: Expect::Fails {
            case: "v1-stop-and-copy",
            id: "V1-SAVE-03",
        },
    },
    Config {
        name: "bug-invalid-state-accepted",
        params: "bug_invalid_state_accepted=1",
        args: "--exact v1-states",
        tools: false,
        expect: Expect::Fails {
            case: "v1-states",
            id: "V1-STATE-02",
        },
    },
    Config {
        name: "bug-data-offset-moves",
        params: "bug_data_offset_moves=1",
        args: "--exact v1-stop-and-copy",
        tools: false,
        expect: Expect::Fails {
            case: "v1-stop-and-copy",
            id: "V1-SAVE-02",
        },
    },
    Config {
        name: "bug-truncated-resume-accepted",
        params: "bug_truncated_resume_accepted=1",
        args: "--exact v1-resume-rejects",
        tools: false,
        expect: Expect::Fails {
            case: "v1-resume-rejects",
            id: "V1-RESUME-03",
        },
    },
];

/// The guest's `/etc/v1-configs`: `name|params|args|tools` per line.
pub fn configs_file() -> String {
    CONFIGS
        .iter()
        .map(|c| format!("{}|{}|{}|{}\n", c.name, c.params, c.args, u8::from(c.tools)))
        .collect()
}

/// Returns a v1mig.ko for `kernel`, building it when the cache has none for
/// this source and kernel. A compiler warning fails the build.
pub fn build(kernel: &Kernel, workspace: &Path, cache: &Path) -> Result<PathBuf> {
    let source = workspace.join(SOURCE_DIR).join("v1mig.c");
    let text = fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
    let dir = cache.join(format!("v1mig-{:016x}", cache_key(&text, &kernel.release)));
    let module = dir.join("v1mig.ko");
    if module.is_file() {
        println!("v1mig.ko: cached {}", module.display());
        return Ok(module);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("v1mig.c"), &text)?;
    fs::copy(
        workspace.join(SOURCE_DIR).join("Kbuild"),
        dir.join("Kbuild"),
    )?;
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(kernel.build_dir())
        .arg(format!("M={}", dir.display()))
        .args(["W=1", "modules"]);
    let output = make
        .output()
        .with_context(|| format!("cannot run {make:?}"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{log}");
    if !output.status.success() {
        bail!("building v1mig.ko failed: {}", output.status);
    }
    if log.contains("warning:") {
        // Not cached: the next run builds (and fails) again.
        fs::remove_file(&module)?;
        bail!("building v1mig.ko gave warnings");
    }
    if !module.is_file() {
        bail!("make succeeded but left no {}", module.display());
    }
    println!("v1mig.ko: built {}", module.display());
    Ok(module)
}

/// Judges the v1 lane's results under `out/v1/`: every configuration
/// shows what [`CONFIGS`] says, the driver unloaded cleanly, and the
/// kernel log has no warning.
pub fn judge(out: &Path, workspace: &Path) -> Result<()> {
    let v1_cases = case_names(&workspace.join("cases/v1"))?;
    let codes = fs::read_to_string(out.join("exit-codes")).unwrap_or_default();
    let mut failed = Vec::new();
    for config in CONFIGS {
        let dir = out.join("v1").join(config.name);
        match judge_config(config, &dir, &v1_cases) {
            Ok(summary) => println!("v1 lane {}: {summary}", config.name),
            Err(e) => failed.push(format!("{}: {e:#}", config.name)),
        }
        if config.tools {
            failed.extend(judge_tools(config, out, &codes));
        }
    }
    let log = fs::read_to_string(out.join("kernel.log")).unwrap_or_default();
    let warnings: Vec<&str> = log.lines().filter(|l| is_kernel_warning(l)).collect();
    if !warnings.is_empty() {
        failed.push(format!("kernel log: {}", warnings.join(" | ")));
    }
    if !failed.is_empty() {
        bail!("the v1 lane failed: {}", failed.join("; "));
    }
    Ok(())
}

/// What is wrong with the tool runs of `config`.
fn judge_tools(config: &Config, out: &Path, codes: &str) -> Vec<String> {
    let mut failed = Vec::new();
    for &(run, want, says) in TOOL_RUNS {
        let name = format!("v1-{}-{run}", config.name);
        let code = codes
            .lines()
            .find_map(|l| l.strip_prefix(&name)?.strip_prefix(' '))
            .and_then(|c| c.trim().parse::<i32>().ok());
        let log = fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        match code {
            Some(code) if code == want && log.contains(says) => {
                println!("v1 lane {name}: exit code {code} (as expected)")
            }
            Some(code) if code == want => failed.push(format!("{name} did not say {says:?}")),
            Some(code) => failed.push(format!("{name} exited with {code}, not {want}")),
            None => failed.push(format!("{name} recorded no exit code")),
        }
    }
    let probe =
        fs::read_to_string(out.join(format!("v1-{}-probe.log", config.name))).unwrap_or_default();
    let access = match config.expect {
        Expect::AllPass {
            path: DataPath::Mmap,
            ..
        } => "data area by sparse mmap",
        _ => "data area by read/write only",
    };
    if !probe.contains(access) {
        failed.push(format!("v1-{}-probe did not say {access:?}", config.name));
    }
    failed
}

fn is_kernel_warning(line: &str) -> bool {
    ["WARNING:", "BUG:", "Oops", "Call Trace", "UBSAN", "KASAN"]
        .iter()
        .any(|w| line.contains(w))
}

/// The case names of the `.yaml` files in `dir`.
fn case_names(dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Some(stem) = path.file_stem() {
                names.insert(stem.to_string_lossy().into_owned());
            }
        }
    }
    Ok(names)
}

fn judge_config(config: &Config, dir: &Path, v1_cases: &BTreeSet<String>) -> Result<String> {
    let unload = fs::read_to_string(dir.join("unload")).unwrap_or_default();
    if unload.trim() != "0" {
        bail!(
            "the driver did not unload cleanly (rmmod: {:?})",
            unload.trim()
        );
    }
    let path = dir.join("results.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("no results ({})", path.display()))?;
    let run: RunResults =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    let cases: Vec<_> = run
        .devices
        .first()
        .context("results for no device")?
        .cases
        .iter()
        .filter(|c| c.protocol == "v1")
        .collect();
    match config.expect {
        Expect::AllPass { path, freeze } => {
            let ran: BTreeSet<String> = cases.iter().map(|c| c.name.clone()).collect();
            let missing: Vec<_> = v1_cases.difference(&ran).collect();
            if !missing.is_empty() {
                bail!("v1 cases missing from the run: {missing:?}");
            }
            let not_passed: Vec<String> = cases
                .iter()
                .filter(|c| c.outcome != Outcome::Pass)
                .map(|c| format!("{} {}", c.name, c.outcome.as_str()))
                .collect();
            if !not_passed.is_empty() {
                bail!("v1 cases did not pass: {}", not_passed.join(", "));
            }
            let freeze_note = cases
                .iter()
                .flat_map(|c| &c.notes)
                .find(|n| n.starts_with("v1 freeze point"))
                .context("no freeze point reported")?;
            if !freeze_note.contains(freeze) {
                bail!("freeze point {freeze_note:?}, expected {freeze:?}");
            }
            let counters = Counters::read(dir)?;
            let via = counters.path()?;
            if via != path {
                bail!("data moved by {via:?}, expected {path:?} ({counters:?})");
            }
            Ok(format!(
                "{} v1 cases passed; data by {via:?} ({counters:?}); {freeze_note}",
                cases.len()
            ))
        }
        Expect::Fails { case, id } => {
            let result = cases
                .iter()
                .find(|c| c.name == case)
                .with_context(|| format!("{case} did not run"))?;
            let check = result
                .checks
                .iter()
                .find(|c| c.verdict == Verdict::Fail && c.ids.iter().any(|i| i == id))
                .with_context(|| {
                    format!("{case} ({}) failed no {id} check", result.outcome.as_str())
                })?;
            Ok(format!(
                "{case} {} with {id}: {}",
                result.outcome.as_str(),
                check.observed
            ))
        }
    }
}

/// The driver's counters for the data area, summed over the devices
/// (`counters` is `<uuid> <data_rw_bytes> <mmaps>` lines, from `v1.sh`).
#[derive(Debug, Default)]
struct Counters {
    data_rw_bytes: u64,
    mmaps: u64,
}

impl Counters {
    fn read(dir: &Path) -> Result<Counters> {
        let path = dir.join("counters");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("no driver counters ({})", path.display()))?;
        let mut sum = Counters::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, rw, mmaps] = fields[..] else {
                bail!("malformed counters line {line:?}");
            };
            sum.data_rw_bytes += rw.parse::<u64>().context("data_rw_bytes")?;
            sum.mmaps += mmaps.parse::<u64>().context("mmaps")?;
        }
        Ok(sum)
    }

    /// Which path carried the data: exactly one of them may have been used.
    fn path(&self) -> Result<DataPath> {
        match (self.data_rw_bytes, self.mmaps) {
            (0, 0) => bail!("the data area was never used"),
            (0, _) => Ok(DataPath::Mmap),
            (_, 0) => Ok(DataPath::ReadWrite),
            _ => bail!("the data area was both mapped and read/written"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_tell_the_path() {
        let c = |data_rw_bytes, mmaps| Counters {
            data_rw_bytes,
            mmaps,
        };
        assert_eq!(c(0, 2).path().unwrap(), DataPath::Mmap);
        assert_eq!(c(4096, 0).path().unwrap(), DataPath::ReadWrite);
        assert!(c(0, 0).path().is_err());
        assert!(c(8, 1).path().is_err());
    }

    #[test]
    fn every_case_a_config_names_is_a_v1_case() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let names = case_names(&workspace.join("cases/v1")).unwrap();
        for config in CONFIGS {
            if let Expect::Fails { case, .. } = config.expect {
                assert!(names.contains(case), "{case}");
                assert!(config.args.contains(case), "{}", config.name);
            }
        }
    }

    #[test]
    fn configs_file_has_a_line_per_config() {
        let file = configs_file();
        assert_eq!(file.lines().count(), CONFIGS.len());
        assert!(file.lines().all(|l| l.matches('|').count() == 3));
        assert!(file.starts_with("default|||1\n"));
    }

    #[test]
    fn the_guest_script_reads_the_configs() {
        let script = include_str!("v1.sh");
        assert!(script.contains("/etc/v1-configs"));
        assert!(script.contains("/results/v1/"));
        for (run, _, _) in TOOL_RUNS {
            assert!(script.contains(&format!("suite \"v1-$1-{run}\" ")), "{run}");
        }
    }
}
