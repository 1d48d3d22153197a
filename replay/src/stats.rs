//! The report's arithmetic, pure so it is tested on fixed inputs:
//! percentiles and the confusion matrix. ROC AUC, APGR and the threshold
//! sweep come from `triage_complexity::calibration`, the same code the
//! router calibrates with.

use serde::{Deserialize, Serialize};

/// p50/p95/p99 (and count, mean, max) of a set of latencies in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// Percentiles by the nearest-rank method (the value at rank ⌈p·n⌉), which
/// never invents a value that was not measured.
pub fn percentiles(samples: &[f64]) -> Percentiles {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let r = (p * v.len() as f64).ceil() as usize;
        v[r.clamp(1, v.len()) - 1]
    };
    Percentiles {
        count: v.len(),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        max: v[v.len() - 1],
    }
}

/// Counts of (label, decision) pairs, tier 2 being "positive".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// Labelled 2, routed to 2.
    pub true_tier2: u64,
    /// Labelled 1, routed to 2 (costs money).
    pub false_tier2: u64,
    /// Labelled 1, routed to 1.
    pub true_tier1: u64,
    /// Labelled 2, routed to 1 (costs quality).
    pub false_tier1: u64,
}

impl Confusion {
    /// Tallies `(label, routed)` tier pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u8, u8)>) -> Self {
        let mut c = Confusion::default();
        for (label, routed) in pairs {
            match (label, routed) {
                (2, 2) => c.true_tier2 += 1,
                (1, 2) => c.false_tier2 += 1,
                (1, 1) => c.true_tier1 += 1,
                (2, 1) => c.false_tier1 += 1,
                _ => {}
            }
        }
        c
    }

    /// All counted pairs.
    pub fn total(&self) -> u64 {
        self.true_tier2 + self.false_tier2 + self.true_tier1 + self.false_tier1
    }

    /// Share routed as labelled.
    pub fn accuracy(&self) -> Option<f64> {
        let t = self.total();
        (t > 0).then(|| (self.true_tier2 + self.true_tier1) as f64 / t as f64)
    }

    /// Of those routed to tier 2, the share that needed it.
    pub fn precision(&self) -> Option<f64> {
        let d = self.true_tier2 + self.false_tier2;
        (d > 0).then(|| self.true_tier2 as f64 / d as f64)
    }

    /// Of those that needed tier 2, the share that got it.
    pub fn recall(&self) -> Option<f64> {
        let d = self.true_tier2 + self.false_tier1;
        (d > 0).then(|| self.true_tier2 as f64 / d as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&v);
        assert_eq!(
            (p.p50, p.p95, p.p99, p.max, p.count),
            (50.0, 95.0, 99.0, 100.0, 100)
        );
        assert!((p.mean - 50.5).abs() < 1e-12);
        let one = percentiles(&[7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(percentiles(&[]).count, 0);
        // Unsorted input, non-finite values ignored.
        let p = percentiles(&[5.0, f64::NAN, 1.0, 3.0]);
        assert_eq!((p.count, p.p50, p.max), (3, 3.0, 5.0));
    }

    #[test]
    fn confusion_counts_and_rates() {
        let c = Confusion::from_pairs([(2, 2), (2, 2), (2, 1), (1, 1), (1, 1), (1, 1), (1, 2)]);
        assert_eq!(
            c,
            Confusion {
                true_tier2: 2,
                false_tier2: 1,
                true_tier1: 3,
                false_tier1: 1
            }
        );
        assert_eq!(c.accuracy(), Some(5.0 / 7.0));
        assert_eq!(c.precision(), Some(2.0 / 3.0));
        assert_eq!(c.recall(), Some(2.0 / 3.0));
        assert_eq!(Confusion::default().accuracy(), None);
    }
}
