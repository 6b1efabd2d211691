//! The progress line for an engineer at a terminal:
//! `[3/38] precopy: read data_fd, 7 bytes (1.2 KiB moved)`, redrawn in place
//! on stderr while cases run.
//!
//! Only when stderr is a terminal: logs, pipes and CI output never see it.
//! libtest-mimic owns stdout and may leave a line half written (`test x
//! ... ` until the case ends), so while the line is shown stdout goes
//! through a pipe whose reader erases the line, forwards the output and
//! draws the line again after it: nothing written to stdout is ever
//! overwritten.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reports::stats::human_bytes;
use results::Event;

/// How often the line is redrawn at most while steps stream in (a walk
/// sends thousands a second).
const REDRAW: Duration = Duration::from_millis(50);
/// Narrower than this, the line is not drawn at all.
const MIN_WIDTH: usize = 16;

/// The progress sink of a run: cheap to clone, does nothing when off.
#[derive(Clone, Default)]
pub struct Progress {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("on", &self.shared.is_some())
            .finish()
    }
}

struct Shared {
    total: AtomicUsize,
    started: AtomicUsize,
    next_id: AtomicUsize,
    screen: Mutex<Screen>,
}

/// The cases running now and what the terminal shows.
struct Screen {
    out: Box<dyn Write + Send>,
    width: usize,
    running: BTreeMap<usize, Running>,
    /// Columns of the line stdout left unfinished, where the progress
    /// line starts.
    partial: usize,
    escape: Escape,
    shown: bool,
    /// A redraw was skipped for being too soon.
    dirty: bool,
    last_draw: Option<Instant>,
    /// Bumped on every update, so the newest case is the one shown.
    clock: u64,
}

struct Running {
    n: usize,
    name: String,
    step: String,
    bytes: u64,
    touched: u64,
}

/// Where the forwarded output stands in an ANSI escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Esc,
    Csi,
}

impl Progress {
    /// On when stderr is a terminal that can move its cursor.
    pub fn for_terminal() -> Progress {
        let dumb = std::env::var("TERM").map_or(true, |t| t.is_empty() || t == "dumb");
        if !io::stderr().is_terminal() || dumb {
            return Progress::default();
        }
        let Ok(err) = io::stderr().as_fd().try_clone_to_owned() else {
            return Progress::default();
        };
        let progress = Progress::to(Box::new(File::from(err)), terminal_width());
        progress.tick();
        progress
    }

    /// Draws what redraws skipped for being too soon (the step a hung
    /// case is stuck in), until the progress sink is dropped.
    fn tick(&self) {
        let Some(s) = &self.shared else { return };
        let weak = Arc::downgrade(s);
        let spawned = std::thread::Builder::new()
            .name("progress-tick".into())
            .spawn(move || loop {
                std::thread::sleep(REDRAW);
                let Some(s) = weak.upgrade() else { return };
                let mut screen = lock(&s.screen);
                if screen.dirty {
                    screen.redraw(s.total.load(Ordering::Relaxed), true);
                }
            });
        // Without the thread, a skipped redraw waits for the next event.
        drop(spawned);
    }

    /// A progress line drawn on `out`, `width` columns wide.
    fn to(out: Box<dyn Write + Send>, width: usize) -> Progress {
        Progress {
            shared: Some(Arc::new(Shared {
                total: AtomicUsize::new(0),
                started: AtomicUsize::new(0),
                next_id: AtomicUsize::new(0),
                screen: Mutex::new(Screen {
                    out,
                    width,
                    running: BTreeMap::new(),
                    partial: 0,
                    escape: Escape::None,
                    shown: false,
                    dirty: false,
                    last_draw: None,
                    clock: 0,
                }),
            })),
        }
    }

    /// How many cases will run (the N of `[n/N]`).
    pub fn set_total(&self, total: usize) {
        if let Some(s) = &self.shared {
            s.total.store(total, Ordering::Relaxed);
        }
    }

    /// A case starts; the line follows it until the handle is dropped.
    pub fn case(&self, name: &str) -> CaseProgress {
        let Some(s) = &self.shared else {
            return CaseProgress {
                shared: None,
                id: 0,
            };
        };
        let n = s.started.fetch_add(1, Ordering::Relaxed) + 1;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let mut screen = lock(&s.screen);
        screen.clock += 1;
        let touched = screen.clock;
        screen.running.insert(
            id,
            Running {
                n,
                name: name.to_string(),
                step: "starting".into(),
                bytes: 0,
                touched,
            },
        );
        screen.redraw(s.total.load(Ordering::Relaxed), true);
        CaseProgress {
            shared: Some(Arc::clone(s)),
            id,
        }
    }

