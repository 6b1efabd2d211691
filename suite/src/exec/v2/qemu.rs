//! QEMU's precopy phase as `hw/vfio/migration.c` runs it, so a case can
//! see a device the way QEMU does: `vfio_save_setup()` sizes the buffer,
//! `vfio_save_iterate()` reads one buffer per round and keeps QEMU's own
//! estimates of the initial and dirty bytes
//! (`vfio_update_estimated_pending_data()`), sends the switchover-ack
//! INIT_DATA_SENT marker once its estimate of the initial bytes is 0, and
//! `vfio_state_pending_exact()` asks the device again when a read has no
//! data (what QEMU does once its estimate falls under the threshold).
#![forbid(unsafe_code)]

use super::*;
use crate::exec::datafd::End;

/// `VFIO_MIG_DEFAULT_DATA_BUFFER_SIZE`.
const QEMU_BUFFER: u64 = 1 << 20;

impl Exec<'_, '_> {
    pub(super) fn qemu_precopy(
        &mut self,
        role: Role,
        into: Option<&str>,
        rounds: u32,
        key: &StepKey,
    ) -> Flow {
        let fd = self.session_fd(role, SessionKind::Saving)?;
        let stop_copy = self.data_size(role, None, key)?;
        let Some(buffer) = self.qemu_buffer(stop_copy, key) else {
            return Ok(());
        };
        let Some((mut init, mut dirty)) = self.qemu_query_precopy(role, key)? else {
            return Ok(());
        };
        let mut marker_after: Option<u64> = (init == 0).then_some(0);
        let mut read = 0u64;
        let mut ended = None;
        for round in 0..rounds {
            let (n, end) = self.qemu_save_block(role, fd, buffer, into, key)?;
            if let End::Error(e) = end {
                // vfio_save_iterate() returns the error: the migration fails.
                self.check(
                    key,
                    Check::builtin(
                        "read",
                        "V2-PRECOPY-08",
                        false,
                        "read() in PRE_COPY returns data, 0 or ENOMSG".into(),
                        format!("read() failed with {} after {read} bytes", errno_name(e)),
                    ),
                );
                return Ok(());
            }
            read += n;
            // vfio_update_estimated_pending_data()
            let from_init = init.min(n);
            init -= from_init;
            dirty -= dirty.min(n - from_init);
            let no_more = matches!(end, End::Eof | End::Enomsg);
            if no_more {
                init = 0;
                dirty = 0;
            }
            if init == 0 && marker_after.is_none() {
                marker_after = Some(read);
            }
            if no_more {
                ended = Some(round);
                break;
            }
        }
        match ended {
            Some(_) => {
                // vfio_state_pending_exact(): QEMU asks the device again.
                self.data_size(role, None, key)?;
                if let Some((init_now, dirty_now)) = self.qemu_query_precopy(role, key)? {
                    // A driver may save new device data within the query
                    // itself (mlx5vf_precopy_ioctl()): bytes announced now
                    // are right when the next read delivers them.
                    let announced = init_now.saturating_add(dirty_now);
                    let delivered = if announced == 0 {
                        0
                    } else {
                        self.qemu_save_block(role, fd, buffer, into, key)?.0
                    };
                    self.check(
                        key,
                        Check::builtin(
                            "exact-sizes",
                            "V2-PRECOPY-10",
                            announced == 0 || delivered > 0,
                            "once read() has no more precopy data, VFIO_MIG_GET_PRECOPY_INFO reports initial_bytes == 0 and dirty_bytes == 0, or new data that the next read() delivers (vfio_state_pending_exact())".into(),
                            format!(
                                "initial_bytes = {init_now}, dirty_bytes = {dirty_now} after {read} bytes; the next read() delivered {delivered} bytes"
                            ),
                        ).on(&["vfio_precopy_info.initial_bytes", "vfio_precopy_info.dirty_bytes"]),
                    );
                }
            }
            None => self.note(format!(
                "precopy data did not end within {rounds} reads of {buffer} bytes ({read} bytes; QEMU's estimate: {init} initial, {dirty} dirty bytes): QEMU iterates as long as the device has data"
            )),
        }
        self.check(
            key,
            Check::builtin(
                "init-data-sent",
                "V2-PRECOPY-04",
                marker_after.is_some(),
                "QEMU's estimate of the initial bytes reaches 0 (vfio_save_iterate() then sends INIT_DATA_SENT)".into(),
                match marker_after {
                    Some(at) => format!("reached 0 after {at} bytes"),
                    None => format!("still {init} bytes after {read} bytes in {rounds} reads"),
                },
            ),
        );
        Ok(())
    }

    /// vfio_save_complete_precopy(): the device in STOP_COPY, read with
    /// the buffer vfio_save_setup() sized until read() returns 0.
    pub(super) fn qemu_stop_copy(
        &mut self,
        role: Role,
        into: Option<&str>,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let stop_copy = match self.vars.get("stop_copy_length") {
            Some(&v) => Some(v),
            None => self.data_size(role, None, key)?,
        };
        let Some(buffer) = self.qemu_buffer(stop_copy, key) else {
            return Ok(());
        };
        self.read_op(role, into, buffer, ReadUntil::Eof, None, expect, key)
    }

    /// vfio_save_setup(): min(1 MiB, stop_copy_length) bytes (1 MiB when
    /// the GET failed); None (checked) when that is 0, which QEMU cannot
    /// allocate.
    fn qemu_buffer(&mut self, stop_copy: Option<u64>, key: &StepKey) -> Option<u64> {
        let buffer = stop_copy.unwrap_or(QEMU_BUFFER).min(QEMU_BUFFER);
        self.check(
            key,
            Check::builtin(
                "buffer",
                "V2-SIZE-01",
                buffer > 0,
                "stop_copy_length > 0 (QEMU allocates min(1 MiB, stop_copy_length) bytes)".into(),
                format!("stop_copy_length = {}", stop_copy.unwrap_or(QEMU_BUFFER)),
            ),
        );
        (buffer > 0).then_some(buffer)
    }

    /// vfio_query_precopy_size(): (initial_bytes, dirty_bytes), or None
    /// (checked) when the ioctl fails.
    /// One vfio_save_block(): QEMU reads without polling; a short read is
    /// followed by the next one in the same round here.
    fn qemu_save_block(
        &mut self,
        role: Role,
        fd: DataFd,
        buffer: u64,
        into: Option<&str>,
        key: &StepKey,
    ) -> Result<(u64, End), Abort> {
        let state = self.role(role)?.state;
        let call = self.start(
            role,
            "read",
            format!("fd {fd}, {buffer} bytes (vfio_save_block)"),
            key,
        );
        let (n, end, _) =
            self.read_loop(role, fd, buffer, ReadUntil::EndOfPrecopy, buffer, into)?;
        let ret = match end {
            End::Error(e) => StepReturn::Errno {
                name: errno_name(e),
                errno: e as i32,
            },
            End::Enomsg => StepReturn::Errno {
                name: "ENOMSG".into(),
                errno: Errno::ENOMSG as i32,
            },
            _ => StepReturn::Ok(n as i64),
        };
        self.record(call, Returned::ret(ret).in_state(state).moved(n), key);
        Ok((n, end))
    }

    fn qemu_query_precopy(
        &mut self,
        role: Role,
        key: &StepKey,
    ) -> Result<Option<(u64, u64)>, Abort> {
        self.vars.remove("initial_bytes");
        self.precopy_info(role, None, 0, None, key)?;
        Ok(self
            .vars
            .get("initial_bytes")
            .copied()
            .zip(self.vars.get("dirty_bytes").copied()))
    }
}
