//! Typed backend errors and the error bodies servers send.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// An error body as sent by vLLM (`{"object":"error","message":…,"type":…,"code":…}`),
/// newer vLLM / OpenAI / llama.cpp (`{"error":{"message":…,"type":…,"code":…}}`), or any other
/// text (kept as the message).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// Human-readable message, quoted in error replies.
    pub message: String,
    /// Error type, e.g. `BadRequestError`, `exceed_context_size_error`.
    pub error_type: Option<String>,
    /// `code` as sent (a number for vLLM, sometimes a string for OpenAI).
    pub code: Option<Value>,
}

/// Longest raw body kept in an error.
const MAX_RAW: usize = 1000;

impl ApiError {
    /// Parses an error body; never fails (unknown shapes keep the raw text as message).
    pub fn from_body(body: &[u8]) -> Self {
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            if let Some(parsed) = Self::from_json(&value) {
                return parsed;
            }
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        Self {
            message: truncate(text, MAX_RAW),
            error_type: None,
            code: None,
        }
    }

    /// Reads the error out of a JSON value of either known shape.
    pub fn from_json(value: &Value) -> Option<Self> {
        let object = match value.get("error") {
            Some(inner @ Value::Object(_)) => inner,
            Some(Value::String(message)) => {
                return Some(Self {
                    message: message.clone(),
                    error_type: None,
                    code: None,
                })
            }
            _ if value.get("object").and_then(Value::as_str) == Some("error") => value,
            _ if value.get("message").is_some() && value.get("choices").is_none() => value,
            _ => return None,
        };
        Some(Self {
            message: object
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            error_type: object
                .get("type")
                .and_then(Value::as_str)
                .map(str::to_owned),
            code: object.get("code").filter(|c| !c.is_null()).cloned(),
        })
    }

    /// Whether this says the prompt plus `max_tokens` exceed the context window
    /// (vLLM: "maximum context length"; llama.cpp: `exceed_context_size_error`;
    /// OpenAI: `context_length_exceeded`).
    pub fn is_context_length(&self) -> bool {
        self.message.contains("maximum context length")
            || self.message.contains("exceeds the available context size")
            || self.error_type.as_deref() == Some("exceed_context_size_error")
            || self.code.as_ref().and_then(Value::as_str) == Some("context_length_exceeded")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error_type {
            Some(t) => write!(f, "{t}: {:?}", self.message),
            None => write!(f, "{:?}", self.message),
        }
    }
}

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// From sending the request to the first byte of the response body.
    FirstByte,
    /// Between two reads of a streamed body.
    Idle,
    /// A whole non-streamed request (or a health/models call).
    Total,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::FirstByte => "first byte",
            TimeoutPhase::Idle => "between chunks",
            TimeoutPhase::Total => "whole request",
        })
    }
}

/// What can go wrong talking to an OpenAI-compatible backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The client configuration cannot be used (bad URL, bad header value).
    #[error("invalid backend configuration: {0}")]
    InvalidConfig(String),
    /// No connection, or it failed/closed before a response arrived.
    #[error("cannot reach backend {url}: {message}")]
    Connect {
        /// Request URL.
        url: String,
        /// What the transport said.
        message: String,
    },
    /// A configured wait ran out.
    #[error("backend timed out ({phase}) after {after:?}")]
    Timeout {
        /// Which wait.
        phase: TimeoutPhase,
        /// The configured limit.
        after: Duration,
    },
    /// The backend answered with a non-success status; its error body is parsed.
    #[error("backend answered HTTP {status}: {error}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The parsed error body.
        error: ApiError,
    },
    /// The response body broke off (connection reset, truncated chunked body, stream ended
    /// without `[DONE]` or `finish_reason`) after the response had started.
    #[error("backend stream broke after {events} events: {reason}")]
    StreamBroken {
        /// Events delivered before the break.
        events: u64,
        /// What happened.
        reason: String,
    },
    /// The backend sent an error object inside a successful (200) stream.
    #[error("backend reported an error mid-stream: {error}")]
    ErrorEvent {
        /// The error it sent.
        error: ApiError,
    },
    /// A complete response could not be decoded (non-streamed JSON, models list).
    #[error("cannot decode backend response: {message}")]
    Decode {
        /// What was wrong.
        message: String,
    },
}

