//! The cost-honest evaluation of routing policies with a verifier: the
//! quality-at-cost curve of
//! - **pre-hoc** routing alone (the router's score sends the top share to
//!   tier 2, the rest to tier 1),
//! - **verify only** (everything to tier 1 first; answers whose verify
//!   score is highest are escalated to tier 2),
//! - **combined** (the router sends prompts at or above a hard threshold
//!   straight to tier 2; the rest go to tier 1 and are verified).
//!
//! x is the cost relative to sending everything to tier 2, where every
//! tier-1 attempt costs `1 / price_ratio` of a tier-2 call — escalated
//! attempts too, which is what makes a cascade dearer than it looks; y is
//! PGR (the share of the quality gap between all-tier-1 and all-tier-2
//! recovered). Every policy starts at all-tier-1 (cost `1 / price_ratio`,
//! PGR 0); a policy whose cheapest point costs more is joined to that
//! start by a straight line, which mixing the two at random achieves. The
//! area is the mean PGR over costs from all-tier-1 to all-tier-2 (random
//! pre-hoc routing: 0.5; random escalation: 0.4375 at a price ratio of 8).
//!
//! Pure: scores and outcomes in, numbers out.

use serde::Serialize;

use crate::calibration::Outcome;
use crate::share_threshold::ShareThreshold;

/// One point of a quality-at-cost curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostPoint {
    /// Cost relative to all tier 2.
    pub cost: f64,
    /// PGR there.
    pub pgr: f64,
}

/// A curve of points in increasing cost, starting at all tier 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostCurve {
    /// The points.
    pub points: Vec<CostPoint>,
    /// The price ratio the costs are computed with.
    pub price_ratio: f64,
}

/// A labelled row with both outcomes: (small_ok, large_ok).
type Known = (bool, bool);

/// The rows with both outcomes (index into the input, outcomes), and the
/// counts of rows all tier 1 and all tier 2 answer well.
type KnownRows = (Vec<(usize, Known)>, f64, f64);

/// The rows with both outcomes (indices into the input) and the quality of
/// all tier 1 and all tier 2 over them, as counts. `None` when there are
/// none or the tiers are equally good (PGR is undefined).
fn known(outcomes: &[Outcome]) -> Option<KnownRows> {
    let rows: Vec<(usize, Known)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| Some((i, (o.small_ok?, o.large_ok?))))
        .collect();
    let small = rows.iter().filter(|(_, k)| k.0).count() as f64;
    let large = rows.iter().filter(|(_, k)| k.1).count() as f64;
    (!rows.is_empty() && small != large).then_some((rows, small, large))
}

fn gain((small_ok, large_ok): Known) -> f64 {
    f64::from(u8::from(large_ok)) - f64::from(u8::from(small_ok))
}

/// Indices of `rows` in decreasing score, ties by input order.
fn by_score_desc(rows: &[(usize, Known)], scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| {
        scores[rows[b].0]
            .total_cmp(&scores[rows[a].0])
            .then(a.cmp(&b))
    });
    order
}

impl CostCurve {
    /// All-tier-1 cost: `1 / price_ratio`.
    pub fn start_cost(&self) -> f64 {
        1.0 / self.price_ratio
    }

    /// PGR at `cost`, interpolated linearly between points; past the last
    /// point, the last point's PGR (spending more is not required). `None`
    /// below all tier 1.
    pub fn pgr_at(&self, cost: f64) -> Option<f64> {
        let first = self.points.first()?;
        if cost < first.cost - 1e-12 {
            return None;
        }
        // The first point at or past `cost` (costs never decrease).
        let k = self.points.partition_point(|p| p.cost < cost);
        if k == 0 {
            return Some(first.pgr);
        }
        let Some(&b) = self.points.get(k) else {
            return self.points.last().map(|p| p.pgr);
        };
        let a = self.points[k - 1];
        if b.cost - a.cost <= 1e-15 {
            return Some(a.pgr.max(b.pgr));
        }
        Some(a.pgr + (b.pgr - a.pgr) * (cost - a.cost) / (b.cost - a.cost))
    }

    /// Mean PGR over costs from all tier 1 to all tier 2 (trapezoids over
    /// the points, the curve held flat past its last point and cut at 1).
    pub fn area(&self) -> f64 {
        let (lo, hi) = (self.start_cost(), 1.0);
        let mut xs: Vec<f64> = self
            .points
            .iter()
            .map(|p| p.cost)
            .filter(|c| *c > lo && *c < hi)
            .collect();
        xs.insert(0, lo);
        xs.push(hi);
        let mut sum = 0.0;
        for w in xs.windows(2) {
            let (a, b) = (
                self.pgr_at(w[0]).unwrap_or(0.0),
                self.pgr_at(w[1]).unwrap_or(0.0),
            );
            sum += (a + b) / 2.0 * (w[1] - w[0]);
        }
        sum / (hi - lo)
    }
}

