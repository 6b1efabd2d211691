//! DMA dirty logging (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`): the range
//! validation of `vfio_ioctl_device_feature_logging_start()` and a device
//! that DMA-writes a few pages inside the logged ranges while it runs.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use super::stream::mix64;
use crate::uapi::{
    Errno, VfioDeviceFeatureDmaLoggingControl, VfioDeviceFeatureDmaLoggingRange,
    VfioDeviceFeatureDmaLoggingReport, LOG_MAX_RANGES,
};

/// Pages the running device writes per operation.
const WRITES_PER_OPERATION: u64 = 2;

/// An active dirty log.
#[derive(Debug, Clone)]
pub struct DmaLog {
    page_size: u64,
    /// (iova, length) as given.
    ranges: Vec<(u64, u64)>,
    /// Start addresses of the logged pages the device wrote.
    dirty: BTreeSet<u64>,
}

/// `IS_ALIGNED()` as the kernel computes it (meaningful for powers of two).
fn is_aligned(x: u64, a: u64) -> bool {
    x & a.wrapping_sub(1) == 0
}

impl DmaLog {
    /// Validates a START like the VFIO core; `check` is off under a fault.
    /// `ranges` entries missing up to `num_ranges` read as zero.
    pub fn start(
        control: &VfioDeviceFeatureDmaLoggingControl,
        ranges: &[VfioDeviceFeatureDmaLoggingRange],
        check: bool,
    ) -> Result<DmaLog, Errno> {
        let count = control.num_ranges;
        if check && count == 0 {
            return Err(Errno::EINVAL);
        }
        if check && count > LOG_MAX_RANGES {
            return Err(Errno::E2BIG);
        }
        // Unchecked, a huge count is bounded by what the caller passed.
        let count = if check {
            count as usize
        } else {
            (count as usize).min(ranges.len())
        };
        let mut taken: Vec<(u64, u64)> = Vec::with_capacity(count);
        for i in 0..count {
            let range = ranges.get(i).copied().unwrap_or_default();
            if check {
                if !is_aligned(range.iova, control.page_size)
                    || !is_aligned(range.length, control.page_size)
                {
                    return Err(Errno::EINVAL);
                }
                if range.iova.checked_add(range.length).is_none() {
                    return Err(Errno::EOVERFLOW);
                }
                // Closed intervals as the core's interval tree holds them.
                let last = range.iova.wrapping_add(range.length).wrapping_sub(1);
                let overlaps = taken.iter().any(|&(iova, length)| {
                    let other_last = iova.wrapping_add(length).wrapping_sub(1);
                    iova <= last && other_last >= range.iova
                });
                if overlaps {
                    return Err(Errno::EINVAL);
                }
            }
            taken.push((range.iova, range.length));
        }
        Ok(DmaLog {
            page_size: control.page_size,
            ranges: taken,
            dirty: BTreeSet::new(),
        })
    }

    /// The device writes a few pages chosen by `salt` inside the ranges.
    pub fn dma(&mut self, salt: u64) {
        if self.page_size == 0 {
            return;
        }
        let ps = self.page_size;
        let total = self
            .ranges
            .iter()
            .fold(0u64, |sum, &(_, length)| sum.saturating_add(length / ps));
        if total == 0 {
            return;
        }
        for k in 0..WRITES_PER_OPERATION {
            let mut n = mix64(salt ^ k) % total;
            for &(iova, length) in &self.ranges {
                let pages = length / ps;
                if n < pages {
                    self.dirty.insert(iova + n * ps);
                    break;
                }
                n -= pages;
            }
        }
    }

    /// The device wrote `iovas` (its declared writes): those inside a
    /// logged range dirty their page.
    pub fn written(&mut self, iovas: &[u64]) {
        let ps = self.page_size;
        for &iova in iovas {
            let logged = self
                .ranges
                .iter()
                .any(|&(start, length)| iova >= start && iova - start < length);
            if logged && ps != 0 {
                self.dirty.insert(iova - iova % ps);
            }
        }
    }

