//! One request is one trace: the pipeline's real binaries (router, both
//! workers, ledger) export their spans over OTLP/HTTP to a minimal receiver
//! in this test; the client's span, the router's, the worker's and the
//! ledger's share one trace id, each is the child of the one before and
//! starts after it. The spans reach the receiver when the services stop on
//! SIGTERM (the periodic export is set beyond the test's length), so this
//! also checks that a graceful shutdown flushes them; and the services'
//! log lines about the request carry its trace id, in text and in JSON.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use triage_runtime::telemetry::{self, LogFormat, TelemetryConfig};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    start_ns: u64,
    end_ns: u64,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// An OTLP/HTTP protobuf receiver on a free port: its base URL and what it
/// received.
async fn receiver() -> (String, Spans) {
    let spans = Spans::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(accept))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

async fn accept(State(spans): State<Spans>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    if content_type != Some(b"application/x-protobuf") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "protobuf only").into_response();
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            spans.lock().unwrap().extend(flatten(request));
            let ok = ExportTraceServiceResponse::default().encode_to_vec();
            ([(header::CONTENT_TYPE, "application/x-protobuf")], ok).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = attributes(&rs.resource.map(|r| r.attributes).unwrap_or_default());
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Received {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
                attributes: attributes(&span.attributes),
            });
        }
    }
    out
}

const CLIENT: &str = "triage-trace-test";

/// Waits until the ledger has booked `id` (its span is made then).
async fn wait_booked(p: &common::Pipeline, id: &str) {
    let db = sqlx::PgPool::connect(&p.db_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let booked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ledger_entries WHERE request_id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap_or(0);
        if booked > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{id} never booked\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.close().await;
}

/// The chain from `span` up to its root, `span` first.
fn ancestry<'a>(span: &'a Received, by_id: &HashMap<&str, &'a Received>) -> Vec<&'a Received> {
    let mut chain = vec![span];
    while let Some(parent) = by_id.get(chain.last().unwrap().parent.as_str()) {
        chain.push(parent);
        assert!(chain.len() < 32, "a cycle in the parent links: {chain:#?}");
    }
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_from_client_to_ledger() {
    let (url, spans) = receiver().await;
    let exporting = TelemetryConfig {
        otlp_endpoint: Some(url.clone()),
        ..TelemetryConfig::default()
    };
    let client_telemetry = telemetry::install(CLIENT, LogFormat::Text, &exporting).unwrap();
    let mut p = common::start_with(|prefix| {
        let mut env = vec![
            (format!("{prefix}TELEMETRY__OTLP_ENDPOINT"), url.clone()),
            // Nothing is exported on the timer within the test: what
            // arrives was flushed at shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into()),
            (
                "RUST_LOG".into(),
                "info,triage_router=debug,triage_worker=debug".into(),
            ),
        ];
        if prefix == "TRIAGE_WORKER_" {
            env.push((format!("{prefix}LOG_FORMAT"), "json".into()));
        }
        env
    })
    .await;
    common::wait_ready(&p).await;

    let client = async_nats::connect(triage_bus::default_nats_url())
        .await
        .unwrap();
    let ns = triage_protocol::Namespace::new(&p.prefix).unwrap();
    let triage = triage_bus::TriageClient::new(client, ns);
    let id = format!("traced-{}", p.prefix);
    let mut request = triage_protocol::Request::from_prompt("Say hello.");
    request.id = id.clone();
    request.max_tokens = Some(8);
    let answer = triage.ask(request, Duration::from_secs(60)).await;
    assert!(answer.is_ok(), "{answer:?}\n{}", p.logs());
    wait_booked(&p, &id).await;

    for i in 0..p.services.len() {
        let status = p.services[i].terminate(Duration::from_secs(30));
        let status =
            status.unwrap_or_else(|| panic!("still running 30 s after SIGTERM\n{}", p.logs()));
        assert!(status.success(), "{status}\n{}", p.logs());
    }
    drop(client_telemetry);
    let spans = spans.lock().unwrap().clone();
    check_trace(&spans, &id);
    check_logs(&p, &spans, &id);
    p.teardown().await;
}

/// Client → router → worker → ledger: one trace id, each span the child of
/// the one before, none starting before its parent or ending before it
/// starts.
fn check_trace(spans: &[Received], id: &str) {
    let submit = spans
        .iter()
        .find(|s| s.service == CLIENT && s.name == "submit" && s.attributes["request_id"] == id)
        .unwrap_or_else(|| panic!("no submit span for {id} among {} spans", spans.len()));
    let trace: Vec<&Received> = spans
        .iter()
        .filter(|s| s.trace_id == submit.trace_id)
        .collect();
    let by_id: HashMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let book = trace
        .iter()
        .find(|s| s.service == "triage-ledger" && s.name == "ledger.book")
        .unwrap_or_else(|| panic!("no ledger span in the trace: {trace:#?}"));
    assert_eq!(book.attributes["request_id"], id);
    let chain: Vec<(&str, &str)> = ancestry(book, &by_id)
        .iter()
        .rev()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(
        chain,
        [
            (CLIENT, "submit"),
            ("triage-router", "route"),
            ("triage-worker", "request"),
            ("triage-ledger", "ledger.book"),
        ],
        "{trace:#?}"
    );
    assert!(submit.parent.is_empty(), "the client's span is the root");
    for span in &trace {
        assert!(span.end_ns >= span.start_ns, "{span:?}");
        if let Some(parent) = by_id.get(span.parent.as_str()) {
            assert!(
                span.start_ns >= parent.start_ns,
                "{span:?} starts before {parent:?}"
            );
        } else {
            assert!(
                span.parent.is_empty(),
                "{span:?}: its parent was never exported"
            );
        }
    }
    let worker = by_id[book.parent.as_str()];
    assert_eq!(worker.attributes["id"], id);
    assert_eq!(by_id[worker.parent.as_str()].attributes["request_id"], id);
}

/// Every log line of the router and the workers that names the request
/// carries its trace id; there is at least one in each format.
fn check_logs(p: &common::Pipeline, spans: &[Received], id: &str) {
    let trace_id = &spans
        .iter()
        .find(|s| s.name == "submit" && s.attributes["request_id"] == id)
        .unwrap()
        .trace_id;
    let mut text_lines = 0;
    let mut json_lines = 0;
    for name in ["router", "worker1", "worker2"] {
        let log = std::fs::read_to_string(p.logs.join(format!("{name}.log"))).unwrap();
        for line in log.lines().filter(|l| l.contains(id)) {
            assert!(
                line.contains(trace_id.as_str()),
                "{name}: no {trace_id} in {line}"
            );
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                let traced = v["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["trace_id"] == trace_id.as_str()));
                assert!(traced, "{name}: the trace id is not a span field: {line}");
                json_lines += 1;
            } else {
                text_lines += 1;
            }
        }
    }
    assert!(
        text_lines > 0,
        "no router log line names {id}\n{}",
        p.logs()
    );
    assert!(
        json_lines > 0,
        "no worker log line names {id}\n{}",
        p.logs()
    );
}
