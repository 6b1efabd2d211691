//! The suite's performance figures, each printed with its target. Nothing
//! is asserted: the figures are for people and for the README.
//!
//! ```text
//! cargo bench -p vfio-migtest --bench perf             # 4 GiB streams (about a minute)
//! cargo bench -p vfio-migtest --bench perf -- --quick  # 256 MiB streams, shorter walk
//! cargo bench -p vfio-migtest --bench perf -- walk rss # only these sections
//! ```
//!
//! 1. `sim`: a STOP_COPY stream of the simulator read to the end by the
//!    executor (a `read` step; its events go to JSON lines and back and are
//!    folded, as between a case process and the runner) vs a bare
//!    `data_read` loop on the same simulator, with the same chunk size.
//! 2. `fd`: the same `read` step through the kernel backend's `DataPath`
//!    over a pipe vs dd-like `read(2)` calls on the same kind of pipe.
//! 3. `rss`: peak RSS of a save -> resume -> save -> compare round trip
//!    (`cases/v2/round-trip.yaml`) between two simulators, in a child
//!    process of its own.
//! 4. `walk`: random walk rate on the in-process simulator, one thread.
//! 5. `catalogue`: the default catalogue through the runner, one process
//!    per case, and what that isolation costs per case.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use results::{CaseFold, CaseResult, Direction, Event, Outcome, RunResults};
use suite::device::kernel::DataPath;
use suite::device::{
    open, Access, DataFd, Device, DeviceDescription, DeviceExt, FeatureRequest, PollFlags,
    SharedDataFd,
};
use suite::exec::{self, Devices, ExecOptions, RunSettings};
use suite::scenario::{load_all, load_str, read_dir, Scenario};
use suite::uapi::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// The executor's default buffer, used by both sides of every comparison.
const CHUNK: usize = 1 << 20;
/// Rounds of each side of a ratio; the median is printed.
const ROUNDS: usize = 3;
/// The child-process argument that runs the round trip.
const ROUND_TRIP_CHILD: &str = "--round-trip-child";

const READ_TO_END: &str = "\
name: read-to-end
about: One STOP_COPY stream read to the end in 1 MiB reads
steps:
  - set_state: STOP
  - set_state: STOP_COPY
  - read: { chunk: 1MiB, until: eof }
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == ROUND_TRIP_CHILD) {
        let size = args.get(at + 1).and_then(|s| s.parse().ok()).unwrap_or(GIB);
        round_trip_child(size);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (size, walk_steps) = if quick {
        (256 * MIB, 200_000)
    } else {
        (4 * GIB, 1_000_000)
    };
    // Section names given on the command line select sections; `--bench`
    // (which cargo passes) and other flags are not names.
    let named: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |section: &str| named.is_empty() || named.contains(&section);
    println!(
        "vfio-migtest performance ({} streams, {} CPUs)\n",
        bytes_text(size),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if wanted("sim") {
        data_path_sim(size);
    }
    if wanted("fd") {
        data_path_fd(size);
    }
    if wanted("rss") {
        round_trip_rss(size);
    }
    if wanted("walk") {
        walk_rate(walk_steps);
    }
    if wanted("catalogue") {
        catalogue();
    }
}

/// What happens to each event of a case the bench runs. Every event is
/// folded into a case result, as the runner folds a case process's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Events {
    Folded,
    /// Also written as a JSON line, the case process's share of the work.
    Written,
    /// Written as a JSON line and parsed back before folding: the case
    /// process's and the runner's work on one core.
    RoundTrip,
}

struct RunnerSink {
    fold: CaseFold,
    events: Events,
    line: Vec<u8>,
}

impl RunnerSink {
    fn new(events: Events) -> RunnerSink {
        RunnerSink {
            fold: CaseFold::new(CaseResult::new("", "", "v2")),
            events,
            line: Vec::new(),
        }
    }

