//! The gateway's Prometheus metrics. The `model` label is a catalogue name
//! (or `unknown`), so its values are bounded by the configuration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an answered request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `chat_completions` or `completions`.
    pub endpoint: &'static str,
    /// The catalogue model, or `unknown`.
    pub model: String,
    /// The HTTP status (200 for a stream, even one ended by an error event).
    pub status: u16,
}

/// Labels of a model.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The catalogue model.
    pub model: String,
}

/// Labels of a stream ended by an error event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamErrorLabels {
    /// The error code sent, e.g. `generation_restarted`.
    pub code: String,
}

/// Labels of an `llm.chat` request: `ok` or the error code answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NatsChatLabels {
    /// `ok`, an error code, or `no_reply_subject`.
    pub outcome: String,
}

/// Every metric the gateway keeps.
#[derive(Clone)]
pub struct GatewayMetrics {
    /// Requests by endpoint, model and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Streams ended by an error event after their 200, by code.
    pub stream_errors: Family<StreamErrorLabels, Counter>,
    /// Seconds from a request's arrival to its first streamed text.
    pub ttft: Family<ModelLabels, Histogram>,
    /// Seconds from a request's arrival to the end of its answer.
    pub duration: Family<ModelLabels, Histogram>,
    /// Requests being answered now.
    pub in_flight: Gauge,
    /// Core NATS requests on `llm.chat`, by outcome.
    pub nats_chat: Family<NatsChatLabels, Counter>,
}

fn latency() -> Histogram {
    // 1 ms to about 2 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl GatewayMetrics {
    /// Registers the metrics under `triage_gateway_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            stream_errors: Family::default(),
            ttft: Family::new_with_constructor(latency),
            duration: Family::new_with_constructor(latency),
            in_flight: Gauge::default(),
            nats_chat: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("triage_gateway");
        r.register(
            "requests",
            "Requests answered, by endpoint, model and HTTP status",
            m.requests.clone(),
        );
        r.register(
            "stream_errors",
            "Streams ended by an error event after their headers, by code",
            m.stream_errors.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From a request's arrival to its first streamed text",
            m.ttft.clone(),
        );
        r.register(
            "request_duration_seconds",
            "From a request's arrival to the end of its answer",
            m.duration.clone(),
        );
        r.register(
            "in_flight",
            "Requests being answered now",
            m.in_flight.clone(),
        );
        r.register(
            "nats_chat_requests",
            "Core NATS requests on llm.chat, by outcome (ok or the error code)",
            m.nats_chat.clone(),
        );
        m
    }
}