impl BackendError {
    /// True for failures worth retrying (maybe on another backend): connection errors,
    /// timeouts, 408/429/5xx, broken streams and mid-stream server errors. Other 4xx (bad
    /// request, context too long, unknown model, auth) and decode errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Connect { .. }
            | BackendError::Timeout { .. }
            | BackendError::StreamBroken { .. }
            | BackendError::ErrorEvent { .. } => true,
            BackendError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            BackendError::InvalidConfig(_) | BackendError::Decode { .. } => false,
        }
    }

    /// True for a 400 saying the prompt plus `max_tokens` exceed the model's context.
    pub fn is_context_length(&self) -> bool {
        matches!(self, BackendError::Status { status: 400, error } if error.is_context_length())
    }

    /// The backend's own error message, when it sent one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            BackendError::Status { error, .. } | BackendError::ErrorEvent { error } => Some(error),
            _ => None,
        }
    }

    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::InvalidConfig(_) => "invalid_config",
            BackendError::Connect { .. } => "connect",
            BackendError::Timeout {
                phase: TimeoutPhase::FirstByte,
                ..
            } => "timeout_first_byte",
            BackendError::Timeout {
                phase: TimeoutPhase::Idle,
                ..
            } => "timeout_idle",
            BackendError::Timeout {
                phase: TimeoutPhase::Total,
                ..
            } => "timeout_total",
            e @ BackendError::Status { status, .. } => match status {
                400 if e.is_context_length() => "context_length",
                429 => "http_429",
                s if *s >= 500 => "http_5xx",
                _ => "http_4xx",
            },
            BackendError::StreamBroken { .. } => "stream_broken",
            BackendError::ErrorEvent { .. } => "error_event",
            BackendError::Decode { .. } => "decode",
        }
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllm_openai_llamacpp_and_plain_bodies() {
        let vllm = br#"{"object":"error","message":"This model's maximum context length is 100 tokens. However, you requested 104 tokens (9 in the messages, 95 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}"#;
        let e = ApiError::from_body(vllm);
        assert!(e
            .message
            .starts_with("This model's maximum context length is 100"));
        assert_eq!(e.error_type.as_deref(), Some("BadRequestError"));
        assert_eq!(e.code, Some(Value::from(400)));
        assert!(e.is_context_length());

        let llama = br#"{"error":{"code":400,"message":"request (3031 tokens) exceeds the available context size (2048 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":3031,"n_ctx":2048}}"#;
        let e = ApiError::from_body(llama);
        assert_eq!(e.error_type.as_deref(), Some("exceed_context_size_error"));
        assert!(e.is_context_length());

        let openai = br#"{"error":{"message":"bad model","type":"invalid_request_error","code":"model_not_found"}}"#;
        let e = ApiError::from_body(openai);
        assert_eq!(e.message, "bad model");
        assert!(!e.is_context_length());

        let html = b"<html>502 Bad Gateway</html>";
        assert_eq!(
            ApiError::from_body(html).message,
            "<html>502 Bad Gateway</html>"
        );
        assert_eq!(ApiError::from_body(b"").message, "");
    }

    #[test]
    fn retryability_by_kind() {
        let status = |s: u16, msg: &str| BackendError::Status {
            status: s,
            error: ApiError {
                message: msg.into(),
                error_type: None,
                code: None,
            },
        };
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status(s, "x").is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!status(s, "x").is_retryable(), "{s}");
        }
        let ctx = status(400, "This model's maximum context length is 10 tokens.");
        assert!(ctx.is_context_length() && !ctx.is_retryable());
        assert_eq!(ctx.kind(), "context_length");
        assert!(!status(500, "maximum context length").is_context_length());
        assert!(BackendError::Timeout {
            phase: TimeoutPhase::Idle,
            after: Duration::from_secs(1)
        }
        .is_retryable());
        assert!(BackendError::StreamBroken {
            events: 3,
            reason: "reset".into()
        }
        .is_retryable());
        assert!(!BackendError::Decode {
            message: "x".into()
        }
        .is_retryable());
    }

    #[test]
    fn status_display_quotes_the_message() {
        let e = BackendError::Status {
            status: 400,
            error: ApiError::from_body(br#"{"object":"error","message":"too long","type":"BadRequestError","param":null,"code":400}"#),
        };
        assert_eq!(
            e.to_string(),
            "backend answered HTTP 400: BadRequestError: \"too long\""
        );
    }
}
