//! The simulator's v1 migration region: header fields, saves, resumes and
//! the freeze point.

use super::*;

/// The v1 migration region of a device, accessed field by field.
pub(super) struct V1 {
    base: u64,
}

impl V1 {
    pub(super) fn new(d: &mut Simulator) -> V1 {
        let region = d
            .find_migration_region()
            .unwrap()
            .expect("a migration region");
        V1 {
            base: region.info.offset,
        }
    }

    pub(super) fn read32(&self, d: &mut Simulator, field: u64) -> Result<u32, Errno> {
        let mut b = [0u8; 4];
        d.region_read(self.base + field, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(super) fn read64(&self, d: &mut Simulator, field: u64) -> Result<u64, Errno> {
        let mut b = [0u8; 8];
        d.region_read(self.base + field, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(super) fn write32(&self, d: &mut Simulator, field: u64, v: u32) -> Result<usize, Errno> {
        d.region_write(self.base + field, &v.to_le_bytes())
    }

    pub(super) fn write64(&self, d: &mut Simulator, field: u64, v: u64) -> Result<usize, Errno> {
        d.region_write(self.base + field, &v.to_le_bytes())
    }

    pub(super) fn state(&self, d: &mut Simulator) -> V1State {
        V1State(self.read32(d, DEVICE_STATE).unwrap())
    }

    pub(super) fn set(&self, d: &mut Simulator, s: V1State) -> Result<usize, Errno> {
        self.write32(d, DEVICE_STATE, s.0)
    }

    /// One iteration: pending_bytes, data_offset, data_size, the data.
    pub(super) fn iteration(&self, d: &mut Simulator) -> (u64, Vec<u8>) {
        let pending = self.read64(d, PENDING_BYTES).unwrap();
        if pending == 0 {
            return (0, Vec::new());
        }
        let offset = self.read64(d, DATA_OFFSET).unwrap();
        let size = self.read64(d, DATA_SIZE).unwrap();
        let mut data = vec![0u8; size as usize];
        d.region_read(self.base + offset, &mut data).unwrap();
        (pending, data)
    }

    /// Iterates until pending_bytes is 0 (at most `limit` iterations).
    pub(super) fn drain(&self, d: &mut Simulator, limit: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..limit {
            let (pending, data) = self.iteration(d);
            if pending == 0 {
                return Some(out);
            }
            assert!(!data.is_empty(), "empty chunk while pending_bytes > 0");
            out.extend_from_slice(&data);
        }
        None
    }

    /// running -> stop-and-copy, drain, -> stop.
    pub(super) fn save(&self, d: &mut Simulator) -> Vec<u8> {
        self.set(d, V1State::STOP_AND_COPY).unwrap();
        let stream = self.drain(d, 100_000).expect("stop-and-copy terminates");
        self.set(d, V1State::STOP).unwrap();
        stream
    }

    /// -> resuming, chunks through the data section, -> stop.
    pub(super) fn resume(
        &self,
        d: &mut Simulator,
        stream: &[u8],
        chunk: usize,
    ) -> Result<(), Errno> {
        self.set(d, V1State::RESUMING).unwrap();
        for piece in stream.chunks(chunk) {
            let offset = self.read64(d, DATA_OFFSET)?;
            d.region_write(self.base + offset, piece)?;
            self.write64(d, DATA_SIZE, piece.len() as u64)?;
        }
        self.set(d, V1State::STOP).map(drop)
    }
}

#[test]
fn v1_header_fields() {
    let mut d = sim("v1");
    let v1 = V1::new(&mut d);
    assert_eq!(v1.state(&mut d), V1State::RUNNING);
    assert_eq!(v1.read32(&mut d, RESERVED), Ok(0));
    assert_eq!(v1.write32(&mut d, RESERVED, 77), Ok(4));
    assert_eq!(v1.read32(&mut d, RESERVED), Ok(0));
    assert_eq!(v1.read64(&mut d, DATA_OFFSET), Ok(4096));
    assert_eq!(v1.read64(&mut d, PENDING_BYTES), Ok(0));
    // Read-only fields, partial and misaligned accesses.
    assert_eq!(v1.write64(&mut d, PENDING_BYTES, 1), Err(Errno::EINVAL));
    assert_eq!(v1.write64(&mut d, DATA_OFFSET, 1), Err(Errno::EINVAL));
    assert_eq!(v1.read32(&mut d, PENDING_BYTES), Err(Errno::EINVAL));
    assert_eq!(v1.read32(&mut d, 2), Err(Errno::EINVAL));
    assert_eq!(v1.read64(&mut d, 4), Err(Errno::EINVAL));
    assert_eq!(v1.read32(&mut d, 64), Err(Errno::EINVAL));
    assert_eq!(v1.read32(&mut d, 4096 + 65536 - 2), Err(Errno::EINVAL));
    assert_eq!(
        v1.write32(&mut d, 4096, 1),
        Err(Errno::EINVAL),
        "no data writes outside resuming"
    );
    // Invalid combinations and the error encoding are refused; state kept.
    for bad in [0b101, 0b111, 0b110] {
        assert_eq!(v1.set(&mut d, V1State(bad)), Err(Errno::EINVAL));
        assert_eq!(v1.state(&mut d), V1State::RUNNING);
    }
    // Reserved bits are kept and change nothing.
    v1.set(&mut d, V1State(0x8000_0000 | V1State::STOP.0))
        .unwrap();
    assert_eq!(v1.state(&mut d), V1State(0x8000_0000));
    v1.set(&mut d, V1State(0x8000_0000 | V1State::STOP_AND_COPY.0))
        .unwrap();
    assert!(v1.read64(&mut d, PENDING_BYTES).unwrap() > 0);
    d.reset().unwrap();
    assert_eq!(v1.state(&mut d), V1State::RUNNING);
    assert_eq!(v1.read64(&mut d, PENDING_BYTES), Ok(0));
}

#[test]
fn v1_save_is_the_v2_stream_and_resumes() {
    let mut d = sim("v1+v2,dirty=2");
    for _ in 0..10 {
        d.get_state().unwrap();
    }
    let v1 = V1::new(&mut d);
    v1.set(&mut d, V1State::STOP_AND_COPY).unwrap();
    // pending_bytes has no side effect; data_offset/data_size stay put.
    let pending = v1.read64(&mut d, PENDING_BYTES).unwrap();
    assert_eq!(pending, d.stop_copy_length().unwrap());
    assert_eq!(v1.read64(&mut d, PENDING_BYTES), Ok(pending));
    assert_eq!(v1.read64(&mut d, DATA_OFFSET), Ok(4096));
    let size = v1.read64(&mut d, DATA_SIZE).unwrap();
    assert_eq!(size, 16384);
    assert_eq!(v1.read64(&mut d, DATA_OFFSET), Ok(4096));
    assert_eq!(v1.read64(&mut d, DATA_SIZE), Ok(size));
    let mut first = vec![0u8; size as usize];
    d.region_read((9 << 40) + 4096, &mut first).unwrap();
    assert_eq!(v1.read64(&mut d, PENDING_BYTES), Ok(pending - size));
    let mut stream = first;
    stream.extend(v1.drain(&mut d, 1000).unwrap());
    assert_eq!(v1.read64(&mut d, PENDING_BYTES), Ok(0));
    v1.set(&mut d, V1State::STOP).unwrap();
    // v1 and v2 see one device: the same stream.
    go(&mut d, Stop);
    assert_eq!(save_from_stop(&mut d, 1 << 20), stream);
    v1.set(&mut d, V1State::RUNNING).unwrap();

    let mut dest = sim("v1");
    let dv1 = V1::new(&mut dest);
    dv1.resume(&mut dest, &stream, 5000).unwrap();
    assert_eq!(dv1.state(&mut dest), V1State::STOP);
    assert_eq!(dv1.save(&mut dest), stream);
}

#[test]
fn v1_pre_copy_then_stop_and_copy() {
    let mut d = sim("v1,precopy=20KiB");
    let v1 = V1::new(&mut d);
    v1.set(&mut d, V1State::PRE_COPY).unwrap();
    let pending = v1.read64(&mut d, PENDING_BYTES).unwrap();
    assert_eq!(pending, 80 + 5 * (24 + 4096));
    let mut stream = v1.drain(&mut d, 1000).unwrap();
    assert_eq!(stream.len() as u64, pending);
    // pre-copy ran dry; stop-and-copy yields the rest.
    v1.set(&mut d, V1State::STOP_AND_COPY).unwrap();
    stream.extend(v1.drain(&mut d, 1000).unwrap());
    v1.set(&mut d, V1State::STOP).unwrap();
    assert_eq!(stream.len() as u64, 80 + 16 * (24 + 4096) + 24);
    let mut dest = sim("v1");
    let dv1 = V1::new(&mut dest);
    dv1.resume(&mut dest, &stream, 4096).unwrap();
    assert_eq!(dv1.save(&mut dest), v1.save(&mut d));
    // The user may leave pre-copy without draining (V1-SAVE-07).
    v1.set(&mut d, V1State::PRE_COPY).unwrap();
    v1.iteration(&mut d);
    v1.set(&mut d, V1State::RUNNING).unwrap();
    assert_eq!(v1.read64(&mut d, PENDING_BYTES), Ok(0));
}

#[test]
fn v1_bad_resumes() {
    let stream = {
        let mut src = sim("v1");
        let v1 = V1::new(&mut src);
        v1.save(&mut src)
    };
    let mut d = sim("v1");
    let v1 = V1::new(&mut d);
    // Incomplete: leaving resuming fails; still resuming.
    assert_eq!(v1.resume(&mut d, &stream[..1000], 4096), Err(Errno::EINVAL));
    assert_eq!(v1.state(&mut d), V1State::RESUMING);
    // data_size beyond the section.
    assert_eq!(v1.write64(&mut d, DATA_SIZE, 65537), Err(Errno::EINVAL));
    // Invalid data: the data_size write fails, error state until reset.
    d.reset().unwrap();
    let mut bad = stream.clone();
    bad[3] ^= 1;
    v1.set(&mut d, V1State::RESUMING).unwrap();
    d.region_write((9 << 40) + 4096, &bad[..4096]).unwrap();
    assert_eq!(v1.write64(&mut d, DATA_SIZE, 4096), Err(Errno::EINVAL));
    assert_eq!(v1.state(&mut d), V1State::ERROR);
    for s in [V1State::RUNNING, V1State::STOP, V1State::RESUMING] {
        assert_eq!(v1.set(&mut d, s), Err(Errno::EINVAL));
    }
    d.reset().unwrap();
    assert_eq!(v1.state(&mut d), V1State::RUNNING);
    v1.resume(&mut d, &stream, 65536).unwrap();
}

#[test]
fn v1_freeze_point() {
    // With freeze=pending the device keeps running after _RUNNING is
    // cleared until the first pending_bytes read; with freeze=clear not.
    let save_after_accesses = |options: &str| {
        let mut d = sim(options);
        let v1 = V1::new(&mut d);
        v1.set(&mut d, V1State::STOP_AND_COPY).unwrap();
        for _ in 0..5 {
            v1.state(&mut d);
        }
        let stream = v1.drain(&mut d, 1000).unwrap();
        v1.set(&mut d, V1State::STOP).unwrap();
        // Frozen from then on: the next save is identical.
        assert_eq!(v1.save(&mut d), stream, "{options}");
        stream
    };
    let clear = save_after_accesses("v1,dirty=1,freeze=clear");
    let pending = save_after_accesses("v1,dirty=1,freeze=pending");
    assert_eq!(clear.len(), pending.len());
    assert_ne!(clear, pending);
    assert_eq!(
        save_after_accesses("v1,freeze=clear"),
        save_after_accesses("v1,freeze=pending")
    );
}
