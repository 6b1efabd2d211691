//! The lab integration under lab/: the LAVA test definition run the way
//! LAVA runs it (with a stand-in `lava-test-case`), its KTAP parser, and
//! the kselftest wrapper, all against the simulator.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;

#[path = "../../reports/tests/support/tool.rs"]
mod tool;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vfio-migtest")
}

/// Whether python3, which runs the LAVA parser, is there (else a warning,
/// or a failure where tools are required).
fn have_python() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    tool::present(found, "python3", "apt-get install python3")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A command with no `VFIO_MIGTEST_*` of the caller's environment.
fn clean(mut cmd: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("VFIO_MIGTEST") {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestDefinition {
    metadata: Metadata,
    params: BTreeMap<String, String>,
    run: Run,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    format: String,
    description: String,
    maintainer: Vec<String>,
    os: Vec<String>,
    scope: Vec<String>,
    devices: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Run {
    steps: Vec<String>,
}

fn definition() -> TestDefinition {
    definition_at("lab/lava/vfio-migtest.yaml")
}

fn definition_at(file: &str) -> TestDefinition {
    let path = repo().join(file);
    let yaml = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What test-definitions' own validator requires of a definition.
fn check_metadata(d: &TestDefinition) {
    let m = &d.metadata;
    assert!(!m.name.is_empty() && !m.name.contains(char::is_whitespace));
    assert_eq!(m.format, "Lava-Test Test Definition 1.0");
    for (field, empty) in [
        ("description", m.description.is_empty()),
        ("maintainer", m.maintainer.is_empty()),
        ("os", m.os.is_empty()),
        ("scope", m.scope.is_empty()),
        ("devices", m.devices.is_empty()),
    ] {
        assert!(!empty, "metadata.{field} is empty");
    }
}

#[test]
fn the_lava_definition_is_well_formed() {
    let d = definition();
    check_metadata(&d);
    for param in [
        "DEVICES",
        "DESTINATION",
        "INCOMPATIBLE",
        "EXPECT",
        "SKIP_INSTALL",
        "VFIO_MIGTEST",
        "ARGS",
        "OUTPUT",
    ] {
        assert!(d.params.contains_key(param), "params.{param} is missing");
    }
    assert!(d.run.steps.iter().any(|s| s.contains("--format ktap")));
    assert!(d.run.steps.iter().any(|s| s.contains("ktap-to-lava.py")));
}

/// Runs the definition's steps as LAVA's generated run.sh does: the
/// parameters as shell variables (defaults overridden by the job's), then
/// every step, under `set -e`, from the top of the repository. Returns the
/// `lava-test-case` calls.
fn lava_run(params: &[(&str, &str)]) -> Vec<String> {
    let d = definition();
    let tmp = tempfile::tempdir().unwrap();
    let fake_bin = tmp.path().join("bin");
    std::fs::create_dir(&fake_bin).unwrap();
    let calls = tmp.path().join("calls");
    let fake = fake_bin.join("lava-test-case");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = tmp.path().join("out");
    let out_text = out.display().to_string();
    let mut values: BTreeMap<&str, &str> = d
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    values.insert("SKIP_INSTALL", "true");
    values.insert("VFIO_MIGTEST", bin());
    values.insert("OUTPUT", &out_text);
    values.extend(params.iter().copied());
    let mut script = String::from("set -e\n");
    for (k, v) in &values {
        script.push_str(&format!("{k}='{v}'\n"));
    }
    for step in &d.run.steps {
        script.push_str(step);
        script.push('\n');
    }
    let mut cmd = clean(Command::new("sh"));
    cmd.arg("-c").arg(&script).current_dir(repo()).env(
        "PATH",
        format!(
            "{}:{}",
            fake_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "run.sh failed: {}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(out.join("results.json").exists());
    std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The script LAVA's run.sh amounts to: the parameters as shell variables
/// (the job's over the defaults), then every step under `set -e`.
fn run_script(d: &TestDefinition, params: &[(&str, &str)]) -> String {
    let mut values: BTreeMap<&str, &str> = d
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    values.extend(params.iter().copied());
    let mut script = String::from("set -e\n");
    for (k, v) in &values {
        script.push_str(&format!("{k}='{v}'\n"));
    }
    for step in &d.run.steps {
        script.push_str(step);
        script.push('\n');
    }
    script
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Stand-ins for LAVA's MultiNode helpers that behave as LAVA's do: a
/// message sent by one node is seen by the other's `lava-wait`, which
/// blocks until it is there and leaves its `key=value` pairs in the node's
/// `$LAVA_MULTI_NODE_CACHE`; `lava-role` prints the node's role; and
/// `lava-test-case` records its arguments, per node.
fn multinode_helpers(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let messages = dir.join("messages");
    std::fs::create_dir(&messages).unwrap();
    let m = messages.display();
    write_script(&bin.join("lava-role"), "#!/bin/sh\necho \"$NODE_ROLE\"\n");
    write_script(
        &bin.join("lava-send"),
        &format!(
            "#!/bin/sh\nid=\"$1\"; shift\ntmp=\"{m}/.$id.$$\"\n: > \"$tmp\"\nfor kv in \"$@\"; do echo \"$kv\" >> \"$tmp\"; done\nmv \"$tmp\" \"{m}/$id\"\n"
        ),
    );
    // LAVA's lava-wait waits as long as the job lets it; this one gives up
    // after ten minutes so that a broken definition fails the test.
    write_script(
        &bin.join("lava-wait"),
        &format!(
            "#!/bin/sh\nn=0\nwhile [ ! -e \"{m}/$1\" ]; do sleep 0.1; n=$((n+1)); [ $n -lt 6000 ] || exit 1; done\ncp \"{m}/$1\" \"$LAVA_MULTI_NODE_CACHE\"\n"
        ),
    );
    write_script(
        &bin.join("lava-test-case"),
        "#!/bin/sh\necho \"$*\" >> \"$NODE_CALLS\"\n",
    );
    bin
}

#[test]
fn the_multinode_definition_migrates_between_its_roles() {
    if !have_python() {
        return;
    }
    let d = definition_at("lab/lava/vfio-migtest-multinode.yaml");
    check_metadata(&d);
    let steps = d.run.steps.join("\n");
    assert!(steps.contains("lava-role") && steps.contains("live-migration.py"));
    let tmp = tempfile::tempdir().unwrap();
    let bin = multinode_helpers(tmp.path());
    let spec = "sim:size=16MiB,precopy=4MiB,dirty=2";
    let nodes: Vec<_> = ["destination", "source"]
        .into_iter()
        .map(|role| {
            let node = tmp.path().join(role);
            std::fs::create_dir(&node).unwrap();
            let out = node.join("output").display().to_string();
            let script = run_script(
                &d,
                &[
                    ("DEVICE", spec),
                    ("PORT", "0"),
                    ("ADDRESS", "127.0.0.1"),
                    ("SKIP_INSTALL", "true"),
                    ("VFIO_MIGTEST", bin_path()),
                    ("OUTPUT", &out),
                ],
            );
            let calls = node.join("calls");
            let child = clean(Command::new("sh"))
                .arg("-c")
                .arg(&script)
                .current_dir(repo())
                .env("NODE_ROLE", role)
                .env("NODE_CALLS", &calls)
                .env("LAVA_MULTI_NODE_CACHE", node.join("cache"))
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        bin.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (role, child, calls, node)
        })
        .collect();
    for (role, child, calls, node) in nodes {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{role}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let calls = std::fs::read_to_string(&calls).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(
            lines[0],
            format!("live-migration-{role} --result pass"),
            "{role}: {calls}{}",
            text(&o.stderr)
        );
        for (what, units) in [
            ("throughput", "MB/s"),
            ("precopy-iterations", "iterations"),
            ("downtime", "ms"),
        ] {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("{role}-{what} --result pass --measurement ")))
                .unwrap_or_else(|| panic!("{role}: no {what}: {calls}"));
            assert!(line.ends_with(&format!(" --units {units}")), "{line}");
            let value: f64 = line.split(' ').nth(4).unwrap().parse().unwrap();
            assert!(value >= 0.0, "{line}");
        }
        let record = std::fs::read_to_string(
            node.join("output")
                .join(format!("live-migration-{role}.json")),
        )
        .unwrap();
        assert!(record.contains(r#""result": "pass""#), "{record}");
    }
}

fn bin_path() -> &'static str {
    bin()
}

fn expectations_for_sim(dir: &Path) -> PathBuf {
    let path = dir.join("sim.yaml");
    std::fs::write(
        &path,
        "driver: sim\nknown:\n  - case: dma-logging\n    ids: [V2-LOG-02]\n    reason: told to accept a second START\n",
    )
    .unwrap();
    path
}

#[test]
fn a_lava_run_reports_every_case_and_the_measurements() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let expect = expectations_for_sim(tmp.path());
    // The simulator's clock counts only the latency it is set to take: with
    // none, its downtime would be 0.
    let calls = lava_run(&[
        ("DEVICES", "sim:fault=logging-start-twice,latency=1ms"),
        ("EXPECT", &expect.display().to_string()),
    ]);
    let cases = calls
        .iter()
        .filter(|c| c.starts_with("sim__") && !c.contains("--measurement"))
        .count();
    let catalogue = Command::new(bin()).arg("list").output().unwrap();
    assert_eq!(cases, text(&catalogue.stdout).lines().count(), "{calls:#?}");
    for want in [
        // XFAIL: the failure the expectations file lists.
        "sim__dma-logging --result pass",
        "sim__fsm-every-arc --result pass",
        "sim__v1-without-v2 --result skip",
        "vfio-migtest --result pass",
    ] {
        assert!(calls.iter().any(|c| c == want), "{want}: {calls:#?}");
    }
    for (name, units) in [
        ("downtime", "ms"),
        ("save-throughput", "MB/s"),
        ("resume-throughput", "MB/s"),
    ] {
        let prefix = format!("sim__{name} --result pass --measurement ");
        let line = calls
            .iter()
            .find(|c| c.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {name}: {calls:#?}"));
        let (value, rest) = line[prefix.len()..].split_once(' ').unwrap();
        assert!(value.parse::<f64>().unwrap() > 0.0, "{line}");
        assert_eq!(rest, format!("--units {units}"));
    }
}

#[test]
fn a_fixed_known_failure_fails_the_lava_run() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let expect = expectations_for_sim(tmp.path());
    let calls = lava_run(&[
        ("EXPECT", &expect.display().to_string()),
        ("ARGS", "dma-logging"),
    ]);
    assert_eq!(
        calls
            .iter()
            .filter(|c| !c.contains("--measurement"))
            .collect::<Vec<_>>(),
        // The filter also selects dma-logging-layout, which no
        // expectation names.
        [
            "sim__dma-logging-layout --result pass",
            "sim__dma-logging --result fail",
            "vfio-migtest --result fail"
        ]
    );
}

fn parser(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(repo().join("lab/lava/ktap-to-lava.py"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_parser_maps_every_directive() {
    if !have_python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ktap = tmp.path().join("results.ktap");
    std::fs::write(
        &ktap,
        "KTAP version 1
1..7
# device sim: sim (driver sim, protocols v2)
  KTAP version 1
  1..1
  not ok 1 s1-result
not ok 1 sim__a
ok 2 sim__b
ok 3 sim__c # SKIP requires protocol v1
ok 4 sim__d # XFAIL x.yaml:3:5: known
not ok 5 sim__e # XPASS x.yaml:6:5: fixed
not ok 6 sim__f # TIMEOUT did not finish within 1s
not ok 7 sim__g # ERROR cannot start
# Totals: pass:2 fail:2 xfail:1 xpass:1 skip:1 error:1
",
    )
    .unwrap();
    let ktap = ktap.display().to_string();
    let out = parser(&[&ktap, "--exit-code", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "lava-test-case sim__a --result fail
lava-test-case sim__b --result pass
lava-test-case sim__c --result skip
lava-test-case sim__d --result pass
lava-test-case sim__e --result fail
lava-test-case sim__f --result fail
lava-test-case sim__g --result fail
lava-test-case vfio-migtest --result fail
"
    );
    // Nothing ran; a missing file is said, not fatal.
    let out = parser(&["/nonexistent/results.ktap", "--exit-code", "4"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        "lava-test-case vfio-migtest --result skip\n"
    );
    assert!(text(&out.stderr).contains("cannot read /nonexistent/results.ktap"));
}

fn kselftest(env: &[(&str, &str)]) -> Output {
    let mut cmd = clean(Command::new("sh"));
    cmd.arg(repo().join("lab/kselftest/run_vfio_migtest.sh"))
        .arg("fsm-every-arc")
        .envs(env.iter().copied());
    cmd.output().unwrap()
}

#[test]
fn the_kselftest_wrapper_speaks_ktap_and_kselftest_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().display().to_string();
    let base = [
        ("VFIO_MIGTEST", bin()),
        ("VFIO_MIGTEST_OUT", out_dir.as_str()),
    ];
    let ok = kselftest(&base);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let stdout = text(&ok.stdout);
    assert!(stdout.starts_with("KTAP version 1\n1..1\n"), "{stdout}");
    assert!(stdout.contains("\nok 1 sim__fsm-every-arc\n"), "{stdout}");
    assert!(tmp.path().join("results.json").exists());

    // Devices come from VFIO_MIGTEST_DEVICES; one that does not exist
    // means nothing ran: kselftest's skip.
    let mut env = base.to_vec();
    env.push(("VFIO_MIGTEST_DEVICES", "0000:ff:1f.7"));
    let skip = kselftest(&env);
    assert_eq!(skip.status.code(), Some(4), "{}", text(&skip.stderr));
    assert!(text(&skip.stdout).contains("# SKIP the device 0000:ff:1f.7 cannot be used"));

    // Empty variables, as lab harnesses export unset parameters, are unset.
    let mut env = base.to_vec();
    env.extend([
        ("VFIO_MIGTEST_DEVICES", ""),
        ("VFIO_MIGTEST_DESTINATION", ""),
        ("VFIO_MIGTEST_EXPECT", ""),
        ("VFIO_MIGTEST_SEED", ""),
    ]);
    let empty = kselftest(&env);
    assert_eq!(empty.status.code(), Some(0), "{}", text(&empty.stderr));

    let settings = std::fs::read_to_string(repo().join("lab/kselftest/settings")).unwrap();
    let timeout: u64 = settings
        .trim()
        .strip_prefix("timeout=")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("settings: {settings:?}"));
    assert!(timeout >= 60);
}