    /// Sets the bits of written pages in `[iova, iova + length)` (never
    /// clears one) and forgets those pages; `next_page` marks the page after
    /// each written one instead (a fault). The caller validated the report.
    pub fn report(
        &mut self,
        report: &VfioDeviceFeatureDmaLoggingReport,
        bitmap: &mut [u64],
        next_page: bool,
    ) -> Result<(), Errno> {
        let (iova, ps) = (report.iova, report.page_size);
        let end = iova + report.length;
        let reach = self.page_size.max(1) - 1;
        let hits: Vec<u64> = self
            .dirty
            .range(iova.saturating_sub(reach)..end)
            .copied()
            .collect();
        let skew = if next_page { self.page_size } else { 0 };
        for addr in hits {
            let marked = addr.saturating_add(skew);
            let lo = marked.max(iova);
            let hi = marked.saturating_add(self.page_size.max(1)).min(end);
            if lo >= hi {
                self.dirty.remove(&addr);
                continue;
            }
            for bit in (lo - iova) / ps..=(hi - 1 - iova) / ps {
                let word = bitmap
                    .get_mut(usize::try_from(bit / 64).map_err(|_| Errno::EFAULT)?)
                    .ok_or(Errno::EFAULT)?;
                *word |= 1 << (bit % 64);
            }
            self.dirty.remove(&addr);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(page_size: u64, num_ranges: u32) -> VfioDeviceFeatureDmaLoggingControl {
        VfioDeviceFeatureDmaLoggingControl {
            page_size,
            num_ranges,
            ..Default::default()
        }
    }

    fn range(iova: u64, length: u64) -> VfioDeviceFeatureDmaLoggingRange {
        VfioDeviceFeatureDmaLoggingRange { iova, length }
    }

    #[test]
    fn start_validates_like_the_core() {
        let ok = [range(0, 0x4000), range(0x10000, 0x2000)];
        assert!(DmaLog::start(&control(4096, 2), &ok, true).is_ok());
        let cases: &[(u32, &[VfioDeviceFeatureDmaLoggingRange], Errno)] = &[
            (0, &[], Errno::EINVAL),
            (LOG_MAX_RANGES + 1, &[], Errno::E2BIG),
            (1, &[range(0x800, 0x1000)], Errno::EINVAL),
            (1, &[range(0x1000, 0x800)], Errno::EINVAL),
            (2, &[range(0, 0x2000), range(0x1000, 0x1000)], Errno::EINVAL),
            (1, &[range(u64::MAX - 0xfff, 0x2000)], Errno::EOVERFLOW),
        ];
        for (count, ranges, errno) in cases {
            assert_eq!(
                DmaLog::start(&control(4096, *count), ranges, true).err(),
                Some(*errno),
                "{ranges:?}"
            );
            assert!(DmaLog::start(&control(4096, *count), ranges, false).is_ok());
        }
        // Missing entries read as zero: two empty ranges at 0 overlap.
        assert_eq!(
            DmaLog::start(&control(4096, 3), &ok[..1], true).err(),
            Some(Errno::EINVAL)
        );
    }

    #[test]
    fn reports_set_bits_once_then_the_range_is_clean() {
        let mut log = DmaLog::start(&control(4096, 1), &[range(0x10000, 0x10000)], true).unwrap();
        for salt in 0..5 {
            log.dma(salt);
        }
        let written: Vec<u64> = log.dirty.iter().copied().collect();
        assert!(!written.is_empty());
        assert!(written
            .iter()
            .all(|a| (0x10000..0x20000).contains(a) && a % 4096 == 0));
        let report = VfioDeviceFeatureDmaLoggingReport {
            iova: 0x10000,
            length: 0x10000,
            page_size: 4096,
            bitmap: 0,
        };
        let mut bitmap = vec![1u64 << 63];
        log.report(&report, &mut bitmap, false).unwrap();
        for a in &written {
            assert_ne!(bitmap[0] & (1 << ((a - 0x10000) / 4096)), 0);
        }
        assert_ne!(bitmap[0] & (1 << 63), 0, "bits are never cleared");
        let mut again = vec![0u64];
        log.report(&report, &mut again, false).unwrap();
        assert_eq!(again, vec![0]);
        // A bitmap too short for a dirty page is EFAULT.
        log.dma(99);
        assert_eq!(log.report(&report, &mut [], false), Err(Errno::EFAULT));
    }

    #[test]
    fn declared_writes_inside_the_ranges_are_reported() {
        let mut log =
            DmaLog::start(&control(4096, 1), &[range(0x10_0000, 0x10_0000)], true).unwrap();
        // 0x1000 lies outside the range; 0x10_3456 dirties page 0x10_3000.
        log.written(&[0x1000, 0x10_3456, 0x20_0000]);
        assert_eq!(log.dirty.iter().copied().collect::<Vec<_>>(), [0x10_3000]);
        let report = VfioDeviceFeatureDmaLoggingReport {
            iova: 0x10_0000,
            length: 0x10_0000,
            page_size: 4096,
            bitmap: 0,
        };
        let mut shifted = log.clone();
        let mut bitmap = vec![0u64; 4];
        log.report(&report, &mut bitmap, false).unwrap();
        assert_eq!(bitmap, [1 << 3, 0, 0, 0]);
        let mut bitmap = vec![0u64; 4];
        shifted.report(&report, &mut bitmap, true).unwrap();
        assert_eq!(bitmap, [1 << 4, 0, 0, 0]);
        assert!(shifted.dirty.is_empty());
    }
}
