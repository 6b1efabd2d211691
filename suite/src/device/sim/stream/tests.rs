use super::*;

const GEOMETRY: Geometry = Geometry {
    state_size: 10 * 4096 + 100,
    page_size: 4096,
};

fn header(seed: u64) -> Header {
    Header {
        device_type: "sim-a".into(),
        geometry: GEOMETRY,
        seed,
        nonce: None,
    }
}

fn save_all(content: &Content, chunk: usize) -> Vec<u8> {
    let mut saver = Saver::new(&header(content.seed), Phase::StopCopy, 0);
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = saver.read(content, &mut buf, false);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn load(stream: &[u8], chunk: usize) -> Result<Loader, Errno> {
    let mut loader = Loader::new(header(7), Checks::ALL);
    for piece in stream.chunks(chunk) {
        assert_eq!(loader.write(piece)?, piece.len());
    }
    Ok(loader)
}

#[test]
fn geometry() {
    assert_eq!(GEOMETRY.pages(), 11);
    assert_eq!(GEOMETRY.page_len(10), 100);
    assert_eq!(GEOMETRY.records_len(0, 11), 11 * 24 + GEOMETRY.state_size);
    assert_eq!(GEOMETRY.records_len(9, 11), 2 * 24 + 4096 + 100);
    assert_eq!(
        GEOMETRY.stream_len(),
        80 + 24 + 11 * 24 + GEOMETRY.state_size
    );
}

#[test]
fn pages_depend_on_seed_index_and_generation() {
    let page = |seed, index, generation| {
        let words = page_words(seed, index, generation).take(13);
        words.flatten().take(100).collect::<Vec<u8>>()
    };
    assert_eq!(page(1, 2, 3), page(1, 2, 3));
    assert_ne!(page(1, 2, 3), page(2, 2, 3));
    assert_ne!(page(1, 2, 3), page(1, 3, 3));
    assert_ne!(page(1, 2, 3), page(1, 2, 4));
    assert_ne!(page(1, 2, 3)[..8], page(1, 2, 3)[8..16]);
    // The content streams have always had (the stream format).
    assert_eq!(page(1, 2, 3)[..8], 0x226f_2fe8_f080_447a_u64.to_le_bytes());
    // A page matches itself, with or without a short last word, and
    // nothing else.
    let mut p = page(1, 2, 3);
    assert!(page_matches(1, 2, 3, &p) && page_matches(1, 2, 3, &p[..96]));
    assert!(!page_matches(1, 2, 4, &p));
    p[99] ^= 1;
    assert!(!page_matches(1, 2, 3, &p));
    p[99] ^= 1;
    p[0] ^= 1;
    assert!(!page_matches(1, 2, 3, &p));
}

#[test]
fn bitmap_searches() {
    let mut b = Bitmap::new(130);
    assert_eq!(b.find_set_wrapping(0), None);
    assert_eq!(b.last_clear(), Some(129));
    b.set(5);
    b.set(129);
    assert_eq!(b.find_set_wrapping(6), Some(129));
    assert_eq!(b.find_set_wrapping(130), Some(5));
    assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![5, 129]);
    assert_eq!(b.last_clear(), Some(128));
    b.clear(5);
    assert!(!b.get(5));
    let mut full = Bitmap::new(70);
    (0..70).for_each(|i| full.set(i));
    assert_eq!(full.last_clear(), None);
    assert_eq!(full.find_from(3, |k| !full.words[k]), None);
}

#[test]
fn any_chunking_gives_the_same_stream_of_the_announced_length() {
    let mut content = Content::new(7, GEOMETRY);
    content.touch(3);
    let whole = save_all(&content, 1 << 20);
    assert_eq!(whole.len() as u64, GEOMETRY.stream_len());
    assert_eq!(&whole[..8], b"VFMTSIM\0");
    for chunk in [1, 7, 24, 4096] {
        assert_eq!(save_all(&content, chunk), whole, "chunk {chunk}");
    }
}

#[test]
fn streams_resume_in_any_chunking() {
    let mut source = Content::new(7, GEOMETRY);
    source.touch(3);
    source.touch(3);
    source.touch(10);
    let stream = save_all(&source, 1 << 20);
    for chunk in [1, 13, stream.len()] {
        let loader = load(&stream, chunk).unwrap();
        assert!(loader.is_complete());
        let mut dest = Content::new(99, GEOMETRY);
        dest.touch(5);
        loader.adopt(&mut dest);
        assert_eq!(dest, source);
        assert_eq!(save_all(&dest, 999), stream);
    }
}

