//! End-to-end tests through the built binary, against the simulator, with
//! small scenario directories of their own.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use results::{Outcome, RunResults};

const FRESH: &str = "name: fresh
about: a fresh device is RUNNING
steps:
  - get_state:
    expect: { state: RUNNING, ids: [V2-FSM-01] }
";

const STOP: &str = "name: stop-and-back
about: RUNNING -> STOP -> RUNNING
steps:
  - set_state: STOP
  - set_state: RUNNING
";

/// With `sim:fault=hang-transition` the SET into STOP_COPY never returns;
/// the deadline leaves a slow machine ample time for the steps before it.
const HANG: &str = "name: hang
about: enters STOP_COPY
timeout: 10s
steps:
  - set_state: STOP
  - set_state: STOP_COPY
";

/// A case that ends only when it is cut.
const ENDLESS: &str = "name: endless
about: sleeps until its deadline, far beyond any test
timeout: 900s
steps:
  - sleep: 900s
  - get_state:
";

fn cases(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-migtest"));
    for var in [
        "VFIO_MIGTEST_DEVICES",
        "VFIO_MIGTEST_DESTINATION",
        "VFIO_MIGTEST_INCOMPATIBLE",
        "VFIO_MIGTEST_CASES",
        "VFIO_MIGTEST_OUT",
        "VFIO_MIGTEST_SEED",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(args: &[&str], cases: &Path, out: &Path) -> Output {
    bin()
        .arg("run")
        .arg("--cases")
        .arg(cases)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn results(out: &Path) -> RunResults {
    reports::read_json(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

fn outcome(r: &RunResults, device: usize, case: &str) -> Outcome {
    r.devices[device]
        .cases
        .iter()
        .find(|c| c.name == case)
        .unwrap_or_else(|| panic!("no case {case}"))
        .outcome
}

#[test]
fn a_simulator_run_passes_and_writes_every_file() {
    let dir = cases(&[("v2/fresh.yaml", FRESH), ("v2/stop.yaml", STOP)]);
    let out = tempfile::tempdir().unwrap();
    let o = run(&["--seed", "42"], dir.path(), out.path());
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let stdout = text(&o.stdout);
    assert!(stdout.contains("seed 42"), "{stdout}");
    assert!(stdout.contains("results.json"), "{stdout}");
    for f in [
        "results.json",
        "results.jsonl",
        "results.ktap",
        "junit.xml",
        "report.html",
    ] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    let r = results(out.path());
    assert_eq!(r.meta.seed, 42);
    assert!(r.meta.finished.is_some() && r.meta.interrupted.is_none());
    assert_eq!(outcome(&r, 0, "fresh"), Outcome::Pass);
    assert_eq!(outcome(&r, 0, "stop-and-back"), Outcome::Pass);
    assert_eq!(r.devices[0].access.as_deref(), Some("simulator"));
    let fresh = r.devices[0]
        .cases
        .iter()
        .find(|c| c.name == "fresh")
        .unwrap();
    assert_eq!(fresh.file, "v2/fresh.yaml");
    assert!(!fresh.steps.is_empty() && !fresh.checks.is_empty());
    let journal = std::fs::read_to_string(out.path().join("results.jsonl")).unwrap();
    assert_eq!(
        journal
            .lines()
            .filter(|l| l.starts_with(r#"{"case":"#))
            .count(),
        2
    );
    let ktap = std::fs::read_to_string(out.path().join("results.ktap")).unwrap();
    assert!(ktap.starts_with("KTAP version 1\n"), "{ktap}");
}

#[test]
fn list_names_trials_per_device_without_running() {
    let dir = cases(&[("fresh.yaml", FRESH), ("stop.yaml", STOP)]);
    let out = tempfile::tempdir().unwrap();
    let o = run(
        &["--list", "--device", "sim", "--device", "sim:seed=2"],
        dir.path(),
        &out.path().join("never"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    for name in [
        "fresh: test",
        "stop-and-back: test",
        "sim-seed-2::fresh: test",
    ] {
        assert!(stdout.contains(name), "{name} not in {stdout}");
    }
    assert!(!out.path().join("never").exists());
    let o = bin()
        .arg("list")
        .arg("--cases")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let stdout = text(&o.stdout);
    assert!(stdout.contains("stop-and-back") && stdout.contains("RUNNING -> STOP -> RUNNING"));
}

#[test]
fn a_filter_selects_cases() {
    let dir = cases(&[("fresh.yaml", FRESH), ("stop.yaml", STOP)]);
    let out = tempfile::tempdir().unwrap();
    let o = run(&["--exact", "fresh"], dir.path(), out.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let r = results(out.path());
    let names: Vec<&str> = r.devices[0].cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["fresh"]);
}

#[test]
fn invalid_scenarios_exit_2_with_file_line_column() {
    let dir = cases(&[
        ("fresh.yaml", FRESH),
        (
            "bad.yaml",
            "name: bad\nabout: x\nsteps:\n  - set_state: STOPPED\n",
        ),
    ]);
    let out = tempfile::tempdir().unwrap();
    let o = run(&[], dir.path(), out.path());
    assert_eq!(o.status.code(), Some(2));
    let stderr = text(&o.stderr);
    let at = format!("{}:4:", dir.path().join("bad.yaml").display());
    assert!(stderr.contains(&at), "{at} not in {stderr}");
    assert!(
        !out.path().join("results.jsonl").exists(),
        "a device was run"
    );

    let o = bin().arg("validate").arg(dir.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains(&at));
    let o = bin()
        .arg("validate")
        .arg(dir.path().join("fresh.yaml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ok: 1 case(s) in 1 file(s)"));
}

#[test]
fn a_hanging_case_times_out_with_its_step_and_the_run_goes_on() {
    let dir = cases(&[("a-hang.yaml", HANG), ("b-fresh.yaml", FRESH)]);
    let out = tempfile::tempdir().unwrap();
    let o = run(
        &[
            "--device",
            "sim:fault=hang-transition",
            "--test-threads",
            "1",
        ],
        dir.path(),
        out.path(),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let r = results(out.path());
    let hang = r.devices[0]
        .cases
        .iter()
        .find(|c| c.name == "hang")
        .unwrap();
    assert_eq!(hang.outcome, Outcome::Timeout);
    let stuck = hang.stuck_in.as_deref().unwrap_or_default();
    assert!(stuck.contains("STOP -> STOP_COPY"), "{stuck}");
    assert!(stuck.contains("a-hang.yaml:6:"), "{stuck}");
    assert!(hang.checks.iter().any(|c| c.ids == ["KERNEL-02"]));
    // The step before the hang was folded before the child was killed.
    assert!(hang
        .steps
        .iter()
        .any(|s| s.args.contains("RUNNING -> STOP")));
    assert_eq!(outcome(&r, 0, "fresh"), Outcome::Pass);
    assert!(r.devices[0].wedged.is_none());
}

#[test]
fn a_device_that_cannot_be_reset_is_wedged_and_its_later_cases_error() {
    let dir = cases(&[("a.yaml", STOP), ("b.yaml", FRESH)]);
    let out = tempfile::tempdir().unwrap();
    let o = run(
        &[
            "--device",
            "sim:fault=reset-not-running",
            "--test-threads",
            "1",
        ],
        dir.path(),
        out.path(),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let r = results(out.path());
    let wedged = r.devices[0].wedged.as_deref().unwrap_or_default();
    assert!(wedged.contains("after case stop-and-back"), "{wedged}");
    assert!(wedged.contains("not RUNNING"), "{wedged}");
    let stop = r.devices[0]
        .cases
        .iter()
        .find(|c| c.name == "stop-and-back")
        .unwrap();
    assert!(stop
        .notes
        .iter()
        .any(|n| n.starts_with("reset of the device after the case failed")));
    let fresh = r.devices[0]
        .cases
        .iter()
        .find(|c| c.name == "fresh")
        .unwrap();
    assert_eq!(fresh.outcome, Outcome::Error);
    assert!(fresh
        .reason
        .as_deref()
        .unwrap()
        .starts_with("device wedged: "));
    assert!(fresh.steps.is_empty(), "a case ran on a wedged device");
}

#[test]
fn an_unusable_device_is_reported_once_and_exits_4() {
    let dir = cases(&[("fresh.yaml", FRESH)]);
    let out = tempfile::tempdir().unwrap();
    let o = run(
        &["--device", "sim:fault=no-such-fault"],
        dir.path(),
        out.path(),
    );
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let stderr = text(&o.stderr);
    let mentions = stderr.lines().filter(|l| l.contains("no-such-fault"));
    assert_eq!(mentions.count(), 1, "{stderr}");
    let r = results(out.path());
    let case = &r.devices[0].cases[0];
    assert_eq!(case.outcome, Outcome::Ignored);
    assert!(case
        .reason
        .as_deref()
        .unwrap()
        .contains("unknown simulator fault"));
}

#[test]
fn ktap_goes_to_stdout_and_progress_to_stderr() {
    let dir = cases(&[("fresh.yaml", FRESH)]);
    let out = tempfile::tempdir().unwrap();
    let o = run(&["--format", "ktap"], dir.path(), out.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(stdout.starts_with("KTAP version 1\n"), "{stdout}");
    assert!(stdout.contains("ok 1 "), "{stdout}");
    assert!(text(&o.stderr).contains("test result: ok"));
}

/// Whether a child process of `parent` has `arg` on its command line.
fn child_with_arg(parent: u32, arg: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let dir = p.path();
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| {
                let (_, rest) = s.rsplit_once(')')?;
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        ppid == Some(parent)
            && std::fs::read(dir.join("cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
    })
}

#[test]
fn sigterm_stops_the_run_and_the_journal_still_renders() {
    let dir = cases(&[("a.yaml", FRESH), ("b.yaml", ENDLESS), ("c.yaml", STOP)]);
    let out = tempfile::tempdir().unwrap();
    let mut child = bin()
        .arg("--cases")
        .arg(dir.path())
        .arg("--out")
        .arg(out.path())
        .args(["--test-threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = out.path().join("results.jsonl");
    // Once its process runs, `endless` has begun; the signal cuts it (a
    // lab's watchdog would not wait for it).
    while !child_with_arg(child.id(), "b.yaml") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before `endless` was seen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));

    let r = results(out.path());
    assert_eq!(r.meta.interrupted.as_deref(), Some("SIGTERM"));
    let cut = r.devices[0]
        .cases
        .iter()
        .find(|c| c.name == "endless")
        .unwrap();
    assert_eq!(cut.outcome, Outcome::Error);
    let why = cut.reason.as_deref().unwrap();
    assert!(
        why.contains("interrupted (SIGTERM)") && why.contains("the case was cut"),
        "{why}"
    );
    let stop = r.devices[0]
        .cases
        .iter()
        .find(|c| c.name == "stop-and-back")
        .unwrap();
    assert_eq!(stop.outcome, Outcome::Ignored);
    assert!(stop.reason.as_deref().unwrap().contains("interrupted"));

    let rendered: PathBuf = out.path().join("again");
    std::fs::create_dir(&rendered).unwrap();
    let o = bin()
        .arg("report")
        .arg(&journal)
        .arg("--junit")
        .arg(rendered.join("junit.xml"))
        .arg("--html")
        .arg(rendered.join("report.html"))
        .arg("--ktap")
        .arg(rendered.join("results.ktap"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let junit = std::fs::read_to_string(rendered.join("junit.xml")).unwrap();
    assert!(junit.contains("endless"), "{junit}");
    assert!(rendered.join("report.html").is_file());
    assert!(text(&o.stdout).contains("pass"));
}
