//! Triage's wire protocol.
//!
//! Everything that crosses NATS is defined here: subject and stream names
//! ([`subjects`]), request ids and the keys built from them ([`ids`]), the
//! messages ([`message`]), how they are encoded
//! ([`encoding`]), the closed list of error codes ([`error`]), client feedback on answers
//! ([`feedback`]), shadow answers and their grades ([`shadow`]) and the rules
//! for the subjects a worker may answer on ([`reply`]), and the check that a
//! streamed answer arrived whole ([`answer_check`]). The crate does no
//! I/O, so every rule is unit-tested without a server; `triage-bus` puts it
//! on the wire.
//!
//! The language-neutral definitions live in `schemas/` at the repository
//! root; tests check that they and these types agree.

pub mod answer_check;
pub mod encoding;
pub mod error;
pub mod feedback;
pub mod headers;
pub mod ids;
pub mod message;
pub mod params;
pub mod reply;
pub mod shadow;
pub mod subjects;

pub use answer_check::{AnswerCheck, AnswerText, ChunkVerdict, IncompleteAnswer};
pub use encoding::{decode, encode, DecodeError, Encoding};
pub use error::ErrorCode;
pub use feedback::{Feedback, FeedbackReceipt, InvalidFeedback, Rating, Verdict};
pub use ids::{check_request_id, RequestKey};
pub use message::*;
pub use reply::{ReplyPolicy, ReplySubjectError, GATEWAY_REPLY_PREFIX};
pub use shadow::{Judged, ShadowJob};
pub use subjects::{InvalidTenant, Namespace, StreamKind};

/// The schema version this build writes and accepts.
pub const SCHEMA_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, the time unit of every timestamp on
/// the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
