//! A results model with everything a report must show: two devices (the
//! simulator and an mtty mdev), every outcome, errnos, latencies,
//! transfers, v1 iterations, kernel log lines, an elided walk, and text
//! with `<`, `>`, `&` and quotes to prove escaping. Shared by the unit
//! tests and `tests/browser.rs` (which includes this file by path).

use std::collections::BTreeMap;

use results::*;

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

fn loc(file: &str, line: u32, column: u32) -> Option<SourceLoc> {
    Some(SourceLoc {
        file: file.into(),
        line,
        column,
    })
}

struct Steps {
    file: String,
    steps: Vec<StepRecord>,
    now: u64,
}

impl Steps {
    fn new(file: &str) -> Steps {
        Steps {
            file: file.into(),
            steps: Vec::new(),
            now: 0,
        }
    }

    /// Appends a step of `dur` ns that starts `gap` ns after the last one.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        role: &str,
        op: &str,
        args: &str,
        ret: StepReturn,
        state: Option<&str>,
        bytes: u64,
        gap: u64,
        dur: u64,
    ) -> &mut Steps {
        let index = self.steps.len() as u64;
        self.now += gap;
        self.steps.push(StepRecord {
            index,
            role: role.into(),
            op: op.into(),
            args: args.into(),
            ret,
            state: state.map(String::from),
            bytes,
            start_ns: self.now,
            duration_ns: dur,
            location: loc(&self.file, 4 + 2 * index as u32, 5),
        });
        self.now += dur;
        self
    }

    fn set(&mut self, role: &str, from: &str, to: &str, fd: i64, dur: u64) -> &mut Steps {
        self.add(
            role,
            "SET MIG_DEVICE_STATE",
            &format!("{from} -> {to}"),
            StepReturn::Ok(fd),
            Some(to),
            0,
            20 * US,
            dur,
        )
    }

    fn read(&mut self, role: &str, state: &str, asked: u64, got: u64, dur: u64) -> &mut Steps {
        self.add(
            role,
            "read",
            &format!("data_fd, {asked} bytes"),
            StepReturn::Ok(got as i64),
            Some(state),
            got,
            5 * US,
            dur,
        )
    }
}

fn errno(name: &str, errno: i32) -> StepReturn {
    StepReturn::Errno {
        name: name.into(),
        errno,
    }
}

fn check(
    name: &str,
    ids: &[&str],
    strength: Strength,
    verdict: Verdict,
    expected: &str,
    observed: &str,
    at: Option<SourceLoc>,
) -> CheckRecord {
    CheckRecord {
        name: name.into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        strength,
        verdict,
        expected: expected.into(),
        observed: observed.into(),
        location: at,
        known_failure: None,
        qemu: requirements()
            .iter()
            .filter(|r| ids.contains(&r.id.as_str()))
            .filter_map(|r| r.qemu.as_ref().map(|q| q.effect))
            .max(),
    }
}

fn case(name: &str, about: &str, file: &str, protocol: &str, outcome: Outcome) -> CaseResult {
    let mut c = CaseResult::new(name, file, protocol);
    c.about = about.into();
    c.outcome = outcome;
    c
}

fn latencies(arcs: &[(&str, &[u64])]) -> BTreeMap<String, Vec<u64>> {
    arcs.iter()
        .map(|(arc, samples)| (arc.to_string(), samples.to_vec()))
        .collect()
}

fn requirement(id: &str, strength: Strength, summary: &str, source: &str) -> Requirement {
    Requirement {
        id: id.into(),
        strength,
        summary: summary.into(),
        source: source.into(),
        qemu: Some(impact(id)),
    }
}