#[test]
fn invalid_streams_are_refused_where_detected() {
    let content = Content::new(7, GEOMETRY);
    let stream = save_all(&content, 1 << 20);
    // Every single-byte corruption is caught by a write.
    for at in (0..stream.len())
        .step_by(97)
        .chain([0, 9, 30, 50, stream.len() - 1])
    {
        let mut bad = stream.clone();
        bad[at] ^= 0x40;
        assert_eq!(load(&bad, 13).err(), Some(Errno::EINVAL), "byte {at}");
    }
    // Truncation is not an error while writing, only incomplete.
    let loader = load(&stream[..stream.len() - 1], 13).unwrap();
    assert!(!loader.is_complete() && !loader.has_failed());
    // Past the end: a short write, then ENOSPC.
    let mut loader = load(&stream[..stream.len() - 3], 1000).unwrap();
    let mut tail = stream[stream.len() - 3..].to_vec();
    tail.extend_from_slice(&[0; 7]);
    assert_eq!(loader.write(&tail), Ok(3));
    assert!(loader.is_complete());
    assert_eq!(loader.write(&[0]), Err(Errno::ENOSPC));
    // Another device type.
    let mut foreign = header(7);
    foreign.device_type = "sim-b".into();
    let mut saver = Saver::new(&foreign, Phase::StopCopy, 0);
    let mut other = vec![0u8; stream.len()];
    assert_eq!(saver.read(&content, &mut other, false), stream.len());
    assert_eq!(load(&other, 4096).err(), Some(Errno::EINVAL));
    // After a failure every write fails.
    let mut loader = Loader::new(header(7), Checks::ALL);
    assert_eq!(loader.write(&[0; 80]), Err(Errno::EINVAL));
    assert_eq!(loader.write(&stream), Err(Errno::EINVAL));
    assert!(loader.has_failed());
}

#[test]
fn a_stream_missing_a_page_is_refused_at_the_trailer() {
    let content = Content::new(7, GEOMETRY);
    let stream = save_all(&content, 1 << 20);
    // Drop page 0's record and patch the trailer's count and checksum.
    let record = 24 + 4096;
    let mut cut = stream[..80].to_vec();
    cut.extend_from_slice(&stream[80 + record..stream.len() - 24]);
    let mut h = Xxh64::new(0);
    h.update(&cut);
    let mut trailer = stream[stream.len() - 24..].to_vec();
    trailer[8..16].copy_from_slice(&10u64.to_le_bytes());
    h.update(&trailer[..16]);
    trailer[16..].copy_from_slice(&h.digest().to_le_bytes());
    cut.extend_from_slice(&trailer);
    assert_eq!(load(&cut, 4096).err(), Some(Errno::EINVAL));
}

#[test]
fn precopy_then_stop_copy_is_one_stream() {
    let mut content = Content::new(7, GEOMETRY);
    let mut saver = Saver::new(&header(7), Phase::PreCopy, 3 * 4096);
    let start = saver.initial_bytes();
    assert_eq!(start, 80 + 3 * (24 + 4096));
    assert_eq!(saver.first_initial_bytes(), start);
    assert_eq!(saver.initial_payload_bytes(), 3 * 4096);
    assert_eq!(saver.dirty_bytes(), 0);
    let mut stream = Vec::new();
    let mut buf = [0u8; 1000];
    let n = saver.read(&content, &mut buf, false);
    stream.extend_from_slice(&buf[..n]);
    assert_eq!(saver.initial_bytes(), start - 1000);
    // Page 0 was sent; the device changes it and page 7 (unsent).
    content.touch(0);
    saver.page_dirtied(0);
    content.touch(7);
    saver.page_dirtied(7);
    assert_eq!(saver.dirty_bytes(), 24 + 4096);
    loop {
        let n = saver.read(&content, &mut buf, false);
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&buf[..n]);
    }
    assert_eq!((saver.initial_bytes(), saver.dirty_bytes()), (0, 0));
    assert!(!saver.has_data());
    assert_eq!(stream.len() as u64, start + 24 + 4096);
    saver.set_phase(Phase::StopCopy);
    assert!(saver.has_data());
    let rest = saver.remaining();
    assert_eq!(rest, GEOMETRY.records_len(3, 11) + 24);
    loop {
        let n = saver.read(&content, &mut buf, false);
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&buf[..n]);
    }
    assert_eq!(saver.remaining(), 0);
    assert_eq!(saver.trailer().unwrap(), stream[stream.len() - 24..]);
    let loader = load(&stream, 13).unwrap();
    let mut dest = Content::new(1, GEOMETRY);
    loader.adopt(&mut dest);
    assert_eq!(dest, content);
}

#[test]
fn checks_can_be_switched_off() {
    let content = Content::new(7, GEOMETRY);
    let stream = save_all(&content, 1 << 20);
    let mut bad = stream.clone();
    bad[0] ^= 1;
    let lax = Checks {
        header: false,
        ..Checks::ALL
    };
    let mut loader = Loader::new(header(7), lax);
    assert_eq!(loader.write(&bad), Ok(bad.len()));
    assert!(loader.is_complete());
    // Chunked writes break when a write's offset is ignored; one write works.
    let sloppy = Checks {
        honour_offset: false,
        ..Checks::ALL
    };
    let mut loader = Loader::new(header(7), sloppy);
    assert_eq!(loader.write(&stream), Ok(stream.len()));
    let mut loader = Loader::new(header(7), sloppy);
    let err = stream
        .chunks(13)
        .try_for_each(|c| loader.write(c).map(drop));
    assert_eq!(err, Err(Errno::EINVAL));
    let mut loader = Loader::new(
        header(7),
        Checks {
            refuse_oversize: false,
            ..Checks::ALL
        },
    );
    loader.write(&stream).unwrap();
    assert_eq!(loader.write(&[1, 2, 3]), Ok(3));
}

#[test]
fn offset_ignored_reads_repeat_the_record_start() {
    let content = Content::new(7, GEOMETRY);
    let mut saver = Saver::new(&header(7), Phase::StopCopy, 0);
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    saver.read(&content, &mut a, true);
    saver.read(&content, &mut b, true);
    assert_eq!(a, b);
    assert_eq!(&a, b"VFMTSIM\0");
}
