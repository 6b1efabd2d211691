//! The device's life around migration: reset, the ERROR state, closing
//! and reopening the device.
#![forbid(unsafe_code)]

use super::*;

impl Exec<'_, '_> {
    pub(super) fn reset(&mut self, role: Role, expect: Option<&Expect>, key: &StepKey) -> Flow {
        let call = self.start(role, "VFIO_DEVICE_RESET", String::new(), key);
        let had_session = self.role(role)?.session.is_some();
        let r = self.role(role)?.dev.reset();
        let got = r.map(|()| 0);
        let g = self.role(role)?.dev.get_state();
        self.record(call, Returned::of(&got).in_state(g.ok()), key);
        if !self.expected_result(key, expect, &got) {
            self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-RESET-01",
                    r.is_ok(),
                    "reset succeeds".into(),
                    ret_text(&got),
                ),
            );
        }
        let want = match expect.and_then(|e| e.state.as_ref()) {
            Some(s) => self.resolve_state(s)?,
            None => MigState::Running.raw(),
        };
        self.check(
            key,
            Check::builtin(
                "running",
                "V2-RESET-01",
                g == Ok(MigState::from_raw(want).unwrap_or(MigState::Running)),
                format!("{} after reset", state_name(want)),
                format!("{g:?}"),
            ),
        );
        self.end_session(role, EndedBy::Reset)?;
        let ctx = self.role(role)?;
        ctx.state = g.ok();
        ctx.logging = false;
        ctx.logged_ranges.clear();
        ctx.declared_pages.clear();
        ctx.stopped_at = None;
        ctx.loaded_ns = None;
        if had_session {
            let probe = StepKey {
                prefix: format!("{}-session", key.prefix),
                loc: key.loc.clone(),
            };
            if let Some((fd, kind, by)) = self.role(role)?.ended.pop() {
                self.probe_ended(role, fd, kind, by, &probe)?;
            }
        }
        Ok(())
    }

    /// V2-RESET-03: ERROR is left only by reset. Applies only when the
    /// device is in ERROR.
    pub(super) fn error_state(&mut self, role: Role, key: &StepKey) -> Flow {
        let call = self.start(role, "GET MIG_DEVICE_STATE", String::new(), key);
        let g = self.role(role)?.dev.get_state();
        self.record(
            call,
            Returned::of(&g.map(|s| i64::from(s.raw()))).in_state(g.ok()),
            key,
        );
        if g != Ok(MigState::Error) {
            self.note(format!(
                "V2-RESET-03 not applicable: the device is in {} (not ERROR)",
                g.map_or_else(
                    |e| format!("an unknown state ({})", errno_name(e)),
                    |s| s.name().to_string()
                )
            ));
            self.role(role)?.state = g.ok();
            return Ok(());
        }
        self.role(role)?.state = Some(MigState::Error);
        self.set_state(role, MigState::Running.raw(), None, key)?;
        self.reset(
            role,
            None,
            &StepKey {
                prefix: format!("{}-reset", key.prefix),
                loc: key.loc.clone(),
            },
        )
    }

    pub(super) fn close_device(&mut self, role: Role, key: &StepKey) -> Flow {
        let call = self.start(role, "close device fd", String::new(), key);
        let r = self.role(role)?.dev.close_device();
        self.record(call, Returned::of(&r.map(|()| 0)), key);
        // The session cannot outlive the device file (V2-FSM-13).
        self.end_session(role, EndedBy::DeviceClosed)?;
        let ctx = self.role(role)?;
        ctx.state = None;
        // The MIG_PRECOPY_INFOv2 opt-in lasts for one open (V2-PRECOPY-13).
        ctx.precopy_info_v2 = false;
        if let Err(e) = r {
            return Err(Abort::Harness(format!(
                "closing the device failed with {}",
                errno_name(e)
            )));
        }
        Ok(())
    }

    pub(super) fn reopen(&mut self, role: Role, key: &StepKey) -> Flow {
        let call = self.start(role, "open device", String::new(), key);
        let r = self.role(role)?.dev.reopen();
        let g = self.role(role)?.dev.get_state().ok();
        self.record(call, Returned::of(&r.map(|()| 0)).in_state(g), key);
        if let Err(e) = r {
            return Err(Abort::Harness(format!(
                "reopening the device failed with {}",
                errno_name(e)
            )));
        }
        self.role(role)?.state = g;
        Ok(())
    }
}
