//! `GET /health`: ready only when NATS answers and every Triage stream
//! exists. The gateway creates no streams (they belong to the services and
//! their configured limits), so it is not ready before the router or a
//! worker has provisioned them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use triage_protocol::StreamKind;

use crate::server::AppState;

/// 200 `{"status": "ready"}`, or 503 with the reason.
pub async fn handler(State(s): State<Arc<AppState>>) -> Response {
    match ready(&s).await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        )
            .into_response(),
    }
}

async fn ready(s: &AppState) -> Result<(), String> {
    if s.nats.connection_state() != async_nats::connection::State::Connected {
        return Err("not connected to NATS".into());
    }
    for kind in StreamKind::ALL {
        let name = s.ns.stream_name(kind);
        match tokio::time::timeout(s.config.health_timeout, s.js.get_stream(&name)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("stream {name}: {e}")),
            Err(_) => {
                return Err(format!(
                    "stream {name}: no answer from NATS within {:?}",
                    s.config.health_timeout
                ))
            }
        }
    }
    Ok(())
}