/// Pre-hoc routing: point `k` sends the `k` highest router scores to tier
/// 2 and the rest to tier 1.
pub fn prehoc_curve(router: &[f64], outcomes: &[Outcome], price_ratio: f64) -> Option<CostCurve> {
    let (rows, small, large) = known(outcomes)?;
    let n = rows.len() as f64;
    let mut good = small;
    let mut points = vec![CostPoint {
        cost: 1.0 / price_ratio,
        pgr: 0.0,
    }];
    for (k, &r) in by_score_desc(&rows, router).iter().enumerate() {
        good += gain(rows[r].1);
        let direct = (k + 1) as f64 / n;
        points.push(CostPoint {
            cost: direct + (1.0 - direct) / price_ratio,
            pgr: (good - small) / (large - small),
        });
    }
    Some(CostCurve {
        points,
        price_ratio,
    })
}

/// The cascade: rows with `direct[i]` go straight to tier 2, the others to
/// tier 1, whose answers are then escalated one by one in decreasing
/// verify score. Point `k` has escalated `k` answers.
pub fn escalation_curve(
    direct: &[bool],
    verify: &[f64],
    outcomes: &[Outcome],
    price_ratio: f64,
) -> Option<CostCurve> {
    let (rows, small, large) = known(outcomes)?;
    let n = rows.len() as f64;
    let (sent, tried): (Vec<_>, Vec<_>) = rows.iter().partition(|(i, _)| direct[*i]);
    let mut good = small + sent.iter().map(|(_, k)| gain(*k)).sum::<f64>();
    let mut cost = (sent.len() as f64 + tried.len() as f64 / price_ratio) / n;
    let mut points = vec![CostPoint {
        cost: 1.0 / price_ratio,
        pgr: 0.0,
    }];
    let pgr = |good: f64| (good - small) / (large - small);
    if !sent.is_empty() {
        points.push(CostPoint {
            cost,
            pgr: pgr(good),
        });
    }
    for &t in &by_score_desc(&tried, verify) {
        good += gain(tried[t].1);
        cost += 1.0 / n;
        points.push(CostPoint {
            cost,
            pgr: pgr(good),
        });
    }
    Some(CostCurve {
        points,
        price_ratio,
    })
}

/// Verify only: everything to tier 1 first.
pub fn verify_curve(verify: &[f64], outcomes: &[Outcome], price_ratio: f64) -> Option<CostCurve> {
    escalation_curve(&vec![false; verify.len()], verify, outcomes, price_ratio)
}

/// Combined: router score at or above `hard_threshold` straight to tier 2,
/// the rest verified.
pub fn combined_curve(
    router: &[f64],
    verify: &[f64],
    outcomes: &[Outcome],
    hard_threshold: f64,
    price_ratio: f64,
) -> Option<CostCurve> {
    let direct: Vec<bool> = router.iter().map(|r| *r >= hard_threshold).collect();
    escalation_curve(&direct, verify, outcomes, price_ratio)
}

/// What one setting of the combined policy does on labelled rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PolicyOutcome {
    /// Share sent straight to tier 2 by the router.
    pub direct_share: f64,
    /// Share answered on tier 1 and then escalated by the verifier.
    pub escalated_share: f64,
    /// Cost relative to all tier 2.
    pub cost: f64,
    /// PGR (`None` when undefined, see [`prehoc_curve`]).
    pub pgr: Option<f64>,
}

/// The combined policy at fixed thresholds: direct when `router >=
/// hard_threshold`, else escalate when `verify >= verify_threshold`.
/// Shares and cost count every row; PGR the rows with both outcomes.
pub fn policy_outcome(
    router: &[f64],
    verify: &[f64],
    outcomes: &[Outcome],
    hard_threshold: f64,
    verify_threshold: f64,
    price_ratio: f64,
) -> PolicyOutcome {
    let n = router.len().max(1) as f64;
    let direct: Vec<bool> = router.iter().map(|r| *r >= hard_threshold).collect();
    let escalated: Vec<bool> = direct
        .iter()
        .zip(verify)
        .map(|(d, v)| !d && *v >= verify_threshold)
        .collect();
    let direct_share = direct.iter().filter(|d| **d).count() as f64 / n;
    let escalated_share = escalated.iter().filter(|e| **e).count() as f64 / n;
    let pgr = known(outcomes).map(|(rows, small, large)| {
        let good = small
            + rows
                .iter()
                .filter(|(i, _)| direct[*i] || escalated[*i])
                .map(|(_, k)| gain(*k))
                .sum::<f64>();
        (good - small) / (large - small)
    });
    PolicyOutcome {
        direct_share,
        escalated_share,
        cost: direct_share + (1.0 - direct_share) / price_ratio + escalated_share,
        pgr,
    }
}

