//! The worker's one typed configuration: defaults that work locally, then a
//! TOML file, then `TRIAGE_WORKER_*` environment variables (nested with
//! `__`, e.g. `TRIAGE_WORKER_RETRY__MAX_ATTEMPTS=3`). `TRIAGE_NATS_URL` sets
//! the default NATS URL, as for every Triage service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use triage_backend::{ApiKey, BackendConfig};
use triage_bus::{ConsumerSettings, NatsConfig};
use triage_complexity::verifier::VerifyConfig;
use triage_protocol::{ReplyPolicy, Tier};
use triage_runtime::telemetry::{LogFormat, TelemetryConfig};

use crate::attempt::ATTEMPTS_PER_DELIVERY;
use crate::crash::CrashPoint;
use crate::shadow::ShadowConfig;
use crate::token_cap::MaxTokensCap;

/// Environment variable prefix of the worker's settings.
pub const ENV_PREFIX: &str = "TRIAGE_WORKER_";

/// Everything a tier worker needs. The tier itself comes from `--tier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// NATS connection, subject prefix and stream limits.
    pub nats: NatsConfig,
    /// Which reply subjects may be answered (client-chosen, so untrusted).
    pub reply_policy: ReplyPolicy,
    /// The durable pull consumer shared by all replicas of the tier.
    pub consumer: ConsumerConfig,
    /// Backend base URLs, comma-separated (the compose/env shorthand).
    /// Combined with `backends`.
    pub backend_urls: String,
    /// Backends with per-backend settings (`[[backends]]` in TOML).
    pub backends: Vec<BackendSpec>,
    /// Served model name sent in every request; empty means "ask the backend
    /// (`/v1/models`) and use the first model it serves".
    pub model: String,
    /// Timeouts of backend calls.
    pub timeouts: Timeouts,
    /// Health checks and the circuit breaker.
    pub health: HealthConfig,
    /// Retries of failed backend calls.
    pub retry: RetryConfig,
    /// Chunk coalescing.
    pub coalesce: CoalesceConfig,
    /// Tier 1 only: escalate low-confidence starts to tier 2.
    pub early_exit: EarlyExitConfig,
    /// Tier 1 only: republish to tier 2 when tier 1 is exhausted (otherwise
    /// answer `backend_unavailable`).
    pub escalate_when_unavailable: bool,
    /// Tier 1 only: verify finished `stream: false` answers before they
    /// are released; escalate to tier 2 (`escalated_verify`) when the
    /// verify score is at or above the threshold.
    pub verify: VerifyConfig,
    /// Keep idle backends warm.
    pub prewarm: PrewarmConfig,
    /// Operator ceilings on `max_tokens` (this tier's, and per tenant):
    /// larger requests are clamped.
    pub max_tokens: MaxTokensCap,
    /// A Hugging Face `tokenizer.json` used to count prompt tokens (for the
    /// `max_model_len` check) and to estimate usage when a backend sends
    /// none. Unset: the documented approximation of [`crate::tokens`].
    pub tokenizer: Option<PathBuf>,
    /// On SIGTERM: how long in-flight requests may take to finish before
    /// they are cancelled and handed back (nak) for another replica.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often the consumer's pending/ack-pending counts are polled for
    /// the metrics.
    #[serde(with = "humantime_serde")]
    pub depth_poll_interval: Duration,
    /// Prometheus `/metrics` (and `/health`) address; port 0 picks one.
    pub metrics_addr: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// Span export over OTLP/HTTP (off unless an endpoint is set).
    pub telemetry: TelemetryConfig,
    /// Progress records of generating attempts (booked if the worker dies).
    pub progress: ProgressConfig,
    /// Which answered requests are also answered by the other tier in the
    /// background and graded (`triage-shadow`).
    pub shadow: ShadowConfig,
    /// Tests only: abort the process at this point (`none`).
    pub crash_at: CrashPoint,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            // NatsConfig's default already reads TRIAGE_NATS_URL.
            nats: NatsConfig {
                name: Some("triage-worker".into()),
                ..NatsConfig::default()
            },
            reply_policy: ReplyPolicy::default(),
            consumer: ConsumerConfig::default(),
            backend_urls: "http://127.0.0.1:8000".into(),
            backends: Vec::new(),
            model: String::new(),
            timeouts: Timeouts::default(),
            health: HealthConfig::default(),
            retry: RetryConfig::default(),
            coalesce: CoalesceConfig::default(),
            early_exit: EarlyExitConfig::default(),
            escalate_when_unavailable: true,
            verify: VerifyConfig::default(),
            prewarm: PrewarmConfig::default(),
            max_tokens: MaxTokensCap::default(),
            tokenizer: None,
            shutdown_grace: Duration::from_secs(30),
            depth_poll_interval: Duration::from_secs(5),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9472)),
            log_format: LogFormat::Text,
            telemetry: TelemetryConfig::default(),
            progress: ProgressConfig::default(),
            shadow: ShadowConfig::default(),
            crash_at: CrashPoint::None,
        }
    }
}

