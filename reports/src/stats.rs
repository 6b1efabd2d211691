//! Small statistics and human-readable units shared by the renderers.

/// Order statistics of a set of samples (ns or any other unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    pub count: usize,
    pub min: u64,
    /// The middle sample; the mean of the two middle ones for an even count.
    pub median: u64,
    /// Nearest-rank 99th percentile: the smallest sample with at least 99 %
    /// of the samples at or below it.
    pub p99: u64,
    pub max: u64,
}

impl Spread {
    /// `None` for no samples.
    pub fn of(samples: &[u64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            let sum = u128::from(sorted[n / 2 - 1]) + u128::from(sorted[n / 2]);
            u64::try_from(sum / 2).unwrap_or(u64::MAX)
        };
        let rank = (n * 99).div_ceil(100);
        Some(Spread {
            count: n,
            min: sorted[0],
            median,
            p99: sorted[rank.max(1) - 1],
            max: sorted[n - 1],
        })
    }
}

/// Three significant digits, at most two decimals: `1.25`, `12.5`, `125`.
fn three_digits(value: f64) -> String {
    // Thresholds sit where rounding would add a fourth digit (9.996 -> 10.0).
    if value < 9.995 {
        format!("{value:.2}")
    } else if value < 99.95 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// A duration in ns as people read it: `850 ns`, `12.5 µs`, `1.25 ms`, `2.50 s`.
pub fn human_duration(ns: u64) -> String {
    const UNITS: [(f64, &str); 3] = [(1e9, "s"), (1e6, "ms"), (1e3, "µs")];
    let value = ns as f64;
    for (scale, unit) in UNITS {
        // Rounding up to the next unit (999.96 µs) reads as that unit.
        if value >= scale * 0.999_995 {
            return format!("{} {unit}", three_digits(value / scale));
        }
    }
    format!("{ns} ns")
}

/// A byte count in binary units: `512 B`, `4.0 KiB`, `4.0 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Throughput in decimal megabytes per second (`123.4 MB/s`); `None` for a
/// zero duration.
pub fn throughput(bytes: u64, ns: u64) -> Option<String> {
    if ns == 0 {
        return None;
    }
    let mb_per_s = bytes as f64 * 1e3 / ns as f64;
    Some(format!("{} MB/s", three_digits(mb_per_s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        assert_eq!(Spread::of(&[]), None);
        let s = Spread::of(&[5, 1, 3]).unwrap();
        assert_eq!((s.count, s.min, s.median, s.p99, s.max), (3, 1, 3, 5, 5));
        let s = Spread::of(&[4, 1, 3, 2]).unwrap();
        assert_eq!(s.median, 2);
        let s = Spread::of(&[10, 20]).unwrap();
        assert_eq!(s.median, 15);
        let s = Spread::of(&[u64::MAX, u64::MAX]).unwrap();
        assert_eq!(s.median, u64::MAX);
        let s = Spread::of(&[7]).unwrap();
        assert_eq!((s.min, s.median, s.p99, s.max), (7, 7, 7, 7));
    }

    #[test]
    fn p99_is_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(Spread::of(&samples).unwrap().p99, 99);
        let samples: Vec<u64> = (1..=1000).collect();
        assert_eq!(Spread::of(&samples).unwrap().p99, 990);
        let samples: Vec<u64> = (1..=10).collect();
        assert_eq!(Spread::of(&samples).unwrap().p99, 10);
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(0), "0 ns");
        assert_eq!(human_duration(850), "850 ns");
        assert_eq!(human_duration(999), "999 ns");
        assert_eq!(human_duration(1_000), "1.00 µs");
        assert_eq!(human_duration(12_500), "12.5 µs");
        assert_eq!(human_duration(1_250_000), "1.25 ms");
        assert_eq!(human_duration(125_000_000), "125 ms");
        assert_eq!(human_duration(9_996_000), "10.0 ms");
        assert_eq!(human_duration(99_960_000), "100 ms");
        assert_eq!(human_duration(999_999_999), "1.00 s");
        assert_eq!(human_duration(2_500_000_000), "2.50 s");
        assert_eq!(human_duration(600_000_000_000), "600 s");
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn throughputs() {
        assert_eq!(throughput(4_000_000, 1_000_000_000).unwrap(), "4.00 MB/s");
        assert_eq!(throughput(1 << 20, 1_000_000).unwrap(), "1049 MB/s");
        assert_eq!(throughput(1, 0), None);
    }
}
