//! The router's configuration: one typed struct, from defaults, an optional
//! TOML file and `TRIAGE_ROUTER_*` environment variables (nested with `__`,
//! e.g. `TRIAGE_ROUTER_SCORING__THRESHOLD=0.5`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use triage_backend::BackendConfig;
use triage_bus::{ConsumerSettings, NatsConfig};
use triage_complexity::scorer::ScorerConfig;
use triage_complexity::verifier::VerifyConfig;
use triage_protocol::ReplyPolicy;
use triage_runtime::telemetry::{LogFormat, TelemetryConfig};

use crate::tenancy::Binding;

/// Environment variable prefix.
pub const ENV_PREFIX: &str = "TRIAGE_ROUTER_";

/// Everything the router reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// NATS connection, subject prefix and stream limits.
    pub nats: NatsConfig,
    /// The durable consumer on `llm.requests`.
    pub consumer: ConsumerConfig,
    /// Micro-batching and concurrency.
    pub batching: BatchingConfig,
    /// Scoring: model, head, truncation, rules, blend, threshold, cache.
    pub scoring: ScorerConfig,
    /// The optional LLM self-rating.
    pub self_rating: SelfRatingConfig,
    /// The verifier of tier 1's answers and the combined policy's
    /// thresholds, used by `score` and `calibrate` (`enabled` is the
    /// worker's switch; the router's offline commands verify any
    /// `small_response` they are given).
    pub verify: VerifyConfig,
    /// Validation, overrides, tenant pins and shadow mode.
    pub policy: PolicyConfig,
    /// Which reply subjects may be answered.
    pub reply: ReplyPolicy,
    /// `GET /metrics` and `GET /health` listen here.
    pub metrics_addr: SocketAddr,
    /// Log prompt text (off by default: logs carry only request ids).
    pub log_prompts: bool,
    /// Follow heads promoted with `triage-router promote` (the KV bucket
    /// `TRIAGE_HEADS`): each is swapped in between batches, no restart.
    pub follow_heads: bool,
    /// `text` or `json` log lines (`--log-format` overrides it).
    pub log_format: LogFormat,
    /// Span export over OTLP/HTTP (off unless an endpoint is set).
    pub telemetry: TelemetryConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            consumer: ConsumerConfig::default(),
            batching: BatchingConfig::default(),
            scoring: ScorerConfig::default(),
            self_rating: SelfRatingConfig::default(),
            verify: VerifyConfig::default(),
            policy: PolicyConfig::default(),
            reply: ReplyPolicy::default(),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9101)),
            log_prompts: false,
            follow_heads: true,
            log_format: LogFormat::Text,
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// The durable pull consumer all replicas share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerConfig {
    /// Durable name (prefixed like the streams); replicas with the same name
    /// share the work.
    pub durable: String,
    /// Ack wait, redeliveries and in-flight limit.
    #[serde(flatten)]
    pub settings: ConsumerSettings,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            durable: "router".into(),
            settings: ConsumerSettings::default(),
        }
    }
}

/// Micro-batching: messages are pulled until `max_batch` or `max_wait`;
/// what needs the transformer joins the model queue, whose passes take
/// everything waiting (up to `max_batch`) when the model is free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most messages per pull and texts per model pass.
    pub max_batch: usize,
    /// Longest wait for a batch to fill after its first message.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Batches in flight at once (scoring of one overlaps publishing of
    /// the previous).
    pub concurrency: usize,
    /// Model workers, each running one pass at a time; the model uses
    /// every core for one pass, so 1 is right on small machines.
    pub model_threads: usize,
    /// Longest a batch may take to score; past it the batch goes to tier 2
    /// with `router_failure`.
    #[serde(with = "humantime_serde")]
    pub score_timeout: Duration,
    /// A text the transformer could not score within this (the tokens
    /// queued ahead and its own, at the measured time per token) is
    /// decided by the first stage instead (reason `model_budget`): routing
    /// delay stays bounded under load. Off (`None`) by default; needs the
    /// first stage.
    #[serde(with = "humantime_serde")]
    pub model_budget: Option<Duration>,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_wait: Duration::from_millis(2),
            concurrency: 4,
            model_threads: 1,
            score_timeout: Duration::from_secs(10),
            model_budget: None,
        }
    }
}

