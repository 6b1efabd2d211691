//! The kernel log watch (KERNEL-01): what the kernel logged while a case
//! ran, and which of those lines mean the driver or the core misbehaved.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use results::{CheckRecord, Strength, Verdict};

const KMSG: &str = "/dev/kmsg";
/// Lines of one case's window kept in its `kernel_log`.
pub const MAX_LINES: usize = 200;
/// A kmsg record is at most this long (the kernel's limit is 8 KiB).
const RECORD_MAX: usize = 16384;

/// A problem a kernel log line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Warning,
    Bug,
    Oops,
    Kasan,
    Ubsan,
    Lockdep,
    SoftLockup,
    HungTask,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Warning => "WARNING",
            Class::Bug => "BUG",
            Class::Oops => "Oops",
            Class::Kasan => "KASAN",
            Class::Ubsan => "UBSAN",
            Class::Lockdep => "lockdep",
            Class::SoftLockup => "soft lockup",
            Class::HungTask => "hung task",
        }
    }
}

/// One kmsg record: `prio,seq,ts_usec,flags[,...];message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Syslog facility (0: the kernel itself; userspace writes get 1).
    pub facility: u32,
    pub level: u32,
    pub seq: u64,
    pub ts_usec: u64,
    pub message: String,
}

impl Record {
    /// `[  12.345678] message`, as dmesg prints it.
    pub fn display(&self) -> String {
        format!(
            "[{:5}.{:06}] {}",
            self.ts_usec / 1_000_000,
            self.ts_usec % 1_000_000,
            self.message
        )
    }

    /// The problem this line reports; only the kernel's own lines count
    /// (anyone may write to /dev/kmsg).
    pub fn class(&self) -> Option<Class> {
        if self.facility != 0 {
            return None;
        }
        classify(&self.message)
    }
}

/// Parses one record as read(2) returns it; continuation lines
/// (` KEY=value` dictionary entries) are dropped.
pub fn parse(record: &str) -> Option<Record> {
    let (prefix, rest) = record.split_once(';')?;
    let mut fields = prefix.split(',');
    let prio: u32 = fields.next()?.trim().parse().ok()?;
    let seq = fields.next()?.trim().parse().ok()?;
    let ts_usec = fields.next()?.trim().parse().ok()?;
    let message = rest.split('\n').next().unwrap_or_default();
    Some(Record {
        facility: prio >> 3,
        level: prio & 7,
        seq,
        ts_usec,
        message: unescape(message),
    })
}

/// kmsg escapes non-printable bytes as `\xHH`.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            if let Some(v) = text
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The class of a kernel message, by the prefixes the kernel prints for
/// each (`__warn()`, `BUG:`, `die()`, KASAN/UBSAN reports, lockdep, the
/// soft lockup watchdog and khungtaskd).
pub fn classify(message: &str) -> Option<Class> {
    let m = message.trim_start();
    if m.contains("possible circular locking dependency")
        || m.contains("possible recursive locking")
        || m.contains("inconsistent lock state")
        || m.contains("suspicious RCU usage")
    {
        return Some(Class::Lockdep);
    }
    if m.contains("BUG: KASAN:") || m.starts_with("KASAN:") {
        return Some(Class::Kasan);
    }
    if m.starts_with("UBSAN:") {
        return Some(Class::Ubsan);
    }
    if m.contains("BUG: soft lockup") || m.contains("hard LOCKUP") {
        return Some(Class::SoftLockup);
    }
    if m.starts_with("INFO: task ") && m.contains("blocked for more than") {
        return Some(Class::HungTask);
    }
    if m.starts_with("WARNING:") {
        return Some(Class::Warning);
    }
    if m.starts_with("BUG:") || m.starts_with("kernel BUG at") {
        return Some(Class::Bug);
    }
    if m.starts_with("Oops") || m.starts_with("Kernel panic") {
        return Some(Class::Oops);
    }
    None
}

/// An open /dev/kmsg, positioned at the end before a case.
pub struct KmsgWatch {
    file: File,
}

impl KmsgWatch {
    /// Opens /dev/kmsg and skips what was logged before now.
    pub fn start() -> io::Result<KmsgWatch> {
        let mut file = File::options()
            .read(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(KMSG)?;
        file.seek(SeekFrom::End(0))?;
        Ok(KmsgWatch { file })
    }

    /// Whether /dev/kmsg can be watched here; the error says why not.
    pub fn available() -> Result<(), String> {
        KmsgWatch::start()
            .map(drop)
            .map_err(|e| format!("kernel log not watched (KERNEL-01): {KMSG}: {e}"))
    }

    /// Every record logged since [`KmsgWatch::start`] (or the last call).
    pub fn read_new(&mut self) -> Vec<Record> {
        let mut records = Vec::new();
        let mut buf = vec![0u8; RECORD_MAX];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(r) = parse(&String::from_utf8_lossy(&buf[..n])) {
                        records.push(r);
                    }
                }
                // Records overwritten before we read them: go on with the next.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: everything is read.
                Err(_) => break,
            }
        }
        records
    }
}

