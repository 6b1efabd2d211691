//! Whole transfers: save, resume, pipe between devices, and comparing
//! saved streams.
#![forbid(unsafe_code)]

use std::time::Instant;

use super::data::mutation_text;
use super::*;

impl Exec<'_, '_> {
    pub(crate) fn save(
        &mut self,
        role: Role,
        into: &str,
        chunk: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        self.buffers.remove(into);
        let from_stop = self.role(role)?.state == Some(MigState::Stop);
        let estimate = if from_stop {
            self.data_size(role, None, key)?
        } else {
            None
        };
        let set = self.set_state(role, MigState::StopCopy.raw(), None, key)?;
        if !set.ok {
            return Err(Abort::Driver("SET STOP_COPY failed".into()));
        }
        self.session_fd(role, SessionKind::Saving)?;
        let before = self.buffers.get(into).map_or(0, StreamBuf::len);
        self.read_op(role, Some(into), chunk, ReadUntil::Eof, None, None, key)?;
        let bytes = self.buffers.get(into).map_or(0, StreamBuf::len) - before;
        if let Some(scl) = estimate {
            self.check(
                key,
                Check::builtin(
                    "within-estimate",
                    "V2-SIZE-03",
                    bytes <= scl,
                    format!("at most stop_copy_length = {scl} bytes"),
                    format!("{bytes} bytes"),
                )
                .on(&["vfio_device_feature_mig_data_size.stop_copy_length"]),
            );
            self.check(
                key,
                Check::builtin(
                    "estimate-sane",
                    "V2-SIZE-04",
                    scl <= bytes.saturating_mul(2).saturating_add(4096),
                    format!("stop_copy_length at most 2 x {bytes} + 4096"),
                    format!("stop_copy_length = {scl}"),
                )
                .on(&["vfio_device_feature_mig_data_size.stop_copy_length"]),
            );
            if bytes > 0 {
                self.note(format!(
                    "stop_copy_length {scl} for {bytes} bytes read (ratio actual/estimate {:.3})",
                    bytes as f64 / scl.max(1) as f64
                ));
            }
        }
        self.set_state(role, MigState::Stop.raw(), None, key)?;
        if let Some((e, c)) = expect.and_then(|e| e.bytes.as_ref().map(|c| (e, c))) {
            self.check_cmp(key, "bytes", e, c, bytes)?;
        }
        Ok(())
    }