    fn apply(&mut self, event: Event) {
        if self.events != Events::Folded {
            self.line.clear();
            serde_json::to_writer(&mut self.line, &event).expect("events serialise");
            self.line.push(b'\n');
        }
        if self.events == Events::RoundTrip {
            let back = serde_json::from_slice(&self.line).expect("events parse back");
            self.fold.apply(back);
        } else {
            self.fold.apply(event);
        }
    }
}

/// Runs `scenario` on `device` (and `destination`) with default options;
/// returns the folded result and the wall time.
fn run_case<'d>(
    scenario: &Scenario,
    device: &'d mut dyn Device,
    destination: Option<&'d mut dyn Device>,
    events: Events,
) -> (CaseResult, Duration) {
    let mut sink = RunnerSink::new(events);
    let t0 = Instant::now();
    exec::run(
        scenario,
        Devices {
            device,
            destination,
            incompatible: None,
        },
        &ExecOptions::default(),
        &mut |e| sink.apply(e),
    );
    let took = t0.elapsed();
    (sink.fold.finish(results::Grading::default()), took)
}

/// Bytes of the (single) save transfer of a case.
fn saved_bytes(r: &CaseResult) -> u64 {
    r.transfers
        .iter()
        .filter(|t| t.direction == Direction::Save)
        .map(|t| t.bytes)
        .sum()
}

fn data_path_sim(size: u64) {
    println!(
        "1. data path, simulator: a {} STOP_COPY stream, reads of 1 MiB",
        bytes_text(size)
    );
    let spec = format!("sim:size={size}");
    let scenario = load_str(READ_TO_END, "bench/read-to-end.yaml").expect("valid scenario");
    let mut bare = Vec::new();
    let mut suite = Vec::new();
    let mut stream_len = 0;
    for _ in 0..ROUNDS {
        let mut dev = open(&spec).expect("simulator spec");
        let t0 = Instant::now();
        dev.set_state(MigState::Stop.raw());
        let fd = dev.set_state(MigState::StopCopy.raw()).data_fd;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        while let Ok(n @ 1..) = dev.data_read(fd, &mut buf) {
            total += n as u64;
        }
        bare.push(t0.elapsed());
        stream_len = total;

        let mut dev = open(&spec).expect("simulator spec");
        let (result, took) = run_case(&scenario, dev.as_mut(), None, Events::RoundTrip);
        assert_eq!(
            saved_bytes(&result),
            total,
            "both loops read the same stream"
        );
        suite.push(took);
    }
    print_ratio(stream_len, &bare, &suite, "bare data_read loop");
}

/// A device whose STOP_COPY data fd is a given fd (a pipe), served by the
/// kernel backend's [`DataPath`]: the executor's `read` step over a real fd
/// without a VFIO device.
struct FdDevice {
    desc: DeviceDescription,
    path: DataPath,
    data_fd: DataFd,
    state: MigState,
}

impl FdDevice {
    fn new(fd: OwnedFd) -> FdDevice {
        let (path, data_fd) = DataPath::over(fd);
        FdDevice {
            desc: DeviceDescription {
                spec: "pipe".into(),
                name: "pipe".into(),
                driver: None,
                sysfs_path: None,
                iommu_group: None,
                access: Access::Simulator,
                device_type: None,
                dma_writes: Vec::new(),
            },
            path,
            data_fd,
            state: MigState::Running,
        }
    }
}

impl Device for FdDevice {
    fn description(&self) -> &DeviceDescription {
        &self.desc
    }

