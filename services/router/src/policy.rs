//! Overrides and shadow mode around the scored decision.

use triage_complexity::Decision;
use triage_protocol::{Request, RoutingDecision, Tier};

use crate::config::PolicyConfig;

/// What to do with a valid request.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The tier is already decided (tenant pin or explicit tier): no scoring.
    Fixed(RoutingDecision),
    /// Score it.
    Score,
}

/// Tenant pins come first (the operator's word), then the request's own
/// `tier` (validated before, so it is 1 or 2 and this tenant may set it).
pub fn plan(request: &Request, policy: &PolicyConfig) -> Plan {
    if let Some(tenant) = &request.tenant {
        if let Some(tier) = policy
            .tenant_tiers
            .get(tenant)
            .and_then(|t| Tier::try_from(*t).ok())
        {
            return Plan::Fixed(RoutingDecision::tenant_pin(tier));
        }
    }
    if let Some(tier) = request.tier.and_then(|t| Tier::try_from(t).ok()) {
        // Validation refused a tier this request may not choose.
        return Plan::Fixed(RoutingDecision::requested(tier));
    }
    Plan::Score
}

/// The routing decision for a scored request.
pub fn scored(decision: Decision) -> RoutingDecision {
    RoutingDecision {
        tier: if decision.tier2 {
            Tier::Large
        } else {
            Tier::Small
        },
        score: decision.score,
        confidence: decision.confidence,
        reasons: decision.reasons,
        shadow: false,
        shadow_tier: None,
        threshold: Some(decision.threshold),
    }
}

/// The decision for a scoring failure: tier 2, pay more rather than fail.
pub fn router_failure(why: &str) -> RoutingDecision {
    let mut d = RoutingDecision::fixed(Tier::Large, "router_failure");
    d.reasons.push(format!("error:{why}"));
    d
}

/// Shadow mode: the decision is kept as `shadow_tier`, the request goes to
/// the default tier.
pub fn apply_shadow(mut decision: RoutingDecision, policy: &PolicyConfig) -> RoutingDecision {
    if !policy.shadow {
        return decision;
    }
    let default = Tier::try_from(policy.shadow_default_tier).unwrap_or(Tier::Large);
    decision.shadow = true;
    decision.shadow_tier = Some(decision.tier);
    decision.tier = default;
    decision.reasons.push(format!("shadow:{default}"));
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PolicyConfig {
        let mut p = PolicyConfig::default();
        p.tenant_tiers.insert("cheap".into(), 1);
        p
    }

    #[test]
    fn tenant_pin_beats_explicit_tier() {
        let mut r = Request::from_prompt("x");
        r.tenant = Some("cheap".into());
        r.tier = Some(2);
        match plan(&r, &policy()) {
            Plan::Fixed(d) => {
                assert_eq!(d.tier, Tier::Small);
                assert_eq!(d.reasons, vec!["tenant_pin:1"]);
                assert_eq!(
                    d.fixed_tier(),
                    Some(Tier::Small),
                    "workers read the pin back"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_tier_is_honoured_when_allowed() {
        let mut r = Request::from_prompt("x");
        r.tier = Some(1);
        assert!(
            matches!(plan(&r, &policy()), Plan::Fixed(d) if d.tier == Tier::Small && d.reasons == ["override:1"])
        );
        r.tier = Some(2);
        assert!(
            matches!(plan(&r, &policy()), Plan::Fixed(d) if d.fixed_tier() == Some(Tier::Large))
        );
        r.tier = Some(1);
        r.tier = None;
        assert_eq!(plan(&r, &policy()), Plan::Score);
        r.tenant = Some("other".into());
        assert_eq!(plan(&r, &policy()), Plan::Score);
    }

    #[test]
    fn shadow_sends_to_default_and_records_decision() {
        let mut p = policy();
        let d = RoutingDecision::fixed(Tier::Small, "x");
        assert_eq!(apply_shadow(d.clone(), &p), d);
        p.shadow = true;
        let s = apply_shadow(d, &p);
        assert_eq!(s.tier, Tier::Large);
        assert_eq!(s.shadow_tier, Some(Tier::Small));
        assert!(s.shadow);
    }

    #[test]
    fn failure_goes_to_tier2_with_reason() {
        let d = router_failure("model missing");
        assert_eq!(d.tier, Tier::Large);
        assert_eq!(d.reasons[0], "router_failure");
    }

    #[test]
    fn scored_decision_maps_tiers() {
        let d = scored(Decision {
            score: 0.7,
            tier2: true,
            confidence: 0.1,
            threshold: 0.65,
            reasons: vec!["embedding=0.7000".into()],
        });
        assert_eq!(d.tier, Tier::Large);
        assert_eq!(d.threshold, Some(0.65));
    }
}
