//! v1 transfers: saving through the region until `pending_bytes` is 0,
//! resuming chunk by chunk, and the freeze-point probe.
#![forbid(unsafe_code)]

use std::time::Instant;

use super::*;

/// How long a `v1_save` in pre-copy may go on when the device keeps
/// producing data (pre-copy never has to drain).
const PRECOPY_ITERATION_CAP: u64 = 10_000;

impl Exec<'_, '_> {
    /// The v1 save sequence (a-f): iterate until `pending_bytes` reads 0.
    /// Appends the data to `into`; returns the bytes saved.
    pub(super) fn v1_save(
        &mut self,
        role: Role,
        into: &str,
        max_iterations: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<u64, Abort> {
        let region = self.region(role)?;
        let state = self.device_state(role, key)?.ok();
        let stop_and_copy = state.is_some_and(|s| s.bits() == V1State::STOP_AND_COPY.bits());
        let bound = if stop_and_copy {
            max_iterations
        } else {
            max_iterations.min(PRECOPY_ITERATION_CAP)
        };
        self.buffers
            .entry(into.to_string())
            .or_insert_with(|| StreamBuf::new(self.opts.spill_threshold));
        let mut call = self.start(
            role,
            "v1 save",
            format!("into `{into}`, at most {bound} iterations"),
            key,
        );
        let t0 = Instant::now();
        let mut total = 0u64;
        let mut iterations = 0u64;
        let mut pending_stable = true;
        let mut staging_stable = true;
        let mut within_region = true;
        let mut exact_decrease = true;
        let mut last_pending: Option<(u64, u64)> = None;
        let mut failure: Option<String> = None;
        let drained = loop {
            let pending = match self.read_named(role, "pending_bytes", key)? {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(format!(
                        "reading pending_bytes failed with {}",
                        errno_name(e)
                    ));
                    break false;
                }
            };
            let again = self.read_named(role, "pending_bytes", key)?;
            if again != Ok(pending) {
                pending_stable = false;
            }
            if let Some((p, size)) = last_pending {
                if pending != 0 && p.saturating_sub(size) != pending {
                    exact_decrease = false;
                }
            }
            if pending == 0 {
                break true;
            }
            if iterations >= bound {
                break false;
            }
            // A stream that never ends is a V1-SAVE-04 failure at the case
            // deadline, not a case that overruns it.
            if self.opts.deadline.is_some_and(|d| Instant::now() >= d) {
                failure = Some(format!(
                    "pending_bytes still {pending} after {iterations} iterations when the case deadline came"
                ));
                break false;
            }
            let data_offset = self.read_named(role, "data_offset", key)?;
            let data_size = self.read_named(role, "data_size", key)?;
            let (Ok(data_offset), Ok(data_size)) = (data_offset, data_size) else {
                failure = Some(format!(
                    "reading data_offset/data_size failed: {data_offset:?} {data_size:?}"
                ));
                break false;
            };
            if self.read_named(role, "data_offset", key)? != Ok(data_offset)
                || self.read_named(role, "data_size", key)? != Ok(data_size)
            {
                staging_stable = false;
            }
            (self.sink)(Event::V1Iteration(V1Iteration {
                pending_bytes: pending,
                data_offset,
                data_size,
            }));
            let fits = data_offset >= f::HEADER_SIZE
                && data_offset
                    .checked_add(data_size)
                    .is_some_and(|end| end <= region.size);
            if !fits || data_size == 0 {
                within_region = false;
                failure = Some(format!("chunk at data_offset {data_offset} of {data_size} bytes in a region of {} bytes", region.size));
                break false;
            }
            if let Err(e) = self.region_to_buffer(role, region, data_offset, data_size, into) {
                failure = Some(format!(
                    "reading the data section failed with {}",
                    errno_name(e)
                ));
                break false;
            }
            total += data_size;
            iterations += 1;
            last_pending = Some((pending, data_size));
        };
        call.set_args(format!("{iterations} iterations into `{into}`"));
        self.record(
            call,
            Returned::ret(StepReturn::Ok(total as i64)).moved(total),
            key,
        );
        self.transfer(role, Direction::Save, total, nanos(t0.elapsed()), 0, None);
        self.check(
            key,
            Check::builtin(
                "pending-stable",
                "V1-SAVE-01",
                pending_stable,
                "repeated pending_bytes reads give the same value".into(),
                if pending_stable {
                    "stable".into()
                } else {
                    "changed between two reads".into()
                },
            )
            .on(&["vfio_device_migration_info.pending_bytes"]),
        );
        if iterations > 0 {
            self.check(
                key,
                Check::builtin(
                    "staging-stable",
                    "V1-SAVE-02",
                    staging_stable,
                    "data_offset and data_size repeat until pending_bytes is read again".into(),
                    if staging_stable {
                        "stable".into()
                    } else {
                        "changed on a second read".into()
                    },
                )
                .on(&[
                    "vfio_device_migration_info.data_offset",
                    "vfio_device_migration_info.data_size",
                ]),
            );
        }
        self.check(
            key,
            Check::builtin(
                "within-region",
                "V1-SAVE-03",
                within_region,
                "each chunk is non-empty and lies inside the data section".into(),
                failure
                    .clone()
                    .unwrap_or_else(|| "all chunks inside".into()),
            )
            .on(&[
                "vfio_device_migration_info.data_offset",
                "vfio_device_migration_info.data_size",
            ]),
        );
        if stop_and_copy {
            self.check(
                key,
                Check::builtin(
                    "drains",
                    "V1-SAVE-04",
                    drained,
                    format!("pending_bytes reaches 0 within {bound} iterations"),
                    failure
                        .clone()
                        .unwrap_or_else(|| format!("{iterations} iterations, {total} bytes")),
                )
                .on(&["vfio_device_migration_info.pending_bytes"]),
            );
        } else {
            self.check(
                key,
                Check::builtin(
                    "pre-copy",
                    "V1-SAVE-06",
                    failure.is_none(),
                    "pre-copy iterations work, even when they transfer nothing".into(),
                    failure
                        .clone()
                        .unwrap_or_else(|| format!("{iterations} iterations, {total} bytes")),
                ),
            );
        }
        if iterations > 1 && !exact_decrease {
            self.note("pending_bytes did not fall by exactly data_size each iteration (allowed: V1-SAVE-05)".into());
        }
        if let Some((e, c)) = expect.and_then(|e| e.bytes.as_ref().map(|c| (e, c))) {
            self.check_cmp(key, "bytes", e, c, total)?;
        }
        if failure.is_some() && stop_and_copy {
            return Err(Abort::Driver("the v1 save could not complete".into()));
        }
        Ok(total)
    }

