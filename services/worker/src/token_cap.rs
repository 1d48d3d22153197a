//! The operator's ceiling on `max_tokens`: one for the tier (each tier's
//! workers have their own configuration) and one per tenant. A request
//! asking for more, or for no limit, is clamped to the ceiling rather than
//! refused: it is answered, shorter, with `finish_reason: "length"` when the
//! ceiling cut it, and usage counts the tokens actually generated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `max_tokens` ceilings (`[max_tokens]` in TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaxTokensCap {
    /// The most tokens one answer of this tier may generate; unset: no
    /// ceiling beyond the model's context window.
    pub tier: Option<u32>,
    /// Ceilings per tenant (`max_tokens.tenants.acme = 256`); the lower of
    /// this and `tier` applies.
    pub tenants: BTreeMap<String, u32>,
}

impl MaxTokensCap {
    /// The ceiling for `tenant`, if any.
    pub fn ceiling(&self, tenant: Option<&str>) -> Option<u32> {
        let for_tenant = tenant.and_then(|t| self.tenants.get(t).copied());
        match (self.tier, for_tenant) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What `tenant`'s request for `requested` tokens may use: the request
    /// itself under the ceiling, the ceiling above it or without a limit.
    pub fn apply(&self, tenant: Option<&str>, requested: Option<u32>) -> Option<u32> {
        match (self.ceiling(tenant), requested) {
            (Some(cap), Some(r)) => Some(r.min(cap)),
            (cap, r) => cap.or(r),
        }
    }

    /// A ceiling of 0 would refuse everything: name it.
    pub fn check(&self) -> Result<(), String> {
        if self.tier == Some(0) {
            return Err("max_tokens.tier must be at least 1 (unset it for no ceiling)".into());
        }
        match self.tenants.iter().find(|(_, cap)| **cap == 0) {
            Some((tenant, _)) => Err(format!("max_tokens.tenants.{tenant} must be at least 1")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> MaxTokensCap {
        MaxTokensCap {
            tier: Some(512),
            tenants: BTreeMap::from([("free".into(), 64), ("big".into(), 4096)]),
        }
    }

    #[test]
    fn the_lower_ceiling_clamps_and_smaller_requests_pass() {
        let c = caps();
        assert_eq!(c.apply(None, Some(1000)), Some(512), "tier ceiling");
        assert_eq!(
            c.apply(Some("free"), Some(1000)),
            Some(64),
            "tenant below tier"
        );
        assert_eq!(
            c.apply(Some("big"), Some(1000)),
            Some(512),
            "tier below tenant"
        );
        assert_eq!(
            c.apply(Some("free"), Some(10)),
            Some(10),
            "under the ceiling"
        );
        assert_eq!(
            c.apply(Some("free"), None),
            Some(64),
            "no limit asked: the ceiling"
        );
        assert_eq!(c.apply(Some("other"), None), Some(512));
    }

    #[test]
    fn without_ceilings_the_request_decides() {
        let none = MaxTokensCap::default();
        assert_eq!(none.apply(Some("free"), Some(1000)), Some(1000));
        assert_eq!(none.apply(None, None), None);
        let tenant_only = MaxTokensCap {
            tier: None,
            ..caps()
        };
        assert_eq!(tenant_only.apply(Some("free"), Some(100)), Some(64));
        assert_eq!(tenant_only.apply(Some("other"), Some(100)), Some(100));
    }

    #[test]
    fn zero_ceilings_are_named() {
        assert!(caps().check().is_ok());
        let zero = MaxTokensCap {
            tier: Some(0),
            ..caps()
        };
        assert!(zero.check().unwrap_err().contains("max_tokens.tier"));
        let mut tenant = caps();
        tenant.tenants.insert("acme".into(), 0);
        assert!(tenant
            .check()
            .unwrap_err()
            .contains("max_tokens.tenants.acme"));
    }
}