/// QEMU impacts as the catalogue states them, one per effect the reports show.
fn impact(id: &str) -> QemuImpact {
    let (effect, via, why) = match id {
        "V2-SAVE-02" => (
            QemuEffect::Truncated,
            "hw/vfio/migration.c: vfio_save_block()",
            "ENOMSG reads as \"no data\": the device stream ends early & silently",
        ),
        "V2-PRECOPY-04" => (
            QemuEffect::NeverConverges,
            "hw/vfio/migration.c: vfio_state_pending_exact()",
            "initial_bytes that never falls keeps the pending size above the threshold",
        ),
        "V2-PRECOPY-06" | "V2-PRECOPY-02" | "V2-SAVE-04" => (
            QemuEffect::None,
            "hw/vfio/migration.c: vfio_save_block()",
            "QEMU treats ENOMSG and 0 alike",
        ),
        "V2-SIZE-03" => (
            QemuEffect::Slower,
            "hw/vfio/migration.c: vfio_state_pending_exact()",
            "the downtime exceeds the limit",
        ),
        "KERNEL-02" | "V2-SAVE-01" => (
            QemuEffect::NoSwitchover,
            "hw/vfio/migration.c: vfio_save_complete_precopy()",
            "a call that never returns keeps the guest paused",
        ),
        "V2-RESUME-03" | "V2-FSM-03" => (
            QemuEffect::WrongState,
            "hw/vfio/migration.c: vfio_load_state()",
            "whatever the driver accepts is what the guest runs with",
        ),
        "V2-RESET-01" | "KERNEL-01" => (
            QemuEffect::Aborts,
            "hw/vfio/migration.c: vfio_migration_set_state()",
            "a failed reset is hw_error()",
        ),
        id if id.starts_with("V1-") => (
            QemuEffect::None,
            "hw/vfio/migration.c: vfio_migration_init()",
            "QEMU 8.0 and later speak only protocol v2",
        ),
        _ => (
            QemuEffect::Fails,
            "hw/vfio/migration.c: vfio_migration_set_state()",
            "the SET fails and so does the migration",
        ),
    };
    QemuImpact {
        effect,
        via: via.into(),
        why: why.into(),
    }
}

fn requirements() -> Vec<Requirement> {
    use Strength::*;
    let fsm = "include/uapi/linux/vfio.h: enum vfio_device_mig_state; drivers/vfio/vfio_main.c: vfio_mig_get_next_state()";
    let data = "include/uapi/linux/vfio.h: VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, data_fd";
    vec![
        requirement("V2-FSM-03", Must, "SET completes the whole transition before returning: a GET right after a successful SET reports the requested state", fsm),
        requirement("V2-FSM-07", Must, "every other (current, target) pair among supported states succeeds; combination arcs follow the shortest path that has no saving-group state in its interior", fsm),
        requirement("V2-FSM-08", Must, "exactly the arcs RUNNING→PRE_COPY, RUNNING_P2P→PRE_COPY_P2P, STOP→STOP_COPY, STOP→RESUMING return a new data_fd", fsm),
        requirement("V2-SAVE-01", Must, "in STOP_COPY, read() eventually returns 0 (end of stream), and keeps returning 0; poll() reports readable", data),
        requirement("V2-SAVE-02", Must, "ENOMSG is never returned in STOP_COPY", data),
        requirement("V2-SAVE-03", Must, "the stream is the same bytes however the reader chunks it (1 byte, odd sizes, large buffers)", data),
        requirement("V2-SAVE-04", Df, "positioned reads (pread at an offset) fail (ESPIPE in known drivers) rather than return misplaced data", data),
        requirement("V2-RESUME-01", Must, "a stream saved from a compatible device, written in any chunking, is accepted, and RESUMING→STOP succeeds", data),
        requirement("V2-RESUME-03", Must, "incomplete data (a truncated stream) makes RESUMING→STOP fail; the device stays in RESUMING or goes to ERROR", data),
        requirement("V2-PRECOPY-02", Should, "outside the PRE_COPY states VFIO_MIG_GET_PRECOPY_INFO fails with EINVAL", data),
        requirement("V2-PRECOPY-04", Should, "initial_bytes starts non-zero and decreases as precopy data is read, reaching 0", data),
        requirement("V2-PRECOPY-06", Should, "when initial_bytes and dirty_bytes are both 0, read() fails with ENOMSG (temporary end of stream); returning 0 there is a deviation", data),
        requirement("V2-PRECOPY-08", Must, "precopy data followed by STOP_COPY data forms one stream that resumes correctly", data),
        requirement("V2-SIZE-03", Should, "the bytes read in a STOP_COPY session from STOP do not exceed stop_copy_length", data),
        requirement("V2-LOG-01", Must, "START with zero ranges fails EINVAL; more than PAGE_SIZE/16 ranges fails E2BIG", "include/uapi/linux/vfio.h: VFIO_DEVICE_FEATURE_DMA_LOGGING_START"),
        requirement("V2-RESET-01", Must, "VFIO_DEVICE_RESET from any state returns the device to RUNNING", "include/uapi/linux/vfio.h: VFIO_DEVICE_RESET"),
        requirement("KERNEL-01", Must, "no kernel log line of class WARNING, BUG, Oops, KASAN, UBSAN, lockdep, soft lockup or hung task appears during a case", "kernel log"),
        requirement("KERNEL-02", Must, "no operation blocks past the case's deadline", "vfio-migtest"),
        requirement("V1-SAVE-04", Must, "in stop-and-copy, iterating until pending_bytes reads 0 terminates (bounded iterations) and yields the whole state", "include/uapi/linux/vfio.h (Linux 5.8 to 5.17): struct vfio_device_migration_info"),
        requirement("V1-SAVE-05", Info, "pending_bytes is not required to fall by exactly data_size each round; only 0 means complete", "include/uapi/linux/vfio.h (Linux 5.8 to 5.17): struct vfio_device_migration_info"),
    ]
}

