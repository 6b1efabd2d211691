//! The simulator's state machine: one arc at a time as a driver steps
//! (`mtty_step_state()`), the combination walk, and what SET and GET answer.

use super::*;

impl Core {
    /// One arc of the state machine, like `mtty_step_state()`; returns the
    /// data fd the arc opens.
    pub(super) fn step(&mut self, next: MigState) -> Result<Option<DataFd>, Errno> {
        use MigState::*;
        if next == StopCopy && self.has(Fault::HangTransition) {
            hang();
        }
        Ok(match (self.state, next) {
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => Some(self.open_save(Phase::PreCopy)),
            (Stop, StopCopy) => {
                let fd = self.open_save(Phase::StopCopy);
                if self.has(Fault::NoFdOnStopToStopCopy) {
                    self.fds.remove(&fd);
                    None
                } else {
                    Some(fd)
                }
            }
            (Stop, Resuming) => Some(self.open_resume()),
            (PreCopy | PreCopyP2p, StopCopy) => {
                if let Some(saver) = self.saver_mut() {
                    saver.set_phase(Phase::StopCopy);
                }
                if self.has(Fault::NewFdOnPrecopyToStopCopy) && self.session.is_some() {
                    let fd = self.new_fd(true);
                    if let Some(session) = &mut self.session {
                        session.fd = fd;
                    }
                    Some(fd)
                } else {
                    None
                }
            }
            (Resuming, Stop) => {
                self.finish_resume()?;
                None
            }
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) | (StopCopy, Stop) => {
                self.end_session();
                None
            }
            _ => None,
        })
    }

    /// SET MIG_DEVICE_STATE, walking arc by arc like `mtty_set_state()`.
    pub(super) fn walk_to(&mut self, target: u32) -> Result<Option<DataFd>, Errno> {
        let start = self.state;
        self.stop_gets = 0;
        let target_state = MigState::from_raw(target);
        if start == MigState::Error {
            let leaves = self.has(Fault::ErrorOnResumeStays)
                && self.resume_error
                && target_state.is_some_and(|t| t != MigState::Error && self.flags.supports(t));
            if !leaves {
                return Err(Errno::EINVAL);
            }
            self.state = MigState::Stop;
        } else if target_state == Some(MigState::Error) && self.has(Fault::SetErrorAccepted) {
            self.end_session();
            self.state = MigState::Error;
            self.early = Some(start);
            return Ok(None);
        } else if start == MigState::StopCopy
            && self.has(Fault::StopCopyToPreCopyAccepted)
            && target_state.is_some_and(|t| t.is_precopy() && self.flags.supports(t))
        {
            if let Some(saver) = self.saver_mut() {
                saver.set_phase(Phase::PreCopy);
            }
            self.state = target_state.unwrap_or(start);
            self.early = Some(start);
            return Ok(None);
        }
        let mut fd = None;
        while self.state.raw() != target {
            let Some(next) = next_state(self.flags, self.state, target) else {
                if self.has(Fault::RefusedSetStops) {
                    self.end_session();
                    self.state = MigState::Stop;
                }
                return Err(Errno::EINVAL);
            };
            fd = self.step(next)?;
            self.state = next;
        }
        if self.state != start {
            self.early = Some(start);
            self.resume_error = false;
        }
        Ok(fd)
    }

    pub(super) fn report_state(&mut self) -> MigState {
        let mut reported = self.state;
        if self.has(Fault::StateReportedEarly) {
            if let Some(previous) = self.early.take() {
                reported = previous;
            }
        }
        if self.has(Fault::SpontaneousStateChange) && self.state == MigState::Stop {
            self.stop_gets += 1;
            if self.stop_gets >= GETS_BEFORE_MOVING {
                self.state = MigState::Running;
                self.stop_gets = 0;
            }
        }
        reported
    }

    pub(super) fn announced_length(&self) -> u64 {
        let exact = self.content.geometry.stream_len();
        if self.has(Fault::StopCopyLengthUnder) {
            exact / 2
        } else if self.has(Fault::StopCopyLengthOver) {
            exact * 8
        } else {
            exact
        }
    }

    /// How long a SET to `target` takes: the configured latency, plus
    /// [`SLOW_SET`] for the first STOP_COPY under `slow-transition`, plus
    /// [`SLOW_STOP`] for the first stop of the running device under
    /// `slow-stop`.
    pub(super) fn set_delay(&mut self, target: u32) -> Duration {
        let mut delay = self.config.latency();
        if self.has(Fault::SlowTransition) && !self.slow_done && target == MigState::StopCopy.raw()
        {
            self.slow_done = true;
            delay += SLOW_SET;
        }
        let running = matches!(self.state, MigState::Running | MigState::RunningP2p);
        if self.has(Fault::SlowStop)
            && !self.slow_stop_done
            && running
            && target == MigState::Stop.raw()
        {
            self.slow_stop_done = true;
            delay += SLOW_STOP;
        }
        delay
    }

    /// Takes `d`: sleeps, and the device's clock advances by it.
    pub(super) fn take(&mut self, d: Duration) {
        sleep(d);
        self.clock += d;
    }

    pub(super) fn mig_device_state(
        &mut self,
        req: &mut FeatureRequest,
        input: &[u8],
    ) -> Result<(), Errno> {
        if req.flags & VFIO_DEVICE_FEATURE_GET != 0 {
            let state = self.report_state();
            let reply = VfioDeviceFeatureMigState {
                device_state: state.raw(),
                data_fd: -1,
            };
            reply_with(req, &reply.to_bytes());
            return Ok(());
        }
        let target = VfioDeviceFeatureMigState::from_bytes(input).device_state;
        let delay = self.set_delay(target);
        self.take(delay);
        let start = self.state;
        let result = if self.wedged {
            Err(Errno::EIO)
        } else {
            self.walk_to(target)
        };
        if result.is_err() && self.has(Fault::RecoverSetFails) {
            self.wedged = true;
        }
        if result.is_ok()
            && start == MigState::Resuming
            && self.state != MigState::Resuming
            && self.has(Fault::SlowLoad)
            && !self.slow_load_done
        {
            self.slow_load_done = true;
            self.take(SLOW_STOP);
        }
        // The core copies the requested state back, success or not.
        let copied = match result {
            Err(_) if self.has(Fault::FailedSetCopiesState) => self.state.raw(),
            _ => target,
        };
        let reply = VfioDeviceFeatureMigState {
            device_state: copied,
            data_fd: result.ok().flatten().unwrap_or(-1),
        };
        reply_with(req, &reply.to_bytes());
        result.map(drop)
    }
}
