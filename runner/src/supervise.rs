//! Child processes under a deadline: reading their output line by line
//! without ever blocking past the deadline, and ending them (SIGTERM, then
//! SIGKILL) when they overrun.
//!
//! A process stuck in an uninterruptible ioctl (D state) cannot be killed;
//! [`Termination::Unkillable`] says so, and the caller declares the device
//! wedged instead of waiting for it.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A child's stdout line longer than this is refused (the protocol's lines
/// are small; a step log of a long walk is streamed step by step).
const MAX_LINE: usize = 64 << 20;
/// How much of the child's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// How often a dying child is checked for.
const REAP_INTERVAL: Duration = Duration::from_millis(10);

/// How long a child gets after SIGTERM, then after SIGKILL.
#[derive(Debug, Clone, Copy)]
pub struct KillPolicy {
    pub term_grace: Duration,
    pub kill_grace: Duration,
}

impl Default for KillPolicy {
    fn default() -> Self {
        KillPolicy {
            term_grace: Duration::from_secs(2),
            kill_grace: Duration::from_secs(5),
        }
    }
}

/// How a child that had to be stopped ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It exited before any signal was sent.
    Exited,
    /// It ended after SIGTERM.
    Terminated,
    /// It ended only after SIGKILL.
    Killed,
    /// It was still there after SIGKILL: stuck in the kernel (D state).
    Unkillable,
}

/// What [`ChildProc::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Line(String),
    /// stdout closed.
    Eof,
    /// The deadline passed first.
    Deadline,
}

/// A child in its own process group (so a terminal's Ctrl-C reaches only
/// the runner, which decides), with stdout read as lines and the tail of
/// stderr kept.
pub struct ChildProc {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    pending: Vec<u8>,
    stderr_tail: Vec<u8>,
    status: Option<ExitStatus>,
}

