//! Percentiles of one run, and the median with its range over several runs.

use serde::Serialize;

/// The `q` quantile (0..=1) of `samples`, nearest rank; `None` when empty.
pub(crate) fn percentile(samples: &mut [f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (q * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

/// One figure over several runs: the median, its min and max, and every run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Summary {
    /// Median of the runs (mean of the middle two for an even count).
    pub(crate) median: f64,
    /// Smallest run.
    pub(crate) min: f64,
    /// Largest run.
    pub(crate) max: f64,
    /// Every run, in order.
    pub(crate) runs: Vec<f64>,
}

impl Summary {
    /// `None` when there is no run.
    pub(crate) fn of(runs: &[f64]) -> Option<Summary> {
        if runs.is_empty() {
            return None;
        }
        let mut sorted = runs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs: runs.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(500.0));
        assert_eq!(percentile(&mut v, 0.99), Some(990.0));
        assert_eq!(percentile(&mut v, 0.999), Some(999.0));
        assert_eq!(percentile(&mut [], 0.5), None);
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]).map(|s| (s.median, s.min, s.max));
        assert_eq!(s, Some((2.5, 1.0, 10.0)));
    }
}
