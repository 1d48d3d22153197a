//! Measuring a score against labelled data, and choosing a threshold.
//!
//! Definitions follow `data/README.md` (RouteLLM's measures): sort
//! prompts by score, send the top x% to tier 2, and let quality be the
//! share answered well by the chosen model (`large_ok` for tier 2,
//! `small_ok` for tier 1).
//! PGR(x) = (quality(x) − quality(all small)) / (quality(all large) −
//! quality(all small)); APGR is the area under PGR over x ∈ [0, 1];
//! CPT(p) is the smallest tier-2 share whose PGR reaches p.

use serde::{Deserialize, Serialize};

/// Tier 2 costs this many times tier 1 (the reference deployment's price
/// ratio), for the relative cost column.
pub const DEFAULT_PRICE_RATIO: f64 = 8.0;

/// What is known about one labelled prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `label_tier == 2`: the large model answered well and the small did not.
    pub tier2: bool,
    /// Whether the small model answered well (`None`: weakly labelled).
    pub small_ok: Option<bool>,
    /// Whether the large model answered well.
    pub large_ok: Option<bool>,
}

/// ROC AUC of `scores` against `labels` (true = tier 2): the chance a
/// random tier-2 prompt scores above a random tier-1 prompt, ties counting
/// one half. `None` when either class is absent.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let ranks = average_ranks(scores);
    let positives = labels.iter().filter(|l| **l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(r, _)| r)
        .sum();
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// 1-based ranks, ties sharing their average rank.
fn average_ranks(scores: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

/// The quality-vs-share curve: point `k` is sending the `k` highest-scored
/// prompts to tier 2.
#[derive(Debug, Clone, PartialEq)]
pub struct PgrCurve {
    /// PGR after sending 0, 1, …, n prompts to tier 2.
    pub pgr: Vec<f64>,
    /// quality(all small).
    pub quality_small: f64,
    /// quality(all large).
    pub quality_large: f64,
}

impl PgrCurve {
    /// Builds the curve over the prompts that have both outcomes. Ties in
    /// score are broken by input order, so the curve is deterministic.
    /// `None` when no prompt has both outcomes or the two tiers are equal.
    pub fn new(scores: &[f64], outcomes: &[Outcome]) -> Option<Self> {
        let rows: Vec<(f64, bool, bool)> = scores
            .iter()
            .zip(outcomes)
            .filter_map(|(s, o)| Some((*s, o.small_ok?, o.large_ok?)))
            .collect();
        let n = rows.len();
        if n == 0 {
            return None;
        }
        let small = rows.iter().filter(|r| r.1).count() as f64;
        let large = rows.iter().filter(|r| r.2).count() as f64;
        if small == large {
            return None;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| rows[b].0.total_cmp(&rows[a].0).then(a.cmp(&b)));
        let mut good = small;
        let mut pgr = Vec::with_capacity(n + 1);
        pgr.push(0.0);
        for &i in &order {
            good += f64::from(u8::from(rows[i].2)) - f64::from(u8::from(rows[i].1));
            pgr.push((good - small) / (large - small));
        }
        Some(Self {
            pgr,
            quality_small: small / n as f64,
            quality_large: large / n as f64,
        })
    }

    /// Number of prompts on the curve.
    pub fn len(&self) -> usize {
        self.pgr.len() - 1
    }

    /// Whether the curve is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Area under PGR over the tier-2 share in [0, 1] (trapezoids).
    pub fn apgr(&self) -> f64 {
        let n = self.len() as f64;
        self.pgr
            .windows(2)
            .map(|w| (w[0] + w[1]) / 2.0)
            .sum::<f64>()
            / n
    }

    /// The smallest tier-2 share whose PGR reaches `p`.
    pub fn cpt(&self, p: f64) -> Option<f64> {
        self.pgr
            .iter()
            .position(|g| *g >= p - 1e-12)
            .map(|k| k as f64 / self.len() as f64)
    }
}

/// PGR when the prompts with `tier2[i]` go to tier 2 (e.g. a threshold's
/// decisions). `None` as for [`PgrCurve::new`].
pub fn pgr_of_decisions(tier2: &[bool], outcomes: &[Outcome]) -> Option<f64> {
    let rows: Vec<(bool, bool, bool)> = tier2
        .iter()
        .zip(outcomes)
        .filter_map(|(t, o)| Some((*t, o.small_ok?, o.large_ok?)))
        .collect();
    let small = rows.iter().filter(|r| r.1).count() as f64;
    let large = rows.iter().filter(|r| r.2).count() as f64;
    if rows.is_empty() || small == large {
        return None;
    }
    let got = rows
        .iter()
        .filter(|(t, s, l)| if *t { *l } else { *s })
        .count() as f64;
    Some((got - small) / (large - small))
}

/// One row of the threshold sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    /// Tier 2 when score ≥ threshold.
    pub threshold: f64,
    /// Share of prompts sent to tier 2.
    pub tier2_share: f64,
    /// Share whose tier matches `label_tier`.
    pub accuracy: f64,
    /// Cost relative to sending everything to tier 2, with the price ratio.
    pub relative_cost: f64,
    /// Performance gap recovered at this threshold (`None` without outcomes).
    pub pgr: Option<f64>,
}

