//! ioctl argument buffers, sized so the kernel never reads or writes beyond
//! memory we own, whatever `argsz` or a payload field says.
//!
//! Limits that make a request fail locally with E2BIG, before any ioctl:
//! an argument above [`MAX_ARG_BYTES`] (e.g. `argsz` near 4 GiB), and a
//! DMA logging report whose bitmap would exceed it (more than 2^29 pages,
//! 2 TiB at 4 KiB pages; a zero `length`, which the kernel's bitmap code
//! turns into 2^64 - 1 bytes, is one of them).
#![forbid(unsafe_code)]

use crate::device::FeatureRequest;
use crate::uapi::*;

use super::sys::Pointee;

/// The largest argument or bitmap we give the kernel.
pub const MAX_ARG_BYTES: usize = 64 << 20;

/// The largest page size Linux uses (arm64, ppc64 with 64 KiB pages).
const MAX_PAGE_SIZE: usize = 64 << 10;

/// Room for an ioctl of unknown layout on a data fd: a page covers every
/// generic VFS ioctl (FIGETBSZ, FIONBIO, FS_IOC_GETFSSYSFSPATH ...).
pub const GENERIC_ARG_BYTES: usize = 4096;

/// Payload room for every feature: the largest feature struct in vfio.h,
/// `vfio_device_feature_dma_logging_report`, is 32 bytes.
const FEATURE_PAYLOAD_FLOOR: usize = 64;

/// The core reads no range when `num_ranges` exceeds PAGE_SIZE / 16
/// (E2BIG first), so an array for the largest page size is always enough.
const MAX_LOGGING_RANGES: usize = MAX_PAGE_SIZE / VfioDeviceFeatureDmaLoggingRange::SIZE;

/// Runs `call` on a buffer of at least `need` bytes: `arg` itself when it
/// is long enough, else a zero-padded copy whose prefix is copied back.
pub fn with_room<R>(
    arg: &mut [u8],
    need: usize,
    call: impl FnOnce(&mut [u8]) -> R,
) -> Result<R, Errno> {
    if arg.len() >= need {
        return Ok(call(arg));
    }
    if need > MAX_ARG_BYTES {
        return Err(Errno::E2BIG);
    }
    let mut buf = vec![0u8; need];
    buf[..arg.len()].copy_from_slice(arg);
    let result = call(&mut buf);
    let len = arg.len();
    arg.copy_from_slice(&buf[..len]);
    Ok(result)
}

/// What an `argsz`-framed VFIO struct may touch: `argsz` bytes, and never
/// less than the struct itself (the kernel copies that much before it
/// checks `argsz`).
pub fn framed_len(arg: &[u8], fixed: usize) -> usize {
    u32_to_usize(get_u32(arg, 0)).max(fixed)
}

/// What an ioctl on a data fd may touch: a page for requests of unknown
/// layout, and `argsz` for VFIO requests (type ';').
pub fn data_ioctl_len(request: u64, arg: &[u8]) -> usize {
    let vfio_type = (request >> 8) & 0xff == u64::from(VFIO_TYPE);
    let framed = if vfio_type { framed_len(arg, 0) } else { 0 };
    framed.max(GENERIC_ARG_BYTES)
}

/// Which payload field holds a user pointer the kernel follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pointer {
    None,
    /// `dma_logging_control.ranges`, payload offset 16.
    Ranges,
    /// `dma_logging_report.bitmap`, payload offset 24.
    Bitmap,
}

impl Pointer {
    fn payload_offset(self) -> Option<usize> {
        match self {
            Pointer::None => None,
            Pointer::Ranges => Some(16),
            Pointer::Bitmap => Some(24),
        }
    }
}

/// One `VFIO_DEVICE_FEATURE` argument: header + payload, padded, with the
/// logging pointers patched in.
#[derive(Debug)]
pub struct FeatureCall {
    buf: Vec<u8>,
    pointer: Pointer,
    /// The ranges array `dma_logging_control.ranges` points at.
    ranges: Vec<u8>,
    /// The address written into the pointer field, once written.
    patched: Option<u64>,
}

