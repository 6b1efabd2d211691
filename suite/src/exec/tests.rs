//! The executor's measurements (latency, transfers, downtime), its data
//! buffer, and check aggregation, against the simulator.

use super::*;
use crate::device::open;
use crate::scenario::load_str;
use results::{Direction, Transfer};

fn scenario(steps: &str) -> Scenario {
    let text = format!("name: t\nabout: t\nrequires: {{ devices: 2 }}\nsteps:\n{steps}");
    load_str(&text, "t.yaml").unwrap()
}

/// Runs `steps` on two simulators with `spec`; returns the events.
fn events(spec: &str, steps: &str, opts: &ExecOptions) -> Vec<Event> {
    let mut dev = open(spec).unwrap();
    let mut dst = open(spec).unwrap();
    let mut out = Vec::new();
    run(
        &scenario(steps),
        Devices {
            device: dev.as_mut(),
            destination: Some(dst.as_mut()),
            incompatible: None,
        },
        opts,
        &mut |e| out.push(e),
    );
    out
}

fn transfers(events: &[Event]) -> Vec<&Transfer> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Transfer(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn failures(events: &[Event]) -> Vec<&CheckRecord> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Check(c) if c.verdict == Verdict::Fail => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_successful_set_records_its_latency() {
    let ev = events(
        "sim",
        "  - set_state: STOP\n  - set_state: ERROR\n  - set_state: RUNNING\n",
        &ExecOptions::default(),
    );
    let arcs: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Latency { arc, .. } => Some(arc.as_str()),
            _ => None,
        })
        .collect();
    // The refused SET to ERROR has no latency.
    assert_eq!(arcs, ["RUNNING>STOP", "STOP>RUNNING"]);
}

#[test]
fn saves_and_resumes_record_bytes_and_the_downtime() {
    let stream_len = 80 + 24 + 16 * (24 + 4096);
    let ev = events(
        "sim:latency=5ms",
        "  - set_state: STOP\n  - save: { into: s }\n  - on: destination\n    resume: { from: s }\n",
        &ExecOptions::default(),
    );
    assert!(failures(&ev).is_empty(), "{:?}", failures(&ev));
    let t = transfers(&ev);
    assert_eq!(t.len(), 2);
    assert_eq!(
        (t[0].direction, t[0].role.as_str()),
        (Direction::Save, "device")
    );
    assert_eq!((t[0].bytes, t[0].chunk), (stream_len, 1 << 20));
    // From RUNNING -> STOP to the end of the stream, on the simulator's
    // clock: the SETs it took (5 ms each), and nothing of the host's time.
    let downtime = t[0]
        .downtime_ns
        .expect("a save from RUNNING has a downtime");
    assert!(
        downtime >= 5_000_000 && downtime.is_multiple_of(5_000_000),
        "{downtime}"
    );
    assert_eq!(
        (t[1].direction, t[1].role.as_str(), t[1].bytes),
        (Direction::Resume, "destination", stream_len)
    );
    assert_eq!(t[1].downtime_ns, None);
}

#[test]
fn precopy_downtime_starts_when_the_device_stops() {
    let ev = events(
        "sim:precopy=8KiB,latency=5ms",
        "  - set_state: PRE_COPY
  - read: { until: end_of_precopy }
  - sleep: 20ms
  - set_state: STOP_COPY
  - read: { until: eof }
",
        &ExecOptions::default(),
    );
    let t = transfers(&ev);
    assert_eq!(t.len(), 1, "only the STOP_COPY read is a transfer");
    let downtime = t[0].downtime_ns.unwrap();
    // PRE_COPY runs: the 20 ms before STOP_COPY are not downtime, the
    // PRE_COPY -> STOP_COPY SET is.
    assert_eq!(downtime, 5_000_000);
}

#[test]
fn the_destinations_arcs_out_of_resuming_count_toward_the_downtime() {
    // QEMU's destination: the stream written, then RESUMING -> RUNNING in
    // one SET. slow-load makes that SET take 400 ms, over the 300 ms
    // budget; the arc limit is set far away so only the sum can catch it.
    let opts = ExecOptions {
        arc_latency_limit: Duration::from_secs(3600),
        ..ExecOptions::default()
    };
    let ev = events(
        "sim:fault=slow-load",
        "  - set_state: STOP
  - set_state: STOP_COPY
  - qemu_stop_copy: { into: s }
  - set_state: STOP
  - on: destination
    set_state: RESUMING
  - on: destination
    write: { from: s }
  - on: destination
    close_data_fd:
  - on: destination
    set_state: RUNNING
",
        &opts,
    );
    let over: Vec<&CheckRecord> = failures(&ev)
        .into_iter()
        .filter(|c| c.ids == ["V2-TIME-02"])
        .collect();
    assert_eq!(over.len(), 1, "{:?}", failures(&ev));
    let observed = &over[0].observed;
    assert!(
        observed.contains("source ") && observed.contains("(RESUMING -> RUNNING)"),
        "{observed}"
    );
    let (total, destination) = observed
        .split_once(" ms in all")
        .zip(observed.split_once("+ destination "))
        .map(|((t, _), (_, d))| (t, d.split_once(" ms").unwrap().0))
        .unwrap();
    assert!(total.parse::<f64>().unwrap() >= 400.0, "{observed}");
    assert!(destination.parse::<f64>().unwrap() >= 400.0, "{observed}");
}

