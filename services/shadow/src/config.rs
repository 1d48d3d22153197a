//! The shadow service's one typed configuration: defaults that work
//! locally, then a TOML file, then `TRIAGE_SHADOW_*` environment variables
//! (nested with `__`, e.g. `TRIAGE_SHADOW_TIER1__URL=http://gpu-a:8000`).
//! `TRIAGE_NATS_URL` sets the default NATS URL, as for every service.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use triage_backend::{ApiKey, BackendConfig};
use triage_bus::{ConsumerSettings, NatsConfig};
use triage_protocol::Tier;
use triage_runtime::telemetry::{LogFormat, TelemetryConfig};

/// Environment variable prefix of the service's settings.
pub const ENV_PREFIX: &str = "TRIAGE_SHADOW_";

/// One OpenAI-compatible server and the model it serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelEndpoint {
    /// Base URL (`http://host:port`, `/v1` accepted).
    pub url: String,
    /// Served model name sent in every request (also booked in the ledger).
    pub model: String,
    /// Bearer token, if the server wants one (masked when printed).
    pub api_key: Option<ApiKey>,
}

impl ModelEndpoint {
    fn new(url: &str, model: &str) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key: None,
        }
    }

    /// The backend client's settings for this endpoint.
    pub fn backend(&self, timeout: Duration) -> BackendConfig {
        BackendConfig {
            api_key: self.api_key.clone(),
            request_timeout: timeout,
            ..BackendConfig::new(self.url.clone())
        }
    }
}

/// The judge: any OpenAI-compatible server; tier 2's by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JudgeConfig {
    /// Base URL; empty: `tier2.url`.
    pub url: String,
    /// Served model name; empty: `tier2.model`.
    pub model: String,
    /// Bearer token (masked); unset with an empty `url`: `tier2.api_key`.
    pub api_key: Option<ApiKey>,
    /// Whose prices the judge's tokens are booked at (1 or 2).
    pub tier: Tier,
    /// Most tokens of the judge's explanation and rating.
    pub max_tokens: u32,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: String::new(),
            api_key: None,
            tier: Tier::Large,
            max_tokens: 512,
        }
    }
}

/// The durable consumer on `llm.shadow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerConfig {
    /// Durable consumer name (prefixed by the namespace).
    pub name: String,
    /// Jobs handled at once by this replica.
    pub max_in_flight: usize,
    /// Redelivery after this long without an ack (a job is three model
    /// calls: keep it above `timeouts.call` x 2).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries before a job that keeps failing is dead-lettered.
    pub max_deliveries: i64,
    /// Wait before a failed job is delivered again.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            name: "shadow".into(),
            max_in_flight: 4,
            ack_wait: Duration::from_secs(660),
            max_deliveries: 3,
            retry_delay: Duration::from_secs(10),
        }
    }
}

impl ConsumerConfig {
    /// JetStream's settings: one delivery more than ours, so the last one
    /// is seen and dead-lettered instead of silently dropped.
    pub fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliveries + 1,
            max_ack_pending: (self.max_in_flight as i64 * 4).max(16),
        }
    }
}

/// What is kept for training a deployment's own router head.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LearningConfig {
    /// Send the conversation and both graded answers with the judge's
    /// grades, for the ledger to keep in `outcome_texts` (until its
    /// `learning.text_retention` purge) so that `triage-router train
    /// --from-db` can fit heads on them. Off: only grades are stored.
    pub store_text: bool,
}

/// Everything `triage-shadow run` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowConfig {
    /// NATS connection, subject prefix and stream limits.
    pub nats: NatsConfig,
    /// The durable consumer on `llm.shadow`.
    pub consumer: ConsumerConfig,
    /// Tier 1's server and model (shadows tier-2 answers).
    pub tier1: ModelEndpoint,
    /// Tier 2's server and model (shadows tier-1 answers).
    pub tier2: ModelEndpoint,
    /// The judge.
    pub judge: JudgeConfig,
    /// Text storage for training.
    pub learning: LearningConfig,
    /// Longest single model call.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// On SIGTERM: how long jobs in hand may take before they are handed back.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Prometheus `/metrics` (and `/health`) address; port 0 picks one.
    pub metrics_addr: SocketAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// Span export over OTLP/HTTP (off unless an endpoint is set).
    pub telemetry: TelemetryConfig,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            nats: NatsConfig {
                name: Some("triage-shadow".into()),
                ..NatsConfig::default()
            },
            consumer: ConsumerConfig::default(),
            tier1: ModelEndpoint::new("http://127.0.0.1:8101", "tier1"),
            tier2: ModelEndpoint::new("http://127.0.0.1:8102", "tier2"),
            judge: JudgeConfig::default(),
            learning: LearningConfig::default(),
            call_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9474)),
            log_format: LogFormat::Text,
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// A configuration that loads but cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid shadow configuration: {0}")]
pub struct InvalidConfig(pub String);

