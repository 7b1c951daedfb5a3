//! A fixed-size log-linear latency histogram.
//!
//! Samples are counted in microseconds. Values below 32 us each have their own bucket and are
//! exact; above that, every power of two is split into 16 equal buckets, so a bucket is at most
//! 1/16 of its lower bound wide. A quantile is reported as the middle of its bucket, hence
//! within **1/32 (about 3.1%)** of the recorded sample of that rank. Buckets reach 2^36 us
//! (about 19 hours); larger values share the top bucket. Count, min, max and mean are kept
//! exactly (sub-microsecond parts are truncated), and quantiles are clamped to `[min, max]`.
//!
//! The 528 buckets (4.2 KiB, sized to keep an idle connection small) are allocated once in
//! [`LatencyHistogram::new`]; recording never allocates.

use std::fmt;
use std::time::Duration;

/// log2 of the number of sub-buckets per power of two.
const SUB_BITS: u32 = 4;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Values below this have one bucket each.
const EXACT: u64 = 2 * SUB;
/// Values at or above `2^MAX_EXP` us land in the top bucket.
const MAX_EXP: u32 = 36;
/// The largest value with a bucket of its own range.
const MAX_TRACKED: u64 = (1 << MAX_EXP) - 1;
/// Total number of buckets.
const BUCKETS: usize = EXACT as usize + (MAX_EXP - SUB_BITS - 1) as usize * SUB as usize;

/// Latency histogram with bounded relative error and no allocation per sample.
///
/// Quantiles use the nearest-rank definition: `quantile(q)` is (within the error bound) the
/// smallest recorded value such that at least a fraction `q` of all samples are at or below it.
#[derive(Clone)]
pub struct LatencyHistogram {
    buckets: Box<[u64]>,
    count: u64,
    /// Sum of all samples in microseconds.
    sum: u128,
    /// Smallest and largest sample in microseconds (meaningless while `count == 0`).
    min: u64,
    max: u64,
}

impl LatencyHistogram {
    /// Creates an empty histogram (one allocation of about 10 KiB).
    pub fn new() -> Self {
        LatencyHistogram {
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Records `n` samples of the same value, as `n` calls of [`record`](Self::record) do.
    pub(crate) fn record_n(&mut self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = &mut self.buckets[bucket_of(us)];
        *slot = slot.saturating_add(n);
        self.count = self.count.saturating_add(n);
        self.sum = self
            .sum
            .saturating_add(u128::from(us).saturating_mul(u128::from(n)));
        self.min = self.min.min(us);
        self.max = self.max.max(us);
    }

    /// The number of samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest sample, or `None` if empty.
    pub fn min(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.min))
    }

    /// The largest sample, or `None` if empty.
    pub fn max(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_micros(self.max))
    }

    /// The arithmetic mean of the samples, or `None` if empty.
    pub fn mean(&self) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        // The mean lies between min and max, so it fits a u64.
        let mean = self.sum / u128::from(self.count);
        Some(Duration::from_micros(
            u64::try_from(mean).unwrap_or(u64::MAX),
        ))
    }

    /// The `q`-quantile (`q` clamped to `[0, 1]`): `quantile(0.5)` is the median,
    /// `quantile(0.999)` the 99.9th percentile. `None` if empty or `q` is NaN.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let rank = rank(q, self.count);
        // The extremes are known exactly.
        if rank == 1 {
            return self.min();
        }
        if rank == self.count {
            return self.max();
        }
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                let us = bucket_middle(i).clamp(self.min, self.max);
                return Some(Duration::from_micros(us));
            }
        }
        // Unreachable while the bucket counts add up to `count`; saturated counts end here.
        self.max()
    }

    /// Adds every sample of `other` to this histogram.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Forgets every sample, keeping the storage.
    pub fn clear(&mut self) {
        self.buckets.fill(0);
        self.count = 0;
        self.sum = 0;
        self.min = u64::MAX;
        self.max = 0;
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count)
            .field("min", &self.min())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("p999", &self.quantile(0.999))
            .field("max", &self.max())
            .finish()
    }
}

/// The 1-based nearest rank of quantile `q` among `count > 0` samples.
fn rank(q: f64, count: u64) -> u64 {
    let q = q.clamp(0.0, 1.0);
    // The float-to-int cast saturates; the clamp keeps the rank within the samples.
    ((q * count as f64).ceil() as u64).clamp(1, count)
}

/// The bucket index of a value in microseconds.
fn bucket_of(us: u64) -> usize {
    let v = us.min(MAX_TRACKED);
    if v < EXACT {
        return v as usize;
    }
    // `v >= 64`, so the exponent is at least 6 and the shift at least 1.
    let exp = 63 - v.leading_zeros();
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB;
    EXACT as usize + (exp - SUB_BITS - 1) as usize * SUB as usize + sub as usize
}