#[test]
fn the_simulators_timing_findings_do_not_depend_on_the_host() {
    // Host time (here a sleep) between the stop and the stream's end is
    // not the simulator's: its clock counts only what it is set to take,
    // so a loaded host cannot make the clean simulator slow.
    let opts = ExecOptions {
        arc_latency_limit: Duration::from_millis(1),
        downtime_budget: Duration::from_millis(1),
        ..ExecOptions::default()
    };
    let ev = events(
        "sim",
        "  - set_state: STOP
  - sleep: 50ms
  - set_state: STOP_COPY
  - read: { until: eof }
",
        &opts,
    );
    assert!(failures(&ev).is_empty(), "{:?}", failures(&ev));
    assert_eq!(transfers(&ev)[0].downtime_ns, Some(0));
    // Its configured latency is what it takes.
    let ev = events(
        "sim:latency=2ms",
        "  - set_state: STOP\n  - set_state: STOP_COPY\n  - read: { until: eof }\n",
        &opts,
    );
    let ids: Vec<&[String]> = failures(&ev).iter().map(|c| c.ids.as_slice()).collect();
    assert!(ids.contains(&&["V2-TIME-01".to_string()][..]), "{ids:?}");
    assert!(ids.contains(&&["V2-TIME-02".to_string()][..]), "{ids:?}");
    assert_eq!(transfers(&ev)[0].downtime_ns, Some(4_000_000));
}

#[test]
fn the_data_buffer_is_allocated_once_and_never_grown_past_the_stream() {
    let sc = scenario(
        "  - set_state: STOP
  - save: { into: s, chunk: 4KiB }
  - on: destination
    resume: { from: s, chunk: 1GiB }
",
    );
    let opts = ExecOptions {
        buffer_size: 4096,
        ..ExecOptions::default()
    };
    let mut dev = open("sim").unwrap();
    let mut dst = open("sim").unwrap();
    let mut sink = |_| {};
    let mut exec = Exec::new(
        Protocol::V2,
        Devices {
            device: dev.as_mut(),
            destination: Some(dst.as_mut()),
            incompatible: None,
        },
        &opts,
        &mut sink,
        Instant::now(),
        1,
    );
    exec.prepare().unwrap();
    let at = exec.buf.as_ptr();
    // A 66 KiB stream in 4 KiB reads: the buffer is reused, not replaced.
    exec.steps(&sc.steps[..2], &mut Vec::new()).unwrap();
    assert_eq!((exec.buf.as_ptr(), exec.buf.len()), (at, 4096));
    assert_eq!(exec.buffers["s"].len(), 80 + 24 + 16 * (24 + 4096));
    // A 1 GiB chunk over that stream needs no more than the stream.
    exec.steps(&sc.steps[2..], &mut Vec::new()).unwrap();
    assert_eq!(exec.buf.len() as u64, exec.buffers["s"].len());
    assert!(!exec.failed);
}