/// The KERNEL-01 check for a case's window and the lines to keep in its
/// `kernel_log` (capped at [`MAX_LINES`]).
pub fn verdict(records: &[Record]) -> (CheckRecord, Vec<String>) {
    let problems: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.class()
                .map(|c| format!("{}: {}", c.as_str(), r.display()))
        })
        .collect();
    let observed = if problems.is_empty() {
        format!("{} kernel log lines, none of those classes", records.len())
    } else {
        let mut shown: Vec<String> = problems.iter().take(20).cloned().collect();
        if problems.len() > shown.len() {
            shown.push(format!("... and {} more", problems.len() - shown.len()));
        }
        shown.join("\n")
    };
    let check = CheckRecord {
        name: "kernel-log".into(),
        ids: vec!["KERNEL-01".into()],
        strength: Strength::Must,
        verdict: if problems.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        expected: "no WARNING, BUG, Oops, KASAN, UBSAN, lockdep, soft lockup or hung task line in the kernel log".into(),
        observed,
        location: None,
        known_failure: None,
        qemu: suite::requirements::qemu_effect(&["KERNEL-01"]),
    };
    let mut lines: Vec<String> = records
        .iter()
        .take(MAX_LINES)
        .map(Record::display)
        .collect();
    if records.len() > MAX_LINES {
        lines.push(format!("... {} more lines", records.len() - MAX_LINES));
    }
    (check, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kmsg_records() {
        let r = parse("4,1234,5678901,-;WARNING: CPU: 1 PID: 2 at x.c:3 f+0x1/0x2\n SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.1\n")
            .unwrap();
        assert_eq!(
            (r.facility, r.level, r.seq, r.ts_usec),
            (0, 4, 1234, 5678901)
        );
        assert_eq!(r.message, "WARNING: CPU: 1 PID: 2 at x.c:3 f+0x1/0x2");
        assert_eq!(
            r.display(),
            "[    5.678901] WARNING: CPU: 1 PID: 2 at x.c:3 f+0x1/0x2"
        );
        let r = parse("6,339,5140900,-,caller=T1;NET: Registered protocol family 10\n").unwrap();
        assert_eq!(r.message, "NET: Registered protocol family 10");
        assert_eq!(parse("12,5,1,-;tab\\x09here").unwrap().message, "tab\there");
        assert_eq!(parse("no header").map(|r| r.seq), None);
        assert_eq!(parse("x,1,2,-;text"), None);
    }

    #[test]
    fn classifies_real_kernel_lines() {
        let cases: &[(&str, Option<Class>)] = &[
            ("WARNING: CPU: 3 PID: 1187 at drivers/vfio/vfio_main.c:1037 vfio_mig_get_next_state+0x1c0/0x1f0 [vfio]", Some(Class::Warning)),
            ("BUG: kernel NULL pointer dereference, address: 0000000000000008", Some(Class::Bug)),
            ("kernel BUG at mm/slub.c:379!", Some(Class::Bug)),
            ("BUG: sleeping function called from invalid context at kernel/locking/mutex.c:283", Some(Class::Bug)),
            ("Oops: 0002 [#1] PREEMPT SMP NOPTI", Some(Class::Oops)),
            ("Oops: general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP", Some(Class::Oops)),
            ("BUG: KASAN: slab-use-after-free in mlx5vf_save_read+0x2a4/0x3c0 [mlx5_vfio_pci]", Some(Class::Kasan)),
            ("UBSAN: array-index-out-of-bounds in drivers/vfio/pci/vfio_pci_core.c:512:6", Some(Class::Ubsan)),
            ("WARNING: possible circular locking dependency detected", Some(Class::Lockdep)),
            ("WARNING: possible recursive locking detected", Some(Class::Lockdep)),
            ("INFO: possible recursive locking detected", Some(Class::Lockdep)),
            ("watchdog: BUG: soft lockup - CPU#2 stuck for 26s! [vfio-migtest:4242]", Some(Class::SoftLockup)),
            ("INFO: task vfio-migtest:4242 blocked for more than 122 seconds.", Some(Class::HungTask)),
            ("vfio-pci 0000:3b:00.1: enabling device (0000 -> 0002)", None),
            ("mtty: Migration state changed from RUNNING to STOP", None),
            ("INFO: task queued", None),
            ("------------[ cut here ]------------", None),
        ];
        for (line, class) in cases {
            assert_eq!(classify(line), *class, "{line}");
        }
    }

    #[test]
    fn userspace_lines_never_count() {
        let r = parse("12,99,100,-;WARNING: something a daemon wrote").unwrap();
        assert_eq!(r.facility, 1);
        assert_eq!(r.class(), None);
    }

    #[test]
    fn verdict_fails_on_a_warning_and_keeps_the_window() {
        let quiet = parse("6,1,10,-;vfio-pci 0000:3b:00.1: resetting").unwrap();
        let (check, lines) = verdict(std::slice::from_ref(&quiet));
        assert_eq!(check.verdict, Verdict::Pass);
        assert_eq!(lines.len(), 1);
        let warn =
            parse("4,2,20,-;WARNING: CPU: 0 PID: 7 at drivers/vfio/vfio_main.c:1 f").unwrap();
        let many: Vec<Record> = std::iter::repeat_n(quiet, MAX_LINES + 5)
            .chain([warn])
            .collect();
        let (check, lines) = verdict(&many);
        assert_eq!(check.verdict, Verdict::Fail);
        assert_eq!(check.ids, ["KERNEL-01"]);
        assert!(
            check
                .observed
                .starts_with("WARNING: [    0.000020] WARNING: CPU: 0"),
            "{}",
            check.observed
        );
        assert_eq!(lines.len(), MAX_LINES + 1);
        assert_eq!(lines.last().unwrap(), "... 6 more lines");
    }
}
