//! DMA dirty logging (features 6, 7, 8), checked against the core's
//! validation in `vfio_ioctl_device_feature_logging_*()`.
#![forbid(unsafe_code)]

use super::*;
use crate::device::{DeviceExt, FeatureRequest};
use crate::scenario::Expect;
use crate::uapi::*;

/// The core's verdict on a START request: `Ok` or the errno it returns.
pub fn expect_start(page_size: u64, ranges: &[(u64, u64)], num_ranges: u32) -> Result<(), Errno> {
    if num_ranges == 0 {
        return Err(Errno::EINVAL);
    }
    if num_ranges > LOG_MAX_RANGES {
        return Err(Errno::E2BIG);
    }
    let aligned = |x: u64| page_size != 0 && x.is_multiple_of(page_size);
    let mut seen: Vec<(u64, u64)> = Vec::new();
    for i in 0..num_ranges as usize {
        let (iova, length) = ranges.get(i).copied().unwrap_or((0, 0));
        if !aligned(iova) || !aligned(length) {
            return Err(Errno::EINVAL);
        }
        let Some(end) = iova.checked_add(length) else {
            return Err(Errno::EOVERFLOW);
        };
        // An empty range has no last byte; the core then compares
        // `iova - 1` as its last, which overlaps everything below it.
        let last = end.wrapping_sub(1);
        if seen.iter().any(|&(s, l)| s <= last && iova <= l) {
            return Err(Errno::EINVAL);
        }
        seen.push((iova, last));
    }
    Ok(())
}

/// The core's verdict on a REPORT request before the driver sees it.
pub fn expect_report(iova: u64, length: u64, page_size: u64) -> Result<(), Errno> {
    if page_size < 4096 || !page_size.is_power_of_two() {
        return Err(Errno::EINVAL);
    }
    if iova.checked_add(length).is_none() {
        return Err(Errno::EOVERFLOW);
    }
    Ok(())
}

/// Bits pre-set in a REPORT bitmap: a driver may only add bits (V2-LOG-05).
const PATTERN: u64 = 0x8000_0000_0000_0001;

/// The first bit a REPORT newly set at or past bit `bits` (the range has
/// `bits` pages): a page outside the range asked for. The core's
/// iova_bitmap maps bit i of u64 word w to the page at iova + (64w + i) *
/// page_size.
fn bits_beyond(after: &[u64], before: &[u64], bits: u64) -> Option<u64> {
    after
        .iter()
        .zip(before)
        .enumerate()
        .find_map(|(w, (a, b))| {
            let first = (w as u64) * 64;
            let added = a & !b;
            let mask = if bits <= first {
                u64::MAX
            } else if bits - first >= 64 {
                0
            } else {
                u64::MAX << (bits - first)
            };
            let hit = added & mask;
            (hit != 0).then(|| first + u64::from(hit.trailing_zeros()))
        })
}