#[test]
fn repeated_checks_merge_and_keep_the_first_failure() {
    let opts = ExecOptions::default();
    let mut dev = open("sim").unwrap();
    let mut out = Vec::new();
    let mut sink = |e| out.push(e);
    let mut exec = Exec::new(
        Protocol::V2,
        Devices {
            device: dev.as_mut(),
            destination: None,
            incompatible: None,
        },
        &opts,
        &mut sink,
        Instant::now(),
        1,
    );
    let key = StepKey {
        prefix: "walk".into(),
        loc: None,
    };
    let check = |pass: bool, observed: &str| {
        Check::builtin("state", "V2-FSM-03", pass, "STOP".into(), observed.into())
    };
    exec.check_lazy(&key, "state", true, || check(true, "STOP"));
    // A passing repeat builds nothing.
    exec.check_lazy(&key, "state", true, || unreachable!("no texts for a pass"));
    exec.check_lazy(&key, "state", false, || check(false, "RUNNING"));
    exec.check(&key, check(false, "ERROR"));
    exec.check_lazy(&key, "state", true, || unreachable!("no texts for a pass"));
    assert!(exec.failed);
    exec.finish();
    let records: Vec<(Verdict, String)> = out
        .iter()
        .filter_map(|e| match e {
            Event::Check(c) => Some((c.verdict, c.observed.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        records,
        [
            (Verdict::Pass, "STOP".to_string()),
            (Verdict::Fail, "RUNNING".to_string()),
            (Verdict::Fail, "RUNNING (failed 2 of 5 times)".to_string()),
        ]
    );
}

#[test]
fn a_stream_is_delivered_only_when_every_byte_of_it_was_accepted() {
    use crate::scenario::Mutation;
    let plain = Mutation::default();
    let extra = Mutation {
        extra: 64,
        ..Mutation::default()
    };
    let corrupt = Mutation {
        corrupt: vec![0],
        ..Mutation::default()
    };
    let unfit = |d: &Delivered| matches!(d, Delivered::Unfit(_));
    assert_eq!(Delivered::of(&plain, 100, 100, None), Delivered::Stream);
    // A refused write in the middle: the driver holds a part.
    assert!(unfit(&Delivered::of(&plain, 100, 40, Some(Errno::EFAULT))));
    assert!(unfit(&Delivered::of(&plain, 100, 0, Some(Errno::EFAULT))));
    // Altered streams never fit, accepted or refused.
    assert!(unfit(&Delivered::of(&corrupt, 100, 100, None)));
    assert!(unfit(&Delivered::of(&corrupt, 100, 0, Some(Errno::EFAULT))));
    // The overflow: refused exactly at the end, refused with stream bytes
    // in the refused write, or accepted.
    assert_eq!(
        Delivered::of(&extra, 100, 100, Some(Errno::ENOSPC)),
        Delivered::StreamOverflowRefused
    );
    assert!(unfit(&Delivered::of(&extra, 100, 96, Some(Errno::ENOMEM))));
    assert!(unfit(&Delivered::of(&extra, 100, 120, Some(Errno::ENOSPC))));
    assert!(unfit(&Delivered::of(&extra, 100, 164, None)));
}

#[test]
fn leaving_resuming_after_a_refused_write_must_fail_on_every_arc() {
    let steps = "  - set_state: STOP\n  - save: { into: s }\n  - set_state: RESUMING\n  - write: { from: s, corrupt: [0] }\n  - set_state: RUNNING\n";
    let clean = events("sim", steps, &ExecOptions::default());
    assert!(failures(&clean).is_empty(), "{:?}", failures(&clean));
    let faulty = events(
        "sim:fault=refused-write-loaded",
        steps,
        &ExecOptions::default(),
    );
    let failed = failures(&faulty);
    assert!(
        failed
            .iter()
            .any(|c| c.ids.iter().any(|i| i == "V2-RESUME-04") && c.name.ends_with("result")),
        "{failed:?}"
    );
}

/// Every check suite/requirements.yaml lists under `judges:` is made, on
/// that field, when the built-in catalogue runs on the simulator (v2 with
/// every optional feature, and v1): the list cannot name a check the
/// executor does not make.
#[test]
fn every_listed_output_check_is_made_by_the_catalogue() {
    use crate::device::DeviceSpec;
    let scenarios = crate::scenario::load_all(crate::catalogue::builtin().iter().copied()).unwrap();
    let opts = ExecOptions {
        include_dangerous: true,
        ..ExecOptions::default()
    };
    let settings = RunSettings {
        include_dangerous: true,
        deterministic_stream: true,
    };
    let mut judged = Judged::new();
    for spec in ["sim", "sim:v1"] {
        let spec = DeviceSpec::parse(spec).unwrap();
        let other = spec.incompatible_sim().unwrap();
        let caps = probe_caps(spec.open().unwrap().as_mut());
        let other_caps = probe_caps(other.open().unwrap().as_mut());
        for s in &scenarios {
            if applicable(s, &caps, Some(&caps), Some(&other_caps), settings).is_err() {
                continue;
            }
            let (mut dev, mut dst, mut inc) = (
                spec.open().unwrap(),
                spec.open().unwrap(),
                other.open().unwrap(),
            );
            let devices = Devices {
                device: dev.as_mut(),
                destination: Some(dst.as_mut()),
                incompatible: Some(inc.as_mut()),
            };
            judged.extend(run_judging(s, devices, &opts, &mut |_| {}));
        }
    }
    let missing: Vec<String> = requirements::judged()
        .iter()
        .filter(|j| !judged.iter().any(|(f, id)| *f == j.field && *id == j.id))
        .map(|j| format!("{} by {}", j.field, j.id))
        .collect();
    assert!(
        missing.is_empty(),
        "listed under `judges:` but no check made it: {missing:?}"
    );
    // And no check judges a field the catalogue does not list for it.
    let unlisted: Vec<String> = judged
        .iter()
        .filter(|(f, id)| {
            !requirements::judged()
                .iter()
                .any(|j| j.field == *f && j.id == *id)
        })
        .map(|(f, id)| format!("{f} by {id}"))
        .collect();
    assert!(
        unlisted.is_empty(),
        "checks on output fields missing from `judges:`: {unlisted:?}"
    );
}