/// How often a generating attempt records what it has spent, so the next
/// delivery can book it if this worker dies: at most every `interval`, or
/// every `tokens` new tokens. A crash loses at most the tokens since the
/// last record (an attempt shorter than both writes none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProgressConfig {
    /// Longest time between two records of an attempt.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most new tokens between two records of an attempt.
    pub tokens: u32,
    /// Also record at an attempt's first token, so even a short attempt
    /// killed mid-stream is booked (one more write and a delete per attempt).
    pub first_token: bool,
}

impl Default for ProgressConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            tokens: 256,
            first_token: true,
        }
    }
}

impl ProgressConfig {
    /// The cadence the generate stage follows.
    pub fn cadence(&self) -> crate::progress::Cadence {
        crate::progress::Cadence {
            every: self.interval,
            tokens: self.tokens,
            first_token: self.first_token,
        }
    }
}

/// One backend (a vLLM server, or anything speaking its API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendSpec {
    /// Base URL, e.g. `http://gpu-a:8000`.
    pub url: String,
    /// Label in metrics and logs; default `host:port` of the URL.
    pub name: Option<String>,
    /// Served model name for this backend (overrides the worker's `model`).
    pub model: Option<String>,
    /// The context window in tokens. Unset: read `max_model_len` from the
    /// backend's `/v1/models` (vLLM reports it; llama.cpp reports `n_ctx`).
    pub max_model_len: Option<u32>,
    /// Sent as `Authorization: Bearer …` (masked when printed).
    pub api_key: Option<ApiKey>,
    /// Ask for the usage chunk (`stream_options.include_usage`). Turn off
    /// for servers that reject the option; usage is then counted locally
    /// and flagged `estimated`.
    pub include_usage: bool,
}

impl Default for BackendSpec {
    fn default() -> Self {
        Self {
            url: String::new(),
            name: None,
            model: None,
            max_model_len: None,
            api_key: None,
            include_usage: true,
        }
    }
}

impl BackendSpec {
    /// A backend with defaults at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The metrics/log label.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let url = self.url.trim();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        // Host and port only: credentials in the URL never become a label.
        authority
            .rsplit('@')
            .next()
            .unwrap_or(authority)
            .to_string()
    }
}

/// The durable pull consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerConfig {
    /// Durable name; empty means `worker-tier1` / `worker-tier2`. Replicas of
    /// a tier must share it so JetStream spreads the work.
    pub name: String,
    /// Requests handled at once by this replica (the back-pressure bound:
    /// the rest wait in JetStream).
    pub max_in_flight: usize,
    /// Redelivery after this long without an ack or an in-progress signal
    /// (a crashed worker's requests come back after it).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries after which a request is given up: dead-lettered with
    /// `max_deliveries_exceeded` and the client told.
    pub max_deliveries: u32,
    /// Unacked messages across all replicas (JetStream's `max_ack_pending`).
    pub max_ack_pending: i64,
    /// Long-poll duration of each fetch; also bounds how fast a SIGTERM
    /// stops fetching.
    #[serde(with = "humantime_serde")]
    pub fetch_expires: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            max_in_flight: 32,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            max_ack_pending: 1024,
            fetch_expires: Duration::from_millis(500),
        }
    }
}

impl ConsumerConfig {
    /// The durable name for `tier`.
    pub fn durable_name(&self, tier: Tier) -> String {
        if self.name.is_empty() {
            format!("worker-tier{}", tier.number())
        } else {
            self.name.clone()
        }
    }