/// The value reported for bucket `i`: the value itself if exact, else the bucket's middle.
fn bucket_middle(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let k = i - EXACT;
    let shift = (k / SUB) as u32 + 1;
    let low = (SUB + k % SUB) << shift;
    low + (1 << shift) / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn empty_gives_none() {
        let h = LatencyHistogram::new();
        assert_eq!(h.count(), 0);
        assert_eq!((h.min(), h.max(), h.mean()), (None, None, None));
        assert_eq!(h.quantile(0.5), None);
        assert!(format!("{h:?}").contains("count: 0"));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = LatencyHistogram::default();
        for v in 1..=30 {
            h.record(us(v));
        }
        let cases = [
            (0.0, 1),
            (0.01, 1),
            (0.5, 15),
            (0.51, 16),
            (0.9, 27),
            (1.0, 30),
            (7.0, 30),
        ];
        for (q, want) in cases {
            assert_eq!(h.quantile(q), Some(us(want)), "q {q}");
        }
        assert_eq!(h.quantile(f64::NAN), None);
        assert_eq!(h.quantile(-1.0), Some(us(1)));
        assert_eq!(
            (h.min(), h.max(), h.count()),
            (Some(us(1)), Some(us(30)), 30)
        );
        assert_eq!(h.mean(), Some(Duration::from_nanos(15_000)));
    }

    #[test]
    fn bucket_boundaries() {
        // (value, bucket, middle of that bucket)
        let cases = [
            (0, 0, 0),
            (31, 31, 31),
            (32, 32, 33),
            (33, 32, 33),
            (34, 33, 35),
            (63, 47, 63),
            (64, 48, 66),
            (67, 48, 66),
            (68, 49, 70),
            (MAX_TRACKED, BUCKETS - 1, MAX_TRACKED + 1 - (1 << 30)),
            (u64::MAX, BUCKETS - 1, MAX_TRACKED + 1 - (1 << 30)),
        ];
        for (v, bucket, middle) in cases {
            assert_eq!(bucket_of(v), bucket, "{v}");
            assert_eq!(bucket_middle(bucket), middle, "{v}");
        }
        // Buckets are contiguous and their middles increase.
        for v in 32..100_000u64 {
            let b = bucket_of(v);
            assert!(b == bucket_of(v - 1) || b == bucket_of(v - 1) + 1, "{v}");
        }
        assert!((1..BUCKETS).all(|i| bucket_middle(i) > bucket_middle(i - 1)));
    }

    #[test]
    fn quantiles_within_the_error_bound() {
        let qs = [
            0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0,
        ];
        for seed in 0..8 {
            let mut rng = Rng::new(seed);
            let mut h = LatencyHistogram::new();
            let n = 1 + rng.below(20_000) as usize;
            // Log-uniform from 1 us to about 3 hours.
            let mut samples: Vec<u64> = (0..n)
                .map(|_| (rng.next_f64() * 1e10f64.ln()).exp() as u64)
                .collect();
            for &s in &samples {
                h.record(us(s));
            }
            samples.sort_unstable();
            for q in qs {
                let want = samples[rank(q, n as u64) as usize - 1];
                let got = h.quantile(q).unwrap().as_micros() as u64;
                assert!(
                    got.abs_diff(want) * 32 <= want,
                    "seed {seed} q {q}: got {got} want {want}"
                );
            }
            let sum: u64 = samples.iter().sum();
            assert_eq!(h.mean(), Some(us(sum / n as u64)));
            assert_eq!(h.min(), Some(us(samples[0])));
            assert_eq!(h.max(), Some(us(samples[n - 1])));
        }
    }

    #[test]
    fn huge_values_saturate() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::MAX);
        h.record(Duration::MAX);
        assert_eq!(h.max(), Some(us(u64::MAX)));
        assert_eq!(h.quantile(0.5), Some(us(u64::MAX)));
        assert_eq!(h.mean(), Some(us(u64::MAX)));
        h.record(Duration::from_secs(3600));
        assert_eq!(h.quantile(0.0), Some(Duration::from_secs(3600)));
        assert_eq!(h.count(), 3);
        // Values past the top bucket are reported from it, clamped to the recorded range.
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_secs(10_000_000));
        h.record(Duration::from_secs(20_000_000));
        assert_eq!(h.quantile(1.0), Some(Duration::from_secs(20_000_000)));
        assert_eq!(h.quantile(0.0), Some(Duration::from_secs(10_000_000)));
    }

    #[test]
    fn sub_microsecond_parts_are_truncated() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_nanos(999));
        h.record(Duration::from_nanos(1500));
        assert_eq!((h.min(), h.max()), (Some(us(0)), Some(us(1))));
    }

    #[test]
    fn a_run_records_what_as_many_single_samples_do() {
        let samples = [
            0,
            1,
            1,
            31,
            32,
            33,
            1000,
            1000,
            1000,
            5_000_000,
            u64::MAX / 4,
        ];
        let mut one_by_one = LatencyHistogram::new();
        let mut runs = LatencyHistogram::new();
        for (i, &s) in samples.iter().enumerate() {
            let n = i as u64 % 4;
            for _ in 0..n {
                one_by_one.record(us(s));
            }
            runs.record_n(us(s), n);
        }
        assert_eq!(runs.buckets, one_by_one.buckets);
        assert_eq!(
            (runs.count, runs.sum, runs.min, runs.max),
            (
                one_by_one.count,
                one_by_one.sum,
                one_by_one.min,
                one_by_one.max
            )
        );
    }

    #[test]
    fn merge_and_clear() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        for v in 1..=15 {
            a.record(us(v));
            b.record(us(v + 15));
        }
        a.merge(&b);
        assert_eq!(a.count(), 30);
        assert_eq!((a.min(), a.max()), (Some(us(1)), Some(us(30))));
        assert_eq!(a.quantile(0.5), Some(us(15)));
        a.merge(&LatencyHistogram::new());
        assert_eq!((a.count(), a.min()), (30, Some(us(1))));
        a.clear();
        assert_eq!((a.count(), a.quantile(0.5)), (0, None));
        a.record(us(7));
        assert_eq!((a.min(), a.max()), (Some(us(7)), Some(us(7))));
    }

    #[test]
    fn debug_prints_a_summary() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_millis(5));
        let s = format!("{h:?}");
        assert!(
            s.contains("count: 1") && s.contains("p999: Some(5ms)"),
            "{s}"
        );
        assert!(s.len() < 200, "{s}");
    }
}