    /// Routes stdout through the progress line's owner until the returned
    /// guard is finished, if stdout is the terminal too. `None` when the
    /// line is off or stdout goes elsewhere (then they cannot collide).
    pub fn capture_stdout(&self) -> io::Result<Option<Capture>> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        if !io::stdout().is_terminal() {
            return Ok(None);
        }
        io::stdout().flush()?;
        let saved = io::stdout().as_fd().try_clone_to_owned()?;
        let terminal = File::from(saved.try_clone()?);
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::unistd::dup2_stdout(&write)?;
        drop(write);
        let shared = Arc::clone(shared);
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || forward(&shared, File::from(read), terminal))?;
        Ok(Some(Capture {
            saved,
            thread: Some(thread),
        }))
    }

    /// Erases the line (before the runner's own output).
    pub fn clear(&self) {
        if let Some(s) = &self.shared {
            lock(&s.screen).erase();
        }
    }
}

/// One case's part of the line.
pub struct CaseProgress {
    shared: Option<Arc<Shared>>,
    id: usize,
}

impl CaseProgress {
    /// Follows an event of the case's child.
    pub fn event(&mut self, event: &Event) {
        let Some(s) = &self.shared else { return };
        let (step, bytes) = match event {
            Event::StepStarted { op, args, .. } => (step_text(op, args), 0),
            Event::Step(step) => (step_text(&step.op, &step.args), step.bytes),
            _ => return,
        };
        let mut screen = lock(&s.screen);
        screen.clock += 1;
        let clock = screen.clock;
        if let Some(r) = screen.running.get_mut(&self.id) {
            r.step = step;
            r.bytes += bytes;
            r.touched = clock;
        }
        screen.redraw(s.total.load(Ordering::Relaxed), false);
    }
}

impl Drop for CaseProgress {
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            let mut screen = lock(&s.screen);
            screen.running.remove(&self.id);
            screen.redraw(s.total.load(Ordering::Relaxed), true);
        }
    }
}

/// Stdout going through the progress line's owner; [`Capture::finish`]
/// gives stdout back.
pub struct Capture {
    saved: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn finish(mut self) -> io::Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        io::stdout().flush()?;
        // The pipe's only writer was stdout: the forwarder now sees its end.
        nix::unistd::dup2_stdout(&self.saved)?;
        let _ = thread.join();
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

fn forward(shared: &Shared, mut pipe: File, mut terminal: File) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut screen = lock(&shared.screen);
        screen.erase();
        // A terminal that went away loses the output, as it would anyway.
        let _ = terminal
            .write_all(&buf[..n])
            .and_then(|()| terminal.flush());
        screen.advance(&buf[..n]);
        screen.redraw(shared.total.load(Ordering::Relaxed), true);
    }
    lock(&shared.screen).erase();
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn step_text(op: &str, args: &str) -> String {
    if args.is_empty() {
        op.to_string()
    } else {
        format!("{op} {args}")
    }
}

impl Screen {
    /// The line for the most recently active case.
    fn line(&self, total: usize) -> Option<String> {
        let r = self.running.values().max_by_key(|r| r.touched)?;
        let moved = if r.bytes > 0 {
            format!(" ({} moved)", human_bytes(r.bytes))
        } else {
            String::new()
        };
        Some(format!(
            "[{}/{}] {}: {}{moved}",
            r.n,
            total.max(r.n),
            r.name,
            r.step
        ))
    }

    fn redraw(&mut self, total: usize, force: bool) {
        let due = self.last_draw.is_none_or(|t| t.elapsed() >= REDRAW);
        if !(force || due) {
            self.dirty = true;
            return;
        }
        self.dirty = false;
        self.erase();
        let room = self.width.saturating_sub(self.partial + 1);
        let Some(line) = self.line(total).filter(|_| room >= MIN_WIDTH) else {
            return;
        };
        let line: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(room)
            .collect();
        if self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush())
            .is_ok()
        {
            self.shown = true;
        }
        self.last_draw = Some(Instant::now());
    }

    /// Removes the line: back to where it started, erase to the end.
    fn erase(&mut self) {
        if self.shown {
            let _ = write!(self.out, "\x1b[{}G\x1b[K", self.partial + 1)
                .and_then(|()| self.out.flush());
            self.shown = false;
        }
    }

    /// Follows the cursor through forwarded output: the columns of the
    /// unfinished last line, skipping escape sequences and UTF-8
    /// continuation bytes.
    fn advance(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.escape = match (self.escape, b) {
                (Escape::None, b'\n' | b'\r') => {
                    self.partial = 0;
                    Escape::None
                }
                (Escape::None, 0x1b) => Escape::Esc,
                (Escape::None, b) => {
                    if b & 0xc0 != 0x80 && !b.is_ascii_control() {
                        self.partial += 1;
                    }
                    Escape::None
                }
                (Escape::Esc, b'[') => Escape::Csi,
                (Escape::Esc, _) => Escape::None,
                (Escape::Csi, 0x40..=0x7e) => Escape::None,
                (Escape::Csi, _) => Escape::Csi,
            };
        }
    }
}

