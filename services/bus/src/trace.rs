//! W3C trace context in NATS headers, so one request is one trace from the
//! client through router and worker to the ledger.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none.
        if !value.is_empty() {
            self.0.insert(key, value.as_str());
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's context (`traceparent`, `tracestate`) into
/// `headers`. Without a configured propagator this writes nothing.
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// Makes `span` a child of the trace context carried in `headers`, if any,
/// and records the trace id in its `trace_id` field (see
/// [`triage_runtime::telemetry::record_trace_id`]).
pub fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    adopt_parent_from(span, &HeaderExtractor(headers));
}

/// [`adopt_parent`] for any carrier of W3C trace context (e.g. HTTP headers).
pub fn adopt_parent_from(span: &tracing::Span, carrier: &dyn Extractor) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        span.set_parent(cx);
    }
    triage_runtime::telemetry::record_trace_id(span);
}

/// The `traceparent` header value, if present.
pub fn traceparent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(triage_protocol::headers::TRACEPARENT)
        .map(|v| v.as_str())
}
