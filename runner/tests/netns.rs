//! `migrate` and `receive` across hosts on one machine: two network
//! namespaces joined by a veth pair (10.77.0.1 and 10.77.0.2, inside them
//! only), made and removed by each test, a simulator on each side. A proxy
//! thread in the destination's namespace relays the source's bytes and
//! cuts, corrupts or reports the stream at a byte offset, so nothing
//! depends on timing. Needs root and `ip` (iproute2); without them each
//! test says NOT RUN.
#![forbid(unsafe_code)]

#[path = "../../reports/tests/support/tool.rs"]
mod tool;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

const SRC_ADDR: &str = "10.77.0.1";
const DST_ADDR: &str = "10.77.0.2";
/// Where `receive` listens; the proxy listens one port up.
const PORT: u16 = 47000;
const PROXY_PORT: u16 = 47001;

fn usable() -> bool {
    let root = nix::unistd::geteuid().is_root();
    tool::present(
        root,
        "root",
        "run the tests as root: they create network namespaces",
    ) && tool::present(
        Path::new("/usr/sbin/ip").exists() || Path::new("/sbin/ip").exists(),
        "ip",
        "apt-get install iproute2",
    )
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two namespaces and the veth pair between them; removed on drop.
struct Hosts {
    src: String,
    dst: String,
    dst_link: String,
}

impl Hosts {
    fn new() -> Hosts {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let h = Hosts {
            src: format!("vfmt-{tag}-src"),
            dst: format!("vfmt-{tag}-dst"),
            dst_link: format!("vfd{tag}"),
        };
        let src_link = format!("vfs{tag}");
        ip(&["netns", "add", &h.src]);
        ip(&["netns", "add", &h.dst]);
        ip(&[
            "link",
            "add",
            &src_link,
            "netns",
            &h.src,
            "type",
            "veth",
            "peer",
            "name",
            &h.dst_link,
            "netns",
            &h.dst,
        ]);
        for (ns, link, addr) in [
            (&h.src, &src_link, SRC_ADDR),
            (&h.dst, &h.dst_link, DST_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", link]);
            ip(&["-n", ns, "link", "set", link, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        h
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_vfio-migtest")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a test can kill the whole side.
            .process_group(0);
        cmd
    }

    /// Starts `receive` and returns once it listens.
    fn receive(&self, spec: &str, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let listen = format!("{DST_ADDR}:{PORT}");
        let mut args = vec![
            "receive",
            "--device",
            spec,
            "--listen",
            &listen,
            "--idle-timeout",
            "5s",
        ];
        args.extend_from_slice(extra);
        let mut child = self.exec(&self.dst, &args).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv().expect("receive printed nothing");
        assert_eq!(first, format!("listening on {listen}"));
        (child, rx)
    }

    fn migrate(&self, spec: &str, port: u16, extra: &[&str]) -> Child {
        let to = format!("{DST_ADDR}:{port}");
        let mut args = vec![
            "migrate",
            "--device",
            spec,
            "--to",
            &to,
            "--idle-timeout",
            "5s",
        ];
        args.extend_from_slice(extra);
        self.exec(&self.src, &args).spawn().unwrap()
    }

    /// Relays one connection from PROXY_PORT to `receive`, in the
    /// destination's namespace; `at` sees each piece of the source's bytes
    /// at its offset and says what to do with it.
    fn proxy(
        &self,
        mut at: impl FnMut(u64, &mut [u8]) -> Relay + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let ns = File::open(format!("/run/netns/{}", self.dst)).unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let link = self.dst_link.clone();
        let dst = self.dst.clone();
        let h = thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            let listener = TcpListener::bind((DST_ADDR, PROXY_PORT)).unwrap();
            ready_tx.send(()).unwrap();
            let (mut from_src, _) = listener.accept().unwrap();
            let mut to_dst = TcpStream::connect((DST_ADDR, PORT)).unwrap();
            let (mut back_from, mut back_to) =
                (to_dst.try_clone().unwrap(), from_src.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut back_from, &mut back_to);
                let _ = back_to.shutdown(std::net::Shutdown::Write);
            });
            let mut buf = vec![0u8; 64 << 10];
            let mut offset = 0u64;
            loop {
                let n = match from_src.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                match at(offset, &mut buf[..n]) {
                    Relay::Pass => {}
                    Relay::Cut => {
                        // A cut cable: the link goes down and nothing more
                        // arrives; both ends stay open until both sides gave up.
                        ip(&["-n", &dst, "link", "set", &link, "down"]);
                        let _ = from_src.read(&mut buf);
                        thread::sleep(Duration::from_secs(60));
                        return;
                    }
                }
                offset += n as u64;
                if to_dst.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to_dst.shutdown(std::net::Shutdown::Write);
        });
        ready_rx.recv().unwrap();
        h
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with
        // it the other end.
        for ns in [&self.src, &self.dst] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

enum Relay {
    Pass,
    Cut,
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            if let Ok(child) = entry.file_name().to_string_lossy().parse() {
                out.push(child);
            }
        }
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The destination's whole output: its first line was read already.
fn finish(child: Child, rest: mpsc::Receiver<String>) -> (Output, String) {
    let o = child.wait_with_output().unwrap();
    let stdout: Vec<String> = rest.iter().collect();
    (o, stdout.join("\n"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// About 256 MiB of state; 64 MiB of it is initial precopy data, the rest
/// goes in STOP_COPY.
const SMALL: &str = "sim:size=256MiB,precopy=64MiB,dirty=2,seed=5";
const MID_PRECOPY: u64 = 8 << 20;
const MID_STOP_COPY: u64 = 128 << 20;

#[test]
fn a_gib_of_state_moves_live_and_resaves_identically() {
    if !usable() {
        return;
    }
    let hosts = Hosts::new();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let spec = "sim:size=1GiB,precopy=256MiB,dirty=4,seed=11";
    let (dst, lines) = hosts.receive(
        spec,
        &["--json", &p("dst.json"), "--resave", &p("dst.save")],
    );
    let src = hosts.migrate(
        spec,
        PORT,
        &["--json", &p("src.json"), "--resave", &p("src.save")],
    );
    let s = src.wait_with_output().unwrap();
    let (d, d_out) = finish(dst, lines);
    let s_out = text(&s.stdout);
    assert_eq!(s.status.code(), Some(0), "{s_out}{}", text(&s.stderr));
    assert_eq!(d.status.code(), Some(0), "{d_out}{}", text(&d.stderr));
    for out in [&s_out, &d_out] {
        for fact in [
            "precopy iterations: ",
            "downtime: ",
            "throughput: ",
            "stop-copy: ",
        ] {
            assert!(out.contains(fact), "{fact} missing: {out}");
        }
    }
    assert!(s_out.contains("the device is in STOP"), "{s_out}");
    assert!(d_out.contains("the device is in RUNNING"), "{d_out}");
    let (sj, dj) = (
        json(&dir.path().join("src.json")),
        json(&dir.path().join("dst.json")),
    );
    let (ss, ds) = (&sj["summary"], &dj["summary"]);
    assert_eq!(
        (sj["result"].as_str(), dj["result"].as_str()),
        (Some("pass"), Some("pass"))
    );
    assert!(ss["precopy_iterations"].as_u64().unwrap() >= 1, "{ss}");
    assert!(ss["precopy_bytes"].as_u64().unwrap() >= 256 << 20, "{ss}");
    assert!(ss["downtime_ns"].as_u64().is_some());
    assert_eq!(ds["downtime_ns"], ss["downtime_ns"]);
    let total = ss["precopy_bytes"].as_u64().unwrap() + ss["stop_copy_bytes"].as_u64().unwrap();
    assert!(total >= 1 << 30, "{total}");
    for k in [
        "precopy_bytes",
        "stop_copy_bytes",
        "checksum",
        "precopy_iterations",
    ] {
        assert_eq!(ss[k], ds[k], "{k}");
    }
    // The destination holds what the source stopped with.
    assert_eq!(ss["resaved"]["checksum"], ds["resaved"]["checksum"]);
    assert_eq!(ss["resaved"]["bytes"], ds["resaved"]["bytes"]);
    let stream = |name: &str| {
        let mut f = File::open(dir.path().join(name)).unwrap();
        let (_, len) = suite::savefile::SaveHeader::read_from(&mut f).unwrap();
        (f, len)
    };
    let ((mut a, _), (mut b, _)) = (stream("src.save"), stream("dst.save"));
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        b.read_exact(&mut y[..n]).unwrap();
        assert!(x[..n] == y[..n], "the re-saved streams differ");
        if n == 0 {
            break;
        }
    }
}

#[test]
fn an_incompatible_destination_is_refused_on_both_sides() {
    if !usable() {
        return;
    }
    let hosts = Hosts::new();
    let (dst, lines) = hosts.receive("sim:type=other", &[]);
    let s = hosts.migrate("sim", PORT, &[]).wait_with_output().unwrap();
    let (d, _) = finish(dst, lines);
    assert_eq!(s.status.code(), Some(2), "{}", text(&s.stderr));
    assert_eq!(d.status.code(), Some(2), "{}", text(&d.stderr));
    assert!(
        text(&d.stderr).contains("refused the source"),
        "{}",
        text(&d.stderr)
    );
    assert!(
        text(&s.stderr).contains("device type"),
        "{}",
        text(&s.stderr)
    );
    for e in [text(&s.stderr), text(&d.stderr)] {
        assert!(!e.contains("was reset"), "a device was touched: {e}");
    }
}

/// Both sides failed with a reason and reset their device to RUNNING.
fn both_failed_and_reset(s: &Output, d: &Output, d_stdout: &str) {
    for (o, name) in [(s, "source"), (d, "destination")] {
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("error: "), "{name}: {err}");
        assert!(
            err.contains("the device was reset (VFIO_DEVICE_RESET) and is RUNNING again"),
            "{name}: {err} {d_stdout}"
        );
    }
}

#[test]
fn a_connection_cut_mid_precopy_or_mid_stop_copy_fails_both_sides() {
    if !usable() {
        return;
    }
    for cut_at in [MID_PRECOPY, MID_STOP_COPY] {
        let hosts = Hosts::new();
        let (dst, lines) = hosts.receive(SMALL, &[]);
        let proxy = hosts.proxy(move |at, data| {
            if at + data.len() as u64 >= cut_at {
                Relay::Cut
            } else {
                Relay::Pass
            }
        });
        let s = hosts
            .migrate(SMALL, PROXY_PORT, &[])
            .wait_with_output()
            .unwrap();
        let (d, d_out) = finish(dst, lines);
        both_failed_and_reset(&s, &d, &d_out);
        assert!(
            text(&d.stderr).contains("sent nothing for"),
            "{}",
            text(&d.stderr)
        );
        drop(hosts);
        drop(proxy);
    }
}

#[test]
fn a_corrupted_chunk_fails_on_its_checksum() {
    if !usable() {
        return;
    }
    let hosts = Hosts::new();
    let (dst, lines) = hosts.receive(SMALL, &[]);
    let _proxy = hosts.proxy(|at, data| {
        let end = at + data.len() as u64;
        if (at..end).contains(&MID_PRECOPY) {
            data[(MID_PRECOPY - at) as usize] ^= 0x20;
        }
        Relay::Pass
    });
    let s = hosts
        .migrate(SMALL, PROXY_PORT, &[])
        .wait_with_output()
        .unwrap();
    let (d, d_out) = finish(dst, lines);
    both_failed_and_reset(&s, &d, &d_out);
    assert!(text(&d.stderr).contains("checksum"), "{}", text(&d.stderr));
    assert!(
        text(&s.stderr).contains("checksum"),
        "the source says why: {}",
        text(&s.stderr)
    );
}

#[test]
fn a_source_killed_mid_stream_fails_the_destination() {
    if !usable() {
        return;
    }
    let hosts = Hosts::new();
    let (dst, lines) = hosts.receive(SMALL, &[]);
    let (tx, rx) = mpsc::channel();
    let _proxy = hosts.proxy(move |at, _| {
        if at >= MID_PRECOPY {
            let _ = tx.send(());
        }
        Relay::Pass
    });
    let src = hosts.migrate(SMALL, PROXY_PORT, &[]);
    rx.recv().unwrap();
    // The whole side at once, as when its host dies: the command and the
    // child doing the migration (in a process group of its own).
    for pid in children(src.id()).into_iter().chain([src.id()]) {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let s = src.wait_with_output().unwrap();
    assert!(s.status.code().is_none(), "the source was killed");
    let (d, _) = finish(dst, lines);
    let err = text(&d.stderr);
    assert_eq!(d.status.code(), Some(1), "{err}");
    assert!(err.contains("the source closed the connection"), "{err}");
    assert!(err.contains("is RUNNING again"), "{err}");
}
