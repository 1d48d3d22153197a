//! The cost-honest table of the three routing policies — pre-hoc (router
//! score only), verify only (everything to tier 1, the verifier escalates)
//! and combined (the router sends the clearly hard straight to tier 2, the
//! verifier checks the rest) — as data, so `triage-router calibrate` and
//! `triage-replay score` print (and write) the same numbers.

use serde::Serialize;
use triage_complexity::calibration::{roc_auc, Outcome};
use triage_complexity::cascade::{
    combined_curve, policy_outcome, prehoc_curve, thresholds_for_shares, verify_curve, CostCurve,
    PolicyOutcome,
};
use triage_complexity::verifier::Verifier;

/// Router-score thresholds the combined policy is tried with: above every
/// score (verify only), rule-forced only, then ever more pre-hoc routing.
pub const HARD_GRID: [f64; 9] = [1.01, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65];

/// One policy's quality at cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRow {
    /// What the policy is.
    pub policy: String,
    /// The combined policy's router threshold (`None` for the others).
    pub hard_threshold: Option<f64>,
    /// Whether this is the configured combined policy.
    pub configured: bool,
    /// PGR at 30% of the all-tier-2 cost.
    pub pgr_at_30: Option<f64>,
    /// PGR at 50% of the all-tier-2 cost.
    pub pgr_at_50: Option<f64>,
    /// Mean PGR over costs from all tier 1 to all tier 2.
    pub area: Option<f64>,
}

impl PolicyRow {
    fn new(policy: String, hard: Option<f64>, configured: bool, c: Option<CostCurve>) -> Self {
        Self {
            policy,
            hard_threshold: hard,
            configured,
            pgr_at_30: c.as_ref().and_then(|c| c.pgr_at(0.3)),
            pgr_at_50: c.as_ref().and_then(|c| c.pgr_at(0.5)),
            area: c.as_ref().map(CostCurve::area),
        }
    }
}

/// The three policies over labelled rows that have tier 1's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    /// The verifier's feature set.
    pub verifier_features: String,
    /// Rows with an answer and a label.
    pub answered: usize,
    /// ROC AUC of the verify score against "tier 1's answer is poor".
    pub verify_auc_poor: Option<f64>,
    /// ROC AUC of the verify score against `label_tier` 2.
    pub verify_auc_label: Option<f64>,
    /// Tier-2 price over tier-1 price.
    pub price_ratio: f64,
    /// Pre-hoc, verify only, then combined at each of [`HARD_GRID`].
    pub policies: Vec<PolicyRow>,
    /// The configured thresholds.
    pub hard_threshold: f64,
    /// The configured verify threshold.
    pub verify_threshold: f64,
    /// What the configured policy does on these rows.
    pub configured: PolicyOutcome,
    /// What it does when the verifier file's training shares are kept
    /// instead of its score thresholds (files with shares only).
    pub kept_shares: Option<KeptShares>,
}

/// The combined policy keeping the training file's traffic shares on
/// these rows (what `scoring.share.target` and `verify.share.target` do
/// live).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeptShares {
    /// Share of all rows sent straight to tier 2.
    pub direct: f64,
    /// Share of the verified rows escalated.
    pub escalated_of_verified: f64,
    /// The router threshold those shares put on these rows.
    pub hard_threshold: f64,
    /// The verify threshold.
    pub verify_threshold: f64,
    /// What the policy does at them.
    pub outcome: PolicyOutcome,
}

impl KeptShares {
    fn of(
        verifier: &Verifier,
        outcomes: &[Outcome],
        router: &[f64],
        verify: &[f64],
        price_ratio: f64,
    ) -> Option<Self> {
        let shares = verifier.file().shares?;
        let (hard, v) =
            thresholds_for_shares(router, verify, shares.direct, shares.escalated_of_verified)?;
        Some(Self {
            direct: shares.direct,
            escalated_of_verified: shares.escalated_of_verified,
            hard_threshold: hard,
            verify_threshold: v,
            outcome: policy_outcome(router, verify, outcomes, hard, v, price_ratio),
        })
    }
}

