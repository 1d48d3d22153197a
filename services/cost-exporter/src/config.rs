//! The exporter's configuration: defaults, then a TOML file, then
//! `TRIAGE_COST_EXPORTER_*` environment variables (nested keys with `__`).
//! `TRIAGE_DATABASE_URL` and `TRIAGE_NATS_URL` set the default URLs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use triage_bus::NatsConfig;
use triage_ledger::config::DatabaseConfig;
use triage_ledger::snapshot::SnapshotOptions;
use triage_runtime::telemetry::{LogFormat, TelemetryConfig};

/// The environment prefix of the exporter's settings.
pub const ENV_PREFIX: &str = "TRIAGE_COST_EXPORTER_";

/// A recent window the tier-2 share, savings ratio and latencies are
/// computed over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// The `window` label, e.g. `15m`.
    pub label: String,
    /// Its length.
    #[serde(with = "humantime_serde")]
    pub length: Duration,
}

/// `triage-cost-exporter`'s settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExporterConfig {
    /// The ledger's Postgres (read only).
    pub database: DatabaseConfig,
    /// NATS, for queue depths and consumer lag.
    pub nats: NatsConfig,
    /// Export queue and consumer metrics from NATS.
    pub queues: bool,
    /// How often the ledger and NATS are read. Scrapes are served from the
    /// last reading, so any number of Prometheus servers cost the same.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// A reading taking longer is abandoned (and counted as an error).
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Recent windows.
    pub windows: Vec<WindowConfig>,
    /// Trailing days today's spend is compared with.
    pub trailing_days: u32,
    /// Tenants with the highest spend keep their own label; the rest are
    /// summed as `_other`.
    pub max_tenants: usize,
    /// `GET /metrics` and `GET /health`.
    pub metrics_addr: SocketAddr,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Span export over OTLP/HTTP (off unless an endpoint is set).
    pub telemetry: TelemetryConfig,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        let nats = NatsConfig {
            name: Some("triage-cost-exporter".into()),
            ..NatsConfig::default()
        };
        let defaults = SnapshotOptions::default();
        Self {
            database: DatabaseConfig {
                max_connections: 2,
                ..DatabaseConfig::default()
            },
            nats,
            queues: true,
            refresh_interval: Duration::from_secs(10),
            query_timeout: Duration::from_secs(5),
            windows: defaults
                .windows
                .into_iter()
                .map(|(label, length)| WindowConfig { label, length })
                .collect(),
            trailing_days: defaults.trailing_days,
            max_tenants: defaults.max_tenants,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9471)),
            log_format: LogFormat::Text,
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl ExporterConfig {
    /// Loads from defaults, the optional file and the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, triage_runtime::ConfigError> {
        triage_runtime::load(file, ENV_PREFIX)
    }

    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.windows.is_empty() {
            return Err("windows: at least one window is needed".into());
        }
        for w in &self.windows {
            if w.length < Duration::from_secs(60) || w.length > Duration::from_secs(31 * 86_400) {
                return Err(format!("windows: {} must be between 1m and 31d", w.label));
            }
        }
        if self.trailing_days == 0 || self.trailing_days > 90 {
            return Err("trailing_days must be 1..=90".into());
        }
        if self.refresh_interval < Duration::from_millis(100) {
            return Err("refresh_interval must be at least 100ms".into());
        }
        Ok(())
    }

    /// What the ledger snapshot reads.
    pub fn snapshot_options(&self) -> SnapshotOptions {
        SnapshotOptions {
            windows: self
                .windows
                .iter()
                .map(|w| (w.label.clone(), w.length))
                .collect(),
            trailing_days: self.trailing_days,
            max_tenants: self.max_tenants,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_windows_load_from_toml() {
        ExporterConfig::default().check().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exporter.toml");
        std::fs::write(
            &path,
            "trailing_days = 14\n[[windows]]\nlabel = \"30m\"\nlength = \"30m\"\n",
        )
        .unwrap();
        let c = ExporterConfig::load(Some(&path)).unwrap();
        assert_eq!(c.trailing_days, 14);
        assert_eq!(
            c.snapshot_options().windows,
            vec![("30m".to_string(), Duration::from_secs(1800))]
        );
    }

    #[test]
    fn bad_windows_are_refused() {
        let c = ExporterConfig {
            windows: vec![WindowConfig {
                label: "1s".into(),
                length: Duration::from_secs(1),
            }],
            ..ExporterConfig::default()
        };
        assert!(c.check().unwrap_err().contains("1s"));
    }
}
