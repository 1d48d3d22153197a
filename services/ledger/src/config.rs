//! The ledger's configuration: defaults that work on a local machine, then
//! a TOML file, then `TRIAGE_LEDGER_*` environment variables (nested keys
//! with `__`, e.g. `TRIAGE_LEDGER_WRITER__BATCH_SIZE=500`). The shared
//! `TRIAGE_DATABASE_URL` and `TRIAGE_NATS_URL` set the defaults of
//! `database.url` and `nats.url`.

use std::net::SocketAddr;
use std::str::FromStr;

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use triage_bus::NatsConfig;
use triage_protocol::Tier;
use triage_runtime::telemetry::{LogFormat, TelemetryConfig};

use crate::feedback::FeedbackConfig;
use crate::price::{Price, PriceBook, PriceError};
use crate::retention::LearningConfig;
use crate::writer::WriterConfig;

/// The environment prefix of the ledger's settings.
pub const ENV_PREFIX: &str = "TRIAGE_LEDGER_";

/// The local default database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/triage";

/// Where the ledger's data lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database` (password masked when
    /// printed).
    pub url: String,
    /// Pool size. The writer commits one batch at a time; a few spare
    /// connections serve reports and price lookups.
    pub max_connections: u32,
    /// How long a query waits for a connection before failing (and the
    /// writer backing off and retrying).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: std::time::Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: std::env::var("TRIAGE_DATABASE_URL")
                .unwrap_or_else(|_| DEFAULT_DATABASE_URL.into()),
            max_connections: 4,
            acquire_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// The ledger writer service (`triage-ledger run`) and its commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LedgerConfig {
    /// Postgres.
    pub database: DatabaseConfig,
    /// NATS, the subject prefix and stream limits.
    pub nats: NatsConfig,
    /// Consuming, batching and retrying.
    pub writer: WriterConfig,
    /// Clients' ratings on `llm.feedback`.
    pub feedback: FeedbackConfig,
    /// How long prompt, answer and comment text is kept.
    pub learning: LearningConfig,
    /// Prices stored at start when missing (effective-dated; a stored
    /// price is never changed — add one with a later `effective_from`).
    pub prices: Vec<Price>,
    /// Apply pending migrations when `run` starts.
    pub migrate_on_start: bool,
    /// `GET /metrics` and `GET /health`.
    pub metrics_addr: SocketAddr,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Span export over OTLP/HTTP (off unless an endpoint is set).
    pub telemetry: TelemetryConfig,
}

/// The reference deployment's prices: tier 1 (Llama-3.1-8B INT4) $0.00015
/// and tier 2 (Llama-3.1-70B FP8) $0.0012 per 1K tokens, input and output,
/// since the epoch.
pub fn reference_prices() -> Vec<Price> {
    let epoch = Utc.timestamp_opt(0, 0).single().expect("epoch");
    let small = Decimal::from_str("0.00015").expect("decimal");
    let large = Decimal::from_str("0.0012").expect("decimal");
    vec![
        Price {
            id: None,
            tier: Tier::Small,
            model: None,
            input_per_1k: small,
            output_per_1k: small,
            effective_from: epoch,
        },
        Price {
            id: None,
            tier: Tier::Large,
            model: None,
            input_per_1k: large,
            output_per_1k: large,
            effective_from: epoch,
        },
    ]
}

impl Default for LedgerConfig {
    fn default() -> Self {
        let nats = NatsConfig {
            name: Some("triage-ledger".into()),
            ..NatsConfig::default()
        };
        Self {
            database: DatabaseConfig::default(),
            nats,
            writer: WriterConfig::default(),
            feedback: FeedbackConfig::default(),
            learning: LearningConfig::default(),
            prices: reference_prices(),
            migrate_on_start: true,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9470)),
            log_format: LogFormat::Text,
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// A configuration that loads but cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigCheckError {
    /// A configured price is unusable.
    #[error("prices: {0}")]
    Price(#[from] PriceError),
    /// A setting out of range.
    #[error("{0}")]
    Range(String),
}

impl DatabaseConfig {
    /// A pool for these settings (connections are made on first use).
    pub fn store(&self) -> Result<crate::Store, crate::StoreError> {
        crate::Store::connect_lazy(&self.url, self.max_connections, self.acquire_timeout)
    }
}

impl LedgerConfig {
    /// Loads from defaults, the optional file and the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, triage_runtime::ConfigError> {
        triage_runtime::load(file, ENV_PREFIX)
    }

