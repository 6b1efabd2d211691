//! The data fd: reads, writes, positioned I/O, poll, FD_CLOEXEC and the
//! probe of ended sessions.
#![forbid(unsafe_code)]

use std::time::Instant;

use super::*;
use crate::exec::datafd::{self, End};

impl Exec<'_, '_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_op(
        &mut self,
        role: Role,
        into: Option<&str>,
        chunk: u64,
        until: ReadUntil,
        max: Option<u64>,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let fd = self.session_fd(role, SessionKind::Saving)?;
        let state = self.role(role)?.state;
        let bound = max.unwrap_or_else(|| self.default_bound(role, until));
        let args = format!(
            "fd {fd}, chunk {chunk}, until {}",
            match until {
                ReadUntil::Eof => "eof",
                ReadUntil::EndOfPrecopy => "end_of_precopy",
                ReadUntil::Once => "once",
            }
        );
        let mut call = self.start(role, "read", args.clone(), key);
        let t0 = Instant::now();
        let (total, end, enomsg_seen) = self.read_loop(role, fd, chunk, until, bound, into)?;
        let ret = match end {
            End::Error(e) => StepReturn::Errno {
                name: errno_name(e),
                errno: e as i32,
            },
            End::Enomsg => StepReturn::Errno {
                name: "ENOMSG".into(),
                errno: Errno::ENOMSG as i32,
            },
            End::NotReady => StepReturn::TimedOut,
            _ => StepReturn::Ok(total as i64),
        };
        call.set_args(format!("{args}: {}", end_text(end)));
        self.record(call, Returned::ret(ret).in_state(state).moved(total), key);
        if until == ReadUntil::Eof {
            let dur = nanos(t0.elapsed());
            let downtime = self.role(role)?.downtime_so_far();
            if end == End::Eof && state == Some(MigState::StopCopy) {
                self.transfer(role, Direction::Save, total, dur, chunk, downtime);
                if let Some(d) = downtime {
                    self.judge_downtime(
                        key,
                        "downtime",
                        d,
                        "from leaving RUNNING to the end of the STOP_COPY stream",
                    );
                }
                self.role(role)?.downtime_ns = downtime;
            }
        }
        self.read_checks(role, fd, until, state, total, end, enomsg_seen, bound, key)?;
        if let Some(e) = expect {
            if let Some(w) = &e.result {
                let got = match end {
                    End::Error(err) => Err(err),
                    End::Enomsg => Err(Errno::ENOMSG),
                    _ => Ok(total as i64),
                };
                self.check_result(key, e, w, &got);
            }
            if let Some(c) = &e.bytes {
                self.check_cmp(key, "bytes", e, c, total)?;
            }
            if let Some(want) = e.end {
                let pass = matches!(
                    (want, end),
                    (EndExpect::Eof, End::Eof) | (EndExpect::Enomsg, End::Enomsg)
                );
                self.check(
                    key,
                    Check::expected(
                        e,
                        "end",
                        pass,
                        match want {
                            EndExpect::Eof => "read returns 0".into(),
                            EndExpect::Enomsg => "read fails with ENOMSG".into(),
                        },
                        end_text(end),
                    ),
                );
            }
        }
        if end == End::NotReady {
            return Err(Abort::Driver("the data fd never became readable".into()));
        }
        Ok(())
    }

    /// How many bytes a read loop may take before it is cut off.
    fn default_bound(&mut self, role: Role, until: ReadUntil) -> u64 {
        let budget = self
            .role(role)
            .ok()
            .and_then(|c| c.session.as_ref())
            .and_then(|s| s.precopy_budget);
        match (until, self.vars.get("stop_copy_length"), budget) {
            (ReadUntil::EndOfPrecopy, _, Some(b)) => b.saturating_mul(2).saturating_add(1 << 20),
            (ReadUntil::Eof, Some(&scl), _) => scl.saturating_mul(4).saturating_add(1 << 20),
            _ => 64 << 30,
        }
    }

    /// Reads until the end the step asks for; returns (bytes, how it
    /// ended, whether ENOMSG was seen).
    pub(super) fn read_loop(
        &mut self,
        role: Role,
        fd: DataFd,
        chunk: u64,
        until: ReadUntil,
        bound: u64,
        into: Option<&str>,
    ) -> Result<(u64, End, bool), Abort> {
        let chunk = chunk as usize;
        self.reserve_buf(chunk);
        if let Some(name) = into {
            self.buffers
                .entry(name.to_string())
                .or_insert_with(|| StreamBuf::new(self.opts.spill_threshold));
        }
        let budget = self.opts.deadline;
        let io_timeout = self.opts.io_timeout;
        let Exec {
            roles,
            buffers,
            buf,
            opts,
            ..
        } = self;
        let ctx = role_of(roles, role)?;
        let mut stream = into.map(|name| buffers.get_mut(name).expect("created above"));
        let (total, end) = datafd::read(
            &mut *ctx.dev,
            fd,
            &mut buf[..chunk],
            until,
            bound,
            || wait_budget(budget, io_timeout),
            |data| {
                if let Some(s) = ctx.session.as_mut() {
                    s.bytes += data.len() as u64;
                    s.precopy_read += data.len() as u64;
                }
                match stream.as_mut() {
                    Some(b) => b
                        .append(data, &opts.temp_dir)
                        .map_err(|e| Abort::Harness(format!("cannot keep the stream: {e}"))),
                    None => Ok(()),
                }
            },
        )?;
        Ok((total, end, end == End::Enomsg))
    }

    #[allow(clippy::too_many_arguments)]
    fn read_checks(
        &mut self,
        role: Role,
        fd: DataFd,
        until: ReadUntil,
        state: Option<MigState>,
        total: u64,
        end: End,
        enomsg_seen: bool,
        bound: u64,
        key: &StepKey,
    ) -> Flow {
        match until {
            ReadUntil::Eof => {
                if state == Some(MigState::StopCopy) {
                    self.check(
                        key,
                        Check::builtin(
                            "no-enomsg",
                            "V2-SAVE-02",
                            !enomsg_seen,
                            "ENOMSG never returned in STOP_COPY".into(),
                            end_text(end),
                        ),
                    );
                }
                if end == End::NotReady {
                    self.check(
                        key,
                        Check::builtin(
                            "ready",
                            "KERNEL-02",
                            false,
                            "the data fd becomes readable before the deadline".into(),
                            end_text(end),
                        ),
                    );
                    return Ok(());
                }
                self.check(
                    key,
                    Check::builtin(
                        "end",
                        "V2-SAVE-01",
                        end == End::Eof,
                        format!("read returns 0 within {bound} bytes"),
                        format!("{} after {total} bytes", end_text(end)),
                    ),
                );
                if end == End::Eof {
                    let ctx = role_of(&mut self.roles, role)?;
                    let again = ctx.dev.data_read(fd, &mut self.buf[..1]);
                    let ready = ctx
                        .dev
                        .data_poll(fd, PollFlags::POLLIN, std::time::Duration::ZERO);
                    self.check(
                        key,
                        Check::builtin(
                            "end-again",
                            "V2-SAVE-01",
                            again == Ok(0),
                            "read keeps returning 0".into(),
                            ret_text(&again.map(|n| n as i64)),
                        ),
                    );
                    self.check(
                        key,
                        Check::builtin(
                            "end-readable",
                            "V2-SAVE-01",
                            ready.is_ok_and(|r| r.contains(PollFlags::POLLIN)),
                            "poll reports readable at the end of stream".into(),
                            format!("{ready:?}"),
                        ),
                    );
                }
            }
            ReadUntil::EndOfPrecopy => {
                let observed = format!("{} after {total} bytes", end_text(end));
                self.check(
                    key,
                    Check::builtin(
                        "enomsg",
                        "V2-PRECOPY-06",
                        end == End::Enomsg,
                        "read fails with ENOMSG at the end of precopy data".into(),
                        observed,
                    ),
                );
                let budget = self
                    .role(role)?
                    .session
                    .as_ref()
                    .and_then(|s| s.precopy_budget.map(|b| (b, s.precopy_read)));
                if let Some((b, read)) = budget {
                    self.check(
                        key,
                        Check::builtin(
                            "announced",
                            "V2-PRECOPY-07",
                            read <= b,
                            format!("at most {b} bytes (initial_bytes + dirty_bytes)"),
                            format!("{read} bytes"),
                        )
                        .on(&[
                            "vfio_precopy_info.initial_bytes",
                            "vfio_precopy_info.dirty_bytes",
                        ]),
                    );
                } else if end == End::Bound {
                    self.check(
                        key,
                        Check::builtin(
                            "bounded",
                            "V2-PRECOPY-07",
                            false,
                            format!("precopy data ends within {bound} bytes"),
                            end_text(end),
                        ),
                    );
                }
            }
            ReadUntil::Once => {}
        }
        Ok(())
    }

    pub(super) fn positioned(
        &mut self,
        role: Role,
        write: bool,
        offset: u64,
        len: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let kind = if write {
            SessionKind::Resuming
        } else {
            SessionKind::Saving
        };
        let fd = self.session_fd(role, kind)?;
        let len = len as usize;
        self.reserve_buf(len);
        let op = if write { "pwrite" } else { "pread" };
        let args = format!("fd {fd}, {len} bytes at offset {offset}");
        let call = self.start(role, op, args, key);
        let ctx = role_of(&mut self.roles, role)?;
        let r = if write {
            ctx.dev.data_pwrite(fd, &self.buf[..len], offset)
        } else {
            ctx.dev.data_pread(fd, &mut self.buf[..len], offset)
        };
        let state = ctx.state;
        let got = r.map(|n| n as i64);
        self.record(call, Returned::of(&got).in_state(state), key);
        if !self.expected_result(key, expect, &got) {
            let id = if write { "V2-RESUME-07" } else { "V2-SAVE-04" };
            self.check(
                key,
                Check::builtin(
                    "refused",
                    id,
                    r.is_err(),
                    format!("{op} fails (ESPIPE in known drivers)"),
                    ret_text(&got),
                ),
            );
        }
        Ok(())
    }

    /// Writes a saved stream (with its mutation) to the resuming fd.
    /// Returns the bytes accepted and the first error.
    pub(crate) fn write_stream(
        &mut self,
        role: Role,
        fd: DataFd,
        w: &WriteSpec,
    ) -> Result<(u64, Option<Errno>), Abort> {
        let mut stream = self
            .buffers
            .remove(&w.from)
            .ok_or_else(|| Abort::Driver(format!("buffer `{}` was never filled", w.from)))?;
        // No write is longer than the (mutated) stream, whatever the chunk.
        let total = stream.len().saturating_sub(w.mutation.truncate) + w.mutation.extra;
        let chunk = usize::try_from(w.chunk.min(total.max(1))).unwrap_or(usize::MAX);
        self.reserve_buf(chunk);
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            let mut reader = stream
                .reader(&w.mutation)
                .map_err(|e| Abort::Harness(format!("cannot read buffer `{}`: {e}", w.from)))?;
            let mut written = 0u64;
            loop {
                let data = reader
                    .next_chunk(&mut buf[..chunk])
                    .map_err(|e| Abort::Harness(format!("cannot read buffer `{}`: {e}", w.from)))?;
                if data.is_empty() {
                    return Ok((written, None));
                }
                let (deadline, io_timeout) = (self.opts.deadline, self.opts.io_timeout);
                let dev = &mut *role_of(&mut self.roles, role)?.dev;
                let w = datafd::write_all(dev, fd, data, || wait_budget(deadline, io_timeout));
                written += w.bytes as u64;
                if let Some(e) = w.errno() {
                    return Ok((written, Some(e)));
                }
            }
        })();
        self.buf = buf;
        let len = stream.len();
        self.buffers.insert(w.from.clone(), stream);
        if let Ok((written, err)) = &result {
            self.role(role)?.delivered = Delivered::of(&w.mutation, len, *written, *err);
        }
        result
    }

    pub(super) fn write_op(
        &mut self,
        role: Role,
        w: &WriteSpec,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<Option<Errno>, Abort> {
        let fd = self.session_fd(role, SessionKind::Resuming)?;
        let args = format!(
            "fd {fd}, `{}` in chunks of {}{}",
            w.from,
            w.chunk,
            mutation_text(&w.mutation)
        );
        let call = self.start(role, "write", args, key);
        let (written, err) = self.write_stream(role, fd, w)?;
        let state = self.role(role)?.state;
        let got: Result<i64, Errno> = match err {
            Some(e) => Err(e),
            None => Ok(written as i64),
        };
        self.record(call, Returned::of(&got).in_state(state).moved(written), key);
        if err == Some(Errno::ETIMEDOUT) {
            self.check(
                key,
                Check::builtin(
                    "ready",
                    "KERNEL-02",
                    false,
                    "the data fd becomes writable before the deadline".into(),
                    "poll timed out".into(),
                ),
            );
            return Err(Abort::Driver("the data fd never became writable".into()));
        }
        if let Some(e) = expect {
            if let Some(wnt) = &e.result {
                self.check_result(key, e, wnt, &got);
            }
            if let Some(c) = &e.bytes {
                self.check_cmp(key, "bytes", e, c, written)?;
            }
        }
        Ok(err)
    }

    pub(super) fn poll_op(
        &mut self,
        role: Role,
        readable: bool,
        writable: bool,
        timeout: std::time::Duration,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let ctx = self.role(role)?;
        let Some(fd) = ctx.session.as_ref().map(|s| s.fd) else {
            return Err(Abort::Harness(format!(
                "no data session is open on the {role}"
            )));
        };
        let mut events = PollFlags::empty();
        if readable {
            events |= PollFlags::POLLIN;
        }
        if writable {
            events |= PollFlags::POLLOUT;
        }
        let args = format!(
            "fd {fd}, {events:?}, {}",
            humantime::format_duration(timeout)
        );
        let call = self.start(role, "poll", args, key);
        let limit = timeout.min(self.opts.io_timeout);
        let r = self.role(role)?.dev.data_poll(fd, events, limit);
        let state = self.role(role)?.state;
        let got = r.map(|ev| i64::from(ev.bits()));
        self.record(call, Returned::of(&got).in_state(state), key);
        if let Some((e, want)) = expect.and_then(|e| e.readable.map(|w| (e, w))) {
            let is = r.is_ok_and(|ev| ev.contains(PollFlags::POLLIN));
            self.check(
                key,
                Check::expected(
                    e,
                    "readable",
                    is == want,
                    if want {
                        "readable".into()
                    } else {
                        "not readable".into()
                    },
                    format!("{r:?}"),
                ),
            );
        }
        Ok(())
    }

    pub(super) fn cloexec(&mut self, role: Role, key: &StepKey) -> Flow {
        let ctx = self.role(role)?;
        let Some(fd) = ctx.session.as_ref().map(|s| s.fd) else {
            return Err(Abort::Harness(format!(
                "no data session is open on the {role}"
            )));
        };
        let r = ctx.dev.data_cloexec(fd);
        self.check(
            key,
            Check::builtin(
                "cloexec",
                "V2-SAVE-06",
                r == Ok(true),
                "FD_CLOEXEC set".into(),
                format!("{r:?}"),
            ),
        );
        Ok(())
    }

    pub(super) fn close_data_fd(&mut self, role: Role, key: &StepKey) -> Flow {
        let ctx = self.role(role)?;
        let Some(s) = ctx.session.take() else {
            return Err(Abort::Harness(format!(
                "no data session is open on the {role}"
            )));
        };
        let call = Call::quiet(role, "close", format!("fd {}", s.fd));
        let r = ctx.dev.data_close(s.fd);
        let state = ctx.state;
        self.record(call, Returned::of(&r.map(|()| 0)).in_state(state), key);
        Ok(())
    }

    /// Probes the most recently ended session: it must not deliver device
    /// data any more, nor accept data.
    pub(super) fn session_ended(&mut self, role: Role, key: &StepKey) -> Flow {
        let Some((fd, kind, by)) = self.role(role)?.ended.pop() else {
            return Err(Abort::Harness(format!(
                "no ended session on the {role} to probe"
            )));
        };
        self.probe_ended(role, fd, kind, by, key)
    }

    /// Reads (or writes) an ended session's fd, checks that nothing moves,
    /// and closes it. The requirement depends on what ended the session.
    pub(super) fn probe_ended(
        &mut self,
        role: Role,
        fd: DataFd,
        kind: SessionKind,
        by: EndedBy,
        key: &StepKey,
    ) -> Flow {
        let probe_op = match kind {
            SessionKind::Saving => "read",
            SessionKind::Resuming => "write",
        };
        let call = self.start(role, probe_op, format!("fd {fd} of an ended session"), key);
        let ctx = role_of(&mut self.roles, role)?;
        let r = match kind {
            SessionKind::Saving => {
                let _ = ctx
                    .dev
                    .data_poll(fd, PollFlags::POLLIN, std::time::Duration::ZERO);
                ctx.dev.data_read(fd, &mut self.buf[..4096])
            }
            SessionKind::Resuming => ctx.dev.data_write(fd, &self.buf[..16]),
        };
        let _ = ctx.dev.data_close(fd);
        let state = ctx.state;
        let got = r.map(|n| n as i64);
        self.record(call, Returned::of(&got).in_state(state), key);
        let ids: &[&str] = match (by, kind) {
            (EndedBy::Transition, SessionKind::Saving) => &["V2-FSM-09", "V2-SAVE-05"],
            (EndedBy::Transition, SessionKind::Resuming) => &["V2-FSM-09"],
            (EndedBy::Reset, _) => &["V2-RESET-02"],
            (EndedBy::DeviceClosed, _) => &["V2-FSM-13"],
        };
        let (pass, expected) = match kind {
            SessionKind::Saving => (
                matches!(r, Ok(0) | Err(_)),
                "end of stream or an error, no data",
            ),
            SessionKind::Resuming => (r.is_err(), "writes fail"),
        };
        self.check(
            key,
            Check {
                kind: "ended",
                ids: ids.iter().map(|s| s.to_string()).collect(),
                strength: Strength::Must,
                pass,
                expected: expected.to_string(),
                observed: ret_text(&got),
                fields: &[],
            },
        );
        Ok(())
    }
}

