//! Triage's wire protocol.
//!
//! Everything that crosses NATS is defined here: subject and stream names
//! ([`subjects`]), the messages ([`message`]), how they are encoded
//! ([`encoding`]), the closed list of error codes ([`error`]) and the rules
//! for the subjects a worker may answer on ([`reply`]). The crate does no
//! I/O, so every rule is unit-tested without a server; `triage-bus` puts it
//! on the wire.
//!
//! The language-neutral definitions live in `schemas/` at the repository
//! root; tests check that they and these types agree.

pub mod encoding;
pub mod error;
pub mod headers;
pub mod message;
pub mod reply;
pub mod subjects;

pub use encoding::{decode, encode, DecodeError, Encoding};
pub use error::ErrorCode;
pub use message::*;
pub use reply::{ReplyPolicy, ReplySubjectError, GATEWAY_REPLY_PREFIX};
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