    fn feature(&mut self, req: &mut FeatureRequest) -> Result<(), Errno> {
        let reply = match req.feature() {
            VFIO_DEVICE_FEATURE_MIGRATION => VfioDeviceFeatureMigration {
                flags: VFIO_MIGRATION_STOP_COPY,
            }
            .to_bytes(),
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
                let mut data_fd = -1;
                if req.flags & VFIO_DEVICE_FEATURE_SET != 0 {
                    let target = VfioDeviceFeatureMigState::from_bytes(&req.data).device_state;
                    let next = MigState::from_raw(target).ok_or(Errno::EINVAL)?;
                    if self.state == MigState::Stop && next == MigState::StopCopy {
                        data_fd = self.data_fd;
                    }
                    self.state = next;
                }
                VfioDeviceFeatureMigState {
                    device_state: self.state.raw(),
                    data_fd,
                }
                .to_bytes()
            }
            _ => return Err(Errno::ENOTTY),
        };
        req.data = reply;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }

    fn device_info_raw(&mut self, _buf: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }

    fn region_info_raw(&mut self, _buf: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }

    fn region_read(&mut self, _offset: u64, _buf: &mut [u8]) -> Result<usize, Errno> {
        Err(Errno::EINVAL)
    }

    fn region_write(&mut self, _offset: u64, _buf: &[u8]) -> Result<usize, Errno> {
        Err(Errno::EINVAL)
    }

    fn data_read(&mut self, fd: DataFd, buf: &mut [u8]) -> Result<usize, Errno> {
        self.path.read(fd, buf)
    }

    fn data_write(&mut self, fd: DataFd, buf: &[u8]) -> Result<usize, Errno> {
        self.path.write(fd, buf)
    }

    fn data_pread(&mut self, fd: DataFd, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        self.path.pread(fd, buf, offset)
    }

    fn data_pwrite(&mut self, fd: DataFd, buf: &[u8], offset: u64) -> Result<usize, Errno> {
        self.path.pwrite(fd, buf, offset)
    }

    fn data_poll(
        &mut self,
        fd: DataFd,
        events: PollFlags,
        timeout: Duration,
    ) -> Result<PollFlags, Errno> {
        self.path.poll(fd, events, timeout)
    }

    fn data_ioctl(&mut self, fd: DataFd, request: u64, arg: &mut [u8]) -> Result<i32, Errno> {
        self.path.ioctl(fd, request, arg)
    }

    fn data_cloexec(&mut self, fd: DataFd) -> Result<bool, Errno> {
        self.path.cloexec(fd)
    }

    fn data_close(&mut self, fd: DataFd) -> Result<(), Errno> {
        self.path.close(fd)
    }

    fn share_data_fd(&mut self, fd: DataFd) -> Result<SharedDataFd, Errno> {
        self.path.share(fd)
    }

    fn close_device(&mut self) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }

    fn reopen(&mut self) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }
}