impl ShadowConfig {
    /// Loads from defaults, the optional file and the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, triage_runtime::ConfigError> {
        triage_runtime::load(file, ENV_PREFIX)
    }

    /// The server and model of `tier`.
    pub fn tier(&self, tier: Tier) -> &ModelEndpoint {
        match tier {
            Tier::Small => &self.tier1,
            Tier::Large => &self.tier2,
        }
    }

    /// The judge's endpoint, tier 2's where unset.
    pub fn judge_endpoint(&self) -> ModelEndpoint {
        let j = &self.judge;
        let own_url = !j.url.trim().is_empty();
        ModelEndpoint {
            url: if own_url { &j.url } else { &self.tier2.url }.clone(),
            model: if j.model.trim().is_empty() {
                &self.tier2.model
            } else {
                &j.model
            }
            .clone(),
            api_key: if own_url {
                j.api_key.clone()
            } else {
                j.api_key.clone().or_else(|| self.tier2.api_key.clone())
            },
        }
    }

    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), InvalidConfig> {
        let bad = |m: &str| Err(InvalidConfig(m.to_string()));
        for (key, e) in [("tier1", &self.tier1), ("tier2", &self.tier2)] {
            if e.url.trim().is_empty() || e.model.trim().is_empty() {
                return Err(InvalidConfig(format!(
                    "{key}.url and {key}.model must be set"
                )));
            }
        }
        if self.consumer.max_in_flight == 0 {
            return bad("consumer.max_in_flight must be at least 1");
        }
        if self.consumer.max_deliveries < 1 {
            return bad("consumer.max_deliveries must be at least 1");
        }
        if self.consumer.ack_wait < self.call_timeout * 2 {
            return bad("consumer.ack_wait must be at least call_timeout x 2 (a job makes a shadow call, then the judge calls at once)");
        }
        if self.judge.max_tokens == 0 {
            return bad("judge.max_tokens must be at least 1");
        }
        Ok(())
    }
}

/// Every configuration key, for `--help` (a test checks none is missing).
pub const CONFIG_HELP: &str = "\
CONFIGURATION (TOML key = default; env TRIAGE_SHADOW_<KEY> with `__` for `.`)
  tier1.url = \"http://127.0.0.1:8101\"  tier 1's server (shadows tier-2 answers)
  tier1.model = \"tier1\"          tier 1's served model name (booked in the ledger)
  tier1.api_key                  bearer token (masked)
  tier2.url = \"http://127.0.0.1:8102\"  tier 2's server (shadows tier-1 answers)
  tier2.model = \"tier2\"          tier 2's served model name
  tier2.api_key                  bearer token (masked)
  judge.url = \"\"                 the judge's OpenAI-compatible server; empty: tier2.url
  judge.model = \"\"               the judge's model; empty: tier2.model
  judge.api_key                  bearer token (masked); default tier2.api_key with tier2.url
  judge.tier = 2                 whose prices the judge's tokens are booked at
  judge.max_tokens = 512         most tokens of the judge's explanation and rating
  learning.store_text = false    also send prompt and answer text with the grades (kept by the ledger for train --from-db, purged after its learning.text_retention)
  call_timeout = \"5m\"            longest single model call
  consumer.name = \"shadow\"       durable consumer on llm.shadow
  consumer.max_in_flight = 4     jobs handled at once by this replica
  consumer.ack_wait = \"11m\"      redelivery after this long without ack (>= call_timeout x 2)
  consumer.max_deliveries = 3    deliveries of a failing job before llm.dead
  consumer.retry_delay = \"10s\"   wait before a failed job is delivered again
  shutdown_grace = \"30s\"         SIGTERM: time to finish jobs in hand before they are handed back
  metrics_addr = \"127.0.0.1:9474\"  Prometheus /metrics
  log_format = \"text\"            text or json
  telemetry.otlp_endpoint        OTLP/HTTP receiver base URL; unset: OTEL_EXPORTER_OTLP_ENDPOINT, else none
  telemetry.sample_ratio = 1.0   share of traces started here that are exported (0-1)
  nats.url = \"nats://127.0.0.1:4222\"  (default from TRIAGE_NATS_URL)
  nats.user, nats.password, nats.token, nats.creds_file  credentials (masked)
  nats.inbox_prefix = \"_INBOX\"   this connection's inboxes
  nats.prefix = \"\"               subject/stream prefix of the deployment
  nats.name = \"triage-shadow\"    connection name
  nats.streams.*                 stream limits, as for every service (see triage-worker --help)
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_judge_is_tier_2() {
        let c = ShadowConfig::default();
        c.check().unwrap();
        let j = c.judge_endpoint();
        assert_eq!(
            (j.url.as_str(), j.model.as_str()),
            ("http://127.0.0.1:8102", "tier2")
        );
        let mut c = c;
        c.judge.url = "http://judge:1".into();
        c.judge.model = "judge-70b".into();
        assert_eq!(c.judge_endpoint().model, "judge-70b");
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = ShadowConfig::default();
        c.tier1.model = String::new();
        assert!(c.check().unwrap_err().0.contains("tier1"));
        let mut c = ShadowConfig::default();
        c.consumer.ack_wait = Duration::from_secs(60);
        assert!(c.check().unwrap_err().0.contains("ack_wait"));
    }

    #[test]
    fn help_lists_every_key() {
        for key in triage_runtime::config::keys(&ShadowConfig::default()) {
            let last = key.rsplit('.').next().unwrap();
            let documented = key.starts_with("nats.streams.")
                || CONFIG_HELP.contains(&key)
                || (key.starts_with("nats.") && CONFIG_HELP.contains(last));
            assert!(documented, "{key} is not in CONFIG_HELP");
        }
    }

    #[test]
    fn env_overrides_nested_keys() {
        std::env::set_var("TRIAGE_SHADOW_JUDGE__MODEL", "judge-x");
        let c = ShadowConfig::load(None).unwrap();
        std::env::remove_var("TRIAGE_SHADOW_JUDGE__MODEL");
        assert_eq!(c.judge_endpoint().model, "judge-x");
    }
}
