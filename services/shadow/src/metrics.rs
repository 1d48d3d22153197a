//! The shadow service's Prometheus metrics, names `triage_shadow_*`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use triage_runtime::metrics::Registrar;

/// `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `judged`, `unrated` (a judge gave no rating), `retried`,
    /// `dead_lettered`.
    pub outcome: String,
}

/// `tenant`, `agreement`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgreementLabels {
    /// The tenant ("" for none).
    pub tenant: String,
    /// `both_good`, `both_bad`, `tier1_only_good`, `tier2_only_good`.
    pub agreement: String,
}

/// `source`, `tenant`, `tier`, `good`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelLabels {
    /// Where the label comes from (`judge`).
    pub source: String,
    /// The tenant ("" for none).
    pub tenant: String,
    /// The graded answer's tier.
    pub tier: u8,
    /// `true` or `false`.
    pub good: String,
}

/// `call`, `kind`, `tenant` (tokens).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// `shadow` or `judge`.
    pub call: String,
    /// `prompt` or `completion`.
    pub kind: String,
    /// The tenant ("" for none).
    pub tenant: String,
}

/// Distinct tenants given a label of their own; later ones share
/// [`OTHER_TENANTS`], so a deployment with many tenants (or a client
/// inventing them) cannot grow the series without bound.
pub const MAX_TENANT_LABELS: usize = 100;

/// The `tenant` label of tenants beyond [`MAX_TENANT_LABELS`].
pub const OTHER_TENANTS: &str = "_other";

/// First come, first labelled: the tenants that have a label of their own.
#[derive(Clone, Default)]
struct TenantLabels {
    seen: Arc<Mutex<HashSet<String>>>,
}

impl TenantLabels {
    fn label(&self, tenant: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(tenant) {
            return tenant.to_string();
        }
        if seen.len() < MAX_TENANT_LABELS {
            seen.insert(tenant.to_string());
            return tenant.to_string();
        }
        OTHER_TENANTS.to_string()
    }
}

/// Every metric of the service.
#[derive(Clone)]
pub struct ShadowMetrics {
    /// Jobs by outcome.
    pub jobs: Family<OutcomeLabels, Counter>,
    /// Judged jobs by how the two tiers' grades agree.
    pub agreement: Family<AgreementLabels, Counter>,
    /// Outcome labels produced, by source, tenant, tier and grade.
    pub labels: Family<LabelLabels, Counter>,
    /// Tokens of shadow generations and judge calls (their cost is in
    /// the ledger: statuses `shadow` and `judge`).
    pub tokens: Family<TokenLabels, Counter>,
    /// One judge call, seconds.
    pub judge_seconds: Histogram,
    /// One shadow generation, seconds.
    pub shadow_seconds: Histogram,
    tenants: TenantLabels,
}

impl ShadowMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let latency = || Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let mut r = Registrar::new(registry, "triage_shadow");
        Self {
            jobs: r.add("jobs", "Shadow jobs by outcome", Family::default()),
            agreement: r.add(
                "agreement",
                "Judged jobs by agreement of the tiers' grades (both_good, both_bad, tier1_only_good, tier2_only_good)",
                Family::default(),
            ),
            labels: r.add(
                "labels",
                "Outcome labels produced, by source, tenant, tier and grade",
                Family::default(),
            ),
            tokens: r.add(
                "tokens",
                "Tokens of shadow generations and judge calls, by call, kind and tenant",
                Family::default(),
            ),
            judge_seconds: r.add("judge_seconds", "Latency of one judge call", latency()),
            shadow_seconds: r.add(
                "shadow_generation_seconds",
                "Latency of one shadow generation",
                latency(),
            ),
            tenants: TenantLabels::default(),
        }
    }

    /// Counts a job's outcome.
    pub fn job(&self, outcome: &str) {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Jobs with `outcome` so far.
    pub fn jobs_with(&self, outcome: &str) -> u64 {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .get()
    }

    /// Counts a call's tokens.
    pub fn tokens(&self, call: &str, tenant: &str, usage: &triage_protocol::Usage) {
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            self.tokens
                .get_or_create(&TokenLabels {
                    call: call.into(),
                    kind: kind.into(),
                    tenant: self.tenants.label(tenant),
                })
                .inc_by(u64::from(n));
        }
    }

    /// Counts one judge label.
    pub fn label(&self, tenant: &str, tier: u8, good: bool) {
        self.labels
            .get_or_create(&LabelLabels {
                source: "judge".into(),
                tenant: self.tenants.label(tenant),
                tier,
                good: good.to_string(),
            })
            .inc();
    }

    /// Counts how tier 1's and tier 2's grades of one request agree.
    pub fn agree(&self, tenant: &str, tier1_good: bool, tier2_good: bool) {
        let agreement = match (tier1_good, tier2_good) {
            (true, true) => "both_good",
            (false, false) => "both_bad",
            (true, false) => "tier1_only_good",
            (false, true) => "tier2_only_good",
        };
        self.agreement
            .get_or_create(&AgreementLabels {
                tenant: self.tenants.label(tenant),
                agreement: agreement.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_beyond_the_cap_share_one_label() {
        let t = TenantLabels::default();
        for i in 0..MAX_TENANT_LABELS {
            assert_eq!(t.label(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(t.label("one-too-many"), OTHER_TENANTS);
        assert_eq!(t.label("t0"), "t0", "a labelled tenant keeps its label");
    }
}