impl PolicyReport {
    /// The report: `router` and `verify` are each row's router score and
    /// verify score, parallel to `outcomes`.
    pub fn of(
        verifier: &Verifier,
        outcomes: &[Outcome],
        router: &[f64],
        verify: &[f64],
        price_ratio: f64,
    ) -> Self {
        let poor: Vec<bool> = outcomes.iter().map(|o| o.small_ok == Some(false)).collect();
        let tier2: Vec<bool> = outcomes.iter().map(|o| o.tier2).collect();
        let mut policies = vec![
            PolicyRow::new(
                "pre-hoc (router score)".into(),
                None,
                false,
                prehoc_curve(router, outcomes, price_ratio),
            ),
            PolicyRow::new(
                "verify only".into(),
                None,
                false,
                verify_curve(verify, outcomes, price_ratio),
            ),
        ];
        for hard in HARD_GRID.iter().skip(1) {
            policies.push(PolicyRow::new(
                format!("combined, router >= {hard}"),
                Some(*hard),
                *hard == verifier.hard_threshold(),
                combined_curve(router, verify, outcomes, *hard, price_ratio),
            ));
        }
        Self {
            verifier_features: verifier.file().head.features.to_string(),
            answered: outcomes.len(),
            verify_auc_poor: roc_auc(verify, &poor),
            verify_auc_label: roc_auc(verify, &tier2),
            price_ratio,
            policies,
            hard_threshold: verifier.hard_threshold(),
            verify_threshold: verifier.verify_threshold(),
            configured: policy_outcome(
                router,
                verify,
                outcomes,
                verifier.hard_threshold(),
                verifier.verify_threshold(),
                price_ratio,
            ),
            kept_shares: KeptShares::of(verifier, outcomes, router, verify, price_ratio),
        }
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let mut out = format!(
            "\nverifier ({}): {} answered rows; verify score AUC against poor (small_ok false) {}, against label_tier {}\n",
            self.verifier_features,
            self.answered,
            fmt(self.verify_auc_poor),
            fmt(self.verify_auc_label),
        );
        out += &format!(
            "quality at cost (x = cost relative to all tier 2, every tier-1 attempt 1/{}, escalated ones too; y = PGR)\n",
            self.price_ratio
        );
        out += &format!(
            "{:<34} {:>8}  {:>8}  {:>6}\n",
            "policy", "PGR@30%", "PGR@50%", "area"
        );
        for p in &self.policies {
            let label = format!("{}{}", p.policy, if p.configured { " *" } else { "" });
            out += &format!(
                "{label:<34} {:>8}  {:>8}  {:>6}\n",
                fmt(p.pgr_at_30),
                fmt(p.pgr_at_50),
                fmt(p.area)
            );
        }
        let c = &self.configured;
        out += &format!(
            "configured policy (* above): router >= {} to tier 2 ({:.1}%), verify >= {:.4} escalates ({:.1}%): cost {:.3}, PGR {}\n",
            self.hard_threshold,
            100.0 * c.direct_share,
            self.verify_threshold,
            100.0 * c.escalated_share,
            c.cost,
            fmt(c.pgr)
        );
        if let Some(k) = &self.kept_shares {
            let c = &k.outcome;
            out += &format!(
                "keeping its training shares instead (scoring.share.target {:.4}, verify.share.target {:.4}): router >= {:.4} here, verify >= {:.4}: direct {:.1}%, escalated {:.1}%, cost {:.3}, PGR {}\n",
                k.direct,
                k.escalated_of_verified,
                k.hard_threshold,
                k.verify_threshold,
                100.0 * c.direct_share,
                100.0 * c.escalated_share,
                c.cost,
                fmt(c.pgr)
            );
        }
        out
    }
}

pub(crate) fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_complexity::verifier::{PolicyShares, VerifyConfig};

    fn o(small_ok: bool, large_ok: bool) -> Outcome {
        Outcome {
            tier2: !small_ok && large_ok,
            small_ok: Some(small_ok),
            large_ok: Some(large_ok),
        }
    }

    #[test]
    fn a_perfect_verifier_beats_a_blind_router_and_the_table_says_so() {
        let verifier = Verifier::from_config(&VerifyConfig::default()).unwrap();
        // Half the rows tier 1 gets wrong and tier 2 right.
        let outcomes: Vec<Outcome> = (0..40).map(|i| o(i % 2 == 0, true)).collect();
        let router = vec![0.5; 40];
        let verify: Vec<f64> = (0..40)
            .map(|i| if i % 2 == 0 { 0.1 } else { 0.9 })
            .collect();
        let r = PolicyReport::of(&verifier, &outcomes, &router, &verify, 8.0);
        assert_eq!(r.answered, 40);
        assert_eq!(r.verify_auc_poor, Some(1.0));
        assert_eq!(r.policies.len(), 2 + HARD_GRID.len() - 1);
        let verify_only = &r.policies[1];
        let prehoc = &r.policies[0];
        // Escalating exactly the poor half costs 1/8 + 1/2 and recovers all.
        assert!(verify_only.pgr_at_50.unwrap() > 0.7, "{verify_only:?}");
        assert!(prehoc.pgr_at_50.unwrap() < verify_only.pgr_at_50.unwrap());
        let text = r.render();
        assert!(text.contains("verify only"), "{text}");
        assert!(text.contains("configured policy"), "{text}");
        assert_eq!(
            r.policies.iter().filter(|p| p.configured).count(),
            usize::from(HARD_GRID[1..].contains(&verifier.hard_threshold()))
        );
    }

    #[test]
    fn kept_shares_put_the_thresholds_where_the_shares_fall() {
        let default = Verifier::from_config(&VerifyConfig::default()).unwrap();
        let mut file = default.file().clone();
        file.shares = Some(PolicyShares {
            direct: 0.25,
            escalated_of_verified: 0.5,
        });
        let verifier = Verifier::new(file, "test").unwrap();
        let outcomes: Vec<Outcome> = (0..40).map(|i| o(i % 2 == 0, true)).collect();
        let router: Vec<f64> = (0..40).map(|i| f64::from(i) / 40.0).collect();
        let verify: Vec<f64> = (0..40)
            .map(|i| if i % 2 == 0 { 0.1 } else { 0.9 })
            .collect();
        let r = PolicyReport::of(&verifier, &outcomes, &router, &verify, 8.0);
        let k = r.kept_shares.as_ref().expect("the file has shares");
        // The top 10 of 40 router scores go direct; of the 30 verified,
        // the 15 poor ones (verify 0.9) are the half escalated.
        assert_eq!(k.hard_threshold, 0.75);
        assert_eq!(k.verify_threshold, 0.9);
        assert!((k.outcome.direct_share - 0.25).abs() < 1e-12);
        assert!((k.outcome.escalated_share - 0.375).abs() < 1e-12);
        assert!(r.render().contains("keeping its training shares"));
    }
}