impl Exec<'_, '_> {
    /// V2-TIME-02: the device's share of a migration's downtime against
    /// `--downtime-budget`.
    pub(super) fn judge_downtime(
        &mut self,
        key: &StepKey,
        kind: &'static str,
        ns: u64,
        what: &str,
    ) {
        let budget = self.opts.downtime_budget;
        let pass = ns <= nanos(budget);
        self.check_lazy(key, kind, pass, || {
            Check::builtin(
                kind,
                "V2-TIME-02",
                pass,
                format!(
                    "the device's downtime within {} (--downtime-budget)",
                    humantime::format_duration(budget)
                ),
                format!("{} {what}", ms_text(ns)),
            )
        });
    }
}

fn end_text(e: End) -> String {
    match e {
        End::Eof => "read returned 0 (end of stream)".into(),
        End::Enomsg => "read failed with ENOMSG".into(),
        End::Error(e) => format!("read failed with {}", errno_name(e)),
        End::Bound => "no end before the byte bound".into(),
        End::NotReady => "poll never reported the fd readable".into(),
        End::Once(n) => format!("one read returned {n}"),
    }
}

pub(super) fn mutation_text(m: &crate::scenario::Mutation) -> String {
    let mut parts = Vec::new();
    if m.truncate > 0 {
        parts.push(format!("last {} bytes dropped", m.truncate));
    }
    if !m.corrupt.is_empty() {
        parts.push(format!("bytes {:?} flipped", m.corrupt));
    }
    if m.extra > 0 {
        parts.push(format!("{} extra bytes", m.extra));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}