    /// JetStream settings. JetStream's own limit is one above ours so the
    /// worker sees the delivery that exceeds it and can dead-letter it and
    /// tell the client, instead of JetStream silently dropping it.
    pub fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            ack_wait: self.ack_wait,
            max_deliver: i64::from(self.max_deliveries) + 1,
            max_ack_pending: self.max_ack_pending,
        }
    }

    /// The longest a message can keep coming back: every delivery JetStream
    /// makes (one above ours) waiting out the ack wait. The finished-ids
    /// record must outlive it.
    pub fn redelivery_window(&self) -> Duration {
        self.ack_wait * (self.max_deliveries + 1)
    }

    /// How often a long generation signals "in progress" (a third of the
    /// ack wait, so two signals may be lost before a redelivery).
    pub fn progress_interval(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(100))
    }
}

/// Timeouts of backend calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// TCP connect.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From sending the request to the first byte (queueing and prefill).
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// Longest silence between two chunks of a stream.
    #[serde(with = "humantime_serde")]
    pub between_chunks: Duration,
    /// `/health`, `/v1/models` and pre-warm calls.
    #[serde(with = "humantime_serde")]
    pub health: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(30),
            between_chunks: Duration::from_secs(15),
            health: Duration::from_secs(2),
        }
    }
}

/// Health checks and the circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// `GET /health` of every backend this often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Consecutive failures (health checks or retryable request failures)
    /// that take a backend out.
    pub failure_threshold: u32,
    /// How long a backend stays out before it is probed again.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        }
    }
}

/// Retries (exponential backoff with jitter, from the `backoff` crate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Backend calls per delivery, the first included.
    pub max_attempts: u32,
    /// Streams restarted (as a new attempt) after chunks reached the client.
    pub max_restarts: u32,
    /// First backoff.
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// Growth factor of the backoff.
    pub multiplier: f64,
    /// Largest single backoff.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Jitter: each backoff is drawn from `[1 - f, 1 + f]` times the interval.
    pub randomization_factor: f64,
    /// Total time spent retrying before giving up.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            max_restarts: 2,
            initial_interval: Duration::from_millis(200),
            multiplier: 2.0,
            max_interval: Duration::from_secs(2),
            randomization_factor: 0.5,
            max_elapsed: Duration::from_secs(20),
        }
    }
}

/// Chunk coalescing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoalesceConfig {
    /// After the first chunk (always sent at once), deltas are gathered and
    /// sent at most this often; `0s` sends every delta as it comes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(20),
        }
    }
}

/// Early-exit fallback (tier 1 only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EarlyExitConfig {
    /// Ask for logprobs and judge the first tokens.
    pub enabled: bool,
    /// Tokens held back and judged before anything reaches the client.
    pub hold_tokens: u32,
    /// Escalate when the held tokens' mean logprob is below this.
    pub min_mean_logprob: f64,
}

impl Default for EarlyExitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            hold_tokens: 8,
            min_mean_logprob: -1.0,
        }
    }
}

/// Pre-warming of idle backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrewarmConfig {
    /// A backend without a request for this long gets a one-token request;
    /// `0s` disables pre-warming.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
}

impl Default for PrewarmConfig {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(300),
        }
    }
}