impl FeatureCall {
    /// Marshals `req`. For DMA_LOGGING_REPORT this grows `req.bitmap` to
    /// what the report may write.
    pub fn new(req: &mut FeatureRequest) -> Result<FeatureCall, Errno> {
        let payload = req
            .payload_len()
            .max(req.data.len())
            .max(FEATURE_PAYLOAD_FLOOR);
        let total = VfioDeviceFeature::SIZE + payload;
        if total > MAX_ARG_BYTES {
            return Err(Errno::E2BIG);
        }
        let mut buf = vec![0u8; total];
        put_u32(&mut buf, 0, req.argsz);
        put_u32(&mut buf, 4, req.flags);
        buf[VfioDeviceFeature::SIZE..VfioDeviceFeature::SIZE + req.data.len()]
            .copy_from_slice(&req.data);

        // PROBE returns before the core reads the payload.
        let pointer = if req.flags & VFIO_DEVICE_FEATURE_PROBE != 0 {
            Pointer::None
        } else {
            match req.feature() {
                VFIO_DEVICE_FEATURE_DMA_LOGGING_START => Pointer::Ranges,
                VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => Pointer::Bitmap,
                _ => Pointer::None,
            }
        };
        let mut ranges = Vec::new();
        match pointer {
            Pointer::Ranges => ranges = ranges_array(req),
            Pointer::Bitmap => {
                let words = report_bitmap_words(&req.data)?;
                if req.bitmap.len() < words {
                    req.bitmap.resize(words, 0);
                }
            }
            Pointer::None => {}
        }
        Ok(FeatureCall {
            buf,
            pointer,
            ranges,
            patched: None,
        })
    }

    /// The argument and the memory it points at, with the pointer field
    /// set to that memory's address. `bitmap` is the request's bitmap.
    pub fn parts<'a>(&'a mut self, bitmap: &'a mut [u64]) -> (&'a mut [u8], Pointee<'a>) {
        let pointee = match self.pointer {
            Pointer::None => Pointee::None,
            Pointer::Ranges => Pointee::Bytes(&self.ranges),
            Pointer::Bitmap => Pointee::Words(bitmap),
        };
        if let Some(at) = self.pointer.payload_offset() {
            let addr = pointee.addr();
            put_u64(&mut self.buf, VfioDeviceFeature::SIZE + at, addr);
            self.patched = Some(addr);
        }
        (&mut self.buf, pointee)
    }

    /// The payload as it is now (after the call: as the kernel left it).
    pub fn payload(&self) -> &[u8] {
        &self.buf[VfioDeviceFeature::SIZE..]
    }

    /// Copies the payload back into `req.data` (the core copies the struct
    /// back on failure too). A pointer field still holding our address
    /// gets the caller's bytes back, so an untouched payload reads as
    /// untouched.
    pub fn finish(self, req: &mut FeatureRequest) {
        let original = req.data.clone();
        let len = req.data.len();
        req.data
            .copy_from_slice(&self.buf[VfioDeviceFeature::SIZE..VfioDeviceFeature::SIZE + len]);
        if let (Some(at), Some(addr)) = (self.pointer.payload_offset(), self.patched) {
            if get_u64(&self.buf, VfioDeviceFeature::SIZE + at) == addr {
                let end = (at + 8).min(len);
                if at < end {
                    req.data[at..end].copy_from_slice(&original[at..end]);
                }
            }
        }
    }
}

/// The array `dma_logging_control.ranges` points at: at least
/// `num_ranges` entries (up to what the core can read), the caller's
/// ranges first, zeros after; never empty, so the pointer is real memory.
fn ranges_array(req: &FeatureRequest) -> Vec<u8> {
    let control = VfioDeviceFeatureDmaLoggingControl::from_bytes(&req.data);
    let entries = u32_to_usize(control.num_ranges)
        .min(MAX_LOGGING_RANGES)
        .max(req.ranges.len())
        .max(1);
    let mut bytes = vec![0u8; entries * VfioDeviceFeatureDmaLoggingRange::SIZE];
    for (range, slot) in req
        .ranges
        .iter()
        .zip(bytes.chunks_exact_mut(VfioDeviceFeatureDmaLoggingRange::SIZE))
    {
        slot.copy_from_slice(&range.to_bytes());
    }
    bytes
}

/// The u64 words a report may write, after the kernel's own checks: the
/// core's `iova_bitmap` covers `(length - 1) / (64 * page_size) + 1`
/// words and pins whole pages of them, so a page of slack keeps a driver
/// that sets bits past the range inside our memory (where the caller sees
/// them). Never less than one word, so the pointer is real memory.
fn report_bitmap_words(data: &[u8]) -> Result<usize, Errno> {
    let report = VfioDeviceFeatureDmaLoggingReport::from_bytes(data);
    let slack = MAX_PAGE_SIZE / size_of::<u64>();
    // The core refuses these before it touches the bitmap.
    if !report.page_size.is_power_of_two() || report.iova.checked_add(report.length).is_none() {
        return Ok(1);
    }
    // iova_bitmap computes `1 << pgshift` in an int: from 2^31 on its
    // value is not the page size, so assume the smallest one.
    let page = if report.page_size >= 1 << 31 {
        1
    } else {
        report.page_size
    };
    let words = report.length.wrapping_sub(1) / page / 64 + 1;
    let words = usize::try_from(words).map_err(|_| Errno::E2BIG)?;
    if words > MAX_ARG_BYTES / size_of::<u64>() {
        return Err(Errno::E2BIG);
    }
    Ok(words + slack)
}

