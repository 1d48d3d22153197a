//! The gateway's configuration: one typed struct, from defaults, an optional
//! TOML file and `TRIAGE_GATEWAY_*` environment variables (nested with `__`,
//! e.g. `TRIAGE_GATEWAY_NATS__URL`, `TRIAGE_GATEWAY_ALIASES__GPT-4O-MINI`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use triage_bus::NatsConfig;
use triage_protocol::GATEWAY_REPLY_PREFIX;
use triage_runtime::telemetry::{LogFormat, TelemetryConfig};

use crate::models::Catalogue;

/// Environment variable prefix.
pub const ENV_PREFIX: &str = "TRIAGE_GATEWAY_";

/// Every key with its default and meaning; `triage-gateway --help` prints
/// it and a test checks that no key is missing.
pub const CONFIG_HELP: &str = "\
Configuration keys (TOML file or TRIAGE_GATEWAY_<KEY>, nested with __):
  listen = \"127.0.0.1:8080\"      the OpenAI-compatible API (/v1/..., /health)
  metrics_addr = \"127.0.0.1:9102\"  Prometheus /metrics (and a liveness /health)
  request_timeout = \"5m\"         a request unanswered by then gets 504; also sent as
                                 the request's deadline, so work not started by then is dropped
  max_body_bytes = 1048576       larger request bodies get 413
  health_timeout = \"2s\"          limit of each NATS look-up of GET /health
  instance_id = \"\"               this replica's token in reply subjects (empty: random at start)
  reply_prefix = \"_GW\"           reply subjects are <reply_prefix>.<instance_id>.<n>; the
                                 router's and workers' reply policy must allow it (_GW. is allowed by default)
  nats_chat = true               answer core NATS requests on llm.chat (one whole answer each)
  cost_usd = true                answers carry usage.cost_usd at the ledger's prices (read from database.url;
                                 none when it cannot be read)
  prices_refresh = \"60s\"        how long the prices read are reused
  auth.keys = false              require an API key (Authorization: Bearer trk_...) on /v1/*; off: every
                                 request is accepted without a tenant (local use; printed at start)
  auth.cache_ttl = \"30s\"        a verified key is trusted this long before its row is read again
                                 (also how soon a revocation takes effect)
  auth.spend_cache_ttl = \"30s\"  how long a tenant's spend today is reused for budget checks
  database.url = \"postgres://postgres@127.0.0.1:5432/triage\"  the keys and the ledger's prices and rollups
                                 (TRIAGE_DATABASE_URL sets the default; used with auth.keys or cost_usd)
  database.max_connections = 4   its pool size
  database.acquire_timeout = \"5s\"  a query's wait for a connection
  aliases.<name> = \"triage-auto\"  extra model names for triage-auto, triage-tier1 or triage-tier2
  log_format = \"text\"            text or json log lines
  telemetry.otlp_endpoint        OTLP/HTTP receiver base URL (spans to <url>/v1/traces); unset:
                                 OTEL_EXPORTER_OTLP_ENDPOINT, else no export
  telemetry.sample_ratio = 1.0   share of traces started here that are exported (0-1)
  nats.url = \"nats://127.0.0.1:4222\"  NATS server(s), comma-separated (TRIAGE_NATS_URL sets the default)
  nats.user, nats.password, nats.token, nats.creds_file  NATS credentials (masked when printed)
  nats.inbox_prefix = \"_INBOX\"   this connection's inboxes (deploy/nats: _TRIAGE.gateway)
  nats.prefix = \"\"               subject/stream prefix of the deployment
  nats.name = \"triage-gateway\"   connection name in NATS monitoring
  nats.streams.*                 stream limits: unused here (the gateway creates no streams)
";

/// Everything the gateway reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The API listens here.
    pub listen: SocketAddr,
    /// `GET /metrics` listens here, apart from the API: metrics are for
    /// operators, not for API clients.
    pub metrics_addr: SocketAddr,
    /// Longest wait for a whole answer (and the request's deadline).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Request bodies above this get 413.
    pub max_body_bytes: usize,
    /// Limit of each NATS look-up made by `GET /health`.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// This replica's token in its reply subjects; empty means a random one
    /// chosen at start.
    pub instance_id: String,
    /// The first token of the reply subjects.
    pub reply_prefix: String,
    /// Whether to answer core NATS requests on `llm.chat`.
    pub nats_chat: bool,
    /// Whether answers carry `usage.cost_usd` (prices from the database).
    pub cost_usd: bool,
    /// How long the prices read are reused.
    #[serde(with = "humantime_serde")]
    pub prices_refresh: Duration,
    /// API keys.
    pub auth: AuthConfig,
    /// Postgres: the keys and the ledger's rollups (with `auth.keys`).
    pub database: triage_ledger::config::DatabaseConfig,
    /// Extra model names, each for one of the three Triage models.
    pub aliases: BTreeMap<String, String>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Span export over OTLP/HTTP (off unless an endpoint is set).
    pub telemetry: TelemetryConfig,
    /// NATS connection and subject prefix.
    pub nats: NatsConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let nats = NatsConfig {
            name: Some("triage-gateway".into()),
            ..NatsConfig::default()
        };
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9102)),
            request_timeout: Duration::from_secs(300),
            max_body_bytes: 1 << 20,
            health_timeout: Duration::from_secs(2),
            instance_id: String::new(),
            reply_prefix: GATEWAY_REPLY_PREFIX.into(),
            nats_chat: true,
            cost_usd: true,
            prices_refresh: Duration::from_secs(60),
            auth: AuthConfig::default(),
            database: triage_ledger::config::DatabaseConfig::default(),
            aliases: BTreeMap::new(),
            log_format: LogFormat::Text,
            telemetry: TelemetryConfig::default(),
            nats,
        }
    }
}

/// API keys: who may call, as which tenant, how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a key on `/v1/*`.
    pub keys: bool,
    /// How long a verified key is trusted before its row is read again.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long a tenant's spend today is reused for budget checks.
    #[serde(with = "humantime_serde")]
    pub spend_cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: false,
            cache_ttl: Duration::from_secs(30),
            spend_cache_ttl: Duration::from_secs(30),
        }
    }
}

/// A setting the gateway cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gateway configuration: {0}")]
pub struct InvalidConfig(pub String);

/// Whether `s` is one plain NATS subject token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl GatewayConfig {
    /// Loads from defaults, the optional file and the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, triage_runtime::ConfigError> {
        triage_runtime::load(file, ENV_PREFIX)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |m: String| Err(InvalidConfig(m));
        if self.request_timeout < Duration::from_millis(100) {
            return bad("request_timeout must be at least 100ms".into());
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes must be at least 1024".into());
        }
        if !self.reply_prefix.split('.').all(is_token) {
            return bad(format!(
                "reply_prefix {:?} must be dot-separated tokens of letters, digits, '-' and '_'",
                self.reply_prefix
            ));
        }
        if !self.instance_id.is_empty() && !is_token(&self.instance_id) {
            return bad(format!(
                "instance_id {:?} must be one token of letters, digits, '-' and '_'",
                self.instance_id
            ));
        }
        Catalogue::new(&self.aliases).map_err(|e| InvalidConfig(e.to_string()))?;
        self.nats
            .namespace()
            .map_err(|e| InvalidConfig(e.to_string()))?;
        Ok(())
    }

    /// `<reply_prefix>.<instance_id>`, with a random instance id when none
    /// is configured: replicas must never share reply subjects.
    pub fn instance_reply_prefix(&self) -> String {
        let id = if self.instance_id.is_empty() {
            // A UUIDv7's last 12 hex digits are random (its first are the time).
            uuid::Uuid::now_v7().simple().to_string()[20..].to_string()
        } else {
            self.instance_id.clone()
        };
        format!("{}.{id}", self.reply_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_key() {
        for key in triage_runtime::config::keys(&GatewayConfig::default()) {
            let documented = key.starts_with("nats.streams.")
                || CONFIG_HELP.contains(&format!("  {key} "))
                || CONFIG_HELP.contains(&format!("  {key}."))
                || CONFIG_HELP.contains(&format!("{key},"))
                || CONFIG_HELP.contains(&format!(" {key}  "));
            assert!(documented, "{key} is not in CONFIG_HELP");
        }
    }

    #[test]
    fn defaults_are_valid_and_listen_on_8080() {
        let c = GatewayConfig::default();
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert!(c.instance_reply_prefix().starts_with("_GW."));
        assert_ne!(
            c.instance_reply_prefix(),
            c.instance_reply_prefix(),
            "random per start"
        );
    }

    #[test]
    fn bad_settings_name_the_key() {
        let mut c = GatewayConfig {
            reply_prefix: "_GW.*".into(),
            ..GatewayConfig::default()
        };
        assert!(c.validate().unwrap_err().0.contains("reply_prefix"));
        c.reply_prefix = "_GW".into();
        c.instance_id = "a.b".into();
        assert!(c.validate().unwrap_err().0.contains("instance_id"));
        c.instance_id = "gw-1".into();
        assert_eq!(c.instance_reply_prefix(), "_GW.gw-1");
        c.aliases.insert("gpt-4o".into(), "gpt-5".into());
        assert!(c.validate().unwrap_err().0.contains("gpt-4o"));
    }

    #[test]
    fn aliases_load_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "request_timeout = \"30s\"\n[aliases]\n\"gpt-4o-mini\" = \"triage-tier1\"\n",
        )
        .unwrap();
        let c = GatewayConfig::load(Some(&path)).unwrap();
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.aliases["gpt-4o-mini"], "triage-tier1");
        c.validate().unwrap();
    }
}