    /// Checks what serde cannot: usable prices, sane batch settings.
    pub fn check(&self) -> Result<(), ConfigCheckError> {
        PriceBook::new(self.prices.clone())?;
        let w = &self.writer;
        if w.batch_size == 0 || w.batch_size > 10_000 {
            return Err(ConfigCheckError::Range(format!(
                "writer.batch_size must be 1..=10000, got {}",
                w.batch_size
            )));
        }
        if (w.max_ack_pending as usize) < w.batch_size && w.max_ack_pending >= 0 {
            return Err(ConfigCheckError::Range(format!(
                "writer.max_ack_pending ({}) must be at least writer.batch_size ({})",
                w.max_ack_pending, w.batch_size
            )));
        }
        if w.ack_wait.as_secs() < 5 {
            return Err(ConfigCheckError::Range(
                "writer.ack_wait must be at least 5s".into(),
            ));
        }
        if self.learning.text_retention.is_zero() {
            return Err(ConfigCheckError::Range(
                "learning.text_retention must be more than 0 (it would delete text as it arrives)"
                    .into(),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigCheckError::Range(
                "database.max_connections must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_deployment_and_valid() {
        let c = LedgerConfig::default();
        c.check().unwrap();
        let book = PriceBook::new(c.prices.clone()).unwrap();
        let at = Utc::now();
        let small = book.lookup(Tier::Small, "any", at).unwrap();
        let large = book.lookup(Tier::Large, "any", at).unwrap();
        assert_eq!(large.input_per_1k, small.input_per_1k * Decimal::from(8));
    }

    #[test]
    fn prices_load_from_toml_exactly_and_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.toml");
        std::fs::write(
            &path,
            r#"
[[prices]]
tier = 1
input_per_1k = 0.00015
output_per_1k = "0.0006"
effective_from = "2025-01-01T00:00:00Z"

[[prices]]
tier = 2
model = "llama-70b"
input_per_1k = "0.0012"
output_per_1k = 0.0024
effective_from = "2025-01-01T00:00:00Z"
"#,
        )
        .unwrap();
        std::env::set_var("TRIAGE_LEDGER_WRITER__BATCH_SIZE", "250");
        let c = LedgerConfig::load(Some(&path)).unwrap();
        std::env::remove_var("TRIAGE_LEDGER_WRITER__BATCH_SIZE");
        assert_eq!(c.writer.batch_size, 250);
        assert_eq!(c.prices.len(), 2);
        assert_eq!(c.prices[0].input_per_1k.to_string(), "0.00015");
        assert_eq!(c.prices[0].output_per_1k.to_string(), "0.0006");
        assert_eq!(c.prices[1].model.as_deref(), Some("llama-70b"));
        assert_eq!(c.prices[1].output_per_1k.to_string(), "0.0024");
        c.check().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = LedgerConfig::default();
        c.writer.batch_size = 0;
        assert!(c.check().unwrap_err().to_string().contains("batch_size"));
        let mut c = LedgerConfig::default();
        c.prices[0].input_per_1k = Decimal::from(-1);
        assert!(c.check().unwrap_err().to_string().contains("negative"));
    }

    #[test]
    fn printing_masks_the_database_password() {
        let mut c = LedgerConfig::default();
        c.database.url = "postgres://ledger:s3cret@db:5432/triage".into();
        let shown = triage_runtime::masked(&c);
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
