//! `vfio-migtest migrate` and `receive`: a live migration between two
//! hosts over TCP, in the wire format of [`suite::wire`].
//!
//! As for save and resume, the device work ([`suite::migrate::live`]) runs
//! in a child (`__migrate`, `__receive`) that also owns the connection, so
//! a child killed at its deadline drops it and the peer notices at once;
//! the parent reads the child's lines, prints them, resets a device whose
//! child had to be killed, and writes the `--json` record.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use suite::migrate::live::{LiveOptions, LiveSummary};
use suite::migrate::{fail, Fail, Failure};

use crate::cli::{LiveArgs, MigrateArgs, ReceiveArgs};
use crate::output::write_atomic;
use crate::protocol::ChildLine;
use crate::signals;
use crate::transfer::{child_command, child_run, conclude, supervise};
use crate::usage::Usage;

/// How often a listener or a refused connect is retried.
const RETRY: Duration = Duration::from_millis(50);

/// `--json`: the outcome of one side, for lab harnesses.
#[derive(Debug, Serialize)]
struct Record<'a> {
    /// `source` or `destination`.
    role: &'a str,
    device: String,
    /// `pass` or `fail`.
    result: &'a str,
    exit_code: i32,
    /// Why it failed, as printed.
    reason: Option<String>,
    summary: Option<&'a LiveSummary>,
}

fn opts(live: &LiveArgs, max_precopy: u32, downtime_limit: Duration) -> LiveOptions {
    LiveOptions {
        chunk: live.chunk,
        max_precopy,
        downtime_limit,
        idle: live.idle_timeout,
        resave: live.resave.clone(),
    }
}

/// The child's side of the connection: a connect retried while the peer
/// is not listening yet, bounded by the idle timeout and the deadline.
fn connect(to: &str, idle: Duration, deadline: Instant) -> Result<TcpStream, Fail> {
    let addrs: Vec<SocketAddr> = to
        .to_socket_addrs()
        .map_err(|e| fail(Failure::Peer, format!("cannot resolve {to}: {e}")))?
        .collect();
    let until = deadline.min(Instant::now() + idle);
    loop {
        let mut last = None;
        for a in &addrs {
            let left = until.saturating_duration_since(Instant::now()).max(RETRY);
            match TcpStream::connect_timeout(a, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.map_or_else(|| "no address".to_string(), |e| e.to_string());
        if Instant::now() >= until {
            return Err(fail(
                Failure::Peer,
                format!("cannot connect to {to}: {e} (is `vfio-migtest receive` listening there?)"),
            ));
        }
        std::thread::sleep(RETRY);
    }
}

/// Waits for the source's connection until the deadline.
fn accept(listener: &TcpListener, deadline: Instant) -> Result<TcpStream, Fail> {
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(Failure::Peer, format!("cannot listen: {e}")))?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| fail(Failure::Peer, format!("the connection: {e}")))?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(fail(
                        Failure::Peer,
                        "no source connected before the deadline",
                    ));
                }
                std::thread::sleep(RETRY);
            }
            Err(e) => return Err(fail(Failure::Peer, format!("accept() failed: {e}"))),
        }
    }
}

/// `__migrate`: the source side, in the child.
pub fn migrate_child(args: &MigrateArgs) -> i32 {
    let o = opts(&args.live, args.max_precopy, args.downtime_limit);
    child_run(&args.live.device, args.live.timeout, |job| {
        let mut link = connect(&args.to, o.idle, job.deadline)?;
        job.migrate(&mut link, &o).map(ChildLine::Migrated)
    })
}

/// `__receive`: the destination side, in the child. The listener is bound
/// before the device is opened, so the address is announced at once.
pub fn receive_child(args: &ReceiveArgs) -> i32 {
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = ChildLine::Failed {
                kind: Failure::Peer,
                message: format!("cannot listen on {}: {e}", args.listen),
            }
            .emit();
            return 1;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        let _ = ChildLine::Listening(addr.to_string()).emit();
    }
    let o = opts(&args.live, 1, Duration::ZERO);
    child_run(&args.live.device, args.live.timeout, |job| {
        let mut link = accept(&listener, job.deadline)?;
        drop(listener);
        job.receive(&mut link, &o).map(ChildLine::Migrated)
    })
}

fn live_command(sub: &str, live: &LiveArgs) -> Result<std::process::Command> {
    signals::install()
        .map_err(|e| anyhow::anyhow!("cannot set up SIGINT/SIGTERM handling: {e}"))?;
    let mut cmd = child_command(sub)?;
    cmd.arg("--device")
        .arg(live.device.to_string())
        .arg("--chunk")
        .arg(live.chunk.to_string())
        .arg("--timeout")
        .arg(format!("{}ms", live.timeout.as_millis()))
        .arg("--idle-timeout")
        .arg(format!("{}ms", live.idle_timeout.as_millis()));
    if let Some(path) = &live.resave {
        cmd.arg("--resave").arg(path);
    }
    Ok(cmd)
}

/// Runs the child, prints its report and writes the record.
fn finish(cmd: std::process::Command, live: &LiveArgs, role: &str, what: &str) -> Result<i32> {
    let s = supervise(cmd, live.timeout);
    let code = conclude(&s, &live.device, live.timeout, what);
    if let Some(path) = &live.json {
        let summary = s.lines.iter().find_map(|l| match l {
            ChildLine::Migrated(m) => Some(m),
            _ => None,
        });
        let reason = s.lines.iter().find_map(|l| match l {
            ChildLine::Failed { message, .. } => Some(message.clone()),
            _ => None,
        });
        let reason = match (code, reason) {
            (0, _) => None,
            (_, Some(r)) => Some(r),
            (_, None) => Some(format!("the {what} did not finish (exit status {code})")),
        };
        let record = Record {
            role,
            device: live.device.to_string(),
            result: if code == 0 { "pass" } else { "fail" },
            exit_code: code,
            reason,
            summary,
        };
        let text = serde_json::to_vec_pretty(&record)?;
        write_atomic(path, &text)
            .map_err(|e| Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(code)
}

/// `migrate`: returns the exit code.
pub fn migrate(args: &MigrateArgs) -> Result<i32> {
    if !args.to.contains(':') {
        return Err(Usage(format!("--to {}: expected HOST:PORT", args.to)).into());
    }
    let mut cmd = live_command("__migrate", &args.live)?;
    cmd.arg("--to")
        .arg(&args.to)
        .arg("--max-precopy")
        .arg(args.max_precopy.to_string())
        .arg("--downtime-limit")
        .arg(format!("{}ms", args.downtime_limit.as_millis()));
    finish(cmd, &args.live, "source", "migration")
}

/// `receive`: returns the exit code.
pub fn receive(args: &ReceiveArgs) -> Result<i32> {
    if args.listen.parse::<SocketAddr>().is_err() {
        return Err(Usage(format!(
            "--listen {}: expected ADDR:PORT (an IP address)",
            args.listen
        ))
        .into());
    }
    let mut cmd = live_command("__receive", &args.live)?;
    cmd.arg("--listen").arg(&args.listen);
    finish(cmd, &args.live, "destination", "migration")
}