/// The LLM self-rating (step 4 of scoring), off unless `enabled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfRatingConfig {
    /// Ask the router model to rate each prompt.
    pub enabled: bool,
    /// The OpenAI-compatible server (vLLM with Qwen2.5-1.5B-Instruct in
    /// production).
    pub backend: BackendConfig,
    /// `model` field of the request; vLLM checks it against its served name.
    pub model: Option<String>,
    /// Limit for one rating; past it the embedding score stands alone.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Ratings in flight at once.
    pub max_concurrency: usize,
}

impl Default for SelfRatingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            backend: BackendConfig::default(),
            model: None,
            timeout: Duration::from_millis(1500),
            max_concurrency: 32,
        }
    }
}

/// Validation limits, overrides and modes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Prompts above this many bytes get `prompt_too_large`.
    pub max_prompt_bytes: usize,
    /// Honour every request's explicit `tier` (otherwise `tier` is refused
    /// with `invalid_tier` unless one of the two grants below applies).
    pub allow_tier_override: bool,
    /// Tenants that may choose the tier: bound by their subject
    /// `llm.requests.<tenant>`, or named in the body on plain `llm.requests`.
    pub tier_override_tenants: Vec<String>,
    /// Requests on plain `llm.requests` may choose the tier: under
    /// deploy/nats only trusted users (gateway, operator) publish there.
    pub tier_override_untenanted: bool,
    /// Tenants always sent to one tier (1 or 2), whatever the score.
    pub tenant_tiers: BTreeMap<String, u8>,
    /// Shadow mode: decide and record, but send everything to
    /// `shadow_default_tier`.
    pub shadow: bool,
    /// Where shadow mode sends everything.
    pub shadow_default_tier: u8,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            max_prompt_bytes: 256 * 1024,
            allow_tier_override: false,
            tier_override_tenants: Vec::new(),
            tier_override_untenanted: false,
            tenant_tiers: BTreeMap::new(),
            shadow: false,
            shadow_default_tier: 2,
        }
    }
}

impl PolicyConfig {
    /// Whether a request of `tenant`, bound as `binding`, may set `tier`.
    pub fn may_choose_tier(&self, tenant: Option<&str>, binding: Binding) -> bool {
        self.allow_tier_override
            || (binding == Binding::Untenanted && self.tier_override_untenanted)
            || tenant.is_some_and(|t| self.tier_override_tenants.iter().any(|g| g == t))
    }
}

/// A setting the router cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid router configuration: {0}")]
pub struct InvalidConfig(pub String);

impl RouterConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |m: String| Err(InvalidConfig(m));
        if self.batching.max_batch == 0 {
            return bad("batching.max_batch must be at least 1".into());
        }
        if self.batching.concurrency == 0 || self.batching.model_threads == 0 {
            return bad(
                "batching.concurrency and batching.model_threads must be at least 1".into(),
            );
        }
        if self.self_rating.max_concurrency == 0 {
            return bad("self_rating.max_concurrency must be at least 1".into());
        }
        for (tenant, tier) in &self.policy.tenant_tiers {
            if !matches!(tier, 1 | 2) {
                return bad(format!(
                    "policy.tenant_tiers.{tenant} must be 1 or 2, got {tier}"
                ));
            }
        }
        for (name, t) in [
            ("verify.threshold", self.verify.threshold),
            ("verify.hard_threshold", self.verify.hard_threshold),
        ] {
            if let Some(t) = t.filter(|t| !(0.0..=1.01).contains(t)) {
                return bad(format!("{name} must be between 0 and 1.01, got {t}"));
            }
        }
        if !matches!(self.policy.shadow_default_tier, 1 | 2) {
            return bad(format!(
                "policy.shadow_default_tier must be 1 or 2, got {}",
                self.policy.shadow_default_tier
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = RouterConfig::default();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: RouterConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_tenant_tier_is_named() {
        let mut c = RouterConfig::default();
        c.policy.tenant_tiers.insert("acme".into(), 3);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("acme"), "{err}");
    }
}