/// The pages (start, length) at `page_size` that the declared DMA writes
/// `writes` dirty inside the logged `ranges`.
fn declared_pages(writes: &[u64], ranges: &[(u64, u64)], page_size: u64) -> Vec<(u64, u64)> {
    let mut pages: Vec<(u64, u64)> = writes
        .iter()
        .filter(|&&a| ranges.iter().any(|&(s, l)| a >= s && a - s < l))
        .map(|&a| (a - a % page_size, page_size))
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// The bits a REPORT of `[iova, iova + length)` at `page_size` must set
/// for the written `pages` (bit (addr - iova) / page_size, as
/// iova_bitmap_set() computes it), and the pages it leaves to later
/// REPORTs (those outside the range).
fn expected_bits(
    pages: &[(u64, u64)],
    iova: u64,
    length: u64,
    page_size: u64,
) -> (BTreeSet<u64>, Vec<(u64, u64)>) {
    let end = iova.saturating_add(length);
    let mut bits = BTreeSet::new();
    let mut rest = Vec::new();
    for &(start, len) in pages {
        let (lo, hi) = (start.max(iova), start.saturating_add(len).min(end));
        if lo >= hi {
            rest.push((start, len));
            continue;
        }
        bits.extend((lo - iova) / page_size..=(hi - 1 - iova) / page_size);
    }
    (bits, rest)
}

/// The bits set in `after` and not in `before`.
fn added_bits(after: &[u64], before: &[u64]) -> BTreeSet<u64> {
    let mut bits = BTreeSet::new();
    for (w, (a, b)) in after.iter().zip(before).enumerate() {
        let mut added = a & !b;
        while added != 0 {
            bits.insert(w as u64 * 64 + u64::from(added.trailing_zeros()));
            added &= added - 1;
        }
    }
    bits
}

/// Whether `[iova, iova + length)` lies inside the union of `ranges`.
fn covers(ranges: &[(u64, u64)], iova: u64, length: u64) -> bool {
    let mut sorted: Vec<(u64, u64)> = ranges.to_vec();
    sorted.sort_unstable();
    let Some(end) = iova.checked_add(length) else {
        return false;
    };
    let mut at = iova;
    for (start, len) in sorted {
        if at >= end {
            break;
        }
        if start <= at {
            at = at.max(start.saturating_add(len));
        }
    }
    length > 0 && at >= end
}

impl Exec<'_, '_> {
    pub(super) fn logging_start(
        &mut self,
        role: Role,
        page_size: u64,
        ranges: &[(u64, u64)],
        num_ranges: Option<u32>,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let num = num_ranges.unwrap_or(ranges.len() as u32);
        let control = VfioDeviceFeatureDmaLoggingControl {
            page_size,
            num_ranges: num,
            reserved: 0,
            ranges: 0,
        };
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            VFIO_DEVICE_FEATURE_SET,
            control.to_bytes(),
        );
        req.ranges = ranges
            .iter()
            .map(|&(iova, length)| VfioDeviceFeatureDmaLoggingRange { iova, length })
            .collect();
        let args = format!("page_size {page_size}, {num} ranges");
        let call = self.start(role, "SET DMA_LOGGING_START", args, key);
        let ctx = self.role(role)?;
        let already = ctx.logging;
        let r = ctx.dev.feature(&mut req);
        let state = ctx.state;
        if r.is_ok() {
            ctx.logging = true;
            if !already {
                ctx.logged_ranges = ranges.to_vec();
                // Positions follow the granularity START selected; the
                // hint stands in for one REPORT cannot take (V2-LOG-07).
                let selected = VfioDeviceFeatureDmaLoggingControl::from_bytes(&req.data).page_size;
                let ps = if selected >= 4096 && selected.is_power_of_two() {
                    selected
                } else {
                    page_size
                };
                ctx.declared_pages = if ps == 0 {
                    Vec::new()
                } else {
                    declared_pages(&ctx.dev.description().dma_writes, ranges, ps)
                };
            }
        }
        let got = r.map(|()| 0);
        self.record(call, Returned::of(&got).in_state(state), key);
        if r.is_ok() {
            self.selected_page_size(&req, page_size, key);
        }
        if let Some((e, w)) = expect.and_then(|e| e.result.as_ref().map(|w| (e, w))) {
            self.check_result(key, e, w, &got);
            return Ok(());
        }
        if already {
            self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-LOG-02",
                    r.is_err(),
                    "a second START without STOP fails".into(),
                    ret_text(&got),
                ),
            );
            return Ok(());
        }
        match expect_start(page_size, ranges, num) {
            Ok(()) => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-LOG-01",
                    r.is_ok(),
                    "valid ranges are accepted".into(),
                    ret_text(&got),
                ),
            ),
            Err(want) => self.check(
                key,
                Check::builtin(
                    "result",
                    "V2-LOG-01",
                    r == Err(want),
                    errno_name(want),
                    ret_text(&got),
                ),
            ),
        }
        Ok(())
    }

    /// V2-LOG-07: the page size a successful START copies back is the
    /// granularity the driver selected (vfio.h: "On output the device will
    /// return the page size it selected"). The core takes it from
    /// log_start() unchecked, while REPORT refuses a page size below 4096
    /// or not a power of two (vfio_ioctl_device_feature_logging_report())
    /// and iova_bitmap derives its shift with __ffs(): any other answer
    /// names a granularity no REPORT can be made at.
    fn selected_page_size(&mut self, req: &FeatureRequest, hint: u64, key: &StepKey) {
        let selected = VfioDeviceFeatureDmaLoggingControl::from_bytes(&req.data).page_size;
        let pass = selected >= 4096 && selected.is_power_of_two();
        self.check(
            key,
            Check::builtin(
                "page-size",
                "V2-LOG-07",
                pass,
                "a power of two of at least 4096".into(),
                format!("page_size = {selected} (hint {hint})"),
            )
            .on(&["vfio_device_feature_dma_logging_control.page_size"]),
        );
    }

    /// V2-LOG-09: a REPORT while the device does nothing but its declared
    /// writes sets exactly their pages' bits, each at (addr - iova) /
    /// page_size of the u64 words (vfio.h; iova_bitmap_set()). Bits the
    /// caller preset may be set again; a preset bit hides its page.
    fn declared_writes(
        &mut self,
        role: Role,
        (after, before): (&[u64], &[u64]),
        (iova, length, page_size): (u64, u64, u64),
        key: &StepKey,
    ) -> Flow {
        let ctx = self.role(role)?;
        let (want, rest) = expected_bits(&ctx.declared_pages, iova, length, page_size);
        ctx.declared_pages = rest;
        if want.is_empty() {
            self.not_applicable(
                key,
                "declared-writes",
                "V2-LOG-09",
                "no declared DMA write of the device lies in this range since START".into(),
            );
            return Ok(());
        }
        let preset = |b: &u64| {
            usize::try_from(b / 64)
                .ok()
                .and_then(|w| before.get(w))
                .is_some_and(|word| word >> (b % 64) & 1 == 1)
        };
        let got = added_bits(after, before);
        let wanted: BTreeSet<u64> = want.iter().copied().filter(|b| !preset(b)).collect();
        let list = |bits: &BTreeSet<u64>| {
            let shown: Vec<String> = bits
                .iter()
                .map(|b| format!("{b} ({:#x})", iova + b * page_size))
                .collect();
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            }
        };
        self.check(
            key,
            Check::builtin(
                "declared-writes",
                "V2-LOG-09",
                got == wanted,
                if wanted == want {
                    format!(
                        "exactly bits {} (bit (addr - iova) / {page_size})",
                        list(&want)
                    )
                } else {
                    format!(
                        "exactly bits {} (bit (addr - iova) / {page_size}; the caller preset {})",
                        list(&wanted),
                        list(&want.difference(&wanted).copied().collect())
                    )
                },
                format!("bits {} set", list(&got)),
            )
            .on(&["vfio_device_feature_dma_logging_report.bitmap"]),
        );
        Ok(())
    }

    pub(super) fn logging_stop(
        &mut self,
        role: Role,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
            VFIO_DEVICE_FEATURE_SET,
            Vec::new(),
        );
        let call = self.start(role, "SET DMA_LOGGING_STOP", String::new(), key);
        let ctx = self.role(role)?;
        let r = ctx.dev.feature(&mut req);
        ctx.logging = false;
        ctx.logged_ranges.clear();
        ctx.declared_pages.clear();
        // The device must still answer after a STOP in any state.
        let alive = ctx.dev.get_state();
        let state = alive.ok();
        let got = r.map(|()| 0);
        self.record(call, Returned::of(&got).in_state(state), key);
        if !self.expected_result(key, expect, &got) {
            self.check(
                key,
                Check::builtin(
                    "survives",
                    "V2-LOG-04",
                    alive.is_ok(),
                    "the device still answers GET MIG_DEVICE_STATE after STOP".into(),
                    format!("STOP {}; GET {alive:?}", ret_text(&got)),
                ),
            );
        }
        Ok(())
    }

    pub(super) fn logging_report(
        &mut self,
        role: Role,
        iova: u64,
        length: u64,
        page_size: u64,
        expect: Option<&Expect>,
        key: &StepKey,
    ) -> Flow {
        let report = VfioDeviceFeatureDmaLoggingReport {
            iova,
            length,
            page_size,
            bitmap: 0,
        };
        let mut req = FeatureRequest::new(
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
            VFIO_DEVICE_FEATURE_GET,
            report.to_bytes(),
        );
        let bits = if page_size == 0 {
            0
        } else {
            length.div_ceil(page_size)
        };
        let words = usize::try_from(bits.div_ceil(64)).unwrap_or(0).max(1);
        req.bitmap = (0..words)
            .map(|i| if i % 2 == 0 { PATTERN } else { 0 })
            .collect();
        let before = req.bitmap.clone();
        let args = format!("iova {iova:#x}, length {length:#x}, page_size {page_size}");
        let call = self.start(role, "GET DMA_LOGGING_REPORT", args, key);
        let ctx = self.role(role)?;
        let logging = ctx.logging;
        let logged = covers(&ctx.logged_ranges, iova, length);
        let r = ctx.dev.feature(&mut req);
        let state = ctx.state;
        let got = r.map(|()| 0);
        self.record(call, Returned::of(&got).in_state(state), key);
        if !self.expected_result(key, expect, &got) {
            match (expect_report(iova, length, page_size), logging) {
                (Err(want), _) => self.check(
                    key,
                    Check::builtin(
                        "result",
                        "V2-LOG-03",
                        r == Err(want),
                        errno_name(want),
                        ret_text(&got),
                    ),
                ),
                (Ok(()), false) => self.check(
                    key,
                    Check::builtin(
                        "result",
                        "V2-LOG-03",
                        r.is_err(),
                        "REPORT fails while logging is off".into(),
                        ret_text(&got),
                    ),
                ),
                (Ok(()), true) => {
                    // A device that took the START must report the range
                    // (QEMU's dirty sync fails otherwise); kernels without
                    // CONFIG_IOMMUFD_DRIVER cannot report at all
                    // (iova_bitmap_alloc() gives EOPNOTSUPP).
                    if logged {
                        self.check(
                            key,
                            Check::builtin(
                                "reports",
                                "V2-LOG-06",
                                r.is_ok(),
                                "REPORT of a logged range succeeds after START".into(),
                                ret_text(&got),
                            ),
                        );
                    }
                    let alive = self.role(role)?.dev.get_state();
                    self.check(
                        key,
                        Check::builtin(
                            "survives",
                            "V2-LOG-04",
                            alive.is_ok(),
                            "the device still answers GET MIG_DEVICE_STATE after REPORT".into(),
                            format!("REPORT {}; GET {alive:?}", ret_text(&got)),
                        ),
                    );
                }
            };
        }
        if let Err(e) = r {
            if logging && expect_report(iova, length, page_size).is_ok() {
                self.not_applicable(
                    key,
                    "only-sets-bits",
                    "V2-LOG-05",
                    format!(
                        "REPORT of a logged range failed with {}: no dirty bitmap to check",
                        errno_name(e)
                    ),
                );
            }
            if let Some(e_) = expect.filter(|x| x.clean.is_some() && x.result.is_none()) {
                self.not_applicable(
                    key,
                    "clean",
                    &e_.ids[0],
                    format!(
                        "REPORT failed with {}: no dirty bitmap to check",
                        errno_name(e)
                    ),
                );
            }
        }
        if r.is_ok() && self.exact_dma && expect_report(iova, length, page_size).is_ok() {
            self.declared_writes(role, (&req.bitmap, &before), (iova, length, page_size), key)?;
        }
        if r.is_ok() {
            let beyond = bits_beyond(&req.bitmap, &before, bits);
            self.check(
                key,
                Check::builtin(
                    "within-range",
                    "V2-LOG-08",
                    beyond.is_none(),
                    format!("no bit set at or past bit {bits}, the range's last page"),
                    match beyond {
                        Some(b) => format!("bit {b} set"),
                        None => "none".into(),
                    },
                )
                .on(&["vfio_device_feature_dma_logging_report.bitmap"]),
            );
            let kept = req.bitmap.iter().zip(&before).all(|(a, b)| a & b == *b);
            self.check(
                key,
                Check::builtin(
                    "only-sets-bits",
                    "V2-LOG-05",
                    kept,
                    "bits already set stay set".into(),
                    if kept {
                        "kept".into()
                    } else {
                        "a preset bit was cleared".into()
                    },
                )
                .on(&["vfio_device_feature_dma_logging_report.bitmap"]),
            );
            if let Some((e, want)) = expect.and_then(|e| e.clean.map(|w| (e, w))) {
                let added: u32 = req
                    .bitmap
                    .iter()
                    .zip(&before)
                    .map(|(a, b)| (a & !b).count_ones())
                    .sum();
                self.check(
                    key,
                    Check::expected(
                        e,
                        "clean",
                        (added == 0) == want,
                        if want {
                            "no dirty pages".into()
                        } else {
                            "dirty pages reported".into()
                        },
                        format!("{added} dirty pages"),
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_ranges_are_the_union() {
        let r = [(1 << 20, 1 << 20), (0, 1 << 20)];
        assert!(covers(&r, 0, 2 << 20));
        assert!(covers(&r, 4096, 4096));
        assert!(!covers(&r, 0, 3 << 20));
        assert!(!covers(&r, 4 << 20, 4096));
        assert!(!covers(&[(0, 4096), (8192, 4096)], 0, 12288));
        assert!(!covers(&r, 0, 0));
        assert!(!covers(&r, u64::MAX, 2));
    }

    #[test]
    fn bits_past_the_last_page_are_found() {
        // 70 pages: word 1 holds pages 64..69, bits 6.. are beyond.
        assert_eq!(bits_beyond(&[u64::MAX, 0x3f], &[0, 0], 70), None);
        assert_eq!(bits_beyond(&[0, 1 << 6], &[0, 0], 70), Some(70));
        // Preset bits are the caller's, not the driver's.
        assert_eq!(bits_beyond(&[1 << 63], &[1 << 63], 3), None);
        assert_eq!(bits_beyond(&[1 << 3], &[0], 3), Some(3));
        assert_eq!(bits_beyond(&[0, 1], &[0, 0], 64), Some(64));
    }

    #[test]
    fn declared_writes_give_their_bits() {
        let ranges = [(1 << 20, 1 << 20)];
        // 0x1000 lies outside the logged range.
        let pages = declared_pages(&[0x15_0010, 0x10_3000, 0x1000], &ranges, 4096);
        assert_eq!(pages, [(0x10_3000, 4096), (0x15_0000, 4096)]);
        let (bits, rest) = expected_bits(&pages, 1 << 20, 1 << 20, 4096);
        assert_eq!(bits.into_iter().collect::<Vec<_>>(), [3, 80]);
        assert!(rest.is_empty());
        let (bits, _) = expected_bits(&pages, 1 << 20, 1 << 20, 65536);
        assert_eq!(bits.into_iter().collect::<Vec<_>>(), [0, 5]);
        // A range that holds one page leaves the other for later.
        let (bits, rest) = expected_bits(&pages, 0x15_0000, 0x1000, 4096);
        assert_eq!(
            (bits.into_iter().collect::<Vec<_>>(), rest),
            (vec![0], vec![(0x10_3000, 4096)])
        );
        // A page larger than the REPORT's sets every bit it covers.
        let (bits, _) = expected_bits(&[(0x10_0000, 0x4000)], 1 << 20, 1 << 20, 4096);
        assert_eq!(bits.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[test]
    fn added_bits_skip_preset_ones() {
        let got = added_bits(&[1 << 63 | 1 << 3, 1 << 16], &[1 << 63, 0]);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), [3, 80]);
    }

    #[test]
    fn start_validation_follows_the_core() {
        let p = 4096;
        assert_eq!(expect_start(p, &[], 0), Err(Errno::EINVAL));
        assert_eq!(
            expect_start(p, &[(0, p)], LOG_MAX_RANGES + 1),
            Err(Errno::E2BIG)
        );
        assert_eq!(expect_start(p, &[(1, p)], 1), Err(Errno::EINVAL));
        assert_eq!(expect_start(p, &[(0, p + 1)], 1), Err(Errno::EINVAL));
        assert_eq!(
            expect_start(p, &[(u64::MAX - p + 1, 2 * p)], 1),
            Err(Errno::EOVERFLOW)
        );
        assert_eq!(
            expect_start(p, &[(0, 2 * p), (p, p)], 2),
            Err(Errno::EINVAL)
        );
        assert_eq!(expect_start(p, &[(0, p), (p, p)], 2), Ok(()));
        // Claiming more ranges than given: the missing ones read as zero.
        assert_eq!(expect_start(p, &[(p, p)], 3), Err(Errno::EINVAL));
    }

    #[test]
    fn report_validation_follows_the_core() {
        assert_eq!(expect_report(0, 1 << 20, 2048), Err(Errno::EINVAL));
        assert_eq!(expect_report(0, 1 << 20, 12288), Err(Errno::EINVAL));
        assert_eq!(expect_report(u64::MAX, 2, 4096), Err(Errno::EOVERFLOW));
        assert_eq!(expect_report(0, 1 << 20, 4096), Ok(()));
    }
}
