//! SIGINT/SIGTERM to the runner: stop starting cases, let the running ones
//! finish, write what was found. The signals are blocked and read from a
//! signalfd by a thread, so no code runs in signal context.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;

static RECEIVED: AtomicI32 = AtomicI32::new(0);

fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Blocks SIGINT and SIGTERM and starts the thread that records them. Call
/// before any other thread starts (threads inherit the mask).
pub fn install() -> std::io::Result<()> {
    let set = stop_signals();
    set.thread_block()?;
    let fd = SignalFd::new(&set)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match fd.read_signal() {
                Ok(Some(info)) => {
                    let signo = i32::try_from(info.ssi_signo).unwrap_or(i32::MAX);
                    // The first signal decides the exit code.
                    let _ = RECEIVED.compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst);
                }
                Ok(None) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        })?;
    Ok(())
}

/// The signal that asked the run to stop, if any.
pub fn received() -> Option<Signal> {
    Signal::try_from(RECEIVED.load(Ordering::SeqCst)).ok()
}

/// In a child: the blocked mask survives exec; a child must die on SIGTERM.
pub fn restore_default() {
    let _ = stop_signals().thread_unblock();
}

/// The shell convention: 128 + the signal number.
pub fn exit_code(signal: Signal) -> i32 {
    128 + signal as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(Signal::SIGINT), 130);
        assert_eq!(exit_code(Signal::SIGTERM), 143);
    }
}
