//! End-to-end tests of `probe`, `save`, `resume` and `faults` through the
//! built binary, against the simulator.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Output};

use suite::savefile::SaveHeader;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-migtest"));
    cmd.env_remove("VFIO_MIGTEST_CASES");
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn both(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The header and the stream of a save file.
fn split(file: &Path) -> (SaveHeader, Vec<u8>) {
    let bytes = std::fs::read(file).unwrap();
    let mut r = &bytes[..];
    let (header, len) = SaveHeader::read_from(&mut r).unwrap();
    (header, bytes[len as usize..].to_vec())
}

/// The peak memory a save or resume reported, in MiB.
fn peak_mib(o: &Output) -> f64 {
    let out = text(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.starts_with("peak memory of the"))
        .unwrap_or_else(|| panic!("no peak memory line: {}", both(o)));
    line.rsplit(": ")
        .next()
        .and_then(|v| v.strip_suffix(" MiB"))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn probe_reports_what_each_simulator_supports() {
    let o = run(&["probe", "--device", "sim", "--device", "sim:v1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let devices = report["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let sim = &devices[0];
    assert_eq!(sim["spec"], "sim");
    assert_eq!(sim["driver"], "sim");
    assert_eq!(sim["protocols"], serde_json::json!(["v1", "v2"]));
    assert_eq!(sim["migration_flags"], 7);
    assert_eq!(sim["migration_flag_names"], "STOP_COPY|P2P|PRE_COPY");
    assert_eq!(sim["dma_logging"], true);
    assert_eq!(sim["precopy_info_v2"], true);
    assert_eq!(sim["device_type"], "sim-a");
    assert_eq!(sim["config_space_id"], "1b36:0100");
    assert!(sim["stop_copy_length"].as_u64().unwrap() > 65536);
    assert_eq!(sim["v1_region"]["index"], 9);
    let v1 = &devices[1];
    assert_eq!(v1["protocols"], serde_json::json!(["v1"]));
    assert_eq!(v1["migration_error"], "ENOTTY");
    assert!(v1["dma_logging"].is_null());

    let o = run(&["probe", "--device", "sim", "--device", "sim:fault=nope"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("DEVICE "), "{out}");
    assert!(
        lines[1].starts_with("sim ") && lines[1].contains("STOP_COPY|P2P|PRE_COPY"),
        "{out}"
    );
    assert!(lines[1].ends_with("1b36:0100"), "{out}");
    assert!(
        out.contains("sim:fault=nope: cannot be used:") && out.contains("`nope`"),
        "{out}"
    );
}

#[test]
fn probe_without_a_usable_device_exits_4() {
    let o = run(&["probe", "--device", "sim:fault=nope"]);
    assert_eq!(o.status.code(), Some(4), "{}", both(&o));
    let o = run(&["probe", "--device", "eth0"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(text(&o.stderr).contains("`eth0`"), "{}", both(&o));
    let o = run(&["probe"]);
    if !Path::new("/dev/vfio").is_dir() {
        assert_eq!(o.status.code(), Some(4), "{}", both(&o));
        let err = text(&o.stderr);
        assert!(
            err.starts_with("no usable device: ") && err.contains("/dev/vfio"),
            "{err}"
        );
    } else {
        // A host with VFIO: a table, or what is missing.
        assert!(matches!(o.status.code(), Some(0 | 4)), "{}", both(&o));
        assert!(
            text(&o.stdout).starts_with("DEVICE ") || text(&o.stderr).contains("no usable device"),
            "{}",
            both(&o)
        );
    }
}

#[test]
fn a_resumed_state_saves_again_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vfmt");
    let b = dir.path().join("b.vfmt");
    let c = dir.path().join("c.vfmt");
    let o = run(&["save", "--device", "sim:seed=1", "--file", path(&a)]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert!(
        text(&o.stdout).contains("the device is left in STOP"),
        "{}",
        both(&o)
    );
    let (header, stream) = split(&a);
    assert_eq!(header.driver, "sim");
    assert_eq!(header.device_type, "sim-a");
    assert_eq!(header.migration_flags, 7);
    assert_eq!(header.stream_len, stream.len() as u64);
    assert_eq!(header.stream_checksum, suite::savefile::xxh64(&stream));
    assert!(!header.host.is_empty() && !header.kernel_release.is_empty());

    // Another process, another simulator with another state: the resume
    // replaces it, so its save is the source's stream.
    let o = run(&[
        "resume",
        "--device",
        "sim:seed=2",
        "--file",
        path(&a),
        "--chunk",
        "4097",
        "--resave",
        path(&b),
        "--then",
        "running",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = text(&o.stdout);
    assert!(
        out.contains("checksum") && out.contains("verified"),
        "{out}"
    );
    assert!(out.contains("the device is in RUNNING"), "{out}");
    assert!(out.contains("saved again"), "{out}");
    assert_eq!(split(&b).1, stream);
    let o = run(&["save", "--device", "sim:seed=2", "--file", path(&c)]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_ne!(split(&c).1, stream, "the seeds give different states");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_v1_device_saves_and_resumes_through_the_region_in_the_source_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vfmt");
    let b = dir.path().join("b.vfmt");
    let o = run(&["save", "--device", "sim:v1,seed=1", "--file", path(&a)]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let (header, stream) = split(&a);
    assert_eq!(header.migration_flags, 0, "a v1 file has no v2 flags");
    // Framed chunks: a u64 length, then the bytes, to the end.
    let mut at = 0;
    let mut chunks = 0;
    while at < stream.len() {
        let len = u64::from_le_bytes(stream[at..at + 8].try_into().unwrap()) as usize;
        assert!(len > 0);
        at += 8 + len;
        chunks += 1;
    }
    assert_eq!(at, stream.len());
    assert!(chunks > 1, "{chunks} chunks");

    let o = run(&[
        "resume",
        "--device",
        "sim:v1,seed=2",
        "--file",
        path(&a),
        "--resave",
        path(&b),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    assert_eq!(
        split(&b).1,
        stream,
        "the resumed device saves the same chunks"
    );

    // A v1 file for a v2 device, and the reverse, are refused before the
    // device is touched, even with --force.
    let o = run(&["resume", "--device", "sim", "--file", path(&a), "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        text(&o.stderr).contains("saved with protocol v1"),
        "{}",
        both(&o)
    );
    let v2 = dir.path().join("v2.vfmt");
    let o = run(&["save", "--device", "sim", "--file", path(&v2)]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let o = run(&[
        "resume",
        "--device",
        "sim:v1",
        "--file",
        path(&v2),
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        text(&o.stderr).contains("speaks protocol v1 only"),
        "{}",
        both(&o)
    );

    // A drain that never ends fails at the deadline, naming the rule.
    let o = run(&[
        "save",
        "--device",
        "sim:v1,fault=v1-pending-never-zero",
        "--file",
        path(&b),
        "--timeout",
        "2s",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    assert!(text(&o.stderr).contains("V1-SAVE-04"), "{}", both(&o));
}

#[test]
fn damaged_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vfmt");
    let o = run(&["save", "--device", "sim", "--file", path(&a)]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));

    let mut bytes = std::fs::read(&a).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 1;
    let bad = dir.path().join("bad.vfmt");
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&["resume", "--device", "sim", "--file", path(&bad)]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("bad.vfmt: damaged save file: the stream checksum"),
        "{err}"
    );
    assert!(!err.contains("reset"), "the device is never touched: {err}");

    std::fs::write(&bad, b"#!/bin/sh\necho not a save file\n").unwrap();
    let o = run(&["resume", "--device", "sim", "--file", path(&bad)]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        text(&o.stderr).contains("not a vfio-migtest save file"),
        "{}",
        both(&o)
    );
    let o = run(&["resume", "--device", "sim", "--file", "/nonexistent/x"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        text(&o.stderr).contains("cannot open /nonexistent/x"),
        "{}",
        both(&o)
    );

    // Another device type: refused by the header check...
    let o = run(&["resume", "--device", "sim:type=sim-b", "--file", path(&a)]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("device type: the file was saved from `sim-a`, the destination is `sim-b`")
            && err.contains("--force"),
        "{err}"
    );
    // ... and with --force, by the driver, which is then reset.
    let o = run(&[
        "resume",
        "--device",
        "sim:type=sim-b",
        "--file",
        path(&a),
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("the driver rejected the stream: write() of")
            && err.contains("at byte 0")
            && err.contains("failed with EINVAL"),
        "{err}"
    );
    assert!(err.contains("the device was reset"), "{err}");
}

#[test]
fn driver_failures_and_hangs_are_reported_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.vfmt");
    let o = run(&[
        "save",
        "--device",
        "sim:fault=enomsg-in-stop-copy",
        "--file",
        path(&f),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("failed with ENOMSG") && err.contains("V2-SAVE-02"),
        "{err}"
    );
    assert!(err.contains("the device was reset"), "{err}");

    // SET STOP_COPY never returns; the deadline leaves a slow machine ample
    // time for what comes before it.
    let o = run(&[
        "save",
        "--device",
        "sim:fault=hang-transition",
        "--file",
        path(&f),
        "--timeout",
        "10s",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", both(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("the save did not finish within 10s: stuck in SET STOP_COPY"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let o = run(&[
        "save",
        "--device",
        "sim",
        "--file",
        "/nonexistent/dir/s.vfmt",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    assert!(
        text(&o.stderr).contains("cannot write /nonexistent/dir/s.vfmt"),
        "{}",
        both(&o)
    );
    let o = run(&[
        "save",
        "--device",
        "sim",
        "--file",
        path(&f),
        "--chunk",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
}

#[test]
fn a_gibibyte_streams_through_a_small_process() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.vfmt");
    let spec = "sim:size=1GiB";
    let o = run(&["save", "--device", spec, "--file", path(&f)]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let save_peak = peak_mib(&o);
    let mut file = std::fs::File::open(&f).unwrap();
    let (header, len) = SaveHeader::read_from(&mut file).unwrap();
    assert!(header.stream_len > 1 << 30);
    assert_eq!(
        std::fs::metadata(&f).unwrap().len(),
        len + header.stream_len
    );
    let o = run(&["resume", "--device", spec, "--file", path(&f)]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let resume_peak = peak_mib(&o);
    assert!(
        save_peak < 64.0 && resume_peak < 64.0,
        "peak memory {save_peak} / {resume_peak} MiB"
    );
}

#[test]
fn faults_scores_a_subset() {
    let o = run(&[
        "faults",
        "--fault",
        "enomsg-in-stop-copy",
        "--fault",
        "zero-at-end-of-precopy",
        "--fault",
        "hang-transition",
        // Hanging cases only sleep: more of them at once keeps the test short.
        // Only their deadline is cut, so a slow machine cannot fail the rest.
        "--test-threads",
        "12",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    let row = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {out}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["FAULT", "REQUIREMENT", "EXPECTED", "DETECTED", "BY"]
    );
    assert_eq!(
        row("enomsg-in-stop-copy")[1..4],
        ["V2-SAVE-02", "fail", "yes"]
    );
    let zero = row("zero-at-end-of-precopy");
    assert_eq!(zero[1..4], ["V2-PRECOPY-06", "warn", "yes"]);
    assert!(
        zero[4..]
            .iter()
            .any(|by| by.trim_end_matches(',') == "precopy"),
        "{out}"
    );
    assert_eq!(
        row("hang-transition")[1..4],
        ["KERNEL-02", "timeout", "yes"]
    );
    assert!(out.contains("clean simulator: "), "{out}");
    assert!(out.contains("no false positive"), "{out}");
    let n = suite::requirements::all().len();
    assert_eq!(
        lines[lines.len() - 2..],
        ["detected: 3/3", &format!("requirements covered: {n}/{n}")]
    );
}

#[test]
fn faults_json_and_usage_errors() {
    let o = run(&["faults", "--fault", "data-size-set-accepted", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", both(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["detected"].as_u64(), r["total"].as_u64()),
        (Some(1), Some(1))
    );
    let f = &r["faults"][0];
    assert_eq!(f["name"], "data-size-set-accepted");
    assert_eq!(f["requirement"], "V2-SIZE-02");
    assert_eq!(f["by"], serde_json::json!(["data-size"]));
    assert_eq!(r["clean"]["failed"], serde_json::json!([]));

    let o = run(&["faults", "--fault", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", both(&o));
    let err = text(&o.stderr);
    assert!(err.contains("`nope`") && err.contains("hang-read"), "{err}");
}
