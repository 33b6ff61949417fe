//! Means with seeded bootstrap confidence intervals, medians and paired win rates.

use serde::{Deserialize, Serialize};

/// A mean with its 95% bootstrap interval over `n` units (scenarios).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// SplitMix64: a tiny, fixed, seedable generator, so intervals are the same on every platform
/// and every version.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), by rejection (no modulo bias).
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// The median (mean of the middle two for an even count); NaN for none.
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

/// Percentile bootstrap of the mean: `resamples` resamples with replacement, 2.5% and 97.5%.
/// `None` for no values; a single value gives a zero-width interval.
pub fn bootstrap(xs: &[f64], resamples: usize, seed: u64) -> Option<Estimate> {
    if xs.is_empty() {
        return None;
    }
    let m = mean(xs);
    if xs.len() == 1 || resamples == 0 {
        return Some(Estimate {
            mean: m,
            lo: m,
            hi: m,
            n: xs.len(),
        });
    }
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..xs.len()).map(|_| xs[rng.below(xs.len())]).sum::<f64>() / xs.len() as f64)
        .collect();
    means.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    Some(Estimate {
        mean: m,
        lo: at(0.025),
        hi: at(0.975),
        n: xs.len(),
    })
}

/// Outcome of a paired comparison: 1 win, 0.5 tie (|a - b| <= `tie`), 0 loss.
pub fn outcome(a: f64, b: f64, tie: f64) -> f64 {
    if (a - b).abs() <= tie {
        0.5
    } else if a > b {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0, 2.0, 3.0];
        let a = bootstrap(&xs, 2000, 7).unwrap();
        assert_eq!(a, bootstrap(&xs, 2000, 7).unwrap());
        assert!(a.lo < a.mean && a.mean < a.hi, "{a:?}");
        assert!(a.lo >= 1.0 && a.hi <= 5.0);
        let ys = [1.13, 2.37, 3.91, 4.05, 4.8, 2.21, 3.31];
        assert_ne!(
            bootstrap(&ys, 200, 7).unwrap(),
            bootstrap(&ys, 200, 8).unwrap()
        );
        assert_eq!(
            bootstrap(&[3.0], 100, 1).unwrap(),
            Estimate {
                mean: 3.0,
                lo: 3.0,
                hi: 3.0,
                n: 1
            }
        );
        assert!(bootstrap(&[], 100, 1).is_none());
    }

    #[test]
    fn median_and_outcomes() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
        assert_eq!(
            (
                outcome(4.0, 3.0, 0.0),
                outcome(3.0, 3.0, 0.0),
                outcome(2.0, 3.0, 0.0)
            ),
            (1.0, 0.5, 0.0)
        );
    }

    #[test]
    fn splitmix_is_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220A8397B1DCDAF);
        assert_eq!(r.next_u64(), 0x6E789E6AA1B965F4);
    }
}