fn fsm_every_arc(role_dur: u64) -> CaseResult {
    let file = "cases/v2/fsm-every-arc.yaml";
    let mut c = case(
        "fsm-every-arc",
        "Every (current, target) pair among supported states succeeds and GET agrees",
        file,
        "v2",
        Outcome::Pass,
    );
    let mut s = Steps::new(file);
    let path = [
        ("RUNNING", "RUNNING_P2P", -1),
        ("RUNNING_P2P", "STOP", -1),
        ("STOP", "STOP_COPY", 6),
        ("STOP_COPY", "STOP", -1),
        ("STOP", "RESUMING", 7),
        ("RESUMING", "STOP", -1),
        ("STOP", "RUNNING_P2P", -1),
        ("RUNNING_P2P", "PRE_COPY_P2P", 8),
        ("PRE_COPY_P2P", "PRE_COPY", -1),
        ("PRE_COPY", "RUNNING", -1),
    ];
    for (from, to, fd) in path {
        s.set("device", from, to, fd, role_dur);
        s.add(
            "device",
            "GET MIG_DEVICE_STATE",
            "",
            StepReturn::Ok(0),
            Some(to),
            0,
            3 * US,
            2 * US,
        );
    }
    c.duration_ns = s.now + 40 * US;
    c.steps = s.steps;
    c.checks = vec![
        check(
            "every-arc-succeeds",
            &["V2-FSM-07"],
            Strength::Must,
            Verdict::Pass,
            "10 of 10 arcs succeed",
            "10 of 10 arcs succeeded",
            loc(file, 3, 1),
        ),
        check(
            "get-reports-target",
            &["V2-FSM-03"],
            Strength::Must,
            Verdict::Pass,
            "GET after SET reports the target",
            "every GET matched",
            loc(file, 3, 1),
        ),
        check(
            "data-fd-on-opening-arcs",
            &["V2-FSM-08"],
            Strength::Must,
            Verdict::Pass,
            "a new data_fd exactly on STOP->STOP_COPY, STOP->RESUMING, RUNNING_P2P->PRE_COPY_P2P",
            "as expected",
            loc(file, 3, 1),
        ),
    ];
    c.latencies = latencies(&[
        (
            "RUNNING>RUNNING_P2P",
            &[role_dur, role_dur + 4 * US, role_dur - US],
        ),
        ("RUNNING_P2P>STOP", &[role_dur + 10 * US]),
        ("STOP>STOP_COPY", &[role_dur * 3, role_dur * 2]),
        ("STOP_COPY>STOP", &[role_dur]),
        ("STOP>RESUMING", &[role_dur + 2 * US]),
        ("RESUMING>STOP", &[role_dur * 2]),
        ("PRE_COPY>RUNNING", &[role_dur]),
    ]);
    c
}

