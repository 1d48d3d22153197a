//! `POST /v1/feedback`: rate an answer the caller received —
//! `{"id": "chatcmpl-…", "rating": "good" | "bad" | 0–10, "comment": "…"}`.
//!
//! The id is the response's `id` (`chatcmpl-<request id>`, `cmpl-<request
//! id>`) or the bare request id. The tenant is the API key's, so a key
//! rates only its own tenant's requests. The rating goes to the ledger on
//! plain `llm.feedback` (core NATS request–reply) and its answer comes
//! back: 200 with the receipt, 404 `unknown_request` for an id this tenant
//! never received, 400 naming the field at fault.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use triage_protocol::{Feedback, FeedbackReceipt, Rating, Reply};

use crate::auth::Identity;
use crate::error::{from_code, ApiError};
use crate::server::AppState;

/// How long the ledger may take to answer (it waits for a booking that
/// lags the answer by up to its `feedback.booking_wait`).
pub const LEDGER_TIMEOUT: Duration = Duration::from_secs(15);

/// The body of `POST /v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    id: String,
    rating: Rating,
    #[serde(default)]
    comment: Option<String>,
}

/// The request id of a response id.
pub fn request_id(id: &str) -> &str {
    id.strip_prefix("chatcmpl-")
        .or_else(|| id.strip_prefix("cmpl-"))
        .unwrap_or(id)
}

/// The body as the ledger's [`Feedback`] for `identity`, or the 400.
fn parse(body: &[u8], identity: &Identity) -> Result<(String, Feedback), ApiError> {
    use triage_protocol::DecodeError as D;
    let b: Body = triage_protocol::decode(triage_protocol::Encoding::Json, body).map_err(|e| {
        let param = match &e {
            D::MissingField { field } | D::InvalidField { field, .. } => Some(field.as_str()),
            _ => None,
        };
        ApiError::invalid(param, format!("the body is not valid feedback: {e}"))
    })?;
    let feedback = Feedback {
        id: request_id(&b.id).to_string(),
        rating: b.rating,
        comment: b.comment,
        tenant: identity.tenant(),
    };
    feedback
        .check()
        .map_err(|e| ApiError::invalid(Some(e.field), format!("`{}`: {}", e.field, e.reason)))?;
    Ok((b.id, feedback))
}

/// Handles one rating.
pub async fn handle(
    s: &AppState,
    headers: &axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match rate(s, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn rate(
    s: &AppState,
    headers: &axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let identity = s.auth.authenticate(headers).await?;
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(s.config.max_body_bytes),
        _ => ApiError::invalid(
            None,
            format!("the body could not be read: {}", r.body_text()),
        ),
    })?;
    let (shown_id, feedback) = parse(&body, &identity)?;
    let payload = serde_json::to_vec(&feedback).expect("feedback serialises");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        triage_protocol::headers::CONTENT_TYPE,
        triage_protocol::headers::JSON_MIME,
    );
    let request = async_nats::Request::new()
        .payload(payload.into())
        .headers(headers)
        .timeout(Some(LEDGER_TIMEOUT));
    let answer = s
        .nats
        .send_request(s.ns.feedback(), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                ApiError::unavailable("no ledger is taking feedback (is triage-ledger running?)")
            }
            _ => ApiError::unavailable(format!("the ledger did not answer the rating: {e}")),
        })?;
    if let Ok(receipt) = serde_json::from_slice::<FeedbackReceipt>(&answer.payload) {
        let body = json!({
            "object": "feedback",
            "id": shown_id,
            "good": receipt.good,
            "replaced": receipt.replaced,
        });
        return Ok(Json(body).into_response());
    }
    match Reply::decode(triage_protocol::Encoding::Json, &answer.payload) {
        Ok(Reply::Error(e)) => Err(from_code(e.code, e.message)),
        _ => Err(ApiError::internal(
            "an undecodable answer came from the ledger",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_name_their_request() {
        assert_eq!(request_id("chatcmpl-0190abc"), "0190abc");
        assert_eq!(request_id("cmpl-r1"), "r1");
        assert_eq!(request_id("r1"), "r1");
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let e = parse(
            br#"{"id":"chatcmpl-r1","rating":"meh"}"#,
            &Identity::Anonymous,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("rating"));
        let e = parse(br#"{"id":"r1","rating":42}"#, &Identity::Anonymous).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("rating"));
        let e = parse(br#"{"rating":1}"#, &Identity::Anonymous).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("id"));
        let (shown, f) = parse(
            br#"{"id":"chatcmpl-r1","rating":"good"}"#,
            &Identity::Anonymous,
        )
        .unwrap();
        assert_eq!(
            (shown.as_str(), f.id.as_str(), f.tenant),
            ("chatcmpl-r1", "r1", None)
        );
    }
}