/// A pipe with `size` bytes coming from a writer thread, then end of file.
fn fed_pipe(size: u64) -> (OwnedFd, std::thread::JoinHandle<()>) {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe can be created");
    // Larger pipe buffers mean fewer, larger reads on both sides alike; the
    // default size is kept where the system refuses.
    let _ = nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    let writer = std::thread::spawn(move || {
        let mut out = File::from(write_end);
        let block: Vec<u8> = (0..CHUNK).map(|i| (i * 131 % 251) as u8).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            if out.write_all(&block[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
    });
    (read_end, writer)
}

fn data_path_fd(size: u64) {
    println!(
        "2. data path, real fd: a pipe carrying {}, reads of 1 MiB",
        bytes_text(size)
    );
    let scenario = load_str(READ_TO_END, "bench/read-to-end.yaml").expect("valid scenario");
    let mut raw = Vec::new();
    let mut suite = Vec::new();
    for _ in 0..ROUNDS {
        let (fd, writer) = fed_pipe(size);
        let mut input = File::from(fd);
        let mut buf = vec![0u8; CHUNK];
        let t0 = Instant::now();
        let mut total = 0u64;
        while let Ok(n @ 1..) = input.read(&mut buf) {
            total += n as u64;
        }
        raw.push(t0.elapsed());
        writer.join().expect("writer thread");
        assert_eq!(total, size);

        let (fd, writer) = fed_pipe(size);
        let mut dev = FdDevice::new(fd);
        let (result, took) = run_case(&scenario, &mut dev, None, Events::RoundTrip);
        writer.join().expect("writer thread");
        assert_eq!(
            saved_bytes(&result),
            size,
            "the read step read the whole pipe"
        );
        suite.push(took);
    }
    print_ratio(size, &raw, &suite, "dd-like read(2) loop");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints both sides' median throughput and the median of the per-round
/// ratios (suite / reference throughput).
fn print_ratio(bytes: u64, reference: &[Duration], suite: &[Duration], what: &str) {
    let rate = |d: &Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    let ratios = reference
        .iter()
        .zip(suite)
        .map(|(r, s)| r.as_secs_f64() / s.as_secs_f64())
        .collect();
    println!(
        "   {what:<24} {:>6.2} GB/s\n   executor `read` step     {:>6.2} GB/s\n   ratio {:.3} (target >= 0.9, median of {ROUNDS} rounds)\n",
        median(reference.iter().map(rate).collect()),
        median(suite.iter().map(rate).collect()),
        median(ratios),
    );
}

fn round_trip_rss(size: u64) {
    println!(
        "3. peak RSS: save -> resume -> save -> compare of a {} state (cases/v2/round-trip.yaml)",
        bytes_text(size)
    );
    let exe = std::env::current_exe().expect("the bench knows its path");
    let t0 = Instant::now();
    let out = Command::new(exe)
        .arg(ROUND_TRIP_CHILD)
        .arg(size.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("the bench can run itself");
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().split_once(' ') {
        Some((outcome, hwm)) if out.status.success() => println!(
            "   {outcome} in {:.1} s, peak RSS {} (VmHWM; target <= 128 MiB)\n",
            t0.elapsed().as_secs_f64(),
            bytes_text(hwm.parse::<u64>().unwrap_or(0) * 1024)
        ),
        _ => println!("   the round trip failed ({}): {text}\n", out.status),
    }
}

/// The child side of [`round_trip_rss`]: prints the outcome and VmHWM in KiB.
fn round_trip_child(size: u64) {
    let path = cases_dir().join("v2/round-trip.yaml");
    let text = std::fs::read_to_string(&path).expect("the catalogue has round-trip.yaml");
    let scenario = load_str(&text, "v2/round-trip.yaml").expect("valid scenario");
    let spec = format!("sim:size={size}");
    let mut source = open(&spec).expect("simulator spec");
    let mut destination = open(&spec).expect("simulator spec");
    let (result, _) = run_case(
        &scenario,
        source.as_mut(),
        Some(destination.as_mut()),
        Events::RoundTrip,
    );
    let outcome = match result.outcome {
        Outcome::Pass => "passed",
        _ => "FAILED",
    };
    println!("{outcome} {}", vm_hwm_kib().unwrap_or(0));
}

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn walk_rate(steps: u64) {
    // A small state keeps the simulator's own stream work (the walk loads a
    // saved stream each time it enters RESUMING) out of the suite's figure.
    println!(
        "4. random walk on the in-process simulator (sim:size=4KiB), {steps} transitions, one thread"
    );
    let text = format!(
        "name: walk\nabout: A long walk\nsteps:\n  - walk: {{ steps: {steps}, invalid: true }}\n"
    );
    let scenario = load_str(&text, "bench/walk.yaml").expect("valid scenario");
    let walk = |events| {
        let mut dev = open("sim:size=4KiB").expect("simulator");
        let (result, took) = run_case(&scenario, dev.as_mut(), None, events);
        assert_eq!(
            result.outcome,
            Outcome::Pass,
            "the walk passes on the simulator"
        );
        steps as f64 / took.as_secs_f64()
    };
    let mut folded: Vec<f64> = (0..ROUNDS).map(|_| walk(Events::Folded)).collect();
    folded.sort_by(f64::total_cmp);
    println!(
        "   events folded                     {:>7.0}/s (target >= 200,000/s; median of {ROUNDS}, {:.0} to {:.0})",
        median(folded.clone()),
        folded[0],
        folded[ROUNDS - 1]
    );
    println!(
        "   ... and written as JSON lines     {:>7.0}/s (the case process's share)",
        walk(Events::Written)
    );
    println!(
        "   ... written, parsed back, folded  {:>7.0}/s (case process and runner on one core)\n",
        walk(Events::RoundTrip)
    );
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cases")
}

fn catalogue() {
    println!("5. the default catalogue on the simulator");
    let runner = Path::new(env!("CARGO_BIN_EXE_vfio-migtest"));
    let out = std::env::temp_dir().join(format!("vfio-migtest-bench-{}", std::process::id()));
    let t0 = Instant::now();
    let status = Command::new(runner)
        .args(["run", "--device", "sim", "--quiet", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let wall = t0.elapsed();
    let ran = std::fs::read_to_string(out.join("results.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<RunResults>(&t).ok())
        .map(|r| {
            r.devices
                .iter()
                .flat_map(|d| &d.cases)
                .filter(|c| c.outcome != Outcome::Ignored)
                .count()
        });
    let _ = std::fs::remove_dir_all(&out);
    match (status, ran) {
        (Ok(s), Some(n)) => println!(
            "   vfio-migtest run --device sim: {n} cases, one process each: {:.2} s wall ({s}; target <= 3 s)",
            wall.as_secs_f64()
        ),
        (s, _) => println!(
            "   vfio-migtest run --device sim wrote no results.json ({s:?}): this runner cannot run the catalogue yet"
        ),
    }
    let (n, took) = catalogue_in_process();
    println!(
        "   the same catalogue in this process, one thread: {n} cases in {:.2} s",
        took.as_secs_f64()
    );
    match isolation_overhead(runner) {
        Some(ms) => println!(
            "   isolation overhead: {ms:.2} ms per case (case process start to its first ioctl, median of 20)"
        ),
        None => println!("   isolation overhead: n/a (this runner has no `__case` child command)"),
    }
}

/// Runs every case that applies to `--device sim` in this process, one
/// after the other, on fresh simulators.
fn catalogue_in_process() -> (usize, Duration) {
    let files = read_dir(&cases_dir()).expect("the catalogue is readable");
    let cases =
        load_all(files.iter().map(|(f, t)| (f.as_str(), t.as_str()))).expect("the catalogue loads");
    // As the runner does for simulators: no kernel to hang, every case runs.
    let settings = RunSettings {
        include_dangerous: true,
        deterministic_stream: true,
    };
    let opts = ExecOptions {
        include_dangerous: true,
        ..ExecOptions::default()
    };
    let t0 = Instant::now();
    let mut ran = 0;
    for s in &cases {
        let mut dev = open("sim").expect("simulator");
        let mut dst = open("sim").expect("simulator");
        let mut inc = open("sim:type=sim-other").expect("simulator");
        let caps = exec::probe_caps(dev.as_mut());
        let dcaps = exec::probe_caps(dst.as_mut());
        let icaps = exec::probe_caps(inc.as_mut());
        if exec::applicable(s, &caps, Some(&dcaps), Some(&icaps), settings).is_err() {
            continue;
        }
        let mut sink = RunnerSink::new(Events::RoundTrip);
        exec::run(
            s,
            Devices {
                device: dev.as_mut(),
                destination: Some(dst.as_mut()),
                incompatible: Some(inc.as_mut()),
            },
            &opts,
            &mut |e| sink.apply(e),
        );
        ran += 1;
    }
    (ran, t0.elapsed())
}

/// Median time from starting a case process (`vfio-migtest __case`) on a
/// small case to its first event line, which it writes right before the
/// case's first ioctl.
fn isolation_overhead(runner: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(cases_dir().join("v2/fresh-device.yaml")).ok()?;
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let mut child = Command::new(runner)
            .args([
                "__case",
                "--device",
                "sim",
                "--file",
                "v2/fresh-device.yaml",
            ])
            .args([
                "--seed",
                "1",
                "--timeout",
                "10s",
                "--buffer-size",
                "1048576",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(text.as_bytes()).ok()?;
        let mut first = String::new();
        let mut lines = BufReader::new(child.stdout.take()?);
        let got = lines.read_line(&mut first).ok()?;
        let took = t0.elapsed();
        let rest = lines.lines().count();
        let ok = child.wait().ok()?.success();
        if got == 0 || rest == 0 || !ok {
            return None;
        }
        samples.push(took.as_secs_f64() * 1e3);
    }
    Some(median(samples))
}

fn bytes_text(n: u64) -> String {
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    }
}