/// Cost of a tier-2 share relative to all tier 2, tier 2 costing
/// `price_ratio` times tier 1.
pub fn relative_cost(tier2_share: f64, price_ratio: f64) -> f64 {
    (tier2_share * price_ratio + (1.0 - tier2_share)) / price_ratio
}

/// Evaluates one threshold.
pub fn sweep_row(
    scores: &[f64],
    outcomes: &[Outcome],
    threshold: f64,
    price_ratio: f64,
) -> SweepRow {
    let tier2: Vec<bool> = scores.iter().map(|s| *s >= threshold).collect();
    let n = scores.len().max(1) as f64;
    let share = tier2.iter().filter(|t| **t).count() as f64 / n;
    let correct = tier2
        .iter()
        .zip(outcomes)
        .filter(|(t, o)| **t == o.tier2)
        .count() as f64;
    SweepRow {
        threshold,
        tier2_share: share,
        accuracy: correct / n,
        relative_cost: relative_cost(share, price_ratio),
        pgr: pgr_of_decisions(&tier2, outcomes),
    }
}

/// The sweep over `thresholds`.
pub fn sweep(
    scores: &[f64],
    outcomes: &[Outcome],
    thresholds: &[f64],
    price_ratio: f64,
) -> Vec<SweepRow> {
    thresholds
        .iter()
        .map(|t| sweep_row(scores, outcomes, *t, price_ratio))
        .collect()
}

/// The threshold that sends (as nearly as ties allow) `share` of these
/// prompts to tier 2: the score of the ⌈share·n⌉-th highest prompt.
pub fn threshold_for_share(scores: &[f64], share: f64) -> f64 {
    let mut sorted: Vec<f64> = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = (share.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    match k {
        0 => sorted.first().map_or(1.0, |s| next_up(*s)),
        k => sorted[k - 1],
    }
}

/// The candidate threshold (every distinct score, plus one above the
/// maximum) with the highest accuracy against `label_tier`; the lowest such
/// threshold on ties.
pub fn threshold_max_accuracy(scores: &[f64], outcomes: &[Outcome]) -> f64 {
    let mut candidates: Vec<f64> = scores.to_vec();
    candidates.sort_by(|a, b| a.total_cmp(b));
    candidates.dedup();
    if let Some(max) = candidates.last().copied() {
        candidates.push(next_up(max));
    }
    let mut best = (f64::NEG_INFINITY, 1.0);
    for t in candidates {
        let acc = sweep_row(scores, outcomes, t, DEFAULT_PRICE_RATIO).accuracy;
        if acc > best.0 {
            best = (acc, t);
        }
    }
    best.1
}

fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    f64::from_bits(if x >= 0.0 {
        x.to_bits() + 1
    } else {
        x.to_bits() - 1
    })
}

/// The headline numbers for one score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Prompts scored.
    pub n: usize,
    /// ROC AUC against `label_tier`.
    pub auc: Option<f64>,
    /// Area under the PGR curve.
    pub apgr: Option<f64>,
    /// Smallest tier-2 share reaching PGR 0.5.
    pub cpt50: Option<f64>,
    /// Smallest tier-2 share reaching PGR 0.8.
    pub cpt80: Option<f64>,
}

