//! The router's Prometheus metrics (all prefixed `triage_router_`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;
use triage_protocol::RoutingDecision;
use triage_runtime::metrics::Registrar;

use crate::routing::RouteInfo;

/// Labels of a decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `1` or `2`: where the request was sent.
    pub tier: String,
    /// What decided it: `score`, `first_stage`, `rule:<name>`, `override`,
    /// `tenant_pin`, `router_failure`, `model_budget` (the first stage
    /// decided because the transformer had no time).
    pub reason: String,
}

/// A label with one value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// Every metric the router exports.
pub struct RouterMetrics {
    /// `decisions_total{tier,reason}`.
    pub decisions: Family<DecisionLabels, Counter>,
    /// `errors_total{kind}`: error replies by code.
    pub errors: Family<KindLabel, Counter>,
    /// `score`: the blended score of scored requests.
    pub score: Histogram,
    /// `routing_delay_seconds`: from receiving a message to JetStream
    /// confirming its republish.
    pub routing_delay: Histogram,
    /// `batch_size`: messages per micro-batch.
    pub batch_size: Histogram,
    /// `model_pass_size`: texts per transformer pass (the model queue
    /// takes everything waiting, so this grows with the load).
    pub model_pass_size: Histogram,
    /// `cache_lookups_total{kind=hit|miss}`.
    pub cache: Family<KindLabel, Counter>,
    /// `self_rating_failures_total{kind=timeout|error|unparsable}`.
    pub self_rating_failures: Family<KindLabel, Counter>,
    /// `shadow_disagreements_total`: shadow decisions that differ from the
    /// tier actually used.
    pub shadow_disagreements: Counter,
    /// `dead_letters_total{kind}`.
    pub dead_letters: Family<KindLabel, Counter>,
    /// `publish_failures_total`: republishes not confirmed after retries
    /// (message nak'ed).
    pub publish_failures: Counter,
    /// `head_info{version}`: 1 for the head in force, 0 for earlier ones.
    pub head: Family<VersionLabel, Gauge>,
    /// `head_refusals_total`: promoted heads that did not fit the model.
    pub head_refusals: Counter,
    /// `threshold`: the score threshold of the last scored decision (moves
    /// with traffic when `scoring.share.target` is set).
    pub threshold: Gauge<f64, AtomicU64>,
    /// `band_threshold`: the first-stage score threshold of the last text
    /// decided over `batching.model_budget` (the one keeping the
    /// transformer's tier-2 share of the band once it has seen enough).
    pub band_threshold: Gauge<f64, AtomicU64>,
    current_head: std::sync::Mutex<Option<String>>,
}

/// A head's version as a label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// `sha256:…`.
    pub version: String,
}

impl RouterMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let mut r = Registrar::new(registry, "triage_router");
        Self {
            decisions: r.add(
                "decisions",
                "Routing decisions by tier sent to and deciding reason",
                Family::default(),
            ),
            errors: r.add("errors", "Error replies by code", Family::default()),
            score: r.add(
                "score",
                "Blended complexity score of scored requests",
                Histogram::new(linear_buckets(0.05, 0.05, 20)),
            ),
            routing_delay: r.add(
                "routing_delay_seconds",
                "From receiving a request to JetStream confirming its republish",
                Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ),
            batch_size: r.add(
                "batch_size",
                "Messages per micro-batch",
                Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            ),
            model_pass_size: r.add(
                "model_pass_size",
                "Texts per transformer pass (everything waiting when the model was free)",
                crate::routing::pass_size_histogram(),
            ),
            cache: r.add(
                "cache_lookups",
                "Score cache lookups by result",
                Family::default(),
            ),
            self_rating_failures: r.add(
                "self_rating_failures",
                "LLM self-ratings that failed (the embedding score stood alone)",
                Family::default(),
            ),
            shadow_disagreements: r.add(
                "shadow_disagreements",
                "Shadow-mode decisions that differ from the tier used",
                Counter::default(),
            ),
            dead_letters: r.add(
                "dead_letters",
                "Messages sent to llm.dead by reason",
                Family::default(),
            ),
            publish_failures: r.add(
                "publish_failures",
                "Republishes JetStream did not confirm (the request is redelivered)",
                Counter::default(),
            ),
            head: r.add(
                "head_info",
                "The router head in force (1) and earlier ones (0), by version",
                Family::default(),
            ),
            head_refusals: r.add(
                "head_refusals",
                "Promoted heads refused because they do not fit the model",
                Counter::default(),
            ),
            threshold: r.add(
                "threshold",
                "Score threshold of the last scored decision (a share of recent scores when scoring.share.target is set)",
                Gauge::default(),
            ),
            band_threshold: r.add(
                "band_threshold",
                "First-stage score threshold of the last text decided over batching.model_budget (keeps the transformer's tier-2 share of the first stage's band)",
                Gauge::default(),
            ),
            current_head: std::sync::Mutex::new(None),
        }
    }

    /// Marks `version` as the head in force (and the one before as not).
    pub fn set_head(&self, version: &str) {
        let mut current = self.current_head.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = current.replace(version.to_string()) {
            self.head
                .get_or_create(&VersionLabel { version: old })
                .set(0);
        }
        self.head
            .get_or_create(&VersionLabel {
                version: version.to_string(),
            })
            .set(1);
    }

    /// Records one routed request.
    pub fn record(&self, decision: &RoutingDecision, info: &RouteInfo) {
        let reason = deciding_reason(decision);
        if reason == "score" || reason == "first_stage" {
            self.score.observe(decision.score);
        }
        if let Some(t) = decision.threshold {
            if info.over_budget {
                self.band_threshold.set(t);
            } else {
                self.threshold.set(t);
            }
        }
        self.decisions
            .get_or_create(&DecisionLabels {
                tier: decision.tier.to_string(),
                reason,
            })
            .inc();
        if info.model || info.first_stage || info.cache_hit {
            let kind = if info.cache_hit { "hit" } else { "miss" };
            self.cache.get_or_create(&kind_label(kind)).inc();
        }
        if let Some(kind) = info.rating_failure {
            self.self_rating_failures
                .get_or_create(&kind_label(kind))
                .inc();
        }
        if decision.shadow && decision.shadow_tier.is_some_and(|t| t != decision.tier) {
            self.shadow_disagreements.inc();
        }
    }
}

