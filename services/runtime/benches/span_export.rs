//! What tracing costs one request, in the shape the services use: a
//! request span that records its trace id, a child span and a debug line
//! filtered out. Three set-ups: logs only (no OpenTelemetry layer), trace
//! context without export (the default), and export over OTLP/HTTP to a
//! receiver in this process that decodes and counts the spans. Reports
//! ns per request and, for export, how many spans reached the receiver
//! (the batch processor drops spans beyond its queue rather than block).
//!
//! Run: `cargo bench -p triage-runtime --bench span_export` (add
//! `-- --quick` for a short run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;
use triage_runtime::otlp::{provider, TelemetryConfig};
use triage_runtime::telemetry::record_trace_id;

/// One request's spans: two.
fn requests(n: u64) {
    for i in 0..n {
        let span = tracing::info_span!("request", id = i, trace_id = tracing::field::Empty);
        record_trace_id(&span);
        span.in_scope(|| {
            tracing::info_span!("generate", attempt = 1).in_scope(|| tracing::debug!("filtered"));
        });
    }
}

fn per_request_ns(n: u64, subscriber: impl tracing::Subscriber + Send + Sync) -> f64 {
    tracing::subscriber::with_default(subscriber, || {
        requests(n / 10); // warm-up
        let start = Instant::now();
        requests(n);
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

/// A receiver on a free port that counts the spans it decodes.
fn receiver(rt: &tokio::runtime::Runtime) -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(|State(c): State<Arc<AtomicU64>>, body: Bytes| async move {
                if let Ok(r) = ExportTraceServiceRequest::decode(body) {
                    let n: usize = r
                        .resource_spans
                        .iter()
                        .flat_map(|rs| &rs.scope_spans)
                        .map(|ss| ss.spans.len())
                        .sum();
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            }),
        )
        .with_state(count.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await });
    (url, count)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u64 = if quick { 20_000 } else { 200_000 };
    let filter = || tracing_subscriber::EnvFilter::new("info");

    let logs_only = per_request_ns(n, tracing_subscriber::registry().with(filter()));

    let (local, _) = provider("bench", &TelemetryConfig::default()).unwrap();
    let context = per_request_ns(
        n,
        tracing_subscriber::registry()
            .with(filter())
            .with(tracing_opentelemetry::layer().with_tracer(local.tracer("bench"))),
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, received) = receiver(&rt);
    let config = TelemetryConfig {
        otlp_endpoint: Some(url),
        ..TelemetryConfig::default()
    };
    let (exporting, _) = provider("bench", &config).unwrap();
    let exported = per_request_ns(
        n,
        tracing_subscriber::registry()
            .with(filter())
            .with(tracing_opentelemetry::layer().with_tracer(exporting.tracer("bench"))),
    );
    let flush = Instant::now();
    exporting.shutdown().unwrap();
    let flush = flush.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let spans = 2 * (n + n / 10);
    let got = received.load(Ordering::Relaxed);

    println!("per request (2 spans, trace id recorded), {n} requests:");
    println!("  logs only, no OpenTelemetry layer   {logs_only:8.0} ns");
    println!("  trace context, no export (default)  {context:8.0} ns");
    println!("  exported over OTLP/HTTP             {exported:8.0} ns");
    println!(
        "  spans received {got} of {spans} ({:.1}%), shutdown flush {flush:?}",
        100.0 * got as f64 / spans as f64
    );
}
