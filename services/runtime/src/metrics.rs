//! The Prometheus endpoint every service exposes, and [`Registrar`], which
//! services build their metrics structs with.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::{Metric, Registry};
use tokio_util::sync::CancellationToken;

use crate::Readiness;

/// Serves `GET /metrics` (OpenMetrics text) and liveness (`GET /health`,
/// `GET /health/live`) on `addr` until `shutdown` fires; `/health/ready` is
/// always ready. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_with_readiness(addr, registry, Readiness::new(), shutdown).await
}

/// [`serve`], with `GET /health/ready` running `readiness`' checks: 200 and
/// a JSON report when all pass, 503 naming each failure otherwise.
pub async fn serve_with_readiness(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let ready = Router::new()
        .route("/health/ready", get(ready))
        .with_state(Arc::new(readiness));
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/health", get(|| async { "ok" }))
        .route("/health/live", get(|| async { "ok" }))
        .with_state(registry)
        .merge(ready);
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    let report = readiness.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report))
}

async fn render(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Registers metrics under one prefix and hands each back, so a service's
/// metrics struct is one expression in which every metric's name, help and
/// type stand together, written once.
pub struct Registrar<'a> {
    registry: &'a mut Registry,
}

impl<'a> Registrar<'a> {
    /// Metrics named `<prefix>_<name>` in `registry`.
    pub fn new(registry: &'a mut Registry, prefix: &str) -> Self {
        Self {
            registry: registry.sub_registry_with_prefix(prefix),
        }
    }

    /// Registers `metric` as `name` with `help` and returns it (metrics are
    /// handles: the registry and the caller share the same values).
    pub fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.registry.register(name, help, metric.clone());
        metric
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn added_metrics_are_prefixed_and_shared_with_the_registry() {
        let mut registry = Registry::default();
        let mut r = Registrar::new(&mut registry, "triage_test");
        let requests: Counter = r.add("requests", "Requests handled", Counter::default());
        requests.inc_by(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# HELP triage_test_requests Requests handled"),
            "{text}"
        );
        assert!(text.contains("triage_test_requests_total 3"), "{text}");
    }
}