/// Every configuration key, for `--help` (a test checks none is missing).
/// TOML key → environment variable: upper-case, prefix `TRIAGE_WORKER_`,
/// `.` becomes `__` (e.g. `retry.max_attempts` → `TRIAGE_WORKER_RETRY__MAX_ATTEMPTS`).
pub const CONFIG_HELP: &str = "\
CONFIGURATION (TOML key = default; env TRIAGE_WORKER_<KEY> with `__` for `.`)
  backend_urls = \"http://127.0.0.1:8000\"  Backend base URLs, comma-separated
  [[backends]]                   Backends with per-backend settings (added to backend_urls):
    url                          base URL
    name                         label in metrics/logs (default host:port)
    model                        served model name for this backend
    max_model_len                context window; default: read from /v1/models
    api_key                      bearer token (masked when printed)
    include_usage = true         ask for the usage chunk; off: usage counted locally (estimated)
  model = \"\"                     served model name sent; empty: first model of /v1/models
  tokenizer                      tokenizer.json for counting tokens; default: approximation
  consumer.name = \"\"             durable consumer; default worker-tier1 / worker-tier2
  consumer.max_in_flight = 32    requests handled at once by this replica (back-pressure)
  consumer.ack_wait = \"30s\"      redelivery after this long without ack/progress
  consumer.max_deliveries = 5    deliveries before llm.dead + max_deliveries_exceeded
  consumer.max_ack_pending = 1024  unacked messages across all replicas
  consumer.fetch_expires = \"500ms\"  long-poll of each fetch
  timeouts.connect = \"2s\"        TCP connect to a backend
  timeouts.first_byte = \"30s\"    request sent -> first byte (queueing, prefill)
  timeouts.between_chunks = \"15s\"  longest silence inside a stream
  timeouts.health = \"2s\"         /health, /v1/models and pre-warm calls
  health.interval = \"5s\"         health-check period
  health.failure_threshold = 3   consecutive failures that take a backend out
  health.open_for = \"10s\"        how long it stays out before a re-probe
  retry.max_attempts = 4         backend calls per delivery (1..=16)
  retry.max_restarts = 2         restarts after chunks reached the client
  retry.initial_interval = \"200ms\"  first backoff
  retry.multiplier = 2.0         backoff growth
  retry.max_interval = \"2s\"      largest backoff
  retry.randomization_factor = 0.5  jitter: backoff x [1-f, 1+f]
  retry.max_elapsed = \"20s\"      total retry time
  coalesce.interval = \"20ms\"     join deltas after the first chunk; 0s: one chunk per delta
  early_exit.enabled = false     tier 1: judge the first tokens' logprobs
  early_exit.hold_tokens = 8     tokens held back and judged
  early_exit.min_mean_logprob = -1.0  escalate below this mean logprob
  escalate_when_unavailable = true  tier 1: republish to tier 2 when exhausted
  verify.enabled = false         tier 1: verify finished stream=false answers before release
  verify.threshold = (file's)    escalate at or above this verify score (0-1; shipped 0.825)
  verify.share.target            unset: off. Escalate this share (0-1) of the recent answers verified
                                 instead (the shipped file's training share: 0.117; see the router README)
  verify.share.window = 2000     recent verify scores the share is kept over
  verify.share.min_scores = 200  answers verified (after a start) before the share replaces verify.threshold
  verify.head_path = (shipped)   a verifier file written by `triage-router train-verifier`
  verify.model_dir = $TRIAGE_CACHE/models/all-MiniLM-L6-v2  the embedding model's files
  verify.hard_threshold          (router's offline commands only; ignored here)
  prewarm.idle_after = \"5m\"      one-token request to a backend idle this long; 0s: off
  max_tokens.tier                ceiling on max_tokens for this tier; larger (or unset) requests are clamped
  max_tokens.tenants.<tenant>    ceiling for one tenant (the lower of the two applies)
  shutdown_grace = \"30s\"         SIGTERM: time to finish in-flight work before nak
  depth_poll_interval = \"5s\"     consumer pending/ack-pending polling
  metrics_addr = \"127.0.0.1:9472\"  Prometheus /metrics
  log_format = \"text\"            text or json
  telemetry.otlp_endpoint        OTLP/HTTP receiver base URL (spans to <url>/v1/traces); unset:
                                 OTEL_EXPORTER_OTLP_ENDPOINT, else no export
  telemetry.sample_ratio = 1.0   share of traces started here that are exported (0-1)
  progress.interval = \"500ms\"    record a generating attempt's tokens at least this often (booked if the worker dies)
  progress.tokens = 256          ... or every this many new tokens
  progress.first_token = true    ... and at the first token (no attempt killed mid-stream goes unbooked)
  shadow.fraction = 0.0          share of answered requests also answered by the other tier in the
                                 background and graded by a judge (triage-shadow); same on both tiers
  shadow.tenants.<tenant>        share for one tenant, instead of shadow.fraction
  crash_at = \"none\"             tests only: abort at escalation_recorded | escalation_published | interrupted_booked
  reply_policy.allowed_prefixes = [\"_INBOX.\", \"_GW.\"]  reply subjects that may be answered
  nats.url = \"nats://127.0.0.1:4222\"  (default from TRIAGE_NATS_URL)
  nats.user, nats.password, nats.token, nats.creds_file  credentials (masked)
  nats.inbox_prefix = \"_INBOX\"   this connection's inboxes (deploy/nats: _TRIAGE.worker-tier<N>)
  nats.prefix = \"\"               subject/stream prefix of the deployment
  nats.name = \"triage-worker\"    connection name
  nats.streams.replicas = 1      stream replicas
  nats.streams.{requests,tiers,usage,dead,results,shadow}.max_age / .max_bytes / .max_msgs  stream limits (-1 = none; at a limit the work queues and usage refuse new messages: queue_full)
  nats.streams.duplicate_window = \"2m\"  JetStream de-duplication window
  nats.streams.finished_ttl = \"1day\"  how long finished ids are remembered (>= ack_wait x (max_deliveries + 1))
  nats.streams.finished_max_bytes = 67108864  finished-ids bucket size; full: records refused and counted
  nats.streams.finished_history = 1  values kept per finished-ids key
  nats.streams.progress_max_bytes = 16777216  progress bucket size (TTL finished_ttl); full: oldest records dropped
";

/// A configuration that loads but cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid worker configuration: {0}")]
pub struct InvalidConfig(pub String);

impl WorkerConfig {
    /// Loads from defaults, the optional TOML file and the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, triage_runtime::ConfigError> {
        triage_runtime::load(file, ENV_PREFIX)
    }

    /// Every backend: `backend_urls` entries first, then `backends`.
    pub fn backend_specs(&self) -> Vec<BackendSpec> {
        let mut specs: Vec<BackendSpec> = self
            .backend_urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(BackendSpec::new)
            .collect();
        specs.extend(self.backends.iter().cloned());
        specs
    }

    /// The HTTP client settings of one backend.
    pub fn client_config(&self, spec: &BackendSpec) -> BackendConfig {
        BackendConfig {
            base_url: spec.url.clone(),
            api_key: spec.api_key.clone(),
            connect_timeout: self.timeouts.connect,
            first_byte_timeout: self.timeouts.first_byte,
            idle_timeout: self.timeouts.between_chunks,
            request_timeout: self.timeouts.first_byte + self.timeouts.between_chunks,
            health_timeout: self.timeouts.health,
        }
    }

    /// Checks what would otherwise fail later in confusing ways.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |m: String| Err(InvalidConfig(m));
        let specs = self.backend_specs();
        if specs.is_empty() {
            return bad("no backends: set backend_urls or [[backends]]".into());
        }
        let mut labels = std::collections::HashSet::new();
        for s in &specs {
            if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
                return bad(format!(
                    "backend url {:?} must start with http(s)://",
                    s.url
                ));
            }
            if !labels.insert(s.label()) {
                return bad(format!(
                    "two backends are labelled {:?}; give them distinct `name`s",
                    s.label()
                ));
            }
        }
        if self.consumer.max_in_flight == 0 {
            return bad("consumer.max_in_flight must be at least 1".into());
        }
        if self.consumer.max_deliveries == 0 {
            return bad("consumer.max_deliveries must be at least 1".into());
        }
        if self.consumer.ack_wait < Duration::from_millis(500) {
            return bad("consumer.ack_wait must be at least 500ms".into());
        }
        if self.retry.max_attempts == 0 || self.retry.max_attempts > ATTEMPTS_PER_DELIVERY {
            return bad(format!(
                "retry.max_attempts must be within 1..={ATTEMPTS_PER_DELIVERY} (attempt numbers \
                 reserve that many per delivery)"
            ));
        }
        if self.retry.multiplier < 1.0 {
            return bad("retry.multiplier must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.retry.randomization_factor) {
            return bad("retry.randomization_factor must be within 0..=1".into());
        }
        if self.early_exit.enabled && self.early_exit.hold_tokens == 0 {
            return bad("early_exit.hold_tokens must be at least 1".into());
        }
        if self.early_exit.min_mean_logprob > 0.0 {
            return bad("early_exit.min_mean_logprob is a log-probability: it must be <= 0".into());
        }
        if let Some(t) = self.verify.threshold.filter(|t| !(0.0..=1.01).contains(t)) {
            return bad(format!(
                "verify.threshold is a verify score: it must be between 0 and 1.01, got {t}"
            ));
        }
        self.verify
            .share
            .validate("verify.share")
            .map_err(InvalidConfig)?;
        if self.health.failure_threshold == 0 {
            return bad("health.failure_threshold must be at least 1".into());
        }
        if self.progress.interval.is_zero() || self.progress.tokens == 0 {
            return bad("progress.interval and progress.tokens must be above 0".into());
        }
        if self.health.interval.is_zero() {
            return bad("health.interval must be above 0".into());
        }
        let ttl = self.nats.streams.finished_ttl;
        let window = self.consumer.redelivery_window();
        if ttl < window {
            return bad(format!(
                "nats.streams.finished_ttl ({}) is shorter than the redelivery window \
                 consumer.ack_wait x (consumer.max_deliveries + 1) = {}: a redelivered request \
                 could be answered twice",
                humantime_serde::re::humantime::format_duration(ttl),
                humantime_serde::re::humantime::format_duration(window)
            ));
        }
        if self.nats.streams.finished_history < 1 {
            return bad("nats.streams.finished_history must be at least 1".into());
        }
        self.max_tokens.check().map_err(InvalidConfig)?;
        self.shadow.check().map_err(InvalidConfig)?;
        if let Some(path) = &self.tokenizer {
            if !path.exists() {
                return bad(format!("tokenizer {} does not exist", path.display()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_labels_never_carry_credentials() {
        assert_eq!(
            BackendSpec::new("http://svc:hunter2@vllm-1:8000/v1").label(),
            "vllm-1:8000"
        );
        assert_eq!(
            BackendSpec::new("http://vllm-2:8000").label(),
            "vllm-2:8000"
        );
    }

    #[test]
    fn defaults_are_valid_and_backends_combine() {
        let mut c = WorkerConfig {
            backend_urls: "http://a:8000, http://b:8001/v1 ,".into(),
            ..WorkerConfig::default()
        };
        c.backends.push(BackendSpec {
            name: Some("gpu-c".into()),
            max_model_len: Some(8192),
            ..BackendSpec::new("http://c:8000")
        });
        c.validate().unwrap();
        let labels: Vec<_> = c.backend_specs().iter().map(BackendSpec::label).collect();
        assert_eq!(labels, ["a:8000", "b:8001", "gpu-c"]);
    }

    #[test]
    fn invalid_settings_are_named() {
        let mut c = WorkerConfig {
            backend_urls: "a:8000".into(),
            ..WorkerConfig::default()
        };
        assert!(c.validate().unwrap_err().0.contains("http"));
        c.backend_urls = "http://a:1,http://a:1".into();
        assert!(c.validate().unwrap_err().0.contains("distinct"));
        c.backend_urls = "http://a:1".into();
        c.retry.max_attempts = ATTEMPTS_PER_DELIVERY + 1;
        assert!(c.validate().unwrap_err().0.contains("max_attempts"));
        c.retry.max_attempts = 2;
        c.verify.threshold = Some(1.5);
        assert!(c.validate().unwrap_err().0.contains("verify.threshold"));
        c.verify.threshold = None;
        c.verify.share.target = Some(1.2);
        assert!(c.validate().unwrap_err().0.contains("verify.share.target"));
    }

    #[test]
    fn finished_ids_must_outlive_the_redelivery_window() {
        let mut c = WorkerConfig::default();
        c.consumer.ack_wait = Duration::from_secs(60);
        c.consumer.max_deliveries = 4;
        c.nats.streams.finished_ttl = Duration::from_secs(300);
        assert_eq!(c.consumer.redelivery_window(), Duration::from_secs(300));
        c.validate().expect("exactly the window is enough");
        c.nats.streams.finished_ttl = Duration::from_secs(299);
        let err = c.validate().unwrap_err().0;
        assert!(err.contains("finished_ttl") && err.contains("5m"), "{err}");
        c.nats.streams.finished_ttl = Duration::from_secs(3600);
        c.max_tokens.tier = Some(0);
        assert!(c.validate().unwrap_err().0.contains("max_tokens.tier"));
    }

    #[test]
    fn help_lists_every_key() {
        let mut c = WorkerConfig::default();
        c.backends.push(BackendSpec::new("http://x:1"));
        for key in triage_runtime::config::keys(&c) {
            let documented = if let Some(rest) = key.strip_prefix("nats.streams.") {
                rest.contains('.') || CONFIG_HELP.contains(&key)
            } else if key == "backends" {
                true
            } else {
                let last = key.rsplit('.').next().unwrap();
                CONFIG_HELP.contains(&key)
                    || (key.starts_with("nats.") && CONFIG_HELP.contains(last))
            };
            assert!(documented, "{key} is not in CONFIG_HELP");
        }
        for field in [
            "url",
            "name",
            "model",
            "max_model_len",
            "api_key",
            "include_usage",
        ] {
            assert!(
                CONFIG_HELP.contains(&format!("    {field}")),
                "backends.{field}"
            );
        }
    }

    #[test]
    fn jetstream_limit_is_one_above_ours() {
        let c = ConsumerConfig::default();
        assert_eq!(c.settings().max_deliver, 6);
        assert_eq!(c.durable_name(Tier::Large), "worker-tier2");
        assert_eq!(c.progress_interval(), Duration::from_secs(10));
    }
}