/// AUC, APGR and CPT(50%)/CPT(80%) of `scores`.
pub fn summarise(scores: &[f64], outcomes: &[Outcome]) -> Summary {
    let labels: Vec<bool> = outcomes.iter().map(|o| o.tier2).collect();
    let curve = PgrCurve::new(scores, outcomes);
    Summary {
        n: scores.len(),
        auc: roc_auc(scores, &labels),
        apgr: curve.as_ref().map(PgrCurve::apgr),
        cpt50: curve.as_ref().and_then(|c| c.cpt(0.5)),
        cpt80: curve.as_ref().and_then(|c| c.cpt(0.8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(tier2: bool, small: bool, large: bool) -> Outcome {
        Outcome {
            tier2,
            small_ok: Some(small),
            large_ok: Some(large),
        }
    }

    #[test]
    fn auc_of_perfect_reversed_and_tied_scores() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &labels), Some(0.5));
        // One positive ties one negative: 3 of 4 pairs won, 1 half.
        assert_eq!(roc_auc(&[0.1, 0.5, 0.5, 0.9], &labels), Some(0.875));
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn pgr_curve_apgr_and_cpt() {
        // Two prompts only the large model answers, one both answer, one neither.
        let outcomes = [
            o(true, false, true),
            o(false, true, true),
            o(true, false, true),
            o(false, false, false),
        ];
        // quality small 1/4, large 3/4.
        let perfect = PgrCurve::new(&[0.9, 0.1, 0.8, 0.2], &outcomes).unwrap();
        assert_eq!(perfect.pgr, vec![0.0, 0.5, 1.0, 1.0, 1.0]);
        assert_eq!(perfect.apgr(), (0.25 + 0.75 + 1.0 + 1.0) / 4.0);
        assert_eq!(perfect.cpt(0.5), Some(0.25));
        assert_eq!(perfect.cpt(0.8), Some(0.5));
        assert_eq!(perfect.quality_small, 0.25);
        assert_eq!(perfect.quality_large, 0.75);
        // Worst order: the gains come last.
        let worst = PgrCurve::new(&[0.1, 0.9, 0.2, 0.8], &outcomes).unwrap();
        assert_eq!(worst.pgr, vec![0.0, 0.0, 0.0, 0.5, 1.0]);
        assert_eq!(worst.cpt(0.8), Some(1.0));
    }

    #[test]
    fn random_routing_gives_about_half() {
        let mut rng = crate::head::SplitMix64(9);
        let outcomes: Vec<Outcome> = (0..4000)
            .map(|_| {
                let s = rng.next_f64() < 0.45;
                let l = rng.next_f64() < 0.75;
                o(l && !s, s, l)
            })
            .collect();
        let scores: Vec<f64> = (0..4000).map(|_| rng.next_f64()).collect();
        let apgr = summarise(&scores, &outcomes).apgr.unwrap();
        assert!((apgr - 0.5).abs() < 0.05, "{apgr}");
    }

    #[test]
    fn weak_labels_are_left_out_of_quality() {
        let mut outcomes = vec![o(true, false, true), o(false, true, true)];
        outcomes.push(Outcome {
            tier2: true,
            small_ok: None,
            large_ok: None,
        });
        let curve = PgrCurve::new(&[0.9, 0.1, 0.5], &outcomes).unwrap();
        assert_eq!(curve.len(), 2);
    }

    #[test]
    fn sweep_reports_share_accuracy_cost_and_pgr() {
        let outcomes = [
            o(true, false, true),
            o(false, true, true),
            o(false, true, false),
        ];
        let row = sweep_row(&[0.9, 0.4, 0.2], &outcomes, 0.5, 8.0);
        assert!((row.tier2_share - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(row.accuracy, 1.0);
        assert!((row.relative_cost - (8.0 / 3.0 + 2.0 / 3.0) / 8.0).abs() < 1e-12);
        // small 2/3, large 2/3 → no gap: PGR undefined.
        assert_eq!(row.pgr, None);
        assert_eq!(relative_cost(1.0, 8.0), 1.0);
        assert_eq!(relative_cost(0.0, 8.0), 0.125);
    }

    #[test]
    fn thresholds_for_share_and_accuracy() {
        let scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
        assert_eq!(threshold_for_share(&scores, 0.3), 0.8);
        assert_eq!(threshold_for_share(&scores, 1.0), 0.1);
        assert!(threshold_for_share(&scores, 0.0) > 1.0);
        let outcomes: Vec<Outcome> = scores.iter().map(|s| o(*s > 0.65, true, true)).collect();
        assert_eq!(threshold_max_accuracy(&scores, &outcomes), 0.7);
    }
}