fn sim() -> DeviceResults {
    let mut cases = vec![fsm_every_arc(40 * US)];

    // SHOULD failure: read() returned 0 where ENOMSG was due.
    let file = "cases/v2/precopy-then-stop-copy.yaml";
    let mut c = case(
        "precopy-then-stop-copy",
        "PRE_COPY data followed by STOP_COPY data forms one stream that resumes; <sizes> must add up & \"match\"",
        file,
        "v2",
        Outcome::Warn,
    );
    let mut s = Steps::new(file);
    s.set("device", "RUNNING", "PRE_COPY", 7, 55 * US)
        .add(
            "device",
            "VFIO_MIG_GET_PRECOPY_INFO",
            "data_fd",
            StepReturn::Ok(0),
            Some("PRE_COPY"),
            0,
            10 * US,
            3 * US,
        )
        .read("device", "PRE_COPY", 32768, 32768, 30 * US)
        .read("device", "PRE_COPY", 32768, 32768, 28 * US)
        .read("device", "PRE_COPY", 32768, 0, 4 * US)
        .add(
            "device",
            "pread",
            "data_fd, 4096 bytes at offset 0",
            StepReturn::Ok(4096),
            Some("PRE_COPY"),
            0,
            5 * US,
            6 * US,
        )
        .set("device", "PRE_COPY", "STOP_COPY", -1, 310 * US)
        .read("device", "STOP_COPY", 1 << 20, 1 << 20, 420 * US)
        .read("device", "STOP_COPY", 1 << 20, 1 << 20, 410 * US)
        .read("device", "STOP_COPY", 1 << 20, 1 << 19, 215 * US)
        .read("device", "STOP_COPY", 1 << 20, 0, 3 * US)
        .set("device", "STOP_COPY", "STOP", -1, 35 * US)
        .set("destination", "RUNNING", "RESUMING", 9, 90 * US)
        .add(
            "destination",
            "write",
            "data_fd, 1048576 bytes",
            StepReturn::Ok(1 << 20),
            Some("RESUMING"),
            1 << 20,
            5 * US,
            380 * US,
        )
        .add(
            "destination",
            "write",
            "data_fd, 1048576 bytes",
            StepReturn::Ok(1 << 20),
            Some("RESUMING"),
            1 << 20,
            5 * US,
            370 * US,
        )
        .add(
            "destination",
            "write",
            "data_fd, 589824 bytes",
            StepReturn::Ok(589_824),
            Some("RESUMING"),
            589_824,
            5 * US,
            240 * US,
        )
        .set("destination", "RESUMING", "STOP", -1, 160 * US);
    c.duration_ns = s.now + 100 * US;
    c.steps = s.steps;
    c.checks = vec![
        check(
            "pre-copy-opens-data-fd",
            &["V2-FSM-08"],
            Strength::Must,
            Verdict::Pass,
            "data_fd >= 0",
            "data_fd = 7",
            loc(file, 6, 5),
        ),
        check(
            "initial-bytes-drain",
            &["V2-PRECOPY-04"],
            Strength::Should,
            Verdict::Pass,
            "initial_bytes > 0, falling to 0",
            "65536 -> 0",
            loc(file, 9, 7),
        ),
        check(
            "end-of-precopy-is-enomsg",
            &["V2-PRECOPY-06"],
            Strength::Should,
            Verdict::Fail,
            "read() < 0 && errno == ENOMSG once initial_bytes == 0 && dirty_bytes == 0",
            "read() returned 0 (end of stream) at 65536 bytes",
            loc(file, 12, 7),
        ),
        check(
            "pread-is-refused",
            &["V2-SAVE-04"],
            Strength::Df,
            Verdict::Fail,
            "pread() fails (ESPIPE)",
            "pread() returned 4096 bytes",
            loc(file, 14, 7),
        ),
        check(
            "stop-copy-within-estimate",
            &["V2-SIZE-03"],
            Strength::Should,
            Verdict::Pass,
            "<= stop_copy_length (4194304)",
            "2621440 (62.5 % of the estimate)",
            loc(file, 17, 7),
        ),
        check(
            "stream-resumes",
            &["V2-PRECOPY-08", "V2-RESUME-01"],
            Strength::Must,
            Verdict::Pass,
            "RESUMING -> STOP succeeds",
            "succeeded",
            loc(file, 21, 5),
        ),
    ];
    c.latencies = latencies(&[
        ("RUNNING>PRE_COPY", &[55 * US]),
        ("PRE_COPY>STOP_COPY", &[310 * US]),
        ("STOP_COPY>STOP", &[35 * US]),
        ("RUNNING>RESUMING", &[90 * US]),
        ("RESUMING>STOP", &[160 * US]),
    ]);
    c.transfers = vec![
        Transfer {
            role: "device".into(),
            direction: Direction::Save,
            bytes: 2_686_976,
            duration_ns: 1_107 * US,
            chunk: 0,
            downtime_ns: Some(1_850 * US),
        },
        Transfer {
            role: "destination".into(),
            direction: Direction::Resume,
            bytes: 2_686_976,
            duration_ns: 1_005 * US,
            chunk: 1 << 20,
            downtime_ns: None,
        },
    ];
    c.notes = vec![
        "the device returns end of stream (0) instead of ENOMSG at the end of PRE_COPY data".into(),
    ];
    cases.push(c);

    // Timeout in the known-dangerous arc.
    let file = "cases/v2/fsm-dangerous.yaml";
    let mut c = case(
        "stop-copy-to-pre-copy",
        "STOP_COPY -> PRE_COPY fails with EINVAL (hangs kernels without the vfio_mig_get_next_state() fix)",
        file,
        "v2",
        Outcome::Timeout,
    );
    let mut s = Steps::new(file);
    s.set("device", "RUNNING", "STOP", -1, 45 * US)
        .set("device", "STOP", "STOP_COPY", 6, 120 * US);
    c.steps = s.steps;
    c.duration_ns = 20_000 * MS;
    c.reason = Some("did not finish within its 20 s deadline".into());
    c.stuck_in = Some(format!(
        "SET MIG_DEVICE_STATE STOP_COPY -> PRE_COPY on device at {file}:12:5"
    ));
    c.checks = vec![check(
        "set-returns-before-deadline",
        &["KERNEL-02"],
        Strength::Must,
        Verdict::Fail,
        "SET returns within 20 s",
        "still blocked after 20 s",
        loc(file, 12, 5),
    )];
    cases.push(c);

    // Harness error.
    let mut c = case(
        "dirty-logging-ranges",
        "DMA logging START rejects empty, excessive and overlapping ranges",
        "cases/v2/log-ranges.yaml",
        "v2",
        Outcome::Error,
    );
    c.reason = Some("cannot map the DMA range: mmap of 2 MiB failed with ENOMEM".into());
    c.duration_ns = 2 * MS;
    cases.push(c);

    // v1 save with iterations.
    let file = "cases/v1/stop-and-copy-drains.yaml";
    let mut c = case(
        "v1-stop-and-copy-drains",
        "Iterating until pending_bytes reads 0 terminates and yields the whole state",
        file,
        "v1",
        Outcome::Pass,
    );
    let mut s = Steps::new(file);
    s.add(
        "device",
        "write device_state",
        "_SAVING (0b010)",
        StepReturn::Ok(4),
        Some("_SAVING"),
        0,
        10 * US,
        60 * US,
    );
    let mut pending: u64 = 4 << 20;
    while pending > 0 {
        let size = pending.min(458_752);
        c.v1_iterations.push(V1Iteration {
            pending_bytes: pending,
            data_offset: 4096,
            data_size: size,
        });
        s.add(
            "device",
            "read pending_bytes",
            "",
            StepReturn::Ok(8),
            Some("_SAVING"),
            0,
            4 * US,
            2 * US,
        )
        .add(
            "device",
            "pread data",
            &format!("{size} bytes at data_offset 4096"),
            StepReturn::Ok(size as i64),
            Some("_SAVING"),
            size,
            2 * US,
            120 * US,
        );
        pending = pending.saturating_sub(size + 4096);
    }
    c.v1_iterations.push(V1Iteration {
        pending_bytes: 0,
        data_offset: 4096,
        data_size: 0,
    });
    s.add(
        "device",
        "write device_state",
        "stop (0b000)",
        StepReturn::Ok(4),
        Some("stop"),
        0,
        10 * US,
        25 * US,
    );
    c.duration_ns = s.now + 30 * US;
    c.steps = s.steps;
    c.checks = vec![
        check(
            "drain-terminates",
            &["V1-SAVE-04"],
            Strength::Must,
            Verdict::Pass,
            "pending_bytes reaches 0 within 100000 iterations",
            "0 after 10 iterations",
            loc(file, 5, 5),
        ),
        check(
            "pending-falls-by-data-size",
            &["V1-SAVE-05"],
            Strength::Info,
            Verdict::Fail,
            "pending_bytes falls by data_size each round",
            "falls by data_size + 4096",
            loc(file, 5, 5),
        ),
    ];
    c.notes = vec!["freeze point: the state is frozen when _RUNNING is cleared (before the first pending_bytes read)".into()];
    cases.push(c);

    // A long random walk, elided.
    let file = "walks/random-walk.yaml";
    let mut c = case(
        "random-walk-10000",
        "10,000 random SETs; every GET agrees with the reference model",
        file,
        "v2",
        Outcome::Pass,
    );
    c.seed = Some(0x5eed);
    let states = [
        "RUNNING",
        "STOP",
        "STOP_COPY",
        "STOP",
        "RUNNING_P2P",
        "PRE_COPY_P2P",
        "PRE_COPY",
        "RUNNING",
    ];
    let mut s = Steps::new(file);
    for i in 0..40 {
        let from = states[i % (states.len() - 1)];
        let to = states[i % (states.len() - 1) + 1];
        s.set("device", from, to, -1, (30 + (i as u64 * 7) % 50) * US);
        if i == 19 {
            // The elided middle of the walk took this long.
            s.now += 800 * MS;
        }
    }
    c.steps = s.steps;
    for (i, step) in c.steps.iter_mut().enumerate().skip(20) {
        step.index = 9960 + i as u64;
    }
    c.steps_elided = 9960;
    c.duration_ns = s.now + 10 * US;
    c.checks = vec![
        check(
            "every-set-succeeds",
            &["V2-FSM-07"],
            Strength::Must,
            Verdict::Pass,
            "10000 of 10000 SETs succeed",
            "10000 succeeded",
            loc(file, 4, 3),
        ),
        check(
            "get-matches-model",
            &["V2-FSM-03"],
            Strength::Must,
            Verdict::Pass,
            "GET == reference model state",
            "10000 of 10000 matched",
            loc(file, 4, 3),
        ),
    ];
    c.latencies = latencies(&[
        (
            "RUNNING>STOP",
            &[31 * US, 44 * US, 38 * US, 35 * US, 52 * US, 29 * US],
        ),
        ("STOP>STOP_COPY", &[210 * US, 190 * US, 205 * US]),
    ]);
    cases.push(c);

    let mut c = case(
        "resume-incompatible",
        "A stream from an incompatible device type is rejected",
        "cases/v2/resume-incompatible.yaml",
        "v2",
        Outcome::Ignored,
    );
    c.reason = Some("needs a device in the role `incompatible`; none was given".into());
    cases.push(c);

    DeviceResults {
        spec: "sim".into(),
        name: "sim".into(),
        driver: None,
        sysfs_path: None,
        iommu_group: None,
        access: Some("simulator".into()),
        device_type: Some("reference simulator".into()),
        protocols: vec!["v2".into(), "v1".into()],
        migration_flags: Some(7),
        migration_flag_names: Some("STOP_COPY|P2P|PRE_COPY".into()),
        stop_copy_length: Some(4 << 20),
        peers: BTreeMap::from([("destination".to_string(), "sim".to_string())]),
        downtime_ns: Some(1_850 * US),
        wedged: None,
        cases,
    }
}

