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

/// Every configuration key with its default, for `--help`.
pub const CONFIG_HELP: &str = "\
CONFIGURATION (TOML key = default; env TRIAGE_ROUTER_<KEY> with `__` for `.`)
  consumer.durable = \"router\"    durable consumer on llm.requests; replicas with the same name share the work
  consumer.ack_wait = \"30s\"      redelivery after this long without ack
  consumer.max_deliver = 5       deliveries before llm.dead; past half of them a message is not scored (tier 2)
  consumer.max_ack_pending = 1024  unacked messages across all replicas
  batching.max_batch = 16        messages per pull and texts per transformer pass
  batching.max_wait = \"2ms\"      longest wait for a pull batch to fill after its first message
  batching.concurrency = 4       pulled batches in flight at once
  batching.model_threads = 1     model workers, one pass each at a time (a pass uses every core)
  batching.score_timeout = \"10s\" past it the texts go to tier 2 with router_failure
  batching.model_budget = \"30ms\" a text the transformer could not score within this (tokens queued
                                 ahead and its own, at the measured time per token) is decided by
                                 the first stage instead (reason model_budget); \"0s\": off. Needs
                                 scoring.first_stage.enabled (off without it)
  scoring.model_dir = $TRIAGE_CACHE/models/all-MiniLM-L6-v2  model.safetensors, tokenizer.json, config.json
  scoring.head_path = (shipped)  the transformer's head (JSON from `train`)
  scoring.max_tokens = 512       model tokens scored, [CLS]/[SEP] included (3..=512)
  scoring.precision = \"auto\"     auto: int8 where the CPU has AVX-512 VNNI or AVX2, else f32; or
                                 f32 (sentence-transformers' vectors) or int8. train, train-verifier
                                 and calibrate always fit in f32 (see the README)
  scoring.threshold = 0.65       tier 2 at or above this blended score
  scoring.share.target           unset: off. Keep this share (0-1) of recent scored traffic at or above
                                 the threshold instead (it moves with the traffic's scores; see the README)
  scoring.share.window = 2000    recent scores the share is kept over
  scoring.share.min_scores = 200 scores seen (after a start or a head swap) before the share replaces
                                 scoring.threshold
  scoring.weights.embedding = 0.6  blend weight of the embedding score
  scoring.weights.llm = 0.4      blend weight of the self-rating
  scoring.cache_capacity = 10000 scores remembered for repeated texts (0: off)
  scoring.rules.code_fence = true   markdown code fences force tier 2
  scoring.rules.code_syntax = true  code-like syntax forces tier 2
  scoring.rules.math = true      math notation forces tier 2
  scoring.rules.keywords = []    extra rules: [{ name = \"...\", pattern = \"regex\" }]
  scoring.first_stage.enabled = true  settle clear-cut texts with static vectors, no transformer
  scoring.first_stage.lower = 0.35    settled below this first-stage score ...
  scoring.first_stage.upper = 0.65    ... and at or above this
  scoring.first_stage.table_path = <model dir>/static-token-embeddings.bin  the token table
  scoring.first_stage.head_path = (shipped)  the first stage's head
  self_rating.enabled = false    ask an LLM to rate each prompt the first stage leaves open
  self_rating.backend.base_url = \"http://127.0.0.1:8000\"  its OpenAI-compatible server
  self_rating.backend.api_key    bearer token (masked when printed)
  self_rating.backend.connect_timeout = \"2s\"  TCP connect
  self_rating.backend.first_byte_timeout = \"30s\"  request sent -> first byte
  self_rating.backend.idle_timeout = \"15s\"  longest silence
  self_rating.backend.request_timeout = \"5m\"  whole request
  self_rating.backend.health_timeout = \"2s\"  /health and /v1/models
  self_rating.model              model name sent; unset: the server's first
  self_rating.timeout = \"1.5s\"   past it the embedding score stands alone
  self_rating.max_concurrency = 32  ratings in flight
  verify.enabled = false         (the worker's switch; the router's offline commands always verify)
  verify.head_path = (shipped)   verifier file from `train-verifier`
  verify.model_dir = $TRIAGE_CACHE/models/all-MiniLM-L6-v2  its embedding model
  verify.threshold = (file's)    verify score that escalates (score/calibrate's verify_tier)
  verify.hard_threshold = (file's)  router score sent straight to tier 2 by the combined policy
  verify.share.target            unset: off. score's verify_tier escalates this share of the answers
  verify.share.window = 2000     verified so far, in input order, as the worker's verify.share does
  verify.share.min_scores = 200  (`calibrate` shows what keeping the verifier file's shares does)
  policy.max_prompt_bytes = 262144  larger prompts get prompt_too_large
  policy.allow_tier_override = false  honour every request's `tier`
  policy.tier_override_tenants = []  tenants that may choose the tier
  policy.tier_override_untenanted = false  requests on plain llm.requests may choose the tier
  policy.tenant_tiers = {}       tenants pinned to a tier, e.g. { \"batch-jobs\" = 1 }
  policy.shadow = false          decide and record, but send everything to shadow_default_tier
  policy.shadow_default_tier = 2 where shadow mode sends everything
  reply.allowed_prefixes = [\"_INBOX.\", \"_GW.\"]  reply subjects that may be answered
  follow_heads = true            swap in heads promoted to the TRIAGE_HEADS bucket, no restart
  log_prompts = false            log prompt text (otherwise only ids)
  metrics_addr = \"127.0.0.1:9101\"  Prometheus /metrics and /health/ready
  log_format = \"text\"            text or json
  telemetry.otlp_endpoint        OTLP/HTTP receiver base URL; unset: OTEL_EXPORTER_OTLP_ENDPOINT, else none
  telemetry.sample_ratio = 1.0   share of traces started here that are exported (0-1)
  nats.url = \"nats://127.0.0.1:4222\"  (default from TRIAGE_NATS_URL)
  nats.user, nats.password, nats.token, nats.creds_file  credentials (masked)
  nats.inbox_prefix = \"_INBOX\"   this connection's inboxes
  nats.prefix = \"\"               subject/stream prefix of the deployment
  nats.name = \"triage-router\"    connection name
  nats.streams.replicas = 1      stream replicas
  nats.streams.{requests,tiers,usage,dead,results,shadow}.max_age / .max_bytes / .max_msgs  stream limits (-1 = none)
  nats.streams.duplicate_window = \"2m\"  JetStream de-duplication window
  nats.streams.finished_ttl = \"1day\"  how long finished ids are remembered
  nats.streams.finished_max_bytes = 67108864  finished-ids bucket size
  nats.streams.finished_history = 1  values kept per finished-ids key
  nats.streams.progress_max_bytes = 16777216  progress bucket size
";

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
    /// decided by the first stage instead (reason `model_budget`, against
    /// the score that keeps the transformer's tier-2 share of the band):
    /// routing delay stays bounded under load. Zero turns it off; it needs
    /// the first stage and is off without it. See [`Self::budget`].
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
            model_budget: Some(DEFAULT_MODEL_BUDGET),
        }
    }
}

/// p99 routing delay at half load stays under 60 ms on a 2-core machine
/// with it (services/router/README.md, "Speed").
pub const DEFAULT_MODEL_BUDGET: Duration = Duration::from_millis(30);

impl BatchingConfig {
    /// The model budget in force: `None` when unset or zero.
    pub fn budget(&self) -> Option<Duration> {
        self.model_budget.filter(|b| !b.is_zero())
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
        for (key, share) in [
            ("scoring.share", &self.scoring.share),
            ("verify.share", &self.verify.share),
        ] {
            share.validate(key).map_err(InvalidConfig)?;
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
    fn every_key_is_in_the_help() {
        for key in triage_runtime::config::keys(&RouterConfig::default()) {
            let documented = match key.strip_prefix("nats.streams.") {
                Some(rest) if rest.contains('.') => {
                    let (stream, limit) = rest.split_once('.').unwrap();
                    CONFIG_HELP.contains(stream) && CONFIG_HELP.contains(limit)
                }
                _ => {
                    let last = key.rsplit('.').next().unwrap();
                    CONFIG_HELP.contains(&key)
                        || (key.starts_with("nats.") && CONFIG_HELP.contains(last))
                }
            };
            assert!(documented, "{key} is not in CONFIG_HELP");
        }
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = RouterConfig::default();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: RouterConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn the_model_budget_is_on_by_default_and_zero_turns_it_off() {
        let c = RouterConfig::default();
        assert_eq!(c.batching.budget(), Some(DEFAULT_MODEL_BUDGET));
        assert_eq!(DEFAULT_MODEL_BUDGET, Duration::from_millis(30));
        let off: BatchingConfig = serde_json::from_str(r#"{"model_budget": "0s"}"#).unwrap();
        assert_eq!(off.budget(), None);
        let set: BatchingConfig = serde_json::from_str(r#"{"model_budget": "80ms"}"#).unwrap();
        assert_eq!(set.budget(), Some(Duration::from_millis(80)));
    }

    #[test]
    fn the_precision_is_auto_by_default_and_a_wrong_one_is_named() {
        use triage_complexity::PrecisionSetting;
        let c = RouterConfig::default();
        assert_eq!(c.scoring.precision, PrecisionSetting::Auto);
        for (text, want) in [
            ("auto", PrecisionSetting::Auto),
            ("f32", PrecisionSetting::F32),
            ("int8", PrecisionSetting::Int8),
        ] {
            let s: ScorerConfig =
                serde_json::from_str(&format!(r#"{{"precision": "{text}"}}"#)).unwrap();
            assert_eq!(s.precision, want, "{text}");
        }
        let err = serde_json::from_str::<ScorerConfig>(r#"{"precision": "fp16"}"#).unwrap_err();
        assert!(err.to_string().contains("fp16"), "{err}");
        assert!(err.to_string().contains("auto"), "{err}");
    }

    #[test]
    fn bad_tenant_tier_is_named() {
        let mut c = RouterConfig::default();
        c.policy.tenant_tiers.insert("acme".into(), 3);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("acme"), "{err}");
    }
}
