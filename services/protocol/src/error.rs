//! The closed list of error codes a client can receive.

use serde::{Deserialize, Serialize};

/// Why a request failed. The list is closed: clients may match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message could not be decoded (malformed, missing or ill-typed field).
    InvalidRequest,
    /// The message's `version` is not one this build speaks.
    UnsupportedVersion,
    /// No prompt text.
    EmptyPrompt,
    /// The prompt is over the configured byte limit.
    PromptTooLarge,
    /// `n > 1` together with `stream`.
    UnsupportedNWithStream,
    /// A tier override other than 1 or 2, or one the policy forbids.
    InvalidTier,
    /// The prompt does not fit the model's context (`max_model_len`).
    ContextLengthExceeded,
    /// The deadline passed before the work could be done.
    DeadlineExceeded,
    /// The backend rejected the request (its error is quoted).
    BackendRejected,
    /// No backend could answer after retries and escalation.
    BackendUnavailable,
    /// The request was delivered too many times (workers kept dying on it).
    MaxDeliveriesExceeded,
    /// A bug or an unexpected state in Triage itself.
    Internal,
    /// A request with this id was accepted before: ids are idempotency keys.
    /// The message says what became of the first one.
    DuplicateRequest,
    /// A stream is at its configured limit and refused the message (it
    /// keeps what it accepted, and takes new work once consumers catch up).
    QueueFull,
    /// Feedback names a request this tenant never made (or one not yet
    /// booked): a tenant rates only its own requests.
    UnknownRequest,
}

impl ErrorCode {
    /// Every code, for schema and documentation checks.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::EmptyPrompt,
        ErrorCode::PromptTooLarge,
        ErrorCode::UnsupportedNWithStream,
        ErrorCode::InvalidTier,
        ErrorCode::ContextLengthExceeded,
        ErrorCode::DeadlineExceeded,
        ErrorCode::BackendRejected,
        ErrorCode::BackendUnavailable,
        ErrorCode::MaxDeliveriesExceeded,
        ErrorCode::Internal,
        ErrorCode::DuplicateRequest,
        ErrorCode::QueueFull,
        ErrorCode::UnknownRequest,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::EmptyPrompt => "empty_prompt",
            ErrorCode::PromptTooLarge => "prompt_too_large",
            ErrorCode::UnsupportedNWithStream => "unsupported_n_with_stream",
            ErrorCode::InvalidTier => "invalid_tier",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::BackendRejected => "backend_rejected",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::MaxDeliveriesExceeded => "max_deliveries_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::DuplicateRequest => "duplicate_request",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::UnknownRequest => "unknown_request",
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::BackendUnavailable
                | ErrorCode::MaxDeliveriesExceeded
                | ErrorCode::Internal
                | ErrorCode::QueueFull
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_matches_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
