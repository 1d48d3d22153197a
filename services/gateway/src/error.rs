//! Errors as OpenAI writes them: `{"error": {"message", "type", "param",
//! "code"}}` with the HTTP status an OpenAI SDK turns into the right
//! exception class. [`from_code`] is the one mapping of the pipeline's
//! error codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use triage_bus::ClientError;
use triage_protocol::ErrorCode;

/// OpenAI's `type` for a client's mistake.
const INVALID_REQUEST: &str = "invalid_request_error";
/// OpenAI's `type` for a failure on the server's side.
const SERVER_ERROR: &str = "server_error";

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A machine-readable code (Triage's error codes, or the gateway's own).
    pub code: Option<String>,
    /// Seconds until a retry may succeed (a `Retry-After` header, for 429s).
    pub retry_after_s: Option<u64>,
}

/// The JSON body.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    fn with_param(mut self, param: Option<&str>) -> Self {
        self.param = param.map(str::to_string);
        self
    }

    /// 400 naming the field at fault (`None` when the body as a whole is).
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, message)
            .with_param(param)
            .with_code(ErrorCode::InvalidRequest.as_str())
    }

    /// 404 for a model not in the catalogue.
    pub fn unknown_model(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            format!("The model `{model}` does not exist; GET /v1/models lists the models"),
        )
        .with_param(Some("model"))
        .with_code("model_not_found")
    }

    /// 404 for a path the gateway does not serve.
    pub fn unknown_path(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            format!("no such endpoint: {path}"),
        )
        .with_code("not_found")
    }

    /// 413 for a body over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            format!("the request body is larger than {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    /// 503: the pipeline cannot take the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, SERVER_ERROR, message)
            .with_code("service_unavailable")
    }

    /// 500: a fault inside Triage.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, SERVER_ERROR, message)
            .with_code(ErrorCode::Internal.as_str())
    }

    /// Ends a stream whose generation restarted after text was sent: the
    /// client would otherwise get the two attempts' text spliced.
    pub fn restarted() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            SERVER_ERROR,
            "the generation restarted (a worker or backend failed) after part of the answer \
             was streamed; the partial answer is void: send the request again",
        )
        .with_code("generation_restarted")
    }

    /// Ends a stream that lost a chunk.
    pub fn chunk_gap(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            SERVER_ERROR,
            format!("part of the streamed answer was lost ({detail}); send the request again"),
        )
        .with_code("stream_incomplete")
    }

    /// 401: no key, not a key, an unknown or revoked one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, INVALID_REQUEST, message).with_code("invalid_api_key")
    }

    /// 429 for a rate limit (`kind` = `requests` or `tokens`, as OpenAI
    /// names them), retryable after `retry_after_s`.
    pub fn rate_limited(
        kind: &'static str,
        message: impl Into<String>,
        retry_after_s: u64,
    ) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, message)
            .with_code("rate_limit_exceeded");
        e.retry_after_s = Some(retry_after_s.max(1));
        e
    }

    /// 429 for a spent daily budget, retryable at the next UTC midnight.
    pub fn budget_spent(message: impl Into<String>, retry_after_s: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message)
            .with_code("insufficient_quota");
        e.retry_after_s = Some(retry_after_s.max(1));
        e
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }
}

