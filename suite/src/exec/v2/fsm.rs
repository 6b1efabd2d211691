//! The v2 state machine: GET and SET of MIG_DEVICE_STATE against the
//! model, raw feature calls, the MIGRATION flags and the stop-copy size.
#![forbid(unsafe_code)]

use super::*;

const RUNNING_STATES: [MigState; 4] = [
    MigState::Running,
    MigState::RunningP2p,
    MigState::PreCopy,
    MigState::PreCopyP2p,
];

/// A SET and the GET right after it.
struct SetCall {
    r: crate::device::SetStateResult,
    got: Result<i64, Errno>,
    g: Result<(u32, DataFd), Errno>,
    after: Option<MigState>,
    t0: Duration,
}

impl Exec<'_, '_> {
    pub(super) fn get_state(&mut self, role: Role, expect: Option<&Expect>, key: &StepKey) -> Flow {
        let r = self.call(role, "GET MIG_DEVICE_STATE", String::new(), key, |x| {
            let r = x.role(role)?.dev.get_state_raw();
            let got = r.map(|(s, _)| i64::from(s));
            let now = r.ok().and_then(|(s, _)| MigState::from_raw(s));
            Ok((r, Returned::of(&got).in_state(now)))
        })?;
        let got: Result<i64, Errno> = r.map(|(s, _)| i64::from(s));
        let state_now = r.ok().and_then(|(s, _)| MigState::from_raw(s));
        let explicit = self.expected_result(key, expect, &got);
        let Ok((raw, fd)) = r else {
            if !explicit {
                self.check(
                    key,
                    Check::builtin(
                        "result",
                        "V2-FSM-02",
                        false,
                        "GET succeeds".into(),
                        ret_text(&got),
                    ),
                );
            }
            return Ok(());
        };
        self.check(
            key,
            Check::builtin(
                "data-fd",
                "V2-FSM-02",
                fd == -1,
                "data_fd = -1".into(),
                format!("data_fd = {fd}"),
            )
            .on(&["vfio_device_feature_mig_state.data_fd"]),
        );
        let tracked = self.role(role)?.state;
        if let Some(e) = expect.filter(|e| e.state.is_some()) {
            let want = self.resolve_state(e.state.as_ref().expect("filtered"))?;
            self.check(
                key,
                Check::expected(e, "state", raw == want, state_name(want), state_name(raw)),
            );
        } else if let Some(t) = tracked {
            self.check(
                key,
                Check::builtin(
                    "state",
                    "V2-FSM-11",
                    raw == t.raw(),
                    format!("{t} (no SET since)"),
                    state_name(raw),
                )
                .on(&["vfio_device_feature_mig_state.device_state"]),
            );
        }
        self.role(role)?.state = state_now;
        Ok(())
    }