/// The terminal's columns: `stty size` on it, else `COLUMNS`, else 80.
fn terminal_width() -> usize {
    let from_stty = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|tty| {
            Command::new("stty")
                .arg("size")
                .stdin(Stdio::from(tty))
                .stderr(Stdio::null())
                .output()
                .ok()
        })
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<usize>().ok())
        });
    from_stty
        .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
        .filter(|&w| w > 0)
        .unwrap_or(80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use results::{StepRecord, StepReturn};

    /// What a terminal would hold: the bytes written, shared with the test.
    #[derive(Clone, Default)]
    struct Tape(Arc<Mutex<Vec<u8>>>);

    impl Write for Tape {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Tape {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *lock(&self.0))).unwrap()
        }
    }

    fn step(op: &str, args: &str, bytes: u64) -> Event {
        Event::Step(StepRecord {
            index: 0,
            role: "device".into(),
            op: op.into(),
            args: args.into(),
            ret: StepReturn::Ok(0),
            state: None,
            bytes,
            start_ns: 0,
            duration_ns: 0,
            location: None,
        })
    }

    fn started(op: &str, args: &str) -> Event {
        Event::StepStarted {
            index: 0,
            role: "device".into(),
            op: op.into(),
            args: args.into(),
            location: None,
        }
    }

    #[test]
    fn off_does_nothing() {
        let p = Progress::default();
        assert!(p.shared.is_none());
        let mut c = p.case("x");
        c.event(&step("read", "", 1));
        p.clear();
        assert!(p.capture_stdout().unwrap().is_none());
    }

    #[test]
    fn the_line_follows_the_case_and_is_erased() {
        let tape = Tape::default();
        let p = Progress::to(Box::new(tape.clone()), 80);
        p.set_total(3);
        let mut c = p.case("precopy");
        assert_eq!(tape.take(), "[1/3] precopy: starting");
        // The time of the last draw is set, not waited for, so the test's
        // own pace does not matter: a draw ahead of now is always recent.
        let drawn = |at: Instant| lock(&p.shared.as_ref().unwrap().screen).last_draw = Some(at);
        drawn(Instant::now() + Duration::from_secs(3600));
        c.event(&started("SET MIG_DEVICE_STATE", "RUNNING -> PRE_COPY"));
        // Too soon after the last draw: left to the ticker.
        assert_eq!(tape.take(), "");
        assert!(lock(&p.shared.as_ref().unwrap().screen).dirty);
        drawn(Instant::now() - REDRAW);
        c.event(&step("read", "data_fd, 4096 bytes", 4096));
        assert_eq!(
            tape.take(),
            "\x1b[1G\x1b[K[1/3] precopy: read data_fd, 4096 bytes (4.0 KiB moved)"
        );
        drop(c);
        assert_eq!(tape.take(), "\x1b[1G\x1b[K");
        p.clear();
        assert_eq!(tape.take(), "");
    }

    #[test]
    fn forwarded_output_is_never_overwritten() {
        let tape = Tape::default();
        let p = Progress::to(Box::new(tape.clone()), 40);
        let _c = p.case("walk");
        tape.take();
        let s = p.shared.as_ref().unwrap();
        let mut screen = lock(&s.screen);
        // libtest-mimic's unfinished line: the progress line goes after it.
        screen.erase();
        screen.advance(b"test walk ... ");
        screen.redraw(1, true);
        drop(screen);
        assert_eq!(tape.take(), "\x1b[1G\x1b[K[1/1] walk: starting");
        let mut screen = lock(&s.screen);
        screen.erase();
        assert_eq!(screen.partial, 14);
        screen.advance(b"\x1b[32mok\x1b[0m\n");
        assert_eq!(screen.partial, 0);
        screen.redraw(1, true);
        drop(screen);
        // Erased from column 15 (after "test walk ... "), redrawn at column 1.
        assert_eq!(tape.take(), "\x1b[15G\x1b[K[1/1] walk: starting");
    }

    #[test]
    fn a_narrow_terminal_truncates_or_skips_the_line() {
        let tape = Tape::default();
        let p = Progress::to(Box::new(tape.clone()), 20);
        let _c = p.case("a-long-case-name");
        assert_eq!(tape.take(), "[1/1] a-long-case-n");
        let s = p.shared.as_ref().unwrap();
        let mut screen = lock(&s.screen);
        screen.erase();
        screen.advance("é".repeat(10).as_bytes());
        assert_eq!(screen.partial, 10);
        screen.redraw(1, true);
        drop(screen);
        assert_eq!(tape.take(), "\x1b[1G\x1b[K");
    }

    #[test]
    fn the_newest_case_is_shown_and_counted() {
        let tape = Tape::default();
        let p = Progress::to(Box::new(tape.clone()), 80);
        p.set_total(2);
        let a = p.case("a");
        let b = p.case("b");
        assert!(tape.take().ends_with("[2/2] b: starting"));
        drop(b);
        assert!(tape.take().ends_with("[1/2] a: starting"));
        drop(a);
        // More cases than announced: N grows with n.
        let _c = p.case("c");
        assert!(tape.take().ends_with("[3/3] c: starting"));
    }
}
