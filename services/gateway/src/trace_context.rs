//! The span of one API request. A caller's W3C `traceparent` header makes
//! it (and so the router's, the workers' and the ledger's spans) part of
//! the caller's trace; without one the request starts its own trace.

use axum::http::HeaderMap;
use opentelemetry::propagation::Extractor;

/// HTTP headers as a carrier of trace context.
struct HttpHeaders<'a>(&'a HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of the request `request_id` on `endpoint`, a child of the
/// trace context in `headers` if they carry one.
pub fn request_span(
    headers: &HeaderMap,
    request_id: &str,
    endpoint: &'static str,
) -> tracing::Span {
    let span = tracing::info_span!(
        "gateway.request",
        request_id,
        endpoint,
        trace_id = tracing::field::Empty,
        otel.kind = "server",
    );
    triage_bus::trace::adopt_parent_from(&span, &HttpHeaders(headers));
    span
}