    /// SET MIG_DEVICE_STATE to `target`, checked against the model, then
    /// GET to see where the device is.
    pub(crate) fn set_state(
        &mut self,
        role: Role,
        target: u32,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<SetOutcome, Abort> {
        let cur = self.current_state(role)?;
        let ctx = self.role(role)?;
        let flags = ctx.flags;
        // Leaving RESUMING makes the driver judge the data delivered: unless
        // it is one whole stream every arc out must fail (V2-RESUME-03/04),
        // whatever the table says; a stream whose overflow alone was refused
        // may be loaded or refused.
        let model = model::expect_set(flags, cur, target);
        let leaves_resuming =
            cur == MigState::Resuming && matches!(model, Expectation::Moves { .. });
        let unfit = match &ctx.delivered {
            Delivered::Unfit(why) if leaves_resuming => Some(why.clone()),
            _ => None,
        };
        let either = leaves_resuming && ctx.delivered == Delivered::StreamOverflowRefused;
        let incomplete = unfit.is_some() || either;
        let args = format!("{cur} -> {}", state_name(target));
        if model::is_dangerous(cur, target) && !self.opts.include_dangerous {
            self.note(format!(
                "skipped SET {args}: it never returns on kernels without the vfio_mig_get_next_state() fix; run with --include-dangerous"
            ));
            return Ok(SetOutcome { ok: false });
        }
        let SetCall {
            r,
            got,
            g,
            after,
            t0,
        } = self.set_and_get(role, cur, target, args, true, key)?;

        // The result of the SET itself.
        let explicit = self.expected_result(key, expect, &got);
        if let (false, Some(why)) = (explicit, &unfit) {
            self.check(
                key,
                Check {
                    kind: "result",
                    ids: vec!["V2-RESUME-03".into(), "V2-RESUME-04".into()],
                    strength: Strength::Must,
                    pass: r.result.is_err(),
                    expected: format!(
                        "an error: the data delivered in RESUMING is not one whole stream ({why})"
                    ),
                    observed: match r.result {
                        Ok(()) => format!("{cur} -> {} succeeded", state_name(target)),
                        Err(e) => format!("failed with {}", errno_name(e)),
                    },
                    fields: &[],
                },
            );
        } else if !explicit && either {
            self.note(format!(
                "{} after only the bytes beyond a whole stream were refused: loading the stream write() delivered and refusing the overfilled session are both allowed",
                match r.result {
                    Ok(()) => "RESUMING -> STOP succeeded".to_string(),
                    Err(e) => format!("RESUMING -> STOP failed with {}", errno_name(e)),
                }
            ));
        } else if !explicit {
            let (id, pass) = match &model {
                Expectation::NoOp => ("V2-FSM-06", r.result.is_ok()),
                Expectation::Moves { .. } => ("V2-FSM-07", r.result.is_ok()),
                Expectation::Refused(why) => (why.requirement(), r.result == Err(Errno::EINVAL)),
            };
            self.check_lazy(key, "result", pass, || {
                let expected = match &model {
                    Expectation::NoOp => "success (already there)".to_string(),
                    Expectation::Moves { path, .. } => format!(
                        "success via {}",
                        path.iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(" -> ")
                    ),
                    Expectation::Refused(_) => "EINVAL".to_string(),
                };
                Check::builtin("result", id, pass, expected, ret_text(&got))
            });
        }

        let g_state = g.map(|(s, _)| s);
        if r.result.is_ok() {
            // The data fd (V2-FSM-06/08).
            let want_new = match (expect.and_then(|e| e.data_fd), &model) {
                (Some(w), _) => Some((w == FdExpect::New, None)),
                (None, Expectation::Moves { new_data_fd, .. }) => {
                    Some((*new_data_fd, Some("V2-FSM-08")))
                }
                (None, Expectation::NoOp) => Some((false, Some("V2-FSM-06"))),
                (None, Expectation::Refused(_)) => None,
            };
            if let Some((new, id)) = want_new {
                let pass = if new { r.data_fd >= 0 } else { r.data_fd == -1 };
                let expected = || {
                    if new {
                        "a new data_fd (>= 0)".to_string()
                    } else {
                        "data_fd = -1".to_string()
                    }
                };
                let observed = || format!("data_fd = {}", r.data_fd);
                match id {
                    Some(id) => self.check_lazy(key, "data-fd", pass, || {
                        Check::builtin("data-fd", id, pass, expected(), observed())
                            .on(&["vfio_device_feature_mig_state.data_fd"])
                    }),
                    None => {
                        let e = expect.expect("explicit data_fd");
                        self.check(
                            key,
                            Check::expected(e, "data-fd", pass, expected(), observed()),
                        );
                    }
                }
            }
            // The state right after (V2-FSM-03).
            let want_state = match expect.and_then(|e| e.state.as_ref()) {
                Some(s) => Some((self.resolve_state(s)?, expect)),
                None => Some((target, None)),
            };
            if let Some((want, e)) = want_state {
                let pass = g_state == Ok(want);
                let observed = || {
                    g_state
                        .map_or_else(|e| format!("GET failed with {}", errno_name(e)), state_name)
                };
                match e {
                    Some(e) => self.check(
                        key,
                        Check::expected(e, "state", pass, state_name(want), observed()),
                    ),
                    None => self.check_lazy(key, "state", pass, || {
                        Check::builtin(
                            "state",
                            "V2-FSM-03",
                            pass,
                            format!("GET right after SET reports {}", state_name(want)),
                            observed(),
                        )
                        .on(&["vfio_device_feature_mig_state.device_state"])
                    }),
                }
            }
        } else {
            // A failed SET copies back the requested state (V2-FSM-10) and
            // leaves the device at the start, on the path, or in ERROR.
            let pass = r.device_state == target && r.data_fd == -1;
            self.check_lazy(key, "copied-back", pass, || {
                Check::builtin(
                    "copied-back",
                    "V2-FSM-10",
                    pass,
                    format!(
                        "device_state = {} and data_fd = -1 in the returned struct",
                        state_name(target)
                    ),
                    format!(
                        "device_state = {}, data_fd = {}",
                        state_name(r.device_state),
                        r.data_fd
                    ),
                )
                .on(&[
                    "vfio_device_feature_mig_state.device_state after a failed SET",
                    "vfio_device_feature_mig_state.data_fd after a failed SET",
                ])
            });
            let (allowed, id): (Vec<MigState>, &str) = match &model {
                _ if incomplete => (vec![MigState::Resuming, MigState::Error], "V2-RESUME-03"),
                Expectation::Refused(why) => (vec![cur], why.requirement()),
                Expectation::Moves { path, .. } => {
                    let mut v = vec![cur, MigState::Error];
                    v.extend(path);
                    (v, "V2-FSM-10")
                }
                Expectation::NoOp => (vec![cur, MigState::Error], "V2-FSM-10"),
            };
            let pass = g_state.is_ok_and(|s| allowed.iter().any(|a| a.raw() == s));
            self.check_lazy(key, "state-after-failure", pass, || {
                Check::builtin(
                    "state-after-failure",
                    id,
                    pass,
                    format!(
                        "one of {}",
                        allowed
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    g_state
                        .map_or_else(|e| format!("GET failed with {}", errno_name(e)), state_name),
                )
            });
        }
        self.after_set(role, cur, &model, &r, after, t0)?;
        Ok(SetOutcome {
            ok: r.result.is_ok(),
        })
    }

    /// Session and timing bookkeeping after a SET.
    pub(super) fn after_set(
        &mut self,
        role: Role,
        cur: MigState,
        model: &Expectation,
        r: &crate::device::SetStateResult,
        after: Option<MigState>,
        t0: Duration,
    ) -> Flow {
        if r.result.is_ok() {
            let ends = matches!(
                model,
                Expectation::Moves {
                    ends_session: true,
                    ..
                }
            );
            if ends || r.data_fd >= 0 {
                self.end_session(role, EndedBy::Transition)?;
            }
            let ctx = self.role(role)?;
            if r.data_fd >= 0 {
                ctx.delivered = Delivered::Unfit("no data written".into());
                let kind = if after == Some(MigState::Resuming) {
                    SessionKind::Resuming
                } else {
                    SessionKind::Saving
                };
                ctx.session = Some(Session {
                    fd: r.data_fd,
                    kind,
                    precopy_budget: None,
                    precopy_read: 0,
                    last_info: None,
                    bytes: 0,
                });
            }
            if let Some(a) = after {
                if RUNNING_STATES.contains(&cur) && matches!(a, MigState::Stop | MigState::StopCopy)
                {
                    ctx.stopped_at = Some(t0);
                }
                if RUNNING_STATES.contains(&a) {
                    ctx.stopped_at = None;
                }
            }
        }
        let ctx = self.role(role)?;
        ctx.state = after;
        // Whatever the model said, a device outside the saving group and
        // RESUMING has no session.
        let in_session = after.is_some_and(|s| s.is_saving() || s == MigState::Resuming);
        if !in_session && ctx.session.is_some() {
            self.end_session(role, EndedBy::Transition)?;
        }
        Ok(())
    }

    /// SET and GET, recorded, with the session bookkeeping but no checks:
    /// for arcs the caller judges itself.
    pub(super) fn set_unjudged(
        &mut self,
        role: Role,
        target: u32,
        key: &StepKey,
    ) -> Result<bool, Abort> {
        let cur = self.current_state(role)?;
        let model = model::expect_set(self.role(role)?.flags, cur, target);
        let args = format!("{cur} -> {}", state_name(target));
        let SetCall { r, after, t0, .. } = self.set_and_get(role, cur, target, args, false, key)?;
        self.after_set(role, cur, &model, &r, after, t0)?;
        Ok(r.result.is_ok())
    }

    /// V2-TIME-02 on the destination: its SETs from leaving RESUMING with
    /// a whole stream until RUNNING (RESUMING -> STOP -> RUNNING, or the
    /// combination arc) are its share of the downtime; each one is judged
    /// with the source's share, so a case that stops in STOP is measured
    /// too.
    fn destination_downtime(
        &mut self,
        role: Role,
        cur: MigState,
        after: Option<MigState>,
        took: u64,
        key: &StepKey,
    ) -> Flow {
        let ctx = self.role(role)?;
        let loaded = match (cur, ctx.loaded_ns) {
            (MigState::Resuming, _) if ctx.delivered == Delivered::Stream => took,
            (MigState::Resuming, _) | (_, None) => {
                ctx.loaded_ns = None;
                return Ok(());
            }
            (_, Some(before)) => before.saturating_add(took),
        };
        let Some(now @ (MigState::Stop | MigState::RunningP2p | MigState::Running)) = after else {
            ctx.loaded_ns = None;
            return Ok(());
        };
        ctx.loaded_ns = (now != MigState::Running).then_some(loaded);
        let source = Role::ALL
            .into_iter()
            .filter_map(|r| self.roles[r as usize].as_ref())
            .filter_map(|c| c.downtime_ns)
            .max();
        let what = match cur {
            MigState::Resuming => format!("RESUMING -> {now}"),
            _ => format!("RESUMING to {now}"),
        };
        let (ns, observed) = match source {
            Some(src) => (
                src.saturating_add(loaded),
                format!(
                    "in all: source {} (leaving RUNNING to the end of its stream) + destination {} ({what})",
                    ms_text(src),
                    ms_text(loaded)
                ),
            ),
            None => (
                loaded,
                format!(
                    "in all: destination {} ({what}; no source stream in this case)",
                    ms_text(loaded)
                ),
            ),
        };
        self.judge_downtime(key, "downtime-total", ns, &observed);
        Ok(())
    }

    /// The state the executor tracks, or a GET when it does not know.
    fn current_state(&mut self, role: Role) -> Result<MigState, Abort> {
        let ctx = self.role(role)?;
        match ctx.state {
            Some(s) => Ok(s),
            None => ctx.dev.get_state().map_err(|e| {
                Abort::Harness(format!(
                    "GET MIG_DEVICE_STATE failed with {}",
                    errno_name(e)
                ))
            }),
        }
    }

    /// SET `target` from `cur` and GET right after, both recorded (the GET
    /// only when `record_get`), with the arc's latency when the SET worked.
    fn set_and_get(
        &mut self,
        role: Role,
        cur: MigState,
        target: u32,
        args: String,
        record_get: bool,
        key: &StepKey,
    ) -> Result<SetCall, Abort> {
        let set = self.start(role, "SET MIG_DEVICE_STATE", args, key);
        let t0 = self.role(role)?.dev.now();
        let r = self.role(role)?.dev.set_state(target);
        let took = self.role(role)?.since(t0);
        let got: Result<i64, Errno> = r.result.map(|()| i64::from(r.data_fd));
        let get = Call::quiet(role, "GET MIG_DEVICE_STATE", String::new());
        let g = self.role(role)?.dev.get_state_raw();
        let after = g.ok().and_then(|(s, _)| MigState::from_raw(s));
        self.record(set, Returned::of(&got).in_state(after), key);
        if record_get {
            let g_ret = g.map(|(s, _)| i64::from(s));
            self.record(get, Returned::of(&g_ret).in_state(after), key);
        }
        if r.result.is_ok() {
            (self.sink)(Event::Latency {
                arc: format!("{cur}>{}", state_name(target)),
                ns: took,
            });
            let limit = self.opts.arc_latency_limit;
            let pass = took <= nanos(limit);
            self.check_lazy(key, "latency", pass, || {
                Check::builtin(
                    "latency",
                    "V2-TIME-01",
                    pass,
                    format!(
                        "SET returns within {} (--arc-latency-limit)",
                        humantime::format_duration(limit)
                    ),
                    format!("{cur} -> {} took {}", state_name(target), ms_text(took)),
                )
            });
        }
        self.role(role)?.last_set_ns = took;
        if r.result.is_ok() {
            self.destination_downtime(role, cur, after, took, key)?;
        }
        Ok(SetCall {
            r,
            got,
            g,
            after,
            t0,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn raw_feature(
        &mut self,
        role: Role,
        feature: u32,
        flags: u32,
        argsz: Option<u32>,
        payload: Option<u64>,
        state: Option<u32>,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let data = match (state, payload) {
            (Some(s), _) => VfioDeviceFeatureMigState {
                device_state: s,
                data_fd: -1,
            }
            .to_bytes(),
            (None, Some(n)) => vec![0u8; n as usize],
            (None, None) => vec![0u8; default_payload(feature)],
        };
        let mut req = FeatureRequest::new(feature, 0, data);
        req.flags = feature | flags;
        if let Some(a) = argsz {
            req.argsz = a;
        }
        let before = req.data.clone();
        let args = format!(
            "argsz {}, flags {:#x} ({}{}), {} payload bytes",
            req.argsz,
            req.flags,
            feature_name(feature).map_or_else(|| feature.to_string(), str::to_string),
            op_names(flags),
            req.data.len()
        );
        let call = self.start(role, "VFIO_DEVICE_FEATURE", args, key);
        let r = self.role(role)?.dev.feature(&mut req);
        let got = r.map(|()| 0i64);
        self.record(call, Returned::of(&got), key);
        if let Some(e) = expect {
            if let Some(w) = &e.result {
                self.check_result(key, e, w, &got);
            }
            if let Some(u) = e.unchanged {
                let same = req.data == before;
                self.check(
                    key,
                    Check::expected(
                        e,
                        "payload",
                        same == u,
                        if u {
                            "payload untouched".into()
                        } else {
                            "payload written".into()
                        },
                        if same {
                            "payload untouched".into()
                        } else {
                            "payload written".into()
                        },
                    ),
                );
            }
        }
        if feature == VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOV2 {
            self.precopy_info_v2_feature(role, flags, &got, key)?;
        }
        // A raw SET of the state moves the device: adopt any fd and re-learn the state.
        if feature == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
            && flags & VFIO_DEVICE_FEATURE_SET != 0
            && flags & VFIO_DEVICE_FEATURE_PROBE == 0
        {
            let fd = VfioDeviceFeatureMigState::from_bytes(&req.data).data_fd;
            let ctx = self.role(role)?;
            let now = ctx.dev.get_state().ok();
            ctx.state = now;
            if r.is_ok() && fd >= 0 {
                self.end_session(role, EndedBy::Transition)?;
                let kind = if now == Some(MigState::Resuming) {
                    SessionKind::Resuming
                } else {
                    SessionKind::Saving
                };
                self.role(role)?.session = Some(Session {
                    fd,
                    kind,
                    precopy_budget: None,
                    precopy_read: 0,
                    last_info: None,
                    bytes: 0,
                });
            }
        }
        Ok(())
    }

    pub(super) fn migration_flags(
        &mut self,
        role: Role,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let call = self.start(role, "GET MIGRATION", String::new(), key);
        let r = self.role(role)?.dev.migration_flags();
        let got = r.map(|f| f.0 as i64);
        self.record(call, Returned::of(&got), key);
        match r {
            Ok(f) => {
                self.check(
                    key,
                    Check::builtin(
                        "defined",
                        "V2-FEAT-10",
                        f.is_defined(),
                        "STOP_COPY, +P2P, +PRE_COPY or +P2P+PRE_COPY".into(),
                        migration_flag_names(f.0),
                    )
                    .on(&["vfio_device_feature_migration.flags"]),
                );
                if let Some((e, c)) = expect.and_then(|e| e.flags.as_ref().map(|c| (e, c))) {
                    self.check_cmp(key, "flags", e, c, f.0)?;
                }
            }
            Err(_) => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-FEAT-10",
                    false,
                    "GET MIGRATION succeeds".into(),
                    ret_text(&got),
                ),
            ),
        }
        Ok(())
    }

    pub(crate) fn data_size(
        &mut self,
        role: Role,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<Option<u64>, Abort> {
        let call = self.start(role, "GET MIG_DATA_SIZE", String::new(), key);
        let ctx = self.role(role)?;
        let r = ctx.dev.stop_copy_length();
        let state = ctx.state;
        let got = r.map(|v| v as i64);
        self.record(call, Returned::of(&got).in_state(state), key);
        if !self.expected_result(key, expect, &got) {
            self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-SIZE-01",
                    r.is_ok(),
                    format!("GET works in {}", state.map_or("any state", MigState::name)),
                    ret_text(&got),
                ),
            );
        }
        if let Ok(v) = r {
            self.vars.insert("stop_copy_length".into(), v);
            if let Some((e, c)) = expect.and_then(|e| e.stop_copy_length.as_ref().map(|c| (e, c))) {
                self.check_cmp(key, "stop_copy_length", e, c, v)?;
            }
        }
        Ok(r.ok())
    }
}

/// The payload size of a feature's struct, so a raw call is well formed
/// unless the scenario says otherwise.
fn default_payload(feature: u32) -> usize {
    match feature {
        VFIO_DEVICE_FEATURE_MIGRATION => VfioDeviceFeatureMigration::SIZE,
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => VfioDeviceFeatureMigState::SIZE,
        VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => VfioDeviceFeatureMigDataSize::SIZE,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START => VfioDeviceFeatureDmaLoggingControl::SIZE,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => VfioDeviceFeatureDmaLoggingReport::SIZE,
        _ => 0,
    }
}

fn op_names(flags: u32) -> String {
    let mut s = String::new();
    for (bit, name) in [
        (VFIO_DEVICE_FEATURE_GET, "|GET"),
        (VFIO_DEVICE_FEATURE_SET, "|SET"),
        (VFIO_DEVICE_FEATURE_PROBE, "|PROBE"),
    ] {
        if flags & bit != 0 {
            s.push_str(name);
        }
    }
    let unknown = flags
        & !(VFIO_DEVICE_FEATURE_MASK
            | VFIO_DEVICE_FEATURE_GET
            | VFIO_DEVICE_FEATURE_SET
            | VFIO_DEVICE_FEATURE_PROBE);
    if unknown != 0 {
        s.push_str(&format!("|{unknown:#x}"));
    }
    s
}
