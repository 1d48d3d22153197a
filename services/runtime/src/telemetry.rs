//! Logs and traces.
//!
//! Logs are structured (`tracing`), as text for people or JSON for log
//! pipelines, filtered by `RUST_LOG`. Every span also gets an OpenTelemetry
//! context and the W3C propagator is installed, so the `traceparent` that
//! `triage-bus` carries in NATS headers joins client, router, worker and
//! ledger spans into one trace per request. A request's span records the
//! trace id in its `trace_id` field ([`record_trace_id`]), so every log
//! line inside it carries the id. Spans are exported over OTLP/HTTP when
//! [`TelemetryConfig`] names an endpoint ([`install`]).

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use crate::otlp::{TelemetryConfig, TelemetryError, STANDARD_ENDPOINT_VAR};

/// The span field that carries the trace id into log lines.
pub const TRACE_ID_FIELD: &str = "trace_id";

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

/// The installed tracer provider. Dropping it (at the end of `main`, on
/// every path out) flushes the spans not yet exported and stops export.
#[must_use = "dropping it stops span export"]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            if self.exporting {
                tracing::warn!(error = %e, "spans not flushed at shutdown");
            }
        }
    }
}

/// Installs the global subscriber, propagator and tracer provider of a
/// service, exporting spans as `config` says. Call once, first thing in
/// `main`, and keep the result until the end. The default level is `info`
/// unless `RUST_LOG` says otherwise.
pub fn install(
    service: &'static str,
    format: LogFormat,
    config: &TelemetryConfig,
) -> Result<Telemetry, TelemetryError> {
    let (provider, url) = crate::otlp::provider(service, config)?;
    subscribe(service, format, &provider);
    if let Some(url) = &url {
        tracing::info!(url = %crate::mask_url(url), sample_ratio = config.sample_ratio, "exporting spans over OTLP/HTTP");
    }
    Ok(Telemetry {
        provider,
        exporting: url.is_some(),
    })
}

/// Installs logs and trace context without export: for tests and offline
/// commands.
pub fn init(service: &'static str, format: LogFormat) {
    subscribe(service, format, &SdkTracerProvider::builder().build());
}

fn subscribe(service: &'static str, format: LogFormat, provider: &SdkTracerProvider) {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(fmt_layer(format, std::io::stdout))
        .try_init();
    if result.is_err() {
        // Already installed (tests starting several services in-process).
    }
}

/// The log line layer: span fields (so `trace_id`) are in every line, as
/// the span prefix in text and the `span`/`spans` objects in JSON.
fn fmt_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => layer.with_target(false).boxed(),
        LogFormat::Json => layer.json().with_current_span(true).boxed(),
    }
}

/// The trace id of `span` as 32 hex digits, `None` when it has no valid
/// context (no subscriber with the OpenTelemetry layer).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Records the trace id in `span`'s [`TRACE_ID_FIELD`] (declared with
/// `trace_id = tracing::field::Empty`), so the log lines inside it carry
/// it. Call after the span's parent is final.
pub fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = trace_id(span) {
        span.record(TRACE_ID_FIELD, id.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    /// Logs one request (a line in its span, one in a child span) and
    /// returns the lines and the request's trace id.
    fn log_a_request(format: LogFormat) -> (Vec<String>, String) {
        let out = Captured::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(fmt_layer(format, out.clone()));
        let id = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = "r-1", trace_id = tracing::field::Empty);
            record_trace_id(&span);
            span.in_scope(|| {
                tracing::info!("admitted");
                tracing::info_span!("generate", attempt = 1)
                    .in_scope(|| tracing::warn!("retrying"));
            });
            trace_id(&span).expect("a valid trace id")
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        (text.lines().map(String::from).collect(), id)
    }

    #[test]
    fn text_lines_of_a_request_carry_its_trace_id() {
        let (lines, id) = log_a_request(LogFormat::Text);
        assert_eq!(id.len(), 32);
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            assert!(line.contains(&id) && line.contains("trace_id"), "{line}");
        }
    }

    #[test]
    fn json_lines_of_a_request_carry_its_trace_id() {
        let (lines, id) = log_a_request(LogFormat::Json);
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let request = v["spans"]
                .as_array()
                .and_then(|spans| spans.iter().find(|s| s["name"] == "request"))
                .unwrap_or_else(|| panic!("no request span in {line}"));
            assert_eq!(request[TRACE_ID_FIELD], id.as_str(), "{line}");
        }
    }

    #[test]
    fn without_the_opentelemetry_layer_there_is_no_trace_id() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", trace_id = tracing::field::Empty);
            assert_eq!(trace_id(&span), None);
            record_trace_id(&span);
        });
    }
}