fn u32_to_usize(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_covers_every_feature_struct() {
        for size in [
            VfioDeviceFeatureMigration::SIZE,
            VfioDeviceFeatureMigState::SIZE,
            VfioDeviceFeatureMigDataSize::SIZE,
            VfioDeviceFeatureDmaLoggingControl::SIZE,
            VfioDeviceFeatureDmaLoggingReport::SIZE,
            16, // PCI_VF_TOKEN: a UUID
        ] {
            assert!(FEATURE_PAYLOAD_FLOOR >= size);
        }
    }

    #[test]
    fn with_room_uses_the_buffer_or_a_padded_copy() {
        let mut arg = [1u8, 2, 3, 4];
        let seen = with_room(&mut arg, 4, |b| {
            b[0] = 9;
            b.len()
        })
        .unwrap();
        assert_eq!((seen, arg), (4, [9, 2, 3, 4]));
        let seen = with_room(&mut arg, 32, |b| {
            assert_eq!(&b[4..], &[0u8; 28]);
            b[3] = 7;
            b[31] = 7;
            b.len()
        })
        .unwrap();
        assert_eq!((seen, arg), (32, [9, 2, 3, 7]));
        assert_eq!(
            with_room(&mut arg, MAX_ARG_BYTES + 1, |_| ()),
            Err(Errno::E2BIG)
        );
    }

    #[test]
    fn framed_lengths() {
        let mut arg = vec![0u8; 8];
        put_u32(&mut arg, 0, 100);
        assert_eq!(framed_len(&arg, 32), 100);
        put_u32(&mut arg, 0, 4);
        assert_eq!(framed_len(&arg, 32), 32);
        assert_eq!(framed_len(&[], 24), 24);
        put_u32(&mut arg, 0, 10_000);
        assert_eq!(data_ioctl_len(VFIO_MIG_GET_PRECOPY_INFO, &arg), 10_000);
        // FIONREAD is not a VFIO request: its first bytes mean nothing.
        assert_eq!(data_ioctl_len(0x541b, &arg), GENERIC_ARG_BYTES);
    }

    fn call_of(req: &mut FeatureRequest) -> (Vec<u8>, u64, usize) {
        let mut call = FeatureCall::new(req).unwrap();
        let mut bitmap = std::mem::take(&mut req.bitmap);
        let (buf, pointee) = call.parts(&mut bitmap);
        let addr = pointee.addr();
        let len = match pointee {
            Pointee::None => 0,
            Pointee::Bytes(b) => b.len(),
            Pointee::Words(w) => w.len() * 8,
        };
        let bytes = buf.to_vec();
        req.bitmap = bitmap;
        (bytes, addr, len)
    }

    #[test]
    fn header_payload_and_padding() {
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_SET,
            vec![3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        );
        let (buf, addr, _) = call_of(&mut req);
        assert_eq!(buf.len(), 8 + FEATURE_PAYLOAD_FLOOR);
        assert_eq!(get_u32(&buf, 0), 16);
        assert_eq!(
            get_u32(&buf, 4),
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE | VFIO_DEVICE_FEATURE_SET
        );
        assert_eq!(&buf[8..16], &req.data[..]);
        assert!(buf[16..].iter().all(|&b| b == 0));
        assert_eq!(addr, 0);

        // A lying argsz gets the room it claims.
        req.argsz = 4096;
        assert_eq!(call_of(&mut req).0.len(), 4096);
        req.argsz = u32::MAX;
        assert_eq!(FeatureCall::new(&mut req).err(), Some(Errno::E2BIG));
    }

    #[test]
    fn logging_start_points_at_a_padded_ranges_array() {
        let control = VfioDeviceFeatureDmaLoggingControl {
            page_size: 4096,
            num_ranges: 5,
            reserved: 0,
            ranges: 0xdead,
        };
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            VFIO_DEVICE_FEATURE_SET,
            control.to_bytes(),
        );
        req.ranges = vec![VfioDeviceFeatureDmaLoggingRange {
            iova: 0x1000,
            length: 0x2000,
        }];
        let (buf, addr, len) = call_of(&mut req);
        assert_eq!(get_u64(&buf, 8 + 16), addr);
        assert_ne!(addr, 0);
        assert_eq!(len, 5 * 16);

        // PROBE reads nothing: no patching.
        req.flags |= VFIO_DEVICE_FEATURE_PROBE;
        let (buf, addr, _) = call_of(&mut req);
        assert_eq!((get_u64(&buf, 8 + 16), addr), (0xdead, 0));

        // More ranges than the core ever reads: capped, never empty.
        req.flags = VFIO_DEVICE_FEATURE_DMA_LOGGING_START | VFIO_DEVICE_FEATURE_SET;
        put_u32(&mut req.data, 8, u32::MAX);
        assert_eq!(call_of(&mut req).2, MAX_LOGGING_RANGES * 16);
        put_u32(&mut req.data, 8, 0);
        req.ranges.clear();
        assert_eq!(call_of(&mut req).2, 16);
    }

    fn report(iova: u64, length: u64, page_size: u64) -> FeatureRequest {
        FeatureRequest::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
            VFIO_DEVICE_FEATURE_GET,
            VfioDeviceFeatureDmaLoggingReport {
                iova,
                length,
                page_size,
                bitmap: 0,
            }
            .to_bytes(),
        )
    }

    #[test]
    fn logging_report_bitmap_is_sized_like_the_kernel_does() {
        let slack = MAX_PAGE_SIZE / 8;
        // 64 pages: one word; 65 pages: two.
        assert_eq!(
            report_bitmap_words(&report(0, 64 << 12, 4096).data),
            Ok(1 + slack)
        );
        assert_eq!(
            report_bitmap_words(&report(0, 65 << 12, 4096).data),
            Ok(2 + slack)
        );
        assert_eq!(report_bitmap_words(&report(0, 1, 4096).data), Ok(1 + slack));
        // Refused by the core before the bitmap is touched.
        assert_eq!(report_bitmap_words(&report(0, 4096, 0).data), Ok(1));
        assert_eq!(report_bitmap_words(&report(0, 4096, 3000).data), Ok(1));
        assert_eq!(report_bitmap_words(&report(u64::MAX, 2, 4096).data), Ok(1));
        // Too big for us: length 0 wraps in the kernel, 2^41 pages.
        assert_eq!(
            report_bitmap_words(&report(0, 0, 4096).data),
            Err(Errno::E2BIG)
        );
        assert_eq!(
            report_bitmap_words(&report(0, 1 << 53, 4096).data),
            Err(Errno::E2BIG)
        );
        // Page sizes the kernel's int shift mangles count as the smallest.
        assert_eq!(
            report_bitmap_words(&report(0, 1 << 20, 1 << 32).data),
            Ok((1 << 14) + slack)
        );

        let mut req = report(0x10000, 128 << 12, 4096);
        req.bitmap = vec![7];
        let (buf, addr, len) = call_of(&mut req);
        assert_eq!(req.bitmap.len(), 2 + slack);
        assert_eq!(req.bitmap[0], 7);
        assert_eq!(len, req.bitmap.len() * 8);
        assert_eq!(get_u64(&buf, 8 + 24), addr);
        assert_eq!(addr, u64::try_from(req.bitmap.as_ptr().addr()).unwrap());
    }

    #[test]
    fn finish_copies_back_and_hides_our_pointer() {
        let mut req = report(0, 4096, 4096);
        let before = req.data.clone();
        let mut call = FeatureCall::new(&mut req).unwrap();
        let mut bitmap = std::mem::take(&mut req.bitmap);
        let (buf, _) = call.parts(&mut bitmap);
        // The driver writes page_size back and leaves the pointer alone.
        put_u64(buf, 8 + 16, 8192);
        call.finish(&mut req);
        assert_eq!(get_u64(&req.data, 16), 8192);
        assert_eq!(&req.data[24..32], &before[24..32]);

        // A pointer field the driver changed is reported as changed.
        let mut call = FeatureCall::new(&mut req).unwrap();
        let (buf, _) = call.parts(&mut bitmap);
        put_u64(buf, 8 + 24, 0x1234);
        call.finish(&mut req);
        assert_eq!(get_u64(&req.data, 24), 0x1234);

        // A short payload gets what fits.
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            VFIO_DEVICE_FEATURE_GET,
            vec![0; 4],
        );
        let mut call = FeatureCall::new(&mut req).unwrap();
        let (buf, _) = call.parts(&mut []);
        buf[8..16].copy_from_slice(&[2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        call.finish(&mut req);
        assert_eq!(req.data, vec![2, 0, 0, 0]);
    }
}