/// The answer for a pipeline error `code`: its status, OpenAI type and the
/// field at fault. The one place the pipeline's codes become HTTP.
pub fn from_code(code: ErrorCode, message: impl Into<String>) -> ApiError {
    use ErrorCode as C;
    let (status, kind, param) = match code {
        C::InvalidRequest => (StatusCode::BAD_REQUEST, INVALID_REQUEST, None),
        C::EmptyPrompt => (StatusCode::BAD_REQUEST, INVALID_REQUEST, Some("messages")),
        C::UnsupportedNWithStream => (StatusCode::BAD_REQUEST, INVALID_REQUEST, Some("n")),
        // A tier comes from the model name (triage-tier1/2, or an alias).
        C::InvalidTier => (StatusCode::BAD_REQUEST, INVALID_REQUEST, Some("model")),
        C::ContextLengthExceeded => (StatusCode::BAD_REQUEST, INVALID_REQUEST, Some("messages")),
        // The backend refused the request's content or parameters.
        C::BackendRejected => (StatusCode::BAD_REQUEST, INVALID_REQUEST, None),
        C::PromptTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            Some("messages"),
        ),
        C::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, SERVER_ERROR, None),
        // A request id used before: the first request owns its answer.
        C::DuplicateRequest => (StatusCode::CONFLICT, INVALID_REQUEST, None),
        C::BackendUnavailable => (StatusCode::SERVICE_UNAVAILABLE, SERVER_ERROR, None),
        // The pipeline refused new work to keep what it holds: try later.
        C::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, SERVER_ERROR, None),
        // Feedback on a request this tenant never received.
        C::UnknownRequest => (StatusCode::NOT_FOUND, INVALID_REQUEST, Some("id")),
        // The gateway wrote the request, so a version it does not speak, or
        // one that kept killing workers, is Triage's fault, not the client's.
        C::UnsupportedVersion | C::MaxDeliveriesExceeded | C::Internal => {
            (StatusCode::INTERNAL_SERVER_ERROR, SERVER_ERROR, None)
        }
    };
    ApiError::new(status, kind, message)
        .with_param(param)
        .with_code(code.as_str())
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Reply(reply) => from_code(reply.code, reply.message),
            ClientError::Submit { detail, .. } => ApiError::unavailable(format!(
                "the request could not be queued (NATS unavailable or the queue is full): {detail}"
            )),
            ClientError::Timeout { timeout, .. } => from_code(
                ErrorCode::DeadlineExceeded,
                format!("no answer within the gateway's request timeout ({timeout:?})"),
            ),
            e @ ClientError::Duplicate { .. } => {
                from_code(ErrorCode::DuplicateRequest, e.to_string())
            }
            e @ ClientError::QueueFull { .. } => from_code(ErrorCode::QueueFull, e.to_string()),
            ClientError::Incomplete { detail, .. } => ApiError::chunk_gap(&detail.to_string()),
            ClientError::Closed(_) => {
                ApiError::unavailable("the connection to NATS closed before the answer came")
            }
            ClientError::Decode { source, .. } => ApiError::internal(format!(
                "an undecodable reply came from the pipeline: {source}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pipeline_code_maps_to_its_status() {
        let expect = |code: ErrorCode| match code {
            ErrorCode::InvalidRequest
            | ErrorCode::EmptyPrompt
            | ErrorCode::UnsupportedNWithStream
            | ErrorCode::InvalidTier
            | ErrorCode::ContextLengthExceeded
            | ErrorCode::BackendRejected => 400,
            ErrorCode::PromptTooLarge => 413,
            ErrorCode::DuplicateRequest => 409,
            ErrorCode::UnknownRequest => 404,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::BackendUnavailable | ErrorCode::QueueFull => 503,
            ErrorCode::UnsupportedVersion
            | ErrorCode::MaxDeliveriesExceeded
            | ErrorCode::Internal => 500,
        };
        for code in ErrorCode::ALL {
            let e = from_code(code, "m");
            assert_eq!(e.status.as_u16(), expect(code), "{code}");
            assert_eq!(e.code.as_deref(), Some(code.as_str()));
            let kind = if e.status.is_client_error() {
                INVALID_REQUEST
            } else {
                SERVER_ERROR
            };
            assert_eq!(e.kind, kind, "{code}");
        }
        assert_eq!(
            from_code(ErrorCode::UnsupportedNWithStream, "m")
                .param
                .as_deref(),
            Some("n")
        );
        assert_eq!(
            from_code(ErrorCode::InvalidTier, "m").param.as_deref(),
            Some("model")
        );
    }

    #[test]
    fn client_errors_become_503_504_and_the_reply_mapping() {
        let submit = ClientError::Submit {
            id: "r".into(),
            detail: "no responders".into(),
        };
        assert_eq!(
            ApiError::from(submit).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let timeout = ClientError::Timeout {
            id: "r".into(),
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(ApiError::from(timeout).status, StatusCode::GATEWAY_TIMEOUT);
        let reply = ClientError::Reply(triage_protocol::ErrorReply::new(
            "r",
            ErrorCode::BackendUnavailable,
            "all down",
        ));
        let e = ApiError::from(reply);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.message, "all down");
        let full = ApiError::from(ClientError::QueueFull {
            id: "r".into(),
            detail: "maximum messages exceeded".into(),
        });
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.code.as_deref(), Some("queue_full"));
        assert_eq!(full.kind, SERVER_ERROR);
    }

    #[test]
    fn the_body_is_openais_shape() {
        let e = ApiError::invalid(Some("messages"), "`messages` is required");
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {
                "message": "`messages` is required",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "invalid_request"
            }})
        );
        let v = serde_json::to_value(ApiError::unknown_model("gpt-5").body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
    }
}
