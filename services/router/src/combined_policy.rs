//! What the combined policy does with an answered request, as configured:
//! with score thresholds, the router score at or above the verifier file's
//! `hard_threshold` goes straight to tier 2 and a verify score at or above
//! `verify_threshold` escalates; with `scoring.share.target` set, what the
//! router sent to tier 2 is the direct share, and with `verify.share.target`
//! the escalation threshold keeps that share of the answers verified so
//! far, in input order, as a live worker's does.

use triage_complexity::share_threshold::{ShareConfig, TrackedThreshold};
use triage_complexity::verifier::Verifier;
use triage_protocol::{RoutingDecision, Tier};

/// The combined policy of `score`'s `verify_tier`.
pub struct CombinedPolicy {
    hard_threshold: f64,
    router_keeps_share: bool,
    verify: TrackedThreshold,
}

impl CombinedPolicy {
    /// The policy of `verifier`'s file with the configured shares.
    pub fn new(
        verifier: &Verifier,
        scoring_share: &ShareConfig,
        verify_share: &ShareConfig,
    ) -> Self {
        Self {
            hard_threshold: verifier.hard_threshold(),
            router_keeps_share: scoring_share.target.is_some(),
            verify: TrackedThreshold::new(verifier.verify_threshold(), verify_share),
        }
    }

    /// 2 when the answer would not be released (sent straight to tier 2, or
    /// escalated), else 1. Each answer not sent straight to tier 2 counts
    /// in the verify share, so call this once per answer, in order.
    pub fn tier(&self, routed: &RoutingDecision, verify_score: f64) -> u8 {
        let direct = if self.router_keeps_share {
            routed.tier == Tier::Large
        } else {
            routed.score >= self.hard_threshold
        };
        if direct || verify_score >= self.verify.observe(verify_score) {
            2
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_complexity::verifier::VerifyConfig;

    fn decision(score: f64, tier: Tier) -> RoutingDecision {
        let mut d = RoutingDecision::fixed(tier, "test");
        d.score = score;
        d
    }

    #[test]
    fn score_thresholds_come_from_the_file() {
        let v = Verifier::from_config(&VerifyConfig::default()).unwrap();
        let p = CombinedPolicy::new(&v, &ShareConfig::default(), &ShareConfig::default());
        let (hard, verify) = (v.hard_threshold(), v.verify_threshold());
        // The router's own tier does not matter, its score against hard does.
        assert_eq!(p.tier(&decision(hard, Tier::Small), 0.0), 2);
        assert_eq!(
            p.tier(&decision(hard - 0.01, Tier::Large), verify - 0.01),
            1
        );
        assert_eq!(p.tier(&decision(0.0, Tier::Small), verify), 2);
    }

    #[test]
    fn kept_shares_follow_the_router_and_the_answers_so_far() {
        let v = Verifier::from_config(&VerifyConfig::default()).unwrap();
        let share = |t| ShareConfig {
            target: Some(t),
            window: 4,
            min_scores: 2,
        };
        let p = CombinedPolicy::new(&v, &share(0.3), &share(0.5));
        assert_eq!(
            p.tier(&decision(0.1, Tier::Large), 0.0),
            2,
            "the router sent it"
        );
        assert_eq!(p.tier(&decision(0.99, Tier::Small), 0.1), 1, "warming up");
        // Two answers seen: the higher half (0.2 of 0.1, 0.2) escalates.
        assert_eq!(p.tier(&decision(0.99, Tier::Small), 0.2), 2);
        assert_eq!(p.tier(&decision(0.5, Tier::Small), 0.05), 1);
    }
}