    /// STOP -> RESUMING, write the stream, RESUMING -> STOP.
    pub(super) fn resume(
        &mut self,
        role: Role,
        w: &WriteSpec,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        if self.role(role)?.state != Some(MigState::Stop)
            && !self.set_state(role, MigState::Stop.raw(), None, key)?.ok
        {
            return Err(Abort::Driver("SET STOP failed before resuming".into()));
        }
        if !self
            .set_state(role, MigState::Resuming.raw(), None, key)?
            .ok
        {
            return Err(Abort::Driver("SET RESUMING failed".into()));
        }
        let fd = self.session_fd(role, SessionKind::Resuming)?;
        let args = format!(
            "fd {fd}, `{}` in chunks of {}{}",
            w.from,
            w.chunk,
            mutation_text(&w.mutation)
        );
        let call = self.start(role, "write", args, key);
        let t0 = Instant::now();
        let (written, err) = self.write_stream(role, fd, w)?;
        let got: Result<i64, Errno> = match err {
            Some(e) => Err(e),
            None => Ok(written as i64),
        };
        let state = self.role(role)?.state;
        self.record(call, Returned::of(&got).in_state(state).moved(written), key);
        self.transfer(
            role,
            Direction::Resume,
            written,
            nanos(t0.elapsed()),
            w.chunk,
            None,
        );
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
        // RESUMING -> STOP is the driver's verdict on the data; it is judged
        // here (V2-RESUME-*), not as a plain arc of the model.
        let stop_key = StepKey {
            prefix: format!("{}-stop", key.prefix),
            loc: key.loc.clone(),
        };
        let delivered = self.role(role)?.delivered.clone();
        let stop = self.set_unjudged(role, MigState::Stop.raw(), &stop_key)?;
        let now = self.role(role)?.state;
        let accepted = err.is_none() && stop;
        let observed = match (err, stop) {
            (Some(e), _) => format!(
                "write failed with {} after {written} bytes; RESUMING -> STOP {}",
                errno_name(e),
                if stop { "succeeded" } else { "failed" }
            ),
            (None, true) => format!("{written} bytes written and RESUMING -> STOP succeeded"),
            (None, false) => format!("{written} bytes written; RESUMING -> STOP failed"),
        };
        // The complete-stream rule: after a write refused before the whole
        // stream was accepted, the driver holds a part of it, and loading
        // that is never right, whatever the case expects of the write.
        if let (Some(_), Delivered::Unfit(why)) = (err, &delivered) {
            self.check(
                &stop_key,
                Check {
                    kind: "complete-stream",
                    ids: vec!["V2-RESUME-03".into(), "V2-RESUME-04".into()],
                    strength: Strength::Must,
                    pass: !stop,
                    expected: format!("RESUMING -> STOP fails: {why}"),
                    observed: observed.clone(),
                    fields: &[],
                },
            );
        }
        let want = expect.and_then(|e| e.result.as_ref().map(|r| (e, r)));
        match want {
            None | Some((_, ResultExpect::Ok)) => {
                let (ids, strength) = match want {
                    Some((e, _)) => (e.ids.clone(), e.strength),
                    None => (
                        vec!["V2-RESUME-01".to_string()],
                        strength_of("V2-RESUME-01"),
                    ),
                };
                self.check(
                    key,
                    Check {
                        kind: "resumed",
                        ids,
                        strength,
                        pass: accepted,
                        expected: "stream accepted".into(),
                        observed,
                        fields: &[],
                    },
                );
                if stop {
                    self.check(
                        &stop_key,
                        Check::builtin(
                            "state",
                            "V2-FSM-03",
                            now == Some(MigState::Stop),
                            "STOP after RESUMING -> STOP".into(),
                            now.map_or("unknown".into(), |s| s.name().to_string()),
                        ),
                    );
                }
            }
            Some((e, w)) => {
                // Refusing means RESUMING -> STOP fails; a write error is
                // not a refusal when STOP then loads what was accepted. The
                // one exception: the whole stream was accepted and only the
                // bytes beyond it refused; that write error is the refusal
                // of the overflow, and STOP may load the stream.
                let overflow_only = delivered == Delivered::StreamOverflowRefused;
                let pass = match w {
                    ResultExpect::Errno(list) => err.is_some_and(|x| list.contains(&x)),
                    _ => overflow_only || !stop,
                };
                let expected = match w {
                    ResultExpect::Errno(list) => format!(
                        "write() fails with {}",
                        list.iter()
                            .map(|e| errno_name(*e))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                    _ if overflow_only => "the bytes beyond the stream refused by write()".into(),
                    _ => "RESUMING -> STOP fails".into(),
                };
                self.check(
                    key,
                    Check::expected(e, "rejected", pass, expected, observed),
                );
                if overflow_only {
                    self.note(format!(
                        "only the bytes beyond the whole {written}-byte stream were refused; RESUMING -> STOP then {}",
                        if stop {
                            "loaded the stream"
                        } else {
                            "refused the overfilled session"
                        }
                    ));
                }
                if !stop {
                    self.check(
                        &stop_key,
                        Check::builtin(
                            "state-after-rejection",
                            "V2-RESUME-03",
                            matches!(now, Some(MigState::Resuming | MigState::Error)),
                            "RESUMING or ERROR".into(),
                            now.map_or("unknown".into(), |s| s.name().to_string()),
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Saves on `role` and writes straight into `to` without keeping the
    /// stream (source STOP_COPY -> destination RESUMING).
    pub(super) fn pipe(
        &mut self,
        role: Role,
        to: Role,
        chunk: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        for r in [role, to] {
            if self.role(r)?.state != Some(MigState::Stop)
                && !self.set_state(r, MigState::Stop.raw(), None, key)?.ok
            {
                return Err(Abort::Driver(format!("SET STOP failed on the {r}")));
            }
        }
        if !self.set_state(to, MigState::Resuming.raw(), None, key)?.ok
            || !self
                .set_state(role, MigState::StopCopy.raw(), None, key)?
                .ok
        {
            return Err(Abort::Driver("could not open both sessions".into()));
        }
        let src = self.session_fd(role, SessionKind::Saving)?;
        let dst = self.session_fd(to, SessionKind::Resuming)?;
        let chunk = chunk as usize;
        self.reserve_buf(chunk);
        let args = format!("fd {src} on {role} -> fd {dst} on {to}, chunks of {chunk}");
        let call = self.start(role, "pipe", args, key);
        let t0 = Instant::now();
        let mut total = 0u64;
        let mut failure = None;
        loop {
            match self.wait_ready(role, src, PollFlags::POLLIN)? {
                Ok(ev) if ev.is_empty() => {
                    failure = Some(format!("source not readable after {total} bytes"));
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    failure = Some(format!("poll failed with {}", errno_name(e)));
                    break;
                }
            }
            let n = match role_of(&mut self.roles, role)?
                .dev
                .data_read(src, &mut self.buf[..chunk])
            {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    failure = Some(format!("read failed with {}", errno_name(e)));
                    break;
                }
            };
            let mut off = 0;
            while off < n {
                match role_of(&mut self.roles, to)?
                    .dev
                    .data_write(dst, &self.buf[off..n])
                {
                    Ok(0) => {
                        failure = Some("write returned 0".into());
                        break;
                    }
                    Ok(k) => off += k,
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(e) => {
                        failure = Some(format!("write failed with {}", errno_name(e)));
                        break;
                    }
                }
            }
            total += off as u64;
            if failure.is_some() {
                break;
            }
        }
        let state = self.role(role)?.state;
        self.record(
            call,
            Returned::ret(match &failure {
                Some(_) => StepReturn::Errno {
                    name: "EIO".into(),
                    errno: Errno::EIO as i32,
                },
                None => StepReturn::Ok(total as i64),
            })
            .in_state(state)
            .moved(total),
            key,
        );
        let downtime = self.role(role)?.downtime_so_far();
        self.transfer(
            role,
            Direction::Save,
            total,
            nanos(t0.elapsed()),
            chunk as u64,
            downtime,
        );
        self.role(role)?.downtime_ns = downtime;
        self.role(to)?.delivered = match &failure {
            None => Delivered::Stream,
            Some(why) => Delivered::Unfit(why.clone()),
        };
        let stopped = self.set_state(to, MigState::Stop.raw(), None, key)?.ok;
        self.set_state(role, MigState::Stop.raw(), None, key)?;
        let pass = failure.is_none() && stopped;
        let observed = failure.unwrap_or_else(|| {
            format!(
                "{total} bytes; RESUMING -> STOP {}",
                if stopped { "succeeded" } else { "failed" }
            )
        });
        match expect {
            Some(e) => {
                if let Some(w) = &e.result {
                    self.check(
                        key,
                        Check::expected(
                            e,
                            "resumed",
                            pass == (*w == ResultExpect::Ok),
                            "stream accepted".into(),
                            observed.clone(),
                        ),
                    );
                }
                if let Some(c) = &e.bytes {
                    self.check_cmp(key, "bytes", e, c, total)?;
                }
            }
            None => self.check(
                key,
                Check::builtin(
                    "resumed",
                    "V2-RESUME-01",
                    pass,
                    "stream accepted".into(),
                    observed,
                ),
            ),
        }
        Ok(())
    }

    pub(super) fn compare(
        &mut self,
        a: &str,
        b: &str,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let e = expect.ok_or_else(|| Abort::Harness("compare needs an expect".into()))?;
        let want = e.equal.unwrap_or(true);
        let mut ba = self
            .buffers
            .remove(a)
            .ok_or_else(|| Abort::Driver(format!("buffer `{a}` was never filled")))?;
        let diff = if a == b {
            Ok(None)
        } else {
            match self.buffers.get_mut(b) {
                Some(bb) => StreamBuf::first_difference(&mut ba, bb),
                None => {
                    self.buffers.insert(a.to_string(), ba);
                    return Err(Abort::Driver(format!("buffer `{b}` was never filled")));
                }
            }
        };
        let (la, lb) = (
            ba.len(),
            self.buffers.get(b).map_or(ba.len(), StreamBuf::len),
        );
        self.buffers.insert(a.to_string(), ba);
        let diff = diff.map_err(|err| Abort::Harness(format!("cannot compare streams: {err}")))?;
        let observed = match diff {
            None => format!("identical ({la} bytes)"),
            Some(at) => format!("differ at byte {at} (`{a}` {la} bytes, `{b}` {lb} bytes)"),
        };
        self.check(
            key,
            Check::expected(
                e,
                "equal",
                diff.is_none() == want,
                if want {
                    format!("`{a}` and `{b}` identical")
                } else {
                    format!("`{a}` and `{b}` differ")
                },
                observed,
            ),
        );
        Ok(())
    }
}