    /// Copies `size` bytes of the data section into a buffer, in reads of
    /// the executor's buffer size.
    pub(super) fn region_to_buffer(
        &mut self,
        role: Role,
        region: V1Region,
        data_offset: u64,
        size: u64,
        into: &str,
    ) -> Result<(), Errno> {
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(self.buf.len() as u64) as usize;
            let ctx = role_of(&mut self.roles, role).map_err(|_| Errno::ENODEV)?;
            let got = ctx
                .dev
                .region_read(region.offset + data_offset + done, &mut self.buf[..n])?;
            if got == 0 {
                return Err(Errno::EIO);
            }
            let temp = &self.opts.temp_dir;
            self.buffers
                .get_mut(into)
                .expect("created by caller")
                .append(&self.buf[..got], temp)
                .map_err(|_| Errno::EIO)?;
            done += got as u64;
        }
        // The stream's chunks are the data_size units, for replay.
        Ok(())
    }

    /// The v1 resume sequence: _RESUMING, then per chunk read
    /// `data_offset`, write the data there and write `data_size`; then
    /// leave _RESUMING. Returns whether the device accepted the stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn v1_resume(
        &mut self,
        role: Role,
        from: &str,
        chunk: &V1Chunking,
        mutation: &Mutation,
        then_running: bool,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Result<bool, Abort> {
        let region = self.region(role)?;
        let mut stream = self
            .buffers
            .remove(from)
            .ok_or_else(|| Abort::Driver(format!("buffer `{from}` was never filled")))?;
        let sizes = chunk_sizes(&stream, chunk, mutation);
        let result = self.v1_resume_stream(
            role,
            region,
            &mut stream,
            &sizes,
            mutation,
            then_running,
            key,
        );
        self.buffers.insert(from.to_string(), stream);
        let (accepted, observed) = result?;
        match expect.filter(|e| {
            matches!(
                e.result,
                Some(ResultExpect::Rejected | ResultExpect::Errno(_))
            )
        }) {
            Some(e) => self.check(
                key,
                Check::expected(
                    e,
                    "rejected",
                    !accepted,
                    "a data_size write or leaving _RESUMING fails".into(),
                    observed,
                ),
            ),
            None => {
                let (ids, strength) = match expect {
                    Some(e) => (e.ids.clone(), e.strength),
                    None => (
                        vec!["V1-RESUME-02".to_string()],
                        strength_of("V1-RESUME-02"),
                    ),
                };
                self.check(
                    key,
                    Check {
                        kind: "resumed",
                        ids,
                        strength,
                        pass: accepted,
                        expected: "stream accepted and _RESUMING left".into(),
                        observed,
                        fields: &[],
                    },
                );
            }
        }
        Ok(accepted)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn v1_resume_stream(
        &mut self,
        role: Role,
        region: V1Region,
        stream: &mut StreamBuf,
        sizes: &[u64],
        mutation: &Mutation,
        then_running: bool,
        key: &StepKey,
    ) -> Result<(bool, String), Abort> {
        let write_state = |exec: &mut Self, bits: V1State| -> Result<Result<(), Errno>, Abort> {
            let before = exec.device_state(role, key)?.ok();
            let raw = before.map_or(bits, |b| b.with_bits_of(bits)).0;
            exec.field_write(
                role,
                f::DEVICE_STATE,
                4,
                u64::from(raw),
                key,
                "device_state",
            )
        };
        if let Err(e) = write_state(self, V1State::RESUMING)? {
            return Ok((
                false,
                format!("entering _RESUMING failed with {}", errno_name(e)),
            ));
        }
        let mut reader = stream
            .reader(mutation)
            .map_err(|e| Abort::Harness(format!("cannot read the stream: {e}")))?;
        let t0 = Instant::now();
        let mut written = 0u64;
        for &size in sizes {
            let data_offset = match self.read_named(role, "data_offset", key)? {
                Ok(o) => o,
                Err(e) => {
                    return Ok((
                        false,
                        format!(
                            "reading data_offset failed with {} after {written} bytes",
                            errno_name(e)
                        ),
                    ))
                }
            };
            let fits = data_offset >= f::HEADER_SIZE
                && data_offset
                    .checked_add(size)
                    .is_some_and(|end| end <= region.size);
            self.check_lazy(key, "fits", fits, || {
                Check::builtin(
                    "fits",
                    "V1-RESUME-01",
                    fits,
                    format!("room for a {size}-byte chunk at data_offset"),
                    format!(
                        "data_offset {data_offset} in a region of {} bytes",
                        region.size
                    ),
                )
            });
            if !fits {
                return Ok((
                    false,
                    format!("no room for a {size}-byte chunk at data_offset {data_offset}"),
                ));
            }
            let mut done = 0u64;
            while done < size {
                let n = (size - done).min(self.buf.len() as u64) as usize;
                let got = stream::read_full(&mut reader, &mut self.buf[..n])
                    .map_err(|e| Abort::Harness(format!("cannot read the stream: {e}")))?;
                if got == 0 {
                    break;
                }
                let ctx = role_of(&mut self.roles, role)?;
                if let Err(e) = ctx
                    .dev
                    .region_write(region.offset + data_offset + done, &self.buf[..got])
                {
                    return Ok((
                        false,
                        format!(
                            "writing the data section failed with {} after {written} bytes",
                            errno_name(e)
                        ),
                    ));
                }
                done += got as u64;
            }
            if let Err(e) = self.field_write(role, f::DATA_SIZE, 8, done, key, "data_size")? {
                return Ok((
                    false,
                    format!(
                        "writing data_size = {done} failed with {} after {written} bytes",
                        errno_name(e)
                    ),
                ));
            }
            written += done;
        }
        self.transfer(
            role,
            Direction::Resume,
            written,
            nanos(t0.elapsed()),
            0,
            None,
        );
        let leave = if then_running {
            V1State::RUNNING
        } else {
            V1State::STOP
        };
        match write_state(self, leave)? {
            Ok(()) => Ok((
                true,
                format!("{written} bytes in {} chunks; left _RESUMING", sizes.len()),
            )),
            Err(e) => Ok((
                false,
                format!(
                    "{written} bytes written; leaving _RESUMING failed with {}",
                    errno_name(e)
                ),
            )),
        }
    }

    /// Which freeze point the device shows, and that a stopped device
    /// stays frozen (V1-STATE-06).
    pub(super) fn v1_freeze(
        &mut self,
        role: Role,
        from: &str,
        touches: u32,
        key: &StepKey,
    ) -> Flow {
        let mut saves = Vec::new();
        for (trial, k) in [(0u32, 0u32), (1, touches)] {
            let tk = StepKey {
                prefix: format!("{}-trial{trial}", key.prefix),
                loc: key.loc.clone(),
            };
            self.v1_reset(role, &tk)?;
            if !self.v1_resume(
                role,
                from,
                &V1Chunking::Source,
                &Mutation::default(),
                true,
                None,
                &tk,
            )? {
                return Err(Abort::Driver(
                    "the freeze probe could not resume the saved state".into(),
                ));
            }
            self.v1_write_state(role, V1State::STOP_AND_COPY, &tk)?;
            // Accesses that a device still running would see as time passing.
            for _ in 0..k {
                let _ = self.read_named(role, "reserved", &tk)?;
            }
            let first = format!("freeze-{trial}-a");
            let second = format!("freeze-{trial}-b");
            self.buffers.remove(&first);
            self.buffers.remove(&second);
            self.v1_save(role, &first, 100_000, None, &tk)?;
            self.v1_write_state(role, V1State::STOP, &tk)?;
            self.v1_write_state(role, V1State::STOP_AND_COPY, &tk)?;
            self.v1_save(role, &second, 100_000, None, &tk)?;
            let diff = self.first_difference(&first, &second)?;
            self.check(
                &tk,
                Check::builtin(
                    "frozen",
                    "V1-STATE-06",
                    diff.is_none(),
                    "two stop-and-copy saves after the first pending_bytes read are identical"
                        .into(),
                    diff.map_or("identical".into(), |at| format!("differ at byte {at}")),
                ),
            );
            saves.push(first);
            self.v1_write_state(role, V1State::STOP, &tk)?;
        }
        let point = match self.first_difference(&saves[0], &saves[1])? {
            None => "when _RUNNING is cleared".to_string(),
            Some(at) => format!("at the first pending_bytes read after _RUNNING is cleared ({touches} region accesses in between changed the state from byte {at})"),
        };
        self.note(format!("v1 freeze point: the device state freezes {point}"));
        Ok(())
    }

    pub(super) fn first_difference(&mut self, a: &str, b: &str) -> Result<Option<u64>, Abort> {
        let mut ba = self
            .buffers
            .remove(a)
            .ok_or_else(|| Abort::Harness(format!("buffer `{a}` missing")))?;
        let r = match self.buffers.get_mut(b) {
            Some(bb) => StreamBuf::first_difference(&mut ba, bb),
            None => Ok(Some(0)),
        };
        self.buffers.insert(a.to_string(), ba);
        r.map_err(|e| Abort::Harness(format!("cannot compare streams: {e}")))
    }
}

