//! A request's final error, as the admit stage (a refusal before any
//! backend call) or the generate stage (what the backends did) decides it,
//! and as the deliver stage publishes it.

use triage_protocol::ErrorCode;

/// An error reply to send, and whether the message is dead-lettered too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The code.
    pub code: ErrorCode,
    /// For the client.
    pub message: String,
    /// Whether the message goes to `llm.dead` as well.
    pub dead_letter: bool,
}

impl Failure {
    /// An error reply only.
    pub fn reply(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            dead_letter: false,
        }
    }

    /// An error reply and a dead letter.
    pub fn dead(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            dead_letter: true,
        }
    }
}