/// The verify threshold at which the combined policy with `hard_threshold`
/// spends at most `target_cost` (relative to all tier 2) on these rows: the
/// score of the last answer the budget can escalate. `None` when routing
/// and the tier-1 attempts alone already cost more.
pub fn verify_threshold_for_cost(
    router: &[f64],
    verify: &[f64],
    hard_threshold: f64,
    target_cost: f64,
    price_ratio: f64,
) -> Option<f64> {
    let n = router.len().max(1) as f64;
    let mut tried: Vec<f64> = router
        .iter()
        .zip(verify)
        .filter(|(r, _)| **r < hard_threshold)
        .map(|(_, v)| *v)
        .collect();
    let direct = 1.0 - tried.len() as f64 / n;
    let budget = target_cost - direct - (1.0 - direct) / price_ratio;
    if budget < -1e-12 {
        return None;
    }
    tried.sort_by(|a, b| b.total_cmp(a));
    let k = ((budget * n + 1e-9).floor() as usize).min(tried.len());
    Some(match k {
        0 => f64::INFINITY,
        k => tried[k - 1],
    })
}

/// The combined policy's thresholds that keep a pair of traffic shares on
/// these rows: the router threshold sending `direct` of all rows straight
/// to tier 2, and the verify threshold escalating `escalated_of_verified`
/// of the rest — what routers and workers keeping those shares
/// ([`crate::share_threshold`]) settle at once they have seen this
/// traffic. `None` on no rows.
pub fn thresholds_for_shares(
    router: &[f64],
    verify: &[f64],
    direct: f64,
    escalated_of_verified: f64,
) -> Option<(f64, f64)> {
    let hard = share_of(router.iter().copied(), direct)?;
    let rest = router
        .iter()
        .zip(verify)
        .filter(|(r, _)| **r < hard)
        .map(|(_, v)| *v);
    // Everything direct: nothing is verified, nothing escalates.
    let verify_t = share_of(rest, escalated_of_verified).unwrap_or(f64::INFINITY);
    Some((hard, verify_t))
}

