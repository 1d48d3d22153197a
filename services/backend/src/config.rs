//! Client configuration, meant to be embedded in a service's own config (serde, durations as
//! humantime strings like `"30s"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A bearer token (vLLM's `--api-key`). Printed, debugged and serialised as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The secret itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for ApiKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Serialisation is for printing configuration; the secret never leaves this way.
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ApiKey)
    }
}

/// Where the backend is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Server root, e.g. `http://127.0.0.1:8000` (a trailing `/` or `/v1` is accepted and
    /// removed).
    pub base_url: String,
    /// Bearer token sent as `Authorization: Bearer …`, if the server requires one.
    pub api_key: Option<ApiKey>,
    /// TCP connect limit.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From sending a request to the first byte of its body (covers queueing and prefill:
    /// vLLM sends nothing until the first token).
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Longest silence between two reads of a stream.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Whole non-streamed request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `GET /health` and `GET /v1/models`.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000".to_owned(),
            api_key: None,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(300),
            health_timeout: Duration::from_secs(2),
        }
    }
}

impl BackendConfig {
    /// Defaults with this base URL.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            ..Self::default()
        }
    }

    /// `base_url` without trailing `/` or `/v1`.
    pub fn root(&self) -> &str {
        let url = self.base_url.trim().trim_end_matches('/');
        url.strip_suffix("/v1").unwrap_or(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_never_printed() {
        let config = BackendConfig {
            api_key: Some(ApiKey::new("sk-secret")),
            ..BackendConfig::default()
        };
        assert!(!format!("{config:?}").contains("sk-secret"));
        assert!(!serde_json::to_string(&config)
            .unwrap()
            .contains("sk-secret"));
        let parsed: BackendConfig =
            serde_json::from_str(r#"{"api_key":"sk-secret","idle_timeout":"3s"}"#).unwrap();
        assert_eq!(parsed.api_key.unwrap().expose(), "sk-secret");
        assert_eq!(parsed.idle_timeout, Duration::from_secs(3));
    }

    #[test]
    fn root_normalises_suffixes() {
        for url in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
        ] {
            assert_eq!(BackendConfig::new(url).root(), "http://h:1");
        }
    }
}
