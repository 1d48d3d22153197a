//! W3C trace context crosses a hop through NATS headers.

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use triage_protocol::{headers, Encoding};

#[test]
fn traceparent_is_injected_and_adopted_by_the_next_hop() {
    triage_runtime::telemetry::init("bus-test", triage_runtime::telemetry::LogFormat::Text);
    let sender = tracing::info_span!("client");
    let sent_trace = sender.context().span().span_context().trace_id();
    let h = sender.in_scope(|| triage_bus::envelope::outgoing(Encoding::MsgPack, Some("id-1")));
    let tp = h
        .get(headers::TRACEPARENT)
        .expect("traceparent header")
        .as_str()
        .to_string();
    assert!(
        tp.starts_with("00-") && tp.contains(&sent_trace.to_string()),
        "{tp}"
    );
    assert_eq!(h.get(headers::MSG_ID).unwrap().as_str(), "id-1");

    let receiver = tracing::info_span!("router");
    triage_bus::trace::adopt_parent(&receiver, &h);
    assert_eq!(
        receiver.context().span().span_context().trace_id(),
        sent_trace
    );
}