fn mtty() -> DeviceResults {
    let uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
    let mut cases = vec![fsm_every_arc(12 * US)];

    // MUST failure: ENOMSG in STOP_COPY.
    let file = "cases/v2/save-stop-copy-chunked.yaml";
    let mut c = case(
        "save-stop-copy-chunked",
        "The STOP_COPY stream is the same bytes however the reader chunks it",
        file,
        "v2",
        Outcome::Fail,
    );
    let mut s = Steps::new(file);
    s.set("device", "RUNNING", "STOP", -1, 14 * US)
        .set("device", "STOP", "STOP_COPY", 6, 22 * US);
    for _ in 0..7 {
        s.read("device", "STOP_COPY", 149, 149, 9 * US);
    }
    s.add(
        "device",
        "read",
        "data_fd, 149 bytes",
        errno("ENOMSG", 42),
        Some("STOP_COPY"),
        0,
        5 * US,
        2 * US,
    )
    .add(
        "device",
        "read",
        "data_fd, 149 bytes",
        errno("ENOMSG", 42),
        Some("STOP_COPY"),
        0,
        5 * US,
        2 * US,
    )
    .set("device", "STOP_COPY", "STOP", -1, 9 * US)
    .add(
        "device",
        "SET MIG_DEVICE_STATE",
        "STOP -> ERROR",
        errno("EINVAL", 22),
        Some("STOP"),
        0,
        20 * US,
        4 * US,
    );
    c.duration_ns = s.now + 20 * US;
    c.steps = s.steps;
    c.checks = vec![
        check(
            "no-enomsg-in-stop-copy",
            &["V2-SAVE-02"],
            Strength::Must,
            Verdict::Fail,
            "read() >= 0 in STOP_COPY until end of stream",
            "read(data_fd, 149) = -1 ENOMSG after 1043 of 8472 bytes",
            loc(file, 11, 7),
        ),
        check(
            "stream-ends",
            &["V2-SAVE-01"],
            Strength::Must,
            Verdict::NotApplicable,
            "read() returns 0 at the end",
            "not reached: the read failed first",
            loc(file, 11, 7),
        ),
        check(
            "chunking-independent",
            &["V2-SAVE-03"],
            Strength::Must,
            Verdict::Fail,
            "1-byte, 149-byte and 1 MiB reads give the same stream",
            "149-byte reads stopped at 1043 bytes; 1 MiB read gave 8472",
            loc(file, 14, 7),
        ),
        check(
            "error-state-refused",
            &["V2-FSM-07"],
            Strength::Must,
            Verdict::Pass,
            "SET ERROR fails with EINVAL",
            "EINVAL",
            loc(file, 18, 5),
        ),
        check(
            "kernel-log-clean",
            &["KERNEL-01"],
            Strength::Must,
            Verdict::Pass,
            "no WARNING/BUG/Oops lines",
            "2 lines, none of those classes",
            None,
        ),
    ];
    c.kernel_log = vec![
        "[  812.331042] mtty 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001: mtty_save_read: pos 1043 > filled 1043 & \"ENOMSG\"".into(),
        "[  812.331107] <script>throw new Error('kernel log not escaped')</script> 'quoted' <b>bold?</b>".into(),
    ];
    c.latencies = latencies(&[
        ("RUNNING>STOP", &[14 * US]),
        ("STOP>STOP_COPY", &[22 * US]),
        ("STOP_COPY>STOP", &[9 * US]),
    ]);
    c.transfers = vec![Transfer {
        role: "device".into(),
        direction: Direction::Save,
        bytes: 1043,
        duration_ns: 1_090 * US,
        chunk: 149,
        downtime_ns: Some(1_126 * US),
    }];
    cases.push(c);

    // Known failure.
    let file = "cases/v2/resume-truncated.yaml";
    let mut c = case(
        "resume-truncated",
        "A truncated stream makes RESUMING -> STOP fail",
        file,
        "v2",
        Outcome::Xfail,
    );
    let mut s = Steps::new(file);
    s.set("destination", "RUNNING", "RESUMING", 9, 18 * US)
        .add(
            "destination",
            "write",
            "data_fd, 4236 of 8472 bytes",
            StepReturn::Ok(4236),
            Some("RESUMING"),
            4236,
            5 * US,
            40 * US,
        )
        .set("destination", "RESUMING", "STOP", -1, 11 * US);
    c.duration_ns = s.now + 15 * US;
    c.steps = s.steps;
    let mut known = check(
        "truncated-stream-refused",
        &["V2-RESUME-03"],
        Strength::Must,
        Verdict::Fail,
        "RESUMING -> STOP fails",
        "RESUMING -> STOP succeeded after half a stream",
        loc(file, 9, 5),
    );
    known.known_failure =
        Some("mtty does not check the stream length before leaving RESUMING".into());
    c.checks = vec![known];
    c.reason = Some("expectations/mtty.yaml:4:3: mtty does not check the stream length".into());
    c.transfers = vec![Transfer {
        role: "destination".into(),
        direction: Direction::Resume,
        bytes: 4236,
        duration_ns: 40 * US,
        chunk: 4236,
        downtime_ns: None,
    }];
    cases.push(c);

    // Unexpected pass.
    let file = "cases/v2/precopy-info-outside-precopy.yaml";
    let mut c = case(
        "precopy-info-outside-precopy",
        "VFIO_MIG_GET_PRECOPY_INFO outside PRE_COPY fails with EINVAL",
        file,
        "v2",
        Outcome::Xpass,
    );
    let mut s = Steps::new(file);
    s.set("device", "RUNNING", "STOP", -1, 14 * US)
        .set("device", "STOP", "STOP_COPY", 6, 21 * US)
        .add(
            "device",
            "VFIO_MIG_GET_PRECOPY_INFO",
            "data_fd",
            errno("EINVAL", 22),
            Some("STOP_COPY"),
            0,
            5 * US,
            2 * US,
        )
        .set("device", "STOP_COPY", "RUNNING", -1, 16 * US);
    c.duration_ns = s.now + 15 * US;
    c.steps = s.steps;
    let mut xpass = check(
        "einval-outside-precopy",
        &["V2-PRECOPY-02"],
        Strength::Should,
        Verdict::Pass,
        "EINVAL",
        "EINVAL",
        loc(file, 8, 7),
    );
    xpass.known_failure = Some("older mtty returned 0 here".into());
    c.checks = vec![xpass];
    c.reason = Some("expectations/mtty.yaml:9:3: older mtty returned 0 here".into());
    cases.push(c);

    let mut c = case(
        "v1-stop-and-copy-drains",
        "Iterating until pending_bytes reads 0 terminates and yields the whole state",
        "cases/v1/stop-and-copy-drains.yaml",
        "v1",
        Outcome::Ignored,
    );
    c.reason = Some("requires protocol v1; the device speaks v2".into());
    cases.push(c);

    DeviceResults {
        spec: uuid.into(),
        name: uuid.into(),
        driver: Some("mtty".into()),
        sysfs_path: Some(format!("/sys/bus/mdev/devices/{uuid}")),
        iommu_group: Some(12),
        access: Some("cdev".into()),
        device_type: Some("mtty-2".into()),
        protocols: vec!["v2".into()],
        migration_flags: Some(7),
        migration_flag_names: Some("STOP_COPY|P2P|PRE_COPY".into()),
        stop_copy_length: Some(8472),
        peers: BTreeMap::from([(
            "destination".to_string(),
            "f5c9b7c6-1d7a-4c1e-9a43-2b1f0e6d7a52".to_string(),
        )]),
        downtime_ns: Some(1_126 * US),
        wedged: None,
        cases,
    }
}

pub fn fixture() -> RunResults {
    RunResults {
        schema: SCHEMA_VERSION,
        meta: RunMeta {
            tool_version: "0.1.0".into(),
            kernel_release: "6.12.38+deb13-amd64".into(),
            host: "lab-07".into(),
            started: "2025-03-14T09:26:53Z".into(),
            finished: Some("2025-03-14T09:27:31Z".into()),
            command_line: [
                "vfio-migtest",
                "run",
                "--device",
                "sim",
                "--device",
                "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
                "--include-dangerous",
                "--out",
                "out/",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            seed: 42,
            strict: false,
            include_dangerous: true,
            consumer: None,
            interrupted: None,
            notes: vec!["/dev/kmsg is not readable: kernel warnings are not watched".into()],
        },
        requirements: requirements(),
        devices: vec![sim(), mtty()],
    }
}