impl ChildProc {
    /// Spawns `cmd` and writes `input` to its stdin (then closes it).
    pub fn spawn(mut cmd: Command, input: Option<&[u8]>) -> io::Result<ChildProc> {
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        let mut child = cmd.spawn()?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // The child reads all of stdin before anything else; a child
            // that died first shows up as EPIPE here and as its exit later.
            if let Err(e) = stdin.write_all(input) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    return Err(e);
                }
            }
        }
        Ok(ChildProc {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            pending: Vec::new(),
            stderr_tail: Vec::new(),
            status: None,
        })
    }

    /// The next line of stdout, waiting no later than `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> io::Result<Next> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(Next::Line(line));
            }
            if self.stdout.is_none() {
                if self.pending.is_empty() {
                    return Ok(Next::Eof);
                }
                let rest = std::mem::take(&mut self.pending);
                return Ok(Next::Line(String::from_utf8_lossy(&rest).into_owned()));
            }
            if !self.pump(deadline)? {
                return Ok(Next::Deadline);
            }
        }
    }

    fn take_line(&mut self) -> Option<String> {
        let end = self.pending.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.pending.drain(..=end).collect();
        Some(String::from_utf8_lossy(&line[..end]).into_owned())
    }

    /// Waits for output on stdout or stderr and reads it; `false` when the
    /// deadline passed first.
    fn pump(&mut self, deadline: Instant) -> io::Result<bool> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(false);
        }
        // Round up so a sub-millisecond remainder does not spin.
        let ms = remaining
            .as_millis()
            .saturating_add(1)
            .min(i32::MAX as u128);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let (out_ready, err_ready) = {
            let mut fds = Vec::with_capacity(2);
            if let Some(out) = &self.stdout {
                fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
            }
            if let Some(err) = &self.stderr {
                fds.push(PollFd::new(err.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(Instant::now() < deadline),
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(true),
                Err(e) => return Err(e.into()),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let out_ready = self.stdout.is_some() && ready(&fds[0]);
            let err_ready = self.stderr.is_some() && ready(&fds[fds.len() - 1]);
            (out_ready, err_ready)
        };
        let mut buf = [0u8; 65536];
        if out_ready {
            if let Some(out) = &mut self.stdout {
                match out.read(&mut buf) {
                    Ok(0) => self.stdout = None,
                    Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.pending.len() > MAX_LINE {
                return Err(io::Error::other(format!(
                    "child process wrote a line longer than {MAX_LINE} bytes"
                )));
            }
        }
        if err_ready {
            if let Some(err) = &mut self.stderr {
                match err.read(&mut buf) {
                    Ok(0) => self.stderr = None,
                    Ok(n) => {
                        self.stderr_tail.extend_from_slice(&buf[..n]);
                        let excess = self.stderr_tail.len().saturating_sub(STDERR_TAIL);
                        self.stderr_tail.drain(..excess);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(true)
    }

    /// The last few KiB the child wrote to stderr, trimmed.
    pub fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.stderr_tail)
            .trim()
            .to_string()
    }

    /// After stdout closed: reads the rest of stderr and waits for the
    /// exit, no later than `deadline`. `None` when the child is still there.
    pub fn wait_until(&mut self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        while self.stderr.is_some() || self.stdout.is_some() {
            if !self.pump(deadline)? {
                break;
            }
            // Stdout after its end is of no interest any more.
            self.pending.clear();
        }
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(REAP_INTERVAL);
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Ends the child: SIGTERM to its process group, then SIGKILL.
    pub fn terminate(&mut self, policy: KillPolicy) -> Termination {
        escalate(self, policy)
    }
}

/// What [`escalate`] needs of a process (a seam for the unkillable case,
/// which a test cannot produce with a real process).
pub trait Signalled {
    fn signal(&mut self, signal: Signal);
    /// Whether the process has ended (and is reaped).
    fn ended(&mut self) -> bool;
}

impl Signalled for ChildProc {
    fn signal(&mut self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32);
        // ESRCH: the group is already gone.
        let _ = killpg(pid, signal);
    }

    fn ended(&mut self) -> bool {
        // A failing waitpid means the child is not ours to wait for any more.
        self.try_wait().map_or(true, |s| s.is_some())
    }
}

/// SIGTERM, up to `term_grace` for the process to end, then SIGKILL and up
/// to `kill_grace`.
pub fn escalate(p: &mut dyn Signalled, policy: KillPolicy) -> Termination {
    if p.ended() {
        return Termination::Exited;
    }
    p.signal(Signal::SIGTERM);
    if wait_ended(p, policy.term_grace) {
        return Termination::Terminated;
    }
    p.signal(Signal::SIGKILL);
    if wait_ended(p, policy.kill_grace) {
        return Termination::Killed;
    }
    Termination::Unkillable
}

fn wait_ended(p: &mut dyn Signalled, grace: Duration) -> bool {
    let until = Instant::now() + grace;
    loop {
        if p.ended() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(REAP_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ChildProc {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        ChildProc::spawn(cmd, None).unwrap()
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    /// A deadline no working child comes near, however slow the machine.
    fn unhurried() -> Instant {
        soon(600_000)
    }

    #[test]
    fn reads_lines_then_eof_and_exit_status() {
        let mut c = sh("echo one; echo two >&2; printf 'two\\nthree'; exit 3");
        let d = unhurried();
        assert_eq!(c.next_line(d).unwrap(), Next::Line("one".into()));
        assert_eq!(c.next_line(d).unwrap(), Next::Line("two".into()));
        assert_eq!(c.next_line(d).unwrap(), Next::Line("three".into()));
        assert_eq!(c.next_line(d).unwrap(), Next::Eof);
        let status = c.wait_until(d).unwrap().unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(c.stderr_tail(), "two");
    }

    #[test]
    fn stdin_is_handed_over() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("read x; echo got-$x");
        let mut c = ChildProc::spawn(cmd, Some(b"abc\n")).unwrap();
        assert_eq!(
            c.next_line(unhurried()).unwrap(),
            Next::Line("got-abc".into())
        );
    }

    #[test]
    fn a_silent_child_hits_the_deadline_on_time() {
        let mut c = sh("echo started; exec sleep 600");
        assert_eq!(
            c.next_line(unhurried()).unwrap(),
            Next::Line("started".into())
        );
        let t0 = Instant::now();
        assert_eq!(c.next_line(soon(200)).unwrap(), Next::Deadline);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
        // Long before the child would end.
        assert!(waited < Duration::from_secs(60), "{waited:?}");
        assert_eq!(c.terminate(KillPolicy::default()), Termination::Terminated);
        assert!(c.ended());
    }

    #[test]
    fn sigterm_ignored_escalates_to_sigkill() {
        let mut c = sh("trap '' TERM; echo ready; while :; do sleep 1; done");
        assert_eq!(
            c.next_line(unhurried()).unwrap(),
            Next::Line("ready".into())
        );
        let policy = KillPolicy {
            term_grace: Duration::from_millis(200),
            kill_grace: Duration::from_secs(600),
        };
        assert_eq!(c.terminate(policy), Termination::Killed);
    }

    #[test]
    fn an_exited_child_needs_no_signal() {
        let mut c = sh("true");
        assert_eq!(c.next_line(unhurried()).unwrap(), Next::Eof);
        c.wait_until(unhurried()).unwrap().unwrap();
        assert_eq!(c.terminate(KillPolicy::default()), Termination::Exited);
    }

    /// A process in D state: every signal is queued, none acts.
    struct Stuck {
        signals: Vec<Signal>,
    }

    impl Signalled for Stuck {
        fn signal(&mut self, signal: Signal) {
            self.signals.push(signal);
        }
        fn ended(&mut self) -> bool {
            false
        }
    }

    #[test]
    fn a_process_stuck_in_the_kernel_is_unkillable() {
        let mut p = Stuck {
            signals: Vec::new(),
        };
        let policy = KillPolicy {
            term_grace: Duration::from_millis(20),
            kill_grace: Duration::from_millis(20),
        };
        assert_eq!(escalate(&mut p, policy), Termination::Unkillable);
        assert_eq!(p.signals, [Signal::SIGTERM, Signal::SIGKILL]);
    }
}
