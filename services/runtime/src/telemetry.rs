//! Logs and traces.
//!
//! Logs are structured (`tracing`), as text for people or JSON for log
//! pipelines, filtered by `RUST_LOG`. Every span also gets an OpenTelemetry
//! context and the W3C propagator is installed, so the `traceparent` that
//! `triage-bus` carries in NATS headers joins router, worker and ledger
//! spans into one trace per request; log lines carry its trace id.

use opentelemetry::trace::TracerProvider as _;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber and propagator. Call once, first thing in
/// `main`. The default level is `info` unless `RUST_LOG` says otherwise.
pub fn init(service: &'static str, format: LogFormat) {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider);
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true),
            )
            .try_init(),
    };
    if result.is_err() {
        // Already installed (tests starting several services in-process).
    }
}
