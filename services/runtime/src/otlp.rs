//! OTLP span export: where spans go (nowhere unless an endpoint is
//! configured), how many traces are kept, and the tracer provider that
//! batches spans and sends them as OTLP/HTTP protobuf.

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

/// The standard OpenTelemetry variable, used when `otlp_endpoint` is unset.
pub const STANDARD_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Where OTLP/HTTP receivers take spans, below the base URL.
const TRACES_PATH: &str = "/v1/traces";

/// Span export, the `telemetry` section of every service's configuration
/// (e.g. `TRIAGE_WORKER_TELEMETRY__OTLP_ENDPOINT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver (a collector, Jaeger, Tempo), e.g.
    /// `http://127.0.0.1:4318`: spans are POSTed to `<url>/v1/traces` as
    /// protobuf. Unset: `OTEL_EXPORTER_OTLP_ENDPOINT` if that is set, else
    /// nothing is exported (trace context still propagates and logs still
    /// carry the trace id).
    pub otlp_endpoint: Option<String>,
    /// Share (0–1) of the traces started here that are exported; a request
    /// arriving with a trace context follows its sender's decision, so a
    /// trace is kept whole or not at all.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

/// Telemetry that cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an http(s) URL with a host.
    #[error("telemetry.otlp_endpoint {url:?}: {reason}")]
    InvalidEndpoint {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The sample ratio is outside 0–1.
    #[error("telemetry.sample_ratio must be between 0 and 1, got {0}")]
    InvalidSampleRatio(f64),
    /// The exporter could not be built.
    #[error("cannot build the OTLP exporter for {url}: {detail}")]
    Exporter {
        /// The traces URL.
        url: String,
        /// The exporter's error.
        detail: String,
    },
}

impl TelemetryConfig {
    /// The URL spans are sent to, or `None` when export is off.
    /// `standard_env` is the value of [`STANDARD_ENDPOINT_VAR`].
    pub fn traces_url(&self, standard_env: Option<&str>) -> Result<Option<String>, TelemetryError> {
        let Some(base) = self
            .otlp_endpoint
            .as_deref()
            .or(standard_env)
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let invalid = |reason| TelemetryError::InvalidEndpoint {
            url: base.to_string(),
            reason,
        };
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| {
                invalid("must start with http:// or https:// (OTLP/HTTP, usually port 4318; gRPC is not supported)")
            })?;
        if rest.is_empty() || rest.starts_with(['/', ':']) {
            return Err(invalid("has no host"));
        }
        if rest.contains(['?', '#', ' ']) {
            return Err(invalid(
                "must be a plain base URL (no query, fragment or spaces)",
            ));
        }
        let base = base.trim_end_matches('/');
        Ok(Some(if base.ends_with(TRACES_PATH) {
            base.to_string()
        } else {
            format!("{base}{TRACES_PATH}")
        }))
    }

    /// Checks the settings without building anything.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(TelemetryError::InvalidSampleRatio(self.sample_ratio));
        }
        self.traces_url(None).map(drop)
    }
}

/// The tracer provider for `service` and the URL it exports to (`None`:
/// spans are built for their context but sent nowhere).
pub fn provider(
    service: &'static str,
    config: &TelemetryConfig,
) -> Result<(SdkTracerProvider, Option<String>), TelemetryError> {
    config.validate()?;
    let standard = std::env::var(STANDARD_ENDPOINT_VAR).ok();
    let url = config.traces_url(standard.as_deref())?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    let resource = Resource::builder().with_service_name(service).build();
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource);
    if let Some(url) = &url {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        // The batch processor exports from its own thread (the blocking
        // client must not run on the runtime's threads).
        builder = builder.with_batch_exporter(exporter);
    }
    Ok((builder.build(), url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(url: &str) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: Some(url.into()),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_given() {
        let off = TelemetryConfig::default();
        assert_eq!(off.traces_url(None).unwrap(), None);
        assert_eq!(off.traces_url(Some("  ")).unwrap(), None);
        assert_eq!(
            off.traces_url(Some("http://collector:4318"))
                .unwrap()
                .as_deref(),
            Some("http://collector:4318/v1/traces"),
            "the standard variable applies when the key is unset"
        );
        assert_eq!(
            at("http://mine:4318")
                .traces_url(Some("http://other:4318"))
                .unwrap()
                .as_deref(),
            Some("http://mine:4318/v1/traces"),
            "the configuration key wins over the standard variable"
        );
    }

    #[test]
    fn the_traces_path_is_appended_once() {
        for (given, url) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
            (
                "https://otel.example/otlp",
                "https://otel.example/otlp/v1/traces",
            ),
            ("http://h:4318/v1/traces", "http://h:4318/v1/traces"),
        ] {
            assert_eq!(at(given).traces_url(None).unwrap().as_deref(), Some(url));
        }
    }

    #[test]
    fn bad_endpoints_and_ratios_are_specific_errors() {
        for (given, says) in [
            ("127.0.0.1:4318", "http://"),
            ("grpc://h:4317", "gRPC"),
            ("http://", "no host"),
            ("http:///v1", "no host"),
            ("http://h:4318?x=1", "plain base URL"),
        ] {
            let err = at(given).validate().unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(given), "{given}: {err}");
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            let c = TelemetryConfig {
                sample_ratio: ratio,
                ..TelemetryConfig::default()
            };
            assert!(matches!(
                c.validate(),
                Err(TelemetryError::InvalidSampleRatio(_))
            ));
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn the_section_loads_from_the_environment_and_refuses_unknown_keys() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(default)]
        struct Svc {
            telemetry: TelemetryConfig,
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("TESTOTLP_TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4318");
            jail.set_env("TESTOTLP_TELEMETRY__SAMPLE_RATIO", "0.25");
            let c: Svc = crate::load(None, "TESTOTLP_").unwrap();
            assert_eq!(
                c.telemetry,
                TelemetryConfig {
                    otlp_endpoint: Some("http://127.0.0.1:4318".into()),
                    sample_ratio: 0.25,
                }
            );
            jail.set_env("TESTOTLP_TELEMETRY__ENDPIONT", "x");
            let err = crate::load::<Svc>(None, "TESTOTLP_")
                .unwrap_err()
                .to_string();
            assert!(err.contains("endpiont"), "{err}");
            Ok(())
        });
    }
}