/// A label value.
pub fn kind_label(kind: &str) -> KindLabel {
    KindLabel {
        kind: kind.to_string(),
    }
}

/// The reason that decided the tier, with bounded cardinality.
pub fn deciding_reason(decision: &RoutingDecision) -> String {
    if decision
        .reasons
        .iter()
        .any(|r| r == crate::routing::MODEL_BUDGET)
    {
        return crate::routing::MODEL_BUDGET.into();
    }
    for r in &decision.reasons {
        if r == "router_failure" {
            return "router_failure".into();
        }
        if r.starts_with("override:") {
            return "override".into();
        }
        if r.starts_with("tenant_pin:") {
            return "tenant_pin".into();
        }
        if r.starts_with("rule:") {
            return r.clone();
        }
        if r.starts_with("first_stage=") {
            return "first_stage".into();
        }
    }
    "score".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use triage_protocol::Tier;

    #[test]
    fn reasons_map_to_bounded_labels() {
        let mut d = RoutingDecision::fixed(Tier::Large, "rule:math");
        assert_eq!(deciding_reason(&d), "rule:math");
        d.reasons = vec![
            "truncated:512".into(),
            "embedding=0.1".into(),
            "blend=0.1".into(),
        ];
        assert_eq!(deciding_reason(&d), "score");
        d.reasons = vec!["override:1".into()];
        assert_eq!(deciding_reason(&d), "override");
        d.reasons = vec!["router_failure".into(), "error:x".into()];
        assert_eq!(deciding_reason(&d), "router_failure");
        d.reasons = vec!["first_stage=0.5".into(), "model_budget".into()];
        assert_eq!(deciding_reason(&d), "model_budget");
    }

    #[test]
    fn records_decisions_and_exports_them() {
        let mut registry = Registry::default();
        let m = RouterMetrics::register(&mut registry);
        let mut d = RoutingDecision::fixed(Tier::Small, "embedding=0.2");
        d.shadow = true;
        d.shadow_tier = Some(Tier::Small);
        d.tier = Tier::Large;
        d.threshold = Some(0.5125);
        m.record(
            &d,
            &RouteInfo {
                model: true,
                rating_failure: Some("timeout"),
                ..RouteInfo::default()
            },
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("triage_router_decisions_total{tier=\"2\",reason=\"score\"} 1"),
            "{text}"
        );
        assert!(text.contains("triage_router_shadow_disagreements_total 1"));
        assert!(text.contains("triage_router_self_rating_failures_total{kind=\"timeout\"} 1"));
        assert!(text.contains("triage_router_cache_lookups_total{kind=\"miss\"} 1"));
        assert!(text.contains("triage_router_threshold 0.5125"), "{text}");
        // A text over the model budget moves the band's gauge, not this one.
        d.threshold = Some(0.47);
        m.record(
            &d,
            &RouteInfo {
                first_stage: true,
                over_budget: true,
                ..RouteInfo::default()
            },
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("triage_router_threshold 0.5125"), "{text}");
        assert!(text.contains("triage_router_band_threshold 0.47"), "{text}");
    }
}