/// The threshold keeping `share` of `scores` at or above it.
fn share_of(scores: impl Iterator<Item = f64>, share: f64) -> Option<f64> {
    let scores: Vec<f64> = scores.collect();
    let mut window = ShareThreshold::new(share, scores.len(), 1);
    scores.into_iter().for_each(|s| window.observe(s));
    window.threshold()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(small_ok: bool, large_ok: bool) -> Outcome {
        Outcome {
            tier2: large_ok && !small_ok,
            small_ok: Some(small_ok),
            large_ok: Some(large_ok),
        }
    }

    /// Four prompts: two the large model rescues, one both answer, one
    /// neither. quality small 1/4, large 3/4: gap of 2 prompts.
    fn outcomes() -> Vec<Outcome> {
        vec![
            o(false, true),
            o(true, true),
            o(false, true),
            o(false, false),
        ]
    }

    #[test]
    fn prehoc_costs_tier1_only_for_what_stays() {
        let c = prehoc_curve(&[0.9, 0.1, 0.8, 0.5], &outcomes(), 4.0).unwrap();
        let costs: Vec<f64> = c.points.iter().map(|p| p.cost).collect();
        assert_eq!(costs, vec![0.25, 0.4375, 0.625, 0.8125, 1.0]);
        let pgrs: Vec<f64> = c.points.iter().map(|p| p.pgr).collect();
        assert_eq!(pgrs, vec![0.0, 0.5, 1.0, 1.0, 1.0]);
        assert_eq!(c.pgr_at(0.53125), Some(0.75));
        assert_eq!(c.pgr_at(0.1), None);
        // Trapezoids over [0.25, 1]: 0.5·0.25·0.1875 + 0.75·0.1875 + 1·0.375.
        let want = (0.25 * 0.1875 + 0.75 * 0.1875 + 0.375) / 0.75;
        assert!((c.area() - want).abs() < 1e-12, "{}", c.area());
    }

    #[test]
    fn escalation_pays_for_the_tier1_attempt_too() {
        let c = verify_curve(&[0.9, 0.1, 0.8, 0.5], &outcomes(), 4.0).unwrap();
        let costs: Vec<f64> = c.points.iter().map(|p| p.cost).collect();
        // Everything tried on tier 1 (0.25), then +0.25 per escalation.
        assert_eq!(costs, vec![0.25, 0.5, 0.75, 1.0, 1.25]);
        let pgrs: Vec<f64> = c.points.iter().map(|p| p.pgr).collect();
        assert_eq!(pgrs, vec![0.0, 0.5, 1.0, 1.0, 1.0]);
        assert_eq!(c.pgr_at(0.5), Some(0.5));
        assert_eq!(c.pgr_at(2.0), Some(1.0));
    }

    #[test]
    fn combined_starts_from_the_routed_share() {
        // Row 0 goes direct (router 0.9 ≥ 0.7); the verifier then picks row 2.
        let router = [0.9, 0.1, 0.2, 0.3];
        let verify = [0.0, 0.1, 0.9, 0.5];
        let c = combined_curve(&router, &verify, &outcomes(), 0.7, 4.0).unwrap();
        assert_eq!(
            c.points[0],
            CostPoint {
                cost: 0.25,
                pgr: 0.0
            }
        );
        assert_eq!(
            c.points[1],
            CostPoint {
                cost: 0.25 + 0.1875,
                pgr: 0.5
            }
        );
        assert_eq!(
            c.points[2],
            CostPoint {
                cost: 0.6875,
                pgr: 1.0
            }
        );
        let p = policy_outcome(&router, &verify, &outcomes(), 0.7, 0.6, 4.0);
        assert_eq!(p.direct_share, 0.25);
        assert_eq!(p.escalated_share, 0.25);
        assert_eq!(p.cost, 0.6875);
        assert_eq!(p.pgr, Some(1.0));
    }

    #[test]
    fn the_threshold_for_a_cost_spends_the_budget_left_after_tier1() {
        let router = [0.9, 0.1, 0.2, 0.3];
        let verify = [0.0, 0.1, 0.9, 0.5];
        // Direct 0.25 + tier 1 0.75/4 = 0.4375: 0.25 more buys one escalation.
        let t = verify_threshold_for_cost(&router, &verify, 0.7, 0.6875, 4.0).unwrap();
        assert_eq!(t, 0.9);
        let p = policy_outcome(&router, &verify, &outcomes(), 0.7, t, 4.0);
        assert_eq!(p.cost, 0.6875);
        // Not even one escalation fits, or not even the routing.
        assert_eq!(
            verify_threshold_for_cost(&router, &verify, 0.7, 0.5, 4.0),
            Some(f64::INFINITY)
        );
        assert_eq!(
            verify_threshold_for_cost(&router, &verify, 0.7, 0.4, 4.0),
            None
        );
        // A budget beyond every answer escalates them all.
        assert_eq!(
            verify_threshold_for_cost(&router, &verify, 2.0, 9.0, 4.0),
            Some(0.0)
        );
    }

    #[test]
    fn random_policies_have_the_documented_areas() {
        // With many rows and seeded random scores the curves approach the
        // analytic lines: pre-hoc 0.5, escalation 0.4375 at ratio 8.
        let n = 40_000;
        let outcomes: Vec<Outcome> = (0..n).map(|i| o(i % 3 == 0, i % 3 != 2)).collect();
        let mut rng = crate::head::SplitMix64(7);
        let scores: Vec<f64> = (0..n).map(|_| rng.next_f64()).collect();
        let pre = prehoc_curve(&scores, &outcomes, 8.0).unwrap();
        let ver = verify_curve(&scores, &outcomes, 8.0).unwrap();
        assert!((pre.area() - 0.5).abs() < 0.01, "{}", pre.area());
        assert!((ver.area() - 0.4375).abs() < 0.01, "{}", ver.area());
        assert!((pre.pgr_at(0.5).unwrap() - 0.375 / 0.875).abs() < 0.02);
        assert!((ver.pgr_at(0.5).unwrap() - 0.375).abs() < 0.02);
    }

    #[test]
    fn undefined_without_both_outcomes_or_a_gap() {
        let none = Outcome {
            tier2: false,
            small_ok: None,
            large_ok: Some(true),
        };
        assert!(prehoc_curve(&[0.5], &[none], 8.0).is_none());
        assert!(verify_curve(&[0.5], &[o(true, true)], 8.0).is_none());
        assert_eq!(
            policy_outcome(&[0.5], &[0.5], &[none], 0.9, 0.9, 8.0).pgr,
            None
        );
    }

    #[test]
    fn shares_become_thresholds_on_the_rows_at_hand() {
        let router = [0.9, 0.1, 0.8, 0.5, 0.3, 0.2];
        let verify = [0.0, 0.9, 0.0, 0.4, 0.7, 0.1];
        // A third direct (0.9, 0.8), then half of the other four (0.9, 0.7).
        let (hard, v) = thresholds_for_shares(&router, &verify, 1.0 / 3.0, 0.5).unwrap();
        assert_eq!((hard, v), (0.8, 0.7));
        let p = policy_outcome(&router, &verify, &[o(true, true); 6], hard, v, 8.0);
        assert!((p.direct_share - 1.0 / 3.0).abs() < 1e-12);
        assert!((p.escalated_share - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(thresholds_for_shares(&[], &[], 0.3, 0.1), None);
    }
}