/// The chunk sizes to replay: the source's (V1-RESUME-02) or fixed, cut to
/// the mutated stream's length.
fn chunk_sizes(stream: &StreamBuf, chunk: &V1Chunking, m: &Mutation) -> Vec<u64> {
    let total = stream.len().saturating_sub(m.truncate) + m.extra;
    let mut sizes = Vec::new();
    let mut left = total;
    let mut push = |s: u64, left: &mut u64| {
        let s = s.min(*left);
        if s > 0 {
            sizes.push(s);
            *left -= s;
        }
    };
    match chunk {
        V1Chunking::Source => {
            for c in stream.chunks() {
                push(c, &mut left);
            }
            push(left, &mut left);
        }
        V1Chunking::Fixed(n) => {
            while left > 0 {
                push(*n, &mut left);
            }
        }
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;
    use results::{CaseFold, CaseResult, Verdict};

    #[test]
    pub(super) fn a_drain_that_never_ends_fails_at_the_case_deadline() {
        let (file, text) = crate::catalogue::builtin()
            .iter()
            .find(|(f, _)| f.ends_with("v1-stop-and-copy.yaml"))
            .unwrap();
        let scenario = crate::scenario::load_str(text, file).unwrap();
        let mut dev = crate::device::open("sim:fault=v1-pending-never-zero").unwrap();
        // Already past: the drain meets it on its first turn, at any machine
        // speed (a later one would race the iteration bound).
        let opts = ExecOptions {
            deadline: Some(Instant::now()),
            ..ExecOptions::default()
        };
        let mut fold = CaseFold::new(CaseResult::new("c", file, "v1"));
        run(
            &scenario,
            Devices {
                device: dev.as_mut(),
                destination: None,
                incompatible: None,
            },
            &opts,
            &mut |e| fold.apply(e),
        );
        let r = fold.finish(results::Grading::default());
        let drains = r
            .checks
            .iter()
            .find(|c| c.name.ends_with("drains"))
            .unwrap();
        assert_eq!(drains.verdict, Verdict::Fail);
        assert!(
            drains.observed.contains("when the case deadline came"),
            "{}",
            drains.observed
        );
    }

    #[test]
    pub(super) fn replayed_chunks_follow_the_source_and_the_mutation() {
        let mut s = StreamBuf::new(1 << 20);
        let dir = std::env::temp_dir();
        for part in [&b"abcd"[..], b"ef", b"ghij"] {
            s.append(part, &dir).unwrap();
        }
        assert_eq!(
            chunk_sizes(&s, &V1Chunking::Source, &Mutation::default()),
            vec![4, 2, 4]
        );
        let cut = Mutation {
            truncate: 5,
            ..Default::default()
        };
        assert_eq!(chunk_sizes(&s, &V1Chunking::Source, &cut), vec![4, 1]);
        assert_eq!(
            chunk_sizes(&s, &V1Chunking::Fixed(3), &Mutation::default()),
            vec![3, 3, 3, 1]
        );
    }
}
